//! The uses of a pidfd beyond pidfd_getfd / pidfd_send_signal / waitid: setns(2) on a pidfd,
//! process_madvise(2), process_mrelease(2) and the pidfs ioctls (PIDFD_GET_INFO,
//! PIDFD_GET_*_NAMESPACE), seen from the syscall tracepoints. Each resolves the pidfd to its
//! target in the kernel at entry, while the caller still holds it; the exits go through the
//! uses gate (`exit_use`).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use pidfd_trace_common::EventKind;

use super::{arg, entry_slot, exit_use, save};
use crate::task::pidfd_target;

/// Saves the entry state of a use of `pidfd` whose target is `target_pid` (0: unknown).
#[inline(always)]
fn enter_use(kind: EventKind, flags: u64, pidfd: u64, arg1: u64, target_pid: i32) {
    if let Some(st) = entry_slot(kind, flags, pidfd, arg1, 0, target_pid) {
        save(st);
    }
}

// prototype: syscall:setns/2: SYSCALL_DEFINE2(setns, int, fd, int, flags) [3.0-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_setns")]
pub fn sys_enter_setns(ctx: TracePointContext) -> u32 {
    // Only a pidfd (its file checked in the kernel: pidfs, or anon inode [pidfd] before 6.9);
    // a namespace fd from /proc/<pid>/ns/* leaves no state behind.
    let fd = arg(&ctx, 0) & 0xffff_ffff;
    let target = pidfd_target(fd);
    if target <= 0 {
        return 0;
    }
    // flags = the namespaces to enter (CLONE_NEW*), an int.
    enter_use(EventKind::Setns, arg(&ctx, 1) & 0xffff_ffff, fd, 0, target);
    0
}

// prototype: syscall:setns/2: SYSCALL_DEFINE2(setns, int, fd, int, flags) [3.0-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_setns")]
pub fn sys_exit_setns(ctx: TracePointContext) -> u32 {
    exit_use(&ctx, EventKind::Setns);
    0
}

// prototype: syscall:process_madvise/5: SYSCALL_DEFINE5(process_madvise, int, pidfd, const struct iovec __user *, vec, size_t, vlen, int, behavior, unsigned int, flags) [5.10-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_process_madvise")]
pub fn sys_enter_process_madvise(ctx: TracePointContext) -> u32 {
    let pidfd = arg(&ctx, 0) & 0xffff_ffff;
    // flags = flags (none defined yet), arg1 = the advice (an int).
    enter_use(
        EventKind::ProcessMadvise,
        arg(&ctx, 4) & 0xffff_ffff,
        pidfd,
        arg(&ctx, 3) & 0xffff_ffff,
        pidfd_target(pidfd),
    );
    0
}

// prototype: syscall:process_madvise/5: SYSCALL_DEFINE5(process_madvise, int, pidfd, const struct iovec __user *, vec, size_t, vlen, int, behavior, unsigned int, flags) [5.10-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_process_madvise")]
pub fn sys_exit_process_madvise(ctx: TracePointContext) -> u32 {
    exit_use(&ctx, EventKind::ProcessMadvise);
    0
}

// prototype: syscall:process_mrelease/2: SYSCALL_DEFINE2(process_mrelease, int, pidfd, unsigned int, flags) [5.15-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_process_mrelease")]
pub fn sys_enter_process_mrelease(ctx: TracePointContext) -> u32 {
    let pidfd = arg(&ctx, 0) & 0xffff_ffff;
    enter_use(EventKind::ProcessMrelease, arg(&ctx, 1) & 0xffff_ffff, pidfd, 0, pidfd_target(pidfd));
    0
}

// prototype: syscall:process_mrelease/2: SYSCALL_DEFINE2(process_mrelease, int, pidfd, unsigned int, flags) [5.15-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_process_mrelease")]
pub fn sys_exit_process_mrelease(ctx: TracePointContext) -> u32 {
    exit_use(&ctx, EventKind::ProcessMrelease);
    0
}

/// The ioctl type byte of every pidfs command (`PIDFS_IOCTL_MAGIC`, include/uapi/linux/pidfd.h).
const PIDFS_IOCTL_MAGIC: u64 = 0xff;

// prototype: syscall:ioctl/3: SYSCALL_DEFINE3(ioctl, unsigned int, fd, unsigned int, cmd, unsigned long, arg) [2.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    // Hot path: every ioctl on the host lands here. One direct context load of `cmd` and a
    // compare turn away everything but the pidfs commands (type 0xFF, nr 1..=255) before any
    // helper call or map access.
    let cmd = arg(&ctx, 1) & 0xffff_ffff;
    if (cmd >> 8) & 0xff != PIDFS_IOCTL_MAGIC || cmd & 0xff == 0 {
        return 0;
    }
    // Type 0xFF is not reserved to pidfs: only a real pidfd's file goes on to a map.
    let fd = arg(&ctx, 0) & 0xffff_ffff;
    let target = pidfd_target(fd);
    if target <= 0 {
        return 0;
    }
    enter_use(EventKind::PidfdIoctl, 0, fd, cmd, target);
    0
}

// prototype: syscall:ioctl/3: SYSCALL_DEFINE3(ioctl, unsigned int, fd, unsigned int, cmd, unsigned long, arg) [2.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_ioctl")]
pub fn sys_exit_ioctl(ctx: TracePointContext) -> u32 {
    // Gated: returns before any map look-up while no pidfd use is in flight.
    exit_use(&ctx, EventKind::PidfdIoctl);
    0
}

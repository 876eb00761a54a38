//! pidfd_open(2), pidfd_getfd(2), pidfd_send_signal(2) and waitid(2) on a pidfd, seen from the
//! syscall tracepoints.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use pidfd_trace_common::EventKind;

use aya_ebpf::helpers::bpf_get_current_pid_tgid;

use super::{arg, entry, exit_use, mode_of, ret, save, take};
use crate::{emit, risk, task::pidfd_target};

#[inline(always)]
fn enter(kind: EventKind, flags: u64, arg0: u64, arg1: u64) {
    // pidfd_getfd / pidfd_send_signal: resolve the pidfd now, while the caller still holds it.
    let target_pid = if kind == EventKind::PidfdOpen { 0 } else { pidfd_target(arg0) };
    let mut st = entry(kind, flags, arg0, arg1, 0, target_pid);
    // The target facts (exiting, credentials, cgroup, the file taken) while the pidfd pins it.
    match kind {
        EventKind::PidfdGetfd => risk::gather(arg0, Some(arg1), &mut st.facts),
        EventKind::PidfdSendSignal => risk::gather(arg0, None, &mut st.facts),
        _ => {}
    }
    save(&st);
}

// prototype: syscall:pidfd_open/2: SYSCALL_DEFINE2(pidfd_open, pid_t, pid, unsigned int, flags) [5.3-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_pidfd_open")]
pub fn sys_enter_pidfd_open(ctx: TracePointContext) -> u32 {
    enter(EventKind::PidfdOpen, arg(&ctx, 1), arg(&ctx, 0), 0);
    0
}

// prototype: syscall:pidfd_open/2: SYSCALL_DEFINE2(pidfd_open, pid_t, pid, unsigned int, flags) [5.3-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_pidfd_open")]
pub fn sys_exit_pidfd_open(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(mut st) = take(id) else { return 0 };
    let r = ret(&ctx);
    if r >= 0 {
        // pidfd_ino (and whether the target was already reaped) from the installed file.
        let _ = crate::risk::installed_pidfd(r as u64, &mut st.facts);
    }
    // Never a pidfd_getfd: the getfd-only work stays out of this program.
    emit::finish_creation(&ctx, &st, id, r, -1, mode_of(&st));
    0
}

// prototype: syscall:pidfd_getfd/3: SYSCALL_DEFINE3(pidfd_getfd, int, pidfd, int, fd, unsigned int, flags) [5.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_pidfd_getfd")]
pub fn sys_enter_pidfd_getfd(ctx: TracePointContext) -> u32 {
    enter(EventKind::PidfdGetfd, arg(&ctx, 2), arg(&ctx, 0), arg(&ctx, 1));
    0
}

// prototype: syscall:pidfd_getfd/3: SYSCALL_DEFINE3(pidfd_getfd, int, pidfd, int, fd, unsigned int, flags) [5.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_pidfd_getfd")]
pub fn sys_exit_pidfd_getfd(ctx: TracePointContext) -> u32 {
    exit_use(&ctx);
    0
}

// prototype: syscall:pidfd_send_signal/4: SYSCALL_DEFINE4(pidfd_send_signal, int, pidfd, int, sig, siginfo_t __user *, info, unsigned int, flags) [5.1-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_pidfd_send_signal")]
pub fn sys_enter_pidfd_send_signal(ctx: TracePointContext) -> u32 {
    enter(EventKind::PidfdSendSignal, arg(&ctx, 3), arg(&ctx, 0), arg(&ctx, 1));
    0
}

// prototype: syscall:pidfd_send_signal/4: SYSCALL_DEFINE4(pidfd_send_signal, int, pidfd, int, sig, siginfo_t __user *, info, unsigned int, flags) [5.1-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_pidfd_send_signal")]
pub fn sys_exit_pidfd_send_signal(ctx: TracePointContext) -> u32 {
    exit_use(&ctx);
    0
}

/// waitid's `idtype` for a pidfd (include/uapi/linux/wait.h, 5.4+).
const P_PIDFD: u32 = 3;

// prototype: syscall:waitid/5: SYSCALL_DEFINE5(waitid, int, which, pid_t, upid, struct siginfo __user *, infop, int, options, struct rusage __user *, ru) [5.4-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_waitid")]
pub fn sys_enter_waitid(ctx: TracePointContext) -> u32 {
    // Hot path: every wait on the host lands here; only P_PIDFD waits go on to a map.
    if arg(&ctx, 0) as u32 != P_PIDFD {
        return 0;
    }
    // flags = options (an int: the upper half is sign extension), arg0 = the pidfd.
    enter(EventKind::Waitid, arg(&ctx, 3) & 0xffff_ffff, arg(&ctx, 1), 0);
    0
}

// prototype: syscall:waitid/5: SYSCALL_DEFINE5(waitid, int, which, pid_t, upid, struct siginfo __user *, infop, int, options, struct rusage __user *, ru) [5.4-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_waitid")]
pub fn sys_exit_waitid(ctx: TracePointContext) -> u32 {
    // Gated: returns before any map look-up while no pidfd use is in flight.
    exit_use(&ctx);
    0
}

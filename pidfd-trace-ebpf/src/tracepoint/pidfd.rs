//! pidfd_open(2), pidfd_getfd(2) and pidfd_send_signal(2), seen from the syscall tracepoints.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use pidfd_trace_common::EventKind;

use super::{arg, entry, exit_simple, exit_use, save};
use crate::task::pidfd_target;

#[inline(always)]
fn enter(kind: EventKind, flags: u64, arg0: u64, arg1: u64) {
    // pidfd_getfd / pidfd_send_signal: resolve the pidfd now, while the caller still holds it.
    let target_pid = if kind == EventKind::PidfdOpen { 0 } else { pidfd_target(arg0) };
    save(&entry(kind, flags, arg0, arg1, 0, target_pid));
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
    exit_simple(&ctx);
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

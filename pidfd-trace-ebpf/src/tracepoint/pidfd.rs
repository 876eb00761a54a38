//! pidfd_open(2), pidfd_getfd(2), pidfd_send_signal(2) and waitid(2) on a pidfd, seen from the
//! syscall tracepoints.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use pidfd_trace_common::{EventKind, xhints};

use pidfd_trace_common::exit_tail;

use super::{arg, entry_slot, exit_simple, exit_use, save, tail};
use crate::{
    risk,
    task::{caller_ns, fd_target},
};

/// `x`: `xhints` the caller knows before the call (`COMPAT` from compat_sys_enter), saved
/// with the state: a started container walk (`exit_tail::CONTAINER`) never returns here.
#[inline(always)]
fn enter(ctx: &TracePointContext, kind: EventKind, flags: u64, arg0: u64, arg1: u64, x: u8) {
    let Some(st) = entry_slot(kind, flags, arg0, arg1, 0, 0) else { return };
    st.xhints |= x;
    let (level, ns_pid) = caller_ns();
    // Read once: the exit's record takes them from here.
    st.caller_level = level as u8;
    st.caller_ns_pid = ns_pid;
    if kind == EventKind::PidfdOpen {
        // `pid` is a number in the caller's namespace; pid <= 0 is refused as an argument.
        if arg0 as i32 <= 0 {
            st.xhints |= xhints::ARGS;
        }
        if level > 0 {
            st.ns_other = arg0 as i32;
        }
    } else {
        // Resolve the fd now, while the caller still holds it: a pidfd, or (for
        // pidfd_send_signal, which accepts them) a /proc/<pid> directory; nothing else.
        let t = fd_target(arg0, kind == EventKind::PidfdSendSignal, level);
        st.target_pid = t.host;
        st.ns_other = t.ns;
        if t.checked {
            st.xhints |= xhints::TARGET_CHECKED;
        }
    }
    // The target facts (exiting, credentials, cgroup, the file taken) while the pidfd pins it.
    let target_kn = match kind {
        EventKind::PidfdGetfd => risk::gather(arg0, Some(arg1), &mut st.facts),
        EventKind::PidfdSendSignal => risk::gather(arg0, None, &mut st.facts),
        _ => 0,
    };
    save(st);
    // Target in another cgroup: is either side in a container? The walk is its own tail
    // program (one level per run), and it writes its finding into the state saved above.
    if risk::start_container_walk(target_kn) {
        tail(ctx, exit_tail::CONTAINER);
    }
}

// prototype: syscall:pidfd_open/2: SYSCALL_DEFINE2(pidfd_open, pid_t, pid, unsigned int, flags) [5.3-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_pidfd_open")]
pub fn sys_enter_pidfd_open(ctx: TracePointContext) -> u32 {
    open_enter(&ctx, 0);
    0
}

/// pidfd_open's entry, also for 32-bit callers (compat.rs): same argument slots.
#[inline(always)]
pub(super) fn open_enter(ctx: &TracePointContext, x: u8) {
    enter(ctx, EventKind::PidfdOpen, arg(ctx, 1), arg(ctx, 0), 0, x);
}

#[inline(always)]
pub(super) fn getfd_enter(ctx: &TracePointContext, x: u8) {
    enter(ctx, EventKind::PidfdGetfd, arg(ctx, 2), arg(ctx, 0), arg(ctx, 1), x);
}

#[inline(always)]
pub(super) fn send_signal_enter(ctx: &TracePointContext, x: u8) {
    enter(ctx, EventKind::PidfdSendSignal, arg(ctx, 3), arg(ctx, 0), arg(ctx, 1), x);
}

// prototype: syscall:pidfd_open/2: SYSCALL_DEFINE2(pidfd_open, pid_t, pid, unsigned int, flags) [5.3-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_pidfd_open")]
pub fn sys_exit_pidfd_open(ctx: TracePointContext) -> u32 {
    exit_simple(&ctx, EventKind::PidfdOpen, 0);
    0
}

// prototype: syscall:pidfd_getfd/3: SYSCALL_DEFINE3(pidfd_getfd, int, pidfd, int, fd, unsigned int, flags) [5.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_pidfd_getfd")]
pub fn sys_enter_pidfd_getfd(ctx: TracePointContext) -> u32 {
    getfd_enter(&ctx, 0);
    0
}

// prototype: syscall:pidfd_getfd/3: SYSCALL_DEFINE3(pidfd_getfd, int, pidfd, int, fd, unsigned int, flags) [5.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_pidfd_getfd")]
pub fn sys_exit_pidfd_getfd(ctx: TracePointContext) -> u32 {
    // Not gated: pidfd_getfd is rare, and an exit without entry is a refused call.
    exit_simple(&ctx, EventKind::PidfdGetfd, 0);
    0
}

// prototype: syscall:pidfd_send_signal/4: SYSCALL_DEFINE4(pidfd_send_signal, int, pidfd, int, sig, siginfo_t __user *, info, unsigned int, flags) [5.1-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_pidfd_send_signal")]
pub fn sys_enter_pidfd_send_signal(ctx: TracePointContext) -> u32 {
    send_signal_enter(&ctx, 0);
    0
}

// prototype: syscall:pidfd_send_signal/4: SYSCALL_DEFINE4(pidfd_send_signal, int, pidfd, int, sig, siginfo_t __user *, info, unsigned int, flags) [5.1-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_pidfd_send_signal")]
pub fn sys_exit_pidfd_send_signal(ctx: TracePointContext) -> u32 {
    // Not gated: pidfd_send_signal is rare, and an exit without entry is a refused call.
    exit_simple(&ctx, EventKind::PidfdSendSignal, 0);
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
    enter(&ctx, EventKind::Waitid, arg(&ctx, 3) & 0xffff_ffff, arg(&ctx, 1), 0, 0);
    0
}

// prototype: syscall:waitid/5: SYSCALL_DEFINE5(waitid, int, which, pid_t, upid, struct siginfo __user *, infop, int, options, struct rusage __user *, ru) [5.4-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_waitid")]
pub fn sys_exit_waitid(ctx: TracePointContext) -> u32 {
    // Gated: returns before any map look-up while no pidfd use is in flight.
    exit_use(&ctx, EventKind::Waitid);
    0
}

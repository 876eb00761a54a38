//! clone(2) and clone3(2) with CLONE_PIDFD, seen from the syscall tracepoints.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use pidfd_trace_common::{EventKind, clone_flags::CLONE_PIDFD, hints, stats};

use super::{arg, entry, mode_of, ret, save, take};
use crate::{
    emit,
    maps::{bump_stat, in_flight},
    task::pids_cgroup_at_limit,
};

const EAGAIN: i64 = 11;
/// Offset of `pidfd` in `struct clone_args` (uapi, fixed since clone3 appeared in 5.3).
const CLONE_ARGS_PIDFD_OFF: u64 = 8;

// Argument order as on x86_64 (CONFIG_CLONE_BACKWARDS* arches differ; the agent checks the
// tracepoint's field names). With CLONE_PIDFD the pidfd number is written to parent_tidptr.
// prototype: syscall:clone/5: SYSCALL_DEFINE5(clone, unsigned long, clone_flags, unsigned long, newsp, int __user *, parent_tidptr, int __user *, child_tidptr, unsigned long, tls) [5.2-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_clone")]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, 0);
    // Hot path: every fork on the host lands here; bail before touching any map.
    if flags & CLONE_PIDFD == 0 {
        return 0;
    }
    save(&entry(EventKind::Clone, flags, 0, 0, arg(&ctx, 2), 0));
    0
}

// prototype: syscall:clone3/2: SYSCALL_DEFINE2(clone3, struct clone_args __user *, uargs, size_t, size) [5.3-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_clone3")]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    let uargs = arg(&ctx, 0);
    let Ok(flags) = (unsafe { bpf_probe_read_user(uargs as *const u64) }) else {
        // Unreadable args: either the call fails with EFAULT before any pidfd work, or the
        // page was not resident and we cannot know the flags. Counted, never guessed.
        bump_stat(stats::CLONE3_ARGS_UNREADABLE);
        return 0;
    };
    if flags & CLONE_PIDFD == 0 {
        return 0;
    }
    let uptr = unsafe { bpf_probe_read_user((uargs + CLONE_ARGS_PIDFD_OFF) as *const u64) }.unwrap_or(0);
    save(&entry(EventKind::Clone3, flags, 0, 0, uptr, 0));
    0
}

// prototype: syscall:clone/5: SYSCALL_DEFINE5(clone, unsigned long, clone_flags, unsigned long, newsp, int __user *, parent_tidptr, int __user *, child_tidptr, unsigned long, tls) [5.2-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_clone")]
pub fn sys_exit_clone(ctx: TracePointContext) -> u32 {
    clone_exit(&ctx);
    0
}

// prototype: syscall:clone3/2: SYSCALL_DEFINE2(clone3, struct clone_args __user *, uargs, size_t, size) [5.3-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_clone3")]
pub fn sys_exit_clone3(ctx: TracePointContext) -> u32 {
    clone_exit(&ctx);
    0
}

/// Parent side of a CLONE_PIDFD clone: the child also returns through this tracepoint, but
/// with its own pid_tgid, which has no entry state.
#[inline(always)]
fn clone_exit(ctx: &TracePointContext) {
    // Hot path: every fork returns through here, twice; no CLONE_PIDFD call in flight
    // anywhere means no entry state to look up.
    if !in_flight() {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(st) = take(id) else {
        return;
    };
    let ret = ret(ctx);
    let mut extra = 0u8;
    let mut pidfd = -1i32;
    if ret > 0 {
        match unsafe { bpf_probe_read_user(st.uptr as *const i32) } {
            Ok(fd) => pidfd = fd,
            Err(_) => extra |= hints::PIDFD_READBACK_FAULT,
        }
    } else if ret == -EAGAIN && pids_cgroup_at_limit() {
        extra |= hints::PIDS_AT_LIMIT;
    }
    emit::finish(ctx, &st, id, ret, pidfd, extra, mode_of(&st));
}

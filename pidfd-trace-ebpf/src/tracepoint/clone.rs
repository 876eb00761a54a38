//! clone(2) and clone3(2) with CLONE_PIDFD, seen from the syscall tracepoints.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use pidfd_trace_common::{
    EventKind,
    clone_flags::{CLONE_PIDFD, CSIGNAL},
    exit_tail, hints, stats, xhints,
};

use super::{arg, entry, entry_slot, ret, save, tail, tail_slot, take};
use crate::{
    maps::{bump_stat, in_flight},
    task::{fd_walk_known, installed_pidfd, pids_cgroup_at_limit, user_arg0},
};

const EAGAIN: i64 = 11;
const EFAULT: i64 = 14;
/// Offset of `pidfd` in `struct clone_args` (uapi, fixed since clone3 appeared in 5.3).
const CLONE_ARGS_PIDFD_OFF: u64 = 8;

// Argument order as on x86_64 (CONFIG_CLONE_BACKWARDS* arches differ; the agent checks the
// tracepoint's field names). With CLONE_PIDFD the pidfd number is written to parent_tidptr.
// prototype: syscall:clone/5: SYSCALL_DEFINE5(clone, unsigned long, clone_flags, unsigned long, newsp, int __user *, parent_tidptr, int __user *, child_tidptr, unsigned long, tls) [5.2-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_clone")]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    clone_enter(&ctx);
    0
}

/// clone's entry, also for 32-bit callers (compat.rs): ia32 clone has the same first three
/// arguments (flags, newsp, parent_tidptr).
#[inline(always)]
pub(super) fn clone_enter(ctx: &TracePointContext) {
    let flags = arg(ctx, 0);
    // Hot path: every fork on the host lands here; bail before touching any map.
    if flags & CLONE_PIDFD == 0 {
        return;
    }
    if let Some(st) = entry_slot(EventKind::Clone, flags, 0, 0, arg(ctx, 2), 0) {
        save(st);
    }
}

// prototype: syscall:clone3/2: SYSCALL_DEFINE2(clone3, struct clone_args __user *, uargs, size_t, size) [5.3-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_clone3")]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    clone3_enter(&ctx);
    0
}

/// clone3's entry, also for 32-bit callers (the struct is the same for both ABIs).
#[inline(always)]
pub(super) fn clone3_enter(ctx: &TracePointContext) {
    let uargs = arg(ctx, 0);
    let Ok(flags) = (unsafe { bpf_probe_read_user(uargs as *const u64) }) else {
        // Unreadable args: either the call fails with EFAULT before any pidfd work, or the
        // page was not resident yet (an untouched file mapping) and the kernel will fault it
        // in. Counted, and followed to the exit: task_newtask then says what the kernel did.
        bump_stat(stats::CLONE3_ARGS_UNREADABLE);
        let mut st = entry(EventKind::Clone3, 0, 0, 0, 0, 0);
        st.hints = hints::UARGS_FAULT;
        st.uargs = uargs;
        st.usize = arg(ctx, 1);
        save(&st);
        return;
    };
    if flags & CLONE_PIDFD == 0 {
        return;
    }
    let uptr = unsafe { bpf_probe_read_user((uargs + CLONE_ARGS_PIDFD_OFF) as *const u64) }.unwrap_or(0);
    let Some(st) = entry_slot(EventKind::Clone3, flags, 0, 0, uptr, 0) else { return };
    st.uargs = uargs;
    st.usize = arg(ctx, 1);
    save(st);
}

// prototype: syscall:clone/5: SYSCALL_DEFINE5(clone, unsigned long, clone_flags, unsigned long, newsp, int __user *, parent_tidptr, int __user *, child_tidptr, unsigned long, tls) [5.2-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_clone")]
pub fn sys_exit_clone(ctx: TracePointContext) -> u32 {
    clone_exit::<true>(&ctx, NR_CLONE);
    0
}

// prototype: syscall:clone3/2: SYSCALL_DEFINE2(clone3, struct clone_args __user *, uargs, size_t, size) [5.3-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_clone3")]
pub fn sys_exit_clone3(ctx: TracePointContext) -> u32 {
    clone_exit::<true>(&ctx, NR_CLONE3);
    0
}

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl), to recognise the saved
/// user registers of the call that is returning.
const NR_CLONE: u64 = 56;
const NR_CLONE3: u64 = 435;

// prototype: syscall:*/0: none: a tail program in EXIT_TAIL, entered by bpf_tail_call from a syscall exit program (same tracepoint context), never attached itself [5.10-7.3]
/// A successful clone: the pidfd is the fd in the caller's table whose struct pid is the
/// child the kernel created. The number in user memory is only a hint: the caller (or a
/// CLONE_VM child) may have overwritten it since the kernel wrote it.
#[tracepoint(category = "syscalls", name = "exit_tail_scan")]
pub fn exit_tail_scan(ctx: TracePointContext) -> u32 {
    if let Some(t) = tail_slot() {
        match installed_pidfd(t.hint, t.st.child_pid) {
            Some(fd) => {
                if t.hint != i64::from(fd) {
                    t.st.xhints |= xhints::PIDFD_SLOT_FORGED;
                }
                t.pidfd = fd;
                t.extra &= !hints::PIDFD_READBACK_FAULT;
                // Its file's inode and filesystem: `pidfd_ino` (pidfs, 6.9+), as for every
                // creation; nothing about the child (alive when its pidfd was made, whether or
                // not it was reaped by now).
                if let Some(p) = crate::risk::new_pidfd(fd as u64) {
                    p.file_facts(&mut t.st.facts);
                }
            }
            None => {
                t.st.xhints |= xhints::PIDFD_NOT_FOUND;
                t.pidfd = -1;
                t.extra &= !hints::PIDFD_READBACK_FAULT;
            }
        }
    }
    tail(&ctx, exit_tail::EMIT);
    0
}

// prototype: syscall:*/0: none: a tail program in EXIT_TAIL, entered by bpf_tail_call from a syscall exit program (same tracepoint context), never attached itself [5.10-7.3]
/// A clone that failed with EAGAIN: was the caller's pids cgroup (or an ancestor) at its limit?
#[tracepoint(category = "syscalls", name = "exit_tail_pids")]
pub fn exit_tail_pids(ctx: TracePointContext) -> u32 {
    if let Some(t) = tail_slot()
        && pids_cgroup_at_limit()
    {
        t.extra |= hints::PIDS_AT_LIMIT;
    }
    tail(&ctx, exit_tail::EMIT);
    0
}

// prototype: syscall:*/0: none: a tail program in EXIT_TAIL, entered by bpf_tail_call from a syscall exit program (same tracepoint context), never attached itself [5.10-7.3]
/// A failed clone whose entry never fired: refused before it ran (seccomp, a tracer). Its
/// flags come from the caller's saved registers (clone: the first argument; clone3: the
/// struct it points to, as it reads now); reported, as stage `denied`, only with CLONE_PIDFD.
#[tracepoint(category = "syscalls", name = "exit_tail_denied")]
pub fn exit_tail_denied(ctx: TracePointContext) -> u32 {
    let Some(t) = tail_slot() else { return 0 };
    let nr = t.nr;
    let Some(a0) = user_arg0(nr) else { return 0 };
    let (kind, flags) = if nr == NR_CLONE {
        (EventKind::Clone, a0)
    } else {
        (EventKind::Clone3, unsafe { bpf_probe_read_user(a0 as *const u64) }.unwrap_or(0))
    };
    if flags & CLONE_PIDFD == 0 {
        return 0;
    }
    super::init_entry(&mut t.st, kind, flags, 0, 0, 0, 0);
    t.st.xhints = xhints::DENIED;
    t.pidfd = -1;
    t.extra = 0;
    tail(&ctx, exit_tail::EMIT);
    0
}

/// Parent side of a CLONE_PIDFD clone: the child also returns through this tracepoint, but
/// with its own pid_tgid, which has no entry state. Only the cheap steps run here; each
/// heavy one is a tail program (`exit_tail`).
#[inline(always)]
pub(super) fn clone_exit<const DENIED: bool>(ctx: &TracePointContext, nr: u64) {
    // Hot path: every fork returns through here, twice. A success with no CLONE_PIDFD call
    // in flight anywhere has no entry state to look up: two loads and out.
    let ret = ret(ctx);
    let open = in_flight();
    if ret >= 0 && !open {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(mut st) = (if open { take(id) } else { None }) else {
        // A failed fork without entry state (rare): refused before it ran if it asked for
        // a pidfd. `DENIED` false: not checked (32-bit callers keep their arguments in other
        // registers).
        if DENIED
            && ret < 0
            && let Some(t) = tail_slot()
        {
            t.id = id;
            t.ret = ret;
            t.nr = nr;
            tail(ctx, exit_tail::DENIED);
        }
        return;
    };
    if st.kind != EventKind::Clone as u8 && st.kind != EventKind::Clone3 as u8 {
        // A stale state of another call whose exit was missed: dropped (see take_into).
        return;
    }
    let newtask = st.xhints & xhints::NEWTASK != 0;
    if st.hints & hints::UARGS_FAULT != 0 {
        // clone3 whose flags were unreadable at entry: what the kernel acted on, else the
        // flags as they read now (the kernel faulted the page in), else nothing to report.
        if newtask {
            st.flags = st.kflags;
        } else if let Ok(f) = unsafe { bpf_probe_read_user(st.uargs as *const u64) } {
            st.flags = f;
        }
        if st.flags & CLONE_PIDFD == 0 {
            return;
        }
        st.hints &= !hints::UARGS_FAULT;
    }
    if st.uptr == 0 && st.kind == EventKind::Clone3 as u8 {
        st.uptr =
            unsafe { bpf_probe_read_user((st.uargs + CLONE_ARGS_PIDFD_OFF) as *const u64) }.unwrap_or(0);
    }
    let mut extra = 0u8;
    let mut pidfd = -1i32;
    let mut hint = -1i64;
    let mut next = exit_tail::EMIT;
    if ret > 0 {
        // The number the kernel wrote to user memory; the scan checks it against the fd
        // table (and it is what is reported where the fd table cannot be read).
        match unsafe { bpf_probe_read_user(st.uptr as *const i32) } {
            Ok(fd) => {
                pidfd = fd;
                hint = i64::from(fd);
            }
            Err(_) => extra |= hints::PIDFD_READBACK_FAULT,
        }
        if newtask && fd_walk_known() {
            next = exit_tail::SCAN;
        }
        if newtask {
            // The flags the kernel acted on; the exit signal (CSIGNAL) is not among them.
            st.flags = st.kflags | (st.flags & CSIGNAL);
        }
    } else if ret == -EAGAIN {
        next = exit_tail::PIDS;
    } else if ret == -EFAULT
        && st.kind == EventKind::Clone3 as u8
        && st.hints & hints::COPY_PROCESS == 0
        && clone3_args_unreadable(&st)
    {
        // copy_clone_args_from_user refused the arguments: no pid, no pidfd ever existed.
        st.xhints |= xhints::ARGS;
    }
    let Some(t) = tail_slot() else { return };
    t.st = st;
    t.id = id;
    t.ret = ret;
    t.hint = hint;
    t.pidfd = pidfd;
    t.extra = extra;
    tail(ctx, next);
    // `next` is not loaded on this kernel: report without what it would have found.
    tail(ctx, exit_tail::EMIT);
}

/// Offsets in `struct clone_args` (uapi): `set_tid` and `set_tid_size` (CLONE_ARGS_SIZE_VER1).
const CLONE_ARGS_SET_TID_OFF: u64 = 64;
const CLONE_ARGS_SET_TID_SIZE_OFF: u64 = 72;
/// The largest `struct clone_args` the kernel reads (VER2, 5.7+); bigger sizes must be zero.
const CLONE_ARGS_MAX: u64 = 88;

/// Whether clone3's argument memory (the struct, then its set_tid array) is unreadable now:
/// what makes copy_clone_args_from_user fail with EFAULT before copy_process. Memory the
/// kernel read is resident at exit, so a read that fails here failed for the kernel too.
#[inline(always)]
fn clone3_args_unreadable(st: &pidfd_trace_common::EnterState) -> bool {
    let size = if st.usize > CLONE_ARGS_MAX { CLONE_ARGS_MAX } else { st.usize };
    if size == 0 {
        return false;
    }
    let readable = |p: u64| unsafe { bpf_probe_read_user(p as *const u8) }.is_ok();
    if !readable(st.uargs) || !readable(st.uargs + size - 1) {
        return true;
    }
    if size < CLONE_ARGS_SET_TID_SIZE_OFF + 8 {
        return false;
    }
    let set_tid =
        unsafe { bpf_probe_read_user((st.uargs + CLONE_ARGS_SET_TID_OFF) as *const u64) }.unwrap_or(0);
    let n =
        unsafe { bpf_probe_read_user((st.uargs + CLONE_ARGS_SET_TID_SIZE_OFF) as *const u64) }.unwrap_or(0);
    // More than MAX_PID_NS_LEVEL (32) entries is EINVAL, not EFAULT.
    n > 0 && n <= 32 && (!readable(set_tid) || !readable(set_tid + 4 * n - 1))
}

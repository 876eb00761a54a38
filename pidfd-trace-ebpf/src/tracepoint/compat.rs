//! 32-bit (ia32) callers. The `syscalls:sys_*` tracepoints skip compat syscalls (x86's
//! trace_get_syscall_nr returns -1 for them); `raw_syscalls:sys_enter/sys_exit` fire for
//! every syscall of both ABIs, with the same record layout as `syscalls:*` (id at 8, the
//! arguments or `ret` at 16). These two programs run on every syscall of the host, so the
//! agent attaches them only with `--compat-syscalls` (README "What the agent cannot see").
//! Each bails after one context load unless the id is one of the five ia32 numbers below,
//! and then unless the task is inside a 32-bit syscall (TS_COMPAT): x86_64 shares 424, 434,
//! 435 and 438, and those 64-bit calls are the `syscalls:*` programs' (never counted twice).
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use pidfd_trace_common::{EventKind, xhints};

use super::{clone, exit_simple, pidfd};
use crate::{state, task::in_compat_syscall};

/// arch/x86/entry/syscalls/syscall_32.tbl
const NR32_CLONE: i64 = 120;
const NR32_PIDFD_SEND_SIGNAL: i64 = 424;
const NR32_PIDFD_OPEN: i64 = 434;
const NR32_CLONE3: i64 = 435;
const NR32_PIDFD_GETFD: i64 = 438;

/// The syscall id of a raw_syscalls record: a direct load at offset 8.
#[inline(always)]
fn id(ctx: &TracePointContext) -> i64 {
    // SAFETY: constant, aligned offset inside the raw_syscalls record (checked by the agent).
    unsafe { *(ctx.as_ptr() as *const i64).add(1) }
}

#[inline(always)]
fn ours(id: i64) -> bool {
    id == NR32_CLONE
        || id == NR32_PIDFD_SEND_SIGNAL
        || id == NR32_PIDFD_OPEN
        || id == NR32_CLONE3
        || id == NR32_PIDFD_GETFD
}

// prototype: syscall:*/0: TRACE_EVENT_FN(sys_enter, TP_PROTO(struct pt_regs *regs, long id)); not one syscall: reads id and args[6] [5.10-7.1]
#[tracepoint(category = "raw_syscalls", name = "sys_enter")]
pub fn compat_sys_enter(ctx: TracePointContext) -> u32 {
    // Hot path: every syscall on the host. One load and compare, then out.
    let id = id(&ctx);
    if !ours(id) || !in_compat_syscall() {
        return 0;
    }
    // The pidfd_* entries save their state as a compat call's (a risky use's container walk
    // is a tail call: nothing after it would run).
    match id {
        NR32_CLONE => clone::clone_enter(&ctx),
        NR32_CLONE3 => clone::clone3_enter(&ctx),
        NR32_PIDFD_OPEN => {
            pidfd::open_enter(&ctx, xhints::COMPAT);
            return 0;
        }
        NR32_PIDFD_GETFD => {
            pidfd::getfd_enter(&ctx, xhints::COMPAT);
            return 0;
        }
        _ => {
            pidfd::send_signal_enter(&ctx, xhints::COMPAT);
            return 0;
        }
    }
    // Whatever a clone entry saved (nothing without CLONE_PIDFD) is a compat call.
    let tid = bpf_get_current_pid_tgid();
    if let Some(st) = state::current(tid) {
        // SAFETY: a valid map value pointer.
        unsafe { (*st).xhints |= xhints::COMPAT };
    }
    0
}

// prototype: syscall:*/0: TRACE_EVENT_FN(sys_exit, TP_PROTO(struct pt_regs *regs, long ret)); not one syscall: reads id and ret [5.10-7.1]
#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn compat_sys_exit(ctx: TracePointContext) -> u32 {
    // Hot path: every syscall exit on the host. One load and compare, then out.
    let id = id(&ctx);
    if !ours(id) || !in_compat_syscall() {
        return 0;
    }
    // One inlined copy of each exit path: the BPF stack is 512 bytes.
    if id == NR32_CLONE || id == NR32_CLONE3 {
        clone::clone_exit::<false>(&ctx, 0);
        return 0;
    }
    let kind = match id {
        NR32_PIDFD_OPEN => EventKind::PidfdOpen,
        NR32_PIDFD_GETFD => EventKind::PidfdGetfd,
        _ => EventKind::PidfdSendSignal,
    };
    exit_simple(&ctx, kind, xhints::COMPAT);
    0
}

//! Syscall tracepoint programs: the mode that works on every kernel with tracefs, including
//! hosts that refuse fentry and lack kprobes. Each syscall has an enter program that saves its
//! arguments per thread and an exit program that emits the outcome.
mod clone;
mod pidfd;

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};
use pidfd_trace_common::{EnterState, Mode, stats};

use crate::{
    emit,
    globals::{tp_arg_off, tp_ret_off},
    maps::{ENTER_STATE, bump_stat},
};

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(tp_arg_off(n)) }.unwrap_or(0)
}

#[inline(always)]
fn save(st: &EnterState) {
    let id = bpf_get_current_pid_tgid();
    if ENTER_STATE.insert(&id, st, 0).is_err() {
        bump_stat(stats::ENTER_FAILED);
    }
}

/// Takes this thread's entry state, if its enter program stored one.
#[inline(always)]
fn take(id: u64) -> Option<EnterState> {
    let st = unsafe { ENTER_STATE.get(&id) }.copied()?;
    let _ = ENTER_STATE.remove(&id);
    Some(st)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i64>(tp_ret_off()) }.unwrap_or(0)
}

/// Exit path shared by the pidfd_* syscalls, which need nothing beyond their arguments.
#[inline(always)]
fn exit_simple(ctx: &TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    let Some(st) = take(id) else {
        return;
    };
    emit::finish(ctx, &st, id, ret(ctx), -1, 0, Mode::Tracepoint);
}

#[inline(always)]
fn now() -> u64 {
    unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() }
}

//! task:task_newtask: fires inside copy_process, in the parent's context, once the child
//! exists (and, with CLONE_PIDFD, after its pidfd was installed in the parent's fd table). It
//! carries what the kernel acted on, which the caller cannot change afterwards: the child's
//! pid in the initial namespace and the clone flags (without CSIGNAL).
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use pidfd_trace_common::{EnterState, EventKind, xhints};

use crate::{maps::in_flight, state};

/// Field offsets of the task_newtask record (`pid` after the 8-byte common header, then
/// `comm[16]`, then `clone_flags` aligned to 8), the same from 5.10 to 6.18; the agent checks
/// them in the format file and does not attach this program if they differ.
const PID_OFF: usize = 8;
const CLONE_FLAGS_OFF: usize = 32;

// prototype: syscall:*/0: TRACE_EVENT(task_newtask, TP_PROTO(struct task_struct *task, u64 clone_flags)); not a syscall: reads the record's pid and clone_flags, checked in its format file [5.10-7.1]
#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let Some(st) = pidfd_clone_in_flight() else { return 0 };
    // SAFETY: direct context loads at constant offsets.
    let base = ctx.as_ptr() as *const u8;
    unsafe { record(st, *(base.add(PID_OFF) as *const i32), *(base.add(CLONE_FLAGS_OFF) as *const u64)) };
    0
}

/// The calling thread's CLONE_PIDFD clone (or clone3 whose flags were unreadable) between its
/// syscall entry and exit. Every fork and thread creation on the host asks: one load of the
/// in-flight word and out while no such call is in flight anywhere.
#[inline(always)]
fn pidfd_clone_in_flight() -> Option<&'static mut EnterState> {
    if !in_flight() {
        return None;
    }
    let id = bpf_get_current_pid_tgid();
    // SAFETY: a valid map value pointer, this thread's own entry.
    let st = unsafe { &mut *state::current(id)? };
    (st.kind == EventKind::Clone as u8 || st.kind == EventKind::Clone3 as u8).then_some(st)
}

/// What the kernel created: the child's host pid and the clone flags it acted on.
#[inline(always)]
fn record(st: &mut EnterState, child_pid: i32, kflags: u64) {
    st.child_pid = child_pid;
    st.kflags = kflags;
    st.xhints |= xhints::NEWTASK;
}

// prototype: syscall:*/0: TRACE_EVENT(task_newtask, TP_PROTO(struct task_struct *task, u64 clone_flags)) as a raw tracepoint: ctx[0] = the child, ctx[1] = clone_flags; not a syscall [5.10-7.3]
/// The same as `task_newtask`, attached as a raw tracepoint (preferred; the agent falls back
/// to the event above when the kernel refuses it). A raw tracepoint gets the tracepoint's
/// arguments as they are: no trace record is built (the child's comm copied, the perf buffer
/// taken) before the program runs, which is most of what every fork on the host paid for this
/// hook (bpf_stats on the 6.18 host: about 100 ns per fork as an event, see BENCHMARKS.md).
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn task_newtask_raw(ctx: RawTracePointContext) -> u32 {
    let Some(st) = pidfd_clone_in_flight() else { return 0 };
    let task = ctx.arg::<u64>(0) as *const u8;
    // The child's host pid: task->thread_pid->numbers[0].nr (what the event's `pid` is).
    let (t, fo) = (crate::globals::truth_offsets(), crate::globals::fd_pid_offsets());
    // SAFETY: probe reads of the new task.
    unsafe {
        let Ok(pid) = bpf_probe_read_kernel(task.add(t.task_thread_pid as usize) as *const *const u8) else {
            return 0;
        };
        let Ok(nr) = bpf_probe_read_kernel(pid.add(fo.pid_numbers_nr as usize) as *const i32) else {
            return 0;
        };
        record(st, nr, ctx.arg::<u64>(1));
    }
    0
}

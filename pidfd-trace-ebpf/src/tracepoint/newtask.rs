//! task:task_newtask: fires inside copy_process, in the parent's context, once the child
//! exists (and, with CLONE_PIDFD, after its pidfd was installed in the parent's fd table). It
//! carries what the kernel acted on, which the caller cannot change afterwards: the child's
//! pid in the initial namespace and the clone flags (without CSIGNAL).
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use pidfd_trace_common::{EventKind, xhints};

use crate::maps::{ENTER_STATE, in_flight};

/// Field offsets of the task_newtask record (`pid` after the 8-byte common header, then
/// `comm[16]`, then `clone_flags` aligned to 8), the same from 5.10 to 6.18; the agent checks
/// them in the format file and does not attach this program if they differ.
const PID_OFF: usize = 8;
const CLONE_FLAGS_OFF: usize = 32;

// prototype: syscall:*/0: TRACE_EVENT(task_newtask, TP_PROTO(struct task_struct *task, u64 clone_flags)); not a syscall: reads the record's pid and clone_flags, checked in its format file [5.10-7.1]
#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    // Every fork and thread creation on the host lands here: one load of the in-flight word
    // and out, unless a CLONE_PIDFD clone (or a clone3 whose flags were unreadable) is
    // between its syscall entry and exit somewhere.
    if !in_flight() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(st) = ENTER_STATE.get_ptr_mut(&id) else { return 0 };
    // SAFETY: a valid map value pointer; direct context loads at constant offsets.
    unsafe {
        let st = &mut *st;
        if st.kind != EventKind::Clone as u8 && st.kind != EventKind::Clone3 as u8 {
            return 0;
        }
        let base = ctx.as_ptr() as *const u8;
        st.child_pid = *(base.add(PID_OFF) as *const i32);
        st.kflags = *(base.add(CLONE_FLAGS_OFF) as *const u64);
        st.xhints |= xhints::NEWTASK;
    }
    0
}

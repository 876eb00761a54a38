//! cgroup_can_fork: the step where the pids controller refuses a new task (EAGAIN), after the
//! pidfd already exists.
use aya_ebpf::{
    macros::{fexit, kretprobe},
    programs::{FExitContext, RetProbeContext},
};
use pidfd_trace_common::{Mode, fn_params, hints};

use super::{current_call, mark};
use crate::task::pids_cgroup_at_limit;

// Parameter count: the `// prototype:` line of each program below.
const PARAMS: usize = fn_params::CGROUP_CAN_FORK;
const EAGAIN: i32 = 11;

// prototype: cgroup_can_fork/2: int cgroup_can_fork(struct task_struct *child, struct kernel_clone_args *kargs) [5.7-7.1]
#[fexit(function = "cgroup_can_fork")]
pub fn cgfork_fexit(ctx: FExitContext) -> u32 {
    // An `int` return: only the low 32 bits of the slot are meaningful.
    returned(ctx.arg::<u64>(PARAMS) as i32, Mode::Fexit);
    0
}

// prototype: cgroup_can_fork/2: int cgroup_can_fork(struct task_struct *child, struct kernel_clone_args *kargs) [5.7-7.1]
#[kretprobe]
pub fn cgfork_kret(ctx: RetProbeContext) -> u32 {
    returned(ctx.ret::<u64>() as i32, Mode::Kprobe);
    0
}

#[inline(always)]
fn returned(ret: i32, mode: Mode) {
    // Called for every fork: current_call() reads the in-flight word first.
    if ret >= 0 {
        return;
    }
    if let Some(st) = current_call()
        && st.hints & hints::COPY_PROCESS != 0
    {
        let mut bits = hints::CGROUP_FORK_FAILED;
        if ret == -EAGAIN && pids_cgroup_at_limit() {
            bits |= hints::PIDS_AT_LIMIT;
        }
        mark(st, bits, mode);
    }
}

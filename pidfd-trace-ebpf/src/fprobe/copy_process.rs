//! copy_process entry and exit: marks the clone as seen inside the kernel and times it.
use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use pidfd_trace_common::{Mode, clone_flags::CLONE_PIDFD, fn_params, hints};

use super::{current_call, mark};

// Each program's `// prototype:` line is the kernel prototype it relies on; the agent checks
// the parameter count against BTF (`check`'s "prototypes"). kernel_clone_args.flags is the first member in every version (the agent checks in BTF).
const ARGS: usize = fn_params::COPY_PROCESS_ARGS;

// prototype: copy_process/4: struct task_struct *copy_process(struct pid *pid, int trace, int node, struct kernel_clone_args *args) [5.10-7.1]
#[fentry(function = "copy_process")]
pub fn cp_fentry(ctx: FEntryContext) -> u32 {
    enter(ctx.arg::<u64>(ARGS), Mode::Fexit);
    0
}

// prototype: copy_process/4: struct task_struct *copy_process(struct pid *pid, int trace, int node, struct kernel_clone_args *args) [5.10-7.1]
#[fexit(function = "copy_process")]
pub fn cp_fexit(_ctx: FExitContext) -> u32 {
    exit();
    0
}

// prototype: copy_process/4: struct task_struct *copy_process(struct pid *pid, int trace, int node, struct kernel_clone_args *args) [5.10-7.1]
#[kprobe]
pub fn cp_kprobe(ctx: ProbeContext) -> u32 {
    enter(ctx.arg::<u64>(ARGS).unwrap_or(0), Mode::Kprobe);
    0
}

// prototype: copy_process/4: struct task_struct *copy_process(struct pid *pid, int trace, int node, struct kernel_clone_args *args) [5.10-7.1]
#[kretprobe]
pub fn cp_kretprobe(_ctx: RetProbeContext) -> u32 {
    exit();
    0
}

#[inline(always)]
fn enter(args: u64, mode: Mode) {
    // Every fork on the host enters copy_process: bail before any map access unless
    // CLONE_PIDFD is set.
    let Ok(flags) = (unsafe { bpf_probe_read_kernel(args as *const u64) }) else { return };
    if flags & CLONE_PIDFD == 0 {
        return;
    }
    if let Some(st) = current_call() {
        mark(st, hints::COPY_PROCESS, mode);
        // arg0/arg1 are unused by clone entry states: arg1 holds the start, arg0 the duration.
        st.arg1 = unsafe { bpf_ktime_get_boot_ns() };
    }
}

#[inline(always)]
fn exit() {
    if let Some(st) = current_call()
        && st.hints & hints::COPY_PROCESS != 0
    {
        st.arg0 = unsafe { bpf_ktime_get_boot_ns() }.wrapping_sub(st.arg1);
    }
}

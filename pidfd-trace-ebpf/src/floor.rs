//! The benchmark floor: the cheapest useful tracepoint program, one per-CPU counter bump.
//! `cargo xtask bench` attaches it (through `pidfd-trace bench-floor`) to the same tracepoints
//! as our hooks, so that their cost per run can be stated as a multiple of what any program on
//! that tracepoint costs on this machine. The agent never attaches it.
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};

/// Runs of the floor program on this CPU.
#[map]
static FLOOR_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// prototype: syscall:*/0: any tracepoint; the floor program reads no argument [5.10-7.1]
/// One program attached to every tracepoint the bench names (bpf_stats count per program, and
/// the work does not depend on the tracepoint).
#[tracepoint]
pub fn pidfd_floor(_ctx: TracePointContext) -> u32 {
    if let Some(p) = FLOOR_RUNS.get_ptr_mut(0) {
        unsafe { *p += 1 };
    }
    0
}

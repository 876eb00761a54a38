//! Kernel programs of pidfd-trace. They only gather: raw flags, return values and what each
//! hook saw go into exact per-CPU counters and ring-buffer records; the agent names,
//! classifies and formats them.
//!
//! Built for the host too (`cargo clippy --workspace`), where it is an empty program: the
//! kernel-only attributes below apply to the bpf target alone.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// BPF_XADD for the in-flight gates (see maps::gate_add).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]
// Map keys are passed as explicit borrows: the helpers take a pointer to our stack copy, and
// the code the verifier sees should not depend on how aya-ebpf's generic `Borrow` is lowered.
#![allow(clippy::needless_borrows_for_generic_args)]

mod emit;
mod floor;
mod fprobe;
mod globals;
mod maps;
mod risk;
mod state;
mod task;
mod tracepoint;
mod words;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// On the host this crate is only type-checked and linted; the programs run in the kernel.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

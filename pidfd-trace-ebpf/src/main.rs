//! Kernel programs of pidfd-trace. They only gather: raw flags, return values and what each
//! hook saw go into exact per-CPU counters and ring-buffer records; the agent names,
//! classifies and formats them.
#![no_std]
#![no_main]
// BPF_XADD for the in-flight gates (see maps::gate_add).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod emit;
mod floor;
mod fprobe;
mod globals;
mod maps;
mod task;
mod tracepoint;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! Function probes (fexit/fentry first, kprobe/kretprobe second) inside copy_process and the
//! pidfd creation step. They never emit records of their own: they add what they saw to the
//! calling thread's syscall entry state, so the syscall exit tracepoint sends one merged
//! record per call, with the mode upgraded to the function probe's.
//!
//! The agent checks each kernel function's parameter count in BTF against the constants
//! below before attaching fexit programs, because an fexit program finds the return value
//! right after the last argument.
mod autokill;
mod cgroup;
mod copy_process;
mod creation;
mod funnel;
mod release;

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use pidfd_trace_common::{EnterState, Mode};

use crate::{maps::in_flight, state};

/// The calling thread's in-flight pidfd call, if any. Cheap when nothing is in flight.
#[inline(always)]
fn current_call() -> Option<&'static mut EnterState> {
    if !in_flight() {
        return None;
    }
    let id = bpf_get_current_pid_tgid();
    state::current(id).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn mark(st: &mut EnterState, bits: u8, mode: Mode) {
    st.hints |= bits;
    st.mode = mode as u8;
}

/// Whether an anon inode's name (a kernel string) is "[pidfd]": anon inodes are also epoll,
/// eventfd, bpf maps, ...; one 8-byte probe read. Callers gate it first (creation.rs on a
/// pidfd call in flight, funnel.rs on the funnel or a coredump set-up).
#[inline(always)]
fn is_pidfd_name(name: u64) -> bool {
    let mut buf = [0u8; 8];
    matches!(unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(name as *const u8, &mut buf) }, Ok(b) if b == b"[pidfd]")
}

/// Kernel pointers returned as `ERR_PTR(-errno)` fall in the last page of the address space.
#[inline(always)]
fn is_err_ptr(v: u64) -> bool {
    v >= (-4095i64) as u64
}

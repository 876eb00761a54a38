//! The maps every hook family shares, each named after what it feeds.
use core::sync::atomic::AtomicU64;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use pidfd_trace_common::{
    CounterKey, ENTER_STATE_MAX_ENTRIES, EVENTS_RING_BYTES, EnterState, OUTCOMES_MAX_ENTRIES, closes, risk,
    stats,
};

/// Event records for the agent's decoder. The agent may resize it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Exact outcome counters behind the metrics; a lost record never changes them.
#[map]
pub static OUTCOMES: PerCpuHashMap<CounterKey, u64> =
    PerCpuHashMap::with_max_entries(OUTCOMES_MAX_ENTRIES, 0);

/// Exact counters of risky pidfd_getfd calls (risk.rs), behind
/// `pidfd_trace_getfd_risky_total{reason}`, one slot per set of reasons (`risk::slot`): it
/// cannot fill, and a lost record never changes it.
#[map]
pub static RISKY: PerCpuArray<u64> = PerCpuArray::with_max_entries(risk::SLOTS, 0);

/// Self-accounting: records attempted, records lost, map failures (see `stats`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Syscall arguments from entry, keyed by pid_tgid, until the same thread's exit.
#[map]
pub static ENTER_STATE: LruHashMap<u64, EnterState> =
    LruHashMap::with_max_entries(ENTER_STATE_MAX_ENTRIES, 0);

/// Pidfd closes and the lifetime histogram (`closes::*` slots); exact per-CPU counters.
#[map]
pub static CLOSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(closes::COUNT, 0);

/// Creation time (boot ns) of each pidfd file a creation hook saw, keyed by its `struct file`
/// pointer; the release hook takes the entry out. Written only while `CLOSE_ON[0]` is 1.
#[map]
pub static PIDFD_BORN: HashMap<u64, u64> = HashMap::with_max_entries(closes::BORN_MAX_ENTRIES, 0);

/// `[0]` = 1 once the agent has attached a release hook: creation hooks remember births only
/// then, so the birth table cannot fill with pidfds whose close nobody would see.
#[map]
pub static CLOSE_ON: Array<u32> = Array::with_max_entries(1, 0);

/// CLONE_PIDFD clones and pidfd_open calls between syscall entry and exit, host-wide. Hooks
/// that fire for every clone exit or every fork (cgroup_can_fork, anon inodes) read this one
/// word and return before any map look-up while it is zero, which is almost always.
pub static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// Calls that use a pidfd (pidfd_getfd, pidfd_send_signal, waitid with P_PIDFD, ...), and
/// the creation paths with an entry program (getsockopt SO_PEERPIDFD, open_by_handle_at of a
/// pidfs handle), between entry and exit, host-wide. Exit programs of hot syscalls (waitid's
/// and getsockopt's exits fire for every call on the host) read this word and return before
/// any map look-up while it is zero.
pub static USES_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// Threads inside `pidfs_file_release` (7.1+: closing a pidfd's last reference), host-wide.
/// The signal-sending function probed under it (do_send_sig_info) runs for every signal on
/// the host and returns on this word before any map look-up while it is zero.
pub static AUTOKILL_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// The pidfd release in progress on a thread (keyed by pid_tgid): the killed process and when
/// the release began, until the same thread leaves `pidfs_file_release`.
#[map]
pub static AUTOKILL_STATE: LruHashMap<u64, EnterState> = LruHashMap::with_max_entries(1024, 0);

/// Function modes: pidfds the creation funnel (fprobe/funnel.rs) saw made outside the
/// traced syscalls and not yet installed, plus coredump helper set-ups in progress,
/// host-wide. `fd_install` and `put_unused_fd` (every open on the host) return on this word
/// before any map look-up while it is zero.
pub static FUNNEL_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// The funnel's pending pidfd per thread (keyed by pid_tgid): the path, target facts and, in
/// `arg0`, the `struct file *` until `fd_install` of that file gives it its number. Not an
/// LRU map: when it is full a new entry fails, counted in `stats::ENTER_FAILED`, instead of
/// silently evicting another thread's pending pidfd.
#[map]
pub static FUNNEL_STATE: HashMap<u64, EnterState> = HashMap::with_max_entries(8192, 0);

/// `[0]` = 1 once the agent has attached the funnel's `fd_install` and `put_unused_fd`
/// programs: pidfs allocations outside the traced syscalls are remembered only then, so no
/// entry waits for an install nobody would see.
#[map]
pub static FUNNEL_ON: Array<u32> = Array::with_max_entries(1, 0);

/// The last pidfd file the funnel reported at an `fd_install`, per CPU: the anon_inode_getfd
/// program of kernels before 5.12 (whose anon_inode_getfd calls the exported
/// anon_inode_getfile, reported already) skips that file instead of reporting it twice.
#[map]
pub static FUNNEL_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn in_flight() -> bool {
    is_open(&IN_FLIGHT)
}

/// Whether any call holds `gate` open.
#[inline(always)]
pub fn is_open(gate: &AtomicU64) -> bool {
    // A plain volatile load: the bpf backend cannot select LLVM's atomic load.
    unsafe { core::ptr::read_volatile(gate.as_ptr()) != 0 }
}

/// Adds `delta` (wrapping; pass `u64::MAX` for −1) to a gate's in-flight count. The bpf
/// target has no atomic read-modify-write in `core::sync::atomic`; this intrinsic with an
/// unused result compiles to BPF_XADD, which every kernel we support accepts.
#[inline(always)]
pub fn gate_add(gate: &AtomicU64, delta: u64) {
    // SAFETY: the gate is a valid, aligned u64 for the program's lifetime.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            gate.as_ptr(),
            delta,
        );
    }
    // Host builds (lint only) have the ordinary atomic.
    #[cfg(not(target_arch = "bpf"))]
    gate.fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}

/// Adds one to this CPU's slot `idx` of `STATS` and returns the new value (0 if the slot is
/// missing, which the verifier-checked bounds make impossible).
#[inline(always)]
pub fn bump_stat(idx: u32) -> u64 {
    match STATS.get_ptr_mut(idx) {
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

/// Adds `n` to this CPU's slot `idx` of `CLOSES`.
#[inline(always)]
pub fn bump_close(idx: u32, n: u64) {
    if let Some(p) = CLOSES.get_ptr_mut(idx) {
        unsafe { *p += n };
    }
}

//! The maps every hook family shares, each named after what it feeds.
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use pidfd_trace_common::{
    CounterKey, ENTER_STATE_MAX_ENTRIES, EVENTS_RING_BYTES, EnterState, OUTCOMES_MAX_ENTRIES, stats,
};

/// Event records for the agent's decoder. The agent may resize it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Exact outcome counters behind the metrics; a lost record never changes them.
#[map]
pub static OUTCOMES: PerCpuHashMap<CounterKey, u64> =
    PerCpuHashMap::with_max_entries(OUTCOMES_MAX_ENTRIES, 0);

/// Self-accounting: records attempted, records lost, map failures (see `stats`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Syscall arguments from entry, keyed by pid_tgid, until the same thread's exit.
#[map]
pub static ENTER_STATE: LruHashMap<u64, EnterState> =
    LruHashMap::with_max_entries(ENTER_STATE_MAX_ENTRIES, 0);

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

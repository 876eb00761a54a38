//! A snapshot of the kernel programs' exact per-CPU counters, summed over CPUs: plain data
//! that `probes` reads and the metrics sink (sink/metrics.rs) and the closing summaries use,
//! so that neither needs the loaded programs.
use pidfd_trace_common::{CounterKey, closes, risk, stats};

/// The `OUTCOMES` and `STATS` maps at one moment.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Every outcome counter (one per distinct `CounterKey`), summed over CPUs.
    pub outcomes: Vec<(CounterKey, u64)>,
    /// The `STATS` slots (indexed by `pidfd_trace_common::stats::*`), summed over CPUs.
    pub stats: [u64; stats::COUNT as usize],
    /// The risky-getfd counters, one per set of reasons (`risk::slot`), summed over CPUs.
    pub risky: [u64; risk::SLOTS as usize],
    /// The `CLOSES` slots (indexed by `pidfd_trace_common::closes::*`), summed over CPUs:
    /// pidfd closes and their lifetimes (function-probe modes; zero otherwise).
    pub closes: [u64; closes::COUNT as usize],
}

impl Counters {
    /// One `STATS` slot, e.g. `stats::LOST`.
    pub fn stat(&self, slot: u32) -> u64 {
        self.stats.get(slot as usize).copied().unwrap_or(0)
    }
}

//! Which events `trace` shows: the user's --pid, --comm and --failures-only. Counters are
//! never filtered; only what is printed.
use crate::event::Event;

/// What `trace` shows; every field empty/false shows everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `--pid`: callers whose pid or tid is one of these.
    pub pids: Vec<u32>,
    /// `--comm`: callers whose command name is exactly one of these.
    pub comms: Vec<String>,
    /// `--failures-only`: failed calls only.
    pub failures_only: bool,
}

impl Filter {
    /// Whether `ev` is shown.
    pub fn matches(&self, ev: &Event) -> bool {
        (self.pids.is_empty() || self.pids.iter().any(|&p| p == ev.pid || p == ev.tid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| *c == *ev.comm))
            && (!self.failures_only || ev.failed())
    }
}

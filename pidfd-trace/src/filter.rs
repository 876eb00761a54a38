//! Which events `trace` shows: the user's --pid, --comm and --failures-only. Counters are
//! never filtered; only what is printed.
use crate::event::Event;

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub failures_only: bool,
}

impl Filter {
    pub fn matches(&self, ev: &Event) -> bool {
        (self.pids.is_empty() || self.pids.iter().any(|&p| p == ev.pid || p == ev.tid))
            && (self.comms.is_empty() || self.comms.contains(&ev.comm))
            && (!self.failures_only || ev.failed())
    }
}

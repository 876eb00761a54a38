//! How each process made its pidfds: successful creations per source, from the events the
//! agent saw (so records lost to a full ring buffer are missing here). The leak detector
//! names them ("pidfd_open 1,204"). A sink on the event pipeline fills it; the inventory
//! thread reads it and forgets processes that are gone.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    sync::{Arc, Mutex},
};

use crate::{event::Event, names, sink::Sink};

/// Per pid: source (`clone`, `clone3`, `pidfd_open`, ...) → pidfds created.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<HashMap<u32, BTreeMap<&'static str, u64>>>>);

impl Ledger {
    /// The sources of `pid`'s pidfds, busiest first, as `pidfd_open 1,204, clone 3`.
    pub fn describe(&self, pid: u32) -> String {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = map.get(&pid) else {
            return "no creation seen by this agent".into();
        };
        let mut v: Vec<(&str, u64)> = s.iter().map(|(k, n)| (*k, *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.iter().map(|(k, n)| format!("{k} {}", thousands(*n))).collect::<Vec<_>>().join(", ")
    }

    /// The sources of `pid`'s pidfds as a map, for the JSON record.
    pub fn sources(&self, pid: u32) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&pid).cloned().unwrap_or_default()
    }

    /// Forgets every pid not in `alive`.
    pub fn retain(&self, alive: &HashSet<u32>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|pid, _| alive.contains(pid));
    }
}

/// `1204` → `1,204`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Sink for Ledger {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if ev.pidfd.is_some() && !ev.failed() {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            *map.entry(ev.pid).or_default().entry(names::event_name(ev.event)).or_insert(0) += 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1204), "1,204");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn describe_busiest_first() {
        let l = Ledger::default();
        l.0.lock().unwrap().insert(7, BTreeMap::from([("clone", 3), ("pidfd_open", 1204)]));
        assert_eq!(l.describe(7), "pidfd_open 1,204, clone 3");
        assert_eq!(l.describe(8), "no creation seen by this agent");
        l.retain(&HashSet::from([8]));
        assert!(l.sources(7).is_empty());
    }
}

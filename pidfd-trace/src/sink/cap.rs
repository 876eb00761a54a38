//! The cardinality cap for per-process and per-container series (`--max-label-values N`):
//! the N busiest values get their own series, everything else is summed under [`OVERFLOW`].
//!
//! Guarantees (README, "Per-process and per-container series"):
//! - a series never goes backwards while the agent runs: a value pushed out of the top N
//!   keeps its series, frozen at its count (its later events go to the overflow series), and
//!   continues it if it is admitted again;
//! - the overflow value cannot be a real name: it is longer than a command name can be (15
//!   bytes) and has characters no container id or machine name has;
//! - a busy late value is found: values outside the top N are tracked with the Space-Saving
//!   algorithm (a bounded table in which a newcomer replaces the least counted entry and
//!   inherits its count), so a value that is busy in a window is in the table at its end,
//!   and each ranking window it replaces the quietest admitted value if it was busier;
//! - memory stays bounded: at most 4×N values keep a series (admitted plus frozen); beyond
//!   that the value frozen longest ago loses its series and its counts are remembered (a
//!   bounded table), so if it comes back its series resumes from there.
use std::collections::{HashMap, VecDeque};

use prometheus::IntCounterVec;

/// The label value that collects everything outside the top N. 25 bytes with spaces and
/// dashes: no command name (at most 15 bytes) and no container id can equal it.
pub const OVERFLOW: &str = "(over --max-label-values)";

/// Which values of one label get their own series.
pub struct LabelCap {
    max: usize,
    /// Admitted values → events in the current ranking window.
    admitted: HashMap<String, u64>,
    /// Values counted under the overflow value → estimated events in the current window
    /// (Space-Saving: an overestimate by at most the count it inherited).
    waiting: HashMap<String, u64>,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self { max, admitted: HashMap::new(), waiting: HashMap::new() }
    }

    fn waiting_cap(&self) -> usize {
        self.max * 8 + 64
    }

    /// Counts one event of `value`; true if it has its own series.
    pub fn admit(&mut self, value: &str) -> bool {
        if let Some(n) = self.admitted.get_mut(value) {
            *n += 1;
            return true;
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(value.to_string(), 1);
            return true;
        }
        if let Some(n) = self.waiting.get_mut(value) {
            *n += 1;
        } else if self.waiting.len() < self.waiting_cap() {
            self.waiting.insert(value.to_string(), 1);
        } else if self.max > 0 {
            // Space-Saving: the newcomer takes the least counted entry's place and count.
            let (least, n) = self
                .waiting
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
                .map(|(k, v)| (k.clone(), *v))
                .expect("waiting is full, so not empty");
            self.waiting.remove(&least);
            self.waiting.insert(value.to_string(), n + 1);
        }
        false
    }

    /// Ends a ranking window: a waiting value busier than the quietest admitted one takes
    /// its place. Returns the values that were admitted and the values that were evicted.
    pub fn rerank(&mut self) -> (Vec<String>, Vec<String>) {
        let mut waiting: Vec<(String, u64)> = self.waiting.drain().collect();
        waiting.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let (mut admitted, mut evicted) = (Vec::new(), Vec::new());
        for (value, n) in waiting {
            let Some((quiet, quiet_n)) = self
                .admitted
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(k, v)| (k.clone(), *v))
            else {
                break;
            };
            if n <= quiet_n {
                break;
            }
            self.admitted.remove(&quiet);
            // Admitted with this window's count, so it is not pushed straight back out.
            self.admitted.insert(value.clone(), n);
            admitted.push(value);
            evicted.push(quiet);
        }
        for n in self.admitted.values_mut() {
            *n = 0;
        }
        (admitted, evicted)
    }

    #[cfg(test)]
    pub fn is_admitted(&self, value: &str) -> bool {
        self.admitted.contains_key(value)
    }
}

/// A counter whose first label is capped. Labels that describe the capped value (a
/// container's runtime and pod) come next and are empty on the overflow series; the rest
/// follow.
pub struct CappedCounter {
    vec: IntCounterVec,
    cap: LabelCap,
    /// Value → every full label set it has a series for (admitted or frozen).
    series: HashMap<String, Vec<Vec<String>>>,
    /// Values with a frozen series, evicted longest ago first.
    frozen: VecDeque<String>,
    /// Counts of series that were dropped to bound memory, so a returning value resumes
    /// from them (bounded: oldest forgotten first).
    remembered: HashMap<Vec<String>, u64>,
    remembered_order: VecDeque<Vec<String>>,
}

impl CappedCounter {
    pub fn new(vec: IntCounterVec, max: usize) -> Self {
        Self {
            vec,
            cap: LabelCap::new(max),
            series: HashMap::new(),
            frozen: VecDeque::new(),
            remembered: HashMap::new(),
            remembered_order: VecDeque::new(),
        }
    }

    /// Values that may keep a series at once (admitted and frozen).
    fn max_values(&self) -> usize {
        self.cap.max * 4
    }

    /// Label sets whose counts are remembered after their series was dropped.
    fn max_remembered(&self) -> usize {
        self.cap.max * 64 + 1024
    }

    pub fn inc(&mut self, value: &str, describing: &[&str], rest: &[&str]) {
        let mut labels: Vec<&str> = Vec::with_capacity(1 + describing.len() + rest.len());
        if self.cap.admit(value) {
            labels.push(value);
            labels.extend(describing);
            labels.extend(rest);
            let known = self.series.entry(value.to_string()).or_default();
            if !known.iter().any(|l| l.iter().map(String::as_str).eq(labels.iter().copied())) {
                let owned: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
                // A series dropped earlier resumes from its count: never backwards.
                if let Some(n) = self.remembered.remove(&owned) {
                    self.vec.with_label_values(&labels).inc_by(n);
                }
                known.push(owned);
            }
        } else {
            labels.push(OVERFLOW);
            labels.extend(describing.iter().map(|_| ""));
            labels.extend(rest);
        }
        self.vec.with_label_values(&labels).inc();
    }

    pub fn rerank(&mut self) {
        let (admitted, evicted) = self.cap.rerank();
        self.frozen.retain(|v| !admitted.contains(v));
        self.frozen.extend(evicted);
        // Newly admitted values get their series at their next event: count them now.
        let coming = admitted.iter().filter(|v| !self.series.contains_key(*v)).count();
        while self.series.len() + coming > self.max_values() {
            let Some(oldest) = self.frozen.pop_front() else { break };
            for labels in self.series.remove(&oldest).unwrap_or_default() {
                let l: Vec<&str> = labels.iter().map(String::as_str).collect();
                if let Ok(c) = self.vec.get_metric_with_label_values(&l) {
                    self.remembered.insert(labels.clone(), c.get());
                    self.remembered_order.push_back(labels.clone());
                }
                let _ = self.vec.remove_label_values(&l);
            }
        }
        while self.remembered_order.len() > self.max_remembered() {
            if let Some(old) = self.remembered_order.pop_front() {
                self.remembered.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    #[test]
    fn overflow_is_no_comm() {
        // TASK_COMM_LEN is 16 with the NUL: a command name has at most 15 bytes.
        assert!(OVERFLOW.len() > 15);
    }

    #[test]
    fn first_n_then_busiest() {
        let mut c = LabelCap::new(2);
        assert!(c.admit("a") && c.admit("b"));
        assert!(!c.admit("c"));
        for _ in 0..5 {
            assert!(!c.admit("d"));
        }
        c.admit("a");
        // d (5) beats b (1, the quietest); c (1) does not beat a (2).
        assert_eq!(c.rerank(), (vec!["d".to_string()], vec!["b".to_string()]));
        assert!(c.is_admitted("a") && c.is_admitted("d") && !c.is_admitted("b"));
        // A fresh window: a quiet admitted value is replaced by any busier waiting one.
        c.admit("d");
        c.admit("c");
        assert_eq!(c.rerank().1, vec!["a".to_string()]);
        assert!(c.is_admitted("c") && c.is_admitted("d"));
    }

    #[test]
    fn zero_means_everything_overflows() {
        let mut c = LabelCap::new(0);
        assert!(!c.admit("a"));
        assert!(c.rerank().1.is_empty());
    }

    #[test]
    fn busy_late_value_is_found_among_many_one_offs() {
        let mut c = LabelCap::new(1);
        c.admit("first");
        // The table of waiting values fills up with one-off names first.
        for i in 0..10_000 {
            c.admit(&format!("once-{i}"));
        }
        for _ in 0..50 {
            c.admit("busy");
        }
        assert!(c.waiting.len() <= 8 + 64);
        c.rerank();
        assert!(c.is_admitted("busy"), "the busy late value got its own series");
    }

    fn values(vec: &IntCounterVec) -> HashMap<String, u64> {
        prometheus::core::Collector::collect(vec)[0]
            .get_metric()
            .iter()
            .map(|m| (m.get_label()[0].value().to_string(), m.get_counter().get_value() as u64))
            .collect()
    }

    #[test]
    fn series_never_go_backwards() {
        let vec = IntCounterVec::new(Opts::new("t", "t"), &["comm", "runtime", "event"]).unwrap();
        let mut c = CappedCounter::new(vec.clone(), 1);
        c.inc("a", &["docker"], &["clone"]);
        c.inc("b", &["docker"], &["clone"]);
        c.inc("b", &["docker"], &["clone"]);
        assert_eq!(vec.with_label_values(&["a", "docker", "clone"]).get(), 1);
        assert_eq!(vec.with_label_values(&[OVERFLOW, "", "clone"]).get(), 2);
        c.rerank(); // b was busier: a is frozen at 1, b starts its own series
        c.inc("b", &["docker"], &["clone"]);
        c.inc("a", &["docker"], &["clone"]);
        let v = values(&vec);
        assert_eq!((v["a"], v["b"], v[OVERFLOW]), (1, 1, 3), "{v:?}");
        // a busier again: back in, and its series continues from 1.
        c.inc("a", &["docker"], &["clone"]);
        c.rerank();
        c.inc("a", &["docker"], &["clone"]);
        let v = values(&vec);
        assert_eq!((v["a"], v["b"], v[OVERFLOW]), (2, 1, 4), "{v:?}");
    }

    #[test]
    fn memory_is_bounded_and_dropped_series_resume() {
        let vec = IntCounterVec::new(Opts::new("t", "t"), &["comm", "event"]).unwrap();
        let mut c = CappedCounter::new(vec.clone(), 1);
        c.inc("v0", &[], &["clone"]);
        // Each window a new value is busier than the admitted one.
        for i in 1..20 {
            for _ in 0..3 {
                c.inc(&format!("v{i}"), &[], &["clone"]);
            }
            c.rerank();
            c.inc(&format!("v{i}"), &[], &["clone"]);
        }
        let v = values(&vec);
        assert!(v.len() <= 4 + 1, "at most 4×N values plus the overflow: {v:?}");
        assert!(!v.contains_key("v0"));
        // v0 comes back busy: its series resumes from 1, not from 0.
        for _ in 0..10 {
            c.inc("v0", &[], &["clone"]);
        }
        c.rerank();
        c.inc("v0", &[], &["clone"]);
        assert_eq!(values(&vec)["v0"], 2);
    }
}

//! The cardinality cap for per-process and per-container series (`--max-label-values N`):
//! the N busiest values get their own series, everything else is summed under `other`.
//!
//! Every exported series stays monotonic: a value's own series starts counting when it is
//! admitted (what it did before stays in `other`), and a value pushed out of the top N
//! loses its series (it goes stale in Prometheus) while its later counts go to `other`.
use std::collections::HashMap;

use prometheus::IntCounterVec;

/// The label value that collects everything outside the top N.
pub const OTHER: &str = "other";

/// Which values of one label get their own series.
pub struct LabelCap {
    max: usize,
    /// Admitted values → events in the current ranking window.
    admitted: HashMap<String, u64>,
    /// Values counted under `other` → events in the current window (bounded).
    waiting: HashMap<String, u64>,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self { max, admitted: HashMap::new(), waiting: HashMap::new() }
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
        } else if self.waiting.len() < self.max * 8 + 64 {
            self.waiting.insert(value.to_string(), 1);
        }
        false
    }

    /// Ends a ranking window: a waiting value busier than the quietest admitted one takes
    /// its place. Returns the values that lost their series.
    pub fn rerank(&mut self) -> Vec<String> {
        let mut waiting: Vec<(String, u64)> = self.waiting.drain().collect();
        waiting.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut evicted = Vec::new();
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
            self.admitted.insert(value, n);
            evicted.push(quiet);
        }
        for n in self.admitted.values_mut() {
            *n = 0;
        }
        evicted
    }

    #[cfg(test)]
    pub fn is_admitted(&self, value: &str) -> bool {
        self.admitted.contains_key(value)
    }
}

/// A counter whose first label is capped. Labels that describe the capped value (a
/// container's runtime and pod) come next and are empty on `other`; the rest follow.
pub struct CappedCounter {
    vec: IntCounterVec,
    cap: LabelCap,
    /// Admitted value → every full label set it has used, to delete them on eviction.
    series: HashMap<String, Vec<Vec<String>>>,
}

impl CappedCounter {
    pub fn new(vec: IntCounterVec, max: usize) -> Self {
        Self { vec, cap: LabelCap::new(max), series: HashMap::new() }
    }

    pub fn inc(&mut self, value: &str, describing: &[&str], rest: &[&str]) {
        let mut labels: Vec<&str> = Vec::with_capacity(1 + describing.len() + rest.len());
        if self.cap.admit(value) {
            labels.push(value);
            labels.extend(describing);
            labels.extend(rest);
            let known = self.series.entry(value.to_string()).or_default();
            if !known.iter().any(|l| l.iter().map(String::as_str).eq(labels.iter().copied())) {
                known.push(labels.iter().map(|s| s.to_string()).collect());
            }
        } else {
            labels.push(OTHER);
            labels.extend(describing.iter().map(|_| ""));
            labels.extend(rest);
        }
        self.vec.with_label_values(&labels).inc();
    }

    pub fn rerank(&mut self) {
        for gone in self.cap.rerank() {
            for labels in self.series.remove(&gone).unwrap_or_default() {
                let _ = self.vec.remove_label_values(&labels.iter().map(String::as_str).collect::<Vec<_>>());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

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
        assert_eq!(c.rerank(), vec!["b".to_string()]);
        assert!(c.is_admitted("a") && c.is_admitted("d") && !c.is_admitted("b"));
        // A fresh window: a quiet admitted value is replaced by any busier waiting one.
        c.admit("d");
        c.admit("c");
        assert_eq!(c.rerank(), vec!["a".to_string()]);
        assert!(c.is_admitted("c") && c.is_admitted("d"));
    }

    #[test]
    fn zero_means_everything_is_other() {
        let mut c = LabelCap::new(0);
        assert!(!c.admit("a"));
        assert!(c.rerank().is_empty());
    }

    #[test]
    fn waiting_list_is_bounded() {
        let mut c = LabelCap::new(1);
        for i in 0..10_000 {
            c.admit(&i.to_string());
        }
        assert!(c.waiting.len() <= 8 + 64);
    }

    #[test]
    fn series_stay_monotonic_and_bounded() {
        let vec = IntCounterVec::new(Opts::new("t", "t"), &["comm", "runtime", "event"]).unwrap();
        let mut c = CappedCounter::new(vec.clone(), 1);
        c.inc("a", &["docker"], &["clone"]);
        c.inc("b", &["docker"], &["clone"]);
        c.inc("b", &["docker"], &["clone"]);
        assert_eq!(vec.with_label_values(&["a", "docker", "clone"]).get(), 1);
        assert_eq!(vec.with_label_values(&["other", "", "clone"]).get(), 2);
        c.rerank(); // b was busier: a's series is deleted, b starts from zero
        c.inc("b", &["docker"], &["clone"]);
        c.inc("a", &["docker"], &["clone"]);
        assert_eq!(vec.with_label_values(&["b", "docker", "clone"]).get(), 1);
        assert_eq!(vec.with_label_values(&["other", "", "clone"]).get(), 3);
        let names: Vec<String> = prometheus::core::Collector::collect(&vec)[0]
            .get_metric()
            .iter()
            .map(|m| m.get_label()[0].value().to_string())
            .collect();
        assert_eq!(names.len(), 2, "only the admitted value and other: {names:?}");
    }
}

//! Leak detection: pure logic over successive inventory counts (README "Leak detection").
//!
//! Rule, per process (pid and start time, so a reused pid starts afresh), for its open
//! pidfds and, separately, its stale ones; W = the window, M = the minimum growth:
//! - **suspected** when the process has been seen for at least W, its count now is at least
//!   M above its count W ago, and it rose in both halves of the window (now > W/2 ago > W
//!   ago): it keeps growing, it did not just open many once;
//! - **cleared** when the count did not rise over the last W/2, or the process holds no
//!   pidfd any more (or exited).
//!
//! A steady holder never rises, so it is never suspected, however many pidfds it holds.
use std::{collections::HashMap, time::Duration};

/// The rule's parameters (`serve --leak-window`, `--leak-min-growth`).
#[derive(Clone, Copy, Debug)]
pub struct LeakRule {
    /// W: how far back the rule compares (`--leak-window`).
    pub window: Duration,
    /// M: the least rise over W that counts as growing (`--leak-min-growth`).
    pub min_growth: u64,
}

/// A process as one scan counted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Count {
    /// Its command name.
    pub comm: String,
    /// Open pidfds it holds.
    pub open: u64,
    /// Stale pidfds among them.
    pub stale: u64,
}

/// A suspicion raised or cleared.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The process.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// Raised (true) or cleared (false).
    pub suspected: bool,
    /// Open pidfds it holds now (0 when it exited).
    pub open: u64,
    /// Stale pidfds among them.
    pub stale: u64,
    /// Growth over the window, per minute (of the series that triggered; 0 on clear).
    pub growth_per_min: f64,
    /// Which count grew: `open` or `stale`.
    pub series: &'static str,
}

struct History {
    comm: String,
    /// (seconds since the detector started, open, stale), oldest first.
    samples: Vec<(f64, u64, u64)>,
    first_seen: f64,
    suspected: bool,
}

/// Keeps each holder's recent counts and applies the rule.
pub struct Detector {
    rule: LeakRule,
    procs: HashMap<(u32, u64), History>,
}

impl Detector {
    /// A detector with no history.
    pub fn new(rule: LeakRule) -> Self {
        Self { rule, procs: HashMap::new() }
    }

    /// Processes suspected now, as (pid, comm).
    pub fn suspected(&self) -> impl Iterator<Item = (u32, &str)> {
        self.procs.iter().filter(|(_, h)| h.suspected).map(|((pid, _), h)| (*pid, h.comm.as_str()))
    }

    /// One scan's counts, keyed by (pid, start time), taken `now` seconds after start.
    /// Returns the suspicions raised and cleared by it.
    pub fn observe(&mut self, now: f64, counts: &HashMap<(u32, u64), Count>) -> Vec<Change> {
        let mut changes = Vec::new();
        let w = self.rule.window.as_secs_f64();
        self.procs.retain(|key, h| {
            if counts.contains_key(key) {
                return true;
            }
            if h.suspected {
                changes.push(Change {
                    pid: key.0,
                    comm: h.comm.clone(),
                    suspected: false,
                    open: 0,
                    stale: 0,
                    growth_per_min: 0.0,
                    series: "open",
                });
            }
            false
        });
        for (key, c) in counts {
            let h = self.procs.entry(*key).or_insert_with(|| History {
                comm: c.comm.clone(),
                samples: Vec::new(),
                first_seen: now,
                suspected: false,
            });
            h.comm = c.comm.clone();
            h.samples.push((now, c.open, c.stale));
            // Keep the newest sample at or before now - W, and everything after it.
            if let Some(i) = h.samples.iter().rposition(|s| s.0 <= now - w)
                && i > 0
            {
                h.samples.drain(..i);
            }
            let at = |t: f64| h.samples.iter().rev().find(|s| s.0 <= t).copied();
            let (full, half) = (at(now - w), at(now - w / 2.0));
            let grew = |pick: fn(&(f64, u64, u64)) -> u64| -> Option<f64> {
                let (f, hf) = (full?, half?);
                let (a, b, n) = (pick(&f), pick(&hf), pick(&(now, c.open, c.stale)));
                (n >= a + self.rule.min_growth && n > b && b > a)
                    .then(|| (n - a) as f64 * 60.0 / (now - f.0).max(1e-9))
            };
            let still = |pick: fn(&(f64, u64, u64)) -> u64| {
                half.is_some_and(|hf| pick(&(now, c.open, c.stale)) > pick(&hf))
            };
            if !h.suspected {
                if now - h.first_seen < w {
                    continue;
                }
                let hit = grew(|s| s.1).map(|r| (r, "open")).or_else(|| grew(|s| s.2).map(|r| (r, "stale")));
                if let Some((rate, series)) = hit {
                    h.suspected = true;
                    changes.push(Change {
                        pid: key.0,
                        comm: c.comm.clone(),
                        suspected: true,
                        open: c.open,
                        stale: c.stale,
                        growth_per_min: rate,
                        series,
                    });
                }
            } else if !still(|s| s.1) && !still(|s| s.2) {
                h.suspected = false;
                changes.push(Change {
                    pid: key.0,
                    comm: c.comm.clone(),
                    suspected: false,
                    open: c.open,
                    stale: c.stale,
                    growth_per_min: 0.0,
                    series: "open",
                });
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> LeakRule {
        LeakRule { window: Duration::from_secs(10), min_growth: 10 }
    }

    fn one(pid: u32, open: u64, stale: u64) -> HashMap<(u32, u64), Count> {
        HashMap::from([((pid, 7), Count { comm: "leaky".into(), open, stale })])
    }

    #[test]
    fn steady_growth_is_flagged_after_one_window_then_cleared() {
        let mut d = Detector::new(rule());
        let mut raised = None;
        for t in 0..30 {
            let ch = d.observe(t as f64, &one(100, 5 + 3 * t, 0));
            if let Some(c) = ch.first() {
                assert!(c.suspected && c.series == "open");
                raised.get_or_insert((t, c.growth_per_min));
            }
        }
        let (t, rate) = raised.expect("flagged");
        assert_eq!(t, 10, "after exactly one window of history");
        assert!((rate - 180.0).abs() < 1e-6, "3 per second = 180/min: {rate}");
        assert_eq!(d.suspected().count(), 1);
        // Stops growing: cleared once the last half window shows no rise.
        let mut cleared = None;
        for t in 30..45 {
            if let Some(c) = d.observe(t as f64, &one(100, 95, 0)).first() {
                assert!(!c.suspected);
                cleared.get_or_insert(t);
            }
        }
        assert_eq!(cleared, Some(35));
    }

    #[test]
    fn steady_holder_and_one_time_ramp_are_not_leaks() {
        let mut d = Detector::new(rule());
        for t in 0..60 {
            // 1000 opened at once at t=20, then held.
            let ramp = if t < 20 { 3 } else { 1003 };
            let mut counts = one(1, 1000, 0);
            counts.insert((2, 9), Count { comm: "ramp".into(), open: ramp, stale: 0 });
            assert!(d.observe(t as f64, &counts).is_empty(), "t={t}");
        }
    }

    #[test]
    fn noisy_small_counts_are_not_leaks() {
        let mut d = Detector::new(rule());
        for t in 0..100u64 {
            assert!(d.observe(t as f64, &one(3, (t * 7919) % 9, 0)).is_empty());
        }
    }

    #[test]
    fn stale_growth_counts_and_exit_clears() {
        let mut d = Detector::new(rule());
        let mut hit = false;
        for t in 0..20u64 {
            // Open stays flat (fds reused), stale grows: children reaped, pidfds kept.
            for c in d.observe(t as f64, &one(4, 50, 2 * t)) {
                hit |= c.suspected && c.series == "stale";
            }
        }
        assert!(hit);
        let ch = d.observe(21.0, &HashMap::new());
        assert_eq!(ch.len(), 1);
        assert!(!ch[0].suspected);
        assert_eq!(d.suspected().count(), 0);
    }

    #[test]
    fn reused_pid_starts_afresh() {
        let mut d = Detector::new(rule());
        for t in 0..8u64 {
            d.observe(t as f64, &one(5, 10 * t, 0));
        }
        // Same pid, new start time: its history begins now, so no flag for another window.
        for t in 8..17u64 {
            let counts = HashMap::from([((5, 99), Count { comm: "new".into(), open: 10 * t, stale: 0 })]);
            assert!(d.observe(t as f64, &counts).iter().all(|c| !c.suspected), "t={t}");
        }
    }
}

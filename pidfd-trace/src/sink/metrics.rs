//! The Prometheus registry of `serve` and the metrics read from the kernel: README.md's
//! contract names, refreshed from the per-CPU counters (exact even when ring-buffer records
//! are lost), plus build info and the attach plan. Event-derived metrics live in `events.rs`.
use std::collections::HashMap;

use std::sync::{Arc, Mutex};

use pidfd_trace_common::{closes, stats};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, core::Collector, proto};

use super::Totals;
use super::outcomes::{self, Family};
use crate::{classify::KernelSemantics, counters::Counters};

#[derive(Debug, thiserror::Error)]
#[error("registering metric: {0}; this is a bug in pidfd-trace, please report it")]
pub struct MetricsError(#[from] prometheus::Error);

/// Every metric read from the kernel or from the agent's own state.
pub struct KernelMetrics {
    sem: KernelSemantics,
    families: Families,
    last: HashMap<(Family, Vec<String>), u64>,
    events: IntCounter,
    lost: IntCounter,
    outcomes_full: IntCounter,
    enter_failed: IntCounter,
    clone3_unreadable: IntCounter,
    unattributed: IntCounter,
    received: IntCounter,
    decode_errors: IntCounter,
    last_stats: [u64; stats::COUNT as usize],
    last_totals: Totals,
    risky: RiskyGetfd,
    closed: IntCounter,
    born_full: IntCounter,
    last_closes: [u64; closes::COUNT as usize],
    lifetime: LifetimeHistogram,
}

/// `pidfd_trace_pidfd_lifetime_seconds`: a histogram whose buckets the kernel fills (the
/// release hook computes each lifetime's bucket, `closes::BUCKETS_NS`); exported as the
/// kernel's running totals, so it is exact and survives lost records.
#[derive(Clone)]
pub struct LifetimeHistogram {
    desc: prometheus::core::Desc,
    /// Kernel `CLOSES` slots as last read.
    now: Arc<Mutex<[u64; closes::COUNT as usize]>>,
}

impl LifetimeHistogram {
    const NAME: &'static str = "pidfd_trace_pidfd_lifetime_seconds";
    const HELP: &'static str = "How long each pidfd file lived, from its creation to its last close, for the pidfds whose creation the agent saw (function-probe modes only; empty in tracepoint mode). From the kernel's counters.";

    fn register(reg: &Registry) -> Result<Self, MetricsError> {
        let desc = prometheus::core::Desc::new(
            Self::NAME.into(),
            Self::HELP.into(),
            Vec::new(),
            std::collections::HashMap::new(),
        )?;
        let h = Self { desc, now: Arc::new(Mutex::new([0; closes::COUNT as usize])) };
        reg.register(Box::new(h.clone()))?;
        Ok(h)
    }

    fn set(&self, slots: &[u64; closes::COUNT as usize]) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = *slots;
    }

    /// The histogram of the kernel slots `s`: cumulative buckets in seconds, count, sum.
    fn proto(s: &[u64; closes::COUNT as usize]) -> proto::Histogram {
        let mut h = proto::Histogram::default();
        h.set_sample_count(s[closes::TIMED as usize]);
        h.set_sample_sum(s[closes::SUM_NS as usize] as f64 / 1e9);
        let mut cumulative = 0;
        let mut buckets = Vec::new();
        for (i, bound) in closes::BUCKETS_NS.iter().enumerate() {
            cumulative += s[closes::BUCKET0 as usize + i];
            let mut b = proto::Bucket::default();
            b.set_cumulative_count(cumulative);
            b.set_upper_bound(*bound as f64 / 1e9);
            buckets.push(b);
        }
        h.set_bucket(buckets);
        h
    }
}

impl Collector for LifetimeHistogram {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let slots = *self.now.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = proto::Metric::default();
        m.set_histogram(Self::proto(&slots));
        let mut f = proto::MetricFamily::default();
        f.set_name(Self::NAME.into());
        f.set_help(Self::HELP.into());
        f.set_field_type(proto::MetricType::HISTOGRAM);
        f.set_metric(vec![m]);
        vec![f]
    }
}

/// `pidfd_trace_getfd_risky_total{reason}` from the kernel's `RISKY` counters: one slot per
/// set of reasons, every reason (`cross_container` too) decided in the kernel at the call
/// (README "Risky pidfd use"), so the counter is exact and cannot fill.
struct RiskyGetfd {
    counter: IntCounterVec,
    /// `pidfd_trace_getfd_risky_map_full_total`: kept (a contract name) and always 0 since the
    /// kernel map became an array that cannot fill.
    full: IntCounter,
    /// `pidfd_trace_risky_warnings_suppressed_total`: warn lines held back by the rate limit.
    suppressed: IntCounter,
    /// What each reason has been advanced to.
    last: [u64; 3],
}

impl RiskyGetfd {
    fn register(reg: &Registry) -> Result<Self, MetricsError> {
        let by_reason = counter_vec(
            reg,
            "pidfd_trace_getfd_risky_total",
            "pidfd_getfd calls that reached their target (succeeded or refused EPERM) whose target was exiting, ran with other credentials, or sat in another container, by reason. A call with several reasons counts once per reason. From the kernel's counters.",
            &["reason"],
        )?;
        for r in crate::risk::REASONS {
            by_reason.with_label_values(&[r]);
        }
        Ok(Self {
            counter: by_reason,
            full: counter(
                reg,
                "pidfd_trace_getfd_risky_map_full_total",
                "Always 0: the kernel's RISKY counters are one slot per set of reasons and cannot fill (kept for compatibility).",
            )?,
            suppressed: counter(
                reg,
                "pidfd_trace_risky_warnings_suppressed_total",
                "Risky pidfd_getfd warn lines not logged because of the log rate limit (the calls are still counted in pidfd_trace_getfd_risky_total).",
            )?,
            last: [0; 3],
        })
    }

    fn refresh(&mut self, counters: &Counters) {
        use pidfd_trace_common::risk;
        let mut now = [0u64; 3];
        for (i, reason) in
            [risk::TARGET_EXITING, risk::CRED_MISMATCH, risk::CROSS_CONTAINER].into_iter().enumerate()
        {
            for bits in 0..=u8::MAX {
                if bits & risk::COUNTED == bits && bits & reason != 0 {
                    now[i] += counters.risky[risk::slot(bits) as usize];
                }
            }
        }
        for (i, reason) in crate::risk::REASONS.iter().enumerate() {
            if now[i] > self.last[i] {
                self.counter.with_label_values(&[reason]).inc_by(now[i] - self.last[i]);
                self.last[i] = now[i];
            }
        }
        let full = counters.stat(stats::RISKY_FULL);
        if full > self.full.get() {
            self.full.inc_by(full - self.full.get());
        }
        let held = crate::enrich::RISKY_WARNS_SUPPRESSED.load(std::sync::atomic::Ordering::Relaxed);
        if held > self.suppressed.get() {
            self.suppressed.inc_by(held - self.suppressed.get());
        }
    }
}

fn counter(reg: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::new(name, help)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

/// One counter vector per `Family`, each registered once; `get` is an exhaustive match, so
/// a family without its metric does not build (and nothing can fail a look-up at run time).
struct Families {
    created: IntCounterVec,
    create_failures: IntCounterVec,
    getfd: IntCounterVec,
    getfd_failures: IntCounterVec,
    signals: IntCounterVec,
    signal_failures: IntCounterVec,
    uses: IntCounterVec,
}

impl Families {
    fn register(reg: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            created: counter_vec(
                reg,
                "pidfd_trace_pidfds_created_total",
                "Pidfds created, by source (clone, clone3 with CLONE_PIDFD; pidfd_open). From the kernel's counters.",
                &["source"],
            )?,
            create_failures: counter_vec(
                reg,
                "pidfd_trace_pidfd_create_failures_total",
                "Failed pidfd creations, by source, the step that failed (stage) and errno. From the kernel's counters.",
                &["source", "stage", "errno"],
            )?,
            getfd: counter_vec(
                reg,
                "pidfd_trace_getfd_total",
                "pidfd_getfd calls, successful or not. From the kernel's counters.",
                &[],
            )?,
            getfd_failures: counter_vec(
                reg,
                "pidfd_trace_getfd_failures_total",
                "Failed pidfd_getfd calls, by errno. From the kernel's counters.",
                &["errno"],
            )?,
            signals: counter_vec(
                reg,
                "pidfd_trace_signals_total",
                "pidfd_send_signal calls, successful or not, by signal. From the kernel's counters.",
                &["signal"],
            )?,
            signal_failures: counter_vec(
                reg,
                "pidfd_trace_signal_failures_total",
                "Failed pidfd_send_signal calls, by errno. From the kernel's counters.",
                &["errno"],
            )?,
            uses: counter_vec(
                reg,
                "pidfd_trace_pidfd_uses_total",
                "Calls that use a pidfd (waitid with P_PIDFD, ...), by op (the event name) and outcome (ok or the errno name). From the kernel's counters.",
                &["op", "outcome"],
            )?,
        })
    }

    fn get(&self, family: Family) -> &IntCounterVec {
        match family {
            Family::Created => &self.created,
            Family::CreateFailures => &self.create_failures,
            Family::Getfd => &self.getfd,
            Family::GetfdFailures => &self.getfd_failures,
            Family::Signals => &self.signals,
            Family::SignalFailures => &self.signal_failures,
            Family::Uses => &self.uses,
        }
    }
}

/// Adds `now - *last` to `c` and remembers `now` (kernel counters only grow).
fn advance(c: &IntCounter, last: &mut u64, now: u64) {
    if now > *last {
        c.inc_by(now - *last);
        *last = now;
    }
}

impl KernelMetrics {
    pub fn register(reg: &Registry, sem: KernelSemantics) -> Result<Self, MetricsError> {
        let families = Families::register(reg)?;
        // Every label set whose values are known in advance exists from the start at 0, so
        // increase() and rate() see the first event (README, "Series from zero").
        for (family, labels) in outcomes::initial_series(sem) {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            families.get(family).with_label_values(&l);
        }
        Ok(Self {
            sem,
            families,
            last: HashMap::new(),
            events: counter(
                reg,
                "pidfd_trace_events_total",
                "Calls the kernel programs observed (every counted outcome, whether or not its record reached the agent).",
            )?,
            lost: counter(
                reg,
                "pidfd_trace_events_lost_total",
                "Event records lost because the ring buffer was full. Counters stay exact; event logs and event-derived metrics miss these.",
            )?,
            outcomes_full: counter(
                reg,
                "pidfd_trace_outcomes_map_full_total",
                "Outcomes not counted because the kernel's outcome map was full.",
            )?,
            enter_failed: counter(
                reg,
                "pidfd_trace_enter_state_failures_total",
                "Syscall entries whose state could not be stored, so their exit was not observed.",
            )?,
            clone3_unreadable: counter(
                reg,
                "pidfd_trace_clone3_args_unreadable_total",
                "clone3 calls whose struct clone_args could not be read at entry (flags unknown, not counted).",
            )?,
            unattributed: counter(
                reg,
                "pidfd_trace_pidfds_unattributed_total",
                "Function modes (the creation funnel): pidfds the kernel made outside every creation path the agent can name (io_uring, kernel threads, a syscall it does not name): seen, not reported as events. 0 while the funnel is not attached (tracepoint mode): then nothing is seen.",
            )?,
            received: counter(
                reg,
                "pidfd_trace_events_received_total",
                "Event records the agent read from the ring buffer.",
            )?,
            decode_errors: counter(
                reg,
                "pidfd_trace_decode_errors_total",
                "Event records the agent could not decode (dropped).",
            )?,
            last_stats: [0; stats::COUNT as usize],
            last_totals: Totals::default(),
            risky: RiskyGetfd::register(reg)?,
            closed: counter(
                reg,
                "pidfd_trace_pidfds_closed_total",
                "Pidfd files released (their last close), every pidfd on the host, seen by the pidfd_release hook in function-probe modes; stays 0 in tracepoint mode, where the inventory (pidfd_trace_open_pidfds) is the source. From the kernel's counters.",
            )?,
            born_full: counter(
                reg,
                "pidfd_trace_pidfd_birth_table_full_total",
                "Pidfd creations whose time was not remembered because the kernel's birth table was full: their close counts, but not their lifetime.",
            )?,
            last_closes: [0; closes::COUNT as usize],
            lifetime: LifetimeHistogram::register(reg)?,
        })
    }

    /// Brings every kernel-derived series up to the kernel's current counts.
    pub fn refresh(&mut self, counters: &Counters, totals: &Totals) {
        let st = &counters.stats;
        let mut now: HashMap<(Family, Vec<String>), u64> = HashMap::new();
        for (key, n) in &counters.outcomes {
            for (family, labels) in outcomes::series(key, self.sem) {
                *now.entry((family, labels)).or_insert(0) += n;
            }
        }
        for ((family, labels), n) in now {
            let seen = self.last.entry((family, labels.clone())).or_insert(0);
            if n > *seen {
                let l: Vec<&str> = labels.iter().map(String::as_str).collect();
                self.families.get(family).with_label_values(&l).inc_by(n - *seen);
                *seen = n;
            }
        }
        for (c, slot) in [
            (&self.events, stats::RECORDS),
            (&self.lost, stats::LOST),
            (&self.outcomes_full, stats::OUTCOMES_FULL),
            (&self.enter_failed, stats::ENTER_FAILED),
            (&self.clone3_unreadable, stats::CLONE3_ARGS_UNREADABLE),
            (&self.unattributed, stats::FUNNEL_UNATTRIBUTED),
        ] {
            advance(c, &mut self.last_stats[slot as usize], st[slot as usize]);
        }
        self.risky.refresh(counters);
        let c = &counters.closes;
        advance(&self.closed, &mut self.last_closes[closes::CLOSED as usize], c[closes::CLOSED as usize]);
        advance(
            &self.born_full,
            &mut self.last_closes[closes::BORN_FULL as usize],
            c[closes::BORN_FULL as usize],
        );
        self.lifetime.set(c);
        advance(&self.received, &mut self.last_totals.delivered, totals.delivered);
        advance(&self.decode_errors, &mut self.last_totals.decode_errors, totals.decode_errors);
    }
}

/// `pidfd_trace_build_info{version,kernel} 1`.
pub fn register_build_info(reg: &Registry, kernel: &str) -> Result<(), MetricsError> {
    let g = IntGaugeVec::new(
        Opts::new("pidfd_trace_build_info", "Always 1: the agent's version and the kernel it runs on."),
        &["version", "kernel"],
    )?;
    g.with_label_values(&[env!("CARGO_PKG_VERSION"), kernel]).set(1);
    reg.register(Box::new(g))?;
    let start = IntGauge::new("pidfd_trace_start_time_seconds", "When the agent started, Unix time.")?;
    start.set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    );
    reg.register(Box::new(start))?;
    Ok(())
}

/// One row of `pidfd_trace_probe_attached`: a hook, one of its candidate modes, and whether
/// it is attached in that mode.
pub struct PlanRow {
    pub hook: &'static str,
    pub mode: &'static str,
    pub attached: bool,
}

/// `pidfd_trace_probe_attached{hook,mode}`: 1 for the mode each hook is attached in, 0 for
/// every other candidate mode of the plan, so the plan per host is one query.
pub fn register_attach_plan(reg: &Registry, rows: &[PlanRow]) -> Result<(), MetricsError> {
    let g = IntGaugeVec::new(
        Opts::new(
            "pidfd_trace_probe_attached",
            "1 if the hook is attached in this mode, 0 for the plan's other candidate modes.",
        ),
        &["hook", "mode"],
    )?;
    for r in rows.iter().filter(|r| !r.attached) {
        g.with_label_values(&[r.hook, r.mode]).set(0);
    }
    for r in rows.iter().filter(|r| r.attached) {
        g.with_label_values(&[r.hook, r.mode]).set(1);
    }
    reg.register(Box::new(g))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use pidfd_trace_common::risk;

    use super::*;

    #[test]
    fn lifetime_histogram_from_kernel_slots() {
        let mut s = [0u64; closes::COUNT as usize];
        s[closes::TIMED as usize] = 6;
        s[closes::SUM_NS as usize] = 7_500_000_000;
        s[closes::BUCKET0 as usize] = 3; // <= 1 ms
        s[closes::BUCKET0 as usize + 4] = 2; // (1 s, 10 s]
        s[closes::BUCKET0 as usize + closes::BUCKETS_NS.len()] = 1; // > 1 day
        let h = LifetimeHistogram::proto(&s);
        assert_eq!(h.get_sample_count(), 6);
        assert_eq!(h.get_sample_sum(), 7.5);
        let b: Vec<(f64, u64)> =
            h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
        assert_eq!(
            b,
            [
                (0.001, 3),
                (0.01, 3),
                (0.1, 3),
                (1.0, 3),
                (10.0, 5),
                (60.0, 5),
                (600.0, 5),
                (3600.0, 5),
                (86400.0, 5)
            ],
            "+Inf (6) is the count"
        );
        let reg = Registry::new();
        let lh = LifetimeHistogram::register(&reg).unwrap();
        lh.set(&s);
        let text = prometheus::TextEncoder::new().encode_to_string(&reg.gather()).unwrap();
        assert!(text.contains("pidfd_trace_pidfd_lifetime_seconds_bucket{le=\"10\"} 5"), "{text}");
        assert!(text.contains("pidfd_trace_pidfd_lifetime_seconds_bucket{le=\"+Inf\"} 6"), "{text}");
        assert!(text.contains("pidfd_trace_pidfd_lifetime_seconds_count 6"), "{text}");
    }

    #[test]
    fn risky_reasons_from_kernel_slots() {
        let reg = Registry::new();
        let mut m = RiskyGetfd::register(&reg).unwrap();
        let value = |m: &RiskyGetfd, r: &str| m.counter.with_label_values(&[r]).get();
        assert_eq!(crate::risk::REASONS.map(|r| value(&m, r)), [0, 0, 0], "exported at 0");
        let mut c = Counters::default();
        c.risky[risk::slot(risk::TARGET_EXITING | risk::CRED_MISMATCH) as usize] = 3;
        c.risky[risk::slot(risk::CRED_MISMATCH) as usize] = 2;
        c.risky[risk::slot(risk::CROSS_CONTAINER) as usize] = 5;
        c.risky[risk::slot(risk::CROSS_CONTAINER | risk::TARGET_EXITING) as usize] = 1;
        m.refresh(&c);
        assert_eq!(crate::risk::REASONS.map(|r| value(&m, r)), [4, 5, 6]);
        m.refresh(&c); // the kernel's totals again: nothing added
        assert_eq!(crate::risk::REASONS.map(|r| value(&m, r)), [4, 5, 6]);
        // Eight distinct slots, none of them 0 ("not risky").
        let mut slots: Vec<u32> = (0..=u8::MAX).filter(|b| b & risk::COUNTED == *b).map(risk::slot).collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots, (0..risk::SLOTS).collect::<Vec<_>>());
    }
}

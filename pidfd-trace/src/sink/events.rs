//! Where `serve` delivers events: the JSON-lines events log and the event-derived metrics
//! (syscall durations, per-process and per-container series under the cardinality cap).
//! Event-derived metrics see only records that reached the agent; the exact counts are the
//! kernel-counter metrics in `metrics.rs`.
use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use log::warn;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use super::{
    cap::{CappedCounter, OVERFLOW},
    metrics::MetricsError,
};
use crate::{event::Event, names, sink::Sink, sink::json::JsonLines};

/// Latency buckets: 250 ns doubling 20 times, up to 131 ms: factor-2 resolution across both
/// the sub-µs calls and ms-scale clones. Chosen from durations measured on the development
/// VM (6.18, 2 cores, tracepoint mode, `duration_ns` of `pidfd-trace trace --output json`
/// while `pidfd-bench-load pidfd-open --rate 3000`, `pidfd-bench-load clone-pidfd`, every
/// workload scenario and `stress-ng --pidfd 1` ran; 43,655 events, 2026-11-30):
/// | event | n | min | p50 | p99 | max |
/// |---|---|---|---|---|---|
/// | pidfd_open | 22,779 | 0.52 µs | 2.6 µs (0.64 µs for stress-ng) | 15 µs | 193 µs |
/// | pidfd_getfd | 7,295 | 0.67 µs | 1.0 µs | 4.2 µs | 74 µs |
/// | pidfd_send_signal | 7,301 | 0.54 µs | 1.6 µs | 5.8 µs | 53 µs |
/// | clone (CLONE_PIDFD) | 6,277 | 4.5 µs (a failure) | 45 µs | 234 µs | 81 ms (p99.9 5.9 ms) |
/// | clone3 (CLONE_PIDFD) | 3 | 35 µs | 72 µs | 91 µs | 91 µs |
/// The old buckets (4 µs × 4ⁿ) put 99.8% of pidfd_open calls in the first one.
const DURATION_FIRST_BUCKET: f64 = 250e-9;
const DURATION_BUCKETS: usize = 20;

/// How long a ranking window of the cardinality cap lasts.
const RERANK_EVERY: Duration = Duration::from_secs(60);

/// Delivers every event to each sink in turn.
pub struct Tee<'a>(pub Vec<&'a mut dyn Sink>);

impl Sink for Tee<'_> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.event(ev))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.flush())
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.reopen())
    }
}

/// The events log. A failing write (disk full, closed stdout) must not stop the metrics,
/// so it is counted, said once, and the service goes on.
pub struct EventsLog {
    out: JsonLines<io::BufWriter<Box<dyn Write + Send>>>,
    errors: IntCounter,
    warned: bool,
    /// Opens the log again on SIGHUP (a file, not stdout).
    reopen: Option<Reopen>,
}

/// Opens the events log file again, after rotation.
pub type Reopen = Box<dyn FnMut() -> io::Result<Box<dyn Write + Send>> + Send>;

impl EventsLog {
    pub fn new(out: Box<dyn Write + Send>, reg: &Registry) -> Result<Self, MetricsError> {
        let errors = IntCounter::new(
            "pidfd_trace_events_log_errors_total",
            "Writes to the events log that failed (events missing from the log).",
        )?;
        reg.register(Box::new(errors.clone()))?;
        Ok(Self {
            out: JsonLines::new(io::BufWriter::with_capacity(64 * 1024, out)),
            errors,
            warned: false,
            reopen: None,
        })
    }

    /// How to open the log again on SIGHUP (`serve --events-log PATH`).
    pub fn reopen_with(mut self, reopen: Reopen) -> Self {
        self.reopen = Some(reopen);
        self
    }

    fn failed(&mut self, e: io::Error) {
        self.errors.inc();
        if !self.warned {
            warn!("writing the events log failed ({e}); events are still counted in the metrics");
            self.warned = true;
        }
    }
}

impl Sink for EventsLog {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if let Err(e) = self.out.event(ev) {
            self.failed(e);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Err(e) = self.out.flush() {
            self.failed(e);
        }
        Ok(())
    }

    /// Everything buffered goes to the old file first (renamed by logrotate, still open), then
    /// new lines go to a fresh file at the path; if that cannot be opened the old one is kept,
    /// so no line is lost either way.
    fn reopen(&mut self) -> io::Result<()> {
        self.flush()?;
        let Some(reopen) = self.reopen.as_mut() else { return Ok(()) };
        match reopen() {
            Ok(out) => {
                self.out = JsonLines::new(io::BufWriter::with_capacity(64 * 1024, out));
                self.warned = false;
                log::info!("SIGHUP: events log reopened");
            }
            Err(e) => warn!("SIGHUP: cannot reopen the events log ({e}); still writing to the old file"),
        }
        Ok(())
    }
}

/// Metrics that need what only the event record carries: duration, comm, container.
pub struct EventMetrics {
    duration: HistogramVec,
    processes: CappedCounter,
    containers: CappedCounter,
    ranked: Instant,
}

impl EventMetrics {
    pub fn register(reg: &Registry, max_label_values: usize) -> Result<Self, MetricsError> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "pidfd_trace_syscall_duration_seconds",
                "Entry-to-exit time of observed calls (clone/clone3 with CLONE_PIDFD, pidfd_*), by event. From event records.",
            )
            .buckets(prometheus::exponential_buckets(DURATION_FIRST_BUCKET, 2.0, DURATION_BUCKETS)?),
            &["event"],
        )?;
        reg.register(Box::new(duration.clone()))?;
        for kind in pidfd_trace_common::EventKind::ALL {
            duration.with_label_values(&[names::event_name(*kind)]);
        }
        let processes = IntCounterVec::new(
            Opts::new(
                "pidfd_trace_process_events_total",
                format!(
                    "Observed calls by caller command name (top --max-label-values; the rest as comm=\"{OVERFLOW}\"), event and outcome (ok, error). From event records. A series never goes backwards; a name pushed out of the top keeps its series, frozen."
                ),
            ),
            &["comm", "event", "outcome"],
        )?;
        reg.register(Box::new(processes.clone()))?;
        let containers = IntCounterVec::new(
            Opts::new(
                "pidfd_trace_container_events_total",
                format!(
                    "Observed calls made inside containers, by container id (top --max-label-values; the rest as container=\"{OVERFLOW}\"), runtime, Kubernetes pod UID, event and outcome. From event records. A series never goes backwards."
                ),
            ),
            &["container", "runtime", "pod_uid", "event", "outcome"],
        )?;
        reg.register(Box::new(containers.clone()))?;
        Ok(Self {
            duration,
            processes: CappedCounter::new(processes, max_label_values),
            containers: CappedCounter::new(containers, max_label_values),
            ranked: Instant::now(),
        })
    }
}

impl Sink for EventMetrics {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let event = names::event_name(ev.event);
        let outcome = if ev.failed() { "error" } else { "ok" };
        self.duration.with_label_values(&[event]).observe(ev.duration_ns as f64 / 1e9);
        self.processes.inc(&ev.comm, &[], &[event, outcome]);
        if let Some(id) = &ev.container_id {
            // The enricher sets the runtime when the cgroup2 path shows the container; one
            // found only through the v1 hierarchies (hybrid hosts) keeps its id and no more.
            let (runtime, pod) = match ev.container_runtime {
                Some(runtime) => (runtime, ev.pod_uid.as_deref().unwrap_or_default()),
                None => ("unknown", ""),
            };
            self.containers.inc(id, &[runtime, pod], &[event, outcome]);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.ranked.elapsed() >= RERANK_EVERY {
            self.processes.rerank();
            self.containers.rerank();
            self.ranked = Instant::now();
        }
        Ok(())
    }
}

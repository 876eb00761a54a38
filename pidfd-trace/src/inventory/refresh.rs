//! `serve`'s inventory thread: every `--inventory-interval` it asks the helper for a scan,
//! sets the open/stale pidfd gauges, runs the leak detector and reports suspicions (one log
//! line and one events-log record each). It runs on its own thread, never on the event
//! pipeline's, so a slow scan cannot delay events.
use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use log::{info, warn};
use prometheus::{Counter, Gauge, IntGauge, IntGaugeVec, Opts, Registry};

use super::{
    Scan,
    helper::Helper,
    leak::{Change, Count, Detector, LeakRule},
    ledger::Ledger,
};

/// The `comm` label value of holders outside the top `--max-label-values`. A comm is at
/// most 15 bytes (TASK_COMM_LEN), so this 17-byte value is never a real process name.
pub const OVERFLOW_COMM: &str = "(other processes)";

/// The next scan waits at least this many times the CPU the last one took: the inventory
/// never uses more than 1% of one CPU, however big the host.
const CPU_BUDGET_FACTOR: u32 = 100;

/// `--inventory-interval`'s default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The thread's settings.
pub struct Config {
    /// Time between two scans (`--inventory-interval` or its default).
    pub interval: Duration,
    /// The interval was given (`--inventory-interval`): kept even where a scan costs more
    /// than 1% of it.
    pub fixed_interval: bool,
    /// The leak rule.
    pub rule: LeakRule,
    /// Holder comms with their own `pidfd_trace_open_pidfds` series (`--max-label-values`).
    pub max_label_values: usize,
}

/// The series the inventory exports.
struct Gauges {
    open: IntGaugeVec,
    stale: IntGauge,
    leak: IntGaugeVec,
    refresh_seconds: Gauge,
    interval: Gauge,
    cpu_seconds: Counter,
    unreadable: IntGauge,
    processes: IntGauge,
    fds: IntGauge,
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Gauges {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            open: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "pidfd_trace_open_pidfds",
                        "Open pidfds now, by holder command name (top --max-label-values; the rest under comm=\"(other processes)\"). The sum is the host total. From the /proc inventory.",
                    ),
                    &["comm"],
                )?,
            )?,
            stale: reg(
                r,
                IntGauge::new(
                    "pidfd_trace_stale_pidfds",
                    "Open pidfds whose process has exited and been reaped (fdinfo Pid: -1). From the /proc inventory.",
                )?,
            )?,
            leak: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "pidfd_trace_pidfd_leak_suspected",
                        "1 while a process with this command name keeps growing its open or stale pidfds (README: leak detection), else 0.",
                    ),
                    &["comm"],
                )?,
            )?,
            refresh_seconds: reg(
                r,
                Gauge::new(
                    "pidfd_trace_inventory_refresh_seconds",
                    "Wall time of the last /proc inventory scan.",
                )?,
            )?,
            interval: reg(
                r,
                Gauge::new(
                    "pidfd_trace_inventory_interval_seconds",
                    "Time between two inventory scans now: --inventory-interval, or longer where one scan costs more than 1% of it in CPU.",
                )?,
            )?,
            cpu_seconds: reg(
                r,
                Counter::new(
                    "pidfd_trace_inventory_cpu_seconds_total",
                    "CPU time spent on /proc inventory scans (the helper's scan thread and the agent's inventory thread).",
                )?,
            )?,
            unreadable: reg(
                r,
                IntGauge::new(
                    "pidfd_trace_inventory_unreadable_processes",
                    "Processes whose fds the last inventory scan could not read (needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH).",
                )?,
            )?,
            processes: reg(
                r,
                IntGauge::new("pidfd_trace_inventory_processes", "Processes the last inventory scan read.")?,
            )?,
            fds: reg(
                r,
                IntGauge::new("pidfd_trace_inventory_fds", "Fds the last inventory scan looked at.")?,
            )?,
        })
    }
}

/// Starts the inventory thread. `records` receives one JSON line per leak suspicion raised
/// or cleared (the events log), if there is one.
pub fn start(
    helper: Arc<Helper>,
    registry: &Registry,
    cfg: Config,
    ledger: Ledger,
    records: Option<SharedLines>,
) -> anyhow::Result<()> {
    let gauges = Gauges::register(registry)?;
    std::thread::Builder::new().name("pidfd-inventory".into()).spawn(move || {
        let mut state = State {
            gauges,
            cfg,
            ledger,
            records,
            detector: None,
            started: Instant::now(),
            shown: HashSet::new(),
            leak_series: LeakSeries::default(),
            warned_unreadable: false,
            warned_failed: false,
            warned_slow: false,
        };
        state.detector = Some(Detector::new(state.cfg.rule));
        let mut next = Instant::now();
        loop {
            let mut pause = state.cfg.interval;
            match helper.scan() {
                Ok(scan) => {
                    // The budget: at most 1% of one CPU. A host so big that one scan costs
                    // more than 1% of the interval is scanned less often.
                    let cpu = state.apply(scan);
                    let floor = cpu * CPU_BUDGET_FACTOR;
                    if state.cfg.fixed_interval && floor > pause && !state.warned_slow {
                        info!(
                            "open-pidfd inventory: one scan took {:.0} ms of CPU, {:.1}% of one CPU at --inventory-interval {}",
                            cpu.as_secs_f64() * 1000.0,
                            cpu.as_secs_f64() * 100.0 / pause.as_secs_f64(),
                            humanize(pause)
                        );
                        state.warned_slow = true;
                    } else if floor > pause {
                        if !state.warned_slow {
                            info!(
                                "open-pidfd inventory: one scan took {:.0} ms of CPU, so it runs every {} instead of every {} (1% of one CPU at most)",
                                floor.as_secs_f64() * 1000.0 / f64::from(CPU_BUDGET_FACTOR),
                                humanize(Duration::from_secs(floor.as_secs().max(1))),
                                humanize(pause)
                            );
                            state.warned_slow = true;
                        }
                        pause = floor;
                    }
                }
                Err(e) if !state.warned_failed => {
                    warn!("open-pidfd inventory failed: {e}; the open/stale pidfd gauges keep their last values");
                    state.warned_failed = true;
                }
                Err(_) => {}
            }
            state.gauges.interval.set(pause.as_secs_f64());
            next += pause;
            let now = Instant::now();
            if next < now {
                next = now;
            }
            std::thread::sleep(next - now);
        }
    })?;
    Ok(())
}

struct State {
    gauges: Gauges,
    cfg: Config,
    ledger: Ledger,
    records: Option<SharedLines>,
    detector: Option<Detector>,
    started: Instant,
    /// comm label values set on the open gauge.
    shown: HashSet<String>,
    leak_series: LeakSeries,
    warned_unreadable: bool,
    warned_failed: bool,
    warned_slow: bool,
}

/// The `pidfd_trace_pidfd_leak_suspected{comm}` series: at most `--max-label-values` comms
/// at 1 (the rest show as one `(other processes)` series at 1), and a comm that stops being
/// suspected is 0 for one refresh (so a scrape sees the fall and alerts resolve), then its
/// series goes. A process cycling through names cannot grow the series without bound.
#[derive(Default, Debug, PartialEq)]
struct LeakSeries {
    suspected: HashSet<String>,
    cleared: HashSet<String>,
}

/// What one refresh does to the leak series.
#[derive(Debug, PartialEq)]
struct LeakPlan {
    /// The series after this refresh.
    state: LeakSeries,
    /// Series to drop (cleared one refresh ago, not suspected again).
    remove: Vec<String>,
    /// More suspected comms than `max`: `(other processes)` is 1.
    overflow: bool,
}

impl LeakSeries {
    fn plan(prev: &LeakSeries, suspects: Vec<String>, max: usize) -> LeakPlan {
        let mut now = suspects;
        now.sort_unstable();
        now.dedup();
        // Keep the comms already shown first, so the shown set does not churn under the cap.
        now.sort_by_key(|c| !prev.suspected.contains(c));
        let overflow = now.len() > max;
        now.truncate(max);
        let suspected: HashSet<String> = now.into_iter().collect();
        let cleared: HashSet<String> = prev.suspected.difference(&suspected).cloned().collect();
        let mut remove: Vec<String> = prev.cleared.difference(&suspected).cloned().collect();
        remove.sort_unstable();
        LeakPlan { state: LeakSeries { suspected, cleared }, remove, overflow }
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl State {
    /// Applies one scan; returns the CPU it cost (helper and this thread).
    fn apply(&mut self, scan: Scan) -> Duration {
        let cpu0 = thread_cpu();
        let g = &self.gauges;
        g.refresh_seconds.set(scan.wall.as_secs_f64());
        g.unreadable.set(scan.unreadable.len() as i64);
        g.processes.set(scan.processes as i64);
        g.fds.set(scan.fds as i64);
        if !scan.unreadable.is_empty() && !self.warned_unreadable {
            warn!(
                "open-pidfd inventory: could not read the fds of {} processes ({}); the open/stale pidfd gauges miss them: start the agent with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (root has both)",
                scan.unreadable.len(),
                super::describe_unreadable(&scan.unreadable)
            );
            self.warned_unreadable = true;
        }
        // Per holder and per comm.
        let mut per_proc: HashMap<(u32, u64), Count> = HashMap::new();
        let mut per_comm: HashMap<&str, i64> = HashMap::new();
        let mut stale = 0i64;
        for p in &scan.pidfds {
            let start = scan.start_times.get(&p.holder_pid).copied().unwrap_or(0);
            let c = per_proc.entry((p.holder_pid, start)).or_insert_with(|| Count {
                comm: p.holder_comm.clone(),
                open: 0,
                stale: 0,
            });
            c.open += 1;
            c.stale += u64::from(p.stale);
            *per_comm.entry(&p.holder_comm).or_insert(0) += 1;
            stale += i64::from(p.stale);
        }
        g.stale.set(stale);
        let mut ranked: Vec<(&str, i64)> = per_comm.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let max = self.cfg.max_label_values;
        let mut now_shown = HashSet::new();
        let overflow: i64 = ranked.iter().skip(max).map(|r| r.1).sum();
        for (comm, n) in ranked.iter().take(max) {
            g.open.with_label_values(&[comm]).set(*n);
            now_shown.insert(comm.to_string());
        }
        g.open.with_label_values(&[OVERFLOW_COMM]).set(overflow);
        now_shown.insert(OVERFLOW_COMM.to_string());
        for gone in self.shown.difference(&now_shown) {
            let _ = g.open.remove_label_values(&[gone]);
        }
        self.shown = now_shown;

        let now = self.started.elapsed().as_secs_f64();
        let changes = self.detector.as_mut().expect("set at start").observe(now, &per_proc);
        // The gauge first, then the log line and record: whoever reads those finds it set.
        let suspects: Vec<String> =
            self.detector.as_ref().expect("set").suspected().map(|(_, c)| c.to_string()).collect();
        let plan = LeakSeries::plan(&self.leak_series, suspects, self.cfg.max_label_values);
        for comm in &plan.remove {
            let _ = self.gauges.leak.remove_label_values(&[comm]);
        }
        for comm in &plan.state.cleared {
            self.gauges.leak.with_label_values(&[comm]).set(0);
        }
        for comm in &plan.state.suspected {
            self.gauges.leak.with_label_values(&[comm]).set(1);
        }
        self.gauges.leak.with_label_values(&[OVERFLOW_COMM]).set(i64::from(plan.overflow));
        self.leak_series = plan.state;
        for ch in &changes {
            self.report(ch);
        }
        // Source counts of processes that are gone are dropped.
        self.ledger.retain(&super::list_pids().into_iter().collect());
        let cpu = scan.cpu + thread_cpu().saturating_sub(cpu0);
        self.gauges.cpu_seconds.inc_by(cpu.as_secs_f64());
        cpu
    }

    fn report(&mut self, ch: &Change) {
        let window = self.cfg.rule.window;
        let sources = self.ledger.describe(ch.pid);
        if ch.suspected {
            warn!(
                "pidfd leak suspected: pid {} ({}) holds {} open pidfds ({} stale), {} growing by {:.1}/min over the last {}; made by: {sources}",
                ch.pid,
                ch.comm,
                ch.open,
                ch.stale,
                ch.series,
                ch.growth_per_min,
                humanize(window)
            );
        } else {
            info!(
                "pidfd leak cleared: pid {} ({}) stopped growing at {} open pidfds ({} stale)",
                ch.pid, ch.comm, ch.open, ch.stale
            );
        }
        if let Some(out) = &self.records {
            let rec = serde_json::json!({
                "ts": crate::event::format_rfc3339(unix_ns()),
                "event": if ch.suspected { "pidfd_leak_suspected" } else { "pidfd_leak_cleared" },
                "pid": ch.pid,
                "comm": ch.comm,
                "open_pidfds": ch.open,
                "stale_pidfds": ch.stale,
                "growing": if ch.suspected { Some(ch.series) } else { None },
                "growth_per_min": if ch.suspected { Some(ch.growth_per_min) } else { None },
                "window_seconds": window.as_secs_f64(),
                "sources": self.ledger.sources(ch.pid),
            });
            out.line(&rec.to_string());
        }
    }
}

fn unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// `90s` → `1m30s`, `500ms` → `500ms`.
pub fn humanize(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// `--leak-window` / `--inventory-interval` values: `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 500ms, 30s, 5m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{s}` is not a duration like 500ms, 30s, 5m or 1h")),
    };
    if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) {
        return Err(format!("`{s}` must be between 100ms and 24h"));
    }
    Ok(d)
}

/// The events log shared by the event pipeline and the inventory thread: each writer keeps
/// its partial line to itself and hands over only whole lines, under one lock, so lines
/// never interleave.
#[derive(Clone)]
pub struct SharedLines {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl SharedLines {
    /// Shares `out` between writers.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { out: Arc::new(Mutex::new(out)) }
    }

    /// A writer for the pipeline's own buffered sink.
    pub fn writer(&self) -> LineWriter {
        LineWriter { shared: self.clone(), partial: Vec::new() }
    }

    /// SIGHUP (log rotation): flushes the old output, then puts `out` in its place for every
    /// writer, under the one lock, so no line is split between the files.
    pub fn replace(&self, out: Box<dyn Write + Send>) -> io::Result<()> {
        let mut cur = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let flushed = cur.flush();
        *cur = out;
        flushed
    }

    /// Writes one whole line (no newline in `s`) and flushes.
    pub fn line(&self, s: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(s.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    }
}

/// A `Write` that passes only whole lines to the shared log.
pub struct LineWriter {
    shared: SharedLines,
    partial: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match buf.iter().rposition(|&b| b == b'\n') {
            None => self.partial.extend_from_slice(buf),
            Some(i) => {
                let mut out = self.shared.out.lock().unwrap_or_else(|p| p.into_inner());
                if !self.partial.is_empty() {
                    out.write_all(&self.partial)?;
                    self.partial.clear();
                }
                out.write_all(&buf[..=i])?;
                drop(out);
                self.partial.extend_from_slice(&buf[i + 1..]);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.shared.out.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// 20 leaking processes with 20 names under a cap of 3: 3 series and the overflow; as they
    /// stop, each series is 0 once, then gone (the break-it pass found 20 series kept forever).
    #[test]
    fn leak_series_capped_and_cleared() {
        let names: Vec<String> = (0..20).map(|i| format!("leak{i:02}")).collect();
        let p1 = LeakSeries::plan(&LeakSeries::default(), names.clone(), 3);
        assert_eq!(p1.state.suspected, set(&["leak00", "leak01", "leak02"]));
        assert!(p1.overflow && p1.remove.is_empty() && p1.state.cleared.is_empty());
        // leak00 stops; the shown ones stay shown, the next name takes the free slot.
        let p2 = LeakSeries::plan(&p1.state, names[1..].to_vec(), 3);
        assert_eq!(p2.state.suspected, set(&["leak01", "leak02", "leak03"]));
        assert_eq!(p2.state.cleared, set(&["leak00"]));
        assert!(p2.overflow && p2.remove.is_empty());
        // All stop: the three are 0 once, leak00 goes.
        let p3 = LeakSeries::plan(&p2.state, vec![], 3);
        assert_eq!(p3.state.cleared, set(&["leak01", "leak02", "leak03"]));
        assert_eq!(p3.remove, vec!["leak00".to_string()]);
        assert!(!p3.overflow && p3.state.suspected.is_empty());
        let p4 = LeakSeries::plan(&p3.state, vec![], 3);
        assert_eq!(p4.remove.len(), 3);
        assert_eq!(p4.state, LeakSeries::default());
        // Suspected again while at 0: back to 1, not removed.
        let again = LeakSeries::plan(&p3.state, vec!["leak01".into()], 3);
        assert_eq!(again.state.suspected, set(&["leak01"]));
        assert_eq!(again.remove, vec!["leak02".to_string(), "leak03".to_string()]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(
            parse_duration("5 m").is_err() && parse_duration("").is_err() && parse_duration("1ms").is_err()
        );
        assert_eq!(humanize(Duration::from_secs(90)), "1m30s");
        assert_eq!(humanize(Duration::from_secs(600)), "10m");
        assert_eq!(humanize(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn overflow_label_is_no_comm() {
        assert!(OVERFLOW_COMM.len() > 15);
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_never_interleave() {
        let buf = Buf::default();
        let shared = SharedLines::new(Box::new(buf.clone()));
        let mut w = shared.writer();
        w.write_all(b"{\"a\":").unwrap();
        shared.line("{\"leak\":1}");
        w.write_all(b"1}\n{\"b\"").unwrap();
        w.write_all(b":2}\n").unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "{\"leak\":1}\n{\"a\":1}\n{\"b\":2}\n");
    }
}

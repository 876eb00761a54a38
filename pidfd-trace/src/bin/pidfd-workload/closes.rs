//! Close tracking (README "Open pidfds: close tracking"): a `serve` beside the suite's trace
//! agent (the risky-counter one when it runs), and pidfds of known lifetimes made and closed by this process, by both creation
//! paths (pidfd_open, clone with CLONE_PIDFD). In function-probe modes
//! `pidfd_trace_pidfds_closed_total` must rise by at least ours and the lifetime histogram's
//! buckets must hold ours exactly, give or take the closes of other processes that the same
//! scrape window saw (counted as `closed_total` delta minus ours). In tracepoint mode the
//! release hook is attached in no mode and the counter stays 0.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::sys;

/// Short-lived pidfds (closed at once; well under 1 s even in a TCG guest) and long-lived
/// ones (held `LONG`), per creation path.
const SHORT_OPEN: usize = 4;
const SHORT_CLONE: usize = 3;
const LONG_OPEN: usize = 3;
const LONG_CLONE: usize = 2;
const LONG: Duration = Duration::from_millis(2500);

/// What one scrape says about closes.
#[derive(Debug, Default, Clone, Copy)]
struct Snapshot {
    closed: u64,
    count: u64,
    /// Cumulative buckets le="1" and le="10".
    le1: u64,
    le10: u64,
}

fn value(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn snapshot(addr: &str) -> Result<Snapshot, String> {
    let body = crate::risky::scrape(addr)?;
    let get = |s: &str| value(&body, s).ok_or_else(|| format!("no {s} in /metrics"));
    Ok(Snapshot {
        closed: get("pidfd_trace_pidfds_closed_total")?,
        count: get("pidfd_trace_pidfd_lifetime_seconds_count")?,
        le1: get("pidfd_trace_pidfd_lifetime_seconds_bucket{le=\"1\"}")?,
        le10: get("pidfd_trace_pidfd_lifetime_seconds_bucket{le=\"10\"}")?,
    })
}

/// `pidfd_trace_probe_attached{hook="pidfd_release",mode}` lines, as (mode, value).
fn release_rows(addr: &str) -> Result<Vec<(String, u64)>, String> {
    let body = crate::risky::scrape(addr)?;
    Ok(body
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pidfd_trace_probe_attached{hook=\"pidfd_release\",mode=\"")?;
            let (mode, v) = rest.split_once("\"} ")?;
            Some((mode.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// A pidfd made by clone(CLONE_PIDFD) of a child that exits at once (reaped here).
fn clone_pidfd() -> Result<i32, String> {
    let mut pidfd = -1;
    let r = sys::clone_fork(sys::CLONE_PIDFD | sys::SIGCHLD, &mut pidfd);
    if r <= 0 || pidfd < 0 {
        return Err(format!("clone(CLONE_PIDFD) failed: {r}"));
    }
    sys::wait_child(r);
    Ok(pidfd)
}

fn open_self() -> Result<i32, String> {
    let fd = sys::pidfd_open(std::process::id() as i32, 0);
    if fd < 0 {
        return Err(format!("pidfd_open(self) failed: {fd}"));
    }
    Ok(fd as i32)
}

/// Makes and closes our pidfds; returns the longest short lifetime and the shortest long one
/// as this process measured them (each kernel lifetime lies inside its measured interval).
fn workload() -> Result<(Duration, Duration, Duration), String> {
    let t_long = Instant::now();
    let mut long = Vec::new();
    for _ in 0..LONG_OPEN {
        long.push(open_self()?);
    }
    for _ in 0..LONG_CLONE {
        long.push(clone_pidfd()?);
    }
    let long_made = Instant::now();
    let mut short_max = Duration::ZERO;
    for i in 0..SHORT_OPEN + SHORT_CLONE {
        let t = Instant::now();
        let fd = if i < SHORT_OPEN { open_self()? } else { clone_pidfd()? };
        unsafe { libc::close(fd) };
        short_max = short_max.max(t.elapsed());
    }
    std::thread::sleep(LONG.saturating_sub(t_long.elapsed()));
    // The kernel's lifetime of each long pidfd runs from inside its creation call (at or
    // before `long_made`) to inside its close (after `close_start`).
    let close_start = Instant::now();
    for fd in long {
        unsafe { libc::close(fd) };
    }
    let long_min = close_start.duration_since(long_made);
    let long_max = t_long.elapsed();
    Ok((short_max, long_min, long_max))
}

/// The `close_tracking` scenario against a `serve` of its own in `mode`.
pub fn check(agent: &Path, mode: &str, timeout: Duration) -> Result<(), String> {
    let mut serve = std::process::Command::new(agent)
        .args(["serve", "--mode", mode, "--web.listen-address", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start serve: {e}"))?;
    let lines = crate::suite::collect_lines(serve.stderr.take().expect("piped"));
    let r = (|| {
        let addr = crate::risky::wait_addr(&lines, timeout)?;
        run(&addr, mode, timeout)
    })();
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let _ = serve.wait();
    r.map_err(|e| format!("{e}; serve said: {}", lines.lock().unwrap().join(" | ")))
}

/// The checks against a running `serve` at `addr` in `mode`.
pub fn run(addr: &str, mode: &str, timeout: Duration) -> Result<(), String> {
    let rows = release_rows(addr)?;
    let function_mode = matches!(mode, "fentry" | "kprobe");
    let attached: Vec<&str> = rows.iter().filter(|(_, v)| *v == 1).map(|(m, _)| m.as_str()).collect();
    let want_attached: &[&str] = match mode {
        "fentry" => &["fexit"],
        "kprobe" => &["kprobe"],
        _ => &[],
    };
    if rows.is_empty() || attached != want_attached {
        return Err(format!(
            "pidfd_trace_probe_attached{{hook=\"pidfd_release\"}}: want attached in {want_attached:?}, got {rows:?}"
        ));
    }
    let before = snapshot(addr)?;
    let (short_max, long_min, long_max) = workload()?;
    let (short_n, long_n) = ((SHORT_OPEN + SHORT_CLONE) as u64, (LONG_OPEN + LONG_CLONE) as u64);
    if short_max >= Duration::from_secs(1)
        || long_min <= Duration::from_secs(1)
        || long_max >= Duration::from_secs(10)
    {
        return Err(format!(
            "the guest was too slow for the buckets: short pidfds lived up to {short_max:?}, long ones {long_min:?}..{long_max:?}"
        ));
    }
    if !function_mode {
        // Two refreshes (one a second): nothing may move, the hook is not attached.
        std::thread::sleep(Duration::from_millis(2500));
        let after = snapshot(addr)?;
        if after.closed != 0 || after.count != 0 {
            return Err(format!("tracepoint mode: closes must stay 0, got {after:?}"));
        }
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    let mut now = snapshot(addr)?;
    while now.closed < before.closed + short_n + long_n || now.count < before.count + short_n + long_n {
        if Instant::now() > deadline {
            return Err(format!(
                "closes did not arrive: before {before:?}, now {now:?}, ours {}",
                short_n + long_n
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
        now = snapshot(addr)?;
    }
    let closed = now.closed - before.closed;
    let others = closed - (short_n + long_n);
    let (count, le1, mid) =
        (now.count - before.count, now.le1 - before.le1, (now.le10 - now.le1) - (before.le10 - before.le1));
    let within = |got: u64, ours: u64| got >= ours && got <= ours + others;
    if !(within(count, short_n + long_n) && within(le1, short_n) && within(mid, long_n)) {
        return Err(format!(
            "deltas: closed {closed} (ours {}, others {others}), lifetime count {count}, <=1 s {le1} (ours {short_n}), (1 s, 10 s] {mid} (ours {long_n})",
            short_n + long_n
        ));
    }
    Ok(())
}

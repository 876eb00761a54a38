//! The readable column view of `trace` (time, comm, pid, tid, uid, event, result, detail), in
//! the manner of execsnoop: the header is printed as soon as the probes are attached
//! (`Text::start`), so an idle host still shows the tool is alive. Columns: docs/cli.md.
use std::io::{self, Write};

use super::Sink;
use crate::{cli::Timestamps, event::Event};

/// How the TIME column is written, fixed at start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Local, UTC or relative (`trace --timestamps`).
    pub which: Timestamps,
    /// Unix time (ns) the relative column counts from: when the agent attached.
    pub start_unix_ns: i128,
}

impl Clock {
    /// A clock of kind `which`; relative times count from `start_unix_ns`.
    pub fn new(which: Timestamps, start_unix_ns: i128) -> Self {
        Self { which, start_unix_ns }
    }

    fn width(&self) -> usize {
        match self.which {
            Timestamps::Relative => 12,
            Timestamps::Local | Timestamps::Utc => 23,
        }
    }

    /// The TIME column's title: names the time zone, or says the unit.
    pub fn title(&self) -> String {
        match self.which {
            Timestamps::Relative => "TIME(s)".into(),
            Timestamps::Utc => "TIME(UTC)".into(),
            Timestamps::Local => {
                let off = broken_down(self.start_unix_ns, true).offset_s;
                let sign = if off < 0 { '-' } else { '+' };
                let off = off.unsigned_abs();
                format!("TIME(UTC{sign}{:02}:{:02})", off / 3600, off / 60 % 60)
            }
        }
    }

    /// `2026-11-30 21:40:01.123` (local or UTC) or `12.345678` seconds since start.
    pub fn format(&self, unix_ns: i128) -> String {
        match self.which {
            Timestamps::Relative => {
                let d = (unix_ns - self.start_unix_ns).max(0);
                format!("{}.{:06}", d / 1_000_000_000, d % 1_000_000_000 / 1000)
            }
            Timestamps::Local | Timestamps::Utc => {
                let t = broken_down(unix_ns, self.which == Timestamps::Local);
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
                    t.year,
                    t.month,
                    t.day,
                    t.hour,
                    t.minute,
                    t.second,
                    unix_ns.rem_euclid(1_000_000_000) / 1_000_000
                )
            }
        }
    }
}

struct BrokenDown {
    year: i32,
    month: i32,
    day: i32,
    hour: i32,
    minute: i32,
    second: i32,
    offset_s: i64,
}

/// The calendar date and time of `unix_ns`, in the host's time zone (`localtime_r`, which
/// reads TZ and /etc/localtime) or in UTC.
fn broken_down(unix_ns: i128, local: bool) -> BrokenDown {
    // `time_t` is 64-bit on every target the agent builds for (glibc x86_64/aarch64, musl
    // 1.2+); the `libc::time_t` alias is deprecated on musl, so the type is inferred.
    let secs = unix_ns.div_euclid(1_000_000_000) as _;
    // SAFETY: an all-zero `tm` is valid; both calls only write into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe {
        if local {
            libc::localtime_r(&secs, &mut tm);
        } else {
            libc::gmtime_r(&secs, &mut tm);
        }
    }
    BrokenDown {
        year: tm.tm_year + 1900,
        month: tm.tm_mon + 1,
        day: tm.tm_mday,
        hour: tm.tm_hour,
        minute: tm.tm_min,
        second: tm.tm_sec,
        offset_s: tm.tm_gmtoff,
    }
}

/// The column sink of `trace --output text`; writes the header before the first event.
pub struct Text<W: Write> {
    out: W,
    clock: Clock,
    header_done: bool,
}

impl<W: Write> Text<W> {
    /// Writes to `out`, times per `clock`.
    pub fn new(out: W, clock: Clock) -> Self {
        Self { out, clock, header_done: false }
    }

    /// Writes the column header at once (call it right after attaching).
    pub fn start(&mut self) -> io::Result<()> {
        self.write_header()?;
        self.out.flush()
    }

    fn write_header(&mut self) -> io::Result<()> {
        self.header_done = true;
        writeln!(self.out, "{}", header(&self.clock))
    }
}

/// The column header line.
pub fn header(clock: &Clock) -> String {
    format!(
        "{:<w$} {:<16} {:>7} {:>7} {:>6} {:<17} {:<12} {}",
        clock.title(),
        "COMM",
        "PID",
        "TID",
        "UID",
        "EVENT",
        "RESULT",
        "DETAIL",
        w = clock.width()
    )
}

/// One line per event; RESULT is the new pidfd, `ok`, or the errno name; DETAIL starts with
/// the pidfd a call used (`used_pidfd=N`), if any.
pub fn line(ev: &Event, clock: &Clock) -> String {
    let result = match (&ev.errno, ev.pidfd) {
        (Some(e), _) => e.to_string(),
        (None, Some(fd)) => format!("pidfd={fd}"),
        (None, None) if ev.target_fd.is_some() => format!("fd={}", ev.ret),
        (None, None) => "ok".to_string(),
    };
    let mut detail = Vec::new();
    if let Some(fd) = ev.used_pidfd {
        detail.push(format!("used_pidfd={fd}"));
    }
    if let Some(s) = ev.stage {
        detail.push(format!("stage={}", s.as_str()));
    }
    if let Some(c) = ev.child_pid {
        detail.push(format!("child={c}"));
    }
    if let Some(t) = ev.target_pid {
        detail.push(format!("target={t}"));
    }
    if let Some(s) = &ev.signal {
        detail.push(format!("sig={s}"));
    }
    if let Some(fd) = ev.target_fd {
        detail.push(format!("target_fd={fd}"));
    }
    if let Some(c) = &ev.cmd {
        detail.push(format!("cmd={c}"));
    }
    if let Some(a) = &ev.advice {
        detail.push(format!("advice={a}"));
    }
    // pidfd_getfd: what README "Risky pidfd use" found, and the file taken.
    if let Some(r) = ev.risk.as_ref().filter(|r| !r.is_empty()) {
        detail.push(format!("risk={}", r.join(",")));
    }
    match (&ev.file_path, ev.file_kind) {
        (Some(p), _) => detail.push(format!("file={}", crate::names::detail_path(p))),
        (None, Some(k)) => detail.push(format!("file_kind={k}")),
        (None, None) => {}
    }
    if !ev.flag_names.is_empty() {
        detail.push(format!("flags={}", ev.flag_names.join("|")));
    }
    if let Some(c) = &ev.container_id {
        detail.push(format!("container={}", &c[..c.len().min(12)]));
    }
    format!(
        "{:<w$} {:<16} {:>7} {:>7} {:>6} {:<17} {:<12} {}",
        clock.format(ev.ts),
        crate::names::printable(&ev.comm),
        ev.pid,
        ev.tid,
        ev.uid,
        crate::names::event_name(ev.event),
        result,
        detail.join(" "),
        w = clock.width()
    )
    .trim_end()
    .to_string()
}

impl<W: Write> Sink for Text<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if !self.header_done {
            self.write_header()?;
        }
        writeln!(self.out, "{}", line(ev, &self.clock))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_and_relative_columns() {
        let utc = Clock::new(Timestamps::Utc, 0);
        assert_eq!(utc.format(1_795_782_662_123_456_789), "2026-11-27 12:31:02.123");
        assert_eq!(utc.title(), "TIME(UTC)");
        let rel = Clock::new(Timestamps::Relative, 1_000_000_000);
        assert_eq!(rel.format(3_500_000_000), "2.500000");
        assert_eq!(rel.format(0), "0.000000", "never negative");
        assert_eq!(rel.title(), "TIME(s)");
        let local = Clock::new(Timestamps::Local, 1_795_782_662_123_456_789);
        assert!(local.title().starts_with("TIME(UTC") && local.title().len() == 15, "{}", local.title());
        assert_eq!(local.format(1_795_782_662_123_456_789).len(), 23);
    }
}

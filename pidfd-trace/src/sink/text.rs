//! The readable column view of `trace` (time, comm, pid, event, result, detail), in the
//! manner of execsnoop.
use std::io::{self, Write};

use super::Sink;
use crate::event::{Event, format_rfc3339};

/// The column sink of `trace --output text`; writes the header before the first event.
pub struct Text<W: Write> {
    out: W,
    header_done: bool,
}

impl<W: Write> Text<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        Self { out, header_done: false }
    }
}

/// The column header line.
pub fn header() -> String {
    format!("{:<12} {:<16} {:>7} {:<17} {:<12} {}", "TIME", "COMM", "PID", "EVENT", "RESULT", "DETAIL")
}

/// One line per event; RESULT is the new pidfd, `ok`, or the errno name.
pub fn line(ev: &Event) -> String {
    let ts = format_rfc3339(ev.ts);
    let time = &ts[11..23];
    let result = match (&ev.errno, ev.pidfd) {
        (Some(e), _) => e.clone(),
        (None, Some(fd)) => format!("pidfd={fd}"),
        (None, None) if ev.target_fd.is_some() => format!("fd={}", ev.ret),
        (None, None) => "ok".to_string(),
    };
    let mut detail = Vec::new();
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
    if !ev.flag_names.is_empty() {
        detail.push(format!("flags={}", ev.flag_names.join("|")));
    }
    if let Some(c) = &ev.container_id {
        detail.push(format!("container={}", &c[..c.len().min(12)]));
    }
    format!(
        "{time:<12} {:<16} {:>7} {:<17} {:<12} {}",
        ev.comm,
        ev.pid,
        crate::names::event_name(ev.event),
        result,
        detail.join(" ")
    )
}

impl<W: Write> Sink for Text<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if !self.header_done {
            writeln!(self.out, "{}", header())?;
            self.header_done = true;
        }
        writeln!(self.out, "{}", line(ev))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

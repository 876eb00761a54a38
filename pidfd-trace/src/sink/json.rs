//! JSON lines: one `Event` object per line; the schema is docs/events.md.
//!
//! The line is written by hand into a buffer kept across events (`write_event`), not through
//! serde: serde_json escapes every one of the 37 keys of every line and the timestamp went
//! through a `String`, which made formatting most of the agent's CPU under a pidfd_open
//! storm (BENCHMARKS.md, "What made these numbers"). The bytes are serde_json's compact
//! output of `Event` exactly: `Event` keeps its `Serialize` derive as the reference, and the
//! tests below compare both on made-up events of every kind.
use std::io::{self, Write};

use super::Sink;
use crate::event::{Comm, Event, format_rfc3339};

/// Lines are handed to the writer once this much is buffered, and at every `flush` (the end
/// of each drain of the ring buffer): one write per drain at moderate rates, one per ~70
/// lines under a storm.
const WRITE_AT: usize = 64 * 1024;

/// The JSON-lines sink: one object per event, the schema of docs/events.md. It buffers
/// lines itself (give it an unbuffered writer) and writes them on `flush`, when the buffer
/// fills, and when it is dropped.
pub struct JsonLines<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> JsonLines<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        Self { out, buf: Vec::with_capacity(WRITE_AT + 4096) }
    }

    /// Hands the buffered lines to the writer. As `BufWriter` does, what was written leaves
    /// the buffer even when a later write fails, and the rest stays for the next attempt.
    fn write_buf(&mut self) -> io::Result<()> {
        let mut done = 0;
        let res = loop {
            if done == self.buf.len() {
                break Ok(());
            }
            match self.out.write(&self.buf[done..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..done);
        res
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        write_event(&mut self.buf, ev);
        self.buf.push(b'\n');
        if self.buf.len() >= WRITE_AT {
            self.write_buf()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buf()?;
        self.out.flush()
    }
}

impl<W: Write> Drop for JsonLines<W> {
    /// Lines still buffered are written, best effort (as `BufWriter` does).
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Appends `ev` as one compact JSON object (no newline) to `out`: the bytes
/// `serde_json::to_writer(out, ev)` would write, without an allocation.
pub fn write_event(out: &mut Vec<u8>, ev: &Event) {
    // Every field named: a field added to `Event` does not compile until it is written here
    // (or skipped, as those that are not in the schema are).
    let Event {
        ts,
        seq,
        event,
        pid,
        tid,
        ns_pid,
        uid,
        comm,
        thread_comm,
        compat,
        cgroup_id,
        cgroup,
        container_id,
        pod_uid,
        container_runtime: _,
        flags,
        flag_names,
        ret,
        errno,
        stage,
        pidfd,
        child_pid,
        ns_child_pid,
        target_pid,
        ns_target_pid,
        target_reason,
        pidfd_ino,
        signal,
        signal_nr,
        target_fd,
        cmd,
        advice,
        mode,
        duration_ns,
        pidfd_allocated,
        copy_process_ns,
        caller_open_pidfds,
        used_pidfd,
        target_checked: _,
        cgroup_leaf: _,
        risk,
        target_exit,
        target_uid,
        target_euid,
        target_elevated,
        target_cgroup_id,
        file_kind,
        file_path,
        file_dev,
        file_ino,
        file_deleted,
        file_changed,
        facts: _,
    } = ev;
    out.extend_from_slice(b"{\"ts\":\"");
    rfc3339(out, *ts);
    out.extend_from_slice(b"\",\"seq\":");
    int(out, *seq);
    out.extend_from_slice(b",\"event\":");
    string(out, crate::names::event_name(*event));
    out.extend_from_slice(b",\"pid\":");
    int(out, *pid);
    out.extend_from_slice(b",\"tid\":");
    int(out, *tid);
    out.extend_from_slice(b",\"ns_pid\":");
    opt_int(out, *ns_pid);
    out.extend_from_slice(b",\"uid\":");
    int(out, *uid);
    out.extend_from_slice(b",\"comm\":");
    comm_string(out, comm);
    out.extend_from_slice(b",\"thread_comm\":");
    comm_string(out, thread_comm);
    out.extend_from_slice(b",\"compat\":");
    out.extend_from_slice(if *compat { b"true" } else { b"false" });
    out.extend_from_slice(b",\"cgroup_id\":");
    int(out, *cgroup_id);
    out.extend_from_slice(b",\"cgroup\":");
    opt_string(out, cgroup.as_deref());
    out.extend_from_slice(b",\"container_id\":");
    opt_string(out, container_id.as_deref());
    out.extend_from_slice(b",\"pod_uid\":");
    opt_string(out, pod_uid.as_deref());
    out.extend_from_slice(b",\"flags\":");
    int(out, *flags);
    out.extend_from_slice(b",\"flag_names\":");
    strings(out, flag_names);
    out.extend_from_slice(b",\"ret\":");
    int(out, *ret);
    out.extend_from_slice(b",\"errno\":");
    opt_string(out, errno.as_deref());
    out.extend_from_slice(b",\"stage\":");
    opt_string(out, stage.map(|s| s.as_str()));
    out.extend_from_slice(b",\"pidfd\":");
    opt_int(out, *pidfd);
    out.extend_from_slice(b",\"child_pid\":");
    opt_int(out, *child_pid);
    out.extend_from_slice(b",\"ns_child_pid\":");
    opt_int(out, *ns_child_pid);
    out.extend_from_slice(b",\"target_pid\":");
    opt_int(out, *target_pid);
    out.extend_from_slice(b",\"target_reason\":");
    opt_string(out, *target_reason);
    out.extend_from_slice(b",\"pidfd_ino\":");
    opt_int(out, *pidfd_ino);
    out.extend_from_slice(b",\"ns_target_pid\":");
    opt_int(out, *ns_target_pid);
    out.extend_from_slice(b",\"signal\":");
    opt_string(out, signal.as_deref());
    out.extend_from_slice(b",\"signal_nr\":");
    opt_int(out, *signal_nr);
    out.extend_from_slice(b",\"target_fd\":");
    opt_int(out, *target_fd);
    out.extend_from_slice(b",\"cmd\":");
    opt_string(out, cmd.as_deref());
    out.extend_from_slice(b",\"advice\":");
    opt_string(out, advice.as_deref());
    out.extend_from_slice(b",\"mode\":");
    string(out, mode);
    out.extend_from_slice(b",\"duration_ns\":");
    int(out, *duration_ns);
    out.extend_from_slice(b",\"pidfd_allocated\":");
    opt_bool(out, *pidfd_allocated);
    out.extend_from_slice(b",\"copy_process_ns\":");
    opt_int(out, *copy_process_ns);
    out.extend_from_slice(b",\"caller_open_pidfds\":");
    opt_int(out, *caller_open_pidfds);
    out.extend_from_slice(b",\"used_pidfd\":");
    opt_int(out, *used_pidfd);
    out.extend_from_slice(b",\"risk\":");
    opt_strings(out, risk.as_deref());
    out.extend_from_slice(b",\"target_exit\":");
    opt_strings(out, target_exit.as_deref());
    out.extend_from_slice(b",\"target_uid\":");
    opt_int(out, *target_uid);
    out.extend_from_slice(b",\"target_euid\":");
    opt_int(out, *target_euid);
    out.extend_from_slice(b",\"target_elevated\":");
    opt_bool(out, *target_elevated);
    out.extend_from_slice(b",\"target_cgroup_id\":");
    opt_int(out, *target_cgroup_id);
    out.extend_from_slice(b",\"file_kind\":");
    opt_string(out, *file_kind);
    out.extend_from_slice(b",\"file_path\":");
    opt_string(out, file_path.as_deref());
    out.extend_from_slice(b",\"file_dev\":");
    opt_string(out, file_dev.as_deref());
    out.extend_from_slice(b",\"file_ino\":");
    opt_int(out, *file_ino);
    out.extend_from_slice(b",\"file_deleted\":");
    opt_bool(out, *file_deleted);
    out.extend_from_slice(b",\"file_changed\":");
    opt_bool(out, *file_changed);
    out.push(b'}');
}

fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn opt_int(out: &mut Vec<u8>, v: Option<impl itoa::Integer>) {
    match v {
        Some(v) => int(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn opt_bool(out: &mut Vec<u8>, v: Option<bool>) {
    out.extend_from_slice(match v {
        Some(true) => b"true",
        Some(false) => b"false",
        None => b"null",
    });
}

/// A JSON string. Text without `"`, `\` or control characters (every name and nearly every
/// path) is copied as it is; anything else goes through serde_json's own escaping, so the
/// bytes match serde_json's in every case.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// `string` of a task name: when it needs no escaping, its whole fixed-size buffer is copied
/// (a constant-size copy, no `memcpy` call) and only its length kept.
fn comm_string(out: &mut Vec<u8>, c: &Comm) {
    let (buf, len) = c.raw();
    if !buf[..len].iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        string(out, c.as_str());
        return;
    }
    out.reserve(buf.len() + 2);
    let at = out.len();
    // SAFETY: `buf.len() + 2` bytes of spare capacity reserved above; the first `len + 2`
    // are written (quote, name, quote) before `set_len` exposes them.
    unsafe {
        let p = out.as_mut_ptr().add(at);
        *p = b'"';
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p.add(1), buf.len());
        *p.add(1 + len) = b'"';
        out.set_len(at + len + 2);
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn strings<S: AsRef<str>>(out: &mut Vec<u8>, v: &[S]) {
    out.push(b'[');
    for (i, s) in v.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, s.as_ref());
    }
    out.push(b']');
}

fn opt_strings<S: AsRef<str>>(out: &mut Vec<u8>, v: Option<&[S]>) {
    match v {
        Some(v) => strings(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `event::format_rfc3339` without the `String`: same digits, written in place.
fn rfc3339(out: &mut Vec<u8>, unix_ns: i128) {
    // i64 arithmetic (years 1677 to 2262): 128-bit division is a library call.
    let Ok(ns) = i64::try_from(unix_ns) else {
        out.extend_from_slice(format_rfc3339(unix_ns).as_bytes());
        return;
    };
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    let (y, m, d) = crate::event::civil_from_days(days);
    let y = y as u32;
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    digits(&mut b[0..4], y);
    digits(&mut b[5..7], m);
    digits(&mut b[8..10], d);
    digits(&mut b[11..13], sod / 3600);
    digits(&mut b[14..16], sod / 60 % 60);
    digits(&mut b[17..19], sod % 60);
    digits(&mut b[20..29], nanos);
    out.extend_from_slice(&b);
}

/// `v` in decimal, zero-padded to exactly `into.len()` digits (v has no more).
fn digits(into: &mut [u8], mut v: u32) {
    for c in into.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

#[cfg(test)]
mod tests {
    use pidfd_trace_common::{EventKind, clone_flags as cf, exit_facts, hints, risk as rk};

    use super::*;
    use crate::{
        decode::testing::{bytes, decoder, record},
        risk,
    };

    /// Made-up events covering every kind, success and failure, every optional field set
    /// and unset, and strings that need escaping.
    fn events() -> Vec<Event> {
        let mut d = decoder();
        let mut out = Vec::new();
        let mut seq = 0;
        let mut push = |d: &mut crate::decode::Decoder, mut r: pidfd_trace_common::EventRecord| {
            seq += 1;
            r.cpu_seq = seq;
            out.push(d.decode(&bytes(&r)).unwrap());
        };
        for kind in [
            EventKind::Clone,
            EventKind::Clone3,
            EventKind::PidfdOpen,
            EventKind::PidfdGetfd,
            EventKind::PidfdSendSignal,
            EventKind::Waitid,
        ] {
            for ret in [0, 5000, -1, -9, -11, -22, -24, -4095] {
                let mut r = record(kind, ret, cf::CLONE_PIDFD | cf::CLONE_THREAD | 17 | 1 << 40);
                r.hints = hints::PIDS_AT_LIMIT;
                push(&mut d, r);
                let mut r = record(kind, ret, 0);
                r.facts.risk = rk::TARGET_SEEN | rk::TARGET_EXITING | rk::CRED_MISMATCH | rk::TARGET_ELEVATED;
                r.facts.exit = exit_facts::ZOMBIE | exit_facts::NO_MM;
                r.facts.target_uid = 0;
                r.facts.target_euid = 1000;
                r.facts.target_cgroup_id = 12;
                r.target_pid = 31337;
                r.ts_ns = u64::MAX / 4;
                r.comm = *b"a\"b\\c\n\x01\x7f\xc3\xa9\xff z\0\0\0";
                push(&mut d, r);
            }
        }
        let mut evs = out;
        let base = evs[0].clone();
        // What only the enricher sets, and the edges of the clock.
        for (i, ts) in [
            0i128,
            -1,
            1_795_782_662_123_456_789,
            i64::MAX.into(),
            i64::MIN.into(),
            253_402_300_799_999_999_999,
            -62_167_219_200_000_000_001,
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = base.clone();
            e.ts = ts;
            e.cgroup = Some(format!("/kubepods.slice/pod{i}/cri-containerd-\"x\"\t.scope").into());
            e.container_id = Some("0123456789abcdef".repeat(4).into());
            e.pod_uid = Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into());
            e.container_runtime = Some("containerd");
            e.caller_open_pidfds = Some(i * 1000);
            e.pidfd_allocated = Some(i % 2 == 0);
            e.copy_process_ns = Some(u64::MAX);
            e.risk = Some(vec![risk::CROSS_CONTAINER]);
            e.target_exit = Some(vec![]);
            e.target_elevated = Some(false);
            e.file_kind = Some("regular");
            e.file_path = Some("/etc/shadow\u{2028}…".into());
            e.ret = i64::MIN;
            e.target_pid = Some(i64::MAX);
            evs.push(e);
        }
        evs
    }

    #[test]
    fn bytes_are_serde_jsons() {
        let evs = events();
        assert!(evs.iter().any(|e| e.risk.as_ref().is_some_and(|r| r.len() == 2)), "risky events made");
        assert!(evs.iter().any(|e| e.signal.is_some() && e.errno.is_some()));
        assert!(evs.iter().any(|e| e.flag_names.len() > 1));
        let mut buf = Vec::new();
        for ev in &evs {
            buf.clear();
            write_event(&mut buf, ev);
            let want = serde_json::to_vec(ev).unwrap();
            assert_eq!(String::from_utf8_lossy(&buf), String::from_utf8_lossy(&want));
            assert_eq!(buf, want);
        }
    }

    #[test]
    fn names_are_serde_jsons() {
        let mut buf = Vec::new();
        for name in ["", "a", "pidfd-bench-load", "0123456789abcdef", "tab\there", "q\"uote", "é"] {
            for c in [
                Comm::from(name),
                Comm::from_kernel(&{
                    let mut raw = [0u8; 16];
                    let n = name.len().min(16);
                    raw[..n].copy_from_slice(&name.as_bytes()[..n]);
                    raw
                }),
            ] {
                buf.clear();
                comm_string(&mut buf, &c);
                assert_eq!(buf, serde_json::to_vec(c.as_str()).unwrap(), "{name:?}");
            }
        }
    }

    #[test]
    fn sink_writes_lines_on_flush_and_when_full() {
        let evs = events();
        let mut want = Vec::new();
        for ev in &evs {
            serde_json::to_writer(&mut want, ev).unwrap();
            want.push(b'\n');
        }
        let mut got = Vec::new();
        {
            let mut sink = JsonLines::new(&mut got);
            for ev in &evs {
                sink.event(ev).unwrap();
            }
            sink.flush().unwrap();
        }
        assert_eq!(got, want);
        // Enough lines to pass WRITE_AT several times, without a flush: written as it fills,
        // the rest when the sink goes.
        let mut got = Vec::new();
        let mut sink = JsonLines::new(&mut got);
        let n = WRITE_AT / 900 * 3;
        for _ in 0..n {
            sink.event(&evs[0]).unwrap();
        }
        drop(sink);
        assert_eq!(got.iter().filter(|&&b| b == b'\n').count(), n);
    }
}

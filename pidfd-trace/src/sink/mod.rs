//! Sinks: where decoded events go. Each only formats and delivers.
// The metrics sinks are being changed on another branch (alerting); their rustdoc comes with
// that merge.
#[allow(missing_docs)]
pub mod cap;
#[allow(missing_docs)]
pub mod events;
pub mod json;
#[allow(missing_docs)]
pub mod metrics;
pub mod outcomes;
pub mod text;

use std::io;

use crate::event::Event;

/// Counts of one run, kept by the pipeline, for the closing summary and the metrics sink.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Records read from the ring buffer.
    pub delivered: u64,
    /// Events that passed the filter and went to the sink.
    pub shown: u64,
    /// Records that could not be decoded (dropped).
    pub decode_errors: u64,
}

/// One output interface for every sink.
pub trait Sink {
    /// Delivers one event; Err only when the output cannot be written (e.g. EPIPE).
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    /// Called after each batch of events, so output is timely without a flush per line.
    fn flush(&mut self) -> io::Result<()>;
    /// SIGHUP: flush, then reopen any file written by path (log rotation). Sinks that write
    /// to stdout or memory have nothing to reopen.
    fn reopen(&mut self) -> io::Result<()> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use pidfd_trace_common::EventKind;

    use super::{Sink, json::JsonLines, text::Text};
    use crate::{classify::Stage, event::Event};

    fn failed_clone() -> Event {
        Event {
            ts: 1_795_782_662_123_456_789,
            seq: 7,
            event: EventKind::Clone3,
            pid: 4242,
            tid: 4243,
            ns_pid: None,
            uid: 1000,
            comm: "worker".into(),
            thread_comm: "worker-1".into(),
            compat: false,
            cgroup_id: 1,
            cgroup: None,
            container_id: None,
            pod_uid: None,
            container_runtime: None,
            flags: 0x1000,
            flag_names: vec!["CLONE_PIDFD".into()],
            ret: -24,
            errno: Some("EMFILE".into()),
            stage: Some(Stage::FdAlloc),
            pidfd: None,
            child_pid: None,
            ns_child_pid: None,
            target_pid: None,
            target_reason: None,
            pidfd_ino: None,
            ns_target_pid: None,
            signal: None,
            signal_nr: None,
            target_fd: None,
            cmd: None,
            advice: None,
            mode: "tracepoint",
            duration_ns: 900,
            pidfd_allocated: None,
            copy_process_ns: None,
            caller_open_pidfds: None,
            used_pidfd: None,
            target_checked: false,
            cgroup_leaf: None,
            risk: None,
            target_exit: None,
            target_uid: None,
            target_euid: None,
            target_elevated: None,
            target_cgroup_id: None,
            file_kind: None,
            file_path: None,
            file_dev: None,
            file_ino: None,
            file_deleted: None,
            file_changed: None,
            facts: Default::default(),
        }
    }

    #[test]
    fn json_line_has_the_contract_fields() {
        let mut buf = Vec::new();
        JsonLines::new(&mut buf).event(&failed_clone()).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (k, want) in [
            ("ts", serde_json::json!("2026-11-27T12:31:02.123456789Z")),
            ("seq", 7.into()),
            ("event", "clone3".into()),
            ("pid", 4242.into()),
            ("tid", 4243.into()),
            ("comm", "worker".into()),
            ("flags", 4096.into()),
            ("flag_names", serde_json::json!(["CLONE_PIDFD"])),
            ("ret", (-24).into()),
            ("errno", "EMFILE".into()),
            ("stage", "fd_alloc".into()),
            ("pidfd", serde_json::Value::Null),
            ("child_pid", serde_json::Value::Null),
            ("target_pid", serde_json::Value::Null),
            ("signal", serde_json::Value::Null),
            ("target_fd", serde_json::Value::Null),
            ("cgroup_id", 1.into()),
            ("cgroup", serde_json::Value::Null),
            ("container_id", serde_json::Value::Null),
            ("mode", "tracepoint".into()),
        ] {
            assert_eq!(v[k], want, "field {k}");
        }
        assert_eq!(v["used_pidfd"], serde_json::Value::Null);
        assert!(v.get("container_runtime").is_none(), "metric-only fields stay out of the schema");
    }

    #[test]
    fn text_columns() {
        let mut buf = Vec::new();
        let mut ok = failed_clone();
        ok.ret = 5000;
        ok.errno = None;
        ok.stage = None;
        ok.pidfd = Some(5);
        ok.child_pid = Some(5000);
        {
            let clock = super::text::Clock::new(crate::cli::Timestamps::Utc, 0);
            let mut sink = Text::new(&mut buf, clock);
            sink.event(&failed_clone()).unwrap();
            sink.event(&ok).unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("TIME(UTC)") && lines[0].contains("RESULT"));
        for col in ["COMM", "PID", "TID", "UID", "EVENT", "DETAIL"] {
            assert!(lines[0].contains(col), "{col} in {}", lines[0]);
        }
        assert!(lines[1].starts_with("2026-11-27 12:31:02.123 worker"), "{}", lines[1]);
        assert!(lines[1].contains(" 4242    4243   1000 clone3 "), "pid, tid, uid: {}", lines[1]);
        assert!(
            lines[1].contains("EMFILE")
                && lines[1].contains("stage=fd_alloc")
                && lines[1].contains("flags=CLONE_PIDFD")
        );
        assert!(lines[2].contains("pidfd=5") && lines[2].contains("child=5000"), "{}", lines[2]);
    }

    #[test]
    fn text_names_the_pidfd_a_call_used() {
        let mut ev = failed_clone();
        ev.event = EventKind::PidfdSendSignal;
        (ev.ret, ev.errno, ev.stage, ev.flags, ev.flag_names) = (-9, Some("EBADF".into()), None, 0, vec![]);
        ev.used_pidfd = Some(999);
        let clock = super::text::Clock::new(crate::cli::Timestamps::Relative, ev.ts);
        let line = super::text::line(&ev, &clock);
        assert!(line.contains("EBADF") && line.contains("used_pidfd=999"), "{line}");
        let mut buf = Vec::new();
        JsonLines::new(&mut buf).event(&ev).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!((v["used_pidfd"].as_i64(), v["uid"].as_u64()), (Some(999), Some(1000)));
    }

    /// A hostile comm cannot split a record or reach the terminal; a risky getfd shows its
    /// reasons and the file taken (both were missing from the text view: break-it pass).
    #[test]
    fn text_is_one_safe_line_and_shows_risk() {
        let mut ev = failed_clone();
        ev.comm = "x\n[FAKE] \x1b[2Jro".into();
        ev.event = EventKind::PidfdGetfd;
        (ev.ret, ev.errno, ev.stage, ev.flags, ev.flag_names) = (6, None, None, 0, vec![]);
        ev.target_fd = Some(5);
        ev.risk = Some(vec!["cred_mismatch", "cross_container"]);
        ev.file_kind = Some("regular");
        ev.file_path = Some("/tmp/a b\nc".into());
        let clock = super::text::Clock::new(crate::cli::Timestamps::Relative, ev.ts);
        let line = super::text::line(&ev, &clock);
        assert!(!line.contains('\n') && !line.contains('\x1b'), "{line:?}");
        assert!(line.contains("x?[FAKE] ?[2Jro"), "{line}");
        assert!(line.contains("risk=cred_mismatch,cross_container"), "{line}");
        assert!(line.contains(r#"file="/tmp/a b\nc""#), "{line}");
        ev.file_path = None;
        ev.file_kind = Some("memfd");
        ev.risk = Some(vec![]);
        let line = super::text::line(&ev, &clock);
        assert!(line.contains("file_kind=memfd") && !line.contains("risk="), "{line}");
    }
}

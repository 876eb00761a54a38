//! What an operator sees (issue 17): `check --output json` against its documented schema
//! (docs/cli.md), the `trace` header and columns with a real agent on this kernel (tracepoint
//! mode), and SIGHUP rotation of `serve --events-log` under a pidfd_open storm without losing
//! a line. Needs root; `cargo xtask test` runs it as such.
mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::common::{AGENT, require_root, spawn_collecting, wait_attached};

// ---------------------------------------------------------------------------------------------
// A small schema checker: a schema is a JSON value where a string names the type(s) of a leaf
// ("string", "integer", "bool", "null", joined by '|'), an object lists exactly the keys an
// object must have, and a one-element array gives the schema of every item.

fn conforms(v: &Value, schema: &Value, at: &str, errors: &mut Vec<String>) {
    match schema {
        Value::String(types) => {
            let ok = types.split('|').any(|t| match t {
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "bool" => v.is_boolean(),
                "null" => v.is_null(),
                "array" => v.is_array(),
                other => panic!("unknown type {other} in the schema"),
            });
            if !ok {
                errors.push(format!("{at}: {v} is not {types}"));
            }
        }
        Value::Object(keys) => {
            let Some(obj) = v.as_object() else {
                errors.push(format!("{at}: {v} is not an object"));
                return;
            };
            for k in obj.keys().filter(|k| !keys.contains_key(*k)) {
                errors.push(format!("{at}: key {k} is not in the schema (document it in docs/cli.md)"));
            }
            for (k, s) in keys {
                match obj.get(k) {
                    Some(x) => conforms(x, s, &format!("{at}.{k}"), errors),
                    None => errors.push(format!("{at}: key {k} missing")),
                }
            }
        }
        Value::Array(item) => {
            let Some(arr) = v.as_array() else {
                errors.push(format!("{at}: {v} is not an array"));
                return;
            };
            for (i, x) in arr.iter().enumerate() {
                conforms(x, &item[0], &format!("{at}[{i}]"), errors);
            }
        }
        _ => panic!("bad schema at {at}"),
    }
}

fn assert_conforms(v: &Value, schema: &Value) {
    let mut errors = Vec::new();
    conforms(v, schema, "$", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}\nin {v:#}");
}

/// docs/cli.md, "check --output json", as a schema.
fn check_schema() -> Value {
    let support = json!({ "ok": "bool", "reason": "string|null" });
    json!({
        "schema_version": "integer",
        "ok": "bool",
        "versions": { "pidfd_trace": "string", "kernel": "string", "schema": "integer" },
        "kernel": "string",
        "btf": { "path": "string", "present": "bool", "reason": "string|null" },
        "lockdown": "string|null",
        "tracefs": { "ok": "bool", "path": "string|null", "mounted_by_check": "bool", "reason": "string|null" },
        "program_types": { "fentry": support, "kprobe": support, "tracepoint": support },
        "thread_pidfd": "bool",
        "close_tracking": "string",
        "closes_traced": "bool",
        "entry_state": { "store": "string", "reason": "string|null" },
        "blind_spots": ["string"],
        "plan": [{
            "hook": "string",
            "kind": "string",
            "target": "string",
            "chosen": "string|null",
            "candidates": [{ "mode": "string", "ok": "bool", "refused": "string|null" }],
            "cannot_see": ["string"],
        }],
        // Exactly these four keys: the VM matrix reads them.
        "prototypes": [{ "function": "string", "expected_params": "integer", "btf_params": "integer|null", "ok": "bool" }],
        "attach_error": "string|null",
        "error": "null", // or the error object, checked where it is set
    })
}

fn error_schema() -> Value {
    json!({
        "schema_version": "integer",
        "ok": "bool",
        "versions": { "pidfd_trace": "string", "schema": "integer" },
        "error": { "message": "string", "exit_status": "integer" },
    })
}

#[test]
fn check_json_follows_the_documented_schema() {
    require_root("check's trial attach");
    let out = Command::new(AGENT).args(["check", "--output", "json"]).output().expect("run check");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("check -o json is one JSON document ({e}): {}", String::from_utf8_lossy(&out.stdout))
    });
    // `"error": object` is checked below; the schema checker has no "object" leaf.
    let mut schema = check_schema();
    if !doc["error"].is_null() {
        schema["error"] = json!({ "message": "string", "exit_status": "integer" });
    }
    assert_conforms(&doc, &schema);

    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["versions"]["pidfd_trace"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["versions"]["kernel"], doc["kernel"]);
    assert_eq!(doc["ok"].as_bool(), Some(out.status.success()), "ok is the exit status");
    // The store is probed, and the reason is given exactly when it is not task storage.
    let store = doc["entry_state"]["store"].as_str();
    assert!(matches!(store, Some("task_storage" | "hash")), "entry_state.store: {}", doc["entry_state"]);
    assert_eq!(store == Some("hash"), doc["entry_state"]["reason"].is_string(), "{}", doc["entry_state"]);
    assert_eq!(doc["ok"].as_bool(), Some(doc["error"].is_null()));
    assert_eq!(doc["tracefs"]["ok"], true, "{}", doc["tracefs"]);
    assert_eq!(doc["program_types"]["tracepoint"]["ok"], true);
    for (name, t) in doc["program_types"].as_object().unwrap() {
        assert_eq!(t["ok"].as_bool(), Some(t["reason"].is_null()), "{name}: a reason exactly when not ok");
    }
    let plan = doc["plan"].as_array().unwrap();
    for h in plan {
        let kind = h["kind"].as_str().unwrap();
        assert!(kind == "syscall" || kind == "function" || kind == "path", "{h}");
        if kind == "path" {
            // A creation path no tracepoint sees: attached nowhere, and check says why.
            assert!(h["chosen"].is_null(), "{h}");
            assert!(!h["cannot_see"].as_array().unwrap().is_empty(), "{h}");
            assert_eq!(h["candidates"][0]["mode"], "tracepoint", "{h}");
            assert_eq!(h["candidates"][0]["ok"], false, "{h}");
        }
        if kind == "syscall" {
            assert_eq!(h["chosen"], "tracepoint", "syscall hooks attach in every mode: {h}");
            assert!(h["cannot_see"].as_array().unwrap().is_empty(), "{h}");
        }
        if kind == "function" && h["chosen"].is_null() {
            assert!(
                !h["cannot_see"].as_array().unwrap().is_empty(),
                "a missing function hook says what is lost: {h}"
            );
        }
        for c in h["candidates"].as_array().unwrap() {
            assert_eq!(c["ok"].as_bool(), Some(c["refused"].is_null()), "{c}");
        }
    }
    for hook in ["clone", "clone3", "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "waitid"] {
        assert!(plan.iter().any(|h| h["hook"] == hook), "{hook} in the plan");
    }
    // Issue 11's creation paths: the ones a syscall tracepoint sees attach in every mode; the
    // others are declared not visible, by name, in the JSON and in the text report.
    let kind_of = |hook: &str| {
        plan.iter().find(|h| h["hook"] == hook).unwrap_or_else(|| panic!("{hook} not in the plan"))["kind"]
            .clone()
    };
    for hook in ["so_peerpidfd", "pidfs_handle", "reopen"] {
        assert_eq!(kind_of(hook), "syscall", "{hook}");
    }
    let text = Command::new(AGENT).arg("check").output().expect("run check");
    let text = String::from_utf8_lossy(&text.stdout);
    for hook in ["scm_pidfd", "fanotify", "coredump"] {
        assert_eq!(kind_of(hook), "path", "{hook}");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(hook))
            .unwrap_or_else(|| panic!("{hook}: {text}"));
        assert!(line.contains("none"), "{line}");
        assert!(
            text.contains(&format!("cannot see: {hook}: ")),
            "{hook} declared in the text report:\n{text}"
        );
    }
    // No Rust shapes leak: no {"Ok": ..}/{"Err": ..} objects, no "yes"/"no: .." verdicts.
    let text = doc.to_string();
    assert!(!text.contains("\"Ok\"") && !text.contains("\"Err\"") && !text.contains("\"no: "), "{text}");
}

#[test]
fn check_json_errors_are_json_documents() {
    // Not privileged: the error document on stdout, the one line on stderr, exit 1.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([AGENT, "check", "-o", "json"])
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("an error document on stdout");
    assert_conforms(&doc, &error_schema());
    assert_eq!((doc["ok"].as_bool(), doc["error"]["exit_status"].as_i64()), (Some(false), Some(1)));
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("missing capabilities CAP_BPF+CAP_PERFMON"),
        "{doc}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);

    // A bad command line: exit 2, and still a JSON document.
    for args in [&["check", "--output", "json", "--mode", "fexit"][..], &["check", "-ojson", "--bogus"]] {
        let out = Command::new(AGENT).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let doc: Value = serde_json::from_slice(&out.stdout).expect("an error document on stdout");
        assert_conforms(&doc, &error_schema());
        assert_eq!(doc["error"]["exit_status"], 2);
    }
    // Without --output json a usage error leaves stdout alone.
    let out = Command::new(AGENT).args(["check", "--mode", "fexit"]).output().unwrap();
    assert!(out.stdout.is_empty());
}

// ---------------------------------------------------------------------------------------------
// trace: header at once, columns, the pidfd a call used, uid.

struct Trace {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Trace {
    /// `trace` in tracepoint mode, filtered to one thread of this test process.
    fn start(tid: i32, extra: &[&str]) -> Self {
        require_root("trace tests");
        let (mut child, stderr) = spawn_collecting(
            Command::new(AGENT)
                .args(["trace", "--mode", "tracepoint", "-p", &tid.to_string()])
                .args(extra)
                .stdout(Stdio::piped()),
        );
        let out = child.stdout.take().unwrap();
        let stdout: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        wait_attached(&mut child, &stderr, Duration::from_secs(60));
        Trace { child, stderr, stdout }
    }

    fn wait_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.stdout.lock().unwrap().clone();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "wanted {n} stdout lines, got {lines:?}; stderr {:?}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn stop(mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        let st = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(st.success(), "trace exited with {st}: {:?}", self.stderr.lock().unwrap());
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn gettid() -> i32 {
    unsafe { libc::gettid() }
}

fn pidfd_open(pid: i32) -> i32 {
    unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32 }
}

fn pidfd_send_signal(pidfd: i32, sig: i32) -> i64 {
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, std::ptr::null::<u8>(), 0) }
}

/// An fd number that is surely not open in this process.
fn closed_fd() -> i32 {
    (900..2000).find(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1).unwrap()
}

fn is_date_time(s: &str) -> bool {
    // 2026-11-30 21:40:01.123
    let b = s.as_bytes();
    b.len() == 23
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn trace_prints_its_header_at_once_then_columns_with_tid_uid_and_the_used_pidfd() {
    let tid = gettid();
    let trace = Trace::start(tid, &[]);
    // No event from this thread yet: the header must already be there.
    let lines = trace.wait_lines(1);
    let header = &lines[0];
    assert!(header.starts_with("TIME(UTC"), "local time, zone named: {header}");
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(cols[1..], ["COMM", "PID", "TID", "UID", "EVENT", "RESULT", "DETAIL"], "{header}");

    let me = std::process::id() as i32;
    let fd = pidfd_open(me);
    assert!(fd >= 0);
    let bad = closed_fd();
    assert_eq!(pidfd_send_signal(bad, 0), -1, "EBADF on fd {bad}");
    assert_eq!(pidfd_send_signal(fd, 0), 0);
    // SIGHUP must not stop trace (it has nothing to reopen).
    trace.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pidfd_send_signal(0, 0), -1, "fd 0 is no pidfd");
    unsafe { libc::close(fd) };

    let lines = trace.wait_lines(5);
    let stderr = trace.stop();
    let events = &lines[1..];
    assert_eq!(events.len(), 4, "{lines:#?}");
    let uid = unsafe { libc::getuid() };
    for l in events {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(is_date_time(&l[..23]), "{l}");
        assert_eq!(
            (f[3].parse::<i32>().ok(), f[4].parse::<i32>().ok(), f[5].parse::<u32>().ok()),
            (Some(me), Some(tid), Some(uid)),
            "PID TID UID of {l}"
        );
    }
    assert!(events[0].contains("pidfd_open") && events[0].contains(&format!("pidfd={fd}")), "{}", events[0]);
    assert!(
        events[1].contains("pidfd_send_signal")
            && events[1].contains("EBADF")
            && events[1].contains(&format!("used_pidfd={bad}")),
        "{}",
        events[1]
    );
    assert!(
        events[2].contains(" ok ") && events[2].contains(&format!("used_pidfd={fd} target={me}")),
        "{}",
        events[2]
    );
    assert!(
        events[3].contains("EBADF") && events[3].contains("used_pidfd=0"),
        "the two EBADFs differ: {}",
        events[3]
    );
    assert!(stderr.iter().any(|l| l.contains("4 shown")), "{stderr:?}");
}

#[test]
fn trace_json_carries_uid_and_used_pidfd_and_relative_timestamps_count_from_attach() {
    let tid = gettid();
    let trace = Trace::start(tid, &["-o", "json"]);
    let bad = closed_fd();
    assert_eq!(pidfd_send_signal(bad, 0), -1);
    let lines = trace.wait_lines(1);
    trace.stop();
    let v: Value = serde_json::from_str(&lines[0]).expect("no header in JSON output");
    assert_eq!(v["event"], "pidfd_send_signal");
    assert_eq!(v["errno"], "EBADF");
    assert_eq!(v["used_pidfd"], bad);
    assert_eq!(v["uid"], unsafe { libc::getuid() });
    assert_eq!(v["tid"], tid);

    let trace = Trace::start(tid, &["--timestamps", "relative"]);
    let started = Instant::now();
    assert_eq!(pidfd_send_signal(bad, 0), -1);
    let lines = trace.wait_lines(2);
    trace.stop();
    assert!(lines[0].starts_with("TIME(s) "), "{}", lines[0]);
    let secs: f64 = lines[1].split_whitespace().next().unwrap().parse().expect("seconds");
    assert!(secs >= 0.0 && secs <= started.elapsed().as_secs_f64() + 5.0, "{}", lines[1]);

    let trace = Trace::start(tid, &["--timestamps", "utc"]);
    assert_eq!(pidfd_send_signal(bad, 0), -1);
    let lines = trace.wait_lines(2);
    trace.stop();
    assert!(lines[0].starts_with("TIME(UTC) "), "{}", lines[0]);
    assert!(is_date_time(&lines[1][..23]), "{}", lines[1]);
}

// ---------------------------------------------------------------------------------------------
// serve: SIGHUP reopens the events log; rotating under load loses nothing.

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pidfd-trace-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Lines of `files` that are pidfd_open events of thread `tid`, and whether every line was
/// whole JSON.
fn count_events(files: &[PathBuf], tid: i32) -> (usize, usize) {
    let (mut ours, mut lines) = (0, 0);
    for f in files {
        for l in std::fs::read_to_string(f).unwrap().lines() {
            lines += 1;
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: torn line {l:?}: {e}", f.display()));
            if v["tid"] == tid && v["event"] == "pidfd_open" {
                ours += 1;
            }
        }
    }
    (ours, lines)
}

#[test]
fn sighup_reopens_the_events_log_and_rotation_under_load_loses_no_line() {
    require_root("serve tests");
    let dir = tempdir("rotate");
    let log = dir.join("events.jsonl");
    let (mut child, stderr) = spawn_collecting(
        Command::new(AGENT)
            .args(["serve", "--web.listen-address", "127.0.0.1:0", "--mode", "tracepoint"])
            .arg("--events-log")
            .arg(&log)
            .stdout(Stdio::null()),
    );
    wait_attached(&mut child, &stderr, Duration::from_secs(60));

    // The storm: pidfd_open of this process from one thread, paced so the ring buffer never
    // fills (a lost record would be the ring's, not rotation's, and is checked below).
    const CALLS: usize = 30_000;
    let (tx, rx) = std::sync::mpsc::channel();
    let storm = std::thread::spawn(move || {
        tx.send(gettid()).unwrap();
        let me = std::process::id() as i32;
        let mut made = 0;
        for i in 0..CALLS {
            let fd = pidfd_open(me);
            if fd >= 0 {
                made += 1;
                unsafe { libc::close(fd) };
            }
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        made
    });
    let storm_tid = rx.recv().unwrap();
    // Rotate as logrotate does (rename, then postrotate `kill -HUP`), several times while
    // the storm runs.
    let mut rotated = Vec::new();
    for i in 1..=4 {
        std::thread::sleep(Duration::from_millis(150));
        let to = dir.join(format!("events.jsonl.{i}"));
        std::fs::rename(&log, &to).unwrap_or_else(|e| panic!("rename {}: {e}", log.display()));
        rotated.push(to);
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "serve died on SIGHUP: {:?}",
                stderr.lock().unwrap()
            );
            assert!(Instant::now() < deadline, "SIGHUP did not reopen {}", log.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let made = storm.join().unwrap();
    assert!(made > 0);
    // Everything the agent has by now reaches the files within the drain interval.
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let err = stderr.lock().unwrap().clone();
    assert!(st.success(), "serve after SIGTERM: {st}, {err:?}");
    assert_eq!(err.iter().filter(|l| l.contains("events log reopened")).count(), 4, "{err:?}");
    assert!(
        err.iter().any(|l| l.contains(" 0 lost")),
        "no ring-buffer loss, else the count cannot be exact: {err:?}"
    );

    let mut files = rotated.clone();
    files.push(log.clone());
    let (ours, lines) = count_events(&files, storm_tid);
    assert_eq!(ours, made, "pidfd_open lines of the storm thread across {files:?} ({lines} lines in all)");
    let per_file: Vec<usize> =
        files.iter().map(|f| count_events(std::slice::from_ref(f), storm_tid).0).collect();
    assert!(
        per_file.iter().filter(|&&n| n > 0).count() >= 3,
        "the storm spans several rotations: {per_file:?}"
    );
    eprintln!("storm: {made} pidfd_open calls, lines per file {per_file:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! What an SRE alerts on, from the outside of a real `serve` (root: it loads programs):
//! every series whose labels are known exists at 0 from the first scrape; per-process series
//! never go backwards under a small `--max-label-values`, a busy late process gets its own
//! series, and the overflow value is no process name; `/metrics` is gzip-compressed for a
//! scraper that accepts it; every stderr line is JSON under `--log-format json`.
mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use common::{AGENT, WORKLOAD};

const LOAD: &str = env!("CARGO_BIN_EXE_pidfd-bench-load");

/// The overflow value of the per-process and per-container series (README).
const OVERFLOW: &str = "(over --max-label-values)";

struct Serve {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    addr: String,
}

impl Serve {
    fn start(extra: &[&str]) -> Self {
        common::require_root("serve tests");
        let (mut child, stderr) = common::spawn_collecting(
            Command::new(AGENT)
                .args(["serve", "--web.listen-address", "127.0.0.1:0", "--log-format", "json"])
                .args(extra)
                .stdout(Stdio::null()),
        );
        common::wait_attached(&mut child, &stderr, Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            let lines = stderr.lock().unwrap().clone();
            if let Some(a) = lines.iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                v["msg"]
                    .as_str()?
                    .strip_prefix("serving metrics on http://")
                    .map(|r| r.split('/').next().unwrap().to_string())
            }) {
                break a;
            }
            assert!(Instant::now() < deadline, "serve did not say where it serves: {lines:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Serve { child, stderr, addr }
    }

    /// SIGTERM; exit 0; every stderr line, the `attached` line and the closing summary
    /// included, is a JSON object with ts, level and msg.
    fn stop(mut self) -> Vec<String> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.stderr.lock().unwrap().clone();
        assert!(st.success(), "serve exited with {st}: {lines:?}");
        for l in &lines {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON under --log-format json: {l}: {e}"));
            assert!(v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string(), "{l}");
        }
        let msg = |needle: &str| {
            lines
                .iter()
                .any(|l| serde_json::from_str::<Value>(l).unwrap()["msg"].as_str().unwrap().contains(needle))
        };
        assert!(msg("attached"), "the attached line is a JSON line containing `attached`: {lines:?}");
        assert!(msg("programs detached"), "the closing summary is a JSON line: {lines:?}");
        lines
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET with extra headers; returns (status, headers, raw body).
fn get(addr: &str, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head, raw[split + 4..].to_vec())
}

fn metrics(addr: &str) -> String {
    let (code, _, body) = get(addr, "/metrics", "");
    assert_eq!(code, 200);
    String::from_utf8(body).unwrap()
}

/// `name{labels}` → value for every sample of the exposition.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Errors before anything is loaded are JSON lines too under `--log-format json`: a bad
/// flag value (found before the format flag is even parsed) and a port in use.
#[test]
fn errors_are_json_lines_under_log_format_json() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for (args, code, needle) in [
        (vec!["serve", "--log-format", "json", "--max-label-values", "abc"], 2, "invalid value 'abc'"),
        (vec!["serve", "--log-format=json", "--web.listen-address", &addr], 1, "the port is already in use"),
    ] {
        let out = Command::new(AGENT).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {err}");
        let v: Value =
            serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{args:?}: not JSON: {err}: {e}"));
        assert_eq!(v["level"], "error", "{err}");
        assert!(v["msg"].as_str().unwrap().contains(needle), "{args:?}: want {needle:?} in {err}");
    }
}

#[test]
fn fresh_serve_exports_every_known_series_at_start() {
    let serve = Serve::start(&[]);
    // The very first scrape, right after `attached`.
    let body = metrics(&serve.addr);
    let have = samples(&body);
    let mut want: Vec<String> = Vec::new();
    for s in ["clone", "clone3", "pidfd_open"] {
        want.push(format!("pidfd_trace_pidfds_created_total{{source=\"{s}\"}}"));
    }
    // Every (stage, errno) the classifier names (docs/events.md's stages), per source.
    let clone_stages = [
        ("flags", "EINVAL"),
        ("fd_alloc", "EMFILE"),
        ("fd_alloc", "ENFILE"),
        ("user_memory", "EFAULT"),
        ("pids_cgroup", "EAGAIN"),
        ("task_limit", "EAGAIN"),
    ];
    for src in ["clone", "clone3"] {
        for (stage, errno) in clone_stages {
            want.push(format!(
                "pidfd_trace_pidfd_create_failures_total{{source=\"{src}\",stage=\"{stage}\",errno=\"{errno}\"}}"
            ));
        }
    }
    for (stage, errno) in [("flags", "EINVAL"), ("fd_alloc", "EMFILE"), ("fd_alloc", "ENFILE")] {
        want.push(format!(
            "pidfd_trace_pidfd_create_failures_total{{source=\"pidfd_open\",stage=\"{stage}\",errno=\"{errno}\"}}"
        ));
    }
    for sig in ["0", "SIGHUP", "SIGINT", "SIGKILL", "SIGUSR1", "SIGTERM", "SIGCHLD", "SIGSTOP", "SIGSYS"] {
        want.push(format!("pidfd_trace_signals_total{{signal=\"{sig}\"}}"));
    }
    for e in ["EBADF", "EINVAL", "EPERM", "ESRCH"] {
        want.push(format!("pidfd_trace_signal_failures_total{{errno=\"{e}\"}}"));
    }
    for e in ["EBADF", "EINVAL", "EMFILE", "ENFILE", "EPERM", "ESRCH"] {
        want.push(format!("pidfd_trace_getfd_failures_total{{errno=\"{e}\"}}"));
    }
    for m in [
        "pidfd_trace_getfd_total",
        "pidfd_trace_events_total",
        "pidfd_trace_events_lost_total",
        "pidfd_trace_outcomes_map_full_total",
        "pidfd_trace_enter_state_failures_total",
        "pidfd_trace_clone3_args_unreadable_total",
        "pidfd_trace_events_received_total",
        "pidfd_trace_decode_errors_total",
    ] {
        want.push(m.to_string());
    }
    for r in
        ["evicted", "all_busy", "header_timeout", "head_too_large", "malformed", "lifetime", "unauthorized"]
    {
        want.push(format!("pidfd_trace_http_rejected_total{{reason=\"{r}\"}}"));
    }
    want.push("pidfd_trace_pidfd_uses_total{op=\"waitid\",outcome=\"ok\"}".to_string());
    for ev in ["clone", "clone3", "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "waitid"] {
        want.push(format!("pidfd_trace_syscall_duration_seconds_count{{event=\"{ev}\"}}"));
    }
    // Every (hook, mode) of the attach plan `check` prints for this kernel.
    let check = Command::new(AGENT).args(["check", "--output", "json"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&check.stdout).expect("check --output json");
    for hook in plan["plan"].as_array().expect("a plan") {
        for c in hook["candidates"].as_array().unwrap() {
            want.push(format!(
                "pidfd_trace_probe_attached{{hook=\"{}\",mode=\"{}\"}}",
                hook["hook"].as_str().unwrap(),
                c["mode"].as_str().unwrap()
            ));
        }
    }
    // The exposition sorts labels by name; compare label sets, not strings.
    let norm = |k: &str| {
        let Some((name, rest)) = k.split_once('{') else { return k.to_string() };
        let mut labels: Vec<&str> =
            rest.trim_end_matches('}').split("\",").map(|l| l.trim_end_matches('"')).collect();
        labels.sort();
        format!("{name}{{{}}}", labels.join(","))
    };
    let have_norm: BTreeMap<String, f64> = have.iter().map(|(k, v)| (norm(k), *v)).collect();
    let missing: Vec<&String> = want.iter().filter(|w| !have_norm.contains_key(&norm(w))).collect();
    assert!(missing.is_empty(), "series missing from a fresh serve: {missing:#?}\n{body}");
    println!("fresh serve: {} series, all {} expected present; first lines:", have.len(), want.len());
    for l in body.lines().filter(|l| !l.starts_with('#')).take(12) {
        println!("  {l}");
    }

    // gzip when asked, the same exposition when decompressed, plain otherwise.
    let (code, head, gz) = get(&serve.addr, "/metrics", "Accept-Encoding: gzip\r\n");
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-encoding: gzip"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).expect("valid gzip");
    assert!(text.contains("pidfd_trace_build_info{"), "{text}");
    assert!(gz.len() * 3 < text.len(), "compressed {} of {} bytes", gz.len(), text.len());
    let (_, head, plain) = get(&serve.addr, "/metrics", "Accept-Encoding: identity\r\n");
    assert!(!head.to_ascii_lowercase().contains("content-encoding"), "{head}");
    assert!(String::from_utf8(plain).unwrap().contains("pidfd_trace_build_info{"));
    serve.stop();
}

/// A directory of symlinks to `target`, so that a process started through one runs with
/// that command name (the kernel names a task after the file it executed).
fn named(dir: &Path, name: &str, target: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::os::unix::fs::symlink(target, &p).unwrap();
    p
}

fn run(cmd: &Path, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{} {args:?}: {}", cmd.display(), String::from_utf8_lossy(&out.stderr));
}

/// `comm` → (event, outcome) → value, for `pidfd_trace_process_events_total`.
fn process_series(body: &str) -> BTreeMap<String, f64> {
    samples(body).into_iter().filter(|(k, _)| k.starts_with("pidfd_trace_process_events_total{")).collect()
}

fn comm_of(key: &str) -> &str {
    key.split("comm=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default()
}

#[test]
fn process_series_never_go_backwards_and_busy_late_process_gets_its_own() {
    let dir = std::env::temp_dir().join(format!("pidfd-trace-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let early = [named(&dir, "early-a", WORKLOAD), named(&dir, "early-b", WORKLOAD)];
    // A process literally named `other`: it must never share the overflow series.
    let other = named(&dir, "other", LOAD);
    let busy = named(&dir, "busy-late", LOAD);

    let serve = Serve::start(&["--max-label-values", "2"]);
    // A scraper that checks, every 200 ms, that no series ever goes down or disappears.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (addr, stop) = (serve.addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen: BTreeMap<String, f64> = BTreeMap::new();
            let mut scrapes = 0u32;
            let mut problems = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let now = process_series(&metrics(&addr));
                for (k, v) in &seen {
                    match now.get(k) {
                        None => problems.push(format!("{k} disappeared (was {v})")),
                        Some(n) if n < v => problems.push(format!("{k} went back from {v} to {n}")),
                        _ => {}
                    }
                }
                seen.extend(now);
                scrapes += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            (scrapes, seen, problems)
        })
    };
    let t0 = Instant::now();
    // First window: the early names probably take the two slots (other processes on the
    // host may take them instead: nothing below depends on which).
    for e in &early {
        run(e, &["scenario", "pidfd_open_ok"]);
    }
    run(&other, &["pidfd-open", "--secs", "0.2", "--rate", "200"]);
    // Then two busy processes the cap has not admitted yet: their events count under the
    // overflow value until the ranking window ends (60 s after start).
    // Busy enough to outrank what other processes on the host (other tests, benches) do in
    // the same minute: 30,000 and 10,000 calls.
    run(&busy, &["pidfd-open", "--secs", "3", "--rate", "10000"]);
    run(&other, &["pidfd-open", "--secs", "2", "--rate", "5000"]);
    let before = process_series(&metrics(&serve.addr));
    let overflow_before: f64 = before.iter().filter(|(k, _)| comm_of(k) == OVERFLOW).map(|(_, v)| v).sum();
    assert!(overflow_before > 0.0, "events beyond the cap count under {OVERFLOW:?}: {before:#?}");
    assert!(
        !before.keys().any(|k| comm_of(k) == "busy-late"),
        "not admitted before the window ends: {before:#?}"
    );
    // The window ends at the first event after 60 s; keep making events until both busy
    // processes have their own series.
    let deadline = t0 + Duration::from_secs(100);
    let after = loop {
        std::thread::sleep(Duration::from_millis(500));
        if t0.elapsed() > Duration::from_secs(60) {
            run(&busy, &["pidfd-open", "--secs", "0.2", "--rate", "100"]);
            run(&other, &["pidfd-open", "--secs", "0.2", "--rate", "100"]);
        }
        let now = process_series(&metrics(&serve.addr));
        let has = |c: &str| now.iter().any(|(k, v)| comm_of(k) == c && *v > 0.0);
        if has("busy-late") && has("other") {
            break now;
        }
        if Instant::now() >= deadline {
            // Another process on the host (another test run, a benchmark) busier than both of
            // ours outranks them for the cap's slots: that is the cap working, not a failure
            // of admission, and nothing about our own processes can be asserted then.
            let ours = ["early-a", "early-b", "other", "busy-late", OVERFLOW];
            let foreign: Vec<_> =
                now.iter().filter(|(k, v)| !ours.contains(&comm_of(k)) && **v >= 10_000.0).collect();
            if !foreign.is_empty() {
                stop.store(true, Ordering::Relaxed);
                let _ = scraper.join();
                eprintln!(
                    "skipped the admission check: busier processes elsewhere on the host took the slots: {foreign:?}"
                );
                return;
            }
            panic!("busy-late and other never got their own series: {now:#?}");
        }
    };
    // The early names, if they had series, keep them (frozen), never lower.
    for (k, v) in before.iter().filter(|(k, _)| comm_of(k).starts_with("early-")) {
        assert!(after.get(k).is_some_and(|n| n >= v), "{k}: {v} before, {:?} after", after.get(k));
    }
    assert!(after.keys().any(|k| comm_of(k) == OVERFLOW), "{after:#?}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (scrapes, seen, problems) = scraper.join().unwrap();
    serve.stop();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{scrapes} scrapes; series seen:");
    for (k, v) in &seen {
        println!("  {k} {v}");
    }
    assert!(problems.is_empty(), "series went backwards or vanished: {problems:#?}");
    assert!(scrapes > 100, "the scraper ran throughout: {scrapes}");
}

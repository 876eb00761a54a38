//! `pidfd-trace serve` from the outside: bad input fails before anything is loaded, the
//! HTTP side answers and bounds its clients, events reach the log and the metrics with
//! their cgroup and container, and SIGTERM stops it cleanly. Needs root (loads programs).
mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_pidfd-trace");
const WORKLOAD: &str = env!("CARGO_BIN_EXE_pidfd-workload");

fn agent(args: &[&str]) -> Output {
    Command::new(AGENT).args(args).output().expect("run agent")
}

fn one_line_error(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "exactly one line, nothing attached or mounted first: {err}"
    );
    assert!(err.starts_with("pidfd-trace: error: ") && err.contains(needle), "want {needle:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_flag_values() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--web.listen-address", "nope"], "is not HOST:PORT or :PORT"),
        (&["serve", "--web.listen-address", "127.0.0.1:99999"], "is not HOST:PORT"),
        (&["serve", "--web.listen-address", "29100"], "is not HOST:PORT"),
        (&["serve", "--web.telemetry-path", "metrics"], "must be a path like /metrics"),
        (&["serve", "--web.telemetry-path", "/"], "must be a path like /metrics"),
        (&["serve", "--log-format", "xml"], "invalid value 'xml'"),
        (&["serve", "--log-level", "loud"], "invalid value 'loud'"),
        (&["serve", "--max-label-values", "abc"], "invalid value 'abc'"),
        (&["serve", "--max-label-values", "20000"], "20000 is not in 0..=10000"),
        (&["serve", "--max-label-values", "-1"], "unexpected argument '-1'"),
        (&["serve", "--mode", "uprobe"], "invalid value 'uprobe'"),
        (&["serve", "--events-log"], "a value is required"),
        (&["serve", "--web.config.file"], "a value is required"),
        (&["serve", "--inventory-interval", "5x"], "is not a duration like 500ms, 30s, 5m or 1h"),
        (&["serve", "--inventory-interval", "10ms"], "must be between 100ms and 24h"),
        (
            &["serve", "--leak-window", "40s"],
            "--leak-window 40s must be at least twice --inventory-interval 30s",
        ),
        (&["serve", "--leak-window", "1m", "--inventory-interval", "45s"], "must be at least twice"),
        (&["serve", "--leak-min-growth", "0"], "0 is not in 1.."),
    ];
    for (args, needle) in cases {
        one_line_error(&agent(args), 2, needle);
    }
}

#[test]
fn port_in_use_fails_before_loading() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let t = Instant::now();
    let out = agent(&["serve", "--web.listen-address", &addr]);
    one_line_error(&out, 1, &format!("cannot listen on {addr}: the port is already in use"));
    assert!(t.elapsed() < Duration::from_secs(2), "failed fast, before loading programs: {:?}", t.elapsed());
}

#[test]
fn unwritable_events_log_fails_before_loading() {
    let out = agent(&[
        "serve",
        "--web.listen-address",
        "127.0.0.1:0",
        "--events-log",
        "/nonexistent-dir/events.jsonl",
    ]);
    one_line_error(&out, 1, "cannot open events log /nonexistent-dir/events.jsonl");
    let out = agent(&["serve", "--web.listen-address", "127.0.0.1:0", "--events-log", "/"]);
    one_line_error(&out, 1, "choose a writable file with --events-log");
}

/// A running `serve` whose stderr is collected; killed on drop, so a failing test leaves
/// no agent behind.
struct Serve {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    addr: String,
}

impl Serve {
    fn start(extra: &[&str]) -> Self {
        assert!(unsafe { libc::geteuid() } == 0, "serve tests need root: run `cargo xtask test` as root");
        let (mut child, stderr) = common::spawn_collecting(
            Command::new(AGENT)
                .args(["serve", "--web.listen-address", "127.0.0.1:0", "--log-format", "json"])
                .args(extra)
                .stdout(Stdio::piped()),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let lines = stderr.lock().unwrap().clone();
            let serving = lines.iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                let msg = v["msg"].as_str()?;
                msg.strip_prefix("serving metrics on http://")
                    .map(|r| r.split('/').next().unwrap().to_string())
            });
            if let (Some(a), true) = (serving, lines.iter().any(|l| l.contains("attached"))) {
                break a;
            }
            assert!(Instant::now() < deadline, "serve did not start: {lines:?}");
            assert!(child.try_wait().unwrap().is_none(), "serve exited: {lines:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        Serve { child, stderr, addr }
    }

    /// SIGTERM: exit 0, flushed, detached.
    fn stop(mut self) -> (String, Vec<String>) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut stdout = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        let st = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.stderr.lock().unwrap().clone();
        assert!(st.success(), "serve exited with {st} after SIGTERM: {lines:?}");
        assert!(lines.iter().any(|l| l.contains("programs detached")), "{lines:?}");
        for l in &lines {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("--log-format json line {l}: {e}"));
            assert!(v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string(), "{l}");
        }
        (stdout, lines)
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

/// Raw HTTP/1.0 (so a hostile request can be sent as is). Returns status and body.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn get(addr: &str, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n"))
}

fn metric(body: &str, series: &str) -> Option<u64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok()).map(|v| v as u64)
}

fn scenario(name: &str, cgroup: Option<&Path>) -> (u64, Vec<Value>) {
    let mut cmd = match cgroup {
        Some(cg) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg("echo $$ > \"$1\"/cgroup.procs && exec \"$2\" scenario \"$3\"").arg("sh").arg(cg);
            c.arg(WORKLOAD).arg(name);
            c
        }
        None => {
            let mut c = Command::new(WORKLOAD);
            c.args(["scenario", name]);
            c
        }
    };
    let out = cmd.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scenario {name}: {e}"));
    assert!(v.get("error").is_none(), "scenario {name}: {v}");
    (v["pid"].as_u64().unwrap(), v["expect"].as_array().unwrap().clone())
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn http_routes_limits_and_clean_stop() {
    let dir = tempdir("http");
    let log = dir.join("events.jsonl");
    let serve = Serve::start(&["--web.telemetry-path", "/m", "--events-log", log.to_str().unwrap()]);
    let a = serve.addr.clone();

    let (code, body) = get(&a, "/");
    assert_eq!(code, 200);
    assert!(body.contains("<a href=\"/m\">") && body.contains("attached"), "{body}");
    let (code, body) = get(&a, "/m");
    assert_eq!(code, 200);
    for name in ["pidfd_trace_build_info{", "pidfd_trace_probe_attached{", "pidfd_trace_events_lost_total "] {
        assert!(body.contains(name), "{name} missing from {body}");
    }
    assert_eq!(get(&a, "/metrics").0, 404, "only the configured telemetry path");
    assert_eq!(get(&a, "/nope").0, 404);
    assert_eq!(http(&a, "POST /m HTTP/1.0\r\nContent-Length: 0\r\n\r\n").0, 405);
    let huge = format!("GET /m HTTP/1.0\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    assert_eq!(http(&a, &huge).0, 431, "oversized request head refused");

    // A client trickling its request head is cut off by the header read timeout (5 s),
    // and events keep flowing meanwhile.
    let mut trickle = TcpStream::connect(&a).unwrap();
    trickle.write_all(b"GET /m HTTP/1.1\r\nX-Slow: ").unwrap();
    let t = Instant::now();
    let (pid, expect) = scenario("send_signal_ok", None);
    let logged = |pid: u64| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"pid\":{pid},")))
            .count()
    };
    wait_until("the scenario's events while a client trickles", Duration::from_secs(3), || {
        logged(pid) == expect.len()
    });
    trickle.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 512];
    let r = trickle.read(&mut buf);
    let cut = t.elapsed();
    assert!(
        cut >= Duration::from_secs(4) && cut < Duration::from_secs(9),
        "header read timeout closes the slow client after ~5 s: {r:?} after {cut:?}"
    );

    // More idle connections than the limit (32): each new one evicts the longest idle, so 8
    // are closed at once, and the event pipeline does not notice.
    let idle: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(&a).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let closed = idle
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            matches!((&**s).read(&mut [0u8; 16]), Ok(0))
        })
        .count();
    assert!(closed >= 8, "connections beyond the limit closed: {closed} of 40");
    let (pid2, expect2) = scenario("pidfd_open_ok", None);
    wait_until("events while the connection slots are taken", Duration::from_secs(3), || {
        logged(pid2) == expect2.len()
    });
    drop(idle);
    wait_until("the server to answer again", Duration::from_secs(10), || {
        let (code, body) = get(&a, "/m");
        code == 200 && metric(&body, "pidfd_trace_signals_total{signal=\"SIGTERM\"}") >= Some(1)
    });

    let (_, lines) = serve.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let ev: Vec<Value> =
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|e| e["pid"] == pid).collect();
    assert_eq!(ev.len(), expect.len(), "{lines:?}");
    for field in [
        "ts",
        "seq",
        "event",
        "pid",
        "tid",
        "comm",
        "cgroup_id",
        "cgroup",
        "container_id",
        "flags",
        "flag_names",
        "ret",
        "errno",
        "stage",
        "pidfd",
        "child_pid",
        "target_pid",
        "signal",
        "target_fd",
        "mode",
    ] {
        assert!(ev[0].get(field).is_some(), "field {field} missing: {}", ev[0]);
    }
    assert_eq!(ev[1]["event"], "pidfd_send_signal");
    assert_eq!(ev[1]["signal"], "SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real cgroup2 directory shaped like a cri-o container of a Kubernetes pod: the events
/// made inside it carry its path and id, and the capped container metric its pod UID.
#[test]
fn container_enrichment_through_a_real_cgroup() {
    let Some(mount) = cgroup2_mount() else {
        eprintln!("skipped: no cgroup2 mount");
        return;
    };
    let uid = "7d3c1f0e-9a2b-4c5d-8e6f-0a1b2c3d4e5f";
    let id = format!("{:064x}", 0xc0de_0000_u64 + u64::from(std::process::id()));
    let top = mount.join(format!("pidfd-trace-serve-test-{}", std::process::id()));
    let rel = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{id}.scope",
        uid.replace('-', "_")
    );
    let dir = top.join(&rel);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveCgroups { top: top.clone(), leaf: dir.clone() };

    let serve = Serve::start(&["--events-log", "-", "--max-label-values", "5"]);
    let (pid, expect) = scenario("pidfd_open_ok", Some(&dir));
    let series = format!(
        // The exposition orders labels by name.
        "pidfd_trace_container_events_total{{container=\"{id}\",event=\"pidfd_open\",outcome=\"ok\",pod_uid=\"{uid}\",runtime=\"cri-o\"}}"
    );
    let mut body = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&body, &series) != Some(expect.len() as u64) {
        assert!(Instant::now() < deadline, "no {series} = {} in {body}", expect.len());
        std::thread::sleep(Duration::from_millis(100));
        body = get(&serve.addr, "/metrics").1;
    }
    let (stdout, _) = serve.stop();

    let ev: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["pid"] == pid)
        .collect();
    assert_eq!(ev.len(), expect.len(), "events on stdout with --events-log -");
    let want_path = format!("/pidfd-trace-serve-test-{}/{rel}", std::process::id());
    for e in &ev {
        assert_eq!(e["cgroup"], want_path.as_str(), "{e}");
        assert_eq!(e["container_id"], id.as_str(), "{e}");
    }
}

/// Removes the test's cgroup directories, innermost first, even when the test fails (the
/// scenario process that was in the leaf has exited by then).
struct RemoveCgroups {
    top: PathBuf,
    leaf: PathBuf,
}

impl Drop for RemoveCgroups {
    fn drop(&mut self) {
        let mut d = self.leaf.clone();
        while d.starts_with(&self.top) {
            let _ = std::fs::remove_dir(&d);
            d = d.parent().unwrap().to_path_buf();
        }
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts: Vec<&str> = mi
        .lines()
        .filter(|l| l.split(" - ").nth(1).is_some_and(|p| p.starts_with("cgroup2 ")))
        .filter_map(|l| l.split(' ').nth(4))
        .collect();
    mounts.iter().find(|m| **m == "/sys/fs/cgroup").or(mounts.first()).map(PathBuf::from)
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pidfd-trace-serve-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

//! The scenario suite: runs the agent for real, runs each scenario in its own process, and
//! checks that the agent printed exactly the events the kernel's return values imply.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::scenarios;

/// A running agent whose JSON events and stderr are collected by reader threads.
struct Agent {
    child: Child,
    events: Arc<(Mutex<Vec<Value>>, Condvar)>,
    stderr: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Agent {
    fn start(bin: &Path, args: &[&str], timeout: Duration) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .arg("trace")
            .args(["--output", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let events: Arc<(Mutex<Vec<Value>>, Condvar)> = Arc::default();
        let stderr: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| json!({"unparsable": line, "error": e.to_string()}));
                ev.0.lock().unwrap().push(v);
                ev.1.notify_all();
            }
        });
        let se = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                se.0.lock().unwrap().push(line);
                se.1.notify_all();
            }
            se.0.lock().unwrap().push("<eof>".into());
            se.1.notify_all();
        });
        let mut agent = Agent { child, events, stderr };
        agent.wait_attached(timeout)?;
        Ok(agent)
    }

    fn wait_attached(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.stderr;
        let mut lines = lock.lock().unwrap();
        loop {
            if lines.iter().any(|l| l.contains("attached")) {
                return Ok(());
            }
            if lines.iter().any(|l| l == "<eof>") {
                return Err(format!("agent exited before attaching: {}", lines.join(" | ")));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("agent did not attach within {timeout:?}: {}", lines.join(" | ")));
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits until `done(events)` holds, returning a copy of the events; gives up at the
    /// timeout or as soon as the agent has exited (its stderr then says why).
    fn wait_for(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>, Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.events;
        let mut evs = lock.lock().unwrap();
        loop {
            if done(&evs) {
                return Ok(evs.clone());
            }
            let now = Instant::now();
            if now >= deadline || self.exited() {
                let mut evs = evs.clone();
                if self.exited() {
                    evs.push(json!({"agent_exited": self.stderr.0.lock().unwrap().join(" | ")}));
                }
                return Err(evs);
            }
            evs = cv.wait_timeout(evs, (deadline - now).min(Duration::from_millis(200))).unwrap().0;
        }
    }

    fn exited(&self) -> bool {
        self.stderr.0.lock().unwrap().iter().any(|l| l == "<eof>")
    }

    /// SIGTERM, then the agent must exit 0 and print its summary.
    fn stop(mut self) -> Result<(), String> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let (lock, cv) = &*self.stderr;
        let mut lines = lock.lock().unwrap();
        while !lines.iter().any(|l| l == "<eof>") && Instant::now() < deadline {
            lines = cv.wait_timeout(lines, Duration::from_millis(100)).unwrap().0;
        }
        if !status.success() {
            return Err(format!("agent exited with {status} after SIGTERM: {}", lines.join(" | ")));
        }
        if !lines.iter().any(|l| l.contains("events received")) {
            return Err(format!("agent printed no summary: {}", lines.join(" | ")));
        }
        Ok(())
    }
}

/// Collects `r`'s lines on a thread, then `<eof>`.
pub fn collect_lines(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
        sink.lock().unwrap().push("<eof>".into());
    });
    lines
}

/// Runs one scenario process; returns its pid and the events it expects.
pub fn run_scenario(name: &str, comm: Option<&str>) -> Result<(u64, Vec<Value>), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["scenario", name]);
    if let Some(c) = comm {
        cmd.args(["--comm", c]);
    }
    let out = cmd.stderr(Stdio::inherit()).output().map_err(|e| format!("running scenario {name}: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("scenario {name} printed no report ({e}), exit {}", out.status))?;
    if let Some(err) = v.get("error") {
        return Err(format!("scenario could not produce its outcome: {}", err.as_str().unwrap_or("?")));
    }
    let pid = v["pid"].as_u64().ok_or("report without pid")?;
    Ok((pid, v["expect"].as_array().cloned().unwrap_or_default()))
}

/// Whether `ev` carries every field of `want` (`<field>_include`, e.g. `flag_names_include`,
/// is a subset check of that array field).
fn matches(ev: &Value, want: &Value) -> Result<(), String> {
    for (k, w) in want.as_object().into_iter().flatten() {
        if let Some(field) = k.strip_suffix("_include") {
            let have = ev[field].as_array().cloned().unwrap_or_default();
            for f in w.as_array().into_iter().flatten() {
                if !have.contains(f) {
                    return Err(format!("{field} {have:?} lacks {f}"));
                }
            }
        } else if ev.get(k).unwrap_or(&Value::Null) != w {
            return Err(format!("{k}: got {}, want {w}", ev.get(k).unwrap_or(&Value::Null)));
        }
    }
    Ok(())
}

fn of_pid(evs: &[Value], pid: u64) -> Vec<Value> {
    evs.iter().filter(|e| e["pid"].as_u64() == Some(pid)).cloned().collect()
}

/// Checks that the events of `pid` are exactly `want`, in order, once the last one arrived.
fn check_exact(agent: &Agent, pid: u64, want: &[Value], timeout: Duration) -> Result<(), String> {
    let last = want.last().ok_or("scenario expects no events at all")?.clone();
    let got = agent.wait_for(timeout, |evs| of_pid(evs, pid).iter().any(|e| matches(e, &last).is_ok()));
    let evs = match got {
        Ok(evs) => of_pid(&evs, pid),
        Err(evs) => {
            let exited = evs
                .iter()
                .find_map(|e| e["agent_exited"].as_str().map(|s| format!("; the agent exited: {s}")));
            return Err(format!(
                "timed out waiting for its events; got {} for pid {pid}: {}{}",
                of_pid(&evs, pid).len(),
                compact(&of_pid(&evs, pid)),
                exited.unwrap_or_default()
            ));
        }
    };
    if evs.len() != want.len() {
        return Err(format!(
            "expected {} events, agent printed {}: {}",
            want.len(),
            evs.len(),
            compact(&evs)
        ));
    }
    for (i, (e, w)) in evs.iter().zip(want).enumerate() {
        matches(e, w).map_err(|m| format!("event {i} ({}): {m}", e["event"]))?;
    }
    Ok(())
}

fn compact(evs: &[Value]) -> String {
    evs.iter().map(|e| format!("{}:{}:{}", e["event"], e["ret"], e["stage"])).collect::<Vec<_>>().join(", ")
}

struct Outcome {
    name: String,
    result: &'static str,
    detail: String,
}

pub fn run(agent_bin: &Path, mode: &str, json_out: bool, only: &[String], timeout: u64) -> ExitCode {
    let timeout = Duration::from_secs(timeout);
    let wanted = |n: &str| only.is_empty() || only.iter().any(|o| o == n);
    let mut outcomes = Vec::new();
    // --compat-syscalls: the compat_calls scenario's 32-bit callers are seen only with it.
    let mode_arg = ["--mode", mode, "--compat-syscalls"];
    match Agent::start(agent_bin, &mode_arg, timeout) {
        Err(e) => {
            // A mode this kernel cannot do is a skip, said with the agent's reason.
            let result = if e.contains("not possible here") { "skip" } else { "fail" };
            for s in scenarios::ALL.iter().filter(|s| wanted(s.name)) {
                outcomes.push(Outcome { name: s.name.into(), result, detail: e.clone() });
            }
        }
        Ok(agent) => {
            // A serve beside the trace agent checks the risky-getfd counter around the risky
            // scenarios and the benign one (risky.rs), without running them twice.
            let mut watch =
                wanted("risky_counter").then(|| crate::risky::CounterWatch::start(agent_bin, mode, timeout));
            let mut watched = None;
            let mut closes = None;
            for s in scenarios::ALL.iter().filter(|s| wanted(s.name)) {
                let benign = s.name == "getfd_benign";
                if benign && let Some(Ok(w)) = watch.as_mut() {
                    w.before_benign();
                }
                let r = run_scenario(s.name, None).and_then(|(pid, mut want)| {
                    want.iter_mut().for_each(|w| expect_mode(w, mode));
                    check_exact(&agent, pid, &want, timeout)
                });
                if benign {
                    if let Some(Ok(w)) = watch.as_mut() {
                        w.after_benign();
                        // The same serve checks close tracking (one serve start less in slow guests).
                        if wanted("close_tracking") {
                            closes = Some(crate::closes::run(w.addr(), mode, timeout));
                        }
                    }
                    // Stop serve now: a second agent slows the rest of the suite in slow guests.
                    watched = watch.take().map(|w| w.and_then(|w| w.finish()));
                }
                outcomes.push(outcome(s.name, r));
            }
            if wanted("filter_comm_failures_only") {
                outcomes.push(outcome("filter_comm_failures_only", filter_comm(agent_bin, mode, timeout)));
            }
            if wanted("filter_pid") {
                outcomes.push(outcome("filter_pid", filter_pid(agent_bin, mode, timeout)));
            }
            if let Some(r) = watched.or_else(|| watch.map(|w| w.and_then(|w| w.finish()))) {
                outcomes.push(outcome("risky_counter", r));
            }
            if wanted("close_tracking") {
                let r = closes.unwrap_or_else(|| crate::closes::check(agent_bin, mode, timeout));
                outcomes.push(outcome("close_tracking", r));
            }
            if wanted("agent_stops_cleanly") {
                outcomes.push(outcome("agent_stops_cleanly", agent.stop()));
            } else {
                let _ = agent.stop();
            }
        }
    }
    report(&outcomes, mode, json_out)
}

fn outcome(name: &str, r: Result<(), String>) -> Outcome {
    match r {
        Ok(()) => Outcome { name: name.into(), result: "pass", detail: String::new() },
        Err(e) => Outcome { name: name.into(), result: "fail", detail: e },
    }
}

/// What a forced mode adds to a clone's expected event: who observed it, and (function
/// probes only) whether the failure came after the pidfd existed — true exactly for the
/// stages that come after the creation step.
fn expect_mode(want: &mut Value, mode: &str) {
    let (observed, function_probe) = match mode {
        "fentry" => ("fexit", true),
        "kprobe" => ("kprobe", true),
        "tracepoint" => ("tracepoint", false),
        _ => return,
    };
    // A successful pidfd_open passes the creation step too: anon_inode_getfd("[pidfd]")
    // before 6.9, pidfs_alloc_file after; the function probe must have seen it.
    if want["event"] == "pidfd_open" && want["errno"].is_null() && want.get("errno").is_some() {
        want["mode"] = json!(observed);
        return;
    }
    if !matches!(want["event"].as_str(), Some("clone" | "clone3")) {
        return;
    }
    let stage = want["stage"].as_str().map(str::to_owned);
    // Legacy clone's CLONE_PIDFD|CLONE_PARENT_SETTID is refused in kernel_clone, before
    // copy_process: only the tracepoints see it. Other flag refusals happen inside. Calls
    // refused before they ran (denied) or whose arguments could not be copied (args) never
    // reach copy_process either.
    if !matches!(stage.as_deref(), Some("flags" | "args" | "denied")) {
        want["mode"] = json!(observed);
    }
    want["pidfd_allocated"] = match (function_probe, stage) {
        (true, Some(s)) => json!(matches!(s.as_str(), "user_memory" | "pids_cgroup")),
        _ => Value::Null,
    };
}

/// `--comm A --failures-only`: of two processes each doing a success and a failure, only A's
/// failures are printed.
fn filter_comm(bin: &Path, mode: &str, timeout: Duration) -> Result<(), String> {
    let agent = Agent::start(bin, &["--mode", mode, "--comm", "wl-filter-a", "--failures-only"], timeout)?;
    let (a1, _) = run_scenario("mix", Some("wl-filter-a"))?;
    let (b, _) = run_scenario("mix", Some("wl-filter-b"))?;
    let (a2, _) = run_scenario("einval", Some("wl-filter-a"))?;
    let evs = agent
        .wait_for(timeout, |evs| evs.iter().any(|e| e["pid"].as_u64() == Some(a2)))
        .map_err(|evs| format!("timed out; events: {}", compact(&evs)))?;
    agent.stop()?;
    let pids: Vec<u64> = evs.iter().filter_map(|e| e["pid"].as_u64()).collect();
    if pids != [a1, a2] || evs.iter().any(|e| e["errno"] != "EINVAL" || e["comm"] != "wl-filter-a") {
        return Err(format!(
            "want exactly the EINVALs of {a1} and {a2} (not {b}), got {}: {}",
            pids.len(),
            compact(&evs)
        ));
    }
    Ok(())
}

/// `--pid P`: another process's events are not printed, P's are.
fn filter_pid(bin: &Path, mode: &str, timeout: Duration) -> Result<(), String> {
    let me = std::process::id();
    let agent = Agent::start(bin, &["--mode", mode, "--pid", &me.to_string()], timeout)?;
    let (other, _) = run_scenario("mix", None)?;
    let fd = crate::sys::pidfd_open(me as i32, 0);
    let evs = agent
        .wait_for(timeout, |evs| evs.iter().any(|e| e["pid"].as_u64() == Some(me as u64)))
        .map_err(|evs| format!("timed out; events: {}", compact(&evs)))?;
    unsafe { libc::close(fd as i32) };
    agent.stop()?;
    if evs.len() != 1 || evs[0]["ret"] != fd {
        return Err(format!("want only our pidfd_open (fd {fd}), not pid {other}'s; got {}", compact(&evs)));
    }
    Ok(())
}

fn report(outcomes: &[Outcome], mode: &str, json_out: bool) -> ExitCode {
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for o in outcomes {
        match o.result {
            "pass" => pass += 1,
            "skip" => skip += 1,
            _ => fail += 1,
        }
        if json_out {
            println!("{}", json!({"scenario": o.name, "mode": mode, "result": o.result, "detail": o.detail}));
        } else {
            println!("{:<28} {:<5} {}", o.name, o.result, o.detail);
        }
    }
    eprintln!("suite (mode {mode}): {pass} passed, {fail} failed, {skip} skipped");
    if fail == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

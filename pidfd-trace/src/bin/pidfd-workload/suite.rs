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

    /// Waits until an event for which `done` holds has arrived, looking at each event once
    /// (a suite prints thousands: a scan of all of them per arriving line starved the reader
    /// thread); returns the events `keep` selects, in order. Gives up at the timeout or as
    /// soon as the agent has exited: the error has the events kept so far, then the agent's
    /// warnings (lost records, refused programs) or, if it exited, its stderr.
    fn wait_for(
        &self,
        timeout: Duration,
        keep: impl Fn(&Value) -> bool,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>, (Vec<Value>, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.events;
        let mut evs = lock.lock().unwrap();
        let (mut kept, mut next, mut finished) = (Vec::new(), 0, false);
        loop {
            for e in &evs[next..] {
                if keep(e) {
                    finished |= done(e);
                    kept.push(e.clone());
                }
            }
            next = evs.len();
            if finished {
                return Ok(kept);
            }
            let now = Instant::now();
            if now >= deadline || self.exited() {
                drop(evs);
                return Err((kept, self.why()));
            }
            evs = cv.wait_timeout(evs, (deadline - now).min(Duration::from_millis(200))).unwrap().0;
        }
    }

    /// What the agent said that explains missing events: its whole stderr if it exited,
    /// else its warnings and errors (at most the last 5); empty if none.
    fn why(&self) -> String {
        let lines = self.stderr.0.lock().unwrap();
        if lines.iter().any(|l| l == "<eof>") {
            return format!("; the agent exited: {}", lines.join(" | "));
        }
        let warn: Vec<&String> = lines.iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        match warn.len() {
            0 => String::new(),
            n => format!(
                "; the agent warned: {}",
                warn[n.saturating_sub(5)..].iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" | ")
            ),
        }
    }

    /// Risky pidfd_getfd events of processes not in `ours`, per reason, counted as the kernel
    /// counts `pidfd_trace_getfd_risky_total` (the call succeeded or was refused EPERM; once per
    /// reason).
    fn foreign_risky(&self, ours: &[u64]) -> Vec<(String, u64)> {
        let mut n: Vec<(String, u64)> = Vec::new();
        for e in self.events.0.lock().unwrap().iter() {
            let counted = e["ret"].as_i64().is_some_and(|r| r >= 0) || e["errno"] == "EPERM";
            if e["event"] != "pidfd_getfd" || !counted || e["pid"].as_u64().is_none_or(|p| ours.contains(&p))
            {
                continue;
            }
            for r in e["risk"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                match n.iter_mut().find(|(k, _)| k == r) {
                    Some((_, c)) => *c += 1,
                    None => n.push((r.to_string(), 1)),
                }
            }
        }
        n
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

fn of_pid(e: &Value, pid: u64) -> bool {
    e["pid"].as_u64() == Some(pid)
}

/// Checks that the events of `pid` are exactly `want`, in order, once the last one arrived.
fn check_exact(agent: &Agent, pid: u64, want: &[Value], timeout: Duration) -> Result<(), String> {
    let last = want.last().ok_or("scenario expects no events at all")?.clone();
    let evs = agent.wait_for(timeout, |e| of_pid(e, pid), |e| matches(e, &last).is_ok()).map_err(
        |(evs, why)| {
            format!(
                "timed out waiting for its events; got {} of {} for pid {pid}: {}{why}",
                evs.len(),
                want.len(),
                compact(&evs)
            )
        },
    )?;
    if evs.len() != want.len() {
        return Err(format!(
            "expected {} events, agent printed {}: {}{}",
            want.len(),
            evs.len(),
            compact(&evs),
            agent.why()
        ));
    }
    for (i, (e, w)) in evs.iter().zip(want).enumerate() {
        matches(e, w).map_err(|m| format!("event {i} ({}): {m}", e["event"]))?;
    }
    Ok(())
}

/// `event:ret:stage` of each event; of a long list the first 12 and the last 3 (a failure
/// detail must stay readable in a CI log).
fn compact(evs: &[Value]) -> String {
    let one = |e: &Value| format!("{}:{}:{}", e["event"], e["ret"], e["stage"]);
    if evs.len() <= 16 {
        return evs.iter().map(one).collect::<Vec<_>>().join(", ");
    }
    let head: Vec<String> = evs[..12].iter().map(one).collect();
    let tail: Vec<String> = evs[evs.len() - 3..].iter().map(one).collect();
    format!("{}, … {} more …, {}", head.join(", "), evs.len() - 15, tail.join(", "))
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
            // Scenario processes run so far: the others' risky getfds are taken out of the
            // host-wide counter the watch reads.
            let ours = std::cell::RefCell::new(Vec::new());
            let foreign = || agent.foreign_risky(&ours.borrow());
            let mut watch = wanted("risky_counter")
                .then(|| crate::risky::CounterWatch::start(agent_bin, mode, timeout, &foreign));
            let mut watched = None;
            let mut closes = None;
            for s in scenarios::ALL.iter().filter(|s| wanted(s.name)) {
                let benign = s.name == "getfd_benign";
                if benign && let Some(Ok(w)) = watch.as_mut() {
                    w.before_benign(&foreign);
                }
                let mut absent = None;
                let r = run_scenario(s.name, None).and_then(|(pid, mut want)| {
                    ours.borrow_mut().push(pid);
                    absent = take_not_in_kernel(&mut want);
                    // Events only function probes see (`"function_probes_only": true`) are
                    // expected in fentry/kprobe mode and must be absent in tracepoint mode.
                    want.retain_mut(|w| {
                        let fn_only = w.as_object_mut().and_then(|o| o.remove("function_probes_only"));
                        fn_only != Some(Value::Bool(true)) || mode != "tracepoint"
                    });
                    want.iter_mut().for_each(|w| expect_mode(w, mode));
                    check_exact(&agent, pid, &want, timeout)
                });
                if benign {
                    if let Some(Ok(w)) = watch.as_mut() {
                        w.after_benign(&foreign);
                        // The same serve checks close tracking (one serve start less in slow guests).
                        if wanted("close_tracking") {
                            closes = Some(crate::closes::run(w.addr(), mode, timeout));
                        }
                    }
                    // Stop serve now: a second agent slows the rest of the suite in slow guests.
                    watched = watch.take().map(|w| w.and_then(|w| w.finish()));
                }
                outcomes.push(match (r, absent) {
                    // The events it did expect arrived; what it is about is not in this kernel.
                    (Ok(()), Some(why)) => Outcome { name: s.name.into(), result: "skip", detail: why },
                    (r, _) => outcome(s.name, r),
                });
            }
            if wanted("filter_comm_failures_only") {
                outcomes.push(outcome("filter_comm_failures_only", filter_comm(agent_bin, mode, timeout)));
            }
            if wanted("filter_pid") {
                outcomes.push(outcome("filter_pid", filter_pid(agent_bin, mode, timeout)));
            }
            if wanted("coredump_helper") {
                outcomes.push(match coredump_helper(&agent, mode, timeout) {
                    Ok(Some(why)) => Outcome { name: "coredump_helper".into(), result: "skip", detail: why },
                    Ok(None) => outcome("coredump_helper", Ok(())),
                    Err(e) => outcome("coredump_helper", Err(e)),
                });
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

/// Takes a scenario's `{"not_in_kernel": why}` marker out of its expected events: the path it
/// exercises does not exist in this kernel (the rest of its events are still checked).
fn take_not_in_kernel(want: &mut Vec<Value>) -> Option<String> {
    let i = want.iter().position(|w| w.get("not_in_kernel").is_some())?;
    Some(want.remove(i)["not_in_kernel"].as_str().unwrap_or("not in this kernel").to_string())
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
    // A clone refused before copy_process (clone3's own flag check, e.g. flags this kernel
    // does not know): only the tracepoints see it, and no pidfd ever existed.
    if let Some(obj) = want.as_object_mut()
        && obj.remove("before_copy_process") == Some(Value::Bool(true))
    {
        obj.insert("mode".into(), json!("tracepoint"));
        obj.insert("pidfd_allocated".into(), if function_probe { json!(false) } else { Value::Null });
        return;
    }
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
        .wait_for(timeout, |_| true, |e| of_pid(e, a2))
        .map_err(|(evs, why)| format!("timed out; events: {}{why}", compact(&evs)))?;
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
        .wait_for(timeout, |_| true, |e| of_pid(e, me.into()))
        .map_err(|(evs, why)| format!("timed out; events: {}{why}", compact(&evs)))?;
    unsafe { libc::close(fd as i32) };
    agent.stop()?;
    if evs.len() != 1 || evs[0]["ret"] != fd {
        return Err(format!("want only our pidfd_open (fd {fd}), not pid {other}'s; got {}", compact(&evs)));
    }
    Ok(())
}

/// The coredump helper's pidfd (README "Every way a pidfd is born"): in function modes the
/// `coredump` event names the helper as the caller, the crashed child as `target_pid`, fd 3
/// and the inode the helper found there. `Ok(Some(why))`: skipped (outside a VM guest, in
/// tracepoint mode, or a kernel that gives the helper no pidfd).
fn coredump_helper(agent: &Agent, mode: &str, timeout: Duration) -> Result<Option<String>, String> {
    if std::env::var_os("PIDFD_WORKLOAD_GUEST").is_none() {
        return Ok(Some("changes the host-wide core_pattern: runs in the VM matrix guests only".into()));
    }
    if mode == "tracepoint" {
        return Ok(Some("tracepoint mode declares coredump not visible (check)".into()));
    }
    let (child, found) = crate::coredump::crash(timeout)?;
    // fdinfo's `Pid:` line (every pidfd has it; `pidfd_ino` is null on anon-inode kernels).
    if found["target_pid"].is_null() {
        return Ok(Some(format!("not in this kernel: the helper found no pidfd at fd 3 ({found})")));
    }
    let helper = found["pid"].as_u64().ok_or("helper report without pid")?;
    let evs = agent.wait_for(timeout, |e| e["event"] == "coredump", |e| e["target_pid"] == child).map_err(
        |(evs, why)| format!("no coredump event for the crash of {child}: {}{why}", compact(&evs)),
    )?;
    let e = evs.last().expect("done on an event");
    let observed = if mode == "kprobe" { "kprobe" } else { "fexit" };
    let want = json!({"event": "coredump", "pid": helper, "ret": 0, "errno": null, "pidfd": 3,
                      "target_pid": child, "pidfd_ino": found["pidfd_ino"], "mode": observed});
    matches(e, &want).map_err(|m| format!("coredump event: {m}: {e}"))?;
    if found["target_pid"] != child {
        return Err(format!(
            "the helper's fd 3 names {} in fdinfo, not the crashed {child}",
            found["target_pid"]
        ));
    }
    Ok(None)
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

//! `cargo xtask e2e` (and a step of `cargo xtask test`): a real Prometheus scrapes a real
//! `pidfd-trace serve` while the in-tree workload runs every scenario; then every PromQL
//! query of every dashboard panel must return data through Prometheus's HTTP API, the
//! counters must equal what the workload did, and `promtool check metrics` must pass.
//!
//! The same Prometheus evaluates the alert rules of `deploy/prometheus/pidfd-trace.rules.yml`
//! (a copy whose `for:` durations are cut to seconds; every expression as shipped) and sends
//! to a real Alertmanager (Debian `prometheus-alertmanager`, on loopback, its own storage,
//! no cluster). The workload makes pidfd creations fail with EMFILE at `fd_alloc` often
//! enough to cross the rules' thresholds, and the firing alerts must arrive in Alertmanager
//! (`/api/v2/alerts`) with their labels and annotations.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::util;

/// Extra clone_emfile runs (one EMFILE each) so that the failure alerts fire.
const FAILURE_RUNS: usize = 20;

/// Grafana's own variables, given the values a person looking at the last few minutes
/// would get with a 1 s scrape interval.
const GRAFANA_VARS: &[(&str, &str)] =
    &[("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "5m")];

/// The rules file as shipped (the fleet tooling turns it into a PrometheusRule).
pub const RULES: &str = "deploy/prometheus/pidfd-trace.rules.yml";

/// `for:` in the test copy of the rules: long enough to see an alert pending first.
const TEST_FOR: &str = "2s";

pub fn run(root: &Path) -> Result<()> {
    util::ensure_apt(&["prometheus", "prometheus-alertmanager"])?;
    let bins = crate::build(root)?;
    let dir = root.join("target/e2e").join(std::process::id().to_string());
    std::fs::create_dir_all(&dir)?;
    let result = E2e::new(root, &bins, &dir).and_then(|mut e| {
        let r = e.run();
        e.stop(r.is_ok()).and(r)
    });
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("e2e: logs kept in {}", dir.display());
    }
    result
}

/// A child process whose stderr lines are collected.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let err = child.stderr.take().expect("piped");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Ok(Self { child, lines })
    }

    fn wait_line(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return Ok(l.clone());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("{what}: exited with {st}: {}", self.lines.lock().unwrap().join(" | "));
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: timed out: {}",
                self.lines.lock().unwrap().join(" | ")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status (SIGKILL after 15 s).
    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("did not exit within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct E2e<'a> {
    bins: &'a crate::Binaries,
    root: PathBuf,
    dir: PathBuf,
    agent: Proc,
    agent_addr: String,
    prometheus: Proc,
    prom_addr: String,
    alertmanager: Proc,
    am_addr: String,
    cgroup: Option<PathBuf>,
}

/// The events one series of the contract metrics should have counted.
type Counts = BTreeMap<String, u64>;

impl<'a> E2e<'a> {
    fn new(root: &Path, bins: &'a crate::Binaries, dir: &Path) -> Result<Self> {
        let events = dir.join("events.jsonl");
        println!("e2e: starting pidfd-trace serve on a free loopback port");
        let mut agent = Proc::spawn(
            Command::new(&bins.agent)
                .args([
                    "serve",
                    "--web.listen-address",
                    "127.0.0.1:0",
                    "--log-format",
                    "json",
                    // The compat_calls scenario's 32-bit callers are counted only with it.
                    "--compat-syscalls",
                    "--events-log",
                ])
                .arg(&events)
                .stdout(Stdio::null()),
        )?;
        agent.wait_line("pidfd-trace serve", Duration::from_secs(60), |l| l.contains("attached"))?;
        let serving = agent
            .wait_line("pidfd-trace serve", Duration::from_secs(10), |l| l.contains("serving metrics on"))?;
        let msg: Value = serde_json::from_str(&serving).context("--log-format json gives JSON lines")?;
        let url = msg["msg"].as_str().unwrap_or_default();
        let agent_addr = url
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .with_context(|| format!("no address in {serving}"))?
            .to_string();

        let am_addr = format!("127.0.0.1:{}", free_port()?);
        let am_config = dir.join("alertmanager.yml");
        // Every alert to a receiver that sends nothing: the test reads them through the API.
        std::fs::write(
            &am_config,
            "route:\n  receiver: test\n  group_by: [alertname, instance]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: test\n",
        )?;
        println!("e2e: starting alertmanager on {am_addr}");
        let am_log = std::fs::File::create(dir.join("alertmanager.log"))?;
        let alertmanager = Proc::spawn(
            Command::new("prometheus-alertmanager")
                .arg(format!("--config.file={}", am_config.display()))
                .arg(format!("--storage.path={}", dir.join("alertmanager").display()))
                .arg(format!("--web.listen-address={am_addr}"))
                // No gossip: a lone instance on loopback.
                .arg("--cluster.listen-address=")
                .stdout(am_log),
        )?;
        let rules = dir.join("pidfd-trace.rules.yml");
        std::fs::write(&rules, test_rules(&std::fs::read_to_string(root.join(RULES))?)?)?;

        let prom_port = free_port()?;
        let prom_addr = format!("127.0.0.1:{prom_port}");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am_addr}']\n\
                 scrape_configs:\n  - job_name: pidfd-trace\n    static_configs:\n      - targets: ['{agent_addr}']\n",
                rules.display()
            ),
        )?;
        let prom_log = std::fs::File::create(dir.join("prometheus.log"))?;
        println!("e2e: starting prometheus on {prom_addr}, scraping {agent_addr} every second");
        let prometheus = Proc::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
                .arg(format!("--web.listen-address={prom_addr}"))
                // Alerts reach Alertmanager within a second of firing.
                .arg("--rules.alert.resend-delay=1s")
                .stdout(prom_log),
        )?;
        let mut e = Self {
            bins,
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
            agent,
            agent_addr,
            prometheus,
            prom_addr,
            alertmanager,
            am_addr,
            cgroup: None,
        };
        e.wait_ready()?;
        Ok(e)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.prometheus.child.try_wait()? {
                bail!("prometheus exited with {st}: {}", self.prometheus.lines.lock().unwrap().join(" | "));
            }
            if let Some(st) = self.alertmanager.child.try_wait()? {
                bail!(
                    "alertmanager exited with {st}: {}",
                    self.alertmanager.lines.lock().unwrap().join(" | ")
                );
            }
            if http_get(&self.prom_addr, "/-/ready").is_ok_and(|(code, _)| code == 200)
                && http_get(&self.am_addr, "/-/ready").is_ok_and(|(code, _)| code == 200)
                && self.query("up").is_ok_and(|r| r.iter().any(|s| s["value"][1] == "1"))
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "prometheus or alertmanager not ready, or prometheus not scraping, within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn run(&mut self) -> Result<()> {
        // promtool on the very first exposition (nothing counted yet) and after the workload.
        self.promtool_check("before the workload")?;
        let container = self.make_container_cgroup()?;
        // Events only function probes see (`"function_probes_only": true`) are counted only
        // when the agent attached a function hook (its `attached` line): never on a host
        // that refuses fentry and kprobes.
        let lines = self.agent.lines.lock().unwrap().join(" | ");
        let function_probes = lines.contains("=fexit") || lines.contains("=kprobe");
        let count_expected =
            |events: &[Value], into: &mut Counts| count_expected(events, function_probes, into);
        let mut expected = Counts::new();
        let mut workload_pids = Vec::new();
        // Two rounds: the first creates every series, the second moves them, so the rate()
        // and increase() panels show real activity, not only series being born.
        for round in 1..=2 {
            println!("e2e: workload round {round}");
            for name in self.scenarios()? {
                let (pid, expect) = self.scenario(&name, None)?;
                workload_pids.push(pid);
                count_expected(&expect, &mut expected);
            }
            let (pid, expect) = self.scenario("pidfd_open_ok", Some(&container))?;
            workload_pids.push(pid);
            count_expected(&expect, &mut expected);
            std::thread::sleep(Duration::from_secs(3));
        }
        // Enough EMFILE failures at fd_alloc to cross the creation-failure threshold
        // (0.05/s over 5 minutes: more than 15), on top of the rounds' two.
        println!("e2e: {FAILURE_RUNS} more clone_emfile runs, for the alerts");
        for _ in 0..FAILURE_RUNS {
            let (pid, expect) = self.scenario("clone_emfile", None)?;
            workload_pids.push(pid);
            count_expected(&expect, &mut expected);
        }
        let got = self.wait_counters(&expected)?;
        self.check_counters(&expected, &got, &workload_pids)?;
        self.check_alerts()?;
        self.check_container_events(&container)?;
        self.promtool_check("after the workload")?;
        self.check_dashboards()?;
        Ok(())
    }

    fn scenarios(&self) -> Result<Vec<String>> {
        let out = util::output(Command::new(&self.bins.workload).arg("list"))?;
        Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
    }

    /// Runs one scenario (in `cgroup` if given); returns its pid and expected events.
    fn scenario(&self, name: &str, cgroup: Option<&Path>) -> Result<(u64, Vec<Value>)> {
        let mut cmd = match cgroup {
            // Join the cgroup first, then become the workload: its every call is made there.
            Some(cg) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("echo $$ > \"$1\"/cgroup.procs && exec \"$2\" scenario \"$3\"")
                    .arg("sh")
                    .arg(cg)
                    .arg(&self.bins.workload)
                    .arg(name);
                c
            }
            None => {
                let mut c = Command::new(&self.bins.workload);
                c.args(["scenario", name]);
                c
            }
        };
        let out = util::output(&mut cmd)?;
        let v: Value =
            serde_json::from_str(&out).with_context(|| format!("scenario {name} printed {out}"))?;
        if let Some(e) = v.get("error") {
            bail!("scenario {name} could not produce its outcome: {e}");
        }
        let pid = v["pid"].as_u64().context("scenario report without pid")?;
        Ok((pid, v["expect"].as_array().cloned().unwrap_or_default()))
    }

    /// A cgroup2 directory shaped like a docker container's, so the container panels have
    /// a container to show.
    fn make_container_cgroup(&mut self) -> Result<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mounts: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.split(" - ").nth(1).is_some_and(|p| p.starts_with("cgroup2 ")))
            .filter_map(|l| l.split(' ').nth(4))
            .collect();
        let mount = mounts.iter().find(|m| **m == "/sys/fs/cgroup").or(mounts.first()).context(
            "no cgroup2 mount: the container panels need one (mount -t cgroup2 none /sys/fs/cgroup/unified)",
        )?;
        let parent = Path::new(mount).join(format!("pidfd-trace-e2e-{}", std::process::id()));
        let id = fake_container_id(u64::from(std::process::id()));
        let dir = parent.join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        self.cgroup = Some(parent);
        Ok(dir)
    }

    /// Waits until Prometheus has scraped counts at least as large as the workload's and the
    /// agent has refreshed once more, then returns every contract series Prometheus holds.
    fn wait_counters(&self, expected: &Counts) -> Result<Counts> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.contract_series()?;
            let short: Vec<&String> = expected
                .iter()
                .filter(|(k, v)| got.get(*k).copied().unwrap_or(0) < **v)
                .map(|(k, _)| k)
                .collect();
            if short.is_empty() {
                // Two more scrapes, so nothing still in flight is missed.
                std::thread::sleep(Duration::from_secs(3));
                return self.contract_series();
            }
            ensure!(
                Instant::now() < deadline,
                "counters never reached the workload's counts: {short:?}; have {got:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn contract_series(&self) -> Result<Counts> {
        let mut out = Counts::new();
        let q = r#"{__name__=~"pidfd_trace_(pidfds_created|pidfd_create_failures|getfd|getfd_failures|signals|signal_failures|pidfd_uses|events|events_lost)_total"}"#;
        for s in self.query(q)? {
            out.insert(
                series_key(&s["metric"]),
                s["value"][1].as_str().unwrap_or("0").parse::<f64>()? as u64,
            );
        }
        Ok(out)
    }

    /// Every counter equals what the workload did plus what other processes did meanwhile
    /// (read from the events log). Exact while no record was lost.
    fn check_counters(&self, expected: &Counts, got: &Counts, workload_pids: &[u64]) -> Result<()> {
        let log = std::fs::read_to_string(self.dir.join("events.jsonl"))?;
        let events: Vec<Value> = log.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        let foreign: Vec<Value> = events
            .iter()
            .filter(|e| !workload_pids.contains(&e["pid"].as_u64().unwrap_or(0)))
            .cloned()
            .collect();
        let mut others = Counts::new();
        count_expected(&foreign, true, &mut others);
        let lost = got.get("pidfd_trace_events_lost_total").copied().unwrap_or(0);
        println!(
            "e2e: {} events logged ({} by the workload's {} processes, {} by other processes), {lost} lost",
            events.len(),
            events.len() - foreign.len(),
            workload_pids.len(),
            foreign.len()
        );
        let mut keys: Vec<&String> = expected.keys().chain(others.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut bad = Vec::new();
        for k in keys {
            let (want, other, have) = (
                expected.get(k).copied().unwrap_or(0),
                others.get(k).copied().unwrap_or(0),
                got.get(k).copied().unwrap_or(0),
            );
            // Other processes keep running between the last scrape and reading the log, so a
            // series they touch is bounded, not pinned; the workload's own series are exact.
            let ok = if other == 0 && lost == 0 {
                have == want
            } else {
                have >= want && have <= want + other + lost
            };
            println!(
                "  {:<6} {k} = {have} (workload {want}{})",
                if ok { "ok" } else { "WRONG" },
                if other > 0 { format!(", others {other}") } else { String::new() }
            );
            if !ok {
                bad.push(k.clone());
            }
        }
        ensure!(bad.is_empty(), "counters differ from what happened: {bad:?}");
        Ok(())
    }

    fn check_container_events(&self, container: &Path) -> Result<()> {
        let id = container
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("docker-"))
            .and_then(|n| n.strip_suffix(".scope"))
            .context("container dir name")?;
        let log = std::fs::read_to_string(self.dir.join("events.jsonl"))?;
        let ev: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["container_id"] == id)
            .collect();
        ensure!(
            ev.len() >= 4,
            "events log: expected the container's 2×2 pidfd_open events, found {}",
            ev.len()
        );
        let path = ev[0]["cgroup"].as_str().unwrap_or_default();
        ensure!(
            path.ends_with(&format!("/docker-{id}.scope")),
            "cgroup path {path} does not end in the container's scope"
        );
        println!("e2e: {} events attributed to container {}… (cgroup {path})", ev.len(), &id[..12]);
        Ok(())
    }

    fn promtool_check(&self, when: &str) -> Result<()> {
        let (code, body) = http_get(&self.agent_addr, "/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("promtool (Debian package prometheus)")?;
        child.stdin.take().expect("piped").write_all(body.as_bytes())?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "promtool check metrics failed {when}: {text}");
        println!("e2e: promtool check metrics {when}: ok ({} lines of exposition)", body.lines().count());
        if when.starts_with("after") {
            println!("e2e: /metrics after the workload (histogram buckets left out):");
            for l in body.lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket{")) {
                println!("  {l}");
            }
        }
        Ok(())
    }

    /// Every query of every panel of every dashboard, and every variable, must return data.
    fn check_dashboards(&self) -> Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.root.join("dashboards"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        ensure!(!files.is_empty(), "no dashboards in dashboards/");
        let instance = self.agent_addr.clone();
        let (mut total, mut empty) = (0, Vec::new());
        for f in files {
            let dash: Value = serde_json::from_str(&std::fs::read_to_string(&f)?)
                .with_context(|| format!("{} is not JSON", f.display()))?;
            println!("e2e: dashboard {} ({})", f.file_name().unwrap().to_string_lossy(), dash["title"]);
            let mut queries = Vec::new();
            for v in dash["templating"]["list"].as_array().into_iter().flatten() {
                if let Some(q) =
                    v["query"]["query"].as_str().or(v["query"].as_str()).filter(|_| v["type"] == "query")
                {
                    queries.push((
                        format!("variable ${}", v["name"].as_str().unwrap_or("?")),
                        label_values_to_promql(q)?,
                    ));
                }
            }
            collect_panel_queries(&dash["panels"], &mut queries);
            for (title, expr) in queries {
                let q = substitute(&expr, &instance);
                total += 1;
                let result = self.query(&q).with_context(|| format!("{title}: {q}"))?;
                println!("  {title}\n    {q}\n    => {}", summarize(&result));
                if result.is_empty() {
                    empty.push(format!("{title}: {q}"));
                }
            }
        }
        ensure!(
            empty.is_empty(),
            "{} of {total} dashboard queries returned no data: {empty:#?}",
            empty.len()
        );
        println!("e2e: all {total} dashboard queries returned data");
        Ok(())
    }

    /// Every rule evaluates without error; the failure alerts for this agent fire in
    /// Prometheus and arrive in Alertmanager with their labels and annotations; the alerts
    /// that must not fire here (records lost, fd table full) do not.
    fn check_alerts(&self) -> Result<()> {
        let (code, body) = http_get(&self.prom_addr, "/api/v1/rules")?;
        ensure!(code == 200, "/api/v1/rules answered {code}: {body}");
        let v: Value = serde_json::from_str(&body)?;
        let mut rules = 0;
        for g in v["data"]["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                rules += 1;
                ensure!(r["health"] != "err", "rule {} fails to evaluate: {}", r["name"], r["lastError"]);
            }
        }
        ensure!(rules >= 10, "prometheus loaded {rules} rules from {RULES}");
        let want = [("PidfdTraceCreationFailures", "warning"), ("PidfdTraceFdLimitReached", "warning")];
        let deadline = Instant::now() + Duration::from_secs(60);
        let received = loop {
            let (code, body) = http_get(&self.am_addr, "/api/v2/alerts")?;
            ensure!(code == 200, "alertmanager /api/v2/alerts answered {code}: {body}");
            let alerts: Vec<Value> = serde_json::from_str(&body)?;
            let ours: Vec<Value> =
                alerts.into_iter().filter(|a| a["labels"]["instance"] == self.agent_addr.as_str()).collect();
            let found: Vec<&Value> = want
                .iter()
                .filter_map(|(name, _)| {
                    ours.iter().find(|a| {
                        a["labels"]["alertname"] == *name
                            && a["labels"]["source"] == "clone"
                            && a["status"]["state"] == "active"
                    })
                })
                .collect();
            if found.len() == want.len() {
                break ours;
            }
            ensure!(
                Instant::now() < deadline,
                "alertmanager did not receive {want:?} for {} within 60 s; it has {ours:#?}; prometheus ALERTS: {:?}",
                self.agent_addr,
                self.query("ALERTS")
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        for (name, severity) in want {
            let a = received.iter().find(|a| a["labels"]["alertname"] == name).expect("found above");
            println!("e2e: alertmanager received {name}:\n{}", serde_json::to_string_pretty(a)?);
            ensure!(a["labels"]["severity"] == severity, "{name}: severity {}", a["labels"]["severity"]);
            ensure!(a["labels"]["job"] == "pidfd-trace", "{name}: job {}", a["labels"]["job"]);
            let runbook = a["annotations"]["runbook_url"].as_str().unwrap_or_default();
            let anchor = format!("#{}", name.to_ascii_lowercase());
            ensure!(runbook.ends_with(&anchor), "{name}: runbook_url {runbook} is not its runbook section");
            for key in ["summary", "description"] {
                let text = a["annotations"][key].as_str().unwrap_or_default();
                ensure!(
                    text.contains(&self.agent_addr) && !text.contains("{{"),
                    "{name}: {key} not rendered for this instance: {text}"
                );
            }
        }
        let stage = received
            .iter()
            .find(|a| a["labels"]["alertname"] == "PidfdTraceCreationFailures")
            .map(|a| a["labels"]["stage"].clone());
        ensure!(stage == Some(Value::from("fd_alloc")), "creation failures alert for stage {stage:?}");
        for quiet in ["PidfdTraceRecordsLost", "PidfdTraceSystemFileTableFull", "PidfdTraceAgentDown"] {
            let lost = self.query("pidfd_trace_events_lost_total")?;
            let any_lost = lost.iter().any(|s| s["value"][1] != "0");
            if quiet == "PidfdTraceRecordsLost" && any_lost {
                continue;
            }
            ensure!(
                !received.iter().any(|a| a["labels"]["alertname"] == quiet),
                "{quiet} fired although nothing here should make it fire"
            );
        }
        let names: Vec<String> = received
            .iter()
            .map(|a| {
                format!(
                    "{}{{{}}}",
                    a["labels"]["alertname"].as_str().unwrap_or("?"),
                    ["source", "stage", "hook"]
                        .iter()
                        .filter_map(|k| a["labels"][*k].as_str().map(|v| format!("{k}={v}")))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
            .collect();
        println!("e2e: {rules} rules evaluate; alertmanager holds for this agent: {}", names.join(" "));
        Ok(())
    }

    fn query(&self, q: &str) -> Result<Vec<Value>> {
        let (code, body) = http_get(&self.prom_addr, &format!("/api/v1/query?query={}", urlencode(q)))?;
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("prometheus answered {code}: {body}"))?;
        ensure!(v["status"] == "success", "prometheus: {}", v["error"]);
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// SIGTERM both; the agent must exit 0 after flushing and detaching.
    fn stop(&mut self, quiet: bool) -> Result<()> {
        let st = self.agent.terminate();
        let _ = self.prometheus.terminate();
        let _ = self.alertmanager.terminate();
        if let Some(cg) = self.cgroup.take() {
            for d in std::fs::read_dir(&cg).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(d.path());
            }
            let _ = std::fs::remove_dir(&cg);
        }
        let st = st?;
        let lines = self.agent.lines.lock().unwrap().join(" | ");
        ensure!(st.success(), "pidfd-trace serve exited with {st} after SIGTERM: {lines}");
        ensure!(lines.contains("programs detached"), "pidfd-trace serve did not say it detached: {lines}");
        if !quiet {
            println!("e2e: agent stderr: {lines}");
        }
        println!("e2e: pidfd-trace serve stopped cleanly on SIGTERM (exit 0)");
        Ok(())
    }
}

/// The rules as shipped with every `for:` cut to [`TEST_FOR`]: nothing else changes, so the
/// test evaluates the real expressions, thresholds and windows.
fn test_rules(shipped: &str) -> Result<String> {
    let mut n = 0;
    let out: Vec<String> = shipped
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => {
                n += 1;
                format!("{}for: {TEST_FOR}", &l[..l.len() - l.trim_start().len()])
            }
            None => l.to_string(),
        })
        .collect();
    ensure!(n > 0, "{RULES} has no `for:`");
    Ok(out.join("\n") + "\n")
}

/// Adds the counter series each expected event must bump (names and labels as in
/// README's metric table) to `into`.
fn count_expected(events: &[Value], function_probes: bool, into: &mut Counts) {
    // Entries without an event (a scenario's `not_in_kernel` marker) count nothing, nor do
    // events only function probes see while none is attached.
    let seen =
        |e: &&Value| e.get("event").is_some() && (function_probes || e["function_probes_only"] != true);
    for e in events.iter().filter(seen) {
        let event = e["event"].as_str().unwrap_or_default();
        let ret = e["ret"].as_i64().unwrap_or(0);
        let errno = e["errno"].as_str().map(str::to_string);
        let mut bump = |k: String| *into.entry(k).or_insert(0) += 1;
        bump("pidfd_trace_events_total".into());
        match (event, ret < 0) {
            (
                "clone" | "clone3" | "pidfd_open" | "so_peerpidfd" | "pidfs_handle" | "reopen" | "scm_pidfd"
                | "fanotify" | "coredump",
                false,
            ) => bump(format!("pidfd_trace_pidfds_created_total{{source={event}}}")),
            ("clone" | "clone3" | "pidfd_open" | "so_peerpidfd" | "pidfs_handle", true) => bump(format!(
                "pidfd_trace_pidfd_create_failures_total{{errno={},source={event},stage={}}}",
                errno.unwrap_or_default(),
                e["stage"].as_str().unwrap_or_default()
            )),
            ("pidfd_getfd", failed) => {
                bump("pidfd_trace_getfd_total".into());
                // A copy of a pidfd is a created pidfd too (README: Every way a pidfd is born).
                if !failed && e["file_kind"] == "pidfd" {
                    bump("pidfd_trace_pidfds_created_total{source=pidfd_getfd}".into());
                }
                if failed {
                    bump(format!("pidfd_trace_getfd_failures_total{{errno={}}}", errno.unwrap_or_default()));
                }
            }
            ("pidfd_send_signal", failed) => {
                bump(format!(
                    "pidfd_trace_signals_total{{signal={}}}",
                    // A call refused before it ran (stage denied) has no signal in its event
                    // and counts under signal "unknown" (README: Metrics).
                    e["signal"].as_str().unwrap_or("unknown")
                ));
                if failed {
                    bump(format!("pidfd_trace_signal_failures_total{{errno={}}}", errno.unwrap_or_default()));
                }
            }
            ("waitid" | "setns" | "process_madvise" | "process_mrelease" | "pidfd_ioctl", _) => {
                bump(format!(
                    "pidfd_trace_pidfd_uses_total{{op={event},outcome={}}}",
                    errno.unwrap_or_else(|| "ok".into())
                ))
            }
            _ => {}
        }
    }
}

/// `name{a=x,b=y}` with labels sorted, leaving out the ones Prometheus adds.
fn series_key(metric: &Value) -> String {
    let mut labels: Vec<String> = metric
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "instance" | "job"))
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    labels.sort();
    let name = metric["__name__"].as_str().unwrap_or_default();
    if labels.is_empty() { name.to_string() } else { format!("{name}{{{}}}", labels.join(",")) }
}

fn collect_panel_queries(panels: &Value, out: &mut Vec<(String, String)>) {
    for p in panels.as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    format!(
                        "panel \"{}\" {}",
                        p["title"].as_str().unwrap_or("?"),
                        t["refId"].as_str().unwrap_or("")
                    ),
                    e.to_string(),
                ));
            }
        }
        collect_panel_queries(&p["panels"], out);
    }
}

/// Grafana's `label_values(SELECTOR, LABEL)` as the PromQL that lists the same values.
fn label_values_to_promql(q: &str) -> Result<String> {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .with_context(|| format!("unsupported variable query {q}"))?;
    let (sel, label) =
        inner.rsplit_once(',').with_context(|| format!("label_values without a label: {q}"))?;
    Ok(format!("count by ({}) ({})", label.trim(), sel.trim()))
}

fn substitute(expr: &str, instance: &str) -> String {
    let mut q = expr.to_string();
    for (var, val) in GRAFANA_VARS {
        q = q.replace(var, val);
    }
    q.replace("${instance}", instance)
        .replace("$instance", instance)
        .replace("${container}", ".*")
        .replace("$container", ".*")
}

fn summarize(result: &[Value]) -> String {
    if result.is_empty() {
        return "NO DATA".into();
    }
    let mut parts: Vec<String> = result
        .iter()
        .take(4)
        .map(|s| {
            let labels: Vec<String> = s["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !matches!(k.as_str(), "instance" | "job"))
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            let v = s["value"][1].as_str().unwrap_or("?");
            let v = v.parse::<f64>().map(short_number).unwrap_or(v.to_string());
            if labels.is_empty() { v } else { format!("{{{}}} {v}", labels.join(",")) }
        })
        .collect();
    if result.len() > 4 {
        parts.push(format!("… {} series", result.len()));
    }
    parts.join("; ")
}

/// 64 hex digits that look like a runtime's container id (splitmix64 of the seed).
fn fake_container_id(seed: u64) -> String {
    let mut x = seed;
    (0..4)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

fn short_number(f: f64) -> String {
    if f != 0.0 && f.abs() < 0.01 {
        format!("{f:.3e}")
    } else {
        format!("{f:.4}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A minimal HTTP/1.0 GET (the server closes the connection; no chunking), to keep an HTTP
/// client stack out of xtask. Returns the status code and body.
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) =
        text.split_once("\r\n\r\n").with_context(|| format!("malformed response from {addr}"))?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status code")?;
    Ok((code, body.to_string()))
}

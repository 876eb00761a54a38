//! `cargo xtask soak --minutes N`: the agent (`serve`) under N minutes of mixed load
//! (stress-ng --pidfd plus CLONE_PIDFD clone storms); RSS every minute, then lost records
//! and counter exactness. Not part of `cargo xtask test`.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{setup, util};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// How long to run the load.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(opts: &Options, root: &Path) -> Result<()> {
    if !util::is_root() {
        bail!("cargo xtask soak needs root (it loads eBPF programs); run it with sudo");
    }
    setup::run(&Default::default())?;
    util::ensure_apt(&["stress-ng"])?;
    let bins = crate::build(root)?;
    let dir = root.join("target/soak");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("events.jsonl");
    let _ = std::fs::remove_file(&log);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut agent = Command::new(&bins.agent)
        .args(["serve", "--web.listen-address", &format!("127.0.0.1:{port}"), "--events-log"])
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agent")?;
    let stderr = BufReader::new(agent.stderr.take().expect("piped"));
    let mut lines = stderr.lines();
    let started = Instant::now();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("attached") => break,
            Some(Ok(_)) => {}
            _ => bail!("the agent exited before attaching"),
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let agent = Killed(agent);
    let pid = agent.0.id();
    println!(
        "soak: agent {pid} attached in {:.2}s on 127.0.0.1:{port}; {} min of load",
        started.elapsed().as_secs_f64(),
        opts.minutes
    );

    let before = scrape(port)?;
    let secs = opts.minutes * 60;
    let stress = Killed(
        Command::new("stress-ng")
            .args(["--pidfd", "1", "--timeout", &format!("{secs}s"), "--quiet"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting stress-ng")?,
    );
    let clones = Command::new(&bins.workload)
        .args(["clone-storm", &secs.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    println!("{:>6} {:>10} {:>14} {:>10}", "minute", "RSS KiB", "events", "lost");
    let t0 = Instant::now();
    for minute in 1..=opts.minutes {
        std::thread::sleep((t0 + Duration::from_secs(minute * 60)).saturating_duration_since(Instant::now()));
        let m = scrape(port)?;
        println!(
            "{minute:>6} {:>10} {:>14} {:>10}",
            rss_kib(pid),
            value(&m, "pidfd_trace_events_total"),
            value(&m, "pidfd_trace_events_lost_total")
        );
    }
    let out = clones.wait_with_output()?;
    drop(stress);
    let storm: serde_json::Value = serde_json::from_slice(&out.stdout).context("clone-storm report")?;
    std::thread::sleep(Duration::from_secs(3));
    let after = scrape(port)?;
    let delta = |k: &str| value(&after, k) - value(&before, k);
    let total = value(&after, "pidfd_trace_events_total");
    let received = value(&after, "pidfd_trace_events_received_total");
    let lost = value(&after, "pidfd_trace_events_lost_total");
    let outcome_sum: u64 = after
        .iter()
        .filter(|(k, _)| {
            // getfd_total and signals_total count failures too.
            ["pidfds_created", "pidfd_create_failures", "getfd_total", "signals_total"]
                .iter()
                .any(|f| k.starts_with(&format!("pidfd_trace_{f}")))
        })
        .map(|(_, v)| *v)
        .sum();
    let log_lines = std::fs::read_to_string(&log).map(|s| s.lines().count() as u64).unwrap_or(0);
    let clone_ok = delta(r#"pidfd_trace_pidfds_created_total{source="clone"}"#);
    let clone_einval =
        delta(r#"pidfd_trace_pidfd_create_failures_total{errno="EINVAL",source="clone",stage="flags"}"#);
    let checks = [
        (
            "records delivered + lost == kernel record count",
            received + lost == total,
            format!("{received} + {lost} vs {total}"),
        ),
        (
            "sum of outcome counters == kernel record count",
            outcome_sum == total,
            format!("{outcome_sum} vs {total}"),
        ),
        (
            "events log lines == records delivered",
            log_lines == received,
            format!("{log_lines} vs {received}"),
        ),
        (
            "clone successes counted exactly",
            Some(clone_ok) == storm["ok"].as_u64(),
            format!("{clone_ok} vs {}", storm["ok"]),
        ),
        (
            "clone EINVALs counted exactly",
            Some(clone_einval) == storm["einval"].as_u64(),
            format!("{clone_einval} vs {}", storm["einval"]),
        ),
    ];
    println!("\nsoak: {total} records, {lost} lost, RSS {} KiB at the end", rss_kib(pid));
    let mut failed = 0;
    for (what, ok, detail) in &checks {
        println!("{:<6} {what}: {detail}", if *ok { "ok" } else { "FAILED" });
        failed += usize::from(!ok);
    }
    println!("soak: {} passed, {failed} failed", checks.len() - failed);
    drop(agent);
    // Ten minutes of events are about 10 GiB of JSON: counted above, not kept.
    let _ = std::fs::remove_file(&log);
    if failed > 0 {
        bail!("{failed} soak check(s) failed");
    }
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

fn value(m: &HashMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

/// The `pidfd_trace_*` samples of /metrics (series text → value).
fn scrape(port: u16) -> Result<HashMap<String, u64>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connecting to the agent")?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("pidfd_trace_"))
        .filter_map(|l| {
            l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse::<f64>().ok()? as u64)))
        })
        .collect())
}

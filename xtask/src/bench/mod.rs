//! `cargo xtask bench`: what pidfd-trace costs, measured in one run on this machine beside the
//! floor (a per-CPU counter program on the same tracepoints) and the bpftrace peer.
//!
//! Phases, in this order:
//! 1. A/B rounds: in each round every tool (none, agent, floor, bpftrace; the order rotates
//!    per round) is started, every load runs for `--secs`, and the tool's programs' kernel
//!    run-time statistics and its own CPU/RSS are read around each load. Medians over rounds.
//! 2. Delivery: the agent under a paced pidfd_open rate, then unpaced storms; its closing line
//!    gives records received and lost.
//! 3. Idle footprint: the agent attached on a quiet machine.
//!
//! Nothing here asserts a time: the figures are reported (table, `--json`, `--write` into
//! BENCHMARKS.md) and the targets are marked met or missed by how much.
mod loads;
mod progs;
mod report;
mod tools;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use self::{
    loads::Load,
    progs::{Counters, Names, StatsGuard},
    tools::{Binaries, Tool},
};
use crate::util;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Also print the results as one JSON object on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// A/B rounds; every figure is the median over rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per load run.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// Seconds of the sustained-rate delivery run.
    #[arg(long, default_value_t = 10.0)]
    pub delivery_secs: f64,
    /// Events/s the sustained delivery run asks for.
    #[arg(long, default_value_t = 100_000)]
    pub delivery_rate: u64,
    /// Write this run's results into BENCHMARKS.md (between its `bench:begin/end` markers).
    #[arg(long)]
    pub write: bool,
}

/// Arguments of the agent under test: the heaviest user-space path (every record decoded
/// and formatted as JSON), output discarded.
const AGENT_ARGS: &[&str] = &["trace", "--output", "json"];

/// One load run under one tool.
#[derive(Clone, Debug)]
pub struct Sample {
    pub tool: Tool,
    pub load: Load,
    pub round: usize,
    pub ops_per_sec: f64,
    /// Operations the load did while measured (ops/s × seconds).
    pub ops: f64,
    /// The tool's programs during the load.
    pub progs: BTreeMap<String, Counters>,
    /// The tool's own CPU time during the load, as a share of one CPU (%).
    pub tool_cpu_pct: Option<f64>,
    /// The same CPU time in ns (all the tool's threads, schedstat).
    pub tool_cpu_ns: Option<u64>,
    pub tool_rss_kib: Option<u64>,
}

/// One delivery run of the agent.
#[derive(Clone, Debug)]
pub struct DeliveryRun {
    pub label: String,
    /// Events/s asked of each generator; 0 = as fast as it can.
    pub rate: u64,
    pub procs: usize,
    pub secs: f64,
    pub generated: u64,
    /// Events/s the generators reached (sum of their own ops/s).
    pub achieved: f64,
    pub received: u64,
    pub lost: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Footprint {
    pub idle_secs: f64,
    pub idle_cpu_pct: f64,
    pub idle_rss_kib: u64,
    pub peak_rss_kib: u64,
    pub attach_ms: Vec<f64>,
}

pub struct Results {
    pub opts_rounds: usize,
    pub opts_secs: f64,
    pub command: String,
    pub machine: Vec<(String, String)>,
    pub samples: Vec<Sample>,
    pub delivery: Vec<DeliveryRun>,
    pub footprint: Footprint,
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

pub fn run(opts: &Options, root: &Path) -> Result<()> {
    if !util::is_root() {
        bail!(
            "cargo xtask bench needs root: it loads eBPF programs and sets kernel.bpf_stats_enabled; run it with sudo"
        );
    }
    if opts.rounds == 0 || opts.secs <= 0.0 {
        bail!("--rounds and --secs must be positive");
    }
    // With --json, stdout carries the JSON object alone: set-up and build talk on stderr.
    let bins = with_stdout_on_stderr(opts.json, || -> Result<_> {
        util::ensure_apt(&["bpftrace", "stress-ng", "bpftool"])?;
        crate::setup::run(&Default::default())?;
        crate::build(root)
    })?;
    let bench_load = root.join("target/release/pidfd-bench-load");
    if !bench_load.is_file() {
        bail!("{} was not built", bench_load.display());
    }
    let t0 = Instant::now();
    let mut notes = Vec::new();
    let loadavg_before = loadavg();
    let stats = StatsGuard::enable()?;
    let binaries = Binaries { agent: &bins.agent };
    let mut footprint = Footprint::default();
    let (samples, foreign) = rounds(opts, &binaries, &bench_load, &mut footprint)?;
    let delivery = delivery(opts, &binaries, &bench_load, &mut footprint)?;
    idle(&binaries, &mut footprint)?;
    drop(stats);
    if !foreign.is_empty() {
        notes.push(format!(
            "other BPF programs were attached to the same tracepoints during the run (their cost lands in every throughput figure): {}",
            foreign.join("; ")
        ));
    }
    notes.push(format!("load average before/after the run: {loadavg_before} / {}", loadavg()));
    let results = Results {
        opts_rounds: opts.rounds,
        opts_secs: opts.secs,
        command: command_line(),
        machine: machine(),
        samples,
        delivery,
        footprint,
        notes,
        elapsed: t0.elapsed(),
    };
    let table = report::table(&results);
    let json = report::json(&results);
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("last.txt"), &table)?;
    std::fs::write(dir.join("last.json"), serde_json::to_string_pretty(&json)?)?;
    if opts.json {
        eprint!("{table}");
        println!("{json}");
    } else {
        print!("{table}");
    }
    if opts.write {
        let path = root.join("BENCHMARKS.md");
        report::write_benchmarks_md(&path, &results, &table)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// Phase 1: every tool × every load, `opts.rounds` times, tools in a rotating order.
fn rounds(
    opts: &Options,
    bins: &Binaries<'_>,
    bench_load: &Path,
    footprint: &mut Footprint,
) -> Result<(Vec<Sample>, Vec<String>)> {
    let mut names = Names::default();
    let mut samples = Vec::new();
    let mut foreign: Vec<String> = Vec::new();
    for round in 0..opts.rounds {
        for i in 0..Tool::ALL.len() {
            let tool = Tool::ALL[(i + round) % Tool::ALL.len()];
            eprintln!("bench: round {}/{}: {}", round + 1, opts.rounds, tool.key());
            let running = tools::start(tool, bins, AGENT_ARGS)?;
            if let Some(r) = &running
                && tool == Tool::Agent
            {
                footprint.attach_ms.push(r.attach_time.as_secs_f64() * 1e3);
            }
            let own: Vec<u32> = running.iter().map(|r| r.pid).collect();
            for f in progs::foreign_attachments(&own, tools::TRACEPOINTS) {
                if !foreign.contains(&f) {
                    foreign.push(f);
                }
            }
            for load in Load::ALL {
                let before = running.as_ref().map(|r| (progs::snapshot(r.pid), r.cpu_ns()));
                let t = Instant::now();
                let ops_per_sec = loads::run(load, bench_load, opts.secs)?;
                let wall = t.elapsed();
                let (progs, tool_cpu_ns, tool_rss_kib) = match (&running, before) {
                    (Some(r), Some((snap, cpu))) => {
                        let d = progs::delta(&snap, &progs::snapshot(r.pid), &mut names);
                        (d, Some(r.cpu_ns().saturating_sub(cpu)), Some(r.rss_kib()))
                    }
                    _ => (BTreeMap::new(), None, None),
                };
                let tool_cpu_pct = tool_cpu_ns.map(|ns| ns as f64 / wall.as_nanos() as f64 * 100.0);
                samples.push(Sample {
                    tool,
                    load,
                    round,
                    ops_per_sec,
                    ops: ops_per_sec * opts.secs,
                    progs,
                    tool_cpu_pct,
                    tool_cpu_ns,
                    tool_rss_kib,
                });
            }
            if let Some(r) = running {
                if tool == Tool::Agent {
                    footprint.peak_rss_kib = footprint.peak_rss_kib.max(r.hwm_kib());
                }
                r.stop()?;
            }
        }
    }
    Ok((samples, foreign))
}

/// Phase 2: records delivered and lost at a paced rate, then as fast as one and two
/// generators can go. A fresh agent per run, so its closing line covers exactly that run.
fn delivery(
    opts: &Options,
    bins: &Binaries<'_>,
    bench_load: &Path,
    footprint: &mut Footprint,
) -> Result<Vec<DeliveryRun>> {
    let plan = [
        (format!("{} events/s for {} s", opts.delivery_rate, opts.delivery_secs), opts.delivery_rate, 1),
        ("storm, 1 generator".to_string(), 0, 1),
        ("storm, 2 generators".to_string(), 0, 2),
    ];
    let mut out = Vec::new();
    for (i, (label, rate, procs)) in plan.into_iter().enumerate() {
        let secs = if i == 0 { opts.delivery_secs } else { (opts.delivery_secs / 2.0).max(1.0) };
        eprintln!("bench: delivery: {label}");
        let agent = tools::start(Tool::Agent, bins, AGENT_ARGS)?.expect("agent is a process");
        let mut args = vec!["pidfd-open".to_string()];
        if rate > 0 {
            args.extend(["--rate".to_string(), rate.to_string()]);
        }
        let handles: Vec<_> = (0..procs)
            .map(|_| {
                let args = args.clone();
                let bench_load = bench_load.to_path_buf();
                std::thread::spawn(move || {
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    loads::ours_counted(&bench_load, &a, secs)
                })
            })
            .collect();
        let (mut generated, mut achieved) = (0, 0.0);
        for h in handles {
            let (rate, ops) = h.join().expect("generator thread")?;
            generated += ops;
            achieved += rate;
        }
        // One drain tick, so records still in the ring are not mistaken for slow delivery.
        std::thread::sleep(Duration::from_millis(200));
        footprint.peak_rss_kib = footprint.peak_rss_kib.max(agent.hwm_kib());
        let stderr = agent.stop()?;
        let Some((received, lost)) = tools::agent_summary(&stderr) else {
            bail!("the agent printed no closing summary: {}", stderr.join(" | "));
        };
        out.push(DeliveryRun { label, rate, procs, secs, generated, achieved, received, lost });
    }
    Ok(out)
}

/// Phase 3: the agent attached with nothing to do.
fn idle(bins: &Binaries<'_>, footprint: &mut Footprint) -> Result<()> {
    const IDLE: Duration = Duration::from_secs(10);
    eprintln!("bench: idle agent for {} s", IDLE.as_secs());
    let agent = tools::start(Tool::Agent, bins, AGENT_ARGS)?.expect("agent is a process");
    footprint.attach_ms.push(agent.attach_time.as_secs_f64() * 1e3);
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = agent.cpu_ns();
    let t = Instant::now();
    std::thread::sleep(IDLE);
    let cpu = agent.cpu_ns().saturating_sub(cpu0);
    footprint.idle_secs = t.elapsed().as_secs_f64();
    footprint.idle_cpu_pct = cpu as f64 / t.elapsed().as_nanos() as f64 * 100.0;
    footprint.idle_rss_kib = agent.rss_kib();
    footprint.peak_rss_kib = footprint.peak_rss_kib.max(agent.hwm_kib());
    agent.stop()?;
    Ok(())
}

/// Runs `f` with file descriptor 1 pointing at stderr (for this process and the commands it
/// starts) when `redirect` is set.
fn with_stdout_on_stderr<T>(redirect: bool, f: impl FnOnce() -> T) -> T {
    if !redirect {
        return f();
    }
    let _ = std::io::stdout().flush();
    // SAFETY: plain descriptor duplication; fd 1 is restored before returning.
    let saved = unsafe { libc::dup(1) };
    unsafe { libc::dup2(2, 1) };
    let out = f();
    let _ = std::io::stdout().flush();
    if saved >= 0 {
        unsafe {
            libc::dup2(saved, 1);
            libc::close(saved);
        }
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

/// What the figures were measured on.
fn machine() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, v)| v.trim()))
        .unwrap_or("unknown")
        .to_string();
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let detect = |flag: &str| {
        Command::new("systemd-detect-virt")
            .arg(flag)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty() && s != "none")
    };
    let vm = detect("--vm").or_else(|| cpuinfo.contains(" hypervisor").then(|| "yes".to_string()));
    let virt = match (vm, detect("--container")) {
        (Some(vm), Some(ct)) => format!("VM ({vm}), inside a {ct} container"),
        (Some(vm), None) => format!("VM ({vm})"),
        (None, Some(ct)) => format!("{ct} container"),
        (None, None) => "bare metal".into(),
    };
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let s =
                    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                s.lines().next().unwrap_or_default().trim().to_string()
            })
            .unwrap_or_default()
    };
    let clocksource = read("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    vec![
        ("kernel".into(), read("/proc/sys/kernel/osrelease").trim().to_string()),
        ("os".into(), os),
        ("cpu".into(), format!("{cpus} × {model}")),
        ("memory".into(), mem_gib),
        ("virtualization".into(), virt),
        ("clocksource".into(), clocksource.trim().to_string()),
        ("bpftrace".into(), version("bpftrace", "--version")),
        ("stress-ng".into(), version("stress-ng", "--version")),
        ("rustc".into(), version("rustc", "--version")),
    ]
}

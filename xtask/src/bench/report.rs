//! From samples to figures (medians over rounds, paired ratios), and the three ways they are
//! shown: a text table, one JSON object, and the generated section of BENCHMARKS.md.
use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{Results, Sample, loads::Load, tools::Tool};

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn samples(r: &Results, load: Load, tool: Tool) -> impl Iterator<Item = &Sample> {
    r.samples.iter().filter(move |s| s.load == load && s.tool == tool)
}

/// Median operations/s of `load` under `tool`.
fn throughput(r: &Results, load: Load, tool: Tool) -> Option<f64> {
    median(samples(r, load, tool).map(|s| s.ops_per_sec).collect())
}

/// Median over rounds of (ops/s under `tool`) / (ops/s without any tool) in the same round.
fn ratio(r: &Results, load: Load, tool: Tool) -> Option<f64> {
    median(
        samples(r, load, tool)
            .filter_map(|s| {
                let base = samples(r, load, Tool::Without).find(|b| b.round == s.round)?;
                Some(s.ops_per_sec / base.ops_per_sec)
            })
            .collect(),
    )
}

/// Median kernel time of all the tool's programs per operation of the load, in ns.
fn ns_per_op(r: &Results, load: Load, tool: Tool) -> Option<f64> {
    median(
        samples(r, load, tool)
            .filter(|s| s.ops > 0.0)
            .map(|s| s.progs.values().map(|c| c.run_time_ns as f64).sum::<f64>() / s.ops)
            .collect(),
    )
}

/// Median (ns per run, runs per operation) of one program.
fn prog(r: &Results, load: Load, tool: Tool, name: &str) -> Option<(f64, f64)> {
    let per_run = median(
        samples(r, load, tool)
            .filter_map(|s| s.progs.get(name))
            .map(|c| c.run_time_ns as f64 / c.run_cnt as f64)
            .collect(),
    )?;
    let per_op = median(
        samples(r, load, tool)
            .filter(|s| s.ops > 0.0)
            .map(|s| s.progs.get(name).map_or(0.0, |c| c.run_cnt as f64) / s.ops)
            .collect(),
    )?;
    Some((per_run, per_op))
}

fn prog_names(r: &Results, load: Load, tool: Tool) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for s in samples(r, load, tool) {
        for (n, c) in &s.progs {
            // Programs that ran for background activity only (well under one run per
            // operation) are noise here.
            if c.run_cnt as f64 >= s.ops * 0.5 && !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names.sort();
    names
}

/// The agent's resident memory once running: idle, and at the end of every load (not the
/// start-up peak, which `peak_rss_kib` reports).
fn steady_rss_kib(r: &Results) -> u64 {
    r.samples
        .iter()
        .filter(|s| s.tool == Tool::Agent)
        .filter_map(|s| s.tool_rss_kib)
        .chain([r.footprint.idle_rss_kib])
        .max()
        .unwrap_or(0)
}

fn agent_cpu(r: &Results, load: Load) -> Option<f64> {
    median(samples(r, load, Tool::Agent).filter_map(|s| s.tool_cpu_pct).collect())
}

/// The agent's CPU time (all its threads) per operation of `load`, in µs, median over rounds.
/// Under the pidfd_open storm every operation is one event the agent reads, decodes, enriches
/// and formats (records of other processes meanwhile are few beside the storm's).
fn agent_us_per_op(r: &Results, load: Load) -> Option<f64> {
    median(
        samples(r, load, Tool::Agent)
            .filter(|s| s.ops > 0.0)
            .filter_map(|s| Some(s.tool_cpu_ns? as f64 / 1e3 / s.ops))
            .collect(),
    )
}

/// One target: the figure, the goal and whether it is met.
struct Target {
    key: &'static str,
    what: &'static str,
    value: Option<f64>,
    unit: &'static str,
    goal: f64,
    /// true: value must be ≤ goal; false: ≥ goal.
    at_most: bool,
}

impl Target {
    fn met(&self) -> Option<bool> {
        self.value.map(|v| if self.at_most { v <= self.goal } else { v >= self.goal })
    }

    fn verdict(&self) -> String {
        match (self.value, self.met()) {
            (None, _) => "not measured".into(),
            (Some(_), Some(true)) => "met".into(),
            (Some(v), _) => {
                if self.at_most {
                    format!("MISSED: {:.0}% over", (v / self.goal - 1.0) * 100.0)
                } else {
                    format!("MISSED: {:.0}% short", (1.0 - v / self.goal) * 100.0)
                }
            }
        }
    }

    fn show(&self, v: f64) -> String {
        match self.unit {
            "×" => format!("{v:.2}×"),
            "%" => format!("{v:.2}%"),
            "µs" => format!("{v:.2} µs"),
            "MiB" => format!("{v:.1} MiB"),
            "/s" => format!("{v:.0}/s"),
            _ => format!("{v:.2}"),
        }
    }
}

fn targets(r: &Results) -> Vec<Target> {
    let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let fork_vs_floor = div(ns_per_op(r, Load::Fork, Tool::Agent), ns_per_op(r, Load::Fork, Tool::Floor));
    let event_vs_floor =
        div(ns_per_op(r, Load::PidfdOpen, Tool::Agent), ns_per_op(r, Load::PidfdOpen, Tool::Floor));
    let peer = div(ns_per_op(r, Load::PidfdOpen, Tool::Bpftrace), ns_per_op(r, Load::PidfdOpen, Tool::Agent));
    // The paced run counts when nothing was lost and the generator kept pace (within 1%: a
    // paced loop always finishes a little after its nominal end); the figure is then the
    // rate it was asked for.
    let sustained = r.delivery.first().map(|d| match (d.lost, d.rate) {
        (0, rate) if rate > 0 && d.secs >= 10.0 && d.achieved >= 0.99 * rate as f64 => rate as f64,
        (0, _) => d.achieved,
        _ => 0.0,
    });
    vec![
        Target {
            key: "plain_fork_vs_floor",
            what: "plain fork: our programs vs the floor (per run)",
            value: fork_vs_floor,
            unit: "×",
            goal: 1.3,
            at_most: true,
        },
        Target {
            key: "pidfd_event_vs_floor",
            what: "pidfd_open event (enter+exit) vs the floor",
            value: event_vs_floor,
            unit: "×",
            goal: 3.0,
            at_most: true,
        },
        Target {
            key: "bpftrace_vs_ours_per_event",
            what: "bpftrace peer cost / ours, per event",
            value: peer,
            unit: "×",
            goal: 10.0,
            at_most: false,
        },
        Target {
            key: "pidfd_open_throughput_ratio",
            what: "pidfd_open storm throughput, agent / without",
            value: ratio(r, Load::PidfdOpen, Tool::Agent),
            unit: "×",
            goal: 0.85,
            at_most: false,
        },
    ]
    .into_iter()
    .chain(Load::HOT.into_iter().map(|load| Target {
        key: hot_key(load),
        what: load.title(),
        value: ratio(r, load, Tool::Agent),
        unit: "×",
        goal: 0.97,
        at_most: false,
    }))
    // What the agent's programs add on a hot syscall beyond the tracepoint itself: the floor
    // sits on the same tracepoints (tools::HOT_TRACEPOINTS).
    .chain(Load::HOT.into_iter().map(|load| Target {
        key: hot_floor_key(load),
        what: hot_floor_title(load),
        value: div(ratio(r, load, Tool::Agent), ratio(r, load, Tool::Floor)),
        unit: "×",
        goal: 0.97,
        at_most: false,
    }))
    .chain([
        Target {
            key: "agent_cpu_us_per_event",
            what: "agent CPU per event under the pidfd_open storm",
            value: agent_us_per_op(r, Load::PidfdOpen),
            unit: "µs",
            goal: 0.4,
            at_most: true,
        },
        Target {
            key: "zero_loss_sustained_rate",
            what: "events/s sustained 10 s with zero lost records",
            value: sustained,
            unit: "/s",
            goal: 100_000.0,
            at_most: false,
        },
        Target {
            key: "agent_rss_mib",
            what: "agent RSS, idle and under every load (largest)",
            value: Some(steady_rss_kib(r) as f64 / 1024.0),
            unit: "MiB",
            goal: 30.0,
            at_most: true,
        },
        Target {
            key: "agent_idle_cpu_pct",
            what: "agent CPU while idle (% of one CPU)",
            value: Some(r.footprint.idle_cpu_pct),
            unit: "%",
            goal: 0.5,
            at_most: true,
        },
    ])
    .collect()
}

/// The target key of a hot-syscall load: `<load>_throughput_ratio`.
fn hot_key(load: Load) -> &'static str {
    match load {
        Load::Read => "read_throughput_ratio",
        Load::Recvmsg => "recvmsg_throughput_ratio",
        Load::Ioctl => "ioctl_throughput_ratio",
        Load::Openat => "openat_throughput_ratio",
        Load::Getsockopt => "getsockopt_throughput_ratio",
        _ => "throughput_ratio",
    }
}

/// The target key of a hot-syscall load against the floor: `<load>_vs_floor_throughput_ratio`.
fn hot_floor_key(load: Load) -> &'static str {
    match load {
        Load::Read => "read_vs_floor_throughput_ratio",
        Load::Recvmsg => "recvmsg_vs_floor_throughput_ratio",
        Load::Ioctl => "ioctl_vs_floor_throughput_ratio",
        Load::Openat => "openat_vs_floor_throughput_ratio",
        Load::Getsockopt => "getsockopt_vs_floor_throughput_ratio",
        _ => "vs_floor_throughput_ratio",
    }
}

fn hot_floor_title(load: Load) -> &'static str {
    match load {
        Load::Read => "read loop, agent / floor",
        Load::Recvmsg => "recvmsg loop, agent / floor",
        Load::Ioctl => "ioctl loop, agent / floor",
        Load::Openat => "openat loop, agent / floor",
        Load::Getsockopt => "getsockopt loop, agent / floor",
        _ => "agent / floor",
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn ratio_str(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}×"))
}

pub fn table(r: &Results) -> String {
    let mut t = String::new();
    let w = &mut t;
    let _ = writeln!(
        w,
        "pidfd-trace overhead: {} rounds × {} s per load, medians over rounds (run took {:.0} s)",
        r.opts_rounds,
        r.opts_secs,
        r.elapsed.as_secs_f64()
    );
    for (k, v) in &r.machine {
        let _ = writeln!(w, "  {k:<15} {v}");
    }

    let _ = writeln!(w, "\n1. Kernel cost per program (bpf_stats: run_time_ns / run_cnt)");
    let _ = writeln!(
        w,
        "{:<34} {:<9} {:<24} {:>8} {:>8} {:>9}",
        "load", "tool", "program", "ns/run", "runs/op", "ns/op"
    );
    for load in Load::ALL {
        let mut first = true;
        for tool in [Tool::Floor, Tool::Agent, Tool::Bpftrace] {
            for name in prog_names(r, load, tool) {
                let Some((per_run, per_op)) = prog(r, load, tool, &name) else { continue };
                let _ = writeln!(
                    w,
                    "{:<34} {:<9} {:<24} {:>8.0} {:>8.2} {:>9.0}",
                    if first { load.title() } else { "" },
                    tool.key(),
                    name,
                    per_run,
                    per_op,
                    per_run * per_op
                );
                first = false;
            }
        }
    }

    let _ =
        writeln!(w, "\n2. Kernel ns per operation, all of a tool's programs, against the floor and the peer");
    let _ = writeln!(
        w,
        "{:<34} {:>8} {:>8} {:>9} {:>12} {:>15}",
        "load", "floor", "agent", "bpftrace", "agent/floor", "bpftrace/agent"
    );
    for load in Load::ALL {
        let (f, a, b) = (
            ns_per_op(r, load, Tool::Floor),
            ns_per_op(r, load, Tool::Agent),
            ns_per_op(r, load, Tool::Bpftrace),
        );
        let _ = writeln!(
            w,
            "{:<34} {:>8} {:>8} {:>9} {:>12} {:>15}",
            load.title(),
            opt(f, 0),
            opt(a, 0),
            opt(b, 0),
            ratio_str(a.zip(f).map(|(a, f)| a / f)),
            ratio_str(b.zip(a).map(|(b, a)| b / a))
        );
    }

    let _ = writeln!(w, "\n3. Throughput, ops/s (× = median of per-round ratios to `without`)");
    let _ =
        writeln!(w, "{:<34} {:>10} {:>18} {:>18} {:>18}", "load", "without", "agent", "floor", "bpftrace");
    for load in Load::ALL {
        let cell =
            |tool| format!("{} ({})", opt(throughput(r, load, tool), 0), ratio_str(ratio(r, load, tool)));
        let _ = writeln!(
            w,
            "{:<34} {:>10} {:>18} {:>18} {:>18}",
            load.title(),
            opt(throughput(r, load, Tool::Without), 0),
            cell(Tool::Agent),
            cell(Tool::Floor),
            cell(Tool::Bpftrace)
        );
    }

    let _ = writeln!(w, "\n4. Delivery: agent `trace --output json` (stdout discarded), default ring buffer");
    let _ =
        writeln!(w, "{:<34} {:>10} {:>12} {:>10} {:>10}", "run", "events/s", "generated", "received", "lost");
    for d in &r.delivery {
        let _ = writeln!(
            w,
            "{:<34} {:>10.0} {:>12} {:>10} {:>10}",
            d.label, d.achieved, d.generated, d.received, d.lost
        );
    }

    let f = &r.footprint;
    let _ = writeln!(w, "\n5. Agent footprint");
    let _ = writeln!(
        w,
        "  RSS idle {:.1} MiB, largest under load {:.1} MiB, peak (VmHWM, start-up included) {:.1} MiB",
        f.idle_rss_kib as f64 / 1024.0,
        steady_rss_kib(r) as f64 / 1024.0,
        f.peak_rss_kib as f64 / 1024.0
    );
    let _ = writeln!(
        w,
        "  CPU idle {:.3}% of one CPU over {:.0} s; under the pidfd_open storm {}% ({} µs per event); under stress-ng {}%",
        f.idle_cpu_pct,
        f.idle_secs,
        opt(agent_cpu(r, Load::PidfdOpen), 1),
        opt(agent_us_per_op(r, Load::PidfdOpen), 2),
        opt(agent_cpu(r, Load::StressNg), 1)
    );
    let _ = writeln!(
        w,
        "  start to `attached`: median {} ms (min {}, max {}) over {} starts",
        opt(median(f.attach_ms.clone()), 0),
        opt(f.attach_ms.iter().copied().reduce(f64::min), 0),
        opt(f.attach_ms.iter().copied().reduce(f64::max), 0),
        f.attach_ms.len()
    );

    let _ = writeln!(w, "\n6. Targets");
    for tg in targets(r) {
        let _ = writeln!(
            w,
            "  {:<52} {:>12}  goal {}{:<10} {}",
            tg.what,
            tg.value.map_or("-".into(), |v| tg.show(v)),
            if tg.at_most { "≤ " } else { "≥ " },
            tg.show(tg.goal),
            tg.verdict()
        );
    }
    if !r.notes.is_empty() {
        let _ = writeln!(w, "\nNotes");
        for n in &r.notes {
            let _ = writeln!(w, "  - {n}");
        }
    }
    t
}

pub fn json(r: &Results) -> Value {
    let mut per_program = serde_json::Map::new();
    let mut per_op = serde_json::Map::new();
    let mut thr = serde_json::Map::new();
    for load in Load::ALL {
        let mut tools = serde_json::Map::new();
        let mut ops = serde_json::Map::new();
        let mut t = serde_json::Map::new();
        for tool in Tool::ALL {
            let mut progs = serde_json::Map::new();
            for name in prog_names(r, load, tool) {
                if let Some((per_run, runs)) = prog(r, load, tool, &name) {
                    progs.insert(name, json!({"ns_per_run": per_run, "runs_per_op": runs}));
                }
            }
            if !progs.is_empty() {
                tools.insert(tool.key().into(), Value::Object(progs));
            }
            if let Some(v) = ns_per_op(r, load, tool) {
                ops.insert(tool.key().into(), json!(v));
            }
            t.insert(
                tool.key().into(),
                json!({"ops_per_sec": throughput(r, load, tool), "ratio": ratio(r, load, tool)}),
            );
        }
        per_program.insert(load.key().into(), Value::Object(tools));
        per_op.insert(load.key().into(), Value::Object(ops));
        thr.insert(load.key().into(), Value::Object(t));
    }
    let machine: serde_json::Map<String, Value> =
        r.machine.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let f = &r.footprint;
    json!({
        "command": r.command,
        "rounds": r.opts_rounds,
        "secs_per_load": r.opts_secs,
        "elapsed_secs": r.elapsed.as_secs_f64(),
        "machine": machine,
        "per_program": per_program,
        "kernel_ns_per_op": per_op,
        "throughput": thr,
        "delivery": r.delivery.iter().map(|d| json!({
            "run": d.label, "rate_asked": d.rate, "generators": d.procs, "secs": d.secs,
            "generated": d.generated, "events_per_sec": d.achieved,
            "received": d.received, "lost": d.lost,
        })).collect::<Vec<_>>(),
        "footprint": {
            "idle_rss_kib": f.idle_rss_kib,
            "steady_rss_kib": steady_rss_kib(r),
            "peak_rss_kib": f.peak_rss_kib,
            "idle_cpu_pct": f.idle_cpu_pct,
            "idle_secs": f.idle_secs,
            "storm_cpu_pct": agent_cpu(r, Load::PidfdOpen),
            "storm_cpu_us_per_event": agent_us_per_op(r, Load::PidfdOpen),
            "stress_ng_cpu_pct": agent_cpu(r, Load::StressNg),
            "attach_ms_median": median(f.attach_ms.clone()),
            "attach_ms": f.attach_ms,
        },
        "targets": targets(r).iter().map(|t| json!({
            "target": t.key, "what": t.what, "value": t.value, "goal": t.goal,
            "at_most": t.at_most, "met": t.met(),
        })).collect::<Vec<_>>(),
        "notes": r.notes,
        "samples": r.samples.iter().map(|s| json!({
            "tool": s.tool.key(), "load": s.load.key(), "round": s.round,
            "ops_per_sec": s.ops_per_sec, "tool_cpu_pct": s.tool_cpu_pct, "tool_cpu_ns": s.tool_cpu_ns, "tool_rss_kib": s.tool_rss_kib,
            "progs": s.progs.iter().map(|(n, c)| (n.clone(), json!({"run_time_ns": c.run_time_ns, "run_cnt": c.run_cnt}))).collect::<BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Replaces the generated section of BENCHMARKS.md (between the bench markers) with this run;
/// everything outside the markers is left as written.
pub fn write_benchmarks_md(path: &Path, r: &Results, table: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut doc = String::new();
    let _ = writeln!(doc, "{BEGIN}");
    let _ = writeln!(
        doc,
        "Generated by `{}` on {date} (as root, {:.0} s). Edit outside the markers only.\n",
        r.command,
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(doc, "| machine | |\n|---|---|");
    for (k, v) in &r.machine {
        let _ = writeln!(doc, "| {k} | {v} |");
    }
    let _ = writeln!(doc, "\n```text\n{}```\n", table);
    let _ = writeln!(doc, "| target | measured | goal | verdict |\n|---|---|---|---|");
    for t in targets(r) {
        let _ = writeln!(
            doc,
            "| {} | {} | {}{} | {} |",
            t.what,
            t.value.map_or("-".into(), |v| t.show(v)),
            if t.at_most { "≤ " } else { "≥ " },
            t.show(t.goal),
            t.verdict()
        );
    }
    let _ = write!(doc, "{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{doc}{}", &old[..b], &old[e + END.len()..]),
        _ => format!(
            "{}# Benchmarks\n\n{doc}\n",
            if old.is_empty() { String::new() } else { format!("{old}\n") }
        ),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 1.0]), Some(1.0));
    }
}

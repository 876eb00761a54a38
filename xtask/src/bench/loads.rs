//! The workloads: our own raw-syscall loops (`pidfd-bench-load`) and one real program nobody
//! here wrote (`stress-ng --pidfd`). Each runs for a fixed time and yields operations/s.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, anyhow, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Load {
    /// fork + exit + wait without CLONE_PIDFD: the path every host runs all the time.
    Fork,
    /// clone(CLONE_PIDFD) + close + exit + wait.
    ClonePidfd,
    /// pidfd_open + close, back to back.
    PidfdOpen,
    /// `stress-ng --pidfd 1`.
    StressNg,
}

impl Load {
    pub const ALL: [Load; 4] = [Load::Fork, Load::ClonePidfd, Load::PidfdOpen, Load::StressNg];

    pub fn key(self) -> &'static str {
        match self {
            Load::Fork => "fork",
            Load::ClonePidfd => "clone_pidfd",
            Load::PidfdOpen => "pidfd_open",
            Load::StressNg => "stress_ng_pidfd",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Load::Fork => "fork+exit+wait (no CLONE_PIDFD)",
            Load::ClonePidfd => "clone(CLONE_PIDFD)+exit+wait",
            Load::PidfdOpen => "pidfd_open+close storm",
            Load::StressNg => "stress-ng --pidfd 1",
        }
    }
}

/// Runs `load` for `secs` seconds; returns operations per second.
pub fn run(load: Load, bench_load: &Path, secs: f64) -> Result<f64> {
    match load {
        Load::Fork => ours(bench_load, &["fork"], secs),
        Load::ClonePidfd => ours(bench_load, &["clone-pidfd"], secs),
        Load::PidfdOpen => ours(bench_load, &["pidfd-open"], secs),
        Load::StressNg => stress_ng(secs),
    }
}

/// One `pidfd-bench-load` run; returns its ops/s and the number of operations.
pub fn ours_counted(bench_load: &Path, args: &[&str], secs: f64) -> Result<(f64, u64)> {
    let out = Command::new(bench_load)
        .args(args)
        .args(["--secs", &secs.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", bench_load.display()))?;
    if !out.status.success() {
        bail!("{} {} failed: {}", bench_load.display(), args.join(" "), out.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} printed no JSON line", bench_load.display()))?;
    let rate = v["ops_per_sec"].as_f64().ok_or_else(|| anyhow!("no ops_per_sec in {v}"))?;
    Ok((rate, v["ops"].as_u64().unwrap_or(0)))
}

fn ours(bench_load: &Path, args: &[&str], secs: f64) -> Result<f64> {
    ours_counted(bench_load, args, secs).map(|(r, _)| r)
}

/// `stress-ng --pidfd 1 --metrics-brief`: the "bogo ops/s (real time)" column of its pidfd
/// line.
fn stress_ng(secs: f64) -> Result<f64> {
    let secs = secs.ceil().max(1.0) as u64;
    let out = Command::new("stress-ng")
        .args(["--pidfd", "1", "--timeout", &format!("{secs}s"), "--metrics-brief"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run stress-ng")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("stress-ng --pidfd failed ({}): {text}", out.status);
    }
    parse_stress_ng(&text).ok_or_else(|| anyhow!("no pidfd metrics line in stress-ng output: {text}"))
}

/// `stress-ng: metrc: [123] pidfd  2602  2.00  0.42  0.71  1300.86  2300.19`
pub fn parse_stress_ng(text: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        let i = words.iter().position(|w| *w == "pidfd")?;
        // stressor, bogo ops, real, usr, sys, ops/s real, ops/s usr+sys
        let nums: Vec<f64> = words[i + 1..].iter().filter_map(|w| w.parse().ok()).collect();
        (nums.len() >= 6).then(|| nums[4])
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn stress_ng_metrics() {
        let text = "stress-ng: info:  [19624] dispatching hogs: 1 pidfd\n\
stress-ng: metrc: [19624] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s\n\
stress-ng: metrc: [19624]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)\n\
stress-ng: metrc: [19624] pidfd              2602      2.00      0.42      0.71      1300.86        2300.19\n";
        assert_eq!(super::parse_stress_ng(text), Some(1300.86));
        assert_eq!(super::parse_stress_ng("stress-ng: info: [1] dispatching hogs: 1 pidfd\n"), None);
    }
}

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
    /// The hot syscalls the every-path hooks sit on, on fds that are not pidfds (what every
    /// host pays): read(2) of /dev/zero.
    Read,
    /// send + recvmsg(2) on a unix datagram pair.
    Recvmsg,
    /// ioctl(FIONREAD) on a unix socket.
    Ioctl,
    /// openat("/dev/null") + close.
    Openat,
    /// getsockopt(SO_TYPE) on a unix socket.
    Getsockopt,
}

impl Load {
    pub const ALL: [Load; 9] = [
        Load::Fork,
        Load::ClonePidfd,
        Load::PidfdOpen,
        Load::StressNg,
        Load::Read,
        Load::Recvmsg,
        Load::Ioctl,
        Load::Openat,
        Load::Getsockopt,
    ];

    /// The loads of hot syscalls that must not notice the agent (throughput ≥ 0.97×).
    pub const HOT: [Load; 5] = [Load::Read, Load::Recvmsg, Load::Ioctl, Load::Openat, Load::Getsockopt];

    /// The `pidfd-bench-load` argument of one of our loads.
    fn arg(self) -> Option<&'static str> {
        Some(match self {
            Load::Fork => "fork",
            Load::ClonePidfd => "clone-pidfd",
            Load::PidfdOpen => "pidfd-open",
            Load::Read => "read",
            Load::Recvmsg => "recvmsg",
            Load::Ioctl => "ioctl",
            Load::Openat => "openat",
            Load::Getsockopt => "getsockopt",
            Load::StressNg => return None,
        })
    }

    pub fn key(self) -> &'static str {
        match self {
            Load::Fork => "fork",
            Load::ClonePidfd => "clone_pidfd",
            Load::PidfdOpen => "pidfd_open",
            Load::StressNg => "stress_ng_pidfd",
            Load::Read => "read",
            Load::Recvmsg => "recvmsg",
            Load::Ioctl => "ioctl",
            Load::Openat => "openat",
            Load::Getsockopt => "getsockopt",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Load::Fork => "fork+exit+wait (no CLONE_PIDFD)",
            Load::ClonePidfd => "clone(CLONE_PIDFD)+exit+wait",
            Load::PidfdOpen => "pidfd_open+close storm",
            Load::StressNg => "stress-ng --pidfd 1",
            Load::Read => "read(/dev/zero, 1 byte) loop",
            Load::Recvmsg => "send+recvmsg on a unix pair",
            Load::Ioctl => "ioctl(FIONREAD) on a unix socket",
            Load::Openat => "openat(/dev/null)+close",
            Load::Getsockopt => "getsockopt(SO_TYPE) loop",
        }
    }
}

/// Runs `load` for `secs` seconds; returns operations per second.
pub fn run(load: Load, bench_load: &Path, secs: f64) -> Result<f64> {
    match load.arg() {
        Some(arg) => ours(bench_load, &[arg], secs),
        None => stress_ng(secs),
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

//! Per-program cost from the kernel's own accounting: `kernel.bpf_stats_enabled` on for the
//! run (restored by a guard, even on error), then `run_time_ns` / `run_cnt` of the programs a
//! given process holds, read from its `/proc/PID/fdinfo` (so other tools' programs on the same
//! tracepoints are never mixed in) and named through `bpftool prog show`.
use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::{Context, Result};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Keeps `kernel.bpf_stats_enabled` at 1 while alive; puts the old value back on drop, and
/// on SIGINT/SIGTERM too (then exits), so an interrupted bench leaves the sysctl as it was.
pub struct StatsGuard {
    old: String,
    handlers: [(libc::c_int, libc::sighandler_t); 2],
}

/// First byte of the value to restore, for the signal handler.
static OLD_VALUE: AtomicU8 = AtomicU8::new(b'0');

extern "C" fn restore_and_exit(sig: libc::c_int) {
    // Only async-signal-safe calls here: open, write, close, _exit.
    let byte = [OLD_VALUE.load(Ordering::Relaxed)];
    // SAFETY: a NUL-terminated path and a one-byte buffer that outlive the calls.
    unsafe {
        let fd = libc::open(c"/proc/sys/kernel/bpf_stats_enabled".as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::write(fd, byte.as_ptr().cast(), 1);
            libc::close(fd);
        }
        libc::_exit(128 + sig);
    }
}

impl StatsGuard {
    pub fn enable() -> Result<Self> {
        let old = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("reading {SYSCTL}: this kernel has no BPF run-time statistics"))?
            .trim()
            .to_string();
        OLD_VALUE.store(old.bytes().next().unwrap_or(b'0'), Ordering::Relaxed);
        let handler = restore_and_exit as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installs a handler that only makes async-signal-safe calls.
        let handlers = [libc::SIGINT, libc::SIGTERM].map(|sig| (sig, unsafe { libc::signal(sig, handler) }));
        std::fs::write(SYSCTL, "1").with_context(|| format!("enabling {SYSCTL}"))?;
        Ok(Self { old, handlers })
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL, &self.old) {
            eprintln!("bench: could not restore kernel.bpf_stats_enabled={}: {e}", self.old);
        }
        for (sig, old) in self.handlers {
            // SAFETY: puts back the handler that was there before.
            unsafe { libc::signal(sig, old) };
        }
    }
}

/// Cumulative counters of one program.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The programs one process holds, by program id.
pub type Snapshot = HashMap<u32, Counters>;

/// Reads the run-time counters of every BPF program `pid` holds a file descriptor for.
pub fn snapshot(pid: u32) -> Snapshot {
    let mut out = Snapshot::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return out };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // Program fds carry run_cnt; link fds name a program but have no counters.
        if let (Some(id), Some(t), Some(c)) = (field("prog_id"), field("run_time_ns"), field("run_cnt")) {
            out.insert(id as u32, Counters { run_time_ns: t, run_cnt: c });
        }
    }
    out
}

/// Program names (the kernel keeps the first 15 bytes), cached: ids are not reused while
/// the program is loaded.
#[derive(Default)]
pub struct Names {
    cache: HashMap<u32, String>,
}

impl Names {
    pub fn get(&mut self, id: u32) -> String {
        if let Some(n) = self.cache.get(&id) {
            return n.clone();
        }
        let name = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string(), "--json"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("prog#{id}"));
        self.cache.insert(id, name.clone());
        name
    }
}

/// What each program of a process did between two snapshots, by name (programs that did
/// not run are left out).
pub fn delta(before: &Snapshot, after: &Snapshot, names: &mut Names) -> BTreeMap<String, Counters> {
    let mut out: BTreeMap<String, Counters> = BTreeMap::new();
    for (id, a) in after {
        let b = before.get(id).copied().unwrap_or_default();
        let d = Counters {
            run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
            run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
        };
        if d.run_cnt == 0 {
            continue;
        }
        let e = out.entry(names.get(*id)).or_default();
        e.run_time_ns += d.run_time_ns;
        e.run_cnt += d.run_cnt;
    }
    out
}

/// Programs of *other* processes attached to any of `tracepoints` right now (`bpftool perf
/// show`): their cost lands on the same syscalls and makes throughput figures worse.
pub fn foreign_attachments(own: &[u32], tracepoints: &[&str]) -> Vec<String> {
    let Ok(out) = Command::new("bpftool").args(["perf", "show", "--json"]).output() else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    let mut seen = Vec::new();
    for it in items {
        let pid = it["pid"].as_u64().unwrap_or(0) as u32;
        let tp = it["tracepoint"].as_str().unwrap_or_default();
        if !own.contains(&pid) && tracepoints.contains(&tp) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let s = format!("{} (pid {pid}) on {tp}", comm.trim());
            if !seen.contains(&s) {
                seen.push(s);
            }
        }
    }
    seen
}

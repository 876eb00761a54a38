//! The tools under test, started and stopped the way a user would: pidfd-trace itself, the
//! floor program (`pidfd-trace bench-floor`), and the bpftrace peer. Each is a child process
//! that is killed if the bench stops early, and whose CPU time and memory we can read.
use std::{
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The tracepoints every tool attaches to on the paths we measure.
pub const TRACEPOINTS: &[&str] = &[
    "sys_enter_clone",
    "sys_exit_clone",
    "sys_enter_clone3",
    "sys_exit_clone3",
    "sys_enter_pidfd_open",
    "sys_exit_pidfd_open",
];

/// The agent's tracepoints on the hot syscalls of the `Load::HOT` loads (the use and creation
/// paths of pidfd-trace/src/hooks.rs: ioctl, getsockopt, openat, openat2, waitid). The floor
/// attaches there too, so that a hot load's `agent / floor` ratio is what our programs cost
/// beyond what any program on that tracepoint costs (the tracepoint's own record and dispatch).
pub const HOT_TRACEPOINTS: &[&str] = &[
    "sys_enter_ioctl",
    "sys_exit_ioctl",
    "sys_enter_getsockopt",
    "sys_exit_getsockopt",
    "sys_exit_openat",
    "sys_exit_openat2",
    "sys_enter_waitid",
    "sys_exit_waitid",
];

/// The peer: what a user would otherwise write, one line per pidfd_open and per CLONE_PIDFD
/// clone with the same facts our records carry (caller, arguments, result, duration).
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:syscalls:sys_enter_pidfd_open { @ts[tid] = nsecs; @arg[tid] = args->pid; }
tracepoint:syscalls:sys_exit_pidfd_open /@ts[tid]/ {
  printf("%llu %d %d %s pidfd_open pid=%d ret=%d dur=%llu\n", nsecs, pid, tid, comm, @arg[tid], args->ret, nsecs - @ts[tid]);
  delete(@ts[tid]); delete(@arg[tid]);
}
tracepoint:syscalls:sys_enter_clone /args->clone_flags & 0x1000/ { @ts[tid] = nsecs; @arg[tid] = args->clone_flags; }
tracepoint:syscalls:sys_exit_clone /@ts[tid]/ {
  printf("%llu %d %d %s clone flags=%x ret=%d dur=%llu\n", nsecs, pid, tid, comm, @arg[tid], args->ret, nsecs - @ts[tid]);
  delete(@ts[tid]); delete(@arg[tid]);
}
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tool {
    /// Nothing attached: the baseline.
    Without,
    /// `pidfd-trace trace --output json`, stdout to /dev/null.
    Agent,
    /// One per-CPU counter bump on the same tracepoints.
    Floor,
    /// bpftrace printing one line per event (read and discarded, like a pipe to a file).
    Bpftrace,
}

impl Tool {
    pub const ALL: [Tool; 4] = [Tool::Without, Tool::Agent, Tool::Floor, Tool::Bpftrace];

    pub fn key(self) -> &'static str {
        match self {
            Tool::Without => "without",
            Tool::Agent => "agent",
            Tool::Floor => "floor",
            Tool::Bpftrace => "bpftrace",
        }
    }
}

/// A started tool. Dropping it kills the process.
pub struct Running {
    pub tool: Tool,
    child: Child,
    pub pid: u32,
    /// From spawn to the tool saying its probes are attached.
    pub attach_time: Duration,
    stderr: Arc<Mutex<Vec<String>>>,
}

pub struct Binaries<'a> {
    pub agent: &'a Path,
}

/// Starts `tool` and waits until its probes are attached; `None` for `Tool::Without`.
pub fn start(tool: Tool, bins: &Binaries<'_>, agent_args: &[&str]) -> Result<Option<Running>> {
    let (mut cmd, marker) = match tool {
        Tool::Without => return Ok(None),
        Tool::Agent => {
            let mut c = Command::new(bins.agent);
            c.args(agent_args).stdout(Stdio::null());
            (c, "attached")
        }
        Tool::Floor => {
            let mut c = Command::new(bins.agent);
            c.arg("bench-floor");
            for tp in TRACEPOINTS.iter().chain(HOT_TRACEPOINTS) {
                c.args(["--tracepoint", &format!("syscalls:{tp}")]);
            }
            c.stdout(Stdio::null());
            (c, "attached")
        }
        Tool::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", BPFTRACE_SCRIPT])
                // bpftrace's own hook for test harnesses: a line on stderr once every probe
                // is attached.
                .env("__BPFTRACE_NOTIFY_PROBES_ATTACHED", "1")
                .stdout(Stdio::piped());
            (c, "__BPFTRACE_NOTIFY_PROBES_ATTACHED")
        }
    };
    let shown = format!("{:?}", cmd.get_program());
    // SAFETY: prctl is async-signal-safe. If the bench dies without running its destructors
    // (SIGKILL), the tool does not stay attached.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.stderr(Stdio::piped()).spawn().with_context(|| format!("cannot start {shown}"))?;
    if let Some(mut out) = child.stdout.take() {
        // What a pipe to a file would do: read everything, keep nothing.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while matches!(out.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    {
        let err = child.stderr.take().expect("piped");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains(marker)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                lines.lock().expect("stderr lines").push(line);
            }
        });
    }
    let pid = child.id();
    let mut running = Running { tool, child, pid, attach_time: Duration::ZERO, stderr };
    let deadline = t0 + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(()) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                if let Some(status) = running.child.try_wait()? {
                    std::thread::sleep(Duration::from_millis(100));
                    bail!("{shown} exited before attaching ({status}): {}", running.stderr_text());
                }
            }
            _ => bail!("{shown} did not attach within 60 s: {}", running.stderr_text()),
        }
    }
    running.attach_time = t0.elapsed();
    Ok(Some(running))
}

impl Running {
    fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lines").join(" | ")
    }

    /// Stops the tool as a user would (SIGINT for bpftrace, SIGTERM otherwise), waits for it
    /// and returns its stderr.
    pub fn stop(mut self) -> Result<Vec<String>> {
        let sig = if self.tool == Tool::Bpftrace { libc::SIGINT } else { libc::SIGTERM };
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("{} did not stop within 20 s of signal {sig}", self.tool.key());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let lines = self.stderr.lock().expect("stderr lines").clone();
        if !status.success() && self.tool != Tool::Bpftrace {
            bail!("{} exited with {status}: {}", self.tool.key(), lines.join(" | "));
        }
        Ok(lines)
    }

    /// CPU time used so far by every thread of the process, in ns (schedstat).
    pub fn cpu_ns(&self) -> u64 {
        cpu_ns(self.pid)
    }

    /// Resident set size now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid, "VmRSS:")
    }

    /// Peak resident set size, in KiB.
    pub fn hwm_kib(&self) -> u64 {
        status_kib(self.pid, "VmHWM:")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The agent's closing line: `pidfd-trace: N events received, N shown, N lost, N undecodable`.
pub fn agent_summary(stderr: &[String]) -> Option<(u64, u64)> {
    let line = stderr.iter().rev().find(|l| l.contains("events received"))?;
    let num = |word: &str| -> Option<u64> {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let i = words.iter().position(|w| *w == word)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    Some((num("events")?, num("lost")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_line() {
        let lines = vec![
            "pidfd-trace: attached 5 hooks".to_string(),
            "pidfd-trace: 208640 events received, 208640 shown, 17 lost, 0 undecodable".to_string(),
        ];
        assert_eq!(super::agent_summary(&lines), Some((208640, 17)));
        assert_eq!(super::agent_summary(&lines[..1]), None);
    }
}

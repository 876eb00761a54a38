//! pidfd-workload: the in-tree workload that produces every pidfd outcome for real, and the
//! suite that runs it against a live agent and checks the exact events (host tests and VMs).
mod cgroup;
mod closes;
mod coredump;
mod holders;
mod paths;
mod risky;
mod scenarios;
mod suite;
mod sys;
mod truth;
mod uses;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pidfd-workload", about = "Drive real pidfd syscalls and check what pidfd-trace reports")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario in this process and print what the agent must report (JSON).
    Scenario {
        name: String,
        /// Set this process's comm first (filter tests).
        #[arg(long)]
        comm: Option<String>,
    },
    /// List the scenarios.
    List,
    /// pidfd_open + close of itself N times, as fast as possible; prints how many succeeded.
    Storm {
        n: u64,
        /// Afterwards, pause, then make one more pidfd_open on every CPU, so that a record
        /// lost at the very end of the storm still shows as a per-CPU sequence gap.
        #[arg(long)]
        settle: bool,
    },
    /// For SECONDS: clone(CLONE_PIDFD) children that exit at once, alternating with refused
    /// CLONE_PIDFD|CLONE_PARENT_SETTID clones; prints {"ok":N,"einval":M}.
    CloneStorm { seconds: u64 },
    /// N short-lived threads (in batches), each doing one pidfd_open + close before exiting.
    Threads { n: u64 },
    /// Hold pidfds of each kind (to a live child, to reaped and zombie children, thread
    /// pidfds, nonblocking ones), print them as JSON, keep them until stdin closes.
    Hold {
        #[arg(long, default_value_t = 0)]
        live: u32,
        #[arg(long, default_value_t = 0)]
        reaped: u32,
        #[arg(long, default_value_t = 0)]
        zombie: u32,
        /// pidfd_open(tid, PIDFD_THREAD): 6.9+ only (fd is -22 before).
        #[arg(long, default_value_t = 0)]
        thread: u32,
        #[arg(long, default_value_t = 0)]
        nonblock: u32,
        #[arg(long)]
        comm: Option<String>,
        /// A second thread makes and holds the pidfds while the main thread (the leader)
        /// exits at once: the process lives on with a zombie leader, as after
        /// pthread_exit() in main.
        #[arg(long)]
        leader_exits: bool,
    },
    /// Leak pidfds in one of the patterns seen in production; prints JSON, holds until stdin
    /// closes.
    Leak {
        #[arg(long, value_enum)]
        pattern: holders::Pattern,
        /// Pause between two leaks (ms).
        #[arg(long, default_value_t = 100)]
        every_ms: u64,
        /// Leak for this long, then hold.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// RLIMIT_NOFILE for the emfile pattern.
        #[arg(long, default_value_t = 128)]
        nofile: u64,
        /// How many pidfds the steady pattern holds.
        #[arg(long, default_value_t = 300)]
        steady: u32,
        #[arg(long)]
        comm: Option<String>,
    },
    /// PROCS processes holding FDS fds each (one a pidfd): the host for the inventory's cost
    /// figures. Holds until stdin closes.
    FdHost {
        #[arg(long, default_value_t = 10_000)]
        procs: u32,
        #[arg(long, default_value_t = 10)]
        fds: u32,
    },
    /// Start the agent, run every scenario, and compare its events with what happened.
    /// The `core_pattern` helper the `coredump_helper` check installs (not for people): drains
    /// the core and writes what it found at fd `FD` (the kernel's pidfd) to REPORT.
    #[command(hide = true)]
    /// (FD is text: a kernel without `%F` passes an empty argument in its place.)
    CoredumpHelper { report: PathBuf, fd: Option<String> },
    Suite {
        /// The pidfd-trace binary.
        #[arg(long)]
        agent: PathBuf,
        /// Mode to force on the agent (auto, fentry, kprobe, tracepoint).
        #[arg(long, default_value = "tracepoint")]
        mode: String,
        /// One JSON result per line on stdout (the VM harness reads these).
        #[arg(long)]
        json: bool,
        /// Run only these scenarios (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Seconds to wait for the agent's `attached` line and for each scenario's events.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Scenario { name, comm } => {
            if let Some(c) = comm {
                sys::set_comm(&c);
            }
            let Some(s) = scenarios::find(&name) else {
                eprintln!("pidfd-workload: unknown scenario {name}; see `pidfd-workload list`");
                return ExitCode::from(2);
            };
            let out = match (s.run)() {
                Ok(expect) => serde_json::json!({"pid": truth::report_pid(), "expect": expect}),
                Err(e) => serde_json::json!({"pid": std::process::id(), "error": e}),
            };
            println!("{out}");
            ExitCode::SUCCESS
        }
        Cmd::CoredumpHelper { report, fd } => coredump::helper(&report, fd.and_then(|f| f.parse().ok())),
        Cmd::List => {
            for s in scenarios::ALL {
                println!("{:<22} {}", s.name, s.what);
            }
            ExitCode::SUCCESS
        }
        Cmd::Storm { n, settle } => {
            let pid = std::process::id() as i32;
            let mut ok = (0..n).filter(|_| close_ok(sys::pidfd_open(pid, 0))).count();
            if settle {
                std::thread::sleep(std::time::Duration::from_millis(500));
                ok += settle_on_every_cpu(pid);
            }
            println!("{ok}");
            ExitCode::SUCCESS
        }
        Cmd::CloneStorm { seconds } => {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
            let (mut ok, mut einval) = (0u64, 0u64);
            while std::time::Instant::now() < end {
                let mut pidfd = -1;
                let r = sys::clone_fork(sys::CLONE_PIDFD | sys::SIGCHLD, &mut pidfd);
                if r > 0 {
                    sys::wait_child(r);
                    unsafe { libc::close(pidfd) };
                    ok += 1;
                }
                let r =
                    sys::clone_fork(sys::CLONE_PIDFD | sys::CLONE_PARENT_SETTID | sys::SIGCHLD, &mut pidfd);
                einval += u64::from(r == -22);
            }
            println!("{}", serde_json::json!({"ok": ok, "einval": einval}));
            ExitCode::SUCCESS
        }
        Cmd::Threads { n } => {
            let pid = std::process::id() as i32;
            let mut ok = 0u64;
            for batch in (0..n).collect::<Vec<_>>().chunks(256) {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|_| std::thread::spawn(move || close_ok(sys::pidfd_open(pid, 0))))
                    .collect();
                ok += handles.into_iter().map(|h| u64::from(h.join().unwrap_or(false))).sum::<u64>();
            }
            println!("{ok}");
            ExitCode::SUCCESS
        }
        Cmd::Hold { live, reaped, zombie, thread, nonblock, comm, leader_exits } => {
            if let Some(c) = comm {
                sys::set_comm(&c);
            }
            let spec = holders::HoldSpec { live, reaped, zombie, thread, nonblock };
            if leader_exits {
                std::thread::spawn(move || holders::hold(&spec));
                sys::exit_thread()
            }
            holders::hold(&spec)
        }
        Cmd::Leak { pattern, every_ms, seconds, nofile, steady, comm } => {
            if let Some(c) = comm {
                sys::set_comm(&c);
            }
            holders::leak(pattern, std::time::Duration::from_millis(every_ms), seconds, nofile, steady)
        }
        Cmd::FdHost { procs, fds } => holders::fd_host(procs, fds),
        Cmd::Suite { agent, mode, json, only, timeout } => suite::run(&agent, &mode, json, &only, timeout),
    }
}

/// Whether the running kernel is at least `major.minor` (for scenarios whose *kernel*
/// semantics changed; the agent itself never decides attach modes this way).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse::<u32>().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (major, minor)
}

fn close_ok(fd: i64) -> bool {
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
    }
    fd >= 0
}

/// One pidfd_open pinned to each CPU in turn; returns how many succeeded.
fn settle_on_every_cpu(pid: i32) -> usize {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut ok = 0;
    for cpu in 0..cpus {
        // SAFETY: a zeroed cpu_set_t with one bit set, for this thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        ok += usize::from(close_ok(sys::pidfd_open(pid, 0)));
    }
    ok
}

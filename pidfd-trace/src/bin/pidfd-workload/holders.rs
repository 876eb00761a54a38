//! Processes that hold pidfds, for the open-pidfd inventory tests (`ls`, gauges, leak
//! detection). Each prints one JSON line when ready (and more as it goes), then keeps its
//! pidfds until its stdin closes, so a test that dies takes them with it.
use std::{io::Write, time::Duration};

use crate::sys;

/// PIDFD_THREAD (6.9+), which is O_EXCL.
const PIDFD_THREAD: u32 = 0o200;
const PIDFD_NONBLOCK: u32 = 0o4000;

/// What `hold` makes.
pub struct HoldSpec {
    pub live: u32,
    pub reaped: u32,
    pub zombie: u32,
    pub thread: u32,
    pub nonblock: u32,
}

fn say(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Exits the process once stdin reaches EOF.
fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: read into a local buffer.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // SAFETY: ends the process; children are killed by their death signal.
                unsafe { libc::_exit(0) };
            }
        }
    });
}

/// Forks a child that dies with this process; returns its pid.
fn child_until_parent_dies() -> i32 {
    // SAFETY: the child only sets its death signal and pauses.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            loop {
                libc::pause();
            }
        }
    }
    pid
}

/// A clone(CLONE_PIDFD) child that exits at once; returns (pidfd, child pid).
fn exited_child() -> (i32, i64) {
    let mut pidfd = -1;
    let pid = sys::clone_fork(sys::CLONE_PIDFD | sys::SIGCHLD, &mut pidfd);
    (pidfd, pid)
}

/// Holds the pidfds of `spec`, prints `{"pid", "pidfds":[{fd, target, kind}]}`, waits.
pub fn hold(spec: &HoldSpec) -> ! {
    let mut fds = Vec::new();
    let me = std::process::id() as i32;
    let target = child_until_parent_dies();
    for _ in 0..spec.live {
        fds.push(serde_json::json!({"fd": sys::pidfd_open(target, 0), "target": target, "kind": "live"}));
    }
    for _ in 0..spec.nonblock {
        fds.push(
            serde_json::json!({"fd": sys::pidfd_open(me, PIDFD_NONBLOCK), "target": me, "kind": "nonblock"}),
        );
    }
    for _ in 0..spec.reaped {
        let (fd, pid) = exited_child();
        sys::wait_child(pid);
        fds.push(serde_json::json!({"fd": fd, "target": pid, "kind": "reaped"}));
    }
    for _ in 0..spec.zombie {
        let (fd, pid) = exited_child();
        // Not reaped: a zombie until this process exits. Wait until it has exited.
        for _ in 0..1000 {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if st.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        fds.push(serde_json::json!({"fd": fd, "target": pid, "kind": "zombie"}));
    }
    if spec.thread > 0 {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(sys::gettid());
            loop {
                std::thread::park();
            }
        });
        let tid = rx.recv().unwrap_or(0);
        for _ in 0..spec.thread {
            let fd = sys::pidfd_open(tid, PIDFD_THREAD);
            fds.push(serde_json::json!({"fd": fd, "target": tid, "kind": "thread"}));
        }
    }
    say(serde_json::json!({"pid": me, "pidfds": fds}));
    exit_on_stdin_eof();
    loop {
        std::thread::park();
    }
}

/// The leak patterns of `leak --pattern`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Pattern {
    /// A pidfd_open per "lookup" of a long-lived child, never closed (Go os.FindProcess).
    Lookup,
    /// One clone(CLONE_PIDFD) per child, child reaped, pidfd never closed (stale pidfds).
    PerChild,
    /// Bursts of 15 pidfd_open per "request", never closed.
    Burst,
    /// Leaks pidfd_open until RLIMIT_NOFILE (soft limit lowered to `--nofile`), then one
    /// clone(CLONE_PIDFD) that fails EMFILE; prints `{"emfile": {"held", "clone_ret"}}`.
    Emfile,
    /// Opens `--steady` pidfds at once and holds them: not a leak.
    Steady,
}

/// Runs one leak pattern every `every`, for `seconds` (then holds what it has).
pub fn leak(pattern: Pattern, every: Duration, seconds: u64, nofile: u64, steady: u32) -> ! {
    let me = std::process::id() as i32;
    exit_on_stdin_eof();
    let target = child_until_parent_dies();
    say(serde_json::json!({"pid": me, "pattern": format!("{pattern:?}")}));
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut held = 0u64;
    match pattern {
        Pattern::Steady => {
            for _ in 0..steady {
                held += u64::from(sys::pidfd_open(target, 0) >= 0);
            }
            say(serde_json::json!({"held": held}));
        }
        Pattern::Emfile => {
            let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
            // SAFETY: lowering our own limit.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
            loop {
                let fd = sys::pidfd_open(target, 0);
                if fd < 0 {
                    break;
                }
                held += 1;
                std::thread::sleep(every);
            }
            let (_, r) = exited_child();
            say(serde_json::json!({"emfile": {"held": held, "clone_ret": r}}));
        }
        _ => {
            while std::time::Instant::now() < end {
                match pattern {
                    Pattern::Lookup => held += u64::from(sys::pidfd_open(target, 0) >= 0),
                    Pattern::PerChild => {
                        let (fd, pid) = exited_child();
                        sys::wait_child(pid);
                        held += u64::from(fd >= 0);
                    }
                    Pattern::Burst => {
                        for _ in 0..15 {
                            held += u64::from(sys::pidfd_open(target, 0) >= 0);
                        }
                    }
                    _ => unreachable!(),
                }
                std::thread::sleep(every);
            }
            say(serde_json::json!({"held": held}));
        }
    }
    loop {
        std::thread::park();
    }
}

/// A host with `procs` processes holding `fds` fds each (one of them a pidfd), for the
/// inventory cost figures. Prints `{"ready": procs}` once all exist, then waits for stdin
/// EOF; every child dies with it.
pub fn fd_host(procs: u32, fds: u32) -> ! {
    exit_on_stdin_eof();
    let mut made = 0;
    for _ in 0..procs {
        // SAFETY: the child opens fds with raw calls and pauses; it dies with its parent.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let lim = libc::rlimit { rlim_cur: u64::from(fds) + 16, rlim_max: u64::from(fds) + 16 };
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                sys::pidfd_open(libc::getppid(), 0);
                for _ in 1..fds {
                    libc::dup(0);
                }
                loop {
                    libc::pause();
                }
            }
        }
        made += u32::from(pid > 0);
    }
    say(serde_json::json!({"ready": made}));
    loop {
        std::thread::park();
    }
}

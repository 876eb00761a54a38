//! What the integration tests share: starting the agent with its stderr collected line by
//! line, and waiting for the `attached` line that marks it ready.
#![allow(dead_code)] // each test crate uses its own part of this

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub const AGENT: &str = env!("CARGO_BIN_EXE_pidfd-trace");
pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_pidfd-workload");

pub fn require_root(what: &str) {
    assert!(unsafe { libc::geteuid() } == 0, "{what} need root: run `cargo xtask test` as root");
}

/// Spawns `cmd` (stdin closed, stderr piped) and collects its stderr lines on a thread.
pub fn spawn_collecting(cmd: &mut Command) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the agent");
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let err = child.stderr.take().expect("piped");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    (child, lines)
}

/// Waits until a stderr line contains `attached` (the ready line of docs/cli.md); panics with the
/// agent's stderr if it exits first or takes longer than `timeout`.
pub fn wait_attached(child: &mut Child, lines: &Mutex<Vec<String>>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = lines.lock().unwrap().clone();
        if seen.iter().any(|l| l.contains("attached")) {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "agent exited before attaching: {seen:?}");
        assert!(Instant::now() < deadline, "agent did not attach within {timeout:?}: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

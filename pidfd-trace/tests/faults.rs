//! Faults: the agent leaves nothing in the kernel however it is stopped, runs side by side
//! with a second copy, and its per-thread entry state does not leak. Checked against the
//! kernel's own lists of loaded programs and maps. Needs root.
mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

struct Agent {
    child: Child,
    stdout: mpsc::Receiver<String>,
}

fn start(extra: &[&str]) -> Agent {
    start_with(extra, &[])
}

fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Agent {
    common::require_root("fault tests");
    let (mut child, lines) = common::spawn_collecting(
        Command::new(common::AGENT)
            .args(["trace", "--output", "json"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped()),
    );
    common::wait_attached(&mut child, &lines, Duration::from_secs(60));
    let (otx, orx) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            let _ = otx.send(l);
        }
    });
    Agent { child, stdout: orx }
}

/// (program ids, map ids) the process holds fds for, from /proc/<pid>/fdinfo.
fn bpf_objects(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let (mut progs, mut maps) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().flatten() {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in info.lines() {
            if let Some(v) = l.strip_prefix("prog_id:") {
                progs.push(v.trim().parse().unwrap());
            }
            if let Some(v) = l.strip_prefix("map_id:") {
                maps.push(v.trim().parse().unwrap());
            }
        }
    }
    progs.sort_unstable();
    progs.dedup();
    maps.sort_unstable();
    maps.dedup();
    (progs, maps)
}

fn loaded(progs: &[u32], maps: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let p =
        aya::programs::loaded_programs().flatten().map(|p| p.id()).filter(|id| progs.contains(id)).collect();
    let m = aya::maps::loaded_maps().flatten().map(|m| m.id()).filter(|id| maps.contains(id)).collect();
    (p, m)
}

/// Waits for the kernel to free them (it does so asynchronously after the last fd closes).
fn assert_gone(progs: &[u32], maps: &[u32], how: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (p, m) = loaded(progs, maps);
        if p.is_empty() && m.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "after {how}: programs {p:?} and maps {m:?} are still loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nothing_left_in_the_kernel_after_sigterm_sigint_sigkill() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT"), (libc::SIGKILL, "SIGKILL")] {
        let mut agent = start(&[]);
        let pid = agent.child.id();
        let (progs, maps) = bpf_objects(pid);
        assert!(progs.len() >= 10 && !maps.is_empty(), "{name}: agent holds {progs:?} {maps:?}");
        assert_eq!(loaded(&progs, &maps), (progs.clone(), maps.clone()), "all loaded while running");
        unsafe { libc::kill(pid as i32, sig) };
        let status = agent.child.wait().unwrap();
        if sig != libc::SIGKILL {
            assert!(status.success(), "{name}: clean exit, got {status}");
        }
        assert_gone(&progs, &maps, name);
    }
}

#[test]
fn two_agents_side_by_side() {
    let a = start(&[]);
    let mut b = start(&[]);
    let me = std::process::id() as i32;
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) } as i32;
    assert!(fd >= 0);
    unsafe { libc::close(fd) };
    for (n, agent) in [("first", &a), ("second", &b)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = agent.stdout.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            let line = line.unwrap_or_else(|_| panic!("{n} agent did not report our pidfd_open"));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["pid"] == me && v["event"] == "pidfd_open" {
                assert_eq!(v["ret"], fd);
                break;
            }
        }
    }
    let mut a = a;
    for agent in [&mut a, &mut b] {
        unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
        assert!(agent.child.wait().unwrap().success());
    }
}

/// Entries of the agent's ENTER_STATE map right now that belong to processes `ours` (by
/// tgid: other processes on the host may be inside pidfd calls meanwhile).
fn enter_state_entries(maps: &[u32], ours: &[u32]) -> usize {
    let id = aya::maps::loaded_maps()
        .flatten()
        .find(|m| maps.contains(&m.id()) && m.name_as_str() == Some("ENTER_STATE"))
        .expect("agent has an ENTER_STATE map")
        .id();
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_id(id).unwrap()).unwrap();
    let hm = aya::maps::HashMap::<_, u64, pidfd_trace_common::EnterState>::try_from(&map).unwrap();
    hm.keys().filter_map(Result::ok).filter(|k| ours.contains(&((k >> 32) as u32))).count()
}

/// Both entry-state stores (docs/cli.md `entry_state`): this kernel's choice, and the hash
/// that kernels without task storage use (forced; the object's patched `TASK_STATE` must load).
#[test]
fn entry_state_does_not_leak() {
    for store in ["", "hash"] {
        entry_state_does_not_leak_in(store);
    }
}

fn entry_state_does_not_leak_in(store: &str) {
    let mut agent = start_with(&[], &[("PIDFD_TRACE_ENTRY_STATE", store)]);
    let (_, maps) = bpf_objects(agent.child.id());
    let workload = env!("CARGO_BIN_EXE_pidfd-workload");
    let mut ours = Vec::new();
    let first = Command::new(workload).args(["threads", "100000"]).stdout(Stdio::piped()).spawn().unwrap();
    ours.push(first.id());
    let out = first.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100000", "every thread's pidfd_open worked");
    // A process killed while its threads are inside pidfd syscalls.
    for _ in 0..20 {
        let mut c = Command::new(workload).args(["threads", "5000"]).stdout(Stdio::null()).spawn().unwrap();
        ours.push(c.id());
        std::thread::sleep(Duration::from_millis(30));
        let _ = c.kill();
        let _ = c.wait();
    }
    // Entries of threads that exited mid-call are swept every 10 s.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut n = enter_state_entries(&maps, &ours);
    while n > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        n = enter_state_entries(&maps, &ours);
    }
    assert_eq!(n, 0, "ENTER_STATE entries left after 100k threads and 20 killed processes ({store:?} store)");
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    assert!(agent.child.wait().unwrap().success());
}

/// Waits until `pid` has reached main: SIGTERM blocked (main's first instruction) or caught
/// (the held handler), as /proc/PID/status shows (SigBlk, SigCgt; bit 14 = signal 15). No
/// program can turn a signal that comes before its first instruction (exec, the dynamic
/// loader) into anything but the default action, and on a busy CI host that took over 20 ms.
fn wait_for_main(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let term = 1u64 << (libc::SIGTERM - 1);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let mask = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        if (mask("SigBlk:") | mask("SigCgt:")) & term != 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never reached main (SIGTERM neither blocked nor caught)"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A stop signal while the agent is still starting (loading takes a second or more: BTF, the
/// verifier) is a clean stop: exit 0 and the closing summary, for `trace` and `serve` alike
/// (docs/cli.md "Output and exit status"), from main's first instruction on. serve used to die
/// with status 143 during its first ~1.5 s: its handlers came only with its tokio runtime,
/// after loading.
#[test]
fn stop_signal_during_start_up_is_a_clean_stop() {
    common::require_root("fault tests");
    let cmds: [&[&str]; 2] =
        [&["trace", "--output", "json"], &["serve", "--web.listen-address", "127.0.0.1:0"]];
    for cmd in cmds {
        for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
            for delay_ms in [0u64, 20, 300, 1000] {
                let child = Command::new(common::AGENT)
                    .args(cmd)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                wait_for_main(child.id());
                std::thread::sleep(Duration::from_millis(delay_ms));
                unsafe { libc::kill(child.id() as i32, sig) };
                let out = child.wait_with_output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                let what = format!("{} with {name} {delay_ms} ms after reaching main", cmd[0]);
                assert!(out.status.success(), "{what}: clean exit, got {}; stderr:\n{err}", out.status);
                assert!(
                    err.contains("events received"),
                    "{what}: the closing summary is printed; stderr:\n{err}"
                );
            }
        }
    }
}

//! Host integration: the real agent on the running kernel in tracepoint mode, driven by the
//! in-tree workload; each scenario asserts the exact events its syscalls must produce.
//! Needs root (loads eBPF programs); `cargo xtask test` runs it as such.
use std::{collections::HashMap, process::Command, sync::OnceLock};

/// Runs the whole suite once (one agent for all scenarios) and keeps each result.
fn results() -> &'static HashMap<String, (String, String)> {
    static RESULTS: OnceLock<HashMap<String, (String, String)>> = OnceLock::new();
    RESULTS.get_or_init(|| {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "host integration tests need root: run `cargo xtask test` as root"
        );
        let out = Command::new(env!("CARGO_BIN_EXE_pidfd-workload"))
            .args(["suite", "--json", "--mode", "tracepoint", "--timeout", "30"])
            .arg("--agent")
            .arg(env!("CARGO_BIN_EXE_pidfd-trace"))
            .output()
            .expect("run pidfd-workload suite");
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("suite prints JSON lines");
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                (s("scenario"), (s("result"), s("detail")))
            })
            .collect()
    })
}

fn check(name: &str) {
    let (result, detail) = results().get(name).unwrap_or_else(|| panic!("suite did not run scenario {name}"));
    assert_eq!(result, "pass", "{name}: {detail}");
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { check(stringify!($name)); } )* };
}

scenarios!(
    clone_pidfd_ok,
    clone3_pidfd_ok,
    clone_settid_einval,
    clone_efault,
    clone3_efault,
    clone_emfile,
    clone_pids_limit,
    clone3_thread,
    pidfd_open_ok,
    pidfd_open_esrch,
    pidfd_open_einval,
    send_signal_ok,
    send_signal_ebadf,
    getfd_ok,
    getfd_ebadf,
    waitid_pidfd,
    getfd_exiting,
    getfd_cred_mismatch,
    getfd_cross_container,
    getfd_benign,
    plain_fork_silent,
    so_peerpidfd,
    pidfs_handle,
    reopen,
    scm_pidfd_blind,
    fanotify_blind,
    getfd_pidfd_copy,
    // Issue 10 (kernel-truth).
    clone_forged_slot,
    send_signal_proc_dir,
    pid_namespace,
    thread_names,
    pidfd_open_bad_pid,
    seccomp_denied,
    clone3_args_not_resident,
    compat_calls,
    compat_getfd_cross_container,
    clone_pids_ancestor_limit,
    short_lived_container,
    clone3_args_efault,
    risky_counter,
    close_tracking,
    filter_comm_failures_only,
    filter_pid,
    agent_stops_cleanly,
    setns_pidfd,
    process_madvise,
    process_mrelease,
    pidfd_ioctl,
    clone3_autokill,
);

/// The reopen scenario alone in a fresh agent: its O_PATH open of a pidfd comes before any
/// real reopen, so an agent that learnt the pidfd `f_op` from it would miss every reopen
/// after (break-it finding: one O_PATH open blinded the reopen, SO_PEERPIDFD and pidfs-handle
/// paths for the agent's whole life).
#[test]
fn reopen_after_opath_in_a_fresh_agent() {
    let out = Command::new(env!("CARGO_BIN_EXE_pidfd-workload"))
        .args(["suite", "--json", "--mode", "tracepoint", "--timeout", "30", "--only", "reopen"])
        .arg("--agent")
        .arg(env!("CARGO_BIN_EXE_pidfd-trace"))
        .output()
        .expect("run pidfd-workload suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("\"reopen\""))
        .unwrap_or_else(|| panic!("no reopen result: {stdout}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
    assert_eq!(v["result"], "pass", "{line}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The coredump helper's pidfd (issue 11): the check changes the host-wide core_pattern, so on
/// the host it skips and says where it runs (the VM matrix guests, function modes).
#[test]
fn coredump_helper() {
    let (result, detail) = results().get("coredump_helper").expect("suite ran coredump_helper");
    assert_eq!(result, "skip", "{detail}");
    assert!(detail.contains("VM matrix"), "{detail}");
}

#[test]
fn suite_has_no_scenario_without_a_test() {
    let mut names: Vec<&String> = results().keys().collect();
    names.sort();
    let tested = include_str!("host_tracepoint.rs");
    for n in names {
        assert!(
            tested.contains(&format!("    {n},")) || tested.contains(&format!("fn {n}() {{")),
            "scenario {n} has no #[test] here"
        );
    }
}

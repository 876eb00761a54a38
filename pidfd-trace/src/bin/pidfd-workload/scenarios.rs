//! Scenarios: each runs in its own process, makes real syscalls, and reports what the kernel
//! returned as the exact events the agent must print (field subsets of docs/events.md).
//! Every scenario ends with a sentinel pidfd_open of itself, so the suite knows when all of
//! a scenario's events have arrived.
use serde_json::{Value, json};

use crate::{
    sys::{
        self, CLONE_PARENT_SETTID, CLONE_PIDFD, CLONE_SIGHAND, CLONE_THREAD, CLONE_VM, CloneArgs, SIGCHLD,
    },
    truth,
};

pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub run: fn() -> Result<Vec<Value>, String>,
}

pub const ALL: &[Scenario] = &[
    Scenario { name: "clone_pidfd_ok", what: "clone(CLONE_PIDFD) succeeds", run: clone_pidfd_ok },
    Scenario { name: "clone3_pidfd_ok", what: "clone3(CLONE_PIDFD) succeeds", run: clone3_pidfd_ok },
    Scenario {
        name: "clone_settid_einval",
        what: "CLONE_PIDFD|CLONE_PARENT_SETTID → EINVAL, stage flags",
        run: clone_settid_einval,
    },
    Scenario {
        name: "clone_efault",
        what: "clone, read-only pidfd pointer → EFAULT, stage user_memory",
        run: clone_efault,
    },
    Scenario {
        name: "clone3_efault",
        what: "clone3, read-only args.pidfd → EFAULT, stage user_memory",
        run: clone3_efault,
    },
    Scenario {
        name: "clone_emfile",
        what: "RLIMIT_NOFILE exhausted → EMFILE, stage fd_alloc",
        run: clone_emfile,
    },
    Scenario {
        name: "clone_pids_limit",
        what: "pids cgroup at pids.max → EAGAIN, stage pids_cgroup",
        run: clone_pids_limit,
    },
    Scenario {
        name: "clone3_thread",
        what: "CLONE_PIDFD|CLONE_THREAD: EINVAL before 6.9, thread pidfd after",
        run: clone3_thread,
    },
    Scenario { name: "pidfd_open_ok", what: "pidfd_open of a child succeeds", run: pidfd_open_ok },
    Scenario {
        name: "pidfd_open_esrch", what: "pidfd_open of a reaped pid → ESRCH", run: pidfd_open_esrch
    },
    Scenario {
        name: "pidfd_open_einval",
        what: "pidfd_open with an unknown flag → EINVAL, stage flags",
        run: pidfd_open_einval,
    },
    Scenario {
        name: "send_signal_ok",
        what: "pidfd_send_signal(SIGTERM) to a child succeeds",
        run: send_signal_ok,
    },
    Scenario {
        name: "send_signal_ebadf",
        what: "pidfd_send_signal on a non-pidfd → EBADF",
        run: send_signal_ebadf,
    },
    Scenario { name: "getfd_ok", what: "pidfd_getfd of a child's fd succeeds", run: getfd_ok },
    Scenario { name: "getfd_ebadf", what: "pidfd_getfd of a closed fd → EBADF", run: getfd_ebadf },
    Scenario {
        name: "waitid_pidfd",
        what: "waitid(P_PIDFD) reaps a child, then ECHILD; a P_PID wait is not recorded",
        run: waitid_pidfd,
    },
    Scenario {
        name: "getfd_exiting",
        what: "pidfd_getfd from a child stopped at PTRACE_EVENT_EXIT after exit_group → risk target_exiting",
        run: crate::risky::getfd_exiting,
    },
    Scenario {
        name: "getfd_cred_mismatch",
        what: "root takes fds from uid 65534 (plain, and with euid 0) → risk cred_mismatch",
        run: crate::risky::getfd_cred_mismatch,
    },
    Scenario {
        name: "getfd_cross_container",
        what: "caller and target in two libpod-*.scope cgroups → risk cross_container",
        run: crate::risky::getfd_cross_container,
    },
    Scenario {
        name: "getfd_benign",
        what: "2,000 pidfd_getfd of a live peer's memfd and socket, same uid and cgroup → no risk",
        run: crate::risky::getfd_benign,
    },
    Scenario {
        name: "plain_fork_silent",
        what: "fork() without CLONE_PIDFD produces no event",
        run: plain_fork_silent,
    },
    Scenario {
        name: "so_peerpidfd",
        what: "getsockopt(SO_PEERPIDFD): ok, ENODATA, EFAULT (user_memory); SO_PEERCRED not recorded",
        run: crate::paths::so_peerpidfd,
    },
    Scenario {
        name: "pidfs_handle",
        what: "open_by_handle_at of a pidfs handle: ok, ESTALE once reaped; a cgroupfs handle not recorded",
        run: crate::paths::pidfs_handle,
    },
    Scenario {
        name: "reopen",
        what: "open/openat2 of /proc/self/fd/<pidfd>: live and reaped target; /dev/null not recorded",
        run: crate::paths::reopen,
    },
    Scenario {
        name: "scm_pidfd_blind",
        what: "recvmsg SCM_PIDFD makes a pidfd: no event in tracepoint mode (declared blind), the scm_pidfd event in fentry/kprobe modes",
        run: crate::paths::scm_pidfd_blind,
    },
    Scenario {
        name: "fanotify_blind",
        what: "a FAN_REPORT_PIDFD fanotify read makes a pidfd: no event in tracepoint mode (declared blind), the fanotify event in fentry/kprobe modes",
        run: crate::paths::fanotify_blind,
    },
    Scenario {
        name: "getfd_pidfd_copy",
        what: "pidfd_getfd of a child's pidfd: a copied pidfd (file_kind pidfd, pidfd_ino)",
        run: crate::paths::getfd_pidfd_copy,
    },
    // Issue 10 (kernel-truth): callers off the common path.
    #[cfg(target_arch = "x86_64")]
    Scenario {
        name: "clone_forged_slot",
        what: "CLONE_VM|CLONE_VFORK child overwrites the pidfd slot (12345, CHILD_SETTID, CHILD_CLEARTID): the installed fd",
        run: truth::clone_forged_slot,
    },
    Scenario {
        name: "send_signal_proc_dir",
        what: "pidfd_send_signal on /proc/<pid> (target) and on a sysfs file (EBADF, no target); getfd on /proc/<pid>",
        run: truth::send_signal_proc_dir,
    },
    Scenario {
        name: "pid_namespace",
        what: "calls from a new pid namespace: host pids, ns_pid / ns_child_pid / ns_target_pid",
        run: truth::pid_namespace,
    },
    Scenario {
        name: "thread_names",
        what: "thread pfworker-7 of process pfmain: comm pfmain, thread_comm pfworker-7",
        run: truth::thread_names,
    },
    Scenario {
        name: "pidfd_open_bad_pid",
        what: "pidfd_open(-5, 0) and (0, 0) → EINVAL, stage args (not flags)",
        run: truth::pidfd_open_bad_pid,
    },
    Scenario {
        name: "seccomp_denied",
        what: "seccomp EPERM for pidfd_open, pidfd_getfd, pidfd_send_signal → stage denied",
        run: truth::seccomp_denied,
    },
    Scenario {
        name: "clone3_args_not_resident",
        what: "clone3 args in an untouched MAP_SHARED file mapping: the event with its pidfd",
        run: truth::clone3_args_not_resident,
    },
    #[cfg(target_arch = "x86_64")]
    Scenario {
        name: "compat_calls",
        what: "ia32 (int $0x80) pidfd_open, pidfd_send_signal, pidfd_getfd, clone, clone3 → compat: true",
        run: truth::compat_calls,
    },
    #[cfg(target_arch = "x86_64")]
    Scenario {
        name: "compat_getfd_cross_container",
        what: "ia32 pidfd_getfd from one libpod-<id>.scope into another → risk cross_container, compat: true",
        run: crate::risky::compat_getfd_cross_container,
    },
    Scenario {
        name: "clone_pids_ancestor_limit",
        what: "caller in a/b, a/pids.max=1, b/pids.max=max → EAGAIN, stage pids_cgroup",
        run: truth::clone_pids_ancestor_limit,
    },
    Scenario {
        name: "short_lived_container",
        what: "docker-<id>.scope cgroup removed right after its only process's pidfd_open calls: container_id kept",
        run: truth::short_lived_container,
    },
    Scenario {
        name: "clone3_args_efault",
        what: "clone3 set_tid on PROT_NONE, args straddling into PROT_NONE → EFAULT, stage args",
        run: truth::clone3_args_efault,
    },
    Scenario {
        name: "setns_pidfd",
        what: "setns(pidfd, UTS|IPC) ok, setns(pidfd, USER) → EINVAL; a namespace fd's setns is not recorded",
        run: crate::uses::setns_pidfd,
    },
    Scenario {
        name: "process_madvise",
        what: "process_madvise MADV_COLD of one page ok, MADV_DONTNEED → EINVAL",
        run: crate::uses::process_madvise,
    },
    Scenario {
        name: "process_mrelease",
        what: "process_mrelease of a live child → EINVAL, flags=1 → EINVAL, of an exited one → 0 or ESRCH (before 5.15: ENOSYS, no event)",
        run: crate::uses::process_mrelease,
    },
    Scenario {
        name: "pidfd_ioctl",
        what: "PIDFD_GET_UTS_NAMESPACE and PIDFD_GET_INFO (then ESRCH once reaped); look-alike ioctls not recorded",
        run: crate::uses::pidfd_ioctl,
    },
    Scenario {
        name: "clone3_autokill",
        what: "7.1+: closing a clone3 CLONE_AUTOREAP|CLONE_PIDFD_AUTOKILL pidfd SIGKILLs the child (pidfd_autokill, function probes); before 7.1 EINVAL",
        run: crate::uses::clone3_autokill,
    },
];

/// Building blocks of the filter checks, not scenarios of their own.
pub const HELPERS: &[Scenario] = &[
    Scenario { name: "mix", what: "one pidfd_open success and one EINVAL failure", run: mix },
    Scenario { name: "einval", what: "one pidfd_open EINVAL failure", run: einval_only },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().chain(HELPERS).find(|s| s.name == name)
}

fn errno(e: i64) -> Value {
    json!(match -e {
        3 => "ESRCH",
        9 => "EBADF",
        11 => "EAGAIN",
        14 => "EFAULT",
        22 => "EINVAL",
        24 => "EMFILE",
        _ => return json!(format!("E{}", -e)),
    })
}

/// The closing pidfd_open of ourselves, and the event it must produce.
pub fn sentinel() -> Value {
    let pid = std::process::id() as i32;
    let fd = sys::pidfd_open(pid, 0);
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
    }
    json!({"event": "pidfd_open", "ret": fd, "pidfd": fd, "target_pid": pid, "errno": null, "stage": null})
}

fn clone_ok(event: &str, ret: i64, pidfd: i32) -> Result<Value, String> {
    if ret <= 0 {
        return Err(format!("{event}(CLONE_PIDFD) failed unexpectedly: {ret}"));
    }
    // The pidfs inode of the pidfd the kernel installed (6.9+; null before).
    let ino = crate::paths::pidfd_ino(i64::from(pidfd));
    sys::wait_child(ret);
    unsafe { libc::close(pidfd) };
    Ok(json!({"event": event, "ret": ret, "pidfd": pidfd, "child_pid": ret, "errno": null, "stage": null,
              "tid": sys::gettid(), "flag_names_include": ["CLONE_PIDFD"], "pidfd_ino": ino,
              "target_reason": null}))
}

fn failure(event: &str, ret: i64, want: i64, stage: &str) -> Result<Value, String> {
    if ret != want {
        sys::wait_child(ret);
        return Err(format!("{event}: kernel returned {ret}, scenario needs {want}"));
    }
    Ok(
        json!({"event": event, "ret": ret, "errno": errno(ret), "stage": stage, "pidfd": null, "child_pid": null,
              "flag_names_include": ["CLONE_PIDFD"]}),
    )
}

fn clone_pidfd_ok() -> Result<Vec<Value>, String> {
    let mut pidfd: i32 = -1;
    let r = sys::clone_fork(CLONE_PIDFD | SIGCHLD, &mut pidfd);
    Ok(vec![clone_ok("clone", r, pidfd)?, sentinel()])
}

fn clone3_pidfd_ok() -> Result<Vec<Value>, String> {
    let mut pidfd: i32 = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: &mut pidfd as *mut i32 as u64,
        exit_signal: SIGCHLD,
        ..Default::default()
    };
    let r = sys::clone3_fork(&mut args);
    Ok(vec![clone_ok("clone3", r, pidfd)?, sentinel()])
}

fn clone_settid_einval() -> Result<Vec<Value>, String> {
    let mut pidfd: i32 = -1;
    let r = sys::clone_fork(CLONE_PIDFD | CLONE_PARENT_SETTID | SIGCHLD, &mut pidfd);
    Ok(vec![failure("clone", r, -22, "flags")?, sentinel()])
}

/// A page the process may read but not write: copy_to_user of the pidfd faults.
fn read_only_page() -> *mut i32 {
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    p.cast()
}

fn clone_efault() -> Result<Vec<Value>, String> {
    let r = sys::clone_fork(CLONE_PIDFD | SIGCHLD, read_only_page());
    Ok(vec![failure("clone", r, -14, "user_memory")?, sentinel()])
}

fn clone3_efault() -> Result<Vec<Value>, String> {
    let mut args = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: read_only_page() as u64,
        exit_signal: SIGCHLD,
        ..Default::default()
    };
    let r = sys::clone3_fork(&mut args);
    Ok(vec![failure("clone3", r, -14, "user_memory")?, sentinel()])
}

fn clone_emfile() -> Result<Vec<Value>, String> {
    // Fill the fd table up to a small limit, then ask for one more fd through CLONE_PIDFD.
    let lim = libc::rlimit { rlim_cur: 32, rlim_max: 4096 };
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err("setrlimit(RLIMIT_NOFILE) failed".into());
    }
    let mut held = Vec::new();
    loop {
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            break;
        }
        held.push(fd);
    }
    let mut pidfd: i32 = -1;
    let r = sys::clone_fork(CLONE_PIDFD | SIGCHLD, &mut pidfd);
    for fd in held {
        unsafe { libc::close(fd) };
    }
    Ok(vec![failure("clone", r, -24, "fd_alloc")?, sentinel()])
}

fn clone_pids_limit() -> Result<Vec<Value>, String> {
    let cg = crate::cgroup::PidsCgroup::create(1)?;
    cg.enter()?;
    let mut pidfd: i32 = -1;
    let r = sys::clone_fork(CLONE_PIDFD | SIGCHLD, &mut pidfd);
    cg.leave()?;
    let events = cg.max_events();
    drop(cg);
    let mut want = failure("clone", r, -11, "pids_cgroup")?;
    if events == Some(0) {
        return Err("pids.events shows no refusal: the EAGAIN came from elsewhere".into());
    }
    want["stage"] = json!("pids_cgroup");
    Ok(vec![want, sentinel()])
}

fn clone3_thread() -> Result<Vec<Value>, String> {
    let stack = vec![0u8; 64 * 1024].leak();
    let mut pidfd: i32 = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_THREAD | CLONE_VM | CLONE_SIGHAND,
        pidfd: &mut pidfd as *mut i32 as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: stack.len() as u64,
        ..Default::default()
    };
    let r = sys::clone3_thread(&mut args);
    let thread_pidfds = crate::kernel_at_least(6, 9);
    let want = if thread_pidfds {
        if r <= 0 {
            return Err(format!("kernel ≥ 6.9 refused a thread pidfd: {r}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let ino = crate::paths::pidfd_ino(i64::from(pidfd));
        unsafe { libc::close(pidfd) };
        json!({"event": "clone3", "ret": r, "pidfd": pidfd, "child_pid": r, "errno": null, "stage": null,
               "flag_names_include": ["CLONE_PIDFD", "CLONE_THREAD"], "pidfd_ino": ino})
    } else {
        failure("clone3", r, -22, "flags")?
    };
    Ok(vec![want, sentinel()])
}

fn pidfd_open_ok() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    sys::reap(child);
    if fd < 0 {
        return Err(format!("pidfd_open failed: {fd}"));
    }
    // The pidfs inode (6.9+; null before), read by the kernel program from the installed file.
    let ino = crate::paths::pidfd_ino(fd);
    unsafe { libc::close(fd as i32) };
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "pidfd": fd, "target_pid": child, "errno": null, "stage": null,
               "pidfd_ino": ino}),
        sentinel(),
    ])
}

fn pidfd_open_esrch() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    sys::reap(child);
    let r = sys::pidfd_open(child, 0);
    if r != -3 {
        return Err(format!("pidfd_open of a reaped pid returned {r}"));
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": -3, "errno": "ESRCH", "stage": "other", "target_pid": child, "pidfd": null}),
        sentinel(),
    ])
}

fn pidfd_open_einval() -> Result<Vec<Value>, String> {
    let pid = std::process::id() as i32;
    let r = sys::pidfd_open(pid, 0x4);
    if r != -22 {
        return Err(format!("pidfd_open with flag 0x4 returned {r}"));
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": -22, "errno": "EINVAL", "stage": "flags", "flags": 4, "pidfd": null}),
        sentinel(),
    ])
}

fn send_signal_ok() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    let r = sys::pidfd_send_signal(fd as i32, libc::SIGTERM);
    sys::reap(child);
    if fd < 0 || r != 0 {
        return Err(format!("pidfd_open {fd}, pidfd_send_signal {r}"));
    }
    unsafe { libc::close(fd as i32) };
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "target_pid": child}),
        json!({"event": "pidfd_send_signal", "ret": 0, "errno": null, "signal": "SIGTERM", "signal_nr": 15, "target_pid": child, "stage": null,
               "risk": [], "target_exit": [], "file_kind": null}),
        sentinel(),
    ])
}

fn send_signal_ebadf() -> Result<Vec<Value>, String> {
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    let r = sys::pidfd_send_signal(fd, libc::SIGTERM);
    unsafe { libc::close(fd) };
    if r != -9 {
        return Err(format!("pidfd_send_signal on /dev/null returned {r}"));
    }
    Ok(vec![
        json!({"event": "pidfd_send_signal", "ret": -9, "errno": "EBADF", "signal": "SIGTERM", "stage": null, "target_pid": null,
               "risk": null, "target_exit": null}),
        sentinel(),
    ])
}

fn waitid_pidfd() -> Result<Vec<Value>, String> {
    const P_PIDFD: libc::c_long = 3;
    let waitid = |idtype: libc::c_long, id: i64, options: i32| -> i64 {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::syscall(libc::SYS_waitid, idtype, id, &mut info, options, 0usize) };
        if r < 0 { -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { r }
    };
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    // Not a pidfd wait: the enter program turns it away before any map access.
    let by_pid = waitid(libc::P_PID as libc::c_long, i64::from(child), libc::WEXITED | libc::WNOHANG);
    unsafe { libc::kill(child, libc::SIGKILL) };
    let ok = waitid(P_PIDFD, fd, libc::WEXITED);
    let gone = waitid(P_PIDFD, fd, libc::WEXITED | libc::WNOHANG);
    unsafe { libc::close(fd as i32) };
    if fd < 0 || by_pid != 0 || ok != 0 || gone != -libc::ECHILD as i64 {
        return Err(format!("pidfd_open {fd}, waitid P_PID {by_pid}, P_PIDFD {ok} then {gone}"));
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "target_pid": child}),
        json!({"event": "waitid", "ret": 0, "errno": null, "used_pidfd": fd, "target_pid": child, "flags": 4, "flag_names": ["WEXITED"], "stage": null, "pidfd": null}),
        json!({"event": "waitid", "ret": -10, "errno": "ECHILD", "used_pidfd": fd, "target_pid": child, "flags": 5, "flag_names": ["WNOHANG", "WEXITED"], "stage": null}),
        sentinel(),
    ])
}

fn getfd_ok() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    let r = sys::pidfd_getfd(fd as i32, 1);
    sys::reap(child);
    if fd < 0 || r < 0 {
        return Err(format!("pidfd_open {fd}, pidfd_getfd {r}"));
    }
    unsafe {
        libc::close(r as i32);
        libc::close(fd as i32);
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "target_pid": child}),
        json!({"event": "pidfd_getfd", "ret": r, "errno": null, "target_fd": 1, "target_pid": child, "stage": null,
               "risk": [], "target_uid": 0, "target_elevated": false}),
        sentinel(),
    ])
}

fn getfd_ebadf() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    let r = sys::pidfd_getfd(fd as i32, 999);
    sys::reap(child);
    unsafe { libc::close(fd as i32) };
    if r != -9 {
        return Err(format!("pidfd_getfd of fd 999 returned {r}"));
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "target_pid": child}),
        json!({"event": "pidfd_getfd", "ret": -9, "errno": "EBADF", "target_fd": 999, "stage": null,
               "risk": [], "file_kind": null, "file_path": null}),
        sentinel(),
    ])
}

fn plain_fork_silent() -> Result<Vec<Value>, String> {
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe { libc::_exit(0) };
    }
    sys::wait_child(child as i64);
    let mut args = CloneArgs { exit_signal: SIGCHLD, ..Default::default() };
    sys::wait_child(sys::clone3_fork(&mut args));
    Ok(vec![sentinel()])
}

fn mix() -> Result<Vec<Value>, String> {
    let mut v = vec![sentinel()];
    v.extend(einval_only()?);
    Ok(v)
}

fn einval_only() -> Result<Vec<Value>, String> {
    let r = sys::pidfd_open(std::process::id() as i32, 0x4);
    Ok(vec![json!({"event": "pidfd_open", "ret": r, "errno": "EINVAL"})])
}

//! Scenarios for the uses of a pidfd beyond signal, getfd and waitid (issue 11): setns(2) on a
//! pidfd, process_madvise(2), process_mrelease(2) and the pidfs ioctls. Each makes real calls,
//! checks that the kernel answered as this kernel version must, and expects exactly one event
//! per pidfd use (and none for the look-alike calls made on purpose: a namespace fd's setns, a
//! pidfs ioctl number on /dev/null, a non-pidfs ioctl on a pidfd).
use serde_json::{Value, json};

use crate::{scenarios::sentinel, sys};

/// The return value, or -errno, as the agent reports `ret`.
fn ret(r: libc::c_long) -> i64 {
    if r < 0 { -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { r }
}

/// The agent's `errno` for a return value.
fn errno(r: i64) -> Value {
    match -r {
        e if e <= 0 => Value::Null,
        1 => json!("EPERM"),
        3 => json!("ESRCH"),
        9 => json!("EBADF"),
        22 => json!("EINVAL"),
        25 => json!("ENOTTY"),
        38 => json!("ENOSYS"),
        e => json!(format!("E{e}")),
    }
}

/// (major, minor) of the running kernel, from uname.
fn kernel() -> (u32, u32) {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned();
    let mut it = rel.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn close(fd: i64) {
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
    }
}

const CLONE_NEWIPC: i32 = 0x0800_0000;
const CLONE_NEWUTS: i32 = 0x0400_0000;
const CLONE_NEWUSER: i32 = 0x1000_0000;

pub fn setns_pidfd() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    // A namespace fd is not a pidfd: this setns must leave no event.
    let path = c"/proc/self/ns/uts";
    let nsfd = ret(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }.into());
    let by_nsfd = ret(unsafe { libc::setns(nsfd as i32, CLONE_NEWUTS) }.into());
    // Entering the child's (= our own) UTS and IPC namespaces: allowed to root.
    let ok = ret(unsafe { libc::setns(fd as i32, CLONE_NEWUTS | CLONE_NEWIPC) }.into());
    // Our own user namespace cannot be entered again: EINVAL.
    let own_user = ret(unsafe { libc::setns(fd as i32, CLONE_NEWUSER) }.into());
    sys::reap(child);
    close(nsfd);
    close(fd);
    if fd < 0 || nsfd < 0 || by_nsfd != 0 || ok != 0 || own_user != -22 {
        return Err(format!(
            "pidfd_open {fd}, ns fd {nsfd}: setns(nsfd) {by_nsfd}, setns(pidfd, UTS|IPC) {ok}, setns(pidfd, USER) {own_user}"
        ));
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "target_pid": child}),
        json!({"event": "setns", "ret": 0, "errno": null, "used_pidfd": fd, "target_pid": child,
               "flags": CLONE_NEWUTS | CLONE_NEWIPC, "flag_names": ["CLONE_NEWUTS", "CLONE_NEWIPC"],
               "stage": null, "pidfd": null, "cmd": null, "advice": null}),
        json!({"event": "setns", "ret": -22, "errno": "EINVAL", "used_pidfd": fd, "target_pid": child,
               "flags": CLONE_NEWUSER, "flag_names": ["CLONE_NEWUSER"]}),
        sentinel(),
    ])
}

pub fn process_madvise() -> Result<Vec<Value>, String> {
    const MADV_COLD: i64 = 20;
    const MADV_DONTNEED: i64 = 4;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // A page mapped and touched before the fork, so the child has it at the same address.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    unsafe { std::ptr::write_bytes(mem.cast::<u8>(), 1, page) };
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    let iov = libc::iovec { iov_base: mem, iov_len: page };
    let madvise = |advice: i64| {
        ret(unsafe { libc::syscall(libc::SYS_process_madvise, fd, &iov, 1usize, advice, 0u32) })
    };
    let cold = madvise(MADV_COLD);
    // process_madvise accepts only COLD, PAGEOUT, WILLNEED and COLLAPSE.
    let dontneed = madvise(MADV_DONTNEED);
    sys::reap(child);
    close(fd);
    if fd < 0 || cold != page as i64 || dontneed != -22 {
        return Err(format!("pidfd_open {fd}, process_madvise MADV_COLD {cold}, MADV_DONTNEED {dontneed}"));
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "target_pid": child}),
        json!({"event": "process_madvise", "ret": page, "errno": null, "used_pidfd": fd, "target_pid": child,
               "advice": "MADV_COLD", "flags": 0, "flag_names": [], "cmd": null, "stage": null, "pidfd": null}),
        json!({"event": "process_madvise", "ret": -22, "errno": "EINVAL", "used_pidfd": fd, "target_pid": child,
               "advice": "MADV_DONTNEED", "flags": 0}),
        sentinel(),
    ])
}

pub fn process_mrelease() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    let mrelease = |flags: u32| ret(unsafe { libc::syscall(libc::SYS_process_mrelease, fd, flags) });
    // A live process's memory is not released: EINVAL; unknown flags: EINVAL.
    let live = mrelease(0);
    let bad_flags = mrelease(1);
    unsafe { libc::kill(child, libc::SIGKILL) };
    // Wait (without reaping) until it has exited: its memory is gone. Kernels that still find
    // the exited task say there is nothing left to do (0); 6.18 no longer finds it (ESRCH).
    let mut p = libc::pollfd { fd: fd as i32, events: libc::POLLIN, revents: 0 };
    let polled = unsafe { libc::poll(&mut p, 1, 10_000) };
    let dead = mrelease(0);
    sys::reap(child);
    close(fd);
    if kernel() < (5, 15) {
        // No such syscall: ENOSYS, and the agent, which found no tracepoint for it, records
        // nothing (its plan shows process_mrelease unattached).
        if fd < 0 || live != -38 || bad_flags != -38 || dead != -38 {
            return Err(format!(
                "pidfd_open {fd}, process_mrelease before 5.15: {live}, {bad_flags}, {dead}"
            ));
        }
        return Ok(vec![json!({"event": "pidfd_open", "ret": fd, "target_pid": child}), sentinel()]);
    }
    if fd < 0 || live != -22 || bad_flags != -22 || polled != 1 || (dead != 0 && dead != -3) {
        return Err(format!(
            "pidfd_open {fd}, process_mrelease live {live}, flags=1 {bad_flags}, poll {polled}, exited {dead}"
        ));
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "target_pid": child}),
        json!({"event": "process_mrelease", "ret": -22, "errno": "EINVAL", "used_pidfd": fd, "target_pid": child,
               "flags": 0, "flag_names": [], "advice": null, "cmd": null, "stage": null}),
        json!({"event": "process_mrelease", "ret": -22, "errno": "EINVAL", "used_pidfd": fd, "target_pid": child,
               "flags": 1, "flag_names": ["0x1"]}),
        json!({"event": "process_mrelease", "ret": dead, "errno": errno(dead), "used_pidfd": fd, "target_pid": child, "flags": 0}),
        sentinel(),
    ])
}

/// `struct pidfd_info` as 6.13 published it (PIDFD_INFO_SIZE_VER0, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
    coredump_mask: u32,
    _spare: u32,
}

/// `_IO(0xFF, 10)` and `_IOWR(0xFF, 11, struct pidfd_info)` (include/uapi/linux/pidfd.h).
const PIDFD_GET_UTS_NAMESPACE: u64 = 0xff0a;
const PIDFD_GET_INFO: u64 = (3 << 30) | ((size_of::<PidfdInfo>() as u64) << 16) | 0xff0b;
const PIDFD_INFO_PID: u64 = 1;
/// A tty ioctl (asm-generic/ioctls.h, the same on x86_64 and arm64; libc's type for it
/// differs between glibc and musl).
const TIOCGPGRP: u64 = 0x540f;

pub fn pidfd_ioctl() -> Result<Vec<Value>, String> {
    let (major, minor) = kernel();
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    let ioctl = |fd: i64, cmd: u64, arg: *mut PidfdInfo| {
        ret(unsafe { libc::syscall(libc::SYS_ioctl, fd as i32, cmd as libc::c_ulong, arg) })
    };
    // A pidfs command number on /dev/null, and a tty ioctl on the pidfd: no event for either.
    let null = ret(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }.into());
    let on_null = ioctl(null, PIDFD_GET_UTS_NAMESPACE, std::ptr::null_mut());
    let tty_on_pidfd = ioctl(fd, TIOCGPGRP, &mut PidfdInfo::default());
    let uts = ioctl(fd, PIDFD_GET_UTS_NAMESPACE, std::ptr::null_mut());
    let mut info = PidfdInfo { mask: PIDFD_INFO_PID, ..Default::default() };
    let got = ioctl(fd, PIDFD_GET_INFO, &mut info);
    sys::reap(child);
    let mut info2 = PidfdInfo { mask: PIDFD_INFO_PID, ..Default::default() };
    let reaped = ioctl(fd, PIDFD_GET_INFO, &mut info2);
    close(uts);
    close(null);
    close(fd);
    // The namespace ioctls are 6.11+, PIDFD_GET_INFO 6.13+; before, the pidfd has no such
    // command (ENOTTY; 6.11 and 6.12 refuse any argument first: EINVAL).
    let v = (major, minor);
    let uts_ok = if v >= (6, 11) { uts >= 3 } else { uts == -25 };
    let info_ok = if v >= (6, 13) {
        got == 0 && info.ids[0] == child as u32 && reaped == -3
    } else if v >= (6, 11) {
        got == -22 && reaped == -22
    } else {
        got == -25 && reaped == -25
    };
    if fd < 0 || on_null != -25 || tty_on_pidfd >= 0 || !uts_ok || !info_ok {
        return Err(format!(
            "kernel {major}.{minor}: pidfd_open {fd}, ioctl(/dev/null, 0xff0a) {on_null}, TIOCGPGRP on the pidfd {tty_on_pidfd}, PIDFD_GET_UTS_NAMESPACE {uts}, PIDFD_GET_INFO {got} (pid {}), after reaping {reaped}",
            info.ids[0]
        ));
    }
    let ev = |cmd: &str, r: i64| {
        json!({"event": "pidfd_ioctl", "ret": r, "errno": errno(r), "used_pidfd": fd, "target_pid": child,
               "cmd": cmd, "flags": 0, "flag_names": [], "advice": null, "stage": null, "pidfd": null})
    };
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "target_pid": child}),
        ev("PIDFD_GET_UTS_NAMESPACE", uts),
        ev("PIDFD_GET_INFO", got),
        ev("PIDFD_GET_INFO", reaped),
        sentinel(),
    ])
}

/// clone3(2) flags of Linux 7.1 (include/uapi/linux/sched.h): the child is reaped by the
/// kernel, and closing the returned pidfd SIGKILLs it (copy_process: AUTOKILL needs AUTOREAP,
/// AUTOREAP needs exit_signal 0).
const CLONE_AUTOREAP: u64 = 1 << 34;
const CLONE_PIDFD_AUTOKILL: u64 = 1 << 36;
/// `pidfd_info.mask` bit for the exit status (6.15+).
const PIDFD_INFO_EXIT: u64 = 1 << 3;

pub fn clone3_autokill() -> Result<Vec<Value>, String> {
    let mut pidfd: i32 = -1;
    let mut args = sys::CloneArgs {
        flags: sys::CLONE_PIDFD | CLONE_AUTOREAP | CLONE_PIDFD_AUTOKILL,
        pidfd: &mut pidfd as *mut i32 as u64,
        exit_signal: 0,
        ..Default::default()
    };
    // SAFETY: a fork-like clone3 (no CLONE_VM); the child only pauses until it is killed.
    let r = unsafe {
        libc::syscall(libc::SYS_clone3, &mut args as *mut sys::CloneArgs, size_of::<sys::CloneArgs>())
    };
    if r == 0 {
        loop {
            unsafe { libc::pause() };
        }
    }
    let r = ret(r);
    let (major, minor) = kernel();
    let names = ["CLONE_PIDFD", "CLONE_AUTOREAP", "CLONE_PIDFD_AUTOKILL"];
    if r < 0 {
        // Before 7.1 the flags are unknown: clone3's own check (clone3_args_valid) refuses
        // them with EINVAL before copy_process, and there is nothing to kill.
        if (major, minor) >= (7, 1) || r != -22 {
            return Err(format!(
                "kernel {major}.{minor}: clone3(CLONE_PIDFD|CLONE_AUTOREAP|CLONE_PIDFD_AUTOKILL) returned {r}"
            ));
        }
        return Ok(vec![
            // Stage `other`: EINVAL without a CLONE_PIDFD conflict the classifier knows.
            json!({"event": "clone3", "ret": -22, "errno": "EINVAL", "stage": "other", "pidfd": null,
                   "child_pid": null, "flag_names_include": names, "before_copy_process": true}),
            sentinel(),
        ]);
    }
    // A second pidfd (pidfd_open's does not keep the child alive) to see it die: the child is
    // reaped by the kernel, so no wait is possible.
    let watch = sys::pidfd_open(r as i32, 0);
    // Closing the only reference to the clone3 pidfd kills the child.
    unsafe { libc::close(pidfd) };
    let mut p = libc::pollfd { fd: watch as i32, events: libc::POLLIN, revents: 0 };
    let polled = unsafe { libc::poll(&mut p, 1, 10_000) };
    // The pidfd polls readable as the child exits, and its exit information may be published
    // a moment later (seen on 7.2: mask 0x7 without PIDFD_INFO_EXIT right after the poll):
    // ask again for up to a second; every ask is an ioctl event.
    let mut info = PidfdInfo::default();
    let mut got = -1;
    let mut asks = 0;
    while asks < 100 {
        info = PidfdInfo { mask: PIDFD_INFO_EXIT, ..Default::default() };
        got = ret(unsafe { libc::syscall(libc::SYS_ioctl, watch as i32, PIDFD_GET_INFO, &mut info) });
        asks += 1;
        if got != 0 || info.mask & PIDFD_INFO_EXIT != 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    close(watch);
    // exit_code is a wait status: killed by SIGKILL is 9.
    if watch < 0 || polled != 1 || got != 0 || info.mask & PIDFD_INFO_EXIT == 0 || info.exit_code != 9 {
        return Err(format!(
            "autokill child {r}: pidfd_open {watch}, poll {polled}, PIDFD_GET_INFO {got} mask {:#x} exit_code {:#x} (want SIGKILL)",
            info.mask, info.exit_code
        ));
    }
    let mut want = vec![
        json!({"event": "clone3", "ret": r, "pidfd": pidfd, "child_pid": r, "errno": null, "stage": null,
               "flag_names_include": names}),
        json!({"event": "pidfd_open", "ret": watch, "target_pid": r}),
        json!({"event": "pidfd_autokill", "function_probes_only": true, "ret": 0, "errno": null,
               "target_pid": r, "signal": "SIGKILL", "signal_nr": 9, "used_pidfd": null, "pidfd": null}),
    ];
    for _ in 0..asks {
        want.push(json!({"event": "pidfd_ioctl", "ret": 0, "errno": null, "cmd": "PIDFD_GET_INFO",
                         "used_pidfd": watch, "target_pid": r}));
    }
    want.push(sentinel());
    Ok(want)
}

//! Scenarios of issue 10 (kernel-truth): callers off the common path, as an unusual program
//! and as a hostile one would call. Each prints the values the kernel acted on, found
//! independently of the agent (fdinfo, the lowest free fd, the pid namespace's own numbers).
use std::{
    io::{Read, Write},
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::{Value, json};

use crate::{
    scenarios::sentinel,
    sys::{self, CLONE_PIDFD, CloneArgs, SIGCHLD},
};

/// The process whose events a scenario expects, when it is not the scenario process itself
/// (the pid-namespace scenario's calls come from its namespace's init). 0: the scenario's.
static REPORT_PID: AtomicU32 = AtomicU32::new(0);

/// The pid the suite filters this scenario's events by.
pub fn report_pid() -> u32 {
    match REPORT_PID.load(Ordering::Relaxed) {
        0 => std::process::id(),
        p => p,
    }
}

#[cfg(target_arch = "x86_64")]
const CLONE_VFORK: u64 = 0x4000;
#[cfg(target_arch = "x86_64")]
const CLONE_CHILD_SETTID: u64 = 0x0100_0000;
#[cfg(target_arch = "x86_64")]
const CLONE_CHILD_CLEARTID: u64 = 0x0020_0000;

/// The lowest free fd: the number the kernel gives the next fd of this (single-threaded) process.
#[cfg(target_arch = "x86_64")]
fn next_fd() -> i32 {
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    unsafe { libc::close(fd) };
    fd
}

/// The `Pid:` and `NSpid:` lines of a pidfd's fdinfo (host numbers on the host's /proc).
fn fdinfo_pid(fd: i64) -> Option<i64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse().ok())
}

/// Input 4: `clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD)` whose child overwrites the parent's
/// pidfd slot before the parent resumes: with a store of 12345, then with CLONE_CHILD_SETTID
/// (the kernel writes the child's tid there) and CLONE_CHILD_CLEARTID (0 at the child's
/// exit) on the same address. The event must carry the fd the kernel installed every time.
#[cfg(target_arch = "x86_64")]
pub fn clone_forged_slot() -> Result<Vec<Value>, String> {
    let mut want = Vec::new();
    for (extra, what) in [
        (0u64, "store 12345"),
        (CLONE_CHILD_SETTID, "CHILD_SETTID"),
        (CLONE_CHILD_CLEARTID, "CHILD_CLEARTID"),
    ] {
        let flags = libc::CLONE_VM as u64 | CLONE_VFORK | CLONE_PIDFD | extra | SIGCHLD;
        let mut slot: i32 = -1;
        let installed = next_fd();
        let r = vfork_clone_overwrite(flags, &mut slot, extra == 0);
        if r <= 0 {
            return Err(format!("clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD) {what}: {r}"));
        }
        // Before reaping: fdinfo says -1 once the child is gone.
        let real = fdinfo_pid(i64::from(installed));
        sys::wait_child(r);
        if real != Some(r) {
            return Err(format!("{what}: fd {installed} is not the pidfd of {r} ({real:?})"));
        }
        if slot == installed {
            return Err(format!("{what}: the slot still holds the real fd {installed}; nothing was forged"));
        }
        unsafe { libc::close(installed) };
        want.push(json!({"event": "clone", "ret": r, "child_pid": r, "pidfd": installed, "errno": null,
            "stage": null, "flag_names_include": ["CLONE_PIDFD", "CLONE_VM", "CLONE_VFORK"]}));
    }
    want.push(sentinel());
    Ok(want)
}

/// Legacy clone with the pidfd slot as both parent_tid and child_tid; the child (sharing our
/// memory, on our stack while we are suspended) optionally stores 12345 there, then exits.
#[cfg(target_arch = "x86_64")]
fn vfork_clone_overwrite(flags: u64, slot: &mut i32, store: bool) -> i64 {
    let p = slot as *mut i32;
    let mut r: i64 = libc::SYS_clone;
    // SAFETY: the child runs only the instructions up to its exit syscall, touching nothing
    // but the slot; the parent is suspended (CLONE_VFORK) until then.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "test r9, r9",
            "jz 3f",
            "mov dword ptr [rdx], 12345",
            "3:",
            "mov eax, 60",
            "xor edi, edi",
            "syscall",
            "2:",
            inout("rax") r,
            in("rdi") flags,
            in("rsi") 0usize,
            in("rdx") p,
            in("r10") p,
            in("r8") 0usize,
            in("r9") u64::from(store),
            out("rcx") _, out("r11") _,
            options(nostack)
        );
    }
    r
}

/// Input 8: pidfd_send_signal on a `/proc/<pid>` directory fd (the kernel accepts it) and on
/// a sysfs file (EBADF); pidfd_getfd on the /proc directory (only pidfds: EBADF).
pub fn send_signal_proc_dir() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let path = std::ffi::CString::new(format!("/proc/{child}")).expect("no NUL");
    let dir = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    let getfd = sys::pidfd_getfd(dir, 0);
    let r = sys::pidfd_send_signal(dir, libc::SIGTERM);
    sys::reap(child);
    unsafe { libc::close(dir) };
    let sysfs = unsafe { libc::open(c"/sys/kernel/uevent_seqnum".as_ptr(), libc::O_RDONLY) };
    let bad = sys::pidfd_send_signal(sysfs, libc::SIGTERM);
    unsafe { libc::close(sysfs) };
    if dir < 0 || r != 0 || sysfs < 0 || bad != -9 || getfd != -9 {
        return Err(format!(
            "open /proc/{child} {dir}, send_signal {r}, getfd {getfd}; sysfs {sysfs}, {bad}"
        ));
    }
    Ok(vec![
        json!({"event": "pidfd_getfd", "ret": -9, "errno": "EBADF", "used_pidfd": dir, "target_pid": null}),
        json!({"event": "pidfd_send_signal", "ret": 0, "errno": null, "used_pidfd": dir, "target_pid": child,
               "signal": "SIGTERM"}),
        json!({"event": "pidfd_send_signal", "ret": -9, "errno": "EBADF", "used_pidfd": sysfs, "target_pid": null,
               "signal": "SIGTERM"}),
        sentinel(),
    ])
}

/// Input 7: a caller in a new pid namespace (its init): clone, pidfd_open by namespace
/// number, pidfd_send_signal; every pid field in host numbers, ns_* the namespace's.
pub fn pid_namespace() -> Result<Vec<Value>, String> {
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(format!("unshare(CLONE_NEWPID): {}", std::io::Error::last_os_error()));
    }
    let mut fds = [0i32; 2];
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let init = unsafe { libc::fork() };
    if init == 0 {
        unsafe { libc::close(fds[0]) };
        let out = match ns_init() {
            Ok(v) => json!({"expect": v}),
            Err(e) => json!({"error": e}),
        };
        let mut w = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
        let _ = w.write_all(out.to_string().as_bytes());
        drop(w);
        unsafe { libc::_exit(0) };
    }
    unsafe { libc::close(fds[1]) };
    let mut text = String::new();
    let mut r = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    let _ = r.read_to_string(&mut text);
    sys::wait_child(i64::from(init));
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("namespace init reported nothing: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(e.to_string());
    }
    REPORT_PID.store(init as u32, Ordering::Relaxed);
    Ok(v["expect"].as_array().cloned().unwrap_or_default())
}

/// Runs as pid 1 of the new namespace (host pid known from /proc, which is the host's).
fn ns_init() -> Result<Vec<Value>, String> {
    let me_ns = unsafe { libc::getpid() };
    let me_host: i64 = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
        .ok_or("cannot read /proc/self")?;
    // A child that pauses until killed.
    let mut pidfd: i32 = -1;
    let c = unsafe {
        libc::syscall(libc::SYS_clone, CLONE_PIDFD | SIGCHLD, 0usize, &mut pidfd as *mut i32, 0usize, 0usize)
    };
    if c == 0 {
        loop {
            unsafe { libc::pause() };
        }
    }
    if c < 0 {
        return Err(format!("clone in the namespace: {}", std::io::Error::last_os_error()));
    }
    let child_host = fdinfo_pid(i64::from(pidfd)).ok_or("no Pid: in the pidfd's fdinfo")?;
    let fd2 = sys::pidfd_open(c as i32, 0);
    let sig = sys::pidfd_send_signal(pidfd, libc::SIGKILL);
    sys::wait_child(c);
    let me_fd = sys::pidfd_open(me_ns, 0);
    if fd2 < 0 || sig != 0 || me_fd < 0 || child_host == c {
        return Err(format!(
            "pidfd_open {fd2}, send_signal {sig}, self {me_fd}, child {c} host {child_host}"
        ));
    }
    unsafe {
        libc::close(pidfd);
        libc::close(fd2 as i32);
        libc::close(me_fd as i32);
    }
    Ok(vec![
        json!({"event": "clone", "pid": me_host, "ns_pid": me_ns, "ret": c, "child_pid": child_host,
               "ns_child_pid": c, "pidfd": pidfd, "errno": null}),
        json!({"event": "pidfd_open", "ns_pid": me_ns, "ret": fd2, "target_pid": child_host, "ns_target_pid": c}),
        json!({"event": "pidfd_send_signal", "ns_pid": me_ns, "ret": 0, "target_pid": child_host,
               "ns_target_pid": c, "signal": "SIGKILL"}),
        json!({"event": "pidfd_open", "ns_pid": me_ns, "ret": me_fd, "target_pid": me_host,
               "ns_target_pid": me_ns, "stage": null}),
    ])
}

/// Input 10: the thread `pfworker-7` of the process `pfmain` calls pidfd_open: `comm` is the
/// process's name, `thread_comm` the thread's.
pub fn thread_names() -> Result<Vec<Value>, String> {
    sys::set_comm("pfmain");
    let pid = std::process::id() as i32;
    let (fd, tid) = std::thread::spawn(move || {
        sys::set_comm("pfworker-7");
        (sys::pidfd_open(pid, 0), sys::gettid())
    })
    .join()
    .map_err(|_| "worker thread panicked")?;
    if fd < 0 {
        return Err(format!("pidfd_open from the worker thread: {fd}"));
    }
    unsafe { libc::close(fd as i32) };
    let mut s = sentinel();
    s["comm"] = json!("pfmain");
    s["thread_comm"] = json!("pfmain");
    Ok(vec![
        json!({"event": "pidfd_open", "ret": fd, "tid": tid, "comm": "pfmain", "thread_comm": "pfworker-7",
               "target_pid": pid}),
        s,
    ])
}

/// Input 9: pidfd_open(-5, 0) and pidfd_open(0, 0) are EINVAL for the pid, not the flags.
pub fn pidfd_open_bad_pid() -> Result<Vec<Value>, String> {
    let mut want = Vec::new();
    for pid in [-5, 0] {
        let r = sys::pidfd_open(pid, 0);
        if r != -22 {
            return Err(format!("pidfd_open({pid}, 0) returned {r}"));
        }
        want.push(json!({"event": "pidfd_open", "ret": -22, "errno": "EINVAL", "stage": "args", "flags": 0}));
    }
    want.push(sentinel());
    Ok(want)
}

/// Input 2: a seccomp filter on one thread returns EPERM for pidfd_open, pidfd_getfd,
/// pidfd_send_signal, clone and clone3: their sys_enter never fires. Each is a failed event,
/// stage `denied` (clones only with CLONE_PIDFD).
pub fn seccomp_denied() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let pidfd = sys::pidfd_open(child, 0);
    let results = std::thread::spawn(move || -> Result<[i64; 6], String> {
        install_eperm_filter()?;
        let mut slot: i32 = -1;
        let mut args = CloneArgs {
            flags: CLONE_PIDFD,
            pidfd: &mut slot as *mut i32 as u64,
            exit_signal: SIGCHLD,
            ..Default::default()
        };
        Ok([
            sys::pidfd_open(child, 0),
            sys::pidfd_getfd(pidfd as i32, 0),
            sys::pidfd_send_signal(pidfd as i32, 9),
            sys::clone_fork(CLONE_PIDFD | SIGCHLD, &mut slot),
            sys::clone3_fork(&mut args),
            // Not CLONE_PIDFD: refused too, but no event.
            sys::clone_fork(SIGCHLD, &mut slot),
        ])
    })
    .join()
    .map_err(|_| "filtered thread panicked")??;
    sys::reap(child);
    unsafe { libc::close(pidfd as i32) };
    if results != [-1; 6] {
        return Err(format!("seccomp: want EPERM six times, got {results:?}"));
    }
    let denied = |event: &str| json!({"event": event, "ret": -1, "errno": "EPERM", "stage": "denied", "pidfd": null, "target_pid": null});
    let mut want = vec![
        json!({"event": "pidfd_open", "ret": pidfd, "target_pid": child}),
        denied("pidfd_open"),
        denied("pidfd_getfd"),
        denied("pidfd_send_signal"),
    ];
    // A refused clone's flags come from the saved user registers, read on x86_64 only
    // (README "What the agent cannot see").
    if cfg!(target_arch = "x86_64") {
        want.push(json!({"event": "clone", "ret": -1, "errno": "EPERM", "stage": "denied", "pidfd": null, "child_pid": null,
               "flag_names_include": ["CLONE_PIDFD"]}));
        want.push(json!({"event": "clone3", "ret": -1, "errno": "EPERM", "stage": "denied", "pidfd": null, "child_pid": null,
               "flag_names_include": ["CLONE_PIDFD"]}));
    }
    want.push(sentinel());
    Ok(want)
}

/// A classic-BPF seccomp filter for this thread only: EPERM for pidfd_open, pidfd_getfd,
/// pidfd_send_signal, clone and clone3 of this build's native ABI, everything else allowed.
fn install_eperm_filter() -> Result<(), String> {
    /// include/uapi/linux/audit.h: AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64.
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    let nr = |n: libc::c_long| n as u32;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO_EPERM: u32 = 0x0005_0000 | 1;
    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter { code: 0x15, jt, jf, k };
    let filter = [
        stmt(0x20, 4), // ld arch
        jeq(AUDIT_ARCH, 1, 0),
        stmt(0x06, RET_ALLOW),
        stmt(0x20, 0), // ld nr
        jeq(nr(libc::SYS_pidfd_open), 5, 0),
        jeq(nr(libc::SYS_pidfd_getfd), 4, 0),
        jeq(nr(libc::SYS_pidfd_send_signal), 3, 0),
        jeq(nr(libc::SYS_clone), 2, 0),
        jeq(nr(libc::SYS_clone3), 1, 0),
        stmt(0x06, RET_ALLOW),
        stmt(0x06, RET_ERRNO_EPERM),
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
    // SAFETY: a valid filter program; applies to the calling thread only (no TSYNC).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog)
                != 0
        {
            return Err(format!("installing the seccomp filter: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Input 3: `struct clone_args` in an untouched MAP_SHARED file mapping: not resident when
/// the syscall enters, faulted in by the kernel's copy. The event still comes, with the pidfd.
pub fn clone3_args_not_resident() -> Result<Vec<Value>, String> {
    let mut pidfd: i32 = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: &mut pidfd as *mut i32 as u64,
        exit_signal: SIGCHLD,
        ..Default::default()
    };
    let path = std::env::temp_dir().join(format!("pidfd-workload-args-{}", std::process::id()));
    let bytes = unsafe {
        std::slice::from_raw_parts((&args as *const CloneArgs).cast::<u8>(), size_of::<CloneArgs>())
    };
    let mut page = bytes.to_vec();
    page.resize(4096, 0);
    std::fs::write(&path, &page).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path);
    // Mapped but never touched here: no page table entry until the kernel's copy faults it in.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err("mmap of the args file failed".into());
    }
    let r = unsafe { libc::syscall(libc::SYS_clone3, p, size_of::<CloneArgs>()) };
    if r == 0 {
        unsafe { libc::_exit(0) };
    }
    unsafe { libc::munmap(p, 4096) };
    if r <= 0 {
        return Err(format!("clone3 from a file mapping: {}", std::io::Error::last_os_error()));
    }
    sys::wait_child(r);
    unsafe { libc::close(pidfd) };
    Ok(vec![
        json!({"event": "clone3", "ret": r, "child_pid": r, "pidfd": pidfd, "errno": null, "stage": null,
               "flag_names_include": ["CLONE_PIDFD"]}),
        sentinel(),
    ])
}

/// A readable page followed by a PROT_NONE page; returns the start of the second.
fn guard_pages() -> *mut u8 {
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    let second = unsafe { (p as *mut u8).add(4096) };
    unsafe { libc::mprotect(second.cast(), 4096, libc::PROT_NONE) };
    second
}

/// `struct clone_args` up to `set_tid_size` (CLONE_ARGS_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
struct CloneArgsV1 {
    base: CloneArgs,
    set_tid: u64,
    set_tid_size: u64,
}

/// Input 5: clone3 EFAULTs before any pidfd exists: `set_tid` on a PROT_NONE page, and
/// `struct clone_args` straddling into one (flags readable). Stage `args`, not `user_memory`.
pub fn clone3_args_efault() -> Result<Vec<Value>, String> {
    let mut pidfd: i32 = -1;
    let guard = guard_pages();
    let mut args = CloneArgsV1 {
        base: CloneArgs {
            flags: CLONE_PIDFD,
            pidfd: &mut pidfd as *mut i32 as u64,
            exit_signal: SIGCHLD,
            ..Default::default()
        },
        set_tid: guard as u64,
        set_tid_size: 1,
    };
    let r1 = raw_clone3((&mut args as *mut CloneArgsV1).cast(), size_of::<CloneArgsV1>());
    // Flags in the readable page, the rest in the PROT_NONE one.
    let straddle = unsafe { guard.sub(8) };
    unsafe { (straddle as *mut u64).write(CLONE_PIDFD) };
    let r2 = raw_clone3(straddle, size_of::<CloneArgs>());
    if r1 != -14 || r2 != -14 {
        return Err(format!("clone3 with set_tid on PROT_NONE: {r1}, straddling args: {r2}; want -14 twice"));
    }
    let want = json!({"event": "clone3", "ret": -14, "errno": "EFAULT", "stage": "args", "pidfd": null,
                      "child_pid": null, "flag_names_include": ["CLONE_PIDFD"]});
    Ok(vec![want.clone(), want, sentinel()])
}

fn raw_clone3(args: *mut u8, size: usize) -> i64 {
    let r = unsafe { libc::syscall(libc::SYS_clone3, args, size) };
    if r == 0 {
        unsafe { libc::_exit(0) };
    }
    if r < 0 { -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { r }
}

/// A 32-bit (ia32) syscall from this 64-bit process: `int $0x80` with the ia32 number and
/// arguments in ebx, ecx, edx, esi, edi. Returns the kernel's value (negative errno).
#[cfg(target_arch = "x86_64")]
pub(crate) fn int80(nr: i64, a: u64, b: u64, c: u64, d: u64, e: u64) -> i64 {
    let mut r = nr;
    // SAFETY: a syscall with plain integer arguments; rbx is saved and restored around it
    // (LLVM reserves it). A fork-like clone's child returns here too and exits at once.
    unsafe {
        std::arch::asm!(
            "xchg {a}, rbx",
            "int 0x80",
            "xchg {a}, rbx",
            a = inout(reg) a => _,
            inout("rax") r,
            in("rcx") b,
            in("rdx") c,
            in("rsi") d,
            in("rdi") e,
            options(nostack)
        );
    }
    r as i32 as i64
}

/// Memory below 4 GiB, which 32-bit pointers can reach.
#[cfg(target_arch = "x86_64")]
fn low_page() -> Result<*mut u8, String> {
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p as u64 >= 1 << 32 {
        return Err("mmap(MAP_32BIT) failed".into());
    }
    Ok(p.cast())
}

/// Input 1: 32-bit callers. pidfd_open (ia32 434), pidfd_send_signal (424), pidfd_getfd
/// (438), clone with CLONE_PIDFD (120, the pidfd pointer in edx) and clone3 (435) through
/// `int $0x80`: every call reported with `compat: true` (the agent runs with
/// --compat-syscalls in the suite).
#[cfg(target_arch = "x86_64")]
pub fn compat_calls() -> Result<Vec<Value>, String> {
    let low = low_page()?;
    let child = sys::sleeper();
    let fd = int80(434, child as u64, 0, 0, 0, 0);
    let sig = int80(424, fd as u64, 0, 0, 0, 0);
    let got = int80(438, fd as u64, 1, 0, 0, 0);
    sys::reap(child);
    // clone(flags, newsp, parent_tidptr, tls, child_tidptr): the pidfd goes to parent_tidptr.
    let slot = low as *mut i32;
    let c = int80(120, CLONE_PIDFD | SIGCHLD, 0, slot as u64, 0, 0);
    if c == 0 {
        unsafe { libc::_exit(0) };
    }
    let clone_fd = unsafe { slot.read() };
    let clone_real = fdinfo_pid(i64::from(clone_fd));
    sys::wait_child(c);
    let slot3 = unsafe { low.add(8) } as *mut i32;
    let args = unsafe { low.add(64) } as *mut CloneArgs;
    unsafe {
        args.write(CloneArgs {
            flags: CLONE_PIDFD,
            pidfd: slot3 as u64,
            exit_signal: SIGCHLD,
            ..Default::default()
        })
    };
    let c3 = int80(435, args as u64, size_of::<CloneArgs>() as u64, 0, 0, 0);
    if c3 == 0 {
        unsafe { libc::_exit(0) };
    }
    let clone3_fd = unsafe { slot3.read() };
    let clone3_real = fdinfo_pid(i64::from(clone3_fd));
    sys::wait_child(c3);
    if fd < 0 || sig != 0 || got < 0 || c <= 0 || c3 <= 0 || clone_real != Some(c) || clone3_real != Some(c3)
    {
        return Err(format!(
            "ia32 pidfd_open {fd}, send_signal {sig}, getfd {got}, clone {c} (fd {clone_fd} {clone_real:?}), clone3 {c3} (fd {clone3_fd} {clone3_real:?})"
        ));
    }
    for f in [fd, got, i64::from(clone_fd), i64::from(clone3_fd)] {
        unsafe { libc::close(f as i32) };
    }
    Ok(vec![
        json!({"event": "pidfd_open", "compat": true, "ret": fd, "pidfd": fd, "target_pid": child, "errno": null}),
        json!({"event": "pidfd_send_signal", "compat": true, "ret": 0, "target_pid": child, "signal": "0", "signal_nr": 0}),
        json!({"event": "pidfd_getfd", "compat": true, "ret": got, "target_pid": child, "target_fd": 1}),
        json!({"event": "clone", "compat": true, "ret": c, "child_pid": c, "pidfd": clone_fd, "errno": null,
               "stage": null, "flag_names_include": ["CLONE_PIDFD"]}),
        json!({"event": "clone3", "compat": true, "ret": c3, "child_pid": c3, "pidfd": clone3_fd, "errno": null,
               "stage": null, "flag_names_include": ["CLONE_PIDFD"]}),
        sentinel(),
    ])
}

/// Input 6: the caller is in `a/b`, `a/pids.max` = 1 (the caller itself), `b/pids.max` =
/// max: the pids controller refuses the clone at the ancestor. Stage `pids_cgroup`.
pub fn clone_pids_ancestor_limit() -> Result<Vec<Value>, String> {
    let cg = crate::cgroup::NestedPids::create(1)?;
    cg.enter()?;
    let mut pidfd: i32 = -1;
    let r = sys::clone_fork(CLONE_PIDFD | SIGCHLD, &mut pidfd);
    cg.leave()?;
    let refused = cg.max_events();
    drop(cg);
    if r != -11 {
        sys::wait_child(r);
        return Err(format!("clone in a/b with a/pids.max=1 returned {r}, want -11"));
    }
    if refused == Some(0) {
        return Err("pids.events of a and b show no refusal: the EAGAIN came from elsewhere".into());
    }
    Ok(vec![
        json!({"event": "clone", "ret": -11, "errno": "EAGAIN", "stage": "pids_cgroup", "pidfd": null,
               "child_pid": null, "flag_names_include": ["CLONE_PIDFD"]}),
        sentinel(),
    ])
}

/// The cgroup2 mount point, if any.
fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split(' ').next() == Some("cgroup2")).then(|| pre.split(' ').nth(4).unwrap_or("").into())
    })
}

/// Input 11: a container-shaped cgroup (`…/docker-<64 hex>.scope`) whose only process
/// calls pidfd_open twice and exits; the cgroup is removed right after. Both events carry
/// the container id, taken while the caller was in the kernel.
pub fn short_lived_container() -> Result<Vec<Value>, String> {
    let root = cgroup2_root().ok_or("no cgroup2 mount")?;
    let me = std::process::id();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let id = format!("{:032x}{:032x}", now, u128::from(me) * 0x9e37_79b9_7f4a_7c15);
    let slice = root.join(format!("pidfd-trace-test-{me}.slice"));
    let scope = slice.join(format!("docker-{id}.scope"));
    std::fs::create_dir_all(&scope).map_err(|e| format!("mkdir {}: {e}", scope.display()))?;
    let mut fds = [0i32; 2];
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe { libc::close(fds[0]) };
        let moved = std::fs::write(scope.join("cgroup.procs"), std::process::id().to_string());
        let pid = std::process::id() as i32;
        let a = sys::pidfd_open(pid, 0);
        let b = sys::pidfd_open(pid, 0);
        let out = json!({"moved": moved.is_ok(), "a": a, "b": b});
        let mut w = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
        let _ = w.write_all(out.to_string().as_bytes());
        unsafe { libc::_exit(0) };
    }
    unsafe { libc::close(fds[1]) };
    let mut text = String::new();
    let mut r = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    let _ = r.read_to_string(&mut text);
    sys::wait_child(i64::from(child));
    // Gone before the agent is likely to have looked.
    let removed = std::fs::remove_dir(&scope).is_ok() && std::fs::remove_dir(&slice).is_ok();
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("container child reported nothing: {e}"))?;
    if v["moved"] != true || !removed || v["a"].as_i64().is_none_or(|a| a < 0) {
        return Err(format!("container cgroup: child {v}, removed {removed}"));
    }
    REPORT_PID.store(child as u32, Ordering::Relaxed);
    let ev = |fd: &Value| json!({"event": "pidfd_open", "ret": fd, "target_pid": child, "container_id": id});
    Ok(vec![ev(&v["a"]), ev(&v["b"])])
}

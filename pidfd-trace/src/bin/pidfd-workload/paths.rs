//! Scenarios for the creation paths beyond clone and pidfd_open (README "Every way a pidfd is
//! born"): each makes the kernel create pidfds for real and expects exactly the events the
//! mode sees. What each call returned decides the expectation, so the same scenario holds on
//! kernels without the path (6.5 for SO_PEERPIDFD, pidfs handles, 6.9 for reopen).
use serde_json::{Value, json};

use crate::{scenarios::sentinel, sys};

const SO_PEERCRED: i32 = 17;
const SO_PASSPIDFD: i32 = 76;
const SO_PEERPIDFD: i32 = 77;
const SCM_PIDFD: i32 = 4;
/// include/uapi/linux/magic.h.
const PIDFS_MAGIC: i64 = 0x5049_4446;

/// Marks a scenario whose path this kernel does not have: reported as a skip with `why`
/// (suite.rs), its other events still checked.
fn not_in_kernel(why: &str) -> Value {
    json!({ "not_in_kernel": why })
}

fn last_errno() -> i64 {
    -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn ret(r: i64) -> i64 {
    if r < 0 { last_errno() } else { r }
}

fn errno_name(r: i64) -> Value {
    json!(match -r {
        14 => "EFAULT",
        61 => "ENODATA",
        92 => "ENOPROTOOPT",
        116 => "ESTALE",
        3 => "ESRCH",
        e => return json!(format!("E{e}")),
    })
}

/// The pidfs inode number of `fd` (6.9+: `pidfd_ino`), or null before pidfs.
pub(crate) fn pidfd_ino(fd: i64) -> Value {
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd as i32, &mut fs) } != 0 || fs.f_type as i64 != PIDFS_MAGIC {
        return Value::Null;
    }
    if unsafe { libc::fstat(fd as i32, &mut st) } != 0 {
        return Value::Null;
    }
    json!(st.st_ino)
}

fn getsockopt(fd: i32, name: i32, optval: *mut libc::c_void) -> i64 {
    let mut len: libc::socklen_t = 4;
    ret(i64::from(unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, optval, &mut len) }))
}

fn socketpair() -> Result<[i32; 2], String> {
    let mut sv = [0i32; 2];
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) } != 0 {
        return Err(format!("socketpair: {}", std::io::Error::last_os_error()));
    }
    Ok(sv)
}

/// A page the process may read but not write.
fn read_only_page() -> *mut libc::c_void {
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
    p
}

/// getsockopt(SO_PEERPIDFD): a success (the peer of a socketpair is this process), ENODATA on
/// an unconnected socket, EFAULT (stage user_memory: the pidfd existed, the kernel could not
/// write its number) into a read-only page; an SO_PEERCRED call that must not be recorded.
pub fn so_peerpidfd() -> Result<Vec<Value>, String> {
    let me = std::process::id() as i64;
    let sv = socketpair()?;
    let mut cred = [0u8; 12];
    let peercred = getsockopt(sv[0], SO_PEERCRED, cred.as_mut_ptr().cast());
    let mut pidfd: i32 = -1;
    let ok = getsockopt(sv[0], SO_PEERPIDFD, (&mut pidfd as *mut i32).cast());
    let ino = if ok == 0 { pidfd_ino(i64::from(pidfd)) } else { Value::Null };
    let lone = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    let mut unused: i32 = -1;
    let nodata = getsockopt(lone, SO_PEERPIDFD, (&mut unused as *mut i32).cast());
    let fault = getsockopt(sv[0], SO_PEERPIDFD, read_only_page());
    unsafe {
        for fd in [sv[0], sv[1], lone, pidfd] {
            libc::close(fd);
        }
    }
    if peercred != 0 {
        return Err(format!("getsockopt(SO_PEERCRED) returned {peercred}"));
    }
    let mut want = Vec::new();
    for (r, stage) in [(ok, "other"), (nodata, "other"), (fault, "user_memory")] {
        want.push(if r == 0 {
            json!({"event": "so_peerpidfd", "ret": 0, "errno": null, "stage": null, "pidfd": pidfd,
                   "target_pid": me, "target_reason": null, "pidfd_ino": ino, "flags": 0})
        } else {
            // Before 6.5 every call is ENOPROTOOPT: still an attempt to get a pidfd.
            let stage = if r == -92 { "other" } else { stage };
            json!({"event": "so_peerpidfd", "ret": r, "errno": errno_name(r), "stage": stage, "pidfd": null,
                   "target_pid": null, "pidfd_ino": null})
        });
    }
    if ok == 0 && (nodata != -61 || fault != -14) {
        return Err(format!(
            "SO_PEERPIDFD: unconnected {nodata} (want -61), read-only optval {fault} (want -14)"
        ));
    }
    if ok == -92 {
        want.push(not_in_kernel("no SO_PEERPIDFD before 6.5: ENOPROTOOPT, recorded as failed attempts"));
    }
    want.push(sentinel());
    Ok(want)
}

/// struct file_handle with room for any handle pidfs makes.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

fn name_to_handle(dirfd: i32, path: &std::ffi::CStr, flags: i32) -> Result<FileHandle, i64> {
    let mut h = FileHandle { handle_bytes: 128, handle_type: 0, f_handle: [0; 128] };
    let mut mnt: i32 = 0;
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dirfd,
            path.as_ptr(),
            &mut h as *mut FileHandle,
            &mut mnt,
            flags,
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(h) }
}

fn open_by_handle(mount_fd: i32, h: &mut FileHandle, flags: i32) -> i64 {
    ret(unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd, h as *mut FileHandle, flags) })
}

/// open_by_handle_at of a pidfs handle made by name_to_handle_at of a pidfd: a new pidfd for
/// the same process (same `pidfd_ino`), then ESTALE once the process is reaped; a cgroupfs
/// handle (same handle type, another filesystem) opened as root must not be recorded.
pub fn pidfs_handle() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    let mut want = vec![json!({"event": "pidfd_open", "ret": fd, "target_pid": child})];
    let mut handle = match name_to_handle(fd as i32, c"", libc::AT_EMPTY_PATH) {
        Ok(h) => h,
        Err(e) => {
            // No pidfs file handles in this kernel (before 6.13): nothing to open.
            sys::reap(child);
            unsafe { libc::close(fd as i32) };
            want.push(not_in_kernel(&format!(
                "no pidfs file handles: name_to_handle_at of a pidfd gave {e}"
            )));
            want.push(sentinel());
            return Ok(want);
        }
    };
    let ok = open_by_handle(fd as i32, &mut handle, libc::O_RDONLY | libc::O_CLOEXEC);
    if ok < 0 {
        sys::reap(child);
        return Err(format!("open_by_handle_at of a live process's pidfs handle: {ok}"));
    }
    want.push(json!({"event": "pidfs_handle", "ret": ok, "errno": null, "stage": null, "pidfd": ok,
                     "target_pid": child, "pidfd_ino": pidfd_ino(fd), "flags": libc::O_CLOEXEC,
                     "flag_names": ["O_CLOEXEC"]}));
    sys::reap(child);
    let stale = open_by_handle(fd as i32, &mut handle, libc::O_RDONLY);
    if stale >= 0 {
        return Err(format!("open_by_handle_at of a reaped process's handle returned fd {stale}"));
    }
    want.push(json!({"event": "pidfs_handle", "ret": stale, "errno": errno_name(stale), "stage": "other",
                     "pidfd": null, "target_pid": null, "flags": 0}));
    // A kernfs handle of another filesystem: turned away at entry (its mount fd is no pidfd).
    for dir in [c"/sys/fs/cgroup/unified", c"/sys/fs/cgroup"] {
        let dfd = unsafe { libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        if dfd < 0 {
            continue;
        }
        if let Ok(mut h) = name_to_handle(dfd, c"", libc::AT_EMPTY_PATH)
            && h.handle_type == 0xfe
        {
            let r = open_by_handle(dfd, &mut h, libc::O_RDONLY | libc::O_DIRECTORY);
            if r >= 0 {
                unsafe { libc::close(r as i32) };
            }
        }
        unsafe { libc::close(dfd) };
        break;
    }
    unsafe {
        libc::close(ok as i32);
        libc::close(fd as i32);
    }
    want.push(sentinel());
    Ok(want)
}

fn open(path: &str) -> i64 {
    let c = std::ffi::CString::new(path).expect("no NUL");
    ret(i64::from(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }))
}

/// struct open_how (include/uapi/linux/openat2.h).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(path: &str) -> i64 {
    let c = std::ffi::CString::new(path).expect("no NUL");
    let how = OpenHow { flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64, mode: 0, resolve: 0 };
    ret(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const OpenHow,
            size_of::<OpenHow>(),
        )
    })
}

/// open and openat2 of `/proc/self/fd/<pidfd>`: a new pidfd each (6.9+; before, an anon
/// inode cannot be reopened and nothing is recorded), the second after the process was reaped
/// (`target_pid` null, `target_reason` reaped). Opening /dev/null is not recorded.
pub fn reopen() -> Result<Vec<Value>, String> {
    let child = sys::sleeper();
    let fd = sys::pidfd_open(child, 0);
    let mut want = vec![json!({"event": "pidfd_open", "ret": fd, "target_pid": child})];
    let null = open("/dev/null");
    let link = format!("/proc/self/fd/{fd}");
    // An O_PATH open of the pidfd is a pidfs file but no pidfd (the kernel refuses it as one:
    // empty_fops): no event, and it must not blind the agent to the real reopens after it
    // (tests/host_tracepoint.rs runs this scenario first thing in a fresh agent too).
    let opath = {
        let c = std::ffi::CString::new(link.as_str()).expect("no NUL");
        ret(i64::from(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) }))
    };
    let live = open(&link);
    sys::reap(child);
    let dead = openat2(&link);
    let ino = pidfd_ino(fd);
    for r in [null, opath, live, dead, fd] {
        if r >= 0 {
            unsafe { libc::close(r as i32) };
        }
    }
    if null < 0 {
        return Err(format!("open /dev/null: {null}"));
    }
    if live >= 0 {
        want.push(json!({"event": "reopen", "ret": live, "errno": null, "pidfd": live, "target_pid": child,
                         "target_reason": null, "pidfd_ino": ino}));
    }
    if dead >= 0 {
        want.push(json!({"event": "reopen", "ret": dead, "errno": null, "pidfd": dead, "target_pid": null,
                         "target_reason": "reaped", "pidfd_ino": ino}));
    }
    if live < 0 {
        want.push(not_in_kernel(&format!(
            "an anon-inode pidfd (before 6.9) cannot be reopened: open gave {live}"
        )));
    }
    if (live >= 0) != (dead >= 0) {
        return Err(format!("reopen of a live process's pidfd gave {live}, of a reaped one's {dead}"));
    }
    want.push(sentinel());
    Ok(want)
}

/// recvmsg of an SCM_PIDFD message (6.5+): the kernel installs a pidfd, which no syscall
/// tracepoint sees: in tracepoint mode `check` declares scm_pidfd not visible
/// (tests/operator.rs) and no event may be invented for it; the function modes' creation
/// funnel reports it with the installed fd, this process as the target and the pidfs inode. The scenario proves the pidfd was really made.
pub fn scm_pidfd_blind() -> Result<Vec<Value>, String> {
    let sv = socketpair()?;
    let one: i32 = 1;
    let set =
        unsafe { libc::setsockopt(sv[0], libc::SOL_SOCKET, SO_PASSPIDFD, (&one as *const i32).cast(), 4) };
    if set != 0 {
        let why = format!("no SO_PASSPIDFD before 6.5 ({})", std::io::Error::last_os_error());
        unsafe {
            libc::close(sv[0]);
            libc::close(sv[1]);
        }
        return Ok(vec![not_in_kernel(&why), sentinel()]);
    }
    unsafe { libc::write(sv[1], b"x".as_ptr().cast(), 1) };
    let mut data = [0u8; 1];
    let mut control = [0u64; 8];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 1 };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    let r = unsafe { libc::recvmsg(sv[0], &mut msg, 0) };
    let mut got = None;
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == SCM_PIDFD {
            got = Some(unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()) });
        }
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    unsafe {
        libc::close(sv[0]);
        libc::close(sv[1]);
    }
    match got {
        Some(pidfd) if r == 1 && pidfd >= 0 => {
            let ino = pidfd_ino(i64::from(pidfd));
            unsafe { libc::close(pidfd) };
            Ok(funnel_seen("scm_pidfd", pidfd, ino))
        }
        _ => Err(format!("recvmsg with SO_PASSPIDFD returned {r} without an SCM_PIDFD pidfd")),
    }
}

/// pidfd_getfd of a pidfd a child holds: a copy of a pidfd, so also a created pidfd
/// (`pidfds_created_total{source="pidfd_getfd"}`), with the same `pidfd_ino`.
pub fn getfd_pidfd_copy() -> Result<Vec<Value>, String> {
    // The holder inherits, at `held`, a pidfd of another child (not of this process: a
    // pidfd_open of ourselves is the suite's end-of-scenario sentinel).
    let other = sys::sleeper();
    let held = sys::pidfd_open(other, 0);
    let holder = sys::sleeper();
    let fd = sys::pidfd_open(holder, 0);
    let copy = sys::pidfd_getfd(fd as i32, held as i32);
    let ino = pidfd_ino(held);
    sys::reap(holder);
    sys::reap(other);
    for r in [copy, fd, held] {
        if r >= 0 {
            unsafe { libc::close(r as i32) };
        }
    }
    if copy < 0 {
        return Err(format!("pidfd_getfd of the holder's pidfd {held}: {copy}"));
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": held, "target_pid": other}),
        json!({"event": "pidfd_open", "ret": fd, "target_pid": holder}),
        json!({"event": "pidfd_getfd", "ret": copy, "errno": null, "target_fd": held, "target_pid": holder,
               "file_kind": "pidfd", "pidfd_ino": ino}),
        sentinel(),
    ])
}

/// fanotify (5.15+): FAN_REPORT_PIDFD.
const FAN_CLASS_NOTIF: u32 = 0;
const FAN_REPORT_PIDFD: u32 = 0x80;
const FAN_MARK_ADD: u32 = 1;
const FAN_OPEN: u64 = 0x20;
const FAN_EVENT_INFO_TYPE_PIDFD: u8 = 4;

/// A read of a FAN_REPORT_PIDFD fanotify group (5.15+): the kernel installs a pidfd of the
/// process behind the event (here this one), which no syscall tracepoint sees: in tracepoint
/// mode `check` declares fanotify not visible and no event may be invented; the function
/// modes' creation funnel reports it. The scenario proves the pidfd was really made.
pub fn fanotify_blind() -> Result<Vec<Value>, String> {
    let group = ret(unsafe {
        libc::syscall(
            libc::SYS_fanotify_init,
            FAN_CLASS_NOTIF | FAN_REPORT_PIDFD,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    });
    if group < 0 {
        return Ok(vec![
            not_in_kernel(&format!("no FAN_REPORT_PIDFD before 5.15: fanotify_init gave {group}")),
            sentinel(),
        ]);
    }
    // Our own executable: a file that exists in every guest, opened read-only below.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let path = std::ffi::CString::new(exe.to_string_lossy().as_bytes()).expect("no NUL");
    let marked = ret(unsafe {
        libc::syscall(
            libc::SYS_fanotify_mark,
            group as i32,
            FAN_MARK_ADD,
            FAN_OPEN,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    });
    let opened = open(&exe.to_string_lossy());
    let mut buf = [0u8; 4096];
    let n = if marked == 0 {
        unsafe { libc::read(group as i32, buf.as_mut_ptr().cast(), buf.len()) }
    } else {
        -1
    };
    let (mut pidfd, mut event_fd) = (-1i32, -1i32);
    // struct fanotify_event_metadata (24 bytes: event_len, vers, reserved, metadata_len, mask,
    // fd, pid), then info records: header (type, pad, len) and, for a pidfd, the pidfd.
    if n >= 24 {
        let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap());
        let (event_len, meta_len) = (u32_at(0) as usize, u16::from_ne_bytes([buf[6], buf[7]]) as usize);
        event_fd = u32_at(16) as i32;
        let mut off = meta_len;
        while off + 8 <= event_len.min(n as usize) {
            let (kind, len) = (buf[off], u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) as usize);
            if kind == FAN_EVENT_INFO_TYPE_PIDFD {
                pidfd = u32_at(off + 4) as i32;
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
    let ino = if pidfd >= 0 { pidfd_ino(i64::from(pidfd)) } else { Value::Null };
    for fd in [pidfd, event_fd, opened as i32, group as i32] {
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
    }
    if pidfd < 0 {
        return Err(format!(
            "fanotify FAN_REPORT_PIDFD: mark {marked}, open {opened}, read {n}: no pidfd in the event"
        ));
    }
    Ok(funnel_seen("fanotify", pidfd, ino))
}

/// What a creation path only the function modes' funnel sees expects: its event (pidfd
/// `pidfd` of this process, pidfs inode `ino`, null before 6.9), marked
/// `function_probes_only` (absent in tracepoint mode), then the sentinel. Every kernel that
/// has these paths has the funnel: 5.15+ through bpf_task_pt_regs, Debian's 5.10 (which has
/// FAN_REPORT_PIDFD) through the x86_64 stack's saved registers.
fn funnel_seen(event: &str, pidfd: i32, ino: Value) -> Vec<Value> {
    eprintln!("{event}: the kernel installed pidfd {pidfd} (pidfd_ino {ino})");
    vec![
        json!({"event": event, "function_probes_only": true, "ret": 0, "errno": null,
               "stage": null, "pidfd": pidfd, "target_pid": std::process::id(),
               "target_reason": null, "pidfd_ino": ino}),
        sentinel(),
    ]
}

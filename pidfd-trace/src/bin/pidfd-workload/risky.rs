//! Risky pidfd use (README "Risky pidfd use"): fd theft from an exiting process, from one
//! running with other credentials and from another container, and benign getfd traffic that
//! must stay unflagged; plus the check that `serve` counts exactly these in
//! `pidfd_trace_getfd_risky_total{reason}`.
use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{scenarios::sentinel, sys};

/// A regular file of our own under the temp dir, open read-only; (canonical path, fd).
fn temp_file(tag: &str) -> Result<(PathBuf, i32), String> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("pidfd-trace-risky-{tag}-{}", std::process::id()));
    fs::write(&path, b"not a secret\n").map_err(|e| format!("write {}: {e}", path.display()))?;
    let path = fs::canonicalize(&path).map_err(|e| e.to_string())?;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(format!("open {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok((path, fd))
}

/// Forks a child that runs `setup`, says through a pipe whether it worked, then sleeps until
/// killed. The child inherits our fds.
fn child(setup: impl FnOnce() -> bool) -> Result<i32, String> {
    let mut p = [0i32; 2];
    if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
        return Err("pipe failed".into());
    }
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe { libc::close(p[0]) };
        let ok = setup();
        unsafe {
            libc::write(p[1], [u8::from(ok)].as_ptr().cast(), 1);
            if !ok {
                libc::_exit(1);
            }
            loop {
                libc::pause();
            }
        }
    }
    unsafe { libc::close(p[1]) };
    let mut b = [0u8];
    let n = unsafe { libc::read(p[0], b.as_mut_ptr().cast(), 1) };
    unsafe { libc::close(p[0]) };
    if pid < 0 || n != 1 || b[0] != 1 {
        if pid > 0 {
            kill_reap(pid);
        }
        return Err(format!("child setup failed (fork {pid}, read {n}, ok {})", b[0]));
    }
    Ok(pid)
}

fn kill_reap(pid: i32) {
    unsafe { libc::kill(pid, libc::SIGKILL) };
    sys::reap(pid);
}

fn readlink_fd(fd: i64) -> Option<String> {
    fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// pidfd_open + pidfd_getfd of `fd` in `pid`; (pidfd, new fd). Closes both.
fn take(pid: i32, fd: i32) -> Result<(i64, i64, Option<String>), String> {
    let pidfd = sys::pidfd_open(pid, 0);
    if pidfd < 0 {
        return Err(format!("pidfd_open({pid}) failed: {pidfd}"));
    }
    let r = sys::pidfd_getfd(pidfd as i32, fd);
    let path = if r >= 0 { readlink_fd(r) } else { None };
    unsafe {
        if r >= 0 {
            libc::close(r as i32);
        }
        libc::close(pidfd as i32);
    }
    Ok((pidfd, r, path))
}

/// A child stopped at PTRACE_EVENT_EXIT after exit_group(): it still has its files and mm,
/// not yet PF_EXITING; the kernel has it at its exit stop (`exit_stop`, every version) and,
/// from 6.x, its signal group exiting too (`group_exit`: 5.10's do_group_exit() sets
/// SIGNAL_GROUP_EXIT only when other threads exist). We take its regular file.
pub fn getfd_exiting() -> Result<Vec<Value>, String> {
    let (path, fd) = temp_file("exiting")?;
    let mut p = [0i32; 2];
    if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
        return Err("pipe failed".into());
    }
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::close(p[1]);
            let mut b = [0u8];
            libc::read(p[0], b.as_mut_ptr().cast(), 1);
            libc::syscall(libc::SYS_exit_group, 0);
            libc::_exit(0);
        }
    }
    unsafe { libc::close(p[0]) };
    let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, libc::PTRACE_O_TRACEEXIT as usize) };
    unsafe {
        libc::write(p[1], [1u8].as_ptr().cast(), 1);
        libc::close(p[1]);
    }
    if seized != 0 {
        kill_reap(pid);
        return Err(format!("PTRACE_SEIZE failed: {}", std::io::Error::last_os_error()));
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    let at_exit_stop =
        libc::WIFSTOPPED(status) && status >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8));
    if !at_exit_stop {
        kill_reap(pid);
        return Err(format!("child not at PTRACE_EVENT_EXIT: wait status {status:#x}"));
    }
    let taken = take(pid, fd);
    unsafe {
        libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize);
        libc::close(fd);
    }
    sys::reap(pid);
    let _ = fs::remove_file(&path);
    let (pidfd, r, got) = taken?;
    let want_path = path.to_string_lossy().into_owned();
    if r < 0 || got.as_deref() != Some(want_path.as_str()) {
        return Err(format!("pidfd_getfd at the exit stop returned {r} ({got:?})"));
    }
    Ok(vec![
        json!({"event": "pidfd_open", "ret": pidfd, "target_pid": pid}),
        json!({"event": "pidfd_getfd", "ret": r, "errno": null, "target_fd": fd, "target_pid": pid,
               "risk": ["target_exiting"], "target_exit_include": ["exit_stop"], "file_kind": "regular",
               "file_path": want_path, "target_uid": 0, "target_elevated": false}),
        sentinel(),
    ])
}

/// Root takes a file from a process running as nobody (65534), then from one whose real uid
/// is nobody but whose euid/suid are root, as a setuid-root program run by nobody has.
pub fn getfd_cred_mismatch() -> Result<Vec<Value>, String> {
    const NOBODY: u32 = 65534;
    let (path, fd) = temp_file("cred")?;
    let drop_to = |euid: u32| {
        move || unsafe {
            libc::setresgid(NOBODY, NOBODY, NOBODY) == 0 && libc::setresuid(NOBODY, euid, euid) == 0
        }
    };
    let plain = child(drop_to(NOBODY));
    let elevated = child(drop_to(0));
    let result = (|| {
        let (plain, elevated) = (plain.clone()?, elevated.clone()?);
        let a = take(plain, fd)?;
        let b = take(elevated, fd)?;
        Ok::<_, String>((plain, elevated, a, b))
    })();
    for c in [&plain, &elevated].into_iter().flatten() {
        kill_reap(*c);
    }
    unsafe { libc::close(fd) };
    let _ = fs::remove_file(&path);
    let (plain, elevated, (pfd_a, ra, _), (pfd_b, rb, _)) = result?;
    if ra < 0 || rb < 0 {
        return Err(format!("pidfd_getfd as root from uid {NOBODY} returned {ra} and {rb}"));
    }
    let p = path.to_string_lossy();
    Ok(vec![
        json!({"event": "pidfd_open", "ret": pfd_a, "target_pid": plain}),
        json!({"event": "pidfd_getfd", "ret": ra, "errno": null, "target_pid": plain, "risk": ["cred_mismatch"],
               "target_uid": NOBODY, "target_euid": NOBODY, "target_elevated": false, "target_exit": [],
               "file_kind": "regular", "file_path": p}),
        json!({"event": "pidfd_open", "ret": pfd_b, "target_pid": elevated}),
        json!({"event": "pidfd_getfd", "ret": rb, "errno": null, "target_pid": elevated, "risk": ["cred_mismatch"],
               "target_uid": NOBODY, "target_euid": 0, "target_elevated": true, "file_kind": "regular",
               "file_path": p}),
        sentinel(),
    ])
}

/// The cgroup2 mount point (the host's `/sys/fs/cgroup/unified` on hybrid hosts).
fn cgroup2_root() -> Result<PathBuf, String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            (post.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| "no cgroup2 hierarchy is mounted".into())
}

fn enter_cgroup(dir: &Path, pid: u32) -> bool {
    fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok()
}

/// How long the cross-container scenario keeps both processes in their cgroups after the
/// getfd, so that the agent (which resolves cgroup ids to paths through /proc/<pid>/cgroup
/// or a rate-limited walk once it dropped its capabilities) finds both.
const STAY_IN_CGROUPS: Duration = Duration::from_secs(3);

/// Caller and target in two podman-shaped cgroups (`libpod-<64 hex>.scope`) under the
/// cgroup2 mount; the caller takes the target's socket.
pub fn getfd_cross_container() -> Result<Vec<Value>, String> {
    cross_container(false)
}

/// The same from a 32-bit caller (ia32 pidfd_getfd through `int $0x80`): a compat caller is
/// walked like any other (README "Risky pidfd use"; the suite's agent runs with
/// --compat-syscalls).
#[cfg(target_arch = "x86_64")]
pub fn compat_getfd_cross_container() -> Result<Vec<Value>, String> {
    cross_container(true)
}

fn cross_container(compat: bool) -> Result<Vec<Value>, String> {
    let me = std::process::id();
    let root = cgroup2_root()?;
    let base = root.join(format!("pidfd-trace-risky-{me}"));
    let (id_a, id_b) =
        (format!("{:016x}", me).repeat(4), format!("{:016x}", u64::from(me) | 0xb << 60).repeat(4));
    let (a, b) = (base.join(format!("libpod-{id_a}.scope")), base.join(format!("libpod-{id_b}.scope")));
    for d in [&base, &a, &b] {
        fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let orig = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string())))
        .map(|p| root.join(p.trim_start_matches('/')))
        .unwrap_or_else(|| root.clone());
    let mut sv = [0i32; 2];
    unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) };
    let b2 = b.clone();
    let target = child(move || enter_cgroup(&b2, std::process::id()));
    let result = (|| {
        let target = target.clone()?;
        if !enter_cgroup(&a, me) {
            return Err(format!("cannot enter {}", a.display()));
        }
        let (pidfd, r) =
            if compat { take_compat(target, sv[1])? } else { take(target, sv[1]).map(|(p, r, _)| (p, r))? };
        // pidfd_send_signal also takes a /proc/<pid> directory: the same facts for it.
        let procdir = if compat { None } else { Some(signal_through_proc_dir(target)?) };
        std::thread::sleep(STAY_IN_CGROUPS);
        let end = sentinel();
        Ok((target, pidfd, r, procdir, end))
    })();
    enter_cgroup(&orig, me);
    if let Ok(t) = &target {
        kill_reap(*t);
    }
    unsafe {
        libc::close(sv[0]);
        libc::close(sv[1]);
    }
    for d in [&a, &b, &base] {
        let _ = fs::remove_dir(d);
    }
    let (target, pidfd, r, procdir, end) = result?;
    if r < 0 {
        return Err(format!("pidfd_getfd across cgroups returned {r}"));
    }
    let mut getfd = json!({"event": "pidfd_getfd", "ret": r, "errno": null, "target_pid": target, "target_fd": sv[1],
           "risk": ["cross_container"], "container_id": id_a, "file_kind": "socket", "file_path": null,
           "target_uid": 0, "target_elevated": false});
    if compat {
        getfd["compat"] = json!(true);
    }
    let mut want = vec![json!({"event": "pidfd_open", "ret": pidfd, "target_pid": target}), getfd];
    if let Some(ret) = procdir {
        want.push(json!({"event": "pidfd_send_signal", "ret": ret, "errno": null, "target_pid": target,
                         "signal": "0", "risk": ["cross_container"]}));
    }
    want.push(end);
    Ok(want)
}

/// pidfd_send_signal(fd of `/proc/<pid>`, 0) (break-it finding: through a /proc directory the
/// call got no risk facts at all); returns the call's result.
fn signal_through_proc_dir(pid: i32) -> Result<i64, String> {
    let path = std::ffi::CString::new(format!("/proc/{pid}")).expect("no NUL");
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open /proc/{pid}: {}", std::io::Error::last_os_error()));
    }
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, 0, std::ptr::null::<u8>(), 0) };
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(format!("pidfd_send_signal(/proc/{pid}, 0): {}", std::io::Error::last_os_error()));
    }
    Ok(0)
}

/// `take` with the pidfd_getfd made through the ia32 entry (the fd is only closed).
#[cfg(target_arch = "x86_64")]
fn take_compat(pid: i32, fd: i32) -> Result<(i64, i64), String> {
    let pidfd = sys::pidfd_open(pid, 0);
    if pidfd < 0 {
        return Err(format!("pidfd_open({pid}) failed: {pidfd}"));
    }
    let r = crate::truth::int80(438, pidfd as u64, fd as u64, 0, 0, 0);
    unsafe {
        if r >= 0 {
            libc::close(r as i32);
        }
        libc::close(pidfd as i32);
    }
    Ok((pidfd, r))
}

#[cfg(not(target_arch = "x86_64"))]
fn take_compat(_pid: i32, _fd: i32) -> Result<(i64, i64), String> {
    Err("no ia32 entry on this architecture".into())
}

/// Getfds per file kind in the benign scenario (a memfd and a socket: 2 × this in all).
pub const BENIGN_EACH: usize = 1000;

/// What GPU/HPC runtimes do all day: same uid, same cgroup, a live peer; its memfd and its
/// socket taken over and over. Nothing may be flagged.
pub fn getfd_benign() -> Result<Vec<Value>, String> {
    let memfd = unsafe { libc::memfd_create(c"pidfd-trace-benign".as_ptr(), 0) };
    let mut sv = [0i32; 2];
    unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) };
    if memfd < 0 || sv[1] <= 0 {
        return Err("memfd_create or socketpair failed".into());
    }
    let peer = child(|| true)?;
    let pidfd = sys::pidfd_open(peer, 0);
    let mut want = vec![json!({"event": "pidfd_open", "ret": pidfd, "target_pid": peer})];
    let mut failed = None;
    for _ in 0..BENIGN_EACH {
        for (fd, kind) in [(memfd, "memfd"), (sv[1], "socket")] {
            let r = sys::pidfd_getfd(pidfd as i32, fd);
            if r < 0 {
                failed.get_or_insert(r);
            } else {
                unsafe { libc::close(r as i32) };
            }
            want.push(json!({"event": "pidfd_getfd", "ret": r, "target_fd": fd, "target_pid": peer,
                             "risk": [], "target_exit": [], "file_kind": kind, "file_path": null}));
        }
    }
    kill_reap(peer);
    unsafe {
        libc::close(pidfd as i32);
        libc::close(memfd);
        libc::close(sv[0]);
        libc::close(sv[1]);
    }
    if let Some(r) = failed {
        return Err(format!("a benign pidfd_getfd failed: {r}"));
    }
    want.push(sentinel());
    Ok(want)
}

/// Risky getfds of processes other than the suite's scenarios reported so far by the suite's
/// trace agent, per reason, counted as the kernel counts them (succeeded or refused EPERM).
pub type Foreign<'a> = &'a dyn Fn() -> Vec<(String, u64)>;

/// What the risky scenarios add to `pidfd_trace_getfd_risky_total{reason}`, sorted by reason.
const RISKY_DELTAS: [(&str, u64); 3] = [("cred_mismatch", 2), ("cross_container", 1), ("target_exiting", 1)];

/// A `serve` beside the suite's `trace` agent, watching `pidfd_trace_getfd_risky_total`: all
/// three reasons exported at 0 from the start, raised by exactly what getfd_exiting,
/// getfd_cred_mismatch and getfd_cross_container did, and not at all by getfd_benign. The
/// counter is host-wide: what other processes add meanwhile is taken out, as the suite's
/// trace agent reports their risky getfds (`Foreign`), so another program making risky getfds
/// while the suite runs cannot fail it or hide a wrong count.
pub struct CounterWatch {
    serve: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    addr: String,
    timeout: Duration,
    start: Vec<(String, u64)>,
    /// Risky getfds of other processes the trace agent had reported when `start` was read.
    foreign_start: Vec<(String, u64)>,
    benign: Option<(Vec<(String, u64)>, u64)>,
    /// getfd_benign ran between `before_benign` and `after_benign`.
    checked: bool,
    error: Option<String>,
}

impl CounterWatch {
    pub fn start(agent: &Path, mode: &str, timeout: Duration, foreign: Foreign) -> Result<Self, String> {
        let mut serve = std::process::Command::new(agent)
            .args(["serve", "--mode", mode, "--web.listen-address", "127.0.0.1:0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start serve: {e}"))?;
        let lines = crate::suite::collect_lines(serve.stderr.take().expect("piped"));
        let mut w = Self {
            serve,
            lines,
            addr: String::new(),
            timeout,
            start: Vec::new(),
            foreign_start: Vec::new(),
            benign: None,
            checked: false,
            error: None,
        };
        let started = (|| {
            w.addr = wait_addr(&w.lines, timeout)?;
            w.start = risky(&w.addr)?;
            w.foreign_start = foreign();
            if w.start.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>() != RISKY_DELTAS.map(|(r, _)| r) {
                return Err(format!("want all three reasons exported from the start, got {:?}", w.start));
            }
            Ok(())
        })();
        match started {
            Ok(()) => Ok(w),
            Err(e) => Err(w.stop(e)),
        }
    }

    /// The counter's rise since `start` per reason, less what other processes' risky getfds
    /// (as `foreign` reports them) added meanwhile.
    fn deltas(&self, foreign: Foreign) -> Result<Vec<(String, u64)>, String> {
        let now = risky(&self.addr)?;
        let others = foreign();
        let since = |v: &[(String, u64)], k: &str| v.iter().find(|b| b.0 == k).map_or(0, |b| b.1);
        Ok(now
            .iter()
            .map(|(k, v)| {
                let theirs = since(&others, k) - since(&self.foreign_start, k);
                (k.clone(), (v - since(&self.start, k)).saturating_sub(theirs))
            })
            .collect())
    }

    /// Before getfd_benign: the risky scenarios' counts must have arrived (polls up to the
    /// timeout; the metrics refresh once a second), then they are the baseline.
    pub fn before_benign(&mut self, foreign: Foreign) {
        let r = (|| {
            let want: Vec<(String, u64)> = RISKY_DELTAS.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let deadline = Instant::now() + self.timeout;
            loop {
                let d = self.deltas(foreign)?;
                if d == want {
                    return Ok((d, total(&self.addr, "pidfd_trace_getfd_total ")?));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "risky scenarios: deltas {d:?} (other processes' risky getfds taken out), want {want:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })();
        match r {
            Ok(b) => self.benign = Some(b),
            Err(e) => self.error = Some(e),
        }
    }

    /// After getfd_benign: nothing risky moved (once the metrics have refreshed, polled up to
    /// the timeout so that other processes' risky getfds in flight are accounted for), while
    /// the getfd total rose by at least the benign getfds.
    pub fn after_benign(&mut self, foreign: Foreign) {
        let Some((before, getfd_before)) = self.benign.take() else { return };
        self.checked = true;
        std::thread::sleep(Duration::from_millis(2500));
        let deadline = Instant::now() + self.timeout;
        let r = (|| loop {
            let after = self.deltas(foreign)?;
            let getfd_after = total(&self.addr, "pidfd_trace_getfd_total ")?;
            if after == before && getfd_after >= getfd_before + 2 * BENIGN_EACH as u64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "benign: risky {before:?} -> {after:?} (must not move; other processes' risky getfds taken out), getfd_total {getfd_before} -> {getfd_after} (must rise by >= {})",
                    2 * BENIGN_EACH
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        })();
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }

    /// The `serve` metrics address (host:port), for other checks that need a serve.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The verdict; stops serve.
    pub fn finish(mut self) -> Result<(), String> {
        let err = match self.error.take() {
            Some(e) => Some(e),
            None if !self.checked => Some("getfd_benign did not run after the risky scenarios".to_string()),
            None => None,
        };
        let msg = self.stop(err.clone().unwrap_or_default());
        match err {
            Some(_) => Err(msg),
            None => Ok(()),
        }
    }

    /// SIGTERM to serve; `err` with serve's stderr appended (unchanged if empty).
    fn stop(mut self, err: String) -> String {
        unsafe { libc::kill(self.serve.id() as i32, libc::SIGTERM) };
        let _ = self.serve.wait();
        if err.is_empty() {
            return err;
        }
        format!("{err}; serve said: {}", self.lines.lock().unwrap().join(" | "))
    }
}

pub fn wait_addr(lines: &std::sync::Mutex<Vec<String>>, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let l = lines.lock().unwrap();
            let addr = l.iter().find_map(|l| {
                let rest = &l[l.find("serving metrics on http://")? + "serving metrics on http://".len()..];
                Some(rest.split('/').next()?.to_string())
            });
            if let (Some(a), true) = (addr, l.iter().any(|x| x.contains("attached"))) {
                return Ok(a);
            }
            if l.iter().any(|x| x == "<eof>") {
                return Err("serve exited before serving".into());
            }
        }
        if Instant::now() > deadline {
            return Err("serve did not start in time".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn scrape(addr: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// (reason, value) of every `pidfd_trace_getfd_risky_total` series, sorted by reason.
fn risky(addr: &str) -> Result<Vec<(String, u64)>, String> {
    let body = scrape(addr)?;
    let mut v: Vec<(String, u64)> = body
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pidfd_trace_getfd_risky_total{reason=\"")?;
            let (reason, n) = rest.split_once("\"} ")?;
            Some((reason.to_string(), n.trim().parse().ok()?))
        })
        .collect();
    v.sort();
    Ok(v)
}

fn total(addr: &str, prefix: &str) -> Result<u64, String> {
    let body = scrape(addr)?;
    body.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .ok_or_else(|| format!("no {} in /metrics", prefix.trim()))
}

//! The inventory of open pidfds: who holds a pidfd to whom, right now, read from `/proc`
//! (README "Open pidfds"). Used by `ls`, by `serve`'s gauges and leak detector, and to count
//! the pidfds a caller held when its pidfd creation failed with EMFILE/ENFILE.
//!
//! One scan walks `/proc/<pid>/fd` of every process once. A link whose text names a pidfd
//! (`anon_inode:[pidfd]`, the same text on pidfs kernels) is confirmed by its fdinfo, which
//! must carry the `Pid:` line only pidfds have. Processes and fds come and go during the
//! scan: a process or fd that disappears is simply not reported, and each (process, fd) is
//! visited once, so no pidfd is reported twice.
//!
//! A process whose thread-group leader has exited (`pthread_exit()` in `main`) while other
//! threads live on still holds its fds, but the leader is a zombie and the kernel shows its
//! `/proc/<pid>/fd` and `fdinfo` as empty directories (no error). For such a process alone
//! (empty `fd`, `/proc/<pid>/stat` state `Z` with more than one thread) the table is read
//! through a live thread, `/proc/<pid>/task/<tid>/fd`: see [`read_fd_table`].
pub mod helper;
pub mod leak;
pub mod ledger;
pub mod refresh;

use std::{
    collections::{HashMap, HashSet},
    ffi::CStr,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// fstatfs() magic of pidfs, the filesystem of pidfds since Linux 6.9.
const PIDFS_MAGIC: i64 = 0x5049_4446;
const O_NONBLOCK: u32 = 0o4000;
/// PIDFD_THREAD is O_EXCL (6.9+): the pidfd refers to one thread, not its thread group.
const O_EXCL: u32 = 0o200;

/// What the process a pidfd refers to is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Running or sleeping.
    Alive,
    /// Exited, not yet reaped by its parent.
    Zombie,
    /// Exited and reaped: the pidfd is stale (fdinfo `Pid: -1`).
    Exited,
    /// Outside the reader's pid namespace (fdinfo `Pid: 0`).
    Unknown,
}

impl TargetState {
    /// The `target_state` value: `alive`, `zombie`, `exited`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Zombie => "zombie",
            Self::Exited => "exited",
            Self::Unknown => "unknown",
        }
    }
}

/// One open pidfd: the `ls --output json` record (README "Open pidfds").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPidfd {
    /// The process holding the pidfd (host pid namespace) and its command name.
    pub holder_pid: u32,
    /// The holder's command name.
    pub holder_comm: String,
    /// The fd number in the holder.
    pub fd: i32,
    /// The process (or, for a thread pidfd, thread) the pidfd refers to, as the host numbers
    /// it; null once reaped.
    pub target_pid: Option<u32>,
    /// The target's pid in the innermost pid namespace it lives in, when that is not the
    /// host's.
    pub ns_target_pid: Option<u32>,
    /// The target's command name; null once reaped.
    pub target_comm: Option<String>,
    /// What the target is doing now.
    pub target_state: TargetState,
    /// The target was reaped: the pidfd can only report that.
    pub stale: bool,
    /// A thread pidfd (PIDFD_THREAD, 6.9+).
    pub thread: bool,
    /// Opened with O_NONBLOCK (PIDFD_NONBLOCK).
    pub nonblock: bool,
    /// The file's open flags as fdinfo shows them (octal there).
    pub flags: u32,
    /// The pidfs inode number (6.9+): the same number in every pidfd to the same process.
    pub pidfd_ino: Option<u64>,
}

/// A process whose fds could not be read, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unreadable {
    /// The process that could not be read.
    pub pid: u32,
    /// Its command name (empty if that could not be read either).
    pub comm: String,
    /// Why: the error reading its fds (usually `Permission denied`).
    pub error: String,
}

/// The result of one scan.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Scan {
    /// Every open pidfd found, in the order read.
    pub pidfds: Vec<OpenPidfd>,
    /// Processes whose fd table was read.
    pub processes: usize,
    /// Fds looked at.
    pub fds: usize,
    /// Processes that exist but could not be read.
    pub unreadable: Vec<Unreadable>,
    /// Start time (clock ticks after boot) of every holder, to tell a reused pid apart.
    pub start_times: HashMap<u32, u64>,
    /// Wall time the scan took.
    pub wall: Duration,
    /// CPU time the scanning thread spent.
    pub cpu: Duration,
}

/// Which processes a scan reads.
#[derive(Clone, Debug, Default)]
pub struct Select {
    /// Only these holder pids (empty: all).
    pub pids: Vec<u32>,
    /// Only holders with exactly this comm (empty: all).
    pub comms: Vec<String>,
}

impl Select {
    fn wants_pid(&self, pid: u32) -> bool {
        self.pids.is_empty() || self.pids.contains(&pid)
    }
}

/// Whether pidfds live on pidfs here (6.9+): then the inode number identifies the target.
/// Found once, from the first pidfd a scan meets (statfs through its /proc link), so the
/// inventory never makes a pidfd of its own (which the agent would count as a creation).
static PIDFS: OnceLock<bool> = OnceLock::new();

/// `base` is the `/proc` directory the fd table is read through (see [`read_fd_table`]).
fn pidfs_of(base: &str, fd: &CStr) -> Option<bool> {
    if let Some(known) = PIDFS.get() {
        return Some(*known);
    }
    let path = std::ffi::CString::new(format!("{base}/fd/{}", fd.to_string_lossy())).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and a local statfs.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return None; // closed meanwhile: the next pidfd tells
    }
    Some(*PIDFS.get_or_init(|| st.f_type as i64 == PIDFS_MAGIC))
}

/// Reads every open pidfd of the selected processes.
pub fn scan(select: &Select) -> Scan {
    let t0 = Instant::now();
    let cpu0 = refresh_cpu();
    let mut out = Scan::default();
    let mut seen = HashSet::new();
    let mut targets = TargetCache::default();
    let pids: Vec<u32> = if select.pids.is_empty() {
        list_pids()
    } else {
        let mut p = select.pids.clone();
        p.sort_unstable();
        p.dedup();
        p
    };
    for pid in pids {
        if !seen.insert(pid) || !select.wants_pid(pid) {
            continue;
        }
        let mut comm = None;
        if !select.comms.is_empty() {
            let Some(c) = read_comm(pid) else { continue };
            if !select.comms.contains(&c) {
                continue;
            }
            comm = Some(c);
        }
        match scan_process(pid, &mut targets, &mut out, &mut comm) {
            Ok(()) => out.processes += 1,
            Err(e) if gone(&e) => {}
            Err(e) => out.unreadable.push(Unreadable {
                pid,
                comm: comm.or_else(|| read_comm(pid)).unwrap_or_default(),
                error: e.to_string(),
            }),
        }
    }
    out.wall = t0.elapsed();
    out.cpu = refresh_cpu().saturating_sub(cpu0);
    out
}

fn refresh_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `12 processes: 1 systemd (Permission denied), 230 sshd (...), ...`: the first few.
pub fn describe_unreadable(u: &[Unreadable]) -> String {
    let mut s: Vec<String> =
        u.iter().take(5).map(|x| format!("{} {} ({})", x.pid, x.comm, x.error)).collect();
    if u.len() > 5 {
        s.push(format!("and {} more", u.len() - 5));
    }
    s.join(", ")
}

/// How many pidfds `pid` holds now (for the EMFILE/ENFILE link).
pub fn count_pidfds(pid: u32) -> io::Result<usize> {
    read_fd_table(pid, |base| {
        let mut n = 0;
        let dir = open_dir(&format!("{base}/fd"))?;
        let mut fdinfo = None;
        let fds = for_each_fd(&dir, |name, link| {
            if is_pidfd_link(link) && read_fdinfo(base, &mut fdinfo, name).is_ok_and(|i| i.pid.is_some()) {
                n += 1;
            }
            Ok(())
        })?;
        Ok((fds, n))
    })
}

/// `PF_EXITING` in `/proc/<pid>/stat`'s flags: set when a task starts to exit, before it
/// lets go of its fd table.
const PF_EXITING: u32 = 0x4;

/// Reads the fd table of process `pid` with `read(base)`, which lists `{base}/fd` (and reads
/// `{base}/fdinfo`) and returns the number of fds it looked at and its result.
///
/// `base` is `/proc/<pid>`, except for a process whose thread-group leader has exited while
/// other threads live on: the kernel then shows the leader's `fd` and `fdinfo` as empty
/// directories, although the process still holds its fds. Only when `/proc/<pid>/fd` is
/// empty and `/proc/<pid>/stat` says zombie with more than one thread, the table is read
/// through a live thread, `/proc/<pid>/task/<tid>`. A thread that began to exit before its
/// listing was done may have let go of the table meanwhile (its listing may be cut short), so
/// its result is dropped and the next thread is read; threads that are gone are skipped. One
/// table is read, so no fd is counted twice. (A thread that unshared its fd table shows its
/// own table; README "Open pidfds".)
fn read_fd_table<T>(pid: u32, mut read: impl FnMut(&str) -> io::Result<(usize, T)>) -> io::Result<T> {
    let (fds, leader) = read(&format!("/proc/{pid}"))?;
    if fds > 0 {
        return Ok(leader);
    }
    match read_stat(&format!("/proc/{pid}/stat\0")) {
        Some(st) if st.state == 'Z' && st.threads > 1 => {}
        _ => return Ok(leader),
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Ok(leader) };
    let mut tids: Vec<u32> = tasks.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    tids.sort_unstable();
    for tid in tids.into_iter().filter(|&t| t != pid) {
        let base = format!("/proc/{pid}/task/{tid}");
        let got = match read(&base) {
            Ok((_, got)) => got,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        // Not exiting after the listing: it held the table all along.
        if read_stat(&format!("{base}/stat\0")).is_some_and(|st| st.flags & PF_EXITING == 0) {
            return Ok(got);
        }
    }
    Ok(leader) // every other thread exited meanwhile: the process is going
}

fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

pub(crate) fn list_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

fn read_comm(pid: u32) -> Option<String> {
    read_pid_stat(pid).map(|s| s.comm)
}

/// What the inventory reads of a `/proc/<pid>/stat` (or a thread's).
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    /// `R`, `S`, `Z`, ...
    state: char,
    /// The command name; may contain spaces and parentheses.
    comm: String,
    /// The task's `PF_*` flags.
    flags: u32,
    /// Threads in the thread group.
    threads: u32,
    /// Start time, clock ticks after boot.
    start: u64,
}

fn read_pid_stat(pid: u32) -> Option<Stat> {
    read_stat(&format!("/proc/{pid}/stat\0"))
}

/// Reads a `stat` file; `path` ends in NUL.
fn read_stat(path: &str) -> Option<Stat> {
    let mut buf = [0u8; 1024];
    let n = read_small(path, &mut buf).ok()?;
    parse_stat(&String::from_utf8_lossy(&buf[..n]))
}

/// One open/read/close of a small /proc file (`path` ends in NUL): no size probe, no
/// second read, as this runs for every process of every scan.
fn read_small(path: &str, buf: &mut [u8]) -> io::Result<usize> {
    let c = CStr::from_bytes_with_nul(path.as_bytes()).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated path; read into a buffer of its size.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let n = libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    // `rest` starts at field 3 (state): field N is rest[N - 3].
    let rest: Vec<&str> = s.get(close + 2..)?.split(' ').take(20).collect();
    Some(Stat {
        state: rest.first()?.chars().next()?,
        comm,
        flags: rest.get(6)?.parse().ok()?,
        threads: rest.get(17)?.parse().ok()?,
        start: rest.get(19)?.parse().ok()?,
    })
}

#[derive(Default)]
/// Per target pid: its state, comm and thread count.
struct TargetCache(HashMap<u32, Option<(char, String, u32)>>);

impl TargetCache {
    fn get(&mut self, pid: u32) -> Option<(char, String, u32)> {
        self.0.entry(pid).or_insert_with(|| read_pid_stat(pid).map(|s| (s.state, s.comm, s.threads))).clone()
    }
}

fn scan_process(
    pid: u32,
    targets: &mut TargetCache,
    out: &mut Scan,
    comm: &mut Option<String>,
) -> io::Result<()> {
    let (fds, found) = read_fd_table(pid, |base| {
        let dir = open_dir(&format!("{base}/fd"))?;
        let mut fdinfo = None;
        let mut found = Vec::new();
        let fds = for_each_fd(&dir, |name, link| {
            if !is_pidfd_link(link) {
                return Ok(());
            }
            let info = match read_fdinfo(base, &mut fdinfo, name) {
                Ok(i) => i,
                // Closed since the listing: not open any more, not reported.
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            let Some(raw_pid) = info.pid else { return Ok(()) };
            let fd: i32 = name.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(-1);
            let pidfs = pidfs_of(base, name);
            found.push((fd, raw_pid, info, pidfs));
            Ok(())
        })?;
        Ok((fds, (fds, found)))
    })?;
    out.fds += fds;
    if found.is_empty() {
        return Ok(());
    }
    let Some(Stat { comm: stat_comm, start, .. }) = read_pid_stat(pid) else {
        return Ok(()); // exited meanwhile
    };
    let holder_comm = comm.clone().unwrap_or(stat_comm);
    out.start_times.insert(pid, start);
    for (fd, raw_pid, info, pidfs) in found {
        let (target_pid, state, target_comm) = match raw_pid {
            -1 => (None, TargetState::Exited, None),
            p if p <= 0 => (None, TargetState::Unknown, None),
            p => {
                let p = p as u32;
                let thread = info.flags & O_EXCL != 0;
                match targets.get(p) {
                    // A process whose leader exited while other threads run is alive (its
                    // leader's stat says Z); a thread pidfd's target is that one thread.
                    Some((s, c, threads)) => {
                        let st = if matches!(s, 'Z' | 'X') && (thread || threads <= 1) {
                            TargetState::Zombie
                        } else {
                            TargetState::Alive
                        };
                        (Some(p), st, Some(c))
                    }
                    // Reaped between the fdinfo read and now.
                    None => (Some(p), TargetState::Exited, None),
                }
            }
        };
        out.pidfds.push(OpenPidfd {
            holder_pid: pid,
            holder_comm: holder_comm.clone(),
            fd,
            target_pid,
            ns_target_pid: info.ns_pid.filter(|n| Some(*n) != target_pid),
            target_comm,
            target_state: state,
            stale: state == TargetState::Exited,
            thread: info.flags & O_EXCL != 0,
            nonblock: info.flags & O_NONBLOCK != 0,
            flags: info.flags,
            pidfd_ino: if pidfs == Some(true) { info.ino } else { None },
        });
    }
    *comm = Some(holder_comm);
    Ok(())
}

fn is_pidfd_link(link: &[u8]) -> bool {
    link == b"anon_inode:[pidfd]" || link.starts_with(b"pidfd:")
}

/// What a pidfd's fdinfo says.
#[derive(Debug, Default, PartialEq, Eq)]
struct FdInfo {
    flags: u32,
    ino: Option<u64>,
    /// `Pid:`: the target's pid, -1 once reaped, 0 outside our pid namespace. None: not a
    /// pidfd.
    pid: Option<i64>,
    /// The last `NSpid:` value: the pid in the target's own namespace.
    ns_pid: Option<u32>,
}

fn parse_fdinfo(s: &str) -> FdInfo {
    let mut info = FdInfo::default();
    for line in s.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        match k {
            "flags" => info.flags = u32::from_str_radix(v, 8).unwrap_or(0),
            "ino" => info.ino = v.parse().ok(),
            "Pid" => info.pid = v.parse().ok(),
            "NSpid" => info.ns_pid = v.split_whitespace().last().and_then(|x| x.parse().ok()),
            _ => {}
        }
    }
    info
}

/// Reads `{base}/fdinfo/<name>`, opening (once) the `fdinfo` directory into `dir`.
fn read_fdinfo(base: &str, dir: &mut Option<OwnedFd>, name: &CStr) -> io::Result<FdInfo> {
    if dir.is_none() {
        *dir = Some(open_dir(&format!("{base}/fdinfo"))?);
    }
    let dirfd = dir.as_ref().expect("set above").as_raw_fd();
    // SAFETY: openat on a valid dir fd with a NUL-terminated name.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = [0u8; 512];
    // SAFETY: read into a local buffer of its size.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(parse_fdinfo(&String::from_utf8_lossy(&buf[..n as usize])))
}

fn open_dir(path: &str) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
}

/// Calls `f(name, link text)` for every fd in the `/proc/<pid>/fd` directory `dir`; returns
/// how many fds it listed. An fd closed between the listing and its readlink is skipped; a
/// refused readlink (another process's fds without CAP_SYS_PTRACE) is an error for the whole
/// process.
fn for_each_fd(dir: &OwnedFd, mut f: impl FnMut(&CStr, &[u8]) -> io::Result<()>) -> io::Result<usize> {
    let dirfd = dir.as_raw_fd();
    let mut buf = vec![0u8; 32 * 1024];
    let mut link = [0u8; 64];
    let mut listed = 0usize;
    loop {
        // SAFETY: getdents64 into a buffer of the given size.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dirfd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(listed);
        }
        let mut off = 0usize;
        while off < n as usize {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name_bytes = &buf[off + 19..off + reclen];
            off += reclen;
            let Ok(name) = CStr::from_bytes_until_nul(name_bytes) else { continue };
            if name.to_bytes().first() == Some(&b'.') {
                continue;
            }
            listed += 1;
            // SAFETY: readlinkat into a local buffer of its size.
            let len = unsafe { libc::readlinkat(dirfd, name.as_ptr(), link.as_mut_ptr().cast(), link.len()) };
            if len < 0 {
                let e = io::Error::last_os_error();
                if gone(&e) {
                    continue;
                }
                return Err(e);
            }
            f(name, &link[..len as usize])?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_pidfd() {
        let i =
            parse_fdinfo("pos:\t0\nflags:\t02004202\nmnt_id:\t4\nino:\t9421\nPid:\t9420\nNSpid:\t9420\t7\n");
        assert_eq!(i, FdInfo { flags: 0o2004202, ino: Some(9421), pid: Some(9420), ns_pid: Some(7) });
        assert!(i.flags & O_NONBLOCK != 0 && i.flags & O_EXCL != 0);
        let reaped = parse_fdinfo("pos:\t0\nflags:\t02000002\nPid:\t-1\nNSpid:\t-1\n");
        assert_eq!(reaped.pid, Some(-1));
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t3\n").pid, None, "not a pidfd");
    }

    #[test]
    fn stat_with_odd_comm() {
        let s = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10 0\n";
        assert_eq!(
            parse_stat(s),
            Some(Stat { state: 'S', comm: "a) b (c)".into(), flags: 4194560, threads: 1, start: 12345 })
        );
    }

    #[test]
    fn own_pidfd_is_found_once() {
        let me = std::process::id();
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) } as i32;
        assert!(fd >= 0);
        let s = scan(&Select { pids: vec![me, me], comms: vec![] });
        let mine: Vec<_> = s.pidfds.iter().filter(|p| p.fd == fd).collect();
        assert_eq!(mine.len(), 1, "{:?}", s.pidfds);
        assert_eq!(mine[0].target_pid, Some(me));
        assert_eq!(mine[0].target_state, TargetState::Alive);
        assert!(count_pidfds(me).unwrap() >= 1);
        unsafe { libc::close(fd) };
    }
}

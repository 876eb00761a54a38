//! The inventory helper: a child process that reads other processes' `/proc/<pid>/fd` for
//! an agent that has dropped every capability.
//!
//! Reading another process's fd links and fdinfo is a ptrace-read check
//! (`CAP_SYS_PTRACE` for a target whose capabilities exceed ours, `CAP_DAC_READ_SEARCH` for
//! another user's `fd` directory), and `trace`/`serve` keep no capability in any thread
//! (README "Privileges"). So before they drop them, they fork this helper. It keeps only
//! those two capabilities (when it has them), sets no_new_privs, closes every inherited fd
//! but its two sockets and stderr (so it holds no BPF program or map), dies with the agent
//! (PR_SET_PDEATHSIG, and EOF on its sockets) and answers two requests, one socket each so a
//! long scan never delays a count: `scan` (a [`Scan`] as one JSON line) and `count PID`
//! (how many pidfds PID holds). It reads nothing but `/proc`.
use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    sync::Mutex,
    time::Duration,
};

use super::{Scan, Select};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;

/// The agent's end of the helper's two sockets.
pub struct Helper {
    scan: Mutex<BufReader<UnixStream>>,
    count: Mutex<BufReader<UnixStream>>,
}

impl Helper {
    /// Forks the helper. Call it while the agent is single-threaded and before it drops
    /// its capabilities (the helper keeps CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH of them).
    pub fn spawn() -> io::Result<Helper> {
        let (scan_a, scan_b) = UnixStream::pair()?;
        let (count_a, count_b) = UnixStream::pair()?;
        // SAFETY: the agent is single-threaded here (callers guarantee it), so the child may
        // allocate and start threads of its own; it ends with _exit, never returning.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            drop((scan_a, count_a));
            child(scan_b, count_b);
        }
        drop((scan_b, count_b));
        count_a.set_read_timeout(Some(Duration::from_secs(2)))?;
        scan_a.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Helper { scan: Mutex::new(BufReader::new(scan_a)), count: Mutex::new(BufReader::new(count_a)) })
    }

    /// One scan of every process.
    pub fn scan(&self) -> io::Result<Scan> {
        let line = ask(&self.scan, "scan\n")?;
        serde_json::from_str(&line).map_err(io::Error::other)
    }

    /// How many pidfds `pid` holds now. Replies name their pid, so a late reply to an
    /// earlier request that timed out is skipped, never taken for this one.
    pub fn count(&self, pid: u32) -> io::Result<usize> {
        let mut s = self.count.lock().unwrap_or_else(|p| p.into_inner());
        s.get_mut().write_all(format!("count {pid}\n").as_bytes())?;
        let mut line = String::new();
        loop {
            line.clear();
            if s.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the inventory helper exited"));
            }
            let mut it = line.split_whitespace();
            let (status, who) = (it.next(), it.next().and_then(|p| p.parse::<u32>().ok()));
            if who != Some(pid) {
                continue;
            }
            return match status {
                Some("ok") => {
                    it.next().and_then(|n| n.parse().ok()).ok_or_else(|| io::Error::other(line.clone()))
                }
                _ => Err(io::Error::other(it.collect::<Vec<_>>().join(" "))),
            };
        }
    }
}

fn ask(sock: &Mutex<BufReader<UnixStream>>, req: &str) -> io::Result<String> {
    let mut s = sock.lock().unwrap_or_else(|p| p.into_inner());
    s.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    if s.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the inventory helper exited"));
    }
    Ok(line)
}

fn child(scan: UnixStream, count: UnixStream) -> ! {
    use std::os::fd::AsRawFd;
    // SAFETY: plain prctl/close calls in the forked child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"pidfd-inventory".as_ptr(), 0, 0, 0);
        let keep = [2, scan.as_raw_fd(), count.as_raw_fd()];
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        for fd in fds.into_iter().filter(|fd| !keep.contains(fd)) {
            libc::close(fd);
        }
        // stdin/stdout point at /dev/null: the helper never writes to the agent's output.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    keep_only_proc_readers();
    let t = std::thread::spawn(move || serve(count));
    serve(scan);
    let _ = t.join();
    // SAFETY: ends the child without running the agent's destructors.
    unsafe { libc::_exit(0) }
}

/// Keeps CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (of what the process has) and nothing else.
fn keep_only_proc_readers() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header { version: 0x2008_0522, pid: 0 };
    let mut d = [Data::default(); 2];
    let want = (1u32 << CAP_DAC_READ_SEARCH) | (1u32 << CAP_SYS_PTRACE);
    // SAFETY: capget/capset/prctl with local buffers.
    unsafe {
        libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr());
        let keep = d[0].permitted & want;
        for cap in 0..64 {
            if cap >= 32 || keep & (1 << cap) == 0 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
        }
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        let d = [Data { effective: keep, permitted: keep, inheritable: 0 }, Data::default()];
        let mut h = Header { version: 0x2008_0522, pid: 0 };
        libc::syscall(libc::SYS_capset, &mut h, d.as_ptr());
    }
}

fn serve(sock: UnixStream) {
    let Ok(mut out) = sock.try_clone() else { return };
    let mut lines = BufReader::new(sock);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = match line.trim().split_once(' ') {
            None if line.trim() == "scan" => {
                serde_json::to_string(&super::scan(&Select::default())).unwrap_or_else(|_| "{}".into())
            }
            Some(("count", pid)) => match pid.parse::<u32>() {
                Ok(p) => match super::count_pidfds(p) {
                    Ok(n) => format!("ok {p} {n}"),
                    Err(e) => format!("err {p} {e}"),
                },
                Err(_) => "err 0 bad pid".into(),
            },
            _ => "err unknown request".into(),
        };
        if out.write_all(reply.as_bytes()).and_then(|()| out.write_all(b"\n")).is_err() {
            return;
        }
    }
}

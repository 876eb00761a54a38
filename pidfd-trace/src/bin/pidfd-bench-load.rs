//! pidfd-bench-load: the load generators of `cargo xtask bench`. Each runs one syscall pattern
//! in a tight loop (raw syscalls, no allocation in the loop) for a fixed time and prints one
//! JSON line: `{"load":..,"ops":..,"secs":..,"ops_per_sec":..}`.
//!
//! Not a test and not part of the agent: it only makes load, so that the bench can compare a
//! host with and without pidfd-trace on exactly the same work.
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

const CLONE_PIDFD: libc::c_ulong = 0x1000;
const SIGCHLD: libc::c_ulong = libc::SIGCHLD as libc::c_ulong;

#[derive(Clone, Copy)]
enum Load {
    /// clone(SIGCHLD) + child _exit + wait4: a plain fork, the path every host runs.
    Fork,
    /// clone(CLONE_PIDFD | SIGCHLD) + close(pidfd) + child _exit + wait4.
    ClonePidfd,
    /// pidfd_open(self) + close, as fast as possible, or paced to `--rate` per second.
    PidfdOpen,
    /// The hot syscalls the every-path hooks sit on, each on fds that are not pidfds: what
    /// every host pays for those hooks. read(2) of one byte from /dev/zero.
    Read,
    /// send(2) of one byte on a unix datagram socket pair, then recvmsg(2) of it.
    Recvmsg,
    /// ioctl(FIONREAD) on a unix socket.
    Ioctl,
    /// openat("/dev/null") + close.
    Openat,
    /// getsockopt(SOL_SOCKET, SO_TYPE) on a unix socket.
    Getsockopt,
}

impl Load {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "fork" => Some(Self::Fork),
            "clone-pidfd" => Some(Self::ClonePidfd),
            "pidfd-open" => Some(Self::PidfdOpen),
            "read" => Some(Self::Read),
            "recvmsg" => Some(Self::Recvmsg),
            "ioctl" => Some(Self::Ioctl),
            "openat" => Some(Self::Openat),
            "getsockopt" => Some(Self::Getsockopt),
            _ => None,
        }
    }
}

struct Args {
    load: Load,
    name: String,
    secs: f64,
    /// Operations per second to pace to (0: unpaced).
    rate: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let name =
        it.next().ok_or(
            "usage: pidfd-bench-load fork|clone-pidfd|pidfd-open|read|recvmsg|ioctl|openat|getsockopt [--secs S] [--rate N]",
        )?;
    let load = Load::parse(&name).ok_or_else(|| format!("unknown load {name}"))?;
    let mut args = Args { load, name, secs: 2.0, rate: 0 };
    while let Some(flag) = it.next() {
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => args.secs = val.parse().map_err(|_| format!("bad --secs {val}"))?,
            "--rate" => args.rate = val.parse().map_err(|_| format!("bad --rate {val}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.rate > 0 && !matches!(args.load, Load::PidfdOpen) {
        return Err("--rate applies to pidfd-open only".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pidfd-bench-load: {e}");
            return ExitCode::from(2);
        }
    };
    let dur = Duration::from_secs_f64(args.secs);
    let start = Instant::now();
    let ops = match (args.load, args.rate) {
        (Load::PidfdOpen, 0) => timed(start, dur, pidfd_open_close),
        (Load::PidfdOpen, rate) => paced(start, dur, rate, pidfd_open_close),
        (Load::Fork, _) => timed(start, dur, || fork_wait(SIGCHLD)),
        (Load::ClonePidfd, _) => timed(start, dur, || fork_wait(CLONE_PIDFD | SIGCHLD)),
        (Load::Read | Load::Recvmsg | Load::Ioctl | Load::Openat | Load::Getsockopt, _) => {
            match Fds::open() {
                Ok(fds) => timed(start, dur, || fds.op(args.load)),
                Err(e) => Err(e),
            }
        }
    };
    let ops = match ops {
        Ok(n) => n,
        Err(e) => {
            eprintln!("pidfd-bench-load {}: {e}", args.name);
            return ExitCode::FAILURE;
        }
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"load\":\"{}\",\"ops\":{ops},\"secs\":{secs:.6},\"ops_per_sec\":{:.1},\"rate\":{}}}",
        args.name,
        ops as f64 / secs,
        args.rate
    );
    ExitCode::SUCCESS
}

/// Runs `op` back to back until `dur` has passed; checks the clock every 64 operations.
fn timed(start: Instant, dur: Duration, mut op: impl FnMut() -> std::io::Result<()>) -> std::io::Result<u64> {
    let mut n = 0u64;
    loop {
        for _ in 0..64 {
            op()?;
        }
        n += 64;
        if start.elapsed() >= dur {
            return Ok(n);
        }
    }
}

/// Runs `op` `rate` × `dur` times, paced to `rate` per second: bursts of up to 0.5 ms
/// worth, then a sleep until more are due. A generator that falls behind catches up without
/// bound and finishes late, which shows as a lower ops/s.
fn paced(
    start: Instant,
    dur: Duration,
    rate: u64,
    mut op: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let total = (dur.as_secs_f64() * rate as f64) as u64;
    let mut n = 0u64;
    loop {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while n < due {
            op()?;
            n += 1;
        }
        if n >= total {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn pidfd_open_close() -> std::io::Result<()> {
    // Taken once: glibc does not cache getpid, and a third syscall per operation would
    // dilute what the agent adds to the two we mean to measure.
    static PID: std::sync::OnceLock<libc::pid_t> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(|| unsafe { libc::getpid() });
    // SAFETY: plain syscalls on our own pid; the fd is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Legacy clone(2) with `flags`, no new stack: the child calls _exit at once; the parent
/// closes the pidfd (if any) and reaps the child.
fn fork_wait(flags: libc::c_ulong) -> std::io::Result<()> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: without CLONE_VM the child has its own copy of memory and only calls _exit.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone, flags, 0usize, &mut pidfd as *mut libc::c_int, 0usize, 0usize)
    };
    if pid == 0 {
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pidfd >= 0 {
        unsafe { libc::close(pidfd) };
    }
    // SAFETY: reaps the child we just created.
    if unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The fds the hot-syscall loads work on, opened once before the clock starts.
struct Fds {
    zero: libc::c_int,
    /// A connected unix datagram pair: [0] sends, [1] receives.
    pair: [libc::c_int; 2],
}

impl Fds {
    fn open() -> std::io::Result<Self> {
        let check = |r: libc::c_int| if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) };
        // SAFETY: plain syscalls with valid pointers.
        let zero = check(unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
        let mut pair = [-1; 2];
        check(unsafe {
            libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr())
        })?;
        Ok(Self { zero, pair })
    }

    fn op(&self, load: Load) -> std::io::Result<()> {
        let mut byte = [0u8; 1];
        // SAFETY: every pointer is to a live local; the fds stay open for the whole run.
        let r = unsafe {
            match load {
                Load::Read => libc::read(self.zero, byte.as_mut_ptr().cast(), 1) as i64,
                Load::Recvmsg => {
                    if libc::send(self.pair[0], byte.as_ptr().cast(), 1, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    libc::recvmsg(self.pair[1], &mut msg, 0) as i64
                }
                Load::Ioctl => {
                    let mut n: libc::c_int = 0;
                    libc::ioctl(self.pair[1], libc::FIONREAD, &mut n) as i64
                }
                Load::Openat => {
                    let fd =
                        libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::close(fd);
                    }
                    fd as i64
                }
                Load::Getsockopt => {
                    let (mut v, mut len): (libc::c_int, libc::socklen_t) = (0, 4);
                    libc::getsockopt(
                        self.pair[0],
                        libc::SOL_SOCKET,
                        libc::SO_TYPE,
                        (&mut v as *mut libc::c_int).cast(),
                        &mut len,
                    ) as i64
                }
                Load::Fork | Load::ClonePidfd | Load::PidfdOpen => 0,
            }
        };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }
}

//! Risky pidfd use against a real `serve` (root: it loads programs), the defects a break-it
//! pass found (README "Risky pidfd use"):
//! - `pidfd_trace_getfd_risky_total` stays exact after getfds from 1,100 cgroups (the kernel
//!   map used to fill at 1,024 and drop the next real `cred_mismatch`);
//! - `cross_container` is decided at the call: counted and logged although both containers'
//!   cgroups are gone before the agent reads the record;
//! - a pidfd_getfd refused before it reached its target (`EINVAL` flags) is neither counted
//!   nor logged, `EPERM` refusals are, and the warn line is rate-limited (the counter is not).
//!
//! The processes are our own children, found in serve's warn lines by pid. The counters are
//! host-wide: other tests may make risky getfds meanwhile, so each delta must be exactly ours
//! plus the risky getfds of other processes that serve's own events log (`--events-log -`)
//! shows in the same window.
mod common;

use std::{
    collections::BTreeMap,
    ffi::CString,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::AGENT;

const NOBODY: u32 = 65534;

/// The JSON lines `child` prints on stdout, collected on a thread as they come.
fn collect_json(child: &mut Child) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let out = child.stdout.take().unwrap();
    let events: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = events.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    events
}

/// `pidfd-trace trace --output json` for processes named `comm`, attached, with its events.
fn trace_comm(comm: &str) -> (Child, Arc<Mutex<Vec<serde_json::Value>>>) {
    let (mut trace, stderr) = common::spawn_collecting(
        Command::new(AGENT)
            .args(["trace", "--output", "json", "--mode", "tracepoint", "--comm", comm])
            .stdout(Stdio::piped()),
    );
    common::wait_attached(&mut trace, &stderr, Duration::from_secs(60));
    let events = collect_json(&mut trace);
    (trace, events)
}

struct Serve {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Events before this index predate the `before` scrape.
    from: Mutex<usize>,
    addr: String,
}

impl Serve {
    fn start() -> Self {
        common::require_root("risky-use tests");
        let (mut child, stderr) = common::spawn_collecting(
            Command::new(AGENT)
                .args(["serve", "--web.listen-address", "127.0.0.1:0", "--events-log", "-"])
                .stdout(Stdio::piped()),
        );
        common::wait_attached(&mut child, &stderr, Duration::from_secs(60));
        let events = collect_json(&mut child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            let lines = stderr.lock().unwrap().clone();
            if let Some(a) = lines.iter().find_map(|l| {
                let rest = &l[l.find("serving metrics on http://")? + "serving metrics on http://".len()..];
                Some(rest.split('/').next()?.to_string())
            }) {
                break a;
            }
            assert!(Instant::now() < deadline, "serve did not say where it serves: {lines:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Serve { child, stderr, events, from: Mutex::new(0), addr }
    }

    /// The counters now, and the start of the window for `others`.
    fn before(&self) -> [u64; 5] {
        std::thread::sleep(Duration::from_millis(1200));
        *self.from.lock().unwrap() = self.events.lock().unwrap().len();
        self.risky()
    }

    /// Risky getfds (per reason: exiting, cred, cross) that reached their target, made since
    /// `before` by processes other than `mine`.
    fn others(&self, mine: &[i32]) -> [u64; 3] {
        let from = *self.from.lock().unwrap();
        let ev = self.events.lock().unwrap();
        let mut n = [0u64; 3];
        for e in ev.iter().skip(from) {
            let reached = e["errno"].is_null() || e["errno"] == "EPERM";
            if e["event"] != "pidfd_getfd" || !reached || mine.iter().any(|p| e["pid"] == *p) {
                continue;
            }
            let Some(risk) = e["risk"].as_array() else { continue };
            for (i, r) in ["target_exiting", "cred_mismatch", "cross_container"].iter().enumerate() {
                if risk.iter().any(|x| x == r) {
                    n[i] += 1;
                }
            }
        }
        n
    }

    /// `name{labels}` → value of every sample whose name starts with `prefix`.
    fn samples(&self, prefix: &str) -> BTreeMap<String, u64> {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse::<f64>().ok()? as u64))
            })
            .collect()
    }

    /// The risky counters (reason → value) and the two self-accounting ones.
    fn risky(&self) -> [u64; 5] {
        let s = self.samples("pidfd_trace_");
        let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("no {k} in /metrics: {s:?}"));
        [
            get("pidfd_trace_getfd_risky_total{reason=\"target_exiting\"}"),
            get("pidfd_trace_getfd_risky_total{reason=\"cred_mismatch\"}"),
            get("pidfd_trace_getfd_risky_total{reason=\"cross_container\"}"),
            get("pidfd_trace_getfd_risky_map_full_total"),
            get("pidfd_trace_risky_warnings_suppressed_total"),
        ]
    }

    /// Polls until the risky counters moved from `before` by `want` (exiting, cred, cross)
    /// plus what other processes did (`others`), or 10 s; then two more refreshes to see they
    /// do not move past it. The deltas, with what others did subtracted from the first three.
    fn settle(&self, before: [u64; 5], want: [u64; 3], mine: &[i32]) -> [u64; 5] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let delta = |now: [u64; 5]| {
            let o = self.others(mine);
            let mut d: [u64; 5] = std::array::from_fn(|i| now[i] - before[i]);
            for i in 0..3 {
                if o[i] > 0 {
                    eprintln!("other processes made {} risky getfds with reason #{i} meanwhile", o[i]);
                }
                d[i] = d[i].wrapping_sub(o[i]);
            }
            d
        };
        loop {
            let d = delta(self.risky());
            if d[..3] == want || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(2200));
        delta(self.risky())
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn pidfd_open(pid: i32) -> i32 {
    unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32 }
}

fn pidfd_getfd(pidfd: i32, fd: i32, flags: u32) -> i64 {
    unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, flags) }
}

/// Forks a child that runs `f` and exits with its status; the child does only syscalls on
/// data prepared before the fork. Returns the pid.
fn fork_run(f: impl FnOnce() -> i32) -> i32 {
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = f();
        unsafe { libc::_exit(code) };
    }
    pid
}

/// A child that sleeps until killed, as `uid` if Some.
fn sleeper(uid: Option<u32>) -> i32 {
    let mut p = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    let [r, w] = p;
    let pid = fork_run(move || unsafe {
        if let Some(u) = uid
            && (libc::setresgid(u, u, u) != 0 || libc::setresuid(u, u, u) != 0)
        {
            return 1;
        }
        libc::write(w, [1u8].as_ptr().cast(), 1);
        loop {
            libc::pause();
        }
    });
    let mut b = [0u8];
    unsafe {
        libc::close(w);
        assert_eq!(libc::read(r, b.as_mut_ptr().cast(), 1), 1, "sleeper did not start");
        libc::close(r);
    }
    pid
}

/// Waits for `pid`; its exit status.
fn wait(pid: i32) -> i32 {
    let mut st = 0;
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if libc::WIFEXITED(st) { libc::WEXITSTATUS(st) } else { -1 }
}

fn kill(pid: i32) {
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait(pid);
}

fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            (post.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup2 hierarchy")
}

/// `dir/cgroup.procs` as a C string, to write a pid into after a fork.
fn procs(dir: &std::path::Path) -> CString {
    CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap()
}

/// Writes our own pid into a `cgroup.procs` (syscalls only: safe after fork).
fn enter(procs: &CString) -> bool {
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 16];
        let mut n = libc::getpid() as u32;
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let ok = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i) > 0;
        libc::close(fd);
        ok
    }
}

/// Our own cgroup2 directory.
fn my_cgroup(root: &std::path::Path) -> PathBuf {
    let s = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let p = s.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim();
    root.join(p.trim_start_matches('/'))
}

/// Warn lines of serve about risky getfds by `pid`.
fn warns_of(lines: &[String], pid: i32) -> Vec<String> {
    let needle = format!("risky pidfd_getfd: pid {pid} ");
    lines.iter().filter(|l| l.contains(&needle)).cloned().collect()
}

/// Defect 1: 1,100 same-uid getfds, each from another (plain) cgroup, then one real
/// cred_mismatch getfd. The kernel counters are one slot per set of reasons: the cred_mismatch
/// one is counted, nothing else moves, and no "map full" is ever counted.
#[test]
fn risky_counter_exact_after_getfds_from_1100_cgroups() {
    const CGROUPS: usize = 1100;
    let serve = Serve::start();
    let root = cgroup2_root();
    let home = procs(&my_cgroup(&root));
    let base = root.join(format!("pidfd-trace-riskfill-{}", std::process::id()));
    std::fs::create_dir(&base).unwrap();
    let dirs: Vec<PathBuf> = (0..CGROUPS).map(|i| base.join(format!("c{i}"))).collect();
    for d in &dirs {
        std::fs::create_dir(d).unwrap();
    }
    let all: Vec<CString> = dirs.iter().map(|d| procs(d)).collect();
    let before = serve.before();

    let peer = sleeper(None);
    let mover = fork_run(|| {
        let pidfd = pidfd_open(peer);
        let mut bad = 0;
        for p in &all {
            if !enter(p) {
                return 2;
            }
            let r = pidfd_getfd(pidfd, 0, 0);
            if r < 0 {
                bad += 1;
            } else {
                unsafe { libc::close(r as i32) };
            }
        }
        enter(&home);
        if bad > 0 { 3 } else { 0 }
    });
    assert_eq!(wait(mover), 0, "the mover could not enter its cgroups or take the peer's fd");
    kill(peer);

    let nobody = sleeper(Some(NOBODY));
    let pidfd = pidfd_open(nobody);
    let r = pidfd_getfd(pidfd, 0, 0);
    assert!(r >= 0, "root's pidfd_getfd from uid {NOBODY} failed: {r}");
    unsafe {
        libc::close(r as i32);
        libc::close(pidfd);
    }
    kill(nobody);

    let d = serve.settle(before, [0, 1, 0], &[mover, nobody, peer, std::process::id() as i32]);
    for d in dirs.iter().chain([&base]) {
        let _ = std::fs::remove_dir(d);
    }
    eprintln!("deltas after {CGROUPS} cgroups + 1 cred_mismatch: {d:?}");
    assert_eq!(d[..3], [0, 1, 0], "target_exiting, cred_mismatch, cross_container deltas");
    assert_eq!(d[3], 0, "pidfd_trace_getfd_risky_map_full_total moved");
}

/// Defect 1 (container gone): caller and target in two podman-shaped cgroups; the caller
/// takes the target's fd and exits, the target is killed and both cgroups removed at once.
/// `cross_container` was decided in the kernel at the call: counted and logged anyway.
#[test]
fn cross_container_counted_when_both_containers_are_gone() {
    let serve = Serve::start();
    let root = cgroup2_root();
    let me = std::process::id();
    let base = root.join(format!("pidfd-trace-riskxc-{me}"));
    let (id_a, id_b) =
        (format!("{me:016x}").repeat(4), format!("{:016x}", u64::from(me) | 0xc << 60).repeat(4));
    let (a, b) = (base.join(format!("libpod-{id_a}.scope")), base.join(format!("libpod-{id_b}.scope")));
    for d in [&base, &a, &b] {
        std::fs::create_dir(d).unwrap();
    }
    let (pa, pb) = (procs(&a), procs(&b));
    let before = serve.before();

    let target = fork_run(move || {
        if !enter(&pb) {
            return 2;
        }
        loop {
            unsafe { libc::pause() };
        }
    });
    // Until the target sits in its cgroup.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(b.join("cgroup.procs")).unwrap_or_default().contains(&target.to_string()) {
        assert!(Instant::now() < deadline, "target did not enter {}", b.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    let caller = fork_run(move || {
        if !enter(&pa) {
            return 2;
        }
        let pidfd = pidfd_open(target);
        if pidfd_getfd(pidfd, 0, 0) < 0 { 3 } else { 0 }
    });
    assert_eq!(wait(caller), 0, "the caller could not enter its cgroup or take the fd");
    kill(target);
    // Gone before the agent could look them up.
    for d in [&a, &b, &base] {
        std::fs::remove_dir(d).unwrap();
    }

    let d = serve.settle(before, [0, 0, 1], &[caller, target, std::process::id() as i32]);
    eprintln!("deltas: {d:?}");
    assert_eq!(d[..3], [0, 0, 1], "target_exiting, cred_mismatch, cross_container deltas");
    let deadline = Instant::now() + Duration::from_secs(5);
    let warned = loop {
        let w = warns_of(&serve.lines(), caller);
        if !w.is_empty() || Instant::now() > deadline {
            break w;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("risk [cross_container]"), "{}", warned[0]);
}

/// Defect 2: an unprivileged process asks 2,000 times for a root process's fd with bad flags
/// (EINVAL, before any access check): nothing counted, nothing logged. Then 300 plain asks,
/// refused EPERM by the ptrace access check: all 300 counted as cred_mismatch, but only a
/// rate-limited few logged; after a pause one more ask is logged after a summary line of the
/// held-back ones, and `pidfd_trace_risky_warnings_suppressed_total` counts them.
#[test]
fn einval_not_counted_eperm_counted_warns_rate_limited() {
    const EINVAL_CALLS: i32 = 2000;
    const EPERM_CALLS: i32 = 300;
    let serve = Serve::start();
    let before = serve.before();
    let target = sleeper(None);
    let drop_to_nobody = || unsafe {
        libc::setresgid(NOBODY, NOBODY, NOBODY) == 0 && libc::setresuid(NOBODY, NOBODY, NOBODY) == 0
    };

    let t0 = Instant::now();
    let bad_flags = fork_run(move || {
        if !drop_to_nobody() {
            return 2;
        }
        let pidfd = pidfd_open(target);
        for _ in 0..EINVAL_CALLS {
            if pidfd_getfd(pidfd, 999, 1) != -1
                || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return 3;
            }
        }
        0
    });
    assert_eq!(wait(bad_flags), 0, "the EINVAL calls did not all fail with EINVAL");
    let refused = fork_run(move || {
        if !drop_to_nobody() {
            return 2;
        }
        let pidfd = pidfd_open(target);
        for _ in 0..EPERM_CALLS {
            if pidfd_getfd(pidfd, 0, 0) != -1
                || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
            {
                return 3;
            }
        }
        0
    });
    assert_eq!(wait(refused), 0, "the plain calls were not all refused EPERM");
    let burst = t0.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let last = fork_run(move || {
        if !drop_to_nobody() {
            return 2;
        }
        if pidfd_getfd(pidfd_open(target), 0, 0) != -1 { 3 } else { 0 }
    });
    assert_eq!(wait(last), 0);
    kill(target);

    let d = serve.settle(
        before,
        [0, EPERM_CALLS as u64 + 1, 0],
        &[bad_flags, refused, last, target, std::process::id() as i32],
    );
    eprintln!("deltas: {d:?} (burst took {burst:?})");
    assert_eq!(d[..3], [0, EPERM_CALLS as u64 + 1, 0], "only the EPERM refusals are counted");
    let lines = serve.lines();
    assert!(
        warns_of(&lines, bad_flags).is_empty(),
        "an EINVAL call was logged: {:?}",
        warns_of(&lines, bad_flags)
    );
    let logged = warns_of(&lines, refused);
    // A burst of 10, then 10 a second.
    let most = 10 + (burst.as_secs_f64() * 10.0).ceil() as usize;
    eprintln!("{} of {EPERM_CALLS} EPERM refusals logged (at most {most})", logged.len());
    assert!(!logged.is_empty() && logged.len() <= most, "{} lines logged", logged.len());
    assert!(
        logged.iter().all(|l| l.contains("was refused it (EPERM)") && l.contains("cred_mismatch")),
        "{logged:?}"
    );
    assert_eq!(warns_of(&lines, last).len(), 1, "the call after the pause is logged");
    let summary: Vec<&String> =
        lines.iter().filter(|l| l.contains("risky pidfd_getfd warning lines suppressed")).collect();
    assert!(!summary.is_empty(), "no summary of the suppressed lines");
    let all_logged = lines.iter().filter(|l| l.contains("risky pidfd_getfd: pid ")).count() as u64;
    let calls = EPERM_CALLS as u64 + 1;
    assert!(d[4] + all_logged >= calls, "suppressed {} + logged {all_logged} < {calls} calls", d[4]);
}

/// Defect 3: `file_path` never names another file than the one taken. A caller takes a
/// target's secret file 5,000 times while a sibling thread keeps `dup2`-ing an innocent file
/// onto the fd numbers the new fd gets; every event's `file_path` is the secret's or null
/// with `file_changed`. Also: `file_dev`/`file_ino` are the file's, a deleted file is
/// `file_deleted`, a real memfd is `memfd` and a /dev/shm file named `memfd:…` is `regular`.
#[test]
fn file_path_is_the_file_taken_or_null() {
    const CALLS: usize = 5000;
    const COMM: &str = "rfx-pathrace";
    use std::os::unix::fs::MetadataExt;
    common::require_root("risky-use tests");
    let me = std::process::id();
    let tmp = std::env::temp_dir();
    let secret = tmp.join(format!("pidfd-trace-secret-{me}"));
    let innocent = tmp.join(format!("pidfd-trace-innocent-{me}"));
    let deleted = tmp.join(format!("pidfd-trace-deleted-{me}"));
    let forged = PathBuf::from(format!("/dev/shm/memfd:forged-{me}"));
    for p in [&secret, &innocent, &deleted, &forged] {
        std::fs::write(p, b"x\n").unwrap();
    }
    let (secret, innocent) =
        (std::fs::canonicalize(&secret).unwrap(), std::fs::canonicalize(&innocent).unwrap());
    let meta = std::fs::metadata(&secret).unwrap();
    let want_dev = format!("{}:{}", libc::major(meta.dev()), libc::minor(meta.dev()));
    let secret_ino = meta.ino();
    let open = |p: &PathBuf| {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
        assert!(fd >= 0, "open {}", p.display());
        fd
    };
    let (secret_fd, innocent_fd, deleted_fd, forged_fd) =
        (open(&secret), open(&innocent), open(&deleted), open(&forged));
    std::fs::remove_file(&deleted).unwrap();
    let memfd = unsafe { libc::memfd_create(c"rfx".as_ptr(), 0) };
    assert!(memfd >= 0);
    let target = sleeper(None);

    let mut go = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0);
    // The child reports how often its racer swapped the new fd.
    let mut rep = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(rep.as_mut_ptr()) }, 0);
    let caller = fork_run(move || unsafe {
        libc::close(go[1]);
        let mut b = [0u8];
        if libc::read(go[0], b.as_mut_ptr().cast(), 1) != 1 {
            return 2;
        }
        libc::prctl(libc::PR_SET_NAME, c"rfx-pathrace".as_ptr());
        let pidfd = pidfd_open(target);
        for fd in [memfd, forged_fd, deleted_fd] {
            let r = pidfd_getfd(pidfd, fd, 0);
            if r < 0 {
                return 3;
            }
            libc::close(r as i32);
        }
        // The fd number a new fd gets next; as soon as the secret shows up there, the racer
        // puts the innocent file over it (breaker-probes/pathrace.c).
        let low = libc::dup(0);
        libc::close(low);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let racer = std::thread::spawn(move || {
            let mut st: libc::stat = std::mem::zeroed();
            let mut swaps = 0u32;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                if libc::fstat(low, &mut st) == 0 && st.st_ino == secret_ino {
                    libc::dup2(innocent_fd, low);
                    swaps += 1;
                }
            }
            swaps
        });
        let mut bad = 0;
        for i in 0..CALLS {
            libc::close(low);
            let r = pidfd_getfd(pidfd, secret_fd, 0);
            if r < 0 {
                bad += 1;
            } else if r != low as i64 {
                libc::close(r as i32);
            } else if i % 8 == 0 {
                // Give the racer a turn while the secret is at `low`: with another load on
                // the CPUs (a CI host), racer and caller may share one, and the racer then
                // ran only at the rare preemptions (0 swaps in 5,000 calls once).
                libc::sched_yield();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = racer.join().unwrap_or(0);
        libc::write(rep[1], swaps.to_ne_bytes().as_ptr().cast(), 4);
        if bad > 0 { 4 } else { 0 }
    });
    unsafe { libc::close(go[0]) };

    let (mut trace, events) = trace_comm(COMM);
    unsafe {
        libc::write(go[1], [1u8].as_ptr().cast(), 1);
        libc::close(go[1]);
    }
    let status = wait(caller);
    kill(target);
    let mut swaps = [0u8; 4];
    unsafe {
        libc::close(rep[1]);
        libc::read(rep[0], swaps.as_mut_ptr().cast(), 4);
        libc::close(rep[0]);
    }
    let swaps = u32::from_ne_bytes(swaps);
    let deadline = Instant::now() + Duration::from_secs(30);
    let getfds = |ev: &[serde_json::Value]| -> Vec<serde_json::Value> {
        ev.iter().filter(|e| e["event"] == "pidfd_getfd" && e["pid"] == caller).cloned().collect()
    };
    while getfds(&events.lock().unwrap()).len() < CALLS + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe { libc::kill(trace.id() as i32, libc::SIGTERM) };
    let _ = trace.wait();
    for p in [&secret, &innocent, &forged] {
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(status, 0, "the caller's getfds failed");
    let ev = getfds(&events.lock().unwrap());
    let by_fd = |fd: i32| ev.iter().filter(move |e| e["target_fd"] == fd).collect::<Vec<_>>();
    let (m, f, d, s) = (by_fd(memfd), by_fd(forged_fd), by_fd(deleted_fd), by_fd(secret_fd));
    assert_eq!((m.len(), f.len(), d.len(), s.len()), (1, 1, 1, CALLS), "events per fd");
    assert_eq!(m[0]["file_kind"], "memfd", "{}", m[0]);
    assert_eq!(f[0]["file_kind"], "regular", "{}", f[0]);
    assert_eq!(f[0]["file_path"], forged.to_string_lossy().as_ref(), "{}", f[0]);
    assert_eq!(d[0]["file_deleted"], true, "{}", d[0]);
    let want_path = secret.to_string_lossy();
    let mut changed = 0;
    for e in &s {
        assert_eq!(e["file_ino"], meta.ino(), "{e}");
        assert_eq!(e["file_dev"], want_dev.as_str(), "{e}");
        assert_eq!(e["file_deleted"], false, "{e}");
        if e["file_path"].is_null() {
            assert_eq!(e["file_changed"], true, "a null file_path without file_changed: {e}");
            changed += 1;
        } else {
            assert_eq!(e["file_path"], want_path.as_ref(), "file_path names another file: {e}");
            assert_eq!(e["file_changed"], false, "{e}");
        }
    }
    eprintln!(
        "{CALLS} getfds of {want_path}, the new fd swapped for {} {swaps} times: {changed} with file_changed, none with another path",
        innocent.display()
    );
    assert!(swaps > 0, "the race was never run: the test proves nothing");
}

/// `file_path` of files reached through bind mounts is the path the caller sees, as the
/// kernel's d_path() gives it: a mount ends at its own root dentry, not at its filesystem's
/// root (break-it finding: a bind-mounted file read as `/mnt/b/tmp/src/f`, a path that does
/// not exist). A directory bind mount and a file bind mount, each taken with pidfd_getfd.
#[test]
fn file_path_through_bind_mounts() {
    const COMM: &str = "rfx-bindpath";
    common::require_root("risky-use tests");
    let me = std::process::id();
    let base = std::fs::canonicalize(std::env::temp_dir()).unwrap().join(format!("pidfd-trace-bind-{me}"));
    let (src, dir_mnt, file_mnt) = (base.join("src"), base.join("dirmnt"), base.join("filemnt"));
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(&dir_mnt).unwrap();
    std::fs::write(src.join("sub/f"), b"x\n").unwrap();
    std::fs::write(&file_mnt, b"").unwrap();
    let cs = |p: &std::path::Path| CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let bind = |from: &std::path::Path, to: &std::path::Path| {
        let r = unsafe {
            libc::mount(cs(from).as_ptr(), cs(to).as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
        };
        assert_eq!(
            r,
            0,
            "mount --bind {} {}: {}",
            from.display(),
            to.display(),
            std::io::Error::last_os_error()
        );
    };
    bind(&src.join("sub"), &dir_mnt);
    bind(&src.join("sub/f"), &file_mnt);
    let open = |p: &std::path::Path| {
        let fd = unsafe { libc::open(cs(p).as_ptr(), libc::O_RDONLY) };
        assert!(fd >= 0, "open {}", p.display());
        fd
    };
    let (dir_fd, file_fd) = (open(&dir_mnt.join("f")), open(&file_mnt));
    let target = sleeper(None);

    let (mut trace, events) = trace_comm(COMM);
    let caller = fork_run(move || unsafe {
        libc::prctl(libc::PR_SET_NAME, c"rfx-bindpath".as_ptr());
        let pidfd = pidfd_open(target);
        for fd in [dir_fd, file_fd] {
            let r = pidfd_getfd(pidfd, fd, 0);
            if r < 0 {
                return 3;
            }
            libc::close(r as i32);
        }
        0
    });
    let status = wait(caller);
    kill(target);
    let deadline = Instant::now() + Duration::from_secs(30);
    let getfds = |ev: &[serde_json::Value]| -> Vec<serde_json::Value> {
        ev.iter().filter(|e| e["event"] == "pidfd_getfd" && e["pid"] == caller).cloned().collect()
    };
    while getfds(&events.lock().unwrap()).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe {
        libc::kill(trace.id() as i32, libc::SIGTERM);
        libc::close(dir_fd);
        libc::close(file_fd);
        libc::umount2(cs(&dir_mnt).as_ptr(), libc::MNT_DETACH);
        libc::umount2(cs(&file_mnt).as_ptr(), libc::MNT_DETACH);
    }
    let _ = trace.wait();
    let _ = std::fs::remove_dir_all(&base);
    assert_eq!(status, 0, "the caller's getfds failed");
    let ev = getfds(&events.lock().unwrap());
    let path_of = |fd: i32| ev.iter().find(|e| e["target_fd"] == fd).map(|e| e["file_path"].clone());
    assert_eq!(path_of(dir_fd), Some(serde_json::json!(dir_mnt.join("f").to_string_lossy())), "{ev:?}");
    assert_eq!(path_of(file_fd), Some(serde_json::json!(file_mnt.to_string_lossy())), "{ev:?}");
}

/// A target that keeps swapping the fd being taken between two files: each pidfd_getfd's
/// `file_path` is the file the caller really got (checked per call, by inode, in order) or
/// null with `file_changed`, never the other file (break-it finding: 40 of 3000 named the
/// file the entry saw while the kernel had already handed over the other one).
#[test]
fn file_path_when_the_target_swaps_its_fd() {
    const CALLS: usize = 2000;
    const SWAP_FD: i32 = 50;
    const COMM: &str = "rfx-tgtswap";
    use std::os::unix::fs::MetadataExt;
    common::require_root("risky-use tests");
    let me = std::process::id();
    let tmp = std::fs::canonicalize(std::env::temp_dir()).unwrap();
    let (a, b) = (tmp.join(format!("pidfd-trace-swap-a-{me}")), tmp.join(format!("pidfd-trace-swap-b-{me}")));
    std::fs::write(&a, b"a\n").unwrap();
    std::fs::write(&b, b"b\n").unwrap();
    let (ino_a, ino_b) = (std::fs::metadata(&a).unwrap().ino(), std::fs::metadata(&b).unwrap().ino());
    let cs = |p: &std::path::Path| CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (fa, fb) =
        unsafe { (libc::open(cs(&a).as_ptr(), libc::O_RDONLY), libc::open(cs(&b).as_ptr(), libc::O_RDONLY)) };
    assert!(fa >= 0 && fb >= 0);
    let target = fork_run(move || unsafe {
        loop {
            libc::dup2(fa, SWAP_FD);
            libc::dup2(fb, SWAP_FD);
        }
    });

    let (mut trace, events) = trace_comm(COMM);
    // The caller writes the inode of every file it got, in call order, into a pipe.
    let mut rep = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(rep.as_mut_ptr()) }, 0);
    let caller = fork_run(move || unsafe {
        libc::close(rep[0]);
        libc::prctl(libc::PR_SET_NAME, c"rfx-tgtswap".as_ptr());
        let pidfd = pidfd_open(target);
        for _ in 0..CALLS {
            let r = pidfd_getfd(pidfd, SWAP_FD, 0);
            let mut st: libc::stat = std::mem::zeroed();
            let ino = if r >= 0 && libc::fstat(r as i32, &mut st) == 0 { st.st_ino } else { 0 };
            if r >= 0 {
                libc::close(r as i32);
            }
            libc::write(rep[1], ino.to_ne_bytes().as_ptr().cast(), 8);
        }
        0
    });
    unsafe { libc::close(rep[1]) };
    let mut got = Vec::new();
    let mut buf = [0u8; 8];
    while unsafe { libc::read(rep[0], buf.as_mut_ptr().cast(), 8) } == 8 {
        got.push(u64::from_ne_bytes(buf));
    }
    let status = wait(caller);
    kill(target);
    let deadline = Instant::now() + Duration::from_secs(30);
    let getfds = |ev: &[serde_json::Value]| -> Vec<serde_json::Value> {
        ev.iter().filter(|e| e["event"] == "pidfd_getfd" && e["pid"] == caller).cloned().collect()
    };
    while getfds(&events.lock().unwrap()).len() < CALLS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe {
        libc::kill(trace.id() as i32, libc::SIGTERM);
        libc::close(fa);
        libc::close(fb);
    }
    let _ = trace.wait();
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    assert_eq!(status, 0);
    let ev = getfds(&events.lock().unwrap());
    assert_eq!((ev.len(), got.len()), (CALLS, CALLS), "events and calls");
    let (mut named, mut changed) = (0, 0);
    for (e, ino) in ev.iter().zip(&got) {
        let want = if *ino == ino_a {
            a.to_string_lossy()
        } else if *ino == ino_b {
            b.to_string_lossy()
        } else {
            continue;
        };
        if e["file_path"].is_null() {
            assert_eq!(e["file_changed"], true, "a null file_path without file_changed: {e}");
            changed += 1;
        } else {
            assert_eq!(e["file_path"], want.as_ref(), "file_path names a file the caller did not get: {e}");
            named += 1;
        }
    }
    eprintln!("{CALLS} getfds of a swapping fd: {named} with the right path, {changed} with file_changed");
    assert!(named > 0, "no call named its file: the test proves nothing");
}

//! Ring-buffer bytes → `Event`: layout, clock conversion, names, stage and sequence numbers.
//! Pure apart from the clock offset it is given; enrichment from /proc happens later.
use std::{collections::HashMap, sync::Arc};

use pidfd_trace_common::{EventKind, EventRecord, Mode, TargetFacts, exit_facts, hints, xhints};

use crate::{
    classify::{self, KernelSemantics},
    event::{Comm, Event},
    hooks::{self, Feeds, Returns, Saved},
    names, risk,
};

/// A ring-buffer record that cannot become an `Event`; the pipeline counts and drops it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// (bytes received, bytes expected)
    #[error("record of {0} bytes, expected {1}: agent and kernel programs are from different builds")]
    Size(usize, usize),
    /// A `kind` byte no `EventKind` has.
    #[error("record with unknown event kind {0}")]
    Kind(u8),
}

/// CPU numbers kept in a plain array by `SeqTracker` (the kernel's largest NR_CPUS).
const DIRECT_CPUS: usize = 8192;

/// Turns per-CPU record sequence numbers into the run-wide `seq`, so that a lost record shows
/// as a gap, and counts those gaps.
#[derive(Default, Debug)]
pub struct SeqTracker {
    /// The last `cpu_seq` per CPU, indexed by CPU number (hashing it was a measurable part of
    /// a storm event's cost).
    last: Vec<u64>,
    /// CPU numbers beyond `DIRECT_CPUS` (never written by a kernel; a corrupt record).
    far: HashMap<u32, u64>,
    next: u64,
    /// Records known lost from per-CPU gaps so far.
    pub gaps: u64,
}

impl SeqTracker {
    /// The run-wide `seq` of the record numbered `cpu_seq` on `cpu`; a jump counts the
    /// records in between as lost (`gaps`).
    pub fn assign(&mut self, cpu: u32, cpu_seq: u64) -> u64 {
        let last = match cpu as usize {
            i if i < DIRECT_CPUS => {
                if i >= self.last.len() {
                    self.last.resize(i + 1, 0);
                }
                &mut self.last[i]
            }
            _ => self.far.entry(cpu).or_insert(0),
        };
        if cpu_seq > *last {
            let gap = cpu_seq - *last - 1;
            self.gaps += gap;
            self.next += gap;
            *last = cpu_seq;
        } else if self.gaps > 0 {
            // A program preempted on this CPU between counting and reserving: this record
            // fills a gap we had already charged as lost.
            self.gaps -= 1;
        }
        self.next += 1;
        self.next
    }
}

/// Ring-buffer bytes → `Event`: layout check, clock conversion, names, stage, sequence.
pub struct Decoder {
    /// CLOCK_REALTIME - CLOCK_BOOTTIME at start-up, in ns.
    boot_to_unix_ns: i128,
    sem: KernelSemantics,
    /// Sequence numbers and lost-record gaps so far.
    pub seq: SeqTracker,
    /// The last cgroup directory name decoded (raw bytes) and its text, shared by the
    /// events that carry it: a storm comes from one cgroup, and its events then cost no
    /// allocation for `cgroup_leaf`.
    leaf: Option<(Vec<u8>, Arc<str>)>,
}

impl Decoder {
    /// `boot_to_unix_ns`: CLOCK_REALTIME − CLOCK_BOOTTIME in ns (trace::boot_to_unix_ns);
    /// `sem`: what the running kernel does with pidfds.
    pub fn new(boot_to_unix_ns: i128, sem: KernelSemantics) -> Self {
        Self { boot_to_unix_ns, sem, seq: SeqTracker::default(), leaf: None }
    }

    /// One record. Errors: too short (`Size`, agent and programs from different builds) or an
    /// unknown kind (`Kind`).
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Event, DecodeError> {
        self.with_record(bytes, |d, r, kind, seq| d.build(r, kind, seq))
    }

    /// `decode`, handing the event to `f` where it was built: the pipeline's way, which spares
    /// moving the large `Event` out through a `Result` (a measurable part of a storm event).
    pub fn decode_with<T>(
        &mut self,
        bytes: &[u8],
        f: impl FnOnce(&mut Event) -> T,
    ) -> Result<T, DecodeError> {
        self.with_record(bytes, |d, r, kind, seq| {
            let mut ev = d.build(r, kind, seq);
            f(&mut ev)
        })
    }

    /// The checks `decode` makes, then `f` with the record, its kind and its run-wide `seq`.
    #[inline(always)]
    fn with_record<T>(
        &mut self,
        bytes: &[u8],
        f: impl FnOnce(&mut Self, &EventRecord, EventKind, u64) -> T,
    ) -> Result<T, DecodeError> {
        let want = size_of::<EventRecord>();
        if bytes.len() < want {
            return Err(DecodeError::Size(bytes.len(), want));
        }
        // Ring-buffer records are 8-byte aligned: read in place. The copy (the record is
        // mostly the pidfd_getfd path names, ~0.7 KiB) only for bytes that are not.
        let mut copy = std::mem::MaybeUninit::<EventRecord>::uninit();
        let r: &EventRecord = if bytes.as_ptr().cast::<EventRecord>().is_aligned() {
            // SAFETY: length and alignment checked; EventRecord is plain data valid for any
            // bit pattern.
            unsafe { &*bytes.as_ptr().cast() }
        } else {
            // SAFETY: length checked; as above.
            copy.write(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
        };
        let kind = EventKind::try_from(r.kind).map_err(DecodeError::Kind)?;
        let seq = self.seq.assign(r.cpu, r.cpu_seq);
        Ok(f(self, r, kind, seq))
    }

    /// Every field follows from the hook table row of `kind` (hooks.rs): what `ret`,
    /// `arg0` and `arg1` mean, which flag names apply and whether a pidfd was passed.
    fn build(&mut self, r: &EventRecord, kind: EventKind, seq: u64) -> Event {
        let row = hooks::event(kind);
        let errno = if r.ret < 0 { (-r.ret) as u32 } else { 0 };
        let ok = r.ret >= 0;
        let x = r.xhints;
        // A call refused before it ran: its arguments were never seen.
        let denied = x & xhints::DENIED != 0;
        let saved = |what: Saved| match (row.arg0 == what, row.arg1 == what) {
            _ if denied => None,
            (true, _) => Some(r.arg0),
            (_, true) => Some(r.arg1),
            _ => None,
        };
        let in_init_ns = r.ns_pid <= 0;
        let positive = |v: i32| (v > 0).then_some(i64::from(v));
        let passed_pidfd = saved(Saved::Pidfd).map(|v| v as i32);
        let signal_nr = saved(Saved::Signal);
        // Target facts: only the calls that pass a pidfd gather them (risk.rs).
        let f = r.facts;
        let seen = passed_pidfd.is_some() && risk::target_seen(&f);
        Event {
            ts: r.ts_ns as i128 + self.boot_to_unix_ns,
            seq,
            event: kind,
            pid: (r.pid_tgid >> 32) as u32,
            tid: r.pid_tgid as u32,
            uid: r.uid,
            ns_pid: positive(r.ns_pid),
            comm: Comm::from_kernel(&r.comm),
            thread_comm: Comm::from_kernel(&r.thread_comm),
            compat: x & xhints::COMPAT != 0,
            cgroup_id: r.cgroup_id,
            cgroup: None,
            container_id: None,
            pod_uid: None,
            container_runtime: None,
            flags: r.flags,
            // No flags, no names (what flag_names gives for 0, without its table lookup:
            // most calls pass none).
            flag_names: if r.flags == 0 { Vec::new() } else { names::flag_names(kind, r.flags) },
            ret: r.ret,
            errno: (!ok).then(|| names::errno_name(errno)),
            stage: classify::stage(kind, errno, r.hints, x, r.flags, self.sem),
            pidfd: match row.returns {
                _ if !ok => None,
                Returns::ChildPid => (r.pidfd >= 0).then_some(r.pidfd),
                Returns::NewPidfd => Some(r.ret as i32),
                Returns::InstalledPidfd => (r.pidfd >= 0).then_some(r.pidfd),
                Returns::Other => None,
            },
            // The kernel's own number for the child (task_newtask); the return value is the
            // child's number in the caller's namespace, the same only in the initial one.
            child_pid: match row.returns {
                Returns::ChildPid if ok => positive(r.child_pid).or(in_init_ns.then_some(r.ret)),
                _ => None,
            },
            target_reason: (row.feeds == Feeds::Creation && f.exit & exit_facts::REAPED != 0)
                .then_some("reaped"),
            pidfd_ino: pidfd_ino(row.feeds, ok, &f),
            ns_child_pid: (row.returns == Returns::ChildPid && ok).then(|| positive(r.ns_other)).flatten(),
            target_pid: match saved(Saved::Pid) {
                // pidfd_open: the pid behind the pidfd the kernel installed; for a failure,
                // the argument, which is a host pid only in the initial namespace.
                Some(_) if r.target_pid > 0 => Some(i64::from(r.target_pid)),
                Some(pid) => (in_init_ns && pid as i32 > 0).then_some(pid as i32 as i64),
                None => positive(r.target_pid),
            },
            ns_target_pid: (row.returns != Returns::ChildPid).then(|| positive(r.ns_other)).flatten(),
            signal: signal_nr.map(names::signal_name),
            signal_nr,
            target_fd: saved(Saved::TargetFd).map(|fd| fd as i32 as i64),
            cmd: saved(Saved::IoctlCmd).map(hooks::ioctl_name),
            advice: saved(Saved::Advice).map(hooks::advice_name),
            mode: mode_name(r.mode),
            duration_ns: r.duration_ns,
            pidfd_allocated: classify::pidfd_allocated(kind, errno, r.hints, self.sem),
            copy_process_ns: saved(Saved::CopyProcessNs)
                .filter(|&ns| r.hints & hints::COPY_PROCESS != 0 && ns > 0),
            caller_open_pidfds: None,
            used_pidfd: passed_pidfd,
            target_checked: x & xhints::TARGET_CHECKED != 0,
            cgroup_leaf: self.cgroup_leaf(&r.cgroup_name),
            risk: seen.then(|| risk::kernel_reasons(&f)),
            target_exit: seen.then(|| risk::exit_names(&f)),
            target_uid: seen.then_some(f.target_uid),
            target_euid: seen.then_some(f.target_euid),
            target_elevated: seen.then_some(f.risk & pidfd_trace_common::risk::TARGET_ELEVATED != 0),
            target_cgroup_id: (seen && f.target_cgroup_id != 0).then_some(f.target_cgroup_id),
            file_kind: risk::file_kind(&f),
            file_path: risk::file_path(&f, &r.path),
            file_dev: risk::file_dev(&f),
            file_ino: risk::file_seen(&f).then_some(f.file_ino),
            file_deleted: risk::file_deleted(&f),
            file_changed: risk::file_seen(&f).then_some(r.path.changed != 0),
            facts: f,
        }
    }
}

/// `pidfd_ino`: the pidfs inode number of the pidfd a successful call made (creations: read
/// from the installed file at exit) or copied (pidfd_getfd of a pidfd: the taken file, read at
/// entry). Only pidfs inodes (6.9+) count: before, every pidfd shares one anon inode.
fn pidfd_ino(feeds: Feeds, ok: bool, f: &TargetFacts) -> Option<u64> {
    let made = match feeds {
        Feeds::Creation => true,
        Feeds::Getfd => risk::file_kind(f) == Some("pidfd"),
        _ => false,
    };
    (made && ok && f.file_magic == risk::PIDFS_MAGIC && f.file_ino != 0).then_some(f.file_ino)
}

impl Decoder {
    /// The record's NUL-terminated cgroup directory name as text (lossy UTF-8), None when
    /// empty; the last one is kept and shared (`leaf`).
    fn cgroup_leaf(&mut self, raw: &[u8]) -> Option<Arc<str>> {
        let raw = &raw[..raw.iter().position(|&c| c == 0).unwrap_or(raw.len())];
        if raw.is_empty() {
            return None;
        }
        match &mut self.leaf {
            Some((last, text)) if last[..] == *raw => Some(text.clone()),
            slot => {
                let text: Arc<str> = String::from_utf8_lossy(raw).into();
                let (last, shared) = slot.get_or_insert_with(|| (Vec::new(), text.clone()));
                last.clear();
                last.extend_from_slice(raw);
                *shared = text.clone();
                Some(text)
            }
        }
    }
}

/// The JSON `mode` of a record's raw mode byte (`unknown` for a value no build writes).
pub fn mode_name(mode: u8) -> &'static str {
    Mode::from_u8(mode).map_or("unknown", Mode::name)
}

/// Made-up kernel records for the decode and pipeline tests.
#[cfg(test)]
pub mod testing {
    use pidfd_trace_common::{EventKind, EventRecord, Mode};

    use super::Decoder;
    use crate::classify::KernelSemantics;

    /// A record of `kind` from caller 4242/4243 (`workerx`), arg0 99, arg1 15, pidfd 5.
    pub fn record(kind: EventKind, ret: i64, flags: u64) -> EventRecord {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"workerx");
        EventRecord {
            ts_ns: 5_000_000_000,
            duration_ns: 1234,
            cpu_seq: 1,
            pid_tgid: (4242u64 << 32) | 4243,
            cgroup_id: 77,
            flags,
            ret,
            arg0: 99,
            arg1: 15,
            uptr: 0x7fff_0000,
            pidfd: 5,
            cpu: 0,
            kind: kind as u8,
            mode: Mode::Tracepoint as u8,
            hints: 0,
            _pad: 0,
            target_pid: 0,
            comm,
            uid: 1000,
            _pad2: 0,
            thread_comm: comm,
            child_pid: 0,
            ns_pid: 0,
            ns_other: 0,
            xhints: 0,
            _pad3: [0; 3],
            cgroup_name: [0; pidfd_trace_common::CGROUP_NAME_BYTES],
            facts: Default::default(),
            path: Default::default(),
        }
    }

    /// The bytes the ring buffer would hold for `r`.
    pub fn bytes(r: &EventRecord) -> Vec<u8> {
        unsafe {
            std::slice::from_raw_parts((r as *const EventRecord).cast::<u8>(), size_of::<EventRecord>())
        }
        .to_vec()
    }

    /// A decoder for a 6.9+ kernel without function probes.
    pub fn decoder() -> Decoder {
        Decoder::new(
            1_000_000_000_000_000_000,
            KernelSemantics { thread_pidfd: true, creation_observed: false },
        )
    }
}

#[cfg(test)]
mod tests {
    use pidfd_trace_common::clone_flags as cf;

    use super::{testing::*, *};
    use crate::classify::Stage;

    #[test]
    fn clone_success() {
        let e = decoder().decode(&bytes(&record(EventKind::Clone, 5000, cf::CLONE_PIDFD | 17))).unwrap();
        assert_eq!((e.pid, e.tid, e.comm.as_str()), (4242, 4243, "workerx"));
        assert_eq!((e.ret, e.pidfd, e.child_pid, e.errno, e.stage), (5000, Some(5), Some(5000), None, None));
        assert_eq!(e.flag_names, vec!["CLONE_PIDFD"]);
        assert_eq!(e.ts, 1_000_000_005_000_000_000);
        assert_eq!(e.mode, "tracepoint");
    }

    #[test]
    fn clone_failures() {
        let mut d = decoder();
        let e = d
            .decode(&bytes(&record(EventKind::Clone, -22, cf::CLONE_PIDFD | cf::CLONE_PARENT_SETTID)))
            .unwrap();
        assert_eq!(
            (e.errno.as_deref(), e.stage, e.pidfd, e.child_pid),
            (Some("EINVAL"), Some(Stage::Flags), None, None)
        );
        let mut r = record(EventKind::Clone3, -11, cf::CLONE_PIDFD);
        r.hints = hints::PIDS_AT_LIMIT;
        r.cpu_seq = 2;
        let e = d.decode(&bytes(&r)).unwrap();
        assert_eq!((e.errno.as_deref(), e.stage), (Some("EAGAIN"), Some(Stage::PidsCgroup)));
    }

    #[test]
    fn pidfd_syscalls() {
        let mut d = decoder();
        let e = d.decode(&bytes(&record(EventKind::PidfdOpen, 7, 0))).unwrap();
        assert_eq!((e.pidfd, e.target_pid, e.signal.as_deref()), (Some(7), Some(99), None));
        let mut r = record(EventKind::PidfdSendSignal, 0, 0);
        r.cpu_seq = 2;
        let e = d.decode(&bytes(&r)).unwrap();
        assert_eq!(
            (e.signal.as_deref(), e.signal_nr, e.pidfd, e.stage),
            (Some("SIGTERM"), Some(15), None, None)
        );
        let mut r = record(EventKind::PidfdGetfd, -1, 0);
        r.cpu_seq = 3;
        let e = d.decode(&bytes(&r)).unwrap();
        assert_eq!((e.target_fd, e.errno.as_deref(), e.stage), (Some(15), Some("EPERM"), None));
    }

    #[test]
    fn creation_paths() {
        let mut d = decoder();
        // so_peerpidfd: ret 0, the pidfd is the one the program found in the fd table.
        let mut r = record(EventKind::SoPeerpidfd, 0, 0);
        r.target_pid = 321;
        r.facts.file_magic = crate::risk::PIDFS_MAGIC;
        r.facts.file_ino = 4711;
        let e = d.decode(&bytes(&r)).unwrap();
        assert_eq!(
            (e.pidfd, e.target_pid, e.target_reason, e.pidfd_ino),
            (Some(5), Some(321), None, Some(4711))
        );
        // A reopen of a reaped process's pidfd: no target_pid, and why.
        let mut r = record(EventKind::Reopen, 9, 0);
        r.cpu_seq = 2;
        r.pidfd = 9;
        r.facts.exit = pidfd_trace_common::exit_facts::REAPED;
        let e = d.decode(&bytes(&r)).unwrap();
        assert_eq!((e.pidfd, e.target_pid, e.target_reason), (Some(9), None, Some("reaped")));
        assert_eq!(e.pidfd_ino, None, "not a pidfs inode (before 6.9)");
        // A failed pidfs_handle: no pidfd, no pidfd_ino, stage from the path rule.
        let mut r = record(EventKind::PidfsHandle, -14, 0);
        r.cpu_seq = 3;
        r.pidfd = -1;
        let e = d.decode(&bytes(&r)).unwrap();
        assert_eq!((e.pidfd, e.pidfd_ino, e.stage), (None, None, Some(Stage::UserMemory)));
    }

    #[test]
    fn uses_and_autokill() {
        let mut d = decoder();
        let mut r = record(EventKind::PidfdIoctl, 0, 0);
        r.arg1 = 0xc040_ff0b;
        r.target_pid = 777;
        let e = d.decode(&bytes(&r)).unwrap();
        assert_eq!(
            (e.cmd.as_deref(), e.advice.as_deref(), e.used_pidfd, e.target_pid, e.signal.as_deref()),
            (Some("PIDFD_GET_INFO"), None, Some(99), Some(777), None)
        );
        let mut r = record(EventKind::ProcessMadvise, -22, 0);
        r.arg1 = 4;
        r.cpu_seq = 2;
        let e = d.decode(&bytes(&r)).unwrap();
        assert_eq!(
            (e.advice.as_deref(), e.cmd.as_deref(), e.errno.as_deref(), e.stage),
            (Some("MADV_DONTNEED"), None, Some("EINVAL"), None)
        );
        let mut r = record(EventKind::PidfdAutokill, 0, 0);
        (r.arg0, r.arg1, r.target_pid, r.cpu_seq) = (0, 9, 778, 3);
        let e = d.decode(&bytes(&r)).unwrap();
        assert_eq!(
            (e.signal.as_deref(), e.target_pid, e.used_pidfd, e.pidfd, e.risk),
            (Some("SIGKILL"), Some(778), None, None, None)
        );
    }

    #[test]
    fn aligned_or_not() {
        let r = record(EventKind::PidfdOpen, 7, 0);
        let mut buf = vec![0u8; size_of::<EventRecord>() + 1];
        buf[1..].copy_from_slice(&bytes(&r));
        let odd = decoder().decode(&buf[1..]).unwrap();
        let even = decoder().decode(&bytes(&r)).unwrap();
        assert_eq!((odd.comm.as_str(), odd.pidfd, odd.target_pid), ("workerx", Some(7), Some(99)));
        assert_eq!(format!("{odd:?}"), format!("{even:?}"));
    }

    #[test]
    fn bad_records() {
        assert_eq!(
            decoder().decode(&[0u8; 10]).unwrap_err(),
            DecodeError::Size(10, size_of::<EventRecord>())
        );
        let mut r = record(EventKind::Clone, 1, 0);
        r.kind = 42;
        assert_eq!(decoder().decode(&bytes(&r)).unwrap_err(), DecodeError::Kind(42));
    }

    #[test]
    fn cgroup_leaf_text_is_shared() {
        let mut d = decoder();
        let mut r = record(EventKind::PidfdOpen, 7, 0);
        assert_eq!(d.decode(&bytes(&r)).unwrap().cgroup_leaf, None, "no name: null");
        let name = |r: &mut pidfd_trace_common::EventRecord, n: &[u8]| {
            r.cgroup_name = [0xaa; pidfd_trace_common::CGROUP_NAME_BYTES];
            r.cgroup_name[..n.len()].copy_from_slice(n);
            r.cpu_seq += 1;
        };
        name(&mut r, b"session-3.scope\0");
        let a = d.decode(&bytes(&r)).unwrap().cgroup_leaf.unwrap();
        let b = d
            .decode(&{
                name(&mut r, b"session-3.scope\0");
                bytes(&r)
            })
            .unwrap()
            .cgroup_leaf
            .unwrap();
        assert_eq!(&*a, "session-3.scope");
        assert!(Arc::ptr_eq(&a, &b), "the same name shares its text");
        name(&mut r, b"docker-\xff.scope\0");
        assert_eq!(d.decode(&bytes(&r)).unwrap().cgroup_leaf.as_deref(), Some("docker-\u{fffd}.scope"));
        name(&mut r, b"session-3\0");
        assert_eq!(d.decode(&bytes(&r)).unwrap().cgroup_leaf.as_deref(), Some("session-3"), "a prefix");
        name(&mut r, b"\0");
        assert_eq!(d.decode(&bytes(&r)).unwrap().cgroup_leaf, None);
        // All 128 bytes, no NUL.
        r.cgroup_name = [b'x'; pidfd_trace_common::CGROUP_NAME_BYTES];
        let full = d.decode(&bytes(&r)).unwrap().cgroup_leaf.unwrap();
        assert_eq!(full.len(), pidfd_trace_common::CGROUP_NAME_BYTES);
    }

    #[test]
    fn seq_gaps() {
        let mut s = SeqTracker::default();
        assert_eq!(s.assign(0, 1), 1);
        assert_eq!(s.assign(1, 1), 2);
        assert_eq!(s.assign(0, 4), 5); // cpu 0 lost 2 and 3
        assert_eq!(s.gaps, 2);
        assert_eq!(s.assign(0, 3), 6); // late arrival fills one gap
        assert_eq!(s.gaps, 1);
        // Far CPU numbers (a corrupt record) are tracked without a huge array.
        assert_eq!(s.assign(u32::MAX, 1), 7);
        assert_eq!(s.assign(u32::MAX, 3), 9);
        assert_eq!((s.gaps, s.last.len()), (2, 2));
    }
}

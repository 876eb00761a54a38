//! The decoded event every sink receives. Its JSON-lines schema is the contract in
//! docs/events.md (one object per line, every field present, `null` when it does not apply);
//! a field added here is added there.
use std::{borrow::Cow, fmt, sync::Arc};

use pidfd_trace_common::{EventKind, TargetFacts};
use serde::{Serialize, Serializer};

use crate::classify::Stage;

/// One observed call, decoded and enriched. Field meanings, units and JSON shapes:
/// docs/events.md.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// When the call returned, ns since the Unix epoch (JSON: RFC 3339).
    #[serde(serialize_with = "rfc3339")]
    pub ts: i128,
    /// Run-wide sequence number from 1; gaps are lost records.
    pub seq: u64,
    /// What was called (JSON: its name).
    #[serde(serialize_with = "event_name")]
    pub event: EventKind,
    /// The caller's process (host pid namespace).
    pub pid: u32,
    /// The calling thread.
    pub tid: u32,
    /// The caller's process id in its own pid namespace, when that is not the initial one.
    pub ns_pid: Option<i64>,
    /// The caller's real uid (initial user namespace), read in the kernel at exit.
    pub uid: u32,
    /// The process's name (its thread-group leader's comm); `--comm` matches this.
    pub comm: Comm,
    /// The calling thread's name.
    pub thread_comm: Comm,
    /// The call came through the 32-bit (ia32) syscall entry.
    pub compat: bool,
    /// The caller's cgroup2 id.
    pub cgroup_id: u64,
    /// The caller's cgroup2 path, set by the enricher.
    pub cgroup: Option<Arc<str>>,
    /// The container the caller runs in, set by the enricher.
    pub container_id: Option<Arc<str>>,
    /// The Kubernetes pod UID when the cgroup path runs through a pod.
    pub pod_uid: Option<Arc<str>>,
    /// The container runtime the cgroup2 path shows (`docker`, `containerd`, ...), set by the
    /// enricher with `container_id`; a metric label only (not in the JSON schema).
    #[serde(skip)]
    pub container_runtime: Option<&'static str>,
    /// The raw flags argument (waitid: options).
    pub flags: u64,
    /// Names of the set bits of `flags`; unknown bits as one hex string.
    pub flag_names: Vec<Cow<'static, str>>,
    /// The raw return value.
    pub ret: i64,
    /// The errno name of a failure.
    pub errno: Option<Cow<'static, str>>,
    /// Failed pidfd creations: the step that failed.
    pub stage: Option<Stage>,
    /// The new pidfd on success.
    pub pidfd: Option<i32>,
    /// The new child, host pid namespace.
    pub child_pid: Option<i64>,
    /// The child's pid in the caller's namespace (the clone's return value), when the caller
    /// is not in the initial namespace.
    pub ns_child_pid: Option<i64>,
    /// The process the call targets, host pid namespace.
    pub target_pid: Option<i64>,
    /// Why `target_pid` is null although a pidfd was made: `reaped` (its process had already
    /// been reaped, e.g. a reopen of a pidfd whose process is gone).
    pub target_reason: Option<&'static str>,
    /// The new (or copied) pidfd's pidfs inode number (6.9+): unique for the system's lifetime,
    /// the process id systemd and util-linux use. Null before 6.9 and where no pidfd was made.
    pub pidfd_ino: Option<u64>,
    /// The target's pid in the caller's namespace, when the caller is not in the initial
    /// namespace.
    pub ns_target_pid: Option<i64>,
    /// pidfd_send_signal: the signal's name.
    pub signal: Option<Cow<'static, str>>,
    /// pidfd_send_signal: the signal's number.
    pub signal_nr: Option<u64>,
    /// pidfd_getfd: the fd number in the target.
    pub target_fd: Option<i64>,
    /// pidfd_ioctl: the ioctl command's name (`PIDFD_GET_INFO`, `PIDFD_GET_NET_NAMESPACE`, ...;
    /// hex for a command this build does not know).
    pub cmd: Option<String>,
    /// process_madvise: the advice's name (`MADV_COLD`, `MADV_PAGEOUT`, ...; the number for one
    /// this build does not know).
    pub advice: Option<String>,
    /// How it was observed: `fexit`, `kprobe` or `tracepoint`.
    pub mode: &'static str,
    /// Syscall entry to exit, ns.
    pub duration_ns: u64,
    /// Failed clones, function-probe modes: whether the pidfd existed when it failed.
    pub pidfd_allocated: Option<bool>,
    /// How long copy_process ran for this clone, when a function probe timed it.
    pub copy_process_ns: Option<u64>,
    /// For a creation that failed for want of an fd (`stage` fd_alloc: EMFILE/ENFILE): how
    /// many pidfds the caller held, counted from its `/proc/<pid>/fd` when the agent enriched
    /// the record (docs/events.md, README "Open pidfds").
    pub caller_open_pidfds: Option<usize>,
    /// The pidfd a call that uses one passed (pidfd_getfd, pidfd_send_signal, ...); when the
    /// kernel could not resolve it to `target_pid`, the enricher tries /proc.
    pub used_pidfd: Option<i32>,
    /// The kernel checked what the used fd is, so a null `target_pid` is a fact ("not a
    /// process fd"), which the enricher must not fill from /proc.
    #[serde(skip)]
    pub target_checked: bool,
    /// The caller's cgroup2 directory name as the kernel had it during the call; names the
    /// container when the cgroup is gone before the enricher looks (not in the JSON schema).
    #[serde(skip)]
    pub cgroup_leaf: Option<Arc<str>>,
    /// pidfd_getfd / pidfd_send_signal: why this use is risky (`target_exiting`,
    /// `cred_mismatch`, `cross_container`; README "Risky pidfd use"), `[]` when it is not,
    /// null when the kernel could not resolve the pidfd to its target.
    pub risk: Option<Vec<&'static str>>,
    /// The target's exit state as the kernel had it at entry (`group_exit`, `exit_stop`, `pf_exiting`,
    /// `no_mm`, `zombie`); null when the target was not resolved.
    pub target_exit: Option<Vec<&'static str>>,
    /// The target's real uid (`real_cred`, initial user namespace).
    pub target_uid: Option<u32>,
    /// The target's effective uid.
    pub target_euid: Option<u32>,
    /// The target runs with euid or suid other than its uid (a setuid program).
    pub target_elevated: Option<bool>,
    /// The target's cgroup2 id.
    pub target_cgroup_id: Option<u64>,
    /// pidfd_getfd: what the taken fd is (regular, socket, memfd, dma_buf, pidfd, anon_inode, ...).
    pub file_kind: Option<&'static str>,
    /// pidfd_getfd of a regular file: its path, from the dentry names the kernel read at exit.
    pub file_path: Option<String>,
    /// pidfd_getfd: the taken file's device (`major:minor` of its superblock), null when the
    /// kernel did not see the file.
    pub file_dev: Option<String>,
    /// pidfd_getfd: the taken file's inode number.
    pub file_ino: Option<u64>,
    /// pidfd_getfd of a regular file: it has no links left (deleted).
    pub file_deleted: Option<bool>,
    /// pidfd_getfd: at syscall exit neither the caller's new fd nor the target's fd held the
    /// file taken at entry any more (a sibling thread swapped it): `file_path` is null.
    pub file_changed: Option<bool>,
    /// The raw target facts, for the enricher (not in the JSON schema).
    #[serde(skip)]
    pub facts: TargetFacts,
}

impl Event {
    /// Whether the call failed (`ret` < 0).
    pub fn failed(&self) -> bool {
        self.ret < 0
    }
}

/// A thread's command name, kept inline so that an event needs no allocation for it: the
/// kernel's 16 bytes up to the first NUL, made valid UTF-8 as `String::from_utf8_lossy`
/// does (an invalid byte becomes U+FFFD, three bytes: hence room for 48).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm {
    len: u8,
    buf: [u8; Comm::CAP],
}

impl Comm {
    const CAP: usize = 48;

    /// From the kernel's `comm` bytes (NUL-terminated unless all 16 are used).
    pub fn from_kernel(raw: &[u8]) -> Self {
        // The usual name, ASCII in a 16-byte field, read as one word: the first NUL and
        // whether a byte before it has the high bit set, without a loop or UTF-8 check.
        if let Ok(&raw16) = <&[u8; 16]>::try_from(raw) {
            let w = u128::from_le_bytes(raw16);
            const LOW: u128 = u128::from_le_bytes([0x01; 16]);
            const HIGH: u128 = u128::from_le_bytes([0x80; 16]);
            // The lowest set bit marks the first zero byte (exact for the first one).
            let zeros = w.wrapping_sub(LOW) & !w & HIGH;
            let len = (zeros.trailing_zeros() / 8) as usize; // 16 when there is none
            let keep = if len == 16 { u128::MAX } else { (1u128 << (8 * len)) - 1 };
            let name = w & keep;
            if name & HIGH == 0 {
                let mut buf = [0; Self::CAP];
                buf[..16].copy_from_slice(&name.to_le_bytes());
                return Self { len: len as u8, buf };
            }
        }
        let raw = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        match std::str::from_utf8(raw) {
            Ok(s) => Self::from(s),
            Err(_) => Self::from(&*String::from_utf8_lossy(raw)),
        }
    }

    /// The whole fixed-size buffer and how many of its bytes are the name (`as_str`); the
    /// bytes past the name are zero. For writers that copy a constant size (sink/json.rs).
    pub fn raw(&self) -> (&[u8; Self::CAP], usize) {
        (&self.buf, self.len as usize)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // SAFETY: `buf[..len]` is always a whole valid str (see From<&str>).
        unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len as usize]) }
    }
}

impl From<&str> for Comm {
    /// Cut to at most 48 bytes at a character boundary (a kernel name never is).
    fn from(s: &str) -> Self {
        let mut end = s.len().min(Self::CAP);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0; Self::CAP];
        buf[..end].copy_from_slice(&s.as_bytes()[..end]);
        Self { len: end as u8, buf }
    }
}

impl std::ops::Deref for Comm {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Comm {
    /// As `str` does, padding and width included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn event_name<S: Serializer>(kind: &EventKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(crate::names::event_name(*kind))
}

fn rfc3339<S: Serializer>(ns: &i128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*ns))
}

/// `2026-11-27T10:31:02.123456789Z` from nanoseconds since the Unix epoch.
pub fn format_rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", sod / 3600, sod / 60 % 60, sod % 60)
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, UTC).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_as_the_kernel_gives_it() {
        assert_eq!(Comm::from_kernel(b"bash\0\0junk\0\0\0\0\0\0\0").as_str(), "bash");
        assert_eq!(Comm::from_kernel(b"0123456789abcdef").as_str(), "0123456789abcdef");
        let bad = *b"\xff\xfe\xc3\xa9\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff";
        assert_eq!(Comm::from_kernel(&bad).as_str(), String::from_utf8_lossy(&bad), "lossy, 44 bytes");
        assert_eq!(Comm::from_kernel(b"").as_str(), "");
        // The one-word path against the general one, and the zeroed tail (Eq, Hash).
        for raw in [
            *b"\0bcdefghijklmnop",
            *b"a\0cdefghijklmnop",
            *b"pidfd-workload\0\x01",
            *b"0123456789abcde\0",
            *b"0123456789abcdef",
            *b"\x01\x7f \t\n\x1b\0\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            *b"caf\xc3\xa9\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            *b"abc\x80\0\0\0\0\0\0\0\0\0\0\0\0",
        ] {
            let len = raw.iter().position(|&b| b == 0).unwrap_or(16);
            let want = String::from_utf8_lossy(&raw[..len]);
            let c = Comm::from_kernel(&raw);
            assert_eq!(c.as_str(), want, "{raw:?}");
            assert_eq!(c, Comm::from(&*want), "{raw:?}: bytes after the name are zero");
        }
        assert_eq!(format!("[{:<6}]", Comm::from("ab")), "[ab    ]");
        assert_eq!(Comm::from("é".repeat(30).as_str()).len(), 48);
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_rfc3339(1_795_782_662_123_456_789), "2026-11-27T12:31:02.123456789Z");
        assert_eq!(format_rfc3339(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
    }
}

//! Which step of pidfd creation a failure came from, from what the kernel programs saw.
//! Pure: the same function labels events and the metrics built from the kernel's counters,
//! so the two can never disagree.
use pidfd_trace_common::{EventKind, clone_flags as cf, hints};
use serde::Serialize;

const EAGAIN: u32 = 11;
const EFAULT: u32 = 14;
const EINVAL: u32 = 22;
const ENFILE: u32 = 23;
const EMFILE: u32 = 24;

/// Failure stages of the JSON `stage` field and the metrics' `stage` label (DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Flag checks refused the combination (EINVAL before anything was allocated).
    Flags,
    /// No fd (EMFILE/ENFILE) for the pidfd.
    FdAlloc,
    /// Writing the pidfd number back to user memory faulted (EFAULT).
    UserMemory,
    /// The pids cgroup controller refused the new task (pids.max reached).
    PidsCgroup,
    /// RLIMIT_NPROC / threads-max, or an EAGAIN we cannot pin on the pids cgroup.
    TaskLimit,
    Other,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Flags => "flags",
            Stage::FdAlloc => "fd_alloc",
            Stage::UserMemory => "user_memory",
            Stage::PidsCgroup => "pids_cgroup",
            Stage::TaskLimit => "task_limit",
            Stage::Other => "other",
        }
    }
}

/// What the running kernel does that changes the meaning of an errno.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelSemantics {
    /// CLONE_PIDFD|CLONE_THREAD gives a thread pidfd (6.9+) instead of EINVAL.
    pub thread_pidfd: bool,
}

impl KernelSemantics {
    /// From the running kernel's release string (`uname -r`): thread pidfds came with 6.9.
    pub fn from_release(release: &str) -> Self {
        let mut nums = release.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse::<u32>().ok());
        let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        Self { thread_pidfd: (major, minor) >= (6, 9) }
    }
}

/// The stage of a failed pidfd creation; `None` for successes and for calls that do not
/// create a pidfd (pidfd_getfd, pidfd_send_signal).
pub fn stage(kind: EventKind, errno: u32, hint_bits: u8, flags: u64, sem: KernelSemantics) -> Option<Stage> {
    if errno == 0 {
        return None;
    }
    match kind {
        EventKind::Clone | EventKind::Clone3 => Some(clone_stage(kind, errno, hint_bits, flags, sem)),
        EventKind::PidfdOpen => Some(match errno {
            EINVAL => Stage::Flags,
            EMFILE | ENFILE => Stage::FdAlloc,
            _ => Stage::Other,
        }),
        EventKind::PidfdGetfd | EventKind::PidfdSendSignal => None,
    }
}

fn clone_stage(kind: EventKind, errno: u32, hint_bits: u8, flags: u64, sem: KernelSemantics) -> Stage {
    match errno {
        EINVAL if conflicting_flags(kind, flags, sem) => Stage::Flags,
        EMFILE | ENFILE => Stage::FdAlloc,
        EFAULT => Stage::UserMemory,
        EAGAIN if hint_bits & hints::PIDS_AT_LIMIT != 0 => Stage::PidsCgroup,
        EAGAIN => Stage::TaskLimit,
        _ => Stage::Other,
    }
}

/// copy_process's CLONE_PIDFD checks (kernel/fork.c).
fn conflicting_flags(kind: EventKind, flags: u64, sem: KernelSemantics) -> bool {
    flags & cf::CLONE_PIDFD != 0
        && (flags & cf::CLONE_DETACHED != 0
            || (!sem.thread_pidfd && flags & cf::CLONE_THREAD != 0)
            // Legacy clone() returns the pidfd through parent_tidptr, so it cannot also
            // carry the parent's tid there.
            || (kind == EventKind::Clone && flags & cf::CLONE_PARENT_SETTID != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: KernelSemantics = KernelSemantics { thread_pidfd: false };
    const NEW: KernelSemantics = KernelSemantics { thread_pidfd: true };
    const P: u64 = cf::CLONE_PIDFD;

    #[test]
    fn table() {
        use EventKind::*;
        let cases: &[(EventKind, u32, u8, u64, KernelSemantics, Option<Stage>)] = &[
            (Clone, 0, 0, P, NEW, None),
            (Clone, EINVAL, 0, P | cf::CLONE_PARENT_SETTID, NEW, Some(Stage::Flags)),
            (Clone3, EINVAL, 0, P | cf::CLONE_PARENT_SETTID, NEW, Some(Stage::Other)),
            (Clone3, EINVAL, 0, P | cf::CLONE_DETACHED, NEW, Some(Stage::Flags)),
            (Clone3, EINVAL, 0, P | cf::CLONE_THREAD, OLD, Some(Stage::Flags)),
            (Clone3, EINVAL, 0, P | cf::CLONE_THREAD, NEW, Some(Stage::Other)),
            (Clone, EMFILE, 0, P, NEW, Some(Stage::FdAlloc)),
            (Clone3, ENFILE, 0, P, NEW, Some(Stage::FdAlloc)),
            (Clone, EFAULT, 0, P, NEW, Some(Stage::UserMemory)),
            (Clone3, EAGAIN, hints::PIDS_AT_LIMIT, P, NEW, Some(Stage::PidsCgroup)),
            (Clone3, EAGAIN, 0, P, NEW, Some(Stage::TaskLimit)),
            (Clone, 12, 0, P, NEW, Some(Stage::Other)),
            (PidfdOpen, 3, 0, 0, NEW, Some(Stage::Other)),
            (PidfdOpen, EINVAL, 0, 1, NEW, Some(Stage::Flags)),
            (PidfdOpen, EMFILE, 0, 0, NEW, Some(Stage::FdAlloc)),
            (PidfdGetfd, 1, 0, 0, NEW, None),
            (PidfdSendSignal, 3, 0, 0, NEW, None),
        ];
        for (kind, errno, h, flags, sem, want) in cases {
            assert_eq!(
                stage(*kind, *errno, *h, *flags, *sem),
                *want,
                "{kind:?} errno {errno} flags {flags:#x} {sem:?}"
            );
        }
    }

    #[test]
    fn release_parsing() {
        for (rel, thread) in [
            ("6.18.44-fc-v595", true),
            ("6.9.0", true),
            ("6.8.12-1-amd64", false),
            ("5.10.0-33-cloud-amd64", false),
            ("7.1", true),
            ("garbage", false),
        ] {
            assert_eq!(KernelSemantics::from_release(rel).thread_pidfd, thread, "{rel}");
        }
    }
}

//! Which step of pidfd creation a failure came from, from what the kernel programs saw.
//! Pure: the same function labels events and the metrics built from the kernel's counters,
//! so the two can never disagree.
use pidfd_trace_common::{EventKind, clone_flags as cf, hints, xhints};
use serde::Serialize;

use crate::hooks::StageRule;

const EAGAIN: u32 = 11;
const EFAULT: u32 = 14;
const EINVAL: u32 = 22;
const ENFILE: u32 = 23;
const EMFILE: u32 = 24;

/// Every errno the stage rules below name; any other errno is stage `other` (or, with
/// function probes, `fd_alloc` when the creation step itself failed). The metrics export
/// each (source, stage, errno) these can give from the start (sink/outcomes.rs).
pub const NAMED_ERRNOS: [u32; 5] = [EAGAIN, EFAULT, EINVAL, ENFILE, EMFILE];

/// Failure stages of the JSON `stage` field and the metrics' `stage` label (docs/events.md, README.md's metric table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Refused before the syscall ran (a seccomp filter or a tracer): its exit fired without
    /// its entry. Any syscall can carry it.
    Denied,
    /// The arguments were refused before anything was allocated: pidfd_open's pid <= 0,
    /// clone3's `struct clone_args` or `set_tid` unreadable (EFAULT, no pidfd existed).
    Args,
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
    /// Any other failure.
    Other,
}

impl Stage {
    /// The JSON `stage` value and metric label (docs/events.md).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Denied => "denied",
            Stage::Args => "args",
            Stage::Flags => "flags",
            Stage::FdAlloc => "fd_alloc",
            Stage::UserMemory => "user_memory",
            Stage::PidsCgroup => "pids_cgroup",
            Stage::TaskLimit => "task_limit",
            Stage::Other => "other",
        }
    }
}

/// What the running kernel does, and what we watch of it, that changes the meaning of an errno.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelSemantics {
    /// CLONE_PIDFD|CLONE_THREAD gives a thread pidfd (6.9+) instead of EINVAL.
    pub thread_pidfd: bool,
    /// A function probe watches the pidfd creation step, so `PIDFD_CREATED` is a fact and
    /// its absence means the pidfd was never made.
    pub creation_observed: bool,
}

impl KernelSemantics {
    /// From the running kernel's release string (`uname -r`): thread pidfds came with 6.9.
    pub fn from_release(release: &str) -> Self {
        let mut nums = release.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse::<u32>().ok());
        let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        Self { thread_pidfd: (major, minor) >= (6, 9), creation_observed: false }
    }
}

/// pidfd_open's flags (include/uapi/linux/pidfd.h): PIDFD_NONBLOCK (O_NONBLOCK), and
/// PIDFD_THREAD (O_EXCL) from 6.9.
const PIDFD_NONBLOCK: u64 = 0o4000;
const PIDFD_THREAD: u64 = 0o200;

/// The stage of a failed call: `denied` for any call refused before it ran; for pidfd
/// creations the step that failed; `None` for successes and for other failed uses.
/// `x` holds the record's `xhints` bits.
pub fn stage(
    kind: EventKind,
    errno: u32,
    hint_bits: u8,
    x: u8,
    flags: u64,
    sem: KernelSemantics,
) -> Option<Stage> {
    if errno == 0 {
        return None;
    }
    if x & xhints::DENIED != 0 {
        return Some(Stage::Denied);
    }
    match crate::hooks::event(kind).stage {
        StageRule::Clone if x & xhints::ARGS != 0 => Some(Stage::Args),
        StageRule::Clone => Some(clone_stage(kind, errno, hint_bits, flags, sem)),
        StageRule::PidfdOpen => Some(match errno {
            // pidfd_open checks its flags first, then pid > 0 (kernel/pid.c).
            EINVAL if flags & !pidfd_open_flags(sem) != 0 => Stage::Flags,
            EINVAL if x & xhints::ARGS != 0 => Stage::Args,
            EMFILE | ENFILE => Stage::FdAlloc,
            _ => Stage::Other,
        }),
        StageRule::None => None,
    }
}

/// The flags pidfd_open accepts on the running kernel.
fn pidfd_open_flags(sem: KernelSemantics) -> u64 {
    PIDFD_NONBLOCK | if sem.thread_pidfd { PIDFD_THREAD } else { 0 }
}

fn clone_stage(kind: EventKind, errno: u32, hint_bits: u8, flags: u64, sem: KernelSemantics) -> Stage {
    if sem.creation_observed && hint_bits & hints::COPY_PROCESS != 0 {
        return function_probe_stage(errno, hint_bits);
    }
    match errno {
        EINVAL if conflicting_flags(kind, flags, sem) => Stage::Flags,
        EMFILE | ENFILE => Stage::FdAlloc,
        EFAULT => Stage::UserMemory,
        EAGAIN if hint_bits & hints::PIDS_AT_LIMIT != 0 => Stage::PidsCgroup,
        EAGAIN => Stage::TaskLimit,
        _ => Stage::Other,
    }
}

/// From what the probes inside copy_process saw, in the kernel's order: flag checks and
/// task limits, pidfd creation, write-back of the pidfd number, cgroup_can_fork.
fn function_probe_stage(errno: u32, h: u8) -> Stage {
    let created = h & hints::PIDFD_CREATED != 0;
    if h & hints::PIDFD_CREATE_FAILED != 0 {
        return Stage::FdAlloc;
    }
    if h & hints::CGROUP_FORK_FAILED != 0 {
        return if errno == EAGAIN { Stage::PidsCgroup } else { Stage::Other };
    }
    match errno {
        EFAULT if created => Stage::UserMemory,
        EMFILE | ENFILE if !created => Stage::FdAlloc,
        EINVAL if !created => Stage::Flags,
        // RLIMIT_NPROC and threads-max are checked before the pidfd exists.
        EAGAIN if !created => Stage::TaskLimit,
        _ => Stage::Other,
    }
}

/// Whether the failure came after the pidfd existed; known only while function probes watch
/// copy_process and the creation step (a clone they never saw failed before copy_process,
/// e.g. legacy clone's CLONE_PARENT_SETTID check in kernel_clone, so no pidfd existed).
pub fn pidfd_allocated(kind: EventKind, errno: u32, hint_bits: u8, sem: KernelSemantics) -> Option<bool> {
    (errno != 0 && sem.creation_observed && crate::hooks::event(kind).stage == StageRule::Clone)
        .then_some(hint_bits & hints::PIDFD_CREATED != 0)
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

    const OLD: KernelSemantics = KernelSemantics { thread_pidfd: false, creation_observed: false };
    const NEW: KernelSemantics = KernelSemantics { thread_pidfd: true, creation_observed: false };
    const FN: KernelSemantics = KernelSemantics { thread_pidfd: true, creation_observed: true };
    const P: u64 = cf::CLONE_PIDFD;

    /// kind, errno, hints, flags, kernel, expected stage.
    type Case = (EventKind, u32, u8, u64, KernelSemantics, Option<Stage>);

    #[test]
    fn table() {
        use EventKind::*;
        let cases: &[Case] = &[
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
            (PidfdOpen, EINVAL, 0, 0, NEW, Some(Stage::Other)),
            (PidfdOpen, EINVAL, 0, PIDFD_THREAD, NEW, Some(Stage::Other)),
            (PidfdOpen, EINVAL, 0, PIDFD_THREAD, OLD, Some(Stage::Flags)),
            (PidfdOpen, EMFILE, 0, 0, NEW, Some(Stage::FdAlloc)),
            (PidfdGetfd, 1, 0, 0, NEW, None),
            (PidfdSendSignal, 3, 0, 0, NEW, None),
        ];
        for (kind, errno, h, flags, sem, want) in cases {
            assert_eq!(
                stage(*kind, *errno, *h, 0, *flags, *sem),
                *want,
                "{kind:?} errno {errno} flags {flags:#x} {sem:?}"
            );
        }
    }

    #[test]
    fn function_probe_table() {
        use hints::*;
        let cases: &[(u32, u8, Stage, Option<bool>)] = &[
            (EINVAL, COPY_PROCESS, Stage::Flags, Some(false)),
            (EMFILE, COPY_PROCESS, Stage::FdAlloc, Some(false)),
            (12, COPY_PROCESS | PIDFD_CREATE_FAILED, Stage::FdAlloc, Some(false)),
            (EFAULT, COPY_PROCESS | PIDFD_CREATED, Stage::UserMemory, Some(true)),
            (EFAULT, COPY_PROCESS, Stage::Other, Some(false)),
            (EAGAIN, COPY_PROCESS | PIDFD_CREATED | CGROUP_FORK_FAILED, Stage::PidsCgroup, Some(true)),
            (EAGAIN, COPY_PROCESS, Stage::TaskLimit, Some(false)),
            (4, COPY_PROCESS | PIDFD_CREATED, Stage::Other, Some(true)),
        ];
        for (errno, h, stage_want, alloc) in cases {
            assert_eq!(
                stage(EventKind::Clone3, *errno, *h, 0, P, FN),
                Some(*stage_want),
                "errno {errno} hints {h:#b}"
            );
            assert_eq!(
                pidfd_allocated(EventKind::Clone3, *errno, *h, FN),
                *alloc,
                "errno {errno} hints {h:#b}"
            );
        }
        // Without the creation hook the same hints fall back to the errno rules.
        assert_eq!(stage(EventKind::Clone3, EFAULT, COPY_PROCESS, 0, P, NEW), Some(Stage::UserMemory));
        assert_eq!(pidfd_allocated(EventKind::Clone3, EFAULT, COPY_PROCESS, NEW), None);
        // Refused before copy_process ran: function probes saw nothing, no pidfd existed.
        assert_eq!(
            stage(EventKind::Clone, EINVAL, 0, 0, P | cf::CLONE_PARENT_SETTID, FN),
            Some(Stage::Flags)
        );
        assert_eq!(pidfd_allocated(EventKind::Clone, EINVAL, 0, FN), Some(false));
        assert_eq!(
            pidfd_allocated(EventKind::Clone3, 0, COPY_PROCESS | PIDFD_CREATED, FN),
            None,
            "successes"
        );
    }

    #[test]
    fn extra_facts() {
        use EventKind::*;
        // pidfd_open(-5, 0) / (0, 0): the pid was refused, not the flags.
        assert_eq!(stage(PidfdOpen, EINVAL, 0, xhints::ARGS, 0, NEW), Some(Stage::Args));
        // Flags are checked first.
        assert_eq!(stage(PidfdOpen, EINVAL, 0, xhints::ARGS, 4, NEW), Some(Stage::Flags));
        for kind in [Clone, Clone3, PidfdOpen, PidfdGetfd, PidfdSendSignal] {
            assert_eq!(stage(kind, 1, 0, xhints::DENIED, 0, NEW), Some(Stage::Denied), "{kind:?}");
        }
        assert_eq!(stage(Clone3, EFAULT, 0, xhints::ARGS, P, NEW), Some(Stage::Args));
        assert_eq!(stage(Clone3, EFAULT, 0, xhints::ARGS, P, FN), Some(Stage::Args));
        assert_eq!(stage(Clone3, 0, 0, xhints::DENIED, P, NEW), None);
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

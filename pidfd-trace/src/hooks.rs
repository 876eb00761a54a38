//! The hook table: one row per traced syscall (`EVENTS`, keyed by `EventKind`) and one per
//! kernel function a function hook attaches to (`function_hooks`). Everything else derives
//! from it: the attach plan (plan.rs), the tracefs argument checks (tracefs.rs), flag names
//! (names.rs), decoding (decode.rs), failure stages (classify.rs) and the metric series each
//! outcome feeds (sink/outcomes.rs, sink/metrics.rs).
//!
//! Adding a syscall is: its kernel programs (pidfd-trace-ebpf), one `EventKind` line
//! (pidfd-trace-common), one row here, and the arms the compiler asks for. `event` below is an
//! exhaustive match, so a kind without a row does not build.
use pidfd_trace_common::{EventKind, clone_flags as cf, fn_params};

/// How a row is traced: the tracepoints `syscalls:sys_{enter,exit}_<syscall>` of each of its
/// syscalls.
#[derive(Clone, Copy, Debug)]
pub struct Tracepoint {
    /// The syscalls whose tracepoints carry this row; empty when no syscall tracepoint can see
    /// the path (`EventHook::blind` says why).
    pub syscalls: &'static [&'static str],
    /// Whether `sys_enter_<syscall>` has a program too (false: exit only, no argument read).
    pub enter: bool,
    /// Argument names of `sys_enter_<syscall>` in order, as its tracefs format file lists them,
    /// up to the last one the program reads. Checked at start-up: each must sit at
    /// `arg0 + 8 * index` (tracefs.rs), as the programs assume.
    pub args: &'static [&'static str],
}

/// What `EventRecord::arg0` / `arg1` holds for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// Nothing (0).
    Unused,
    /// A pid the caller passed (pidfd_open's `pid`): the JSON `target_pid`.
    Pid,
    /// A pidfd the caller passed: resolved to `target_pid` in the kernel, else by the enricher.
    Pidfd,
    /// A file descriptor number in the target (pidfd_getfd's `targetfd`): JSON `target_fd`.
    TargetFd,
    /// A signal number: JSON `signal` and `signal_nr`.
    Signal,
    /// clone/clone3: how long copy_process ran, ns, when a function probe timed it.
    CopyProcessNs,
    /// process_madvise's `advice` (MADV_*): JSON `advice`.
    Advice,
    /// An ioctl command (pidfd_ioctl): JSON `cmd`.
    IoctlCmd,
}

/// What the return value means on success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returns {
    /// The new child's pid (`child_pid`); the pidfd was written to user memory (`pidfd`).
    ChildPid,
    /// The new pidfd (`pidfd`).
    NewPidfd,
    /// The kernel program found the new pidfd in the caller's fd table and put its number in
    /// the record's `pidfd` (getsockopt returns 0; an open returns the fd itself).
    InstalledPidfd,
    /// Anything else (0, or an fd that is not a pidfd).
    Other,
}

/// How a failed call is placed in the pidfd creation steps (`stage`, classify.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageRule {
    /// clone/clone3: flag checks, fd allocation, user memory, pids cgroup, task limits.
    Clone,
    /// pidfd_open: flag checks, fd allocation, other.
    PidfdOpen,
    /// The other creation paths: fd allocation (EMFILE/ENFILE), user memory (EFAULT: the
    /// kernel could not write the pidfd number back), other.
    Path,
    /// Not a creation: no stage.
    None,
}

/// Which contract metric family a counted outcome feeds (docs/metrics.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feeds {
    /// `pidfd_trace_pidfds_created_total{source}` and, on failure,
    /// `pidfd_trace_pidfd_create_failures_total{source,stage,errno}`; `source` = event name.
    Creation,
    /// `pidfd_trace_getfd_total` and `pidfd_trace_getfd_failures_total{errno}`.
    Getfd,
    /// `pidfd_trace_signals_total{signal}` and `pidfd_trace_signal_failures_total{errno}`.
    Signal,
    /// `pidfd_trace_pidfd_uses_total{op,outcome}` with `op` = the event name.
    Use,
}

/// Names of the bits of one syscall's `flags`.
#[derive(Clone, Copy, Debug)]
pub struct FlagTable {
    /// Bit → name, in the order names are listed.
    pub names: &'static [(u64, &'static str)],
    /// Bits that are not flags (clone's exit signal) and are left out of `flag_names`.
    pub not_flags: u64,
}

/// One traced event: a row of the hook table.
#[derive(Clone, Copy, Debug)]
pub struct EventHook {
    /// The kind records carry; its `name()` is the JSON `event` and the hook name.
    pub kind: EventKind,
    /// The syscall tracepoints, attached in every mode.
    pub tracepoint: Tracepoint,
    /// What `flags` holds is named with this table.
    pub flags: FlagTable,
    /// What the record's `arg0` holds.
    pub arg0: Saved,
    /// See `arg0`.
    pub arg1: Saved,
    /// What `ret` means on success.
    pub returns: Returns,
    /// How a failure is staged.
    pub stage: StageRule,
    /// The metric family its counted outcomes feed.
    pub feeds: Feeds,
    /// Rows no syscall tracepoint can see (`tracepoint.syscalls` empty): why, for `check`
    /// (`cannot_see`) and the plan's refusal. Empty for rows with tracepoints.
    pub blind: &'static [&'static str],
}

impl EventHook {
    /// The contract name: JSON `event`, metric `source`/`op`, attach-plan `hook`.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The tracepoints this row attaches, as the plan shows them
    /// (`syscalls:sys_enter_clone + sys_exit_clone`); `None` for a row no tracepoint sees.
    pub fn tracepoint_target(&self) -> Option<String> {
        let tp = self.tracepoint;
        if tp.syscalls.is_empty() {
            return None;
        }
        let one = |sys: &&str| match tp.enter {
            true => format!("syscalls:sys_enter_{sys} + sys_exit_{sys}"),
            false => format!("syscalls:sys_exit_{sys}"),
        };
        Some(tp.syscalls.iter().map(one).collect::<Vec<_>>().join(" + "))
    }

    /// The tracepoint program names (`sys_enter_<syscall>`, `sys_exit_<syscall>`) of this row.
    pub fn tracepoint_programs(&self) -> Vec<String> {
        let tp = self.tracepoint;
        let mut v = Vec::new();
        for sys in tp.syscalls {
            if tp.enter {
                v.push(format!("sys_enter_{sys}"));
            }
            v.push(format!("sys_exit_{sys}"));
        }
        v
    }

    /// Whether syscall tracepoints carry this row: not `pidfd_autokill` (only its function
    /// hook `autokill` sees it) nor the creation paths no syscall shows (`blind`).
    pub fn has_syscall(&self) -> bool {
        !self.tracepoint.syscalls.is_empty()
    }

    /// The (first) syscall whose tracepoints carry this row: the event name, except where the
    /// event is one use of a more general syscall (`pidfd_ioctl`: `ioctl`) or a path seen at
    /// other syscalls (`reopen`: `openat`).
    pub fn syscall(&self) -> &'static str {
        self.tracepoint.syscalls.first().copied().unwrap_or(self.name())
    }
}

/// The syscall behind the plan's `hook` name (`EventHook::syscall`); `hook` itself for a
/// name that is not a row.
pub fn syscall_of(hook: &'static str) -> &'static str {
    events().find(|h| h.name() == hook).map_or(hook, EventHook::syscall)
}

/// The rows carried by syscall tracepoints.
pub fn syscall_events() -> impl Iterator<Item = &'static EventHook> {
    events().filter(|h| h.has_syscall())
}

/// clone(2) flags (include/uapi/linux/sched.h).
pub const CLONE_FLAGS: &[(u64, &str)] = &[
    (cf::CLONE_VM, "CLONE_VM"),
    (cf::CLONE_FS, "CLONE_FS"),
    (cf::CLONE_FILES, "CLONE_FILES"),
    (cf::CLONE_SIGHAND, "CLONE_SIGHAND"),
    (cf::CLONE_PIDFD, "CLONE_PIDFD"),
    (cf::CLONE_PTRACE, "CLONE_PTRACE"),
    (cf::CLONE_VFORK, "CLONE_VFORK"),
    (cf::CLONE_PARENT, "CLONE_PARENT"),
    (cf::CLONE_THREAD, "CLONE_THREAD"),
    (cf::CLONE_NEWNS, "CLONE_NEWNS"),
    (cf::CLONE_SYSVSEM, "CLONE_SYSVSEM"),
    (cf::CLONE_SETTLS, "CLONE_SETTLS"),
    (cf::CLONE_PARENT_SETTID, "CLONE_PARENT_SETTID"),
    (cf::CLONE_CHILD_CLEARTID, "CLONE_CHILD_CLEARTID"),
    (cf::CLONE_DETACHED, "CLONE_DETACHED"),
    (cf::CLONE_UNTRACED, "CLONE_UNTRACED"),
    (cf::CLONE_CHILD_SETTID, "CLONE_CHILD_SETTID"),
    (cf::CLONE_NEWCGROUP, "CLONE_NEWCGROUP"),
    (cf::CLONE_NEWUTS, "CLONE_NEWUTS"),
    (cf::CLONE_NEWIPC, "CLONE_NEWIPC"),
    (cf::CLONE_NEWUSER, "CLONE_NEWUSER"),
    (cf::CLONE_NEWPID, "CLONE_NEWPID"),
    (cf::CLONE_NEWNET, "CLONE_NEWNET"),
    (cf::CLONE_IO, "CLONE_IO"),
    (cf::CLONE_CLEAR_SIGHAND, "CLONE_CLEAR_SIGHAND"),
    (cf::CLONE_INTO_CGROUP, "CLONE_INTO_CGROUP"),
    (cf::CLONE_AUTOREAP, "CLONE_AUTOREAP"),
    (cf::CLONE_NNP, "CLONE_NNP"),
    (cf::CLONE_PIDFD_AUTOKILL, "CLONE_PIDFD_AUTOKILL"),
];

/// pidfd_open(2): PIDFD_NONBLOCK is O_NONBLOCK, PIDFD_THREAD (6.9+) is O_EXCL.
pub const PIDFD_OPEN_FLAGS: &[(u64, &str)] = &[(0o4000, "PIDFD_NONBLOCK"), (0o200, "PIDFD_THREAD")];

/// pidfd_send_signal(2), 6.9+.
pub const SIGNAL_FLAGS: &[(u64, &str)] =
    &[(1, "PIDFD_SIGNAL_THREAD"), (2, "PIDFD_SIGNAL_THREAD_GROUP"), (4, "PIDFD_SIGNAL_PROCESS_GROUP")];

/// waitid(2) options (include/uapi/linux/wait.h).
pub const WAIT_OPTIONS: &[(u64, &str)] = &[
    (0x0000_0001, "WNOHANG"),
    (0x0000_0002, "WSTOPPED"),
    (0x0000_0004, "WEXITED"),
    (0x0000_0008, "WCONTINUED"),
    (0x0100_0000, "WNOWAIT"),
    (0x2000_0000, "__WNOTHREAD"),
    (0x4000_0000, "__WALL"),
    (0x8000_0000, "__WCLONE"),
];

/// setns(2)'s `flags` with a pidfd: the namespaces to enter (include/uapi/linux/sched.h;
/// CLONE_NEWTIME is 0x80).
pub const SETNS_FLAGS: &[(u64, &str)] = &[
    (cf::CLONE_NEWNS, "CLONE_NEWNS"),
    (cf::CLONE_NEWCGROUP, "CLONE_NEWCGROUP"),
    (cf::CLONE_NEWUTS, "CLONE_NEWUTS"),
    (cf::CLONE_NEWIPC, "CLONE_NEWIPC"),
    (cf::CLONE_NEWUSER, "CLONE_NEWUSER"),
    (cf::CLONE_NEWPID, "CLONE_NEWPID"),
    (cf::CLONE_NEWNET, "CLONE_NEWNET"),
    (0x80, "CLONE_NEWTIME"),
];

/// madvise advice values (include/uapi/asm-generic/mman-common.h); process_madvise accepts
/// MADV_COLD, MADV_PAGEOUT, MADV_WILLNEED and (6.1+) MADV_COLLAPSE, the others are EINVAL.
pub const MADV_ADVICE: &[(u64, &str)] = &[
    (0, "MADV_NORMAL"),
    (1, "MADV_RANDOM"),
    (2, "MADV_SEQUENTIAL"),
    (3, "MADV_WILLNEED"),
    (4, "MADV_DONTNEED"),
    (8, "MADV_FREE"),
    (9, "MADV_REMOVE"),
    (10, "MADV_DONTFORK"),
    (11, "MADV_DOFORK"),
    (12, "MADV_MERGEABLE"),
    (13, "MADV_UNMERGEABLE"),
    (14, "MADV_HUGEPAGE"),
    (15, "MADV_NOHUGEPAGE"),
    (16, "MADV_DONTDUMP"),
    (17, "MADV_DODUMP"),
    (18, "MADV_WIPEONFORK"),
    (19, "MADV_KEEPONFORK"),
    (20, "MADV_COLD"),
    (21, "MADV_PAGEOUT"),
    (22, "MADV_POPULATE_READ"),
    (23, "MADV_POPULATE_WRITE"),
    (24, "MADV_DONTNEED_LOCKED"),
    (25, "MADV_COLLAPSE"),
];

/// The pidfs ioctl commands (include/uapi/linux/pidfd.h): `_IO(0xFF, nr)` for the namespace
/// ones (6.11+), nr 11 for PIDFD_GET_INFO (6.13+), which is `_IOWR` with the size of the
/// caller's `struct pidfd_info` (64 bytes and up: the size is part of the number).
pub const PIDFD_IOCTLS: &[(u64, &str)] = &[
    (1, "PIDFD_GET_CGROUP_NAMESPACE"),
    (2, "PIDFD_GET_IPC_NAMESPACE"),
    (3, "PIDFD_GET_MNT_NAMESPACE"),
    (4, "PIDFD_GET_NET_NAMESPACE"),
    (5, "PIDFD_GET_PID_NAMESPACE"),
    (6, "PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE"),
    (7, "PIDFD_GET_TIME_NAMESPACE"),
    (8, "PIDFD_GET_TIME_FOR_CHILDREN_NAMESPACE"),
    (9, "PIDFD_GET_USER_NAMESPACE"),
    (10, "PIDFD_GET_UTS_NAMESPACE"),
];

/// The name of a pidfs ioctl command: `PIDFD_GET_*_NAMESPACE`, `PIDFD_GET_INFO` (any size
/// of the read-write `struct pidfd_info`), else the number in hex.
pub fn ioctl_name(cmd: u64) -> String {
    const IOC_READ_WRITE: u64 = 3 << 30;
    let (nr, ty, dir) = (cmd & 0xff, (cmd >> 8) & 0xff, cmd & (3 << 30));
    if ty == 0xff {
        if cmd >> 16 == 0 {
            if let Some((_, name)) = PIDFD_IOCTLS.iter().find(|(n, _)| *n == nr) {
                return (*name).to_string();
            }
        } else if nr == 11 && dir == IOC_READ_WRITE {
            return "PIDFD_GET_INFO".to_string();
        }
    }
    format!("{cmd:#x}")
}

/// The name of a madvise advice value, else the number.
pub fn advice_name(advice: u64) -> String {
    match MADV_ADVICE.iter().find(|(n, _)| *n == advice) {
        Some((_, name)) => (*name).to_string(),
        None => advice.to_string(),
    }
}

const NO_FLAGS: FlagTable = FlagTable { names: &[], not_flags: 0 };

const CLONE: EventHook = EventHook {
    kind: EventKind::Clone,
    tracepoint: Tracepoint {
        syscalls: &["clone"],
        enter: true,
        args: &["clone_flags", "newsp", "parent_tidptr"],
    },
    flags: FlagTable { names: CLONE_FLAGS, not_flags: cf::CSIGNAL },
    arg0: Saved::CopyProcessNs,
    arg1: Saved::Unused,
    returns: Returns::ChildPid,
    stage: StageRule::Clone,
    feeds: Feeds::Creation,
    blind: &[],
};

const CLONE3: EventHook = EventHook {
    kind: EventKind::Clone3,
    tracepoint: Tracepoint { syscalls: &["clone3"], enter: true, args: &["uargs", "size"] },
    ..CLONE
};

const PIDFD_OPEN: EventHook = EventHook {
    kind: EventKind::PidfdOpen,
    tracepoint: Tracepoint { syscalls: &["pidfd_open"], enter: true, args: &["pid", "flags"] },
    flags: FlagTable { names: PIDFD_OPEN_FLAGS, not_flags: 0 },
    arg0: Saved::Pid,
    arg1: Saved::Unused,
    returns: Returns::NewPidfd,
    stage: StageRule::PidfdOpen,
    feeds: Feeds::Creation,
    blind: &[],
};

const PIDFD_GETFD: EventHook = EventHook {
    kind: EventKind::PidfdGetfd,
    tracepoint: Tracepoint { syscalls: &["pidfd_getfd"], enter: true, args: &["pidfd", "fd", "flags"] },
    flags: NO_FLAGS,
    arg0: Saved::Pidfd,
    arg1: Saved::TargetFd,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Getfd,
    blind: &[],
};

const PIDFD_SEND_SIGNAL: EventHook = EventHook {
    kind: EventKind::PidfdSendSignal,
    tracepoint: Tracepoint {
        syscalls: &["pidfd_send_signal"],
        enter: true,
        args: &["pidfd", "sig", "info", "flags"],
    },
    flags: FlagTable { names: SIGNAL_FLAGS, not_flags: 0 },
    arg0: Saved::Pidfd,
    arg1: Saved::Signal,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Signal,
    blind: &[],
};

/// waitid(P_PIDFD, pidfd, infop, options, ru): only P_PIDFD calls are recorded.
const WAITID: EventHook = EventHook {
    kind: EventKind::Waitid,
    tracepoint: Tracepoint {
        syscalls: &["waitid"],
        enter: true,
        args: &["which", "upid", "infop", "options"],
    },
    flags: FlagTable { names: WAIT_OPTIONS, not_flags: 0 },
    arg0: Saved::Pidfd,
    arg1: Saved::Unused,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Use,
    blind: &[],
};

/// open(2) flags an open_by_handle_at of a pidfs handle may carry (include/uapi/asm-generic/
/// fcntl.h, x86_64/arm64 values).
pub const OPEN_FLAGS: &[(u64, &str)] = &[
    (0o1, "O_WRONLY"),
    (0o2, "O_RDWR"),
    (0o200, "O_EXCL"),
    (0o4000, "O_NONBLOCK"),
    (0o2000000, "O_CLOEXEC"),
    (0o10000000, "O_PATH"),
];

/// getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, ...) (6.5+): a pidfd for the unix socket's peer.
/// The enter program returns before any map access unless level/optname are exactly these.
const SO_PEERPIDFD: EventHook = EventHook {
    kind: EventKind::SoPeerpidfd,
    tracepoint: Tracepoint {
        syscalls: &["getsockopt"],
        enter: true,
        args: &["fd", "level", "optname", "optval"],
    },
    flags: NO_FLAGS,
    arg0: Saved::Unused,
    arg1: Saved::Unused,
    returns: Returns::InstalledPidfd,
    stage: StageRule::Path,
    feeds: Feeds::Creation,
    blind: &[],
};

/// recvmsg(2) of an SCM_PIDFD control message (SO_PASSPIDFD, 6.5+).
const SCM_PIDFD: EventHook = EventHook {
    kind: EventKind::ScmPidfd,
    tracepoint: Tracepoint { syscalls: &[], enter: false, args: &[] },
    blind: &[
        "scm_pidfd: the pidfd is installed inside recvmsg (scm_pidfd_recv) and its number is only in the caller's control buffer: seeing it from recvmsg's tracepoints means parsing every recvmsg's msghdr on the host; fentry/kprobe modes see it (hook pidfd_funnel) (README: Every way a pidfd is born)",
    ],
    ..SO_PEERPIDFD
};

/// open_by_handle_at(2) of a pidfs file handle (name_to_handle_at of a pidfd).
const PIDFS_HANDLE: EventHook = EventHook {
    kind: EventKind::PidfsHandle,
    tracepoint: Tracepoint {
        syscalls: &["open_by_handle_at"],
        enter: true,
        args: &["mountdirfd", "handle", "flags"],
    },
    flags: FlagTable { names: OPEN_FLAGS, not_flags: 0 },
    returns: Returns::InstalledPidfd,
    ..SO_PEERPIDFD
};

/// read(2) of a fanotify group made with FAN_REPORT_PIDFD (5.15+).
const FANOTIFY: EventHook = EventHook {
    kind: EventKind::Fanotify,
    tracepoint: Tracepoint { syscalls: &[], enter: false, args: &[] },
    blind: &[
        "fanotify: the pidfd is made inside read(2) of a FAN_REPORT_PIDFD group and its number is only in the event buffer: seeing it from read's tracepoints means inspecting every read on the host; fentry/kprobe modes see it (hook pidfd_funnel) (README: Every way a pidfd is born)",
    ],
    ..SO_PEERPIDFD
};

/// open/openat/openat2 of a `/proc/<pid>/fd/<n>` link to a pidfd: a new pidfd (new file) for
/// the same process. Seen at the exit of openat and openat2 only (no enter program).
const REOPEN: EventHook = EventHook {
    kind: EventKind::Reopen,
    tracepoint: Tracepoint { syscalls: &["openat", "openat2"], enter: false, args: &[] },
    returns: Returns::InstalledPidfd,
    ..SO_PEERPIDFD
};

/// The pidfd a `core_pattern = |helper %F` coredump helper finds at its fd 3.
const COREDUMP: EventHook = EventHook {
    kind: EventKind::Coredump,
    tracepoint: Tracepoint { syscalls: &[], enter: false, args: &[] },
    blind: &[
        "coredump: the kernel installs the pidfd in the usermode helper it starts (umh_coredump_setup), with no syscall by anyone; fentry/kprobe modes see it (hook coredump_helper, 6.16+ makes it) (README: Every way a pidfd is born)",
    ],
    ..SO_PEERPIDFD
};

/// setns(fd, flags) with a pidfd only: a namespace fd is not a pidfd use and is not recorded.
const SETNS: EventHook = EventHook {
    kind: EventKind::Setns,
    tracepoint: Tracepoint { syscalls: &["setns"], enter: true, args: &["fd", "flags"] },
    flags: FlagTable { names: SETNS_FLAGS, not_flags: 0 },
    arg0: Saved::Pidfd,
    arg1: Saved::Unused,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Use,
    blind: &[],
};

/// process_madvise(pidfd, vec, vlen, advice, flags).
const PROCESS_MADVISE: EventHook = EventHook {
    kind: EventKind::ProcessMadvise,
    tracepoint: Tracepoint {
        syscalls: &["process_madvise"],
        enter: true,
        args: &["pidfd", "vec", "vlen", "behavior", "flags"],
    },
    flags: NO_FLAGS,
    arg0: Saved::Pidfd,
    arg1: Saved::Advice,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Use,
    blind: &[],
};

/// process_mrelease(pidfd, flags).
const PROCESS_MRELEASE: EventHook = EventHook {
    kind: EventKind::ProcessMrelease,
    tracepoint: Tracepoint { syscalls: &["process_mrelease"], enter: true, args: &["pidfd", "flags"] },
    flags: NO_FLAGS,
    arg0: Saved::Pidfd,
    arg1: Saved::Unused,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Use,
    blind: &[],
};

/// ioctl(pidfd, cmd, arg) with a pidfs command on a pidfd; every other ioctl is turned away
/// at entry on `cmd` alone.
const PIDFD_IOCTL: EventHook = EventHook {
    kind: EventKind::PidfdIoctl,
    tracepoint: Tracepoint { syscalls: &["ioctl"], enter: true, args: &["fd", "cmd"] },
    flags: NO_FLAGS,
    arg0: Saved::Pidfd,
    arg1: Saved::IoctlCmd,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Use,
    blind: &[],
};

/// The SIGKILL `pidfs_file_release` sends when an autokill pidfd is closed (7.1+): no syscall,
/// only the `autokill` function hook; counted like a pidfd_send_signal.
const PIDFD_AUTOKILL: EventHook = EventHook {
    kind: EventKind::PidfdAutokill,
    // No syscall and not blind: the `autokill` function hook row carries it in the plan.
    tracepoint: Tracepoint { syscalls: &[], enter: false, args: &[] },
    flags: NO_FLAGS,
    arg0: Saved::Unused,
    arg1: Saved::Signal,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Signal,
    blind: &[],
};

/// The row of `kind`. Exhaustive: a new `EventKind` does not build until it has a row.
pub const fn event(kind: EventKind) -> &'static EventHook {
    match kind {
        EventKind::Clone => &CLONE,
        EventKind::Clone3 => &CLONE3,
        EventKind::PidfdOpen => &PIDFD_OPEN,
        EventKind::PidfdGetfd => &PIDFD_GETFD,
        EventKind::PidfdSendSignal => &PIDFD_SEND_SIGNAL,
        EventKind::Waitid => &WAITID,
        EventKind::SoPeerpidfd => &SO_PEERPIDFD,
        EventKind::ScmPidfd => &SCM_PIDFD,
        EventKind::PidfsHandle => &PIDFS_HANDLE,
        EventKind::Fanotify => &FANOTIFY,
        EventKind::Reopen => &REOPEN,
        EventKind::Coredump => &COREDUMP,
        EventKind::Setns => &SETNS,
        EventKind::ProcessMadvise => &PROCESS_MADVISE,
        EventKind::ProcessMrelease => &PROCESS_MRELEASE,
        EventKind::PidfdIoctl => &PIDFD_IOCTL,
        EventKind::PidfdAutokill => &PIDFD_AUTOKILL,
    }
}

/// Every row, in `EventKind` order.
pub fn events() -> impl Iterator<Item = &'static EventHook> {
    EventKind::ALL.iter().map(|&k| event(k))
}

/// Kinds of kernel program a function-probe mode needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgKind {
    /// fentry (function entry, BTF).
    Fentry,
    /// fexit (function exit with arguments and return value, BTF).
    Fexit,
    /// kprobe (function entry, kallsyms).
    Kprobe,
    /// kretprobe (function return, kallsyms).
    Kretprobe,
}

/// One kernel function a function hook attaches to, with its programs per mode.
#[derive(Clone, Debug)]
pub struct FnTarget {
    /// The kernel function (BTF FUNC name, kallsyms symbol).
    pub func: &'static str,
    /// Parameter count the fexit programs were written for (an fexit program finds the return
    /// value right after the last argument); checked against the running kernel's BTF.
    pub params: usize,
    /// Programs (by name in the eBPF object) for fentry/fexit mode.
    pub fexit: &'static [(&'static str, ProgKind)],
    /// Programs for kprobe mode.
    pub kprobe: &'static [(&'static str, ProgKind)],
}

/// A function hook: what it is for (its name in the plan) and the kernel functions it needs.
#[derive(Clone, Debug)]
pub struct FnHook {
    /// Its name in the plan and `pidfd_trace_probe_attached{hook}`.
    pub hook: &'static str,
    /// The kernel functions it needs, all attached in the same mode.
    pub targets: Vec<FnTarget>,
    /// Creation paths no syscall tracepoint sees that this hook makes visible: their plan
    /// rows take its mode (plan.rs `settle_covered`). Empty for the others.
    pub covers: &'static [EventKind],
    /// Other hooks whose programs feed this one (the pidfs creation programs of
    /// `pidfd_creation` on 6.9+): a covered path is seen only when they are attached too.
    pub fed_by: &'static [&'static str],
}

/// One kernel function's parameter count: what the programs expect and what this kernel's
/// BTF says. `check --output json` prints these as `"prototypes"` (docs/cli.md); the VM
/// matrix fails a guest where one is not `ok`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PrototypeCheck {
    /// The kernel function (BTF FUNC name).
    pub function: &'static str,
    /// Parameters the programs were written for (the `// prototype:` lines in
    /// pidfd-trace-ebpf, checked against this table by a unit test).
    pub expected_params: usize,
    /// Parameters in this kernel's BTF; `null` when BTF has no such function (inlined or
    /// absent).
    pub btf_params: Option<usize>,
    /// `btf_params == expected_params`.
    pub ok: bool,
}

/// Every kernel function a function hook attaches to on this kernel (chosen by `has_func`),
/// with its parameter count checked against `btf_params` (BTF: count of a function's
/// parameters, `None` if absent).
pub fn check_prototypes(
    has_func: &dyn Fn(&str) -> bool,
    btf_params: &dyn Fn(&str) -> Option<usize>,
) -> Vec<PrototypeCheck> {
    let mut out: Vec<PrototypeCheck> = Vec::new();
    for t in function_hooks(has_func).into_iter().flat_map(|h| h.targets) {
        if out.iter().any(|c| c.function == t.func) {
            continue;
        }
        let btf = btf_params(t.func);
        out.push(PrototypeCheck {
            function: t.func,
            expected_params: t.params,
            btf_params: btf,
            ok: btf == Some(t.params),
        });
    }
    out
}

/// The function hooks for this kernel. The pidfd creation step moved from anon inodes to
/// pidfs in 6.9; which one applies is read from BTF/kallsyms, never from the version.
pub fn function_hooks(has_func: &dyn Fn(&str) -> bool) -> Vec<FnHook> {
    use ProgKind::*;
    use fn_params as p;
    let creation = if has_func("pidfs_alloc_file") {
        vec![FnTarget {
            func: "pidfs_alloc_file",
            params: p::PIDFS_ALLOC_FILE,
            fexit: &[("pidfs_fexit", Fexit)],
            kprobe: &[("pidfs_kret", Kretprobe)],
        }]
    } else {
        vec![
            FnTarget {
                func: "anon_inode_getfile",
                params: p::ANON_INODE,
                fexit: &[("anon_file_fexit", Fexit)],
                kprobe: &[("anon_kprobe", Kprobe), ("anon_file_kret", Kretprobe)],
            },
            FnTarget {
                func: "anon_inode_getfd",
                params: p::ANON_INODE,
                fexit: &[("anon_fd_fexit", Fexit)],
                kprobe: &[("anon_kprobe", Kprobe), ("anon_fd_kret", Kretprobe)],
            },
        ]
    };
    let mut hooks = vec![
        FnHook {
            hook: "copy_process",
            targets: vec![FnTarget {
                func: "copy_process",
                params: p::COPY_PROCESS,
                fexit: &[("cp_fentry", Fentry), ("cp_fexit", Fexit)],
                kprobe: &[("cp_kprobe", Kprobe), ("cp_kretprobe", Kretprobe)],
            }],
            covers: &[],
            fed_by: &[],
        },
        FnHook { hook: "pidfd_creation", targets: creation, covers: &[], fed_by: &[] },
        FnHook {
            hook: "cgroup_can_fork",
            targets: vec![FnTarget {
                func: "cgroup_can_fork",
                params: p::CGROUP_CAN_FORK,
                fexit: &[("cgfork_fexit", Fexit)],
                kprobe: &[("cgfork_kret", Kretprobe)],
            }],
            covers: &[],
            fed_by: &[],
        },
    ];
    // 7.1+: pidfds get a release hook, which sends the autokill SIGKILL.
    if has_func("pidfs_file_release") {
        hooks.push(FnHook {
            hook: "autokill",
            targets: vec![
                FnTarget {
                    func: "pidfs_file_release",
                    params: p::PIDFS_FILE_RELEASE,
                    fexit: &[("autokill_release_fentry", Fentry), ("autokill_release_fexit", Fexit)],
                    kprobe: &[("autokill_release_kprobe", Kprobe), ("autokill_release_kret", Kretprobe)],
                },
                FnTarget {
                    func: "do_send_sig_info",
                    params: p::DO_SEND_SIG_INFO,
                    fexit: &[("autokill_sig_fexit", Fexit)],
                    kprobe: &[("autokill_sig_kprobe", Kprobe), ("autokill_sig_kret", Kretprobe)],
                },
            ],
            covers: &[],
            fed_by: &[],
        });
    }
    // The creation funnel (pidfd-trace-ebpf/src/fprobe/funnel.rs) names the pidfds made
    // outside the traced syscalls from the syscall in progress, read through the
    // bpf_task_pt_regs helper (5.15+) or, on x86_64 without it, from the top of the task's
    // stack. 6.9+: every pidfd is a pidfs_alloc_file() file, which the pidfd_creation hook's
    // programs already see; before, the funnel adds its own anon-inode programs.
    let helper = has_func(HELPER_TASK_PT_REGS);
    let pidfs = has_func("pidfs_alloc_file");
    if has_func("fd_install")
        && has_func("put_unused_fd")
        && (helper || (!pidfs && cfg!(target_arch = "x86_64")))
    {
        let mut targets = vec![
            FnTarget {
                func: "fd_install",
                params: p::FD_INSTALL,
                fexit: &[("funnel_install_fentry", Fentry)],
                kprobe: &[("funnel_install_kprobe", Kprobe)],
            },
            FnTarget {
                func: "put_unused_fd",
                params: p::PUT_UNUSED_FD,
                fexit: &[("funnel_unused_fentry", Fentry)],
                kprobe: &[("funnel_unused_kprobe", Kprobe)],
            },
        ];
        if !pidfs {
            let anon =
                |func: &'static str, fexit, kprobe| FnTarget { func, params: p::ANON_INODE, fexit, kprobe };
            if helper {
                targets.push(anon(
                    "anon_inode_getfile",
                    &[("funnel_anon_file_fexit", Fexit)],
                    &[("funnel_anon_file_kret", Kretprobe), ("funnel_anon_kprobe", Kprobe)],
                ));
                targets.push(anon(
                    "anon_inode_getfd",
                    &[("funnel_anon_fd_fexit", Fexit)],
                    &[("funnel_anon_fd_kret", Kretprobe), ("funnel_anon_kprobe", Kprobe)],
                ));
            } else {
                targets.push(anon(
                    "anon_inode_getfile",
                    &[("funnel_anon_file_fexit_stack", Fexit)],
                    &[("funnel_anon_file_kret_stack", Kretprobe), ("funnel_anon_kprobe", Kprobe)],
                ));
                targets.push(anon(
                    "anon_inode_getfd",
                    &[("funnel_anon_fd_fexit_stack", Fexit)],
                    &[("funnel_anon_fd_kret_stack", Kretprobe), ("funnel_anon_kprobe", Kprobe)],
                ));
            }
        }
        hooks.push(FnHook {
            hook: FUNNEL_HOOK,
            targets,
            covers: &[EventKind::ScmPidfd, EventKind::Fanotify],
            fed_by: if pidfs { &["pidfd_creation"] } else { &[] },
        });
    }
    // The coredump helper's pidfd at fd 3: upstream 6.16+ (pidfs_alloc_file, fed by the
    // pidfd_creation hook's programs), and stable backports to 5.10/6.1 (anon inodes: the
    // hook's own anon_inode_getfile programs).
    let anon = !has_func("pidfs_alloc_file") && has_func("anon_inode_getfile");
    if has_func("umh_coredump_setup") && (has_func("pidfs_alloc_file") || anon) {
        let mut targets = vec![FnTarget {
            func: "umh_coredump_setup",
            params: p::UMH_COREDUMP_SETUP,
            // The exit first: an entry without its exit would leave a marker (and the gate) behind.
            fexit: &[("coredump_fexit", Fexit), ("coredump_fentry", Fentry)],
            kprobe: &[("coredump_kret", Kretprobe), ("coredump_kprobe", Kprobe)],
        }];
        if anon {
            targets.push(FnTarget {
                func: "anon_inode_getfile",
                params: p::ANON_INODE,
                fexit: &[("coredump_anon_fexit", Fexit)],
                kprobe: &[("coredump_anon_kret", Kretprobe), ("coredump_anon_kprobe", Kprobe)],
            });
        }
        hooks.push(FnHook {
            hook: "coredump_helper",
            targets,
            covers: &[EventKind::Coredump],
            fed_by: if anon { &[] } else { &["pidfd_creation"] },
        });
    }
    if let Some(release) = release_target(has_func) {
        hooks.push(FnHook { hook: RELEASE_HOOK, targets: vec![release], covers: &[], fed_by: &[] });
    }
    hooks
}

/// `Btf::has_func` name of the BPF helper the creation funnel needs (5.15+).
pub const HELPER_TASK_PT_REGS: &str = "helper:task_pt_regs";

/// The creation funnel's hook (scm_pidfd, fanotify): once attached the agent turns the
/// funnel on (`FUNNEL_ON`).
pub const FUNNEL_HOOK: &str = "pidfd_funnel";

/// The close-tracking hook's name in the plan and `pidfd_trace_probe_attached{hook}`.
pub const RELEASE_HOOK: &str = "pidfd_release";

/// The pidfd file's release on this kernel (README "Open pidfds: close tracking"): the pidfd
/// file operations' own `.release` where there is one (`pidfd_release` before 6.9,
/// `pidfs_file_release` from 7.1), else, with pidfs (6.9 – 7.0), every file's last close
/// `__fput`, filtered to pidfs files in the kernel program. `None` (no row in the plan) when
/// BTF has none of them.
fn release_target(has_func: &dyn Fn(&str) -> bool) -> Option<FnTarget> {
    use ProgKind::*;
    use fn_params as p;
    if has_func("pidfs_file_release") {
        Some(FnTarget {
            func: "pidfs_file_release",
            params: p::PIDFD_RELEASE,
            fexit: &[("pidfs_rel_fentry", Fentry)],
            kprobe: &[("pidfs_rel_kprobe", Kprobe)],
        })
    } else if has_func("pidfd_release") {
        Some(FnTarget {
            func: "pidfd_release",
            params: p::PIDFD_RELEASE,
            fexit: &[("pidfd_rel_fentry", Fentry)],
            kprobe: &[("pidfd_rel_kprobe", Kprobe)],
        })
    } else if has_func("pidfs_alloc_file") && has_func("__fput") {
        Some(FnTarget {
            func: "__fput",
            params: p::FPUT,
            fexit: &[("fput_fentry", Fentry)],
            kprobe: &[("fput_kprobe", Kprobe)],
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_row() {
        for &k in EventKind::ALL {
            assert_eq!(event(k).kind, k);
            assert_eq!(EventKind::try_from(k as u8), Ok(k));
        }
        assert_eq!(EventKind::try_from(0), Err(0));
        let names: std::collections::HashSet<&str> = events().map(EventHook::name).collect();
        assert_eq!(names.len(), EventKind::ALL.len(), "event names are unique");
    }

    /// The `// prototype: <function>/<nparams>: <C prototype> [<first>-<last>]` lines of the
    /// kernel programs: exactly one right above each program, and each count agrees with this
    /// table (function hooks: `params`; syscalls: at least the arguments the row reads).
    #[test]
    fn kernel_programs_carry_checked_prototypes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pidfd-trace-ebpf/src");
        let mut files = vec![root.clone()];
        let mut sources = Vec::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                sources.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
        let mut hooks = function_hooks(&|_| true);
        hooks.extend(function_hooks(&|_| false));
        // Each release target alone (the first one present wins).
        hooks.extend(function_hooks(&|f| f != "pidfs_file_release"));
        hooks.extend(function_hooks(&|f| f == "pidfs_alloc_file" || f == "__fput"));
        let fns: Vec<FnTarget> = hooks.into_iter().flat_map(|h| h.targets).collect();
        let mut syscalls_seen = std::collections::HashSet::new();
        let (mut programs, mut protos) = (0, 0);
        for (path, text) in &sources {
            let lines: Vec<&str> = text.lines().collect();
            protos += lines.iter().filter(|l| l.trim_start().starts_with("// prototype:")).count();
            for (i, l) in lines.iter().enumerate() {
                let attr =
                    ["#[tracepoint", "#[raw_tracepoint", "#[fentry", "#[fexit", "#[kprobe", "#[kretprobe"];
                if !attr.iter().any(|a| l.starts_with(a)) {
                    continue;
                }
                programs += 1;
                let mut j = i;
                while j > 0 && (lines[j - 1].starts_with("///") || lines[j - 1].starts_with("#[")) {
                    j -= 1;
                }
                let where_ = format!("{}:{}", path.display(), i + 1);
                let proto = lines[..j]
                    .last()
                    .and_then(|l| l.strip_prefix("// prototype: "))
                    .unwrap_or_else(|| panic!("{where_}: no `// prototype:` line above the program"));
                let (name, rest) = proto.split_once('/').expect("<function>/<nparams>");
                let (n, rest) = rest.split_once(": ").expect("<nparams>: <C prototype>");
                let n: usize = n.parse().expect("nparams is a number");
                assert!(rest.ends_with(']') && rest.contains(" ["), "{where_}: ends with [<first>-<last>]");
                if let Some(sys) = name.strip_prefix("syscall:") {
                    if sys == "*" {
                        continue;
                    }
                    let row = events()
                        .find(|r| r.tracepoint.syscalls.contains(&sys))
                        .unwrap_or_else(|| panic!("{where_}: {sys}"));
                    assert!(row.tracepoint.args.len() <= n, "{where_}: {sys} reads more than {n} arguments");
                    assert!(rest.contains(&format!("SYSCALL_DEFINE{n}({sys},")), "{where_}");
                    syscalls_seen.insert(sys.to_string());
                } else {
                    let t = fns.iter().find(|t| t.func == name).unwrap_or_else(|| panic!("{where_}: {name}"));
                    assert_eq!(t.params, n, "{where_}: hooks.rs says {name} has {} parameters", t.params);
                }
            }
        }
        assert!(programs > 0);
        assert_eq!(programs, protos, "one prototype line per program, no stray ones");
        for sys in events().flat_map(|r| r.tracepoint.syscalls) {
            assert!(syscalls_seen.contains(*sys), "no program carries syscall:{sys}");
        }
    }

    #[test]
    fn waitid_row() {
        use pidfd_trace_common::CounterKey;

        use crate::sink::outcomes::{Family, series};
        assert_eq!(
            crate::names::flag_names(EventKind::Waitid, 0x4000_0005),
            ["WNOHANG", "WEXITED", "__WALL"]
        );
        let key = |errno| CounterKey {
            kind: EventKind::Waitid as u8,
            hints: 0,
            signal: 0,
            xhints: 0,
            errno,
            flag_bits: 0,
        };
        let s = |o: &str| vec![(Family::Uses, vec!["waitid".to_string(), o.to_string()])];
        assert_eq!(series(&key(0), Default::default()), s("ok"));
        assert_eq!(series(&key(10), Default::default()), s("ECHILD"));
        assert!(crate::sink::outcomes::initial_series(Default::default()).contains(&s("ok")[0]));
    }

    #[test]
    fn creation_path_rows() {
        use pidfd_trace_common::{CounterKey, GETFD_COPIED_PIDFD};

        use crate::sink::outcomes::{Family, initial_series, series};
        let key = |kind: EventKind, errno, flag_bits| CounterKey {
            kind: kind as u8,
            hints: 0,
            signal: 0,
            xhints: 0,
            errno,
            flag_bits,
        };
        let created = |src: &str| (Family::Created, vec![src.to_string()]);
        let failed = |src: &str, stage: &str, errno: &str| {
            (Family::CreateFailures, vec![src.to_string(), stage.to_string(), errno.to_string()])
        };
        assert_eq!(series(&key(EventKind::SoPeerpidfd, 0, 0), Default::default()), [created("so_peerpidfd")]);
        assert_eq!(
            series(&key(EventKind::SoPeerpidfd, 14, 0), Default::default()),
            [failed("so_peerpidfd", "user_memory", "EFAULT")]
        );
        assert_eq!(
            series(&key(EventKind::PidfsHandle, 116, 0), Default::default()),
            [failed("pidfs_handle", "other", "ESTALE")]
        );
        // A pidfd_getfd is a getfd; a successful copy of a pidfd is a created pidfd too.
        let getfd = series(&key(EventKind::PidfdGetfd, 0, GETFD_COPIED_PIDFD), Default::default());
        assert_eq!(getfd, [(Family::Getfd, vec![]), created("pidfd_getfd")]);
        assert_eq!(series(&key(EventKind::PidfdGetfd, 0, 0), Default::default()), [(Family::Getfd, vec![])]);
        let init = initial_series(Default::default());
        for src in ["so_peerpidfd", "pidfs_handle", "reopen", "pidfd_getfd"] {
            assert!(init.contains(&created(src)), "{src} from zero");
        }
        for blind in ["scm_pidfd", "fanotify", "coredump"] {
            assert!(!init.contains(&created(blind)), "{blind}: nothing sees it, no series");
        }
        assert!(
            !init.iter().any(|(f, l)| *f == Family::CreateFailures && l[0] == "reopen"),
            "reopen: successes only"
        );
        // Rows and their tracepoints, as the plan and check show them.
        assert_eq!(
            event(EventKind::Reopen).tracepoint_target().as_deref(),
            Some("syscalls:sys_exit_openat + syscalls:sys_exit_openat2")
        );
        assert_eq!(
            event(EventKind::SoPeerpidfd).tracepoint_programs(),
            ["sys_enter_getsockopt", "sys_exit_getsockopt"]
        );
        for k in [EventKind::ScmPidfd, EventKind::Fanotify, EventKind::Coredump] {
            assert_eq!(event(k).tracepoint_target(), None);
            assert!(event(k).blind[0].starts_with(k.name()), "{}", k.name());
        }
        assert_eq!(crate::names::flag_names(EventKind::PidfsHandle, 0o2000000), ["O_CLOEXEC"]);
    }

    #[test]
    fn use_rows() {
        use crate::names::flag_names;
        assert_eq!(event(EventKind::PidfdIoctl).syscall(), "ioctl");
        assert_eq!(syscall_of("pidfd_ioctl"), "ioctl");
        assert_eq!(syscall_of("setns"), "setns");
        assert_eq!(syscall_of("copy_process"), "copy_process");
        assert_eq!(flag_names(EventKind::Setns, 0x0c00_0000), ["CLONE_NEWUTS", "CLONE_NEWIPC"]);
        assert_eq!(flag_names(EventKind::Setns, 0x80 | 1), ["CLONE_NEWTIME", "0x1"]);
        assert_eq!(flag_names(EventKind::ProcessMrelease, 1), ["0x1"]);
        assert_eq!(ioctl_name(0xff0a), "PIDFD_GET_UTS_NAMESPACE");
        assert_eq!(ioctl_name(0xff01), "PIDFD_GET_CGROUP_NAMESPACE");
        // PIDFD_GET_INFO carries the caller's struct size: 64 (6.13) and 88 (6.16+) bytes.
        assert_eq!(ioctl_name(0xc040_ff0b), "PIDFD_GET_INFO");
        assert_eq!(ioctl_name(0xc058_ff0b), "PIDFD_GET_INFO");
        assert_eq!(ioctl_name(0x8040_ff0b), "0x8040ff0b");
        assert_eq!(ioctl_name(0xff0c), "0xff0c");
        assert_eq!(advice_name(20), "MADV_COLD");
        assert_eq!(advice_name(21), "MADV_PAGEOUT");
        assert_eq!(advice_name(99), "99");
        let clone3 = cf::CLONE_PIDFD | cf::CLONE_AUTOREAP | cf::CLONE_NNP | cf::CLONE_PIDFD_AUTOKILL;
        assert_eq!(
            flag_names(EventKind::Clone3, clone3),
            ["CLONE_PIDFD", "CLONE_AUTOREAP", "CLONE_NNP", "CLONE_PIDFD_AUTOKILL"]
        );
        assert_eq!(flag_names(EventKind::Clone3, 1 << 37), ["0x2000000000"]);
    }

    /// The creation funnel per kernel shape (fprobe/funnel.rs): pidfs kernels feed it from
    /// the pidfd_creation hook's programs, anon-inode kernels through its own, and a kernel
    /// without bpf_task_pt_regs (5.10) has no funnel; the coredump helper needs pidfs.
    #[test]
    fn funnel_hooks_per_kernel() {
        let hooks = |fs: &'static [&'static str]| -> Vec<(&'static str, Vec<&'static str>)> {
            function_hooks(&|f| fs.contains(&f))
                .into_iter()
                .map(|h| (h.hook, h.targets.iter().map(|t| t.func).collect()))
                .collect()
        };
        let funnel = |hs: &[(&str, Vec<&'static str>)]| {
            hs.iter().find(|(h, _)| *h == FUNNEL_HOOK).map(|h| h.1.clone())
        };
        let k618 = hooks(&[
            "pidfs_alloc_file",
            "fd_install",
            "put_unused_fd",
            HELPER_TASK_PT_REGS,
            "umh_coredump_setup",
        ]);
        assert_eq!(funnel(&k618), Some(vec!["fd_install", "put_unused_fd"]));
        assert!(k618.contains(&("coredump_helper", vec!["umh_coredump_setup"])));
        let k61 = hooks(&[
            "anon_inode_getfile",
            "anon_inode_getfd",
            "fd_install",
            "put_unused_fd",
            HELPER_TASK_PT_REGS,
            "umh_coredump_setup",
        ]);
        assert_eq!(
            funnel(&k61),
            Some(vec!["fd_install", "put_unused_fd", "anon_inode_getfile", "anon_inode_getfd"])
        );
        assert!(
            k61.contains(&("coredump_helper", vec!["umh_coredump_setup", "anon_inode_getfile"])),
            "stable backports of the coredump pidfd use anon inodes"
        );
        // 5.10: no bpf_task_pt_regs: on x86_64 the funnel reads the stack's saved registers.
        let k510 = hooks(&["anon_inode_getfile", "anon_inode_getfd", "fd_install", "put_unused_fd"]);
        let stack_progs = function_hooks(&|f| {
            ["anon_inode_getfile", "anon_inode_getfd", "fd_install", "put_unused_fd"].contains(&f)
        })
        .into_iter()
        .flat_map(|h| h.targets)
        .flat_map(|t| t.fexit.iter().chain(t.kprobe).map(|p| p.0))
        .filter(|n| n.ends_with("_stack"))
        .count();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                funnel(&k510),
                Some(vec!["fd_install", "put_unused_fd", "anon_inode_getfile", "anon_inode_getfd"])
            );
            assert_eq!(stack_progs, 4);
        } else {
            assert_eq!(funnel(&k510), None);
        }
        assert!(!k510.iter().any(|(h, _)| *h == "coredump_helper"), "no umh_coredump_setup");
        let covers = |k| {
            function_hooks(&|_| true)
                .into_iter()
                .filter(|h| h.covers.contains(&k))
                .map(|h| h.hook)
                .collect::<Vec<_>>()
        };
        assert_eq!(covers(EventKind::ScmPidfd), [FUNNEL_HOOK]);
        assert_eq!(covers(EventKind::Fanotify), [FUNNEL_HOOK]);
        assert_eq!(covers(EventKind::Coredump), ["coredump_helper"]);
    }

    #[test]
    fn release_target_per_kernel() {
        let target = |fs: &'static [&'static str]| {
            function_hooks(&|f| fs.contains(&f))
                .into_iter()
                .find(|h| h.hook == RELEASE_HOOK)
                .map(|h| h.targets[0].func)
        };
        // 5.10 / 6.1: the pidfd fops' own release.
        assert_eq!(target(&["anon_inode_getfile", "pidfd_release", "__fput"]), Some("pidfd_release"));
        // 6.12 – 7.0: pidfs without a release: every file's last close, filtered.
        assert_eq!(target(&["pidfs_alloc_file", "__fput"]), Some("__fput"));
        // 7.1+: pidfs_file_release.
        assert_eq!(target(&["pidfs_alloc_file", "pidfs_file_release", "__fput"]), Some("pidfs_file_release"));
        // Nothing to hook: no row (check says closes are not traced).
        assert_eq!(target(&["pidfs_alloc_file"]), None);
    }

    #[test]
    fn prototype_checks() {
        let btf = |f: &str| match f {
            "copy_process" => Some(4),
            "cgroup_can_fork" => Some(3),
            _ => None,
        };
        let got = check_prototypes(&|f| f == "pidfs_alloc_file", &btf);
        let summary: Vec<(&str, usize, Option<usize>, bool)> =
            got.iter().map(|c| (c.function, c.expected_params, c.btf_params, c.ok)).collect();
        assert_eq!(
            summary,
            [
                ("copy_process", 4, Some(4), true),
                ("pidfs_alloc_file", 2, None, false),
                ("cgroup_can_fork", 2, Some(3), false)
            ]
        );
    }
}

//! Records, map keys and constants shared by the kernel programs and the agent.
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel writes these bytes and the
//! agent reads them back, so a layout change on one side must happen on both at once. Kernel
//! programs only gather facts (raw flags, return values, which hook saw what); naming,
//! classification and formatting live in the agent.
#![no_std]

/// clone(2) flags the programs look at (include/uapi/linux/sched.h).
pub mod clone_flags {
    pub const CSIGNAL: u64 = 0x0000_00ff;
    pub const CLONE_VM: u64 = 0x0000_0100;
    pub const CLONE_FS: u64 = 0x0000_0200;
    pub const CLONE_FILES: u64 = 0x0000_0400;
    pub const CLONE_SIGHAND: u64 = 0x0000_0800;
    pub const CLONE_PIDFD: u64 = 0x0000_1000;
    pub const CLONE_PTRACE: u64 = 0x0000_2000;
    pub const CLONE_VFORK: u64 = 0x0000_4000;
    pub const CLONE_PARENT: u64 = 0x0000_8000;
    pub const CLONE_THREAD: u64 = 0x0001_0000;
    pub const CLONE_NEWNS: u64 = 0x0002_0000;
    pub const CLONE_SYSVSEM: u64 = 0x0004_0000;
    pub const CLONE_SETTLS: u64 = 0x0008_0000;
    pub const CLONE_PARENT_SETTID: u64 = 0x0010_0000;
    pub const CLONE_CHILD_CLEARTID: u64 = 0x0020_0000;
    pub const CLONE_DETACHED: u64 = 0x0040_0000;
    pub const CLONE_UNTRACED: u64 = 0x0080_0000;
    pub const CLONE_CHILD_SETTID: u64 = 0x0100_0000;
    pub const CLONE_NEWCGROUP: u64 = 0x0200_0000;
    pub const CLONE_NEWUTS: u64 = 0x0400_0000;
    pub const CLONE_NEWIPC: u64 = 0x0800_0000;
    pub const CLONE_NEWUSER: u64 = 0x1000_0000;
    pub const CLONE_NEWPID: u64 = 0x2000_0000;
    pub const CLONE_NEWNET: u64 = 0x4000_0000;
    pub const CLONE_IO: u64 = 0x8000_0000;
    pub const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
    pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    /// Linux 7.1+: the child is reaped by the kernel when it exits (no exit signal, no wait).
    pub const CLONE_AUTOREAP: u64 = 1 << 34;
    /// Linux 7.1+: the child starts with no_new_privs set.
    pub const CLONE_NNP: u64 = 1 << 35;
    /// Linux 7.1+: closing the pidfd clone3 returned sends the child SIGKILL.
    pub const CLONE_PIDFD_AUTOKILL: u64 = 1 << 36;

    /// The flags whose combination with CLONE_PIDFD the kernel may refuse with EINVAL.
    /// Counter keys keep only these bits so their cardinality stays bounded.
    pub const PIDFD_CONFLICTS: u64 = CLONE_DETACHED | CLONE_THREAD | CLONE_PARENT_SETTID;
}

/// Declares `EventKind` from one list: its discriminants, its contract names (the JSON
/// `event` field, docs/events.md) and every conversion, so none is kept by hand.
macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident = $value:literal => $name:literal,)+) => {
        /// What a record or counter describes. Values are stable: they appear in map keys.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $($(#[$doc])* $variant = $value,)+
        }

        impl EventKind {
            /// Every kind, in discriminant order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)+];

            /// The `event` value of the JSON contract (docs/events.md).
            pub const fn name(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)+
                }
            }
        }

        impl TryFrom<u8> for EventKind {
            /// The unknown value.
            type Error = u8;

            fn try_from(v: u8) -> Result<Self, u8> {
                match v {
                    $($value => Ok(EventKind::$variant),)+
                    other => Err(other),
                }
            }
        }
    };
}

event_kinds! {
    /// clone(2) with CLONE_PIDFD.
    Clone = 1 => "clone",
    /// clone3(2) with CLONE_PIDFD.
    Clone3 = 2 => "clone3",
    /// pidfd_open(2).
    PidfdOpen = 3 => "pidfd_open",
    /// pidfd_getfd(2).
    PidfdGetfd = 4 => "pidfd_getfd",
    /// pidfd_send_signal(2).
    PidfdSendSignal = 5 => "pidfd_send_signal",
    /// waitid(2) with P_PIDFD.
    Waitid = 6 => "waitid",
    // Creation paths other than clone and pidfd_open (issue 11). Values from 20 so that the
    // uses added beside them (7 upwards) never take the same number.
    /// getsockopt(SOL_SOCKET, SO_PEERPIDFD) on a connected unix socket (6.5+).
    SoPeerpidfd = 20 => "so_peerpidfd",
    /// recvmsg(2) delivering an SCM_PIDFD control message (SO_PASSPIDFD, 6.5+).
    ScmPidfd = 21 => "scm_pidfd",
    /// open_by_handle_at(2) of a pidfs file handle.
    PidfsHandle = 22 => "pidfs_handle",
    /// read(2) of a fanotify group made with FAN_REPORT_PIDFD (5.15+).
    Fanotify = 23 => "fanotify",
    /// open(2)/openat(2) of a `/proc/<pid>/fd/<n>` link to a pidfd: a new pidfd.
    Reopen = 24 => "reopen",
    /// The pidfd the kernel gives a `core_pattern = |helper %F` coredump helper.
    Coredump = 25 => "coredump",
    /// setns(2) on a pidfd (a namespace fd is not recorded). (Uses 16..19, creation paths 20..25, then 26.)
    Setns = 16 => "setns",
    /// process_madvise(2).
    ProcessMadvise = 17 => "process_madvise",
    /// process_mrelease(2).
    ProcessMrelease = 18 => "process_mrelease",
    /// ioctl(2) on a pidfd with a pidfs command (PIDFD_GET_INFO, PIDFD_GET_*_NAMESPACE).
    PidfdIoctl = 19 => "pidfd_ioctl",
    /// Linux 7.1+: the SIGKILL the kernel sends when the last reference to a clone3
    /// `CLONE_PIDFD_AUTOKILL` pidfd is closed (`pidfs_file_release`), seen by function probes
    /// only: no syscall carries it.
    PidfdAutokill = 26 => "pidfd_autokill",
}

/// How an event was observed, and how a hook is attached (the agent's attach plan).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Syscall tracepoints (every kernel with tracefs).
    Tracepoint = 1,
    /// kprobes/kretprobes on kernel functions.
    Kprobe = 2,
    /// fentry/fexit programs on kernel functions (`--mode fentry`).
    Fexit = 3,
}

impl Mode {
    /// The contract name: JSON `mode`, the plan's and `pidfd_trace_probe_attached`'s `mode`.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Tracepoint => "tracepoint",
            Mode::Kprobe => "kprobe",
            Mode::Fexit => "fexit",
        }
    }

    /// The mode with discriminant `v`, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Tracepoint),
            2 => Some(Self::Kprobe),
            3 => Some(Self::Fexit),
            _ => None,
        }
    }
}

/// Facts a program saw besides the return value; bits of `EventRecord::hints` and
/// `CounterKey::hints`. The agent turns them into a failure stage.
pub mod hints {
    /// clone3: `struct clone_args` could not be read from user memory at syscall entry.
    pub const UARGS_FAULT: u8 = 1 << 0;
    /// The new pidfd number could not be read back from user memory at exit.
    pub const PIDFD_READBACK_FAULT: u8 = 1 << 1;
    /// The caller's pids cgroup was at its limit when the call failed with EAGAIN.
    pub const PIDS_AT_LIMIT: u8 = 1 << 2;
    /// A function probe saw copy_process run for this clone (function-probe modes).
    pub const COPY_PROCESS: u8 = 1 << 3;
    /// The pidfd's file was created (pidfs_alloc_file / anon_inode_getfile("[pidfd]") ...).
    pub const PIDFD_CREATED: u8 = 1 << 4;
    /// Creating the pidfd's file failed.
    pub const PIDFD_CREATE_FAILED: u8 = 1 << 5;
    /// cgroup_can_fork refused the new task.
    pub const CGROUP_FORK_FAILED: u8 = 1 << 6;
    /// kprobe mode, internal: anon_inode_get{file,fd}("[pidfd]") entered, return pending.
    /// Cleared before anything is counted or sent.
    pub const ANON_PENDING: u8 = 1 << 7;
}

/// More facts, bits of `EventRecord::xhints` and `CounterKey::xhints` (issue kernel-truth).
pub mod xhints {
    /// The call came through the 32-bit (ia32) syscall entry: the JSON `compat`.
    pub const COMPAT: u8 = 1 << 0;
    /// The syscall exit fired without its entry: seccomp or a tracer refused the call
    /// before the syscall ran (stage `denied`). The arguments are unknown.
    pub const DENIED: u8 = 1 << 1;
    /// The arguments themselves were refused before anything was allocated (stage `args`):
    /// pidfd_open's pid <= 0; clone3's struct clone_args or set_tid unreadable.
    pub const ARGS: u8 = 1 << 2;
    /// task:task_newtask fired for this clone: the child exists, its host pid and the
    /// flags the kernel acted on are in the record.
    pub const NEWTASK: u8 = 1 << 3;
    /// The kernel checked the used fd (pidfd or /proc/<pid> directory): `target_pid` 0 then
    /// means "not a process fd", not "unknown".
    pub const TARGET_CHECKED: u8 = 1 << 4;
    /// clone succeeded but no pidfd for the child was found in the caller's fd table (it was
    /// closed by another thread, or lies beyond the scanned range): `pidfd` is null.
    pub const PIDFD_NOT_FOUND: u8 = 1 << 5;
    /// The pidfd number in user memory was not the fd the kernel installed (overwritten
    /// between the kernel's write and the syscall's return).
    pub const PIDFD_SLOT_FORGED: u8 = 1 << 6;
}

/// One record in the `EVENTS` ring buffer, written at syscall exit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventRecord {
    /// CLOCK_BOOTTIME at exit, nanoseconds.
    pub ts_ns: u64,
    /// Exit minus entry, nanoseconds.
    pub duration_ns: u64,
    /// Per-CPU record sequence (the `STATS[RECORDS]` slot of `cpu` after this record counted
    /// itself); a gap on one CPU means a record was lost.
    pub cpu_seq: u64,
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    /// clone/clone3 flags, or the syscall's own `flags` argument.
    pub flags: u64,
    /// The syscall's raw return value.
    pub ret: i64,
    /// pidfd_open: pid; pidfd_getfd / pidfd_send_signal: the pidfd used; clone/clone3: how
    /// long copy_process ran (ns) when a function probe saw it, else 0; the uses (waitid,
    /// setns, process_madvise, process_mrelease, pidfd_ioctl): the pidfd used.
    pub arg0: u64,
    /// pidfd_getfd: the target fd; pidfd_send_signal: the signal; process_madvise: the
    /// advice; pidfd_ioctl: the ioctl command.
    pub arg1: u64,
    /// clone/clone3: the user pointer the pidfd number is written to.
    pub uptr: u64,
    /// The new pidfd read back from user memory, or -1.
    pub pidfd: i32,
    pub cpu: u32,
    pub kind: u8,
    pub mode: u8,
    pub hints: u8,
    pub _pad: u8,
    /// pidfd_getfd / pidfd_send_signal: the pid (initial namespace) the pidfd refers to,
    /// read from the caller's fd table at entry; pidfd_open: the pid behind the pidfd the
    /// kernel installed, read at exit; 0 when unknown.
    pub target_pid: i32,
    /// The process's name (thread-group leader's comm); the calling thread's when the
    /// leader could not be read.
    pub comm: [u8; 16],
    /// The caller's real uid (initial user namespace) at exit, from
    /// `bpf_get_current_uid_gid`.
    pub uid: u32,
    pub _pad2: u32,
    /// pidfd_getfd / pidfd_send_signal: what the kernel saw of the target at syscall entry
    /// (risk.rs); all zero for other kinds.
    pub facts: TargetFacts,
    /// pidfd_getfd: the taken file's path as dentry names, read at syscall exit.
    pub path: PathParts,
    /// The calling thread's name.
    pub thread_comm: [u8; 16],
    /// clone/clone3: the child's pid in the initial namespace (task:task_newtask); 0 unknown.
    pub child_pid: i32,
    /// The caller's process id in its own pid namespace; 0 when that namespace is the
    /// initial one (or unknown).
    pub ns_pid: i32,
    /// clone/clone3: the child's pid in the caller's namespace (the return value);
    /// pidfd_open / pidfd_send_signal / pidfd_getfd / waitid: the target's pid in the
    /// caller's namespace; 0 when the caller is in the initial namespace or unknown.
    pub ns_other: i32,
    /// `xhints` bits.
    pub xhints: u8,
    pub _pad3: [u8; 3],
    /// The name of the caller's cgroup2 directory (its kernfs node), read while the caller
    /// was in the kernel: it names the container (`docker-<id>.scope`) even when the cgroup
    /// is gone by the time the agent looks. NUL-terminated, truncated to fit; empty if unknown.
    pub cgroup_name: [u8; CGROUP_NAME_BYTES],
}

/// Path components per record (`PathParts`), and the bytes kept of each.
pub const PATH_PARTS: usize = 8;
pub const PATH_PART_BYTES: usize = 32;

/// A file's path as the kernel program read it: dentry names from the file up (crossing
/// mount points), at most `PATH_PARTS` of them, each NUL-terminated and cut at
/// `PATH_PART_BYTES - 1` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathParts {
    /// Components filled in `names` (names[0] is the file's own name).
    pub depth: u8,
    /// Bit i: names[i] may have been cut.
    pub cut: u8,
    /// 1 when the walk stopped before reaching the root (more than `PATH_PARTS` components).
    pub more: u8,
    /// 1 when the fd no longer held the file taken at syscall entry (other inode number or
    /// device), in the caller's new fd and in the target's table: no names were read.
    pub changed: u8,
    pub _pad: [u8; 4],
    pub names: [[u8; PATH_PART_BYTES]; PATH_PARTS],
}

impl Default for PathParts {
    fn default() -> Self {
        Self {
            depth: 0,
            cut: 0,
            more: 0,
            changed: 0,
            _pad: [0; 4],
            names: [[0; PATH_PART_BYTES]; PATH_PARTS],
        }
    }
}

/// Room for a cgroup directory name in a record: `cri-containerd-<64 hex>.scope` is 85
/// bytes, kubelet's `kubepods-…-pod<uid>.slice:cri-containerd:<id>` about 120.
pub const CGROUP_NAME_BYTES: usize = 128;

/// Per-thread state kept between syscall entry and exit (task-local storage or the
/// `ENTER_STATE` hash: pidfd-trace-ebpf/src/state.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnterState {
    pub ts_ns: u64,
    pub flags: u64,
    pub arg0: u64,
    pub arg1: u64,
    pub uptr: u64,
    pub kind: u8,
    pub hints: u8,
    /// `Mode` of the richest hook that saw this call (function probes upgrade it).
    pub mode: u8,
    /// In task-local storage: 1 while this is a call's state between its entry and exit, 0
    /// once its exit took it (the slot stays); 2 in the `ENTER_STATE` hash when task storage
    /// could not take it (pidfd-trace-ebpf/src/state.rs). Unused (0) in the hash store.
    pub live: u8,
    pub target_pid: i32,
    /// pidfd_getfd / pidfd_send_signal: the target facts gathered at entry.
    pub facts: TargetFacts,
    /// clone/clone3: the flags the kernel acted on (task:task_newtask), else 0.
    pub kflags: u64,
    /// clone3: the `struct clone_args` user pointer and the size argument.
    pub uargs: u64,
    pub usize: u64,
    /// clone/clone3: the child's host pid (task:task_newtask), else 0.
    pub child_pid: i32,
    /// The target's pid in the caller's namespace (see `EventRecord::ns_other`).
    pub ns_other: i32,
    /// `xhints` bits gathered so far.
    pub xhints: u8,
    /// The caller's pid namespace level, read once at entry (`CALLER_NS_UNREAD`: not read;
    /// the exit reads it). A thread's pid namespace does not change while it is in a syscall.
    pub caller_level: u8,
    pub _pad2: u16,
    /// The caller's pid in its own namespace when `caller_level` > 0 (the record's `ns_pid`).
    pub caller_ns_pid: i32,
}

/// `EnterState::caller_level` of a state whose entry did not read the caller's namespace.
pub const CALLER_NS_UNREAD: u8 = 0xff;

/// Bits of `TargetFacts::risk`: what the kernel program concluded about the target of a
/// pidfd_getfd / pidfd_send_signal at syscall entry (README "Risky pidfd use").
pub mod risk {
    /// The target process is exiting: its signal group is exiting (SIGNAL_GROUP_EXIT), or its
    /// only thread is at its PTRACE_EVENT_EXIT stop, past PF_EXITING, without mm, or a zombie.
    pub const TARGET_EXITING: u8 = 1 << 0;
    /// The target's uid, euid, suid or fsuid differs from the caller's real uid.
    pub const CRED_MISMATCH: u8 = 1 << 1;
    /// Caller and target are in different cgroups (cgroup2 ids). A fact, not a reason.
    pub const CGROUP_DIFFERS: u8 = 1 << 2;
    /// The target runs with elevated credentials: euid or suid differs from its uid.
    pub const TARGET_ELEVATED: u8 = 1 << 3;
    /// pidfd_getfd: the taken file has no links left (`i_nlink == 0`): deleted, or never linked.
    pub const FILE_DELETED: u8 = 1 << 5;
    /// Caller and target are in two different containers, decided in the kernel at the call:
    /// the nearest container-scope ancestor cgroup of each (`TargetFacts::caller_container`,
    /// `target_container`) differs and at least one of them is a container.
    pub const CROSS_CONTAINER: u8 = 1 << 4;
    /// The bits the `RISKY` counter is kept for.
    pub const COUNTED: u8 = TARGET_EXITING | CRED_MISMATCH | CROSS_CONTAINER;

    /// The `RISKY` slot of a set of counted bits: bit 0 `TARGET_EXITING`, bit 1
    /// `CRED_MISMATCH`, bit 2 `CROSS_CONTAINER`; 0 is "not risky" and never bumped.
    pub const fn slot(bits: u8) -> u32 {
        ((bits & (TARGET_EXITING | CRED_MISMATCH)) | ((bits & CROSS_CONTAINER) >> 2)) as u32
    }
    /// Number of `RISKY` slots: every set of the three counted reasons.
    pub const SLOTS: u32 = 8;
    /// The pidfd was resolved to a live `task_struct`: the target facts are valid.
    pub const TARGET_SEEN: u8 = 1 << 6;
    /// pidfd_getfd: the target's file at `targetfd` was found: the file facts are valid.
    pub const FILE_SEEN: u8 = 1 << 7;
}

/// Bits of `TargetFacts::exit`: the raw exit state of the target, as the kernel had it.
pub mod exit_facts {
    /// `signal->flags & SIGNAL_GROUP_EXIT` (exit_group(), a fatal signal, a core dump).
    pub const GROUP_EXIT: u8 = 1 << 0;
    /// `task->flags & PF_EXITING` (set in do_exit by exit_signals()).
    pub const PF_EXITING: u8 = 1 << 1;
    /// `task->mm == NULL` in a user task (exit_mm() has run).
    pub const NO_MM: u8 = 1 << 2;
    /// `task->exit_state != 0` (zombie or dead).
    pub const ZOMBIE: u8 = 1 << 3;
    /// `signal->nr_threads <= 1`: the task is the process's only thread.
    pub const SOLE_THREAD: u8 = 1 << 4;
    /// Stopped at its `PTRACE_EVENT_EXIT` stop (`last_siginfo->si_code` is
    /// `SIGTRAP | PTRACE_EVENT_EXIT << 8`): do_exit() has begun, nothing else shows it yet
    /// on 5.10 when a single-threaded process called exit_group().
    pub const EXIT_STOP: u8 = 1 << 5;
    /// A new pidfd's process had already been reaped when the pidfd was made
    /// (`pid->tasks[PIDTYPE_PID]` empty): its pid number may belong to another process now.
    pub const REAPED: u8 = 1 << 6;
}

/// What the kernel saw of a pidfd's target (and, for pidfd_getfd, of the file taken) at
/// syscall entry, while the caller's pidfd pinned the target. Raw facts: the agent names
/// them. Zero when not gathered. For the creation paths (so_peerpidfd, pidfs_handle, reopen,
/// pidfd_open) only `file_ino`, `file_magic` (of the new pidfd's inode) and
/// `exit_facts::REAPED` are filled, at syscall exit from the installed file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetFacts {
    /// The target's cgroup2 id (`task->cgroups->dfl_cgrp->kn->id`).
    pub target_cgroup_id: u64,
    /// The taken file's inode number.
    pub file_ino: u64,
    /// The taken file's `i_sb->s_dev` (kernel encoding: major << 20 | minor).
    pub file_dev: u32,
    /// The taken file's `i_sb->s_magic` (low 32 bits).
    pub file_magic: u32,
    /// The target's `real_cred` ids (kuid values, initial user namespace).
    pub target_uid: u32,
    pub target_euid: u32,
    pub target_suid: u32,
    pub target_fsuid: u32,
    /// The caller's real uid (`current->cred->uid`).
    pub caller_uid: u32,
    /// The taken file's `i_mode`.
    pub file_mode: u16,
    /// `risk::*` bits.
    pub risk: u8,
    /// `exit_facts::*` bits.
    pub exit: u8,
    /// The taken file's dentry name (NUL-terminated, truncated): `memfd:<name>`, `[pidfd]`, ...
    pub file_name: [u8; 32],
    /// The kernfs node id of the caller's nearest container-scope cgroup (its own cgroup2
    /// directory or an ancestor, README "Risky pidfd use"); 0 when not in a container.
    pub caller_container: u64,
    /// The same for the target.
    pub target_container: u64,
}

impl TargetFacts {
    pub const ZERO: TargetFacts = TargetFacts {
        target_cgroup_id: 0,
        file_ino: 0,
        file_dev: 0,
        file_magic: 0,
        target_uid: 0,
        target_euid: 0,
        target_suid: 0,
        target_fsuid: 0,
        caller_uid: 0,
        file_mode: 0,
        risk: 0,
        exit: 0,
        file_name: [0; 32],
        caller_container: 0,
        target_container: 0,
    };
}

/// Offsets (from BTF) for the target facts: struct pid → task, the task's exit state,
/// credentials and cgroup, and the taken file's inode, superblock and name. The fd-table
/// walk itself uses `FdPidOffsets`. `valid == 0` disables the whole gathering.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RiskOffsets {
    /// `pid.tasks` (hlist_head array; `[PIDTYPE_PID]`, index 0, is read).
    pub pid_tasks: u32,
    /// `task_struct.pid_links` (hlist_node array; the list links `[PIDTYPE_PID]`).
    pub task_pid_links: u32,
    pub task_flags: u32,
    pub task_exit_state: u32,
    pub task_mm: u32,
    pub task_signal: u32,
    pub signal_flags: u32,
    pub signal_nr_threads: u32,
    pub task_real_cred: u32,
    pub task_cred: u32,
    pub cred_uid: u32,
    pub cred_euid: u32,
    pub cred_suid: u32,
    pub cred_fsuid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `file.f_path.dentry`.
    pub file_dentry: u32,
    /// `dentry.d_name.name`.
    pub dentry_name: u32,
    pub inode_i_mode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub sb_s_magic: u32,
    pub sb_s_dev: u32,
    /// `file.f_path.mnt`, `dentry.d_parent`, and in `struct mount`: `mnt` (the embedded
    /// vfsmount), `mnt_parent`, `mnt_mountpoint`.
    pub file_mnt: u32,
    pub dentry_parent: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    /// `struct mount`'s `mnt.mnt_root`: the dentry a mount shows at its mount point (a bind
    /// mount of a subdirectory shows that subdirectory, not its filesystem's root).
    pub mount_mnt_root: u32,
    /// `task_struct.last_siginfo` and `kernel_siginfo.si_code`.
    pub task_last_siginfo: u32,
    pub siginfo_code: u32,
    /// `kernfs_node.parent` (`__parent` since 6.15) and `kernfs_node.name`: the cgroup
    /// ancestry walk that decides `cross_container`.
    pub kn_parent: u32,
    pub kn_name: u32,
    /// `inode.i_nlink` (`file_deleted`).
    pub inode_i_nlink: u32,
    pub valid: u32,
}

/// Key of the `OUTCOMES` per-CPU counter map: one slot per distinct outcome. Every field has
/// a small, bounded range so the map cannot grow without limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub kind: u8,
    pub hints: u8,
    /// pidfd_send_signal's signal (0..=64, anything larger is clamped to 255).
    pub signal: u8,
    /// `xhints` bits that change how the outcome is named (COMPAT, DENIED, ARGS).
    pub xhints: u8,
    /// Positive errno of a failure; 0 on success.
    pub errno: u32,
    /// `flags & clone_flags::PIDFD_CONFLICTS` for clone/clone3; for pidfd_getfd
    /// `GETFD_COPIED_PIDFD` when the fd it installed is a pidfd; 0 otherwise.
    pub flag_bits: u32,
}

/// `CounterKey::flag_bits` of a successful pidfd_getfd whose new fd is a pidfd: counted as a
/// created pidfd too (`pidfd_trace_pidfds_created_total{source="pidfd_getfd"}`).
pub const GETFD_COPIED_PIDFD: u32 = 1;

/// Size of the outcome map; the agent reports a full map through `STAT_OUTCOMES_FULL`.
pub const OUTCOMES_MAX_ENTRIES: u32 = 4096;
/// Size of the per-thread entry map. LRU: a thread that never reaches exit cannot pin a slot.
pub const ENTER_STATE_MAX_ENTRIES: u32 = 16384;
/// Default ring-buffer size in bytes (a power of two, multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 22;

/// Parameter counts of the kernel functions the function probes attach to. An fexit program
/// finds the return value right after the last argument, so the agent refuses fexit on a
/// kernel whose BTF shows a different count.
pub mod fn_params {
    /// 5.10 – 7.1: copy_process(struct pid *, int trace, int node, struct kernel_clone_args *)
    pub const COPY_PROCESS: usize = 4;
    /// copy_process's `struct kernel_clone_args *` argument.
    pub const COPY_PROCESS_ARGS: usize = 3;
    /// 6.9+: pidfs_alloc_file(struct pid *, unsigned int flags)
    pub const PIDFS_ALLOC_FILE: usize = 2;
    /// anon_inode_getfile / anon_inode_getfd(const char *name, fops, priv, int flags)
    pub const ANON_INODE: usize = 4;
    /// 5.7+: cgroup_can_fork(struct task_struct *child, struct kernel_clone_args *kargs)
    pub const CGROUP_CAN_FORK: usize = 2;
    /// 7.1+: pidfs_file_release(struct inode *, struct file *)
    pub const PIDFS_FILE_RELEASE: usize = 2;
    /// do_send_sig_info(int sig, struct kernel_siginfo *info, struct task_struct *p, enum pid_type type)
    pub const DO_SEND_SIG_INFO: usize = 4;
    /// The pidfd file's own release (its last close): pidfd_release(struct inode *, struct
    /// file *) in kernel/fork.c before 6.9, pidfs_file_release(struct inode *, struct file *)
    /// in fs/pidfs.c from 7.1.
    pub const PIDFD_RELEASE: usize = 2;
    /// __fput(struct file *): every file's last close, the release hook of 6.9 – 7.0, where
    /// pidfs files have no release of their own.
    pub const FPUT: usize = 1;
    /// fd_install(unsigned int fd, struct file *file): where a prepared pidfd gets its number.
    pub const FD_INSTALL: usize = 2;
    /// put_unused_fd(unsigned int fd): a prepared fd given back unused (the path failed).
    pub const PUT_UNUSED_FD: usize = 1;
    /// umh_coredump_setup(struct subprocess_info *info, struct cred *new) (fs/coredump.c):
    /// sets up the `core_pattern = |helper` process, which gets the crashing process's pidfd
    /// at fd 3 (6.16+, `%F`).
    pub const UMH_COREDUMP_SETUP: usize = 2;
}

/// Pidfd close tracking (function-probe modes): slots of the `CLOSES` per-CPU array, and
/// the lifetime histogram's buckets. README "Metrics": `pidfd_trace_pidfds_closed_total`,
/// `pidfd_trace_pidfd_lifetime_seconds`.
pub mod closes {
    /// Pidfd files released (their last reference closed), every pidfd on the host.
    pub const CLOSED: u32 = 0;
    /// Of those, the ones whose creation a creation hook saw: they have a lifetime.
    pub const TIMED: u32 = 1;
    /// Sum of those lifetimes, nanoseconds.
    pub const SUM_NS: u32 = 2;
    /// Creations not remembered because the birth table (`PIDFD_BORN`) was full.
    pub const BORN_FULL: u32 = 3;
    /// First bucket slot: slot `BUCKET0 + i` counts lifetimes `<= BUCKETS_NS[i]` and greater
    /// than the bucket before (not cumulative); the slot after the last bound is +Inf.
    pub const BUCKET0: u32 = 4;
    /// Upper bounds of the lifetime buckets, nanoseconds: 1 ms, 10 ms, 100 ms, 1 s, 10 s,
    /// 1 min, 10 min, 1 h, 1 day (then +Inf).
    pub const BUCKETS_NS: [u64; 9] = [
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
        10_000_000_000,
        60_000_000_000,
        600_000_000_000,
        3_600_000_000_000,
        86_400_000_000_000,
    ];
    /// Slots of the array.
    pub const COUNT: u32 = BUCKET0 + BUCKETS_NS.len() as u32 + 1;
    /// Pidfd files whose creation time is remembered at once (struct file pointer → boot
    /// time ns): a full table is counted in `BORN_FULL`, those pidfds close without a
    /// lifetime. 32768 entries, about 2 MiB of kernel memory.
    pub const BORN_MAX_ENTRIES: u32 = 32768;
}

/// Slots of the `STATS` per-CPU array.
pub mod stats {
    /// Records attempted (reserved or lost); also the per-CPU sequence number.
    pub const RECORDS: u32 = 0;
    /// Ring-buffer reserve failures: records lost.
    pub const LOST: u32 = 1;
    /// Outcome counter could not be created because `OUTCOMES` was full.
    pub const OUTCOMES_FULL: u32 = 2;
    /// Entry state could not be stored (map update failed).
    pub const ENTER_FAILED: u32 = 3;
    /// clone3 whose `struct clone_args` could not be read at entry: flags unknown.
    pub const CLONE3_ARGS_UNREADABLE: u32 = 4;
    /// Never bumped: `RISKY` is an array indexed by the reason set and cannot fill. The slot
    /// stays reserved so `pidfd_trace_getfd_risky_map_full_total` keeps reading 0.
    pub const RISKY_FULL: u32 = 5;
    /// Function modes (6.9+): pidfds the kernel made and installed outside every path the
    /// agent can name (no traced syscall in progress, not a recvmsg SCM_PIDFD, a fanotify
    /// read or the coredump helper: io_uring, a future kernel path). Behind
    /// `pidfd_trace_pidfds_unattributed_total`.
    pub const FUNNEL_UNATTRIBUTED: u32 = 6;
    pub const COUNT: u32 = 8;
}

/// Tail programs of the syscall tracepoints (pidfd-trace-ebpf/src/tracepoint/mod.rs, clone.rs,
/// risk.rs): an exit program only bails, takes the entry state and picks the next step; the
/// record (in two variants: with the pidfd_getfd file path and without), each heavy clone step
/// (the fd-table scan for the installed pidfd, the pids cgroup walk, the saved registers of a
/// refused clone), the file-path walk and the container walk of pidfd_getfd /
/// pidfd_send_signal entries are each their own program, so every kernel's verifier checks
/// each once, alone (a walk inlined into its caller multiplied the paths the 5.10 and 6.1
/// verifiers explored past their 1M-instruction budget).
/// Slots of the `MAP` program array, and the programs the agent loads into them.
pub mod exit_tail {
    pub const MAP: &str = "EXIT_TAIL";
    /// The record and the outcome counter (emit::finish). Required.
    pub const EMIT: u32 = 0;
    /// The same, for records that may be a pidfd_getfd's: with the file path `PATH` left in
    /// the per-CPU path scratch. Required.
    pub const EMIT_PATH: u32 = 1;
    /// Finds the pidfd a clone's kernel installed in the caller's fd table.
    pub const SCAN: u32 = 2;
    /// Walks the caller's pids cgroups when a clone failed with EAGAIN.
    pub const PIDS: u32 = 3;
    /// A failed clone without entry state: refused before it ran (seccomp, a tracer).
    pub const DENIED: u32 = 4;
    /// At a pidfd_getfd / pidfd_send_signal entry whose target is in another cgroup: one
    /// cgroup2 directory level of the target's, then the caller's, container search per run,
    /// calling itself for the next level (at most 2 × 8 + 1 tail calls of the kernel's 33).
    pub const CONTAINER: u32 = 5;
    /// At a pidfd_getfd exit: the taken file's dentry names into the path scratch, then `EMIT_PATH`.
    pub const PATH: u32 = 6;
    pub const SLOTS: u32 = 7;
    pub const PROGRAMS: [(u32, &str); 7] = [
        (EMIT, "exit_tail_emit"),
        (EMIT_PATH, "exit_tail_emit_path"),
        (SCAN, "exit_tail_scan"),
        (PIDS, "exit_tail_pids"),
        (DENIED, "exit_tail_denied"),
        (CONTAINER, "enter_tail_container"),
        (PATH, "exit_tail_path"),
    ];
    /// Whether the agent can run without slot `idx` (reporting less) when a kernel refuses it.
    pub const fn optional(idx: u32) -> bool {
        idx >= SCAN
    }
}

/// Names of the globals the agent overrides at load time with offsets read from the running
/// kernel's tracepoint format files.
pub mod globals {
    pub const TP_ARG0: &str = "TP_ARG0_OFF";
    pub const TP_RET: &str = "TP_RET_OFF";
    pub const PIDS_LIMIT: &str = "PIDS_LIMIT_OFFSETS";
    pub const FD_PID: &str = "FD_PID_OFFSETS";
    pub const RISK: &str = "RISK_OFFSETS";
    pub const NEW_FD: &str = "NEW_FD_OFFSETS";
    /// Address of `pidfs_file_operations` (kallsyms; 0 when unknown): the `__fput` release
    /// hook recognises a pidfd's file by its `f_op`.
    pub const PIDFS_FOPS: &str = "PIDFS_FOPS";
    /// Offset of `file.f_op` (BTF).
    pub const FILE_F_OP: &str = "FILE_F_OP_OFF";
    pub const TRUTH: &str = "TRUTH_OFFSETS";
    /// The creation funnel's syscall table (`FunnelSyscalls`).
    pub const FUNNEL: &str = "FUNNEL_SYSCALLS";
    /// `u8`, 1: per-thread entry states in task-local storage (`TASK_STATE`), 0: in the
    /// `ENTER_STATE` hash (pidfd-trace-ebpf/src/state.rs).
    pub const STATE_IN_TASK: &str = "STATE_IN_TASK";
}

/// The kernel-program map of per-thread entry states in task-local storage.
pub const TASK_STATE_MAP: &str = "TASK_STATE";

/// Which syscall in progress names a pidfd the kernel made outside the traced syscalls (the
/// function-mode creation funnel, README "Every way a pidfd is born"): the syscall number is
/// read from the caller's saved registers (`bpf_task_pt_regs`, 5.15+) at `regs_nr` and
/// looked up in these lists (-1: unused slot). The agent fills them from its own
/// architecture's numbers; `valid == 0` attributes nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunnelSyscalls {
    /// Offset of the syscall number in `struct pt_regs` (x86_64 `orig_ax`, arm64 `syscallno`).
    pub regs_nr: u32,
    pub valid: u32,
    /// Native syscalls that receive an SCM_PIDFD control message (recvmsg, recvmmsg).
    pub scm: [i32; 4],
    /// Native syscalls that read a fanotify group (read, readv, pread64, preadv, preadv2).
    pub fanotify: [i32; 6],
    /// The same for x86 ia32 callers (`TS_COMPAT`): socketcall too.
    pub scm_compat: [i32; 4],
    pub fanotify_compat: [i32; 6],
}

impl FunnelSyscalls {
    pub const NONE: FunnelSyscalls = FunnelSyscalls {
        regs_nr: 0,
        valid: 0,
        scm: [-1; 4],
        fanotify: [-1; 6],
        scm_compat: [-1; 4],
        fanotify_compat: [-1; 6],
    };
}

/// Offsets (from BTF) behind the facts the caller cannot forge: whether a file is a pidfd or
/// a `/proc/<pid>` directory, pid namespaces, and the process name. `valid == 0` disables
/// them (the fields stay unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TruthOffsets {
    /// file.f_path.dentry
    pub file_dentry: u32,
    /// dentry.d_name.name
    pub dentry_name: u32,
    /// dentry.d_parent
    pub dentry_parent: u32,
    /// inode.i_sb, inode.i_mode
    pub inode_sb: u32,
    pub inode_mode: u32,
    /// super_block.s_magic, super_block.s_root
    pub sb_magic: u32,
    pub sb_root: u32,
    /// offsetof(proc_inode, pid) - offsetof(proc_inode, vfs_inode), as a signed number.
    pub proc_pid_from_inode: i32,
    /// pid.level, pid.numbers, sizeof(struct upid), upid.nr
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_nr: u32,
    /// task_struct.group_leader, task_struct.comm, task_struct.thread_pid
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub task_thread_pid: u32,
    /// x86: offset of `task_struct.thread_info.status` (TS_COMPAT lives there) and whether
    /// it is known (0 on other architectures: compat calls cannot be told apart).
    pub task_ti_status: u32,
    pub ti_status_valid: u32,
    /// task_struct.cgroups → css_set.dfl_cgrp → cgroup.kn → kernfs_node.name; 0 if unknown.
    pub cset_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kn_name: u32,
    pub kn_valid: u32,
    /// x86_64: the saved user registers, `task->stack + THREAD_SIZE - padding -
    /// sizeof(pt_regs)` (THREAD_SIZE 16 or 32 KiB, padding 0 or 16: not in BTF, so the
    /// programs try each and accept the one whose `orig_ax` is the syscall and `cs` the
    /// 64-bit user segment): offsets of task_struct.stack, sizeof(struct pt_regs),
    /// pt_regs.di, pt_regs.orig_ax and pt_regs.cs; `regs_valid` 0 elsewhere.
    pub task_stack: u32,
    pub regs_cs: u32,
    pub pt_regs_size: u32,
    pub regs_di: u32,
    pub regs_orig_ax: u32,
    pub regs_valid: u32,
    pub valid: u32,
}

/// Offsets (from the kernel's BTF) needed to read the caller's pids cgroup counter and limit:
/// task_struct.cgroups → css_set.subsys[pids_cgrp_id] → pids_cgroup.{counter,limit}.
/// `valid == 0` disables the read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidsLimitOffsets {
    pub task_cgroups: u32,
    pub css_set_subsys: u32,
    pub pids_cgrp_id: u32,
    pub pids_counter: u32,
    pub pids_limit: u32,
    /// cgroup_subsys_state.parent: the walk up to the ancestors, whose limits also apply.
    pub css_parent: u32,
    pub valid: u32,
}

/// Offsets (from BTF) to find the pid behind a pidfd in the caller's fd table:
/// task_struct.files → files_struct.fdt → fdtable.{fd,max_fds} → file, then the struct pid
/// in `file.private_data` (anon-inode pidfds, before 6.9) or `file.f_inode->i_private`
/// (pidfs, 6.9+), and `pid.numbers[0].nr`. `valid == 0` disables the walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdPidOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_private_data: u32,
    pub file_f_inode: u32,
    pub inode_i_private: u32,
    /// 1: the struct pid hangs off the inode (pidfs); 0: off `file.private_data`.
    pub via_inode: u32,
    pub pid_numbers_nr: u32,
    pub valid: u32,
}

/// Offsets (from BTF) for the hot openat exit's look at the fd it just installed
/// (`new_pidfd` in the kernel programs), kept apart from `FdPidOffsets` so that the programs
/// reading those do not copy these too. `valid == 0` disables the reopen path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewFdOffsets {
    /// `file.f_op`: every pidfd's file has the same operations (pidfs_file_operations, or
    /// pidfd_fops before 6.9), so the hot openat exit can turn other files away by it.
    pub file_f_op: u32,
    /// `file.f_mode`: an `O_PATH` open of a pidfd (`FMODE_PATH`) is a pidfs file the kernel
    /// refuses as a pidfd (its `f_op` is `empty_fops`).
    pub file_f_mode: u32,
    /// `files_struct.fdtab` and `files_struct.fd_array`: while `files->fdt` is the embedded
    /// `fdtab` (the table was never expanded past 64 fds), the fd array is `fd_array`, one
    /// read shorter.
    pub files_fdtab: u32,
    pub files_fd_array: u32,
    pub valid: u32,
}

#[cfg(feature = "user")]
impl serde::Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)] plain data with no padding the kernel leaves
    // uninitialised that we depend on, and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::EventRecord {}
    unsafe impl aya::Pod for super::EnterState {}
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::PidsLimitOffsets {}
    unsafe impl aya::Pod for super::FdPidOffsets {}
    unsafe impl aya::Pod for super::TruthOffsets {}
    unsafe impl aya::Pod for super::RiskOffsets {}
    unsafe impl aya::Pod for super::NewFdOffsets {}
    unsafe impl aya::Pod for super::FunnelSyscalls {}
}

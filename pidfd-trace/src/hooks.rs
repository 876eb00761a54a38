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

/// How a syscall is traced: its tracepoints `syscalls:sys_{enter,exit}_<name>`.
#[derive(Clone, Copy, Debug)]
pub struct Tracepoint {
    /// Argument names of `sys_enter_<name>` in order, as its tracefs format file lists them,
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
}

/// What the return value means on success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returns {
    /// The new child's pid (`child_pid`); the pidfd was written to user memory (`pidfd`).
    ChildPid,
    /// The new pidfd (`pidfd`).
    NewPidfd,
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
}

impl EventHook {
    /// The contract name: JSON `event`, metric `source`/`op`, attach-plan `hook`.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
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

const NO_FLAGS: FlagTable = FlagTable { names: &[], not_flags: 0 };

const CLONE: EventHook = EventHook {
    kind: EventKind::Clone,
    tracepoint: Tracepoint { args: &["clone_flags", "newsp", "parent_tidptr"] },
    flags: FlagTable { names: CLONE_FLAGS, not_flags: cf::CSIGNAL },
    arg0: Saved::CopyProcessNs,
    arg1: Saved::Unused,
    returns: Returns::ChildPid,
    stage: StageRule::Clone,
    feeds: Feeds::Creation,
};

const CLONE3: EventHook =
    EventHook { kind: EventKind::Clone3, tracepoint: Tracepoint { args: &["uargs", "size"] }, ..CLONE };

const PIDFD_OPEN: EventHook = EventHook {
    kind: EventKind::PidfdOpen,
    tracepoint: Tracepoint { args: &["pid", "flags"] },
    flags: FlagTable { names: PIDFD_OPEN_FLAGS, not_flags: 0 },
    arg0: Saved::Pid,
    arg1: Saved::Unused,
    returns: Returns::NewPidfd,
    stage: StageRule::PidfdOpen,
    feeds: Feeds::Creation,
};

const PIDFD_GETFD: EventHook = EventHook {
    kind: EventKind::PidfdGetfd,
    tracepoint: Tracepoint { args: &["pidfd", "fd", "flags"] },
    flags: NO_FLAGS,
    arg0: Saved::Pidfd,
    arg1: Saved::TargetFd,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Getfd,
};

const PIDFD_SEND_SIGNAL: EventHook = EventHook {
    kind: EventKind::PidfdSendSignal,
    tracepoint: Tracepoint { args: &["pidfd", "sig", "info", "flags"] },
    flags: FlagTable { names: SIGNAL_FLAGS, not_flags: 0 },
    arg0: Saved::Pidfd,
    arg1: Saved::Signal,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Signal,
};

/// waitid(P_PIDFD, pidfd, infop, options, ru): only P_PIDFD calls are recorded.
const WAITID: EventHook = EventHook {
    kind: EventKind::Waitid,
    tracepoint: Tracepoint { args: &["which", "upid", "infop", "options"] },
    flags: FlagTable { names: WAIT_OPTIONS, not_flags: 0 },
    arg0: Saved::Pidfd,
    arg1: Saved::Unused,
    returns: Returns::Other,
    stage: StageRule::None,
    feeds: Feeds::Use,
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
        },
        FnHook { hook: "pidfd_creation", targets: creation },
        FnHook {
            hook: "cgroup_can_fork",
            targets: vec![FnTarget {
                func: "cgroup_can_fork",
                params: p::CGROUP_CAN_FORK,
                fexit: &[("cgfork_fexit", Fexit)],
                kprobe: &[("cgfork_kret", Kretprobe)],
            }],
        },
    ];
    if let Some(release) = release_target(has_func) {
        hooks.push(FnHook { hook: RELEASE_HOOK, targets: vec![release] });
    }
    hooks
}

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
                let attr = ["#[tracepoint", "#[fentry", "#[fexit", "#[kprobe", "#[kretprobe"];
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
                    let row = events().find(|r| r.name() == sys).unwrap_or_else(|| panic!("{where_}: {sys}"));
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
        for row in events() {
            assert!(syscalls_seen.contains(row.name()), "no program carries syscall:{}", row.name());
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

//! The attach plan as data: for each hook, the modes we could use in order of preference, the
//! verdict on each and the one chosen. `check` prints it, `trace`/`serve` follow it.
use pidfd_trace_common::fn_params;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModeChoice {
    /// Best mode each hook supports on this kernel.
    Auto,
    /// fentry/fexit programs on kernel functions (needs BTF and a kernel that allows them).
    Fentry,
    /// kprobes/kretprobes on kernel functions.
    Kprobe,
    /// Syscall tracepoints: works wherever tracefs does.
    Tracepoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Fexit,
    Kprobe,
    Tracepoint,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Fexit => "fexit",
            AttachMode::Kprobe => "kprobe",
            AttachMode::Tracepoint => "tracepoint",
        }
    }
}

/// What the running kernel lets us load, probed once at start-up.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramSupport {
    /// `Ok(())` or why not, per mode.
    pub fentry: Result<(), String>,
    pub kprobe: Result<(), String>,
    pub tracepoint: Result<(), String>,
}

impl ProgramSupport {
    pub fn probe() -> Self {
        use aya::programs::ProgramType;
        let load = |t: ProgramType, what: &str| match aya::sys::is_program_supported(t) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{what} programs not supported by this kernel")),
            Err(e) => {
                let mut why = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    why = format!("{why}: {s}");
                    src = s.source();
                }
                Err(format!("{what}: load refused ({why}); lockdown or an LSM may forbid it"))
            }
        };
        let kprobe = if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
            load(ProgramType::KProbe, "kprobe")
        } else {
            Err("kernel built without kprobes (no kprobe PMU in /sys/bus/event_source/devices)".into())
        };
        Self {
            fentry: load(ProgramType::Tracing, "fentry"),
            kprobe,
            tracepoint: load(ProgramType::TracePoint, "tracepoint"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub mode: AttachMode,
    /// Why this mode was not used; `None` for the chosen one (and untried worse ones).
    /// Filled in before loading from BTF/kallsyms, and by the trial load.
    pub refused: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookPlan {
    pub hook: &'static str,
    /// Where it attaches in the chosen mode, e.g. `syscalls:sys_enter_clone + sys_exit_clone`.
    pub target: String,
    pub candidates: Vec<Candidate>,
    pub chosen: Option<AttachMode>,
}

/// The syscall hooks: tracepoints by nature, attached in every mode.
pub const SYSCALL_HOOKS: &[&str] = &["clone", "clone3", "pidfd_open", "pidfd_getfd", "pidfd_send_signal"];

/// Kinds of kernel program a function-probe mode needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgKind {
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
}

/// One kernel function a function hook attaches to, with its programs per mode.
#[derive(Clone, Debug)]
pub struct FnTarget {
    pub func: &'static str,
    /// Parameter count the fexit programs were written for.
    pub params: usize,
    pub fexit: &'static [(&'static str, ProgKind)],
    pub kprobe: &'static [(&'static str, ProgKind)],
}

/// A function hook: what it is for, and the kernel functions it needs.
#[derive(Clone, Debug)]
pub struct FnHook {
    pub hook: &'static str,
    pub targets: Vec<FnTarget>,
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
    vec![
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
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--mode {mode} is not possible here: {reason}")]
    ForcedModeUnavailable { mode: &'static str, reason: String },
}

/// What the kernel offers for function probes, read once at start-up.
pub struct FnFacts<'a> {
    pub support: &'a ProgramSupport,
    /// BTF: (has FUNC, parameter count) of a kernel function.
    pub btf_params: &'a dyn Fn(&str) -> Option<usize>,
    /// BTF: whether kernel_clone_args.flags is at offset 0, as copy_process probes assume.
    pub clone_args_flags_at_0: bool,
    pub kallsyms: &'a crate::symbols::Kallsyms,
}

impl FnFacts<'_> {
    /// Why `mode` cannot work for `hook` before trying to load anything; `None` if it may.
    pub fn refuse(&self, hook: &FnHook, mode: AttachMode) -> Option<String> {
        match mode {
            AttachMode::Fexit => {
                if let Err(e) = &self.support.fentry {
                    return Some(e.clone());
                }
                for t in &hook.targets {
                    match (self.btf_params)(t.func) {
                        None => return Some(format!("{} not in BTF (inlined or absent)", t.func)),
                        Some(n) if n != t.params => {
                            return Some(format!(
                                "{}: BTF shows {n} parameters, programs expect {}",
                                t.func, t.params
                            ));
                        }
                        Some(_) => {}
                    }
                }
                (hook.hook == "copy_process" && !self.clone_args_flags_at_0)
                    .then(|| "kernel_clone_args.flags is not at offset 0 (pre-5.3 copy_process?)".to_string())
            }
            AttachMode::Kprobe => {
                if let Err(e) = &self.support.kprobe {
                    return Some(e.clone());
                }
                hook.targets
                    .iter()
                    .find(|t| self.kallsyms.symbol(t.func).is_none())
                    .map(|t| format!("{} not in /proc/kallsyms", t.func))
            }
            AttachMode::Tracepoint => Some("not a tracepoint".into()),
        }
    }
}

/// The plan before anything is loaded: syscall hooks on tracepoints; for each function hook
/// the modes worth trying, best first. The loader fills in `chosen` by trial load.
pub fn build(
    choice: ModeChoice,
    support: &ProgramSupport,
    fns: &[FnHook],
    facts: &FnFacts<'_>,
) -> Result<Vec<HookPlan>, PlanError> {
    if let Err(reason) = &support.tracepoint {
        return Err(PlanError::ForcedModeUnavailable { mode: "tracepoint", reason: reason.clone() });
    }
    let mut plan: Vec<HookPlan> = SYSCALL_HOOKS
        .iter()
        .map(|hook| HookPlan {
            hook,
            target: format!("syscalls:sys_enter_{hook} + sys_exit_{hook}"),
            candidates: vec![Candidate { mode: AttachMode::Tracepoint, refused: None }],
            chosen: Some(AttachMode::Tracepoint),
        })
        .collect();
    let modes: &[AttachMode] = match choice {
        ModeChoice::Auto => &[AttachMode::Fexit, AttachMode::Kprobe],
        ModeChoice::Fentry => &[AttachMode::Fexit],
        ModeChoice::Kprobe => &[AttachMode::Kprobe],
        ModeChoice::Tracepoint => &[],
    };
    for f in fns {
        let candidates: Vec<Candidate> = if modes.is_empty() {
            vec![Candidate { mode: AttachMode::Fexit, refused: Some("--mode tracepoint".into()) }]
        } else {
            modes.iter().map(|&m| Candidate { mode: m, refused: facts.refuse(f, m) }).collect()
        };
        if choice != ModeChoice::Auto
            && choice != ModeChoice::Tracepoint
            && let Some(reason) = &candidates[0].refused
        {
            return Err(PlanError::ForcedModeUnavailable {
                mode: if choice == ModeChoice::Fentry { "fentry" } else { "kprobe" },
                reason: format!("{}: {reason}", f.hook),
            });
        }
        plan.push(HookPlan {
            hook: f.hook,
            target: f.targets.iter().map(|t| t.func).collect::<Vec<_>>().join(" + "),
            candidates,
            chosen: None,
        });
    }
    Ok(plan)
}

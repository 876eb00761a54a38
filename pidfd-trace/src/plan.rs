//! The attach plan as data: for each hook, the modes we could use in order of preference, the
//! verdict on each and the one chosen. `check` prints it, `trace`/`serve` follow it.
use serde::Serialize;

/// `--mode`: the attach mode the user asked for (docs/cli.md).
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

/// How a hook is attached: the same `Mode` the kernel records carry.
pub use pidfd_trace_common::Mode as AttachMode;

/// Why a mode cannot be used for a hook (or at all) on this kernel. Serialised as its message
/// (`check --output json`, `refused`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The kernel loads no program of this type.
    #[error("{what} programs not supported by this kernel")]
    Unsupported {
        /// `fentry`, `kprobe` or `tracepoint`.
        what: &'static str,
    },
    /// Loading a test program failed (lockdown, an LSM, a sysctl).
    #[error("{what}: load refused ({why}); lockdown or an LSM may forbid it")]
    LoadRefused {
        /// `fentry`, `kprobe` or `tracepoint`.
        what: &'static str,
        /// The kernel's answer, with its causes.
        why: String,
    },
    /// No kprobe PMU.
    #[error("kernel built without kprobes (no kprobe PMU in /sys/bus/event_source/devices)")]
    NoKprobes,
    /// The function is not in BTF (fexit needs its BTF id).
    #[error("{func} not in BTF (inlined or absent)")]
    NotInBtf {
        /// The kernel function.
        func: &'static str,
    },
    /// The function's parameter count differs from what the programs were written for.
    #[error("{func}: BTF shows {btf} parameters, programs expect {expected}")]
    Params {
        /// The kernel function.
        func: &'static str,
        /// Parameters in this kernel's BTF.
        btf: usize,
        /// Parameters the programs were written for.
        expected: usize,
    },
    /// copy_process probes read kernel_clone_args.flags at offset 0.
    #[error("kernel_clone_args.flags is not at offset 0 (pre-5.3 copy_process?)")]
    CloneArgsLayout,
    /// kprobes need the symbol.
    #[error("{func} not in /proc/kallsyms")]
    NotInKallsyms {
        /// The kernel function.
        func: &'static str,
    },
    /// Function hooks cannot be tracepoints.
    #[error("not a tracepoint")]
    NotATracepoint,
    /// A creation path no syscall tracepoint sees (a function hook may cover it: hooks.rs
    /// `FnHook::covers`).
    #[error("not visible to syscall tracepoints")]
    NotVisible,
    /// The user chose `--mode tracepoint`.
    #[error("--mode tracepoint")]
    TracepointOnly,
    /// The syscall's tracepoints are absent: this kernel predates the syscall.
    #[error("syscalls:sys_enter_{syscall} not in tracefs: this kernel has no {syscall}(2)")]
    NoSyscall {
        /// The syscall.
        syscall: &'static str,
    },
    /// The trial load or attach failed (first line of the kernel's or aya's message).
    #[error("{0}")]
    Trial(String),
}

impl Serialize for Refusal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What the running kernel lets us load, probed once at start-up (`probes::program_support`).
#[derive(Clone, Debug, Serialize)]
pub struct ProgramSupport {
    /// fentry/fexit (BPF_PROG_TYPE_TRACING): `Ok(())` or why not.
    pub fentry: Result<(), Refusal>,
    /// kprobe/kretprobe.
    pub kprobe: Result<(), Refusal>,
    /// Tracepoints.
    pub tracepoint: Result<(), Refusal>,
}

/// One mode the plan considered for a hook.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    /// The mode.
    pub mode: AttachMode,
    /// Why this mode was not used; `None` for the chosen one (and untried worse ones).
    /// Filled in before loading from BTF/kallsyms, and by the trial load.
    pub refused: Option<Refusal>,
}

/// One hook of the plan (`check` prints these; JSON shape in docs/cli.md).
#[derive(Clone, Debug, Serialize)]
pub struct HookPlan {
    /// The hook's name: an event name (syscall hooks) or a function hook's name.
    pub hook: &'static str,
    /// Where it attaches in the chosen mode, e.g. `syscalls:sys_enter_clone + sys_exit_clone`.
    pub target: String,
    /// The modes considered, best first.
    pub candidates: Vec<Candidate>,
    /// The mode it is attached in; `None` when every candidate was refused.
    pub chosen: Option<AttachMode>,
}

/// A mode the user forced (`--mode fentry|kprobe`, or tracepoints themselves) that this
/// kernel cannot do: the one error for it, from the plan or from the trial load.
#[derive(Debug)]
pub struct ForcedModeError {
    /// As the user spelled it: `fentry`, `kprobe` or `tracepoint`.
    pub mode: &'static str,
    /// The hook that cannot be attached, if it is one hook's fault.
    pub hook: Option<&'static str>,
    /// Why this kernel cannot do it.
    pub reason: Refusal,
}

impl std::fmt::Display for ForcedModeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--mode {} is not possible here: ", self.mode)?;
        match self.hook {
            Some(hook) => write!(
                f,
                "{hook}: {}; run with --mode auto to use the best mode this kernel allows",
                self.reason
            ),
            // Tracepoints carry every syscall hook in every mode.
            None => write!(
                f,
                "{}; every mode needs syscall tracepoints: lift the lockdown or LSM policy that forbids them",
                self.reason
            ),
        }
    }
}

impl std::error::Error for ForcedModeError {}

pub use crate::hooks::{FnHook, ProgKind, function_hooks};

/// What the kernel offers for function probes, read once at start-up.
pub struct FnFacts<'a> {
    /// Which program types load at all.
    pub support: &'a ProgramSupport,
    /// BTF: (has FUNC, parameter count) of a kernel function.
    pub btf_params: &'a dyn Fn(&str) -> Option<usize>,
    /// BTF: whether kernel_clone_args.flags is at offset 0, as copy_process probes assume.
    pub clone_args_flags_at_0: bool,
    /// Symbols for kprobes.
    pub kallsyms: &'a crate::symbols::Kallsyms,
    /// Rows of the hook table whose syscall this kernel lacks (`tracefs::absent_syscalls`).
    pub absent_syscalls: Vec<&'static str>,
}

impl FnFacts<'_> {
    /// Why `mode` cannot work for `hook` before trying to load anything; `None` if it may.
    pub fn refuse(&self, hook: &FnHook, mode: AttachMode) -> Option<Refusal> {
        match mode {
            AttachMode::Fexit => {
                if let Err(e) = &self.support.fentry {
                    return Some(e.clone());
                }
                for t in &hook.targets {
                    match (self.btf_params)(t.func) {
                        None => return Some(Refusal::NotInBtf { func: t.func }),
                        Some(n) if n != t.params => {
                            return Some(Refusal::Params { func: t.func, btf: n, expected: t.params });
                        }
                        Some(_) => {}
                    }
                }
                (hook.hook == "copy_process" && !self.clone_args_flags_at_0)
                    .then_some(Refusal::CloneArgsLayout)
            }
            AttachMode::Kprobe => {
                if let Err(e) = &self.support.kprobe {
                    return Some(e.clone());
                }
                hook.targets
                    .iter()
                    .find(|t| self.kallsyms.symbol(t.func).is_none())
                    .map(|t| Refusal::NotInKallsyms { func: t.func })
            }
            AttachMode::Tracepoint => Some(Refusal::NotATracepoint),
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
) -> Result<Vec<HookPlan>, ForcedModeError> {
    if let Err(reason) = &support.tracepoint {
        return Err(ForcedModeError { mode: "tracepoint", hook: None, reason: reason.clone() });
    }
    // Every row of the hook table has its syscall tracepoints, attached in every mode.
    // Rows no syscall tracepoint sees are in the plan too, attached nowhere, so `check` and
    // `pidfd_trace_probe_attached{hook,mode="tracepoint"} 0` say so.
    let mut plan: Vec<HookPlan> = crate::hooks::events()
        // `pidfd_autokill` has neither syscall nor blind reason: its function hook is the row.
        .filter(|h| h.has_syscall() || !h.blind.is_empty())
        .map(|h| match h.tracepoint_target() {
            Some(target) => HookPlan {
                hook: h.name(),
                target,
                candidates: vec![Candidate { mode: AttachMode::Tracepoint, refused: None }],
                chosen: Some(AttachMode::Tracepoint),
            },
            None => HookPlan {
                hook: h.name(),
                target: "none".to_string(),
                candidates: vec![Candidate {
                    mode: AttachMode::Tracepoint,
                    refused: Some(Refusal::NotVisible),
                }],
                chosen: None,
            },
        })
        .collect();
    for h in plan.iter_mut().filter(|h| facts.absent_syscalls.contains(&h.hook)) {
        h.chosen = None;
        h.candidates[0].refused = Some(Refusal::NoSyscall { syscall: crate::hooks::syscall_of(h.hook) });
    }
    let modes: &[AttachMode] = match choice {
        ModeChoice::Auto => &[AttachMode::Fexit, AttachMode::Kprobe],
        ModeChoice::Fentry => &[AttachMode::Fexit],
        ModeChoice::Kprobe => &[AttachMode::Kprobe],
        ModeChoice::Tracepoint => &[],
    };
    for f in fns {
        let candidates: Vec<Candidate> = if modes.is_empty() {
            vec![Candidate { mode: AttachMode::Fexit, refused: Some(Refusal::TracepointOnly) }]
        } else {
            modes.iter().map(|&m| Candidate { mode: m, refused: facts.refuse(f, m) }).collect()
        };
        if choice != ModeChoice::Auto
            && choice != ModeChoice::Tracepoint
            && let Some(reason) = &candidates[0].refused
        {
            return Err(ForcedModeError {
                mode: if choice == ModeChoice::Fentry { "fentry" } else { "kprobe" },
                hook: Some(f.hook),
                reason: reason.clone(),
            });
        }
        plan.push(HookPlan {
            hook: f.hook,
            target: f.targets.iter().map(|t| t.func).collect::<Vec<_>>().join(" + "),
            candidates,
            chosen: None,
        });
    }
    settle_covered(&mut plan, fns);
    Ok(plan)
}

/// Rows of creation paths no syscall tracepoint sees that a function hook makes visible
/// (`FnHook::covers`): after the tracepoint's refusal they show that hook's target, candidate
/// modes and chosen mode, so `check` and `pidfd_trace_probe_attached{hook="<path>"}` say in
/// which mode the path is seen. Run on the plan before loading and again after it.
pub fn settle_covered(plan: &mut [HookPlan], fns: &[FnHook]) {
    for f in fns {
        let Some(by) = plan.iter().find(|h| h.hook == f.hook).cloned() else { continue };
        // The hooks that feed it must be attached too (pidfs kernels: pidfd_creation).
        let fed = f.fed_by.iter().all(|h| plan.iter().any(|p| p.hook == *h && p.chosen.is_some()));
        for kind in f.covers {
            let Some(row) = plan.iter_mut().find(|h| h.hook == kind.name()) else { continue };
            row.target = format!("{} (hook {})", by.target, f.hook);
            // The first candidate is the tracepoint's refusal (`NotVisible`).
            row.candidates.truncate(1);
            row.candidates.extend(by.candidates.iter().cloned());
            row.chosen = if fed { by.chosen } else { None };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path row a function hook covers shows that hook's target and candidates after the
    /// tracepoint's refusal, and its chosen mode once loading chose one.
    #[test]
    fn covered_path_rows_take_the_hooks_mode() {
        let path = HookPlan {
            hook: "scm_pidfd",
            target: "none".into(),
            candidates: vec![Candidate { mode: AttachMode::Tracepoint, refused: Some(Refusal::NotVisible) }],
            chosen: None,
        };
        let funnel = HookPlan {
            hook: crate::hooks::FUNNEL_HOOK,
            target: "fd_install + put_unused_fd".into(),
            candidates: vec![
                Candidate { mode: AttachMode::Fexit, refused: Some(Refusal::Trial("no".into())) },
                Candidate { mode: AttachMode::Kprobe, refused: None },
            ],
            chosen: Some(AttachMode::Kprobe),
        };
        // pidfs kernels: the funnel is fed by pidfd_creation's programs.
        let creation = HookPlan {
            hook: "pidfd_creation",
            target: "pidfs_alloc_file".into(),
            candidates: vec![Candidate { mode: AttachMode::Kprobe, refused: None }],
            chosen: Some(AttachMode::Kprobe),
        };
        let fns = function_hooks(&|_| true);
        let mut unfed = vec![path.clone(), funnel.clone()];
        settle_covered(&mut unfed, &fns);
        assert_eq!(unfed[0].chosen, None, "without pidfd_creation the funnel sees nothing");
        let mut plan = vec![path, funnel, creation];
        settle_covered(&mut plan, &fns);
        // Twice (before and after loading) gives the same rows.
        settle_covered(&mut plan, &fns);
        let row = &plan[0];
        assert_eq!(row.chosen, Some(AttachMode::Kprobe));
        assert_eq!(row.target, "fd_install + put_unused_fd (hook pidfd_funnel)");
        let modes: Vec<_> = row.candidates.iter().map(|c| (c.mode, c.refused.is_none())).collect();
        assert_eq!(
            modes,
            [(AttachMode::Tracepoint, false), (AttachMode::Fexit, false), (AttachMode::Kprobe, true)]
        );
    }

    #[test]
    fn forced_mode_errors_name_the_fix() {
        let hook = ForcedModeError {
            mode: "fentry",
            hook: Some("copy_process"),
            reason: Refusal::NotInBtf { func: "copy_process" },
        };
        assert_eq!(
            hook.to_string(),
            "--mode fentry is not possible here: copy_process: copy_process not in BTF (inlined or absent); run with --mode auto to use the best mode this kernel allows"
        );
        let tp = ForcedModeError {
            mode: "tracepoint",
            hook: None,
            reason: Refusal::Unsupported { what: "tracepoint" },
        };
        assert!(tp.to_string().contains("lift the lockdown or LSM policy"), "{tp}");
        assert_eq!(serde_json::to_value(Refusal::TracepointOnly).unwrap(), "--mode tracepoint");
    }
}

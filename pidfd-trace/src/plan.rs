//! The attach plan as data: for each hook, the modes we could use in order of preference, the
//! verdict on each and the one chosen. `check` prints it, `trace`/`serve` follow it.
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

/// What the running kernel lets us load, probed once at start-up (`probes::program_support`).
#[derive(Clone, Debug, Serialize)]
pub struct ProgramSupport {
    /// `Ok(())` or why not, per mode.
    pub fentry: Result<(), String>,
    pub kprobe: Result<(), String>,
    pub tracepoint: Result<(), String>,
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

pub use crate::hooks::{FnHook, ProgKind, function_hooks};

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
    // Every row of the hook table has its syscall tracepoints, attached in every mode.
    let mut plan: Vec<HookPlan> = crate::hooks::events()
        .map(|h| HookPlan {
            hook: h.name(),
            target: format!("syscalls:sys_enter_{0} + sys_exit_{0}", h.name()),
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

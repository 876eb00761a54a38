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
            Err(e) => Err(format!("{what}: load refused ({e}); lockdown or an LSM may forbid it")),
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

    fn verdict(&self, m: AttachMode) -> &Result<(), String> {
        match m {
            AttachMode::Fexit => &self.fentry,
            AttachMode::Kprobe => &self.kprobe,
            AttachMode::Tracepoint => &self.tracepoint,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub mode: AttachMode,
    /// Why this mode was not used; `None` for the chosen one (and untried worse ones).
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

/// The hooks and their candidate modes, best first. The syscall hooks are tracepoints by
/// nature; function probes (copy_process, pidfd creation) plug in here with fexit → kprobe.
pub const SYSCALL_HOOKS: &[&str] = &["clone", "clone3", "pidfd_open", "pidfd_getfd", "pidfd_send_signal"];

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--mode {mode} is not possible here: {reason}")]
    ForcedModeUnavailable { mode: &'static str, reason: String },
}

pub fn build(choice: ModeChoice, support: &ProgramSupport) -> Result<Vec<HookPlan>, PlanError> {
    let forced = match choice {
        ModeChoice::Auto => None,
        ModeChoice::Fentry => Some(AttachMode::Fexit),
        ModeChoice::Kprobe => Some(AttachMode::Kprobe),
        ModeChoice::Tracepoint => Some(AttachMode::Tracepoint),
    };
    if let Some(m) = forced {
        if let Err(reason) = support.verdict(m) {
            return Err(PlanError::ForcedModeUnavailable { mode: m.as_str(), reason: reason.clone() });
        }
        if m != AttachMode::Tracepoint {
            return Err(PlanError::ForcedModeUnavailable {
                mode: m.as_str(),
                reason: "the syscall hooks (clone, clone3, pidfd_*) exist only as tracepoints in this build"
                    .into(),
            });
        }
    }
    Ok(SYSCALL_HOOKS
        .iter()
        .map(|hook| {
            let ok = support.tracepoint.is_ok();
            HookPlan {
                hook,
                target: format!("syscalls:sys_enter_{hook} + sys_exit_{hook}"),
                candidates: vec![Candidate {
                    mode: AttachMode::Tracepoint,
                    refused: support.tracepoint.clone().err(),
                }],
                chosen: ok.then_some(AttachMode::Tracepoint),
            }
        })
        .collect())
}

//! Start-up shared by every command that attaches: preflight, kernel facts, the plan, and
//! the loaded programs.
use log::debug;

use crate::{
    btf::Btf,
    classify::KernelSemantics,
    cli::KernelArgs,
    plan::{self, FnFacts, FnHook, HookPlan, ModeChoice, ProgramSupport},
    preflight,
    probes::{LoadOptions, Probes},
    symbols::Kallsyms,
    tracefs,
};

/// Why the agent could not start tracing; each message names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Privileges or BTF missing.
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    /// tracefs or a syscall tracepoint missing or unusable.
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    /// The BTF file exists but cannot be read.
    #[error("reading kernel BTF {path}: {err}; point --btf (PIDFD_TRACE_BTF) at a readable vmlinux BTF")]
    ReadBtf {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The BTF file does not parse or lacks what the agent needs.
    #[error("parsing kernel BTF {path}: {err}")]
    ParseBtf {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong (names its own fix).
        err: crate::btf::BtfError,
    },
    /// A forced mode this kernel cannot do.
    #[error(transparent)]
    ForcedMode(#[from] plan::ForcedModeError),
    /// Loading or attaching the programs failed.
    #[error(transparent)]
    Load(#[from] crate::probes::LoadError),
    /// Dropping capabilities after attaching failed.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
}

/// Facts about the running kernel that `check` reports and the attach path uses.
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    /// Where the kernel BTF is read from.
    pub btf_path: std::path::PathBuf,
    /// The active lockdown mode, when securityfs shows it.
    pub lockdown: Option<String>,
    /// Which program types load.
    pub support: ProgramSupport,
    /// What the kernel does with pidfds (and what we watch).
    pub sem: KernelSemantics,
}

impl KernelFacts {
    /// Reads the facts (no error: what cannot be read is reported as such).
    pub fn gather(args: &KernelArgs) -> Self {
        let release = uname_release();
        Self {
            sem: KernelSemantics::from_release(&release),
            release,
            btf_path: args.btf.clone(),
            lockdown: std::fs::read_to_string("/sys/kernel/security/lockdown").ok().map(|s| {
                // "none [integrity] confidentiality": the bracketed one is active.
                s.split_whitespace()
                    .find(|w| w.starts_with('['))
                    .map(|w| w.trim_matches(['[', ']']).to_string())
                    .unwrap_or(s.trim().to_string())
            }),
            support: crate::probes::program_support(),
        }
    }
}

/// The running kernel's release (`unknown` if unreadable).
pub fn uname_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// An attached agent: the facts, the plan as carried out, and the loaded programs.
pub struct Session {
    /// The running kernel.
    pub facts: KernelFacts,
    /// The plan, with `chosen` filled in.
    pub plan: Vec<HookPlan>,
    /// The loaded programs (dropping the session detaches them).
    pub probes: Probes,
}

impl Session {
    /// Preflight, tracefs, BTF, the plan, then load and attach: every error names its fix.
    pub fn start(args: &KernelArgs) -> Result<Self, SessionError> {
        preflight::check_privileges(preflight::effective_caps())?;
        preflight::check_btf(&args.btf)?;
        let (root, mounted) = tracefs::ensure_mounted()?;
        if mounted {
            log::info!("mounted tracefs at {}", root.display());
        }
        raise_memlock();
        let facts = KernelFacts::gather(args);
        let layout = tracefs::syscall_layout(&root)?;
        debug!("syscall tracepoint layout: {layout:?}");
        let raw =
            std::fs::read(&args.btf).map_err(|err| SessionError::ReadBtf { path: args.btf.clone(), err })?;
        let btf = Btf::parse(&raw).map_err(|err| SessionError::ParseBtf { path: args.btf.clone(), err })?;
        let absent = tracefs::absent_syscalls(&root);
        let (mut plan, fns, kallsyms) = plan_for(args, &facts, &btf, absent)?;
        let ring_bytes = args.ring_kib.map(|k| k * 1024);
        let forced = matches!(args.mode, ModeChoice::Fentry | ModeChoice::Kprobe);
        let probes = Probes::load(
            &LoadOptions {
                layout,
                btf: &btf,
                kallsyms: &kallsyms,
                forced,
                ring_bytes,
                newtask: tracefs::newtask_layout(&root),
                compat_syscalls: args.compat_syscalls.then(|| tracefs::raw_syscalls_layout(&root, layout)),
            },
            &mut plan,
            &fns,
        )?;
        plan::settle_covered(&mut plan, &fns);
        // Parsing BTF left ~15 MiB of freed heap behind; give it back (RSS 28 → 14 MiB).
        drop((raw, btf));
        // SAFETY: malloc_trim only releases free memory at the top of the heap (glibc only).
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0)
        };
        let mut facts = facts;
        let chosen = |hook: &str| plan.iter().any(|h| h.hook == hook && h.chosen.is_some());
        facts.sem.creation_observed = chosen("copy_process") && chosen("pidfd_creation");
        Ok(Self { facts, plan, probes })
    }

    /// What this configuration cannot see or check, one sentence each (`check`'s
    /// "blind_spots", README "What the agent cannot see").
    pub fn blind_spots(&self) -> Vec<String> {
        // Every configuration (README "What the agent cannot see").
        let mut v = vec![
            "32-bit callers refused by seccomp before a clone ran: not reported (64-bit clones and every pidfd_open, pidfd_getfd and pidfd_send_signal are, as stage denied)".to_string(),
            "io_uring: IORING_OP_OPENAT of /proc/<pid>/fd/<n> (a reopened pidfd) and IORING_OP_WAITID with P_PIDFD make and use pidfds without a syscall: not reported".to_string(),
            "seccomp SECCOMP_RET_ERRNO with errno 0 (or a user-notification supervisor's made-up value) fakes a success the kernel never ran: no event".to_string(),
        ];
        if !self.probes.compat_attached {
            v.push("32-bit (ia32) callers: the syscalls:sys_* tracepoints skip compat syscalls, so their pidfd calls are not reported; run with --compat-syscalls to see them".to_string());
        }
        v.extend(self.probes.blind_spots.iter().cloned());
        v
    }

    /// Gives up every capability the agent no longer needs now that the programs are
    /// attached (privileges.rs). Call while the process has one thread.
    pub fn drop_privileges(&self) -> Result<(), SessionError> {
        crate::privileges::drop_all(self.probes.map_probe()?)?;
        Ok(())
    }

    /// The attach plan as metric rows: every candidate mode of every hook (attached = false),
    /// then the mode each attached hook uses (attached = true).
    pub fn plan_rows(&self) -> Vec<crate::sink::metrics::PlanRow> {
        use crate::sink::metrics::PlanRow;
        let candidates = self.plan.iter().flat_map(|h| {
            h.candidates.iter().map(|c| PlanRow { hook: h.hook, mode: c.mode.name(), attached: false })
        });
        let attached = self.probes.attached.iter().map(|a| PlanRow {
            hook: a.hook,
            mode: a.mode.name(),
            attached: true,
        });
        candidates.chain(attached).collect()
    }

    /// The one line on stderr that says we are ready (docs/cli.md).
    pub fn attached_line(&self) -> String {
        let hooks: Vec<String> =
            self.probes.attached.iter().map(|a| format!("{}={}", a.hook, a.mode.name())).collect();
        format!("pidfd-trace: attached {} hooks: {}", hooks.len(), hooks.join(" "))
    }
}

/// The plan before loading: function hooks this kernel has, refused modes with reasons.
fn plan_for(
    args: &KernelArgs,
    facts: &KernelFacts,
    btf: &Btf,
    absent_syscalls: Vec<&'static str>,
) -> Result<(Vec<HookPlan>, Vec<FnHook>, Kallsyms), plan::ForcedModeError> {
    let fns = plan::function_hooks(&|f| btf.has_func(f));
    let wanted: Vec<&str> = fns.iter().flat_map(|h| h.targets.iter().map(|t| t.func)).collect();
    let kallsyms = Kallsyms::read(&wanted);
    let btf_params = |f: &str| btf.func_params(f).map(|p| p.len());
    let fn_facts = FnFacts {
        support: &facts.support,
        btf_params: &btf_params,
        clone_args_flags_at_0: btf.member_offset("kernel_clone_args", "flags").ok() == Some(0),
        kallsyms: &kallsyms,
        absent_syscalls,
    };
    let plan = plan::build(args.mode, &facts.support, &fns, &fn_facts)?;
    Ok((plan, fns, kallsyms))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it, and without
/// CAP_SYS_RESOURCE raising it fails harmlessly.
fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!("setrlimit(RLIMIT_MEMLOCK) failed: {}", std::io::Error::last_os_error());
    }
}

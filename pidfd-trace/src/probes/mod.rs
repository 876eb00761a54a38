//! The kernel boundary: the only module that names aya. It probes which program types this
//! kernel loads, loads the kernel programs with this kernel's offsets, attaches them as the
//! plan says, and hands out what the agent reads: the event ring and the kernel log channel
//! (ring.rs), a `Counters` snapshot of the per-CPU maps, and the map fd the privilege drop
//! tests reading with (plus the raw bpf() look-up that test makes).
mod ring;
pub mod state;

pub use ring::{EventRing, KernelLog};
use std::{borrow::Cow, collections::HashSet};

use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
    programs::{FEntry, FExit, KProbe, RawTracePoint, TracePoint},
};
use log::{debug, warn};
use pidfd_trace_common::{
    CounterKey, FdPidOffsets, FunnelSyscalls, NewFdOffsets, PidsLimitOffsets, RiskOffsets, TruthOffsets,
    closes, exit_tail, globals, risk, stats,
};

use crate::{
    btf::Btf,
    counters::Counters,
    plan::{AttachMode, FnHook, ForcedModeError, HookPlan, ProgKind, ProgramSupport, Refusal},
    symbols::Kallsyms,
    tracefs::SyscallLayout,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pidfd-trace"));

impl From<aya::EbpfError> for LoadError {
    fn from(e: aya::EbpfError) -> Self {
        LoadError::Object(Box::new(e))
    }
}

/// Loading, attaching or reading the kernel programs failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The embedded object was refused (maps, BTF, relocations).
    #[error("loading the eBPF object failed: {0}")]
    Object(Box<aya::EbpfError>),
    /// A program the plan names is not in the object.
    #[error("program {0} missing from the eBPF object: agent and kernel programs are from different builds")]
    MissingProgram(String),
    /// The verifier or the kernel refused a tracepoint program.
    #[error("loading program {name} failed: {err}")]
    Load {
        /// The program.
        name: String,
        /// aya's error (the verifier log's first lines).
        err: Box<aya::programs::ProgramError>,
    },
    /// A tracepoint program loaded but could not be attached.
    #[error("attaching {name} to {target} failed: {err}")]
    Attach {
        /// The program.
        name: String,
        /// `category:name`.
        target: String,
        /// aya's error.
        err: Box<aya::programs::ProgramError>,
    },
    /// A map the agent reads is not in the object.
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    /// Reading a map failed.
    #[error("map {name}: {err}")]
    Map {
        /// The map.
        name: &'static str,
        /// aya's error.
        err: aya::maps::MapError,
    },
    /// `--mode fentry|kprobe` and the trial load failed for a hook.
    #[error(transparent)]
    ForcedMode(#[from] ForcedModeError),
    /// The embedded object could not be prepared for this kernel's entry-state store
    /// (probes/state.rs): a broken build.
    #[error(
        "preparing the eBPF object for the LRU hash entry-state store: {0}; the agent and its kernel programs are from a broken build, rebuild them"
    )]
    StateStore(String),
}

/// A loader for the embedded object on this kernel: the entry-state store probed
/// (probes/state.rs), its global set, and the object bytes it needs.
fn object_for_kernel(
    loader: &mut EbpfLoader<'_>,
) -> Result<(state::StateStore, Cow<'static, [u8]>), LoadError> {
    let store = state::StateStore::probe();
    let object = state::object_for(&store, OBJECT).map_err(LoadError::StateStore)?;
    // aya 0.14 has no user-space type for task storage maps; only the kernel programs use it.
    loader.allow_unsupported_maps();
    Ok((store, object))
}

/// What loading needs from the rest of start-up.
pub struct LoadOptions<'a> {
    /// Tracepoint field offsets, checked against tracefs.
    pub layout: SyscallLayout,
    /// The kernel BTF, for struct offsets.
    pub btf: &'a Btf,
    /// Symbols, for kprobes.
    pub kallsyms: &'a Kallsyms,
    /// A forced function-probe mode fails the start instead of falling back.
    pub forced: bool,
    /// `task:task_newtask` has the record layout its program reads (tracefs.rs); `Err`
    /// says why not, and the program is not attached.
    pub newtask: Result<(), String>,
    /// `--compat-syscalls`: attach the raw_syscalls programs for 32-bit callers; `Err` when
    /// raw_syscalls does not have the layout they read.
    pub compat_syscalls: Option<Result<(), String>>,
    /// Ring-buffer size in bytes (power of two); `None` keeps the built-in default.
    pub ring_bytes: Option<u32>,
}

/// A hook that is attached, as reported on the `attached` line and in metrics.
#[derive(Clone, Debug)]
pub struct Attached {
    /// The hook (plan name).
    pub hook: &'static str,
    /// Its mode.
    pub mode: AttachMode,
}

/// The loaded programs; dropping it detaches and unloads all of them.
pub struct Probes {
    ebpf: Ebpf,
    /// What is attached, in plan order (the `attached` line).
    pub attached: Vec<Attached>,
    /// What the running configuration cannot see or check, one line each (`check`'s
    /// "blind_spots"); empty when nothing is known to be missing.
    pub blind_spots: Vec<String>,
    /// The raw_syscalls programs for 32-bit callers are attached.
    pub compat_attached: bool,
    /// Where the kernel programs keep per-thread entry state on this kernel (`check`).
    pub state_store: state::StateStore,
    /// aya's view of the kernel BTF, needed to load fentry/fexit; read on first use.
    aya_btf: Option<aya::Btf>,
    loaded: HashSet<&'static str>,
}

/// Program `$name` of the object as a `$ty`, loaded into the kernel with its verifier
/// statistics logged; `?` returns a `LoadError` from the enclosing function. A macro because
/// aya's program types share no trait with `load`.
macro_rules! load_program {
    ($probes:expr, $name:expr, $ty:ty) => {{
        let name: &str = $name;
        let load_err = |err| LoadError::Load { name: name.into(), err: Box::new(err) };
        let prog: &mut $ty = $probes
            .ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::MissingProgram(name.into()))?
            .try_into()
            .map_err(load_err)?;
        prog.load().map_err(load_err)?;
        log_verified(name, prog.info().ok());
        prog
    }};
}

impl Probes {
    /// Loads the object, attaches the syscall tracepoints, then tries each function hook's
    /// candidate modes in order, recording in `plan` what was chosen and why the others
    /// were refused.
    pub fn load(opts: &LoadOptions<'_>, plan: &mut [HookPlan], fns: &[FnHook]) -> Result<Self, LoadError> {
        let pids = pids_limit_offsets(opts.btf);
        let fd_pid = fd_pid_offsets(opts.btf);
        let truth = truth_offsets(opts.btf);
        let mut blind_spots = Vec::new();
        if fd_pid.valid == 0 || truth.valid == 0 {
            blind_spots.push(
                "fd kinds: the kernel's file/dentry/pid shapes are not in BTF; a clone's pidfd is the number in user memory (forgeable), target_pid comes from /proc, comm is the thread's and no ns_* fields".to_string(),
            );
        }
        let risk = risk_offsets(opts.btf);
        let new_fd = new_fd_offsets(opts.btf);
        let (pidfs_fops, file_f_op) = pidfs_fops(opts.btf);
        let funnel = funnel_syscalls(opts.btf);
        let mut loader = EbpfLoader::new();
        // Statistics and the refusal reason only: aya's default also asks for the verifier's
        // per-instruction trace, and a refused program is loaded again to get it, which for
        // a program near the 1M-instruction limit writes gigabytes of log (minutes of start-up
        // under emulation before the refusal is reported at all).
        loader.verifier_log_level(VerifierLogLevel::STATS);
        loader
            .override_global(globals::PIDFS_FOPS, &pidfs_fops, true)
            .override_global(globals::FILE_F_OP, &file_f_op, true)
            .override_global(globals::TP_ARG0, &opts.layout.arg0, true)
            .override_global(globals::TP_RET, &opts.layout.ret, true)
            .override_global(globals::PIDS_LIMIT, &pids, true)
            .override_global(globals::FD_PID, &fd_pid, true)
            .override_global(globals::TRUTH, &truth, true)
            .override_global(globals::FUNNEL, &funnel, true)
            .override_global(globals::RISK, &risk, true)
            .override_global(globals::NEW_FD, &new_fd, true);
        if let Some(bytes) = opts.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let (state_store, object) = object_for_kernel(&mut loader)?;
        let in_task = state_store.global();
        loader.override_global(globals::STATE_IN_TASK, &in_task, true);
        debug!("entry state: {}", state_store.describe());
        let ebpf = loader.load(&object)?;
        let mut probes = Probes {
            ebpf,
            state_store,
            attached: Vec::new(),
            blind_spots,
            compat_attached: false,
            aya_btf: None,
            loaded: HashSet::new(),
        };
        probes.load_exit_tails()?;
        for hook in plan.iter() {
            if hook.chosen == Some(AttachMode::Tracepoint) {
                let row = crate::hooks::events().find(|r| r.name() == hook.hook);
                for prog in row.map(|r| r.tracepoint_programs()).unwrap_or_default() {
                    probes.attach_tracepoint(&prog)?;
                }
                probes.attached.push(Attached { hook: hook.hook, mode: AttachMode::Tracepoint });
            }
        }
        // The child and the flags as the kernel created them (clone pidfds, their flags). As
        // a raw tracepoint where the kernel allows it (no trace record built on every fork:
        // BENCHMARKS.md), else as the event, whose record layout was checked.
        let raw = if fd_pid.valid != 0 && truth.valid != 0 {
            probes.attach_raw_tracepoint(NEWTASK_RAW_PROG, "task_newtask")
        } else {
            Err(LoadError::MissingProgram("no BTF offsets for the child's pid".into()))
        };
        match (raw, &opts.newtask) {
            (Ok(()), _) => {}
            (Err(raw_err), Ok(())) => {
                debug!("task_newtask as a raw tracepoint refused ({raw_err}); attaching the event");
                probes.attach_event_tracepoint(NEWTASK_PROG, "task", "task_newtask")?
            }
            (Err(_), Err(why)) => probes.blind_spots.push(format!(
                "task:task_newtask unusable ({why}): a clone's pidfd is the number in user memory and its flags are the caller's"
            )),
        }
        match &opts.compat_syscalls {
            None => {}
            Some(Err(why)) => probes.blind_spots.push(format!("--compat-syscalls refused: {why}")),
            Some(Ok(())) if truth.ti_status_valid == 0 => probes.blind_spots.push(
                "--compat-syscalls refused: this kernel's BTF has no thread_info.status (TS_COMPAT), so 32-bit calls cannot be told from 64-bit ones".into(),
            ),
            Some(Ok(())) => {
                // The exit first: an entry program without its exit would leave entry state
                // (and the in-flight gates) behind. A kernel that refuses either program runs
                // without them and says so, like a kernel without TS_COMPAT.
                let attached = [(COMPAT_EXIT_PROG, "sys_exit"), (COMPAT_ENTER_PROG, "sys_enter")]
                    .into_iter()
                    .try_for_each(|(prog, event)| probes.attach_event_tracepoint(prog, "raw_syscalls", event));
                match attached {
                    Ok(()) => probes.compat_attached = true,
                    Err(e) => {
                        let why = one_line(&e.to_string());
                        warn!("--compat-syscalls: {why}");
                        probes.blind_spots.push(format!("--compat-syscalls refused by this kernel: {why}"));
                    }
                }
            }
        }
        for f in fns {
            let Some(hp) = plan.iter_mut().find(|h| h.hook == f.hook) else { continue };
            for cand in hp.candidates.iter_mut().filter(|c| c.refused.is_none()) {
                match probes.attach_function(f, cand.mode, opts.kallsyms) {
                    Ok(()) => {
                        hp.chosen = Some(cand.mode);
                        probes.attached.push(Attached { hook: f.hook, mode: cand.mode });
                        break;
                    }
                    Err(reason) => {
                        warn!("{}: {} refused: {reason}", f.hook, cand.mode.name());
                        cand.refused = Some(Refusal::Trial(reason));
                    }
                }
            }
            if opts.forced
                && hp.chosen.is_none()
                && let Some(c) = hp.candidates.first()
            {
                return Err(LoadError::ForcedMode(ForcedModeError {
                    // As the user spelled it: --mode fentry attaches fentry/fexit programs.
                    mode: if c.mode == AttachMode::Fexit { "fentry" } else { c.mode.name() },
                    hook: Some(f.hook),
                    reason: c.refused.clone().unwrap_or(Refusal::Trial("no reason recorded".into())),
                }));
            }
        }
        // Only loading needed aya's copy of the kernel BTF.
        probes.aya_btf = None;
        if probes.attached.iter().any(|a| a.hook == crate::hooks::RELEASE_HOOK) {
            probes.enable_close_tracking()?;
        }
        if probes.attached.iter().any(|a| a.hook == crate::hooks::FUNNEL_HOOK) {
            probes.switch_on("FUNNEL_ON")?;
            probes.blind_spots.push(
                "scm_pidfd/fanotify through io_uring: a pidfd made by an io_uring submission is counted (pidfd_trace_pidfds_unattributed_total), not reported; one whose completion runs as task work at the end of another syscall is named after that syscall (README: Every way a pidfd is born)".to_string(),
            );
        }
        Ok(probes)
    }

    /// Lets the creation hooks remember each pidfd's creation time (`CLOSE_ON[0] = 1`), now
    /// that a release hook takes the entries out again.
    fn enable_close_tracking(&mut self) -> Result<(), LoadError> {
        self.switch_on("CLOSE_ON")
    }

    /// Sets `[0] = 1` in a one-slot switch array (`CLOSE_ON`, `FUNNEL_ON`): a kernel-side
    /// feature whose programs are now all attached.
    fn switch_on(&mut self, name: &'static str) -> Result<(), LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        let mut on = aya::maps::Array::<_, u32>::try_from(map).map_err(|err| LoadError::Map { name, err })?;
        on.set(0, 1, 0).map_err(|err| LoadError::Map { name, err })
    }

    /// Loads and attaches every program `mode` needs for `hook`; on any failure unloads
    /// what this attempt loaded (which detaches it) and says why, in one line.
    fn attach_function(
        &mut self,
        hook: &FnHook,
        mode: AttachMode,
        kallsyms: &Kallsyms,
    ) -> Result<(), String> {
        let mut attempt: Vec<&'static str> = Vec::new();
        let result = (|| -> Result<(), String> {
            for t in &hook.targets {
                let progs = if mode == AttachMode::Fexit { t.fexit } else { t.kprobe };
                for &(name, kind) in progs {
                    let symbol = match mode {
                        AttachMode::Kprobe => {
                            kallsyms.symbol(t.func).ok_or_else(|| format!("{} not in kallsyms", t.func))?
                        }
                        _ => t.func,
                    };
                    if !self.loaded.contains(name) {
                        attempt.push(name);
                    }
                    self.load_and_attach(name, kind, symbol)
                        .map_err(|e| format!("{name} on {symbol}: {}", one_line(&e)))?;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            for name in attempt {
                let _ = match self.ebpf.program_mut(name) {
                    Some(aya::programs::Program::FEntry(p)) => p.unload(),
                    Some(aya::programs::Program::FExit(p)) => p.unload(),
                    Some(aya::programs::Program::KProbe(p)) => p.unload(),
                    _ => Ok(()),
                };
                self.loaded.remove(name);
            }
        }
        result
    }

    fn load_and_attach(&mut self, name: &'static str, kind: ProgKind, symbol: &str) -> Result<(), String> {
        let first = self.loaded.insert(name);
        if matches!(kind, ProgKind::Fentry | ProgKind::Fexit) && self.aya_btf.is_none() {
            self.aya_btf = Some(aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?);
        }
        let prog =
            self.ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
        match kind {
            ProgKind::Fentry => {
                let p: &mut FEntry = prog.try_into().map_err(|e| format!("{e}"))?;
                if first {
                    p.load(symbol, self.aya_btf.as_ref().expect("read above"))
                        .map_err(|e| format!("load: {e}"))?;
                }
                p.attach().map_err(|e| format!("attach: {e}"))?;
            }
            ProgKind::Fexit => {
                let p: &mut FExit = prog.try_into().map_err(|e| format!("{e}"))?;
                if first {
                    p.load(symbol, self.aya_btf.as_ref().expect("read above"))
                        .map_err(|e| format!("load: {e}"))?;
                }
                p.attach().map_err(|e| format!("attach: {e}"))?;
            }
            ProgKind::Kprobe | ProgKind::Kretprobe => {
                let p: &mut KProbe = prog.try_into().map_err(|e| format!("{e}"))?;
                if first {
                    p.load().map_err(|e| format!("load: {e}"))?;
                }
                p.attach(symbol, 0).map_err(|e| format!("attach: {e}"))?;
            }
        }
        Ok(())
    }

    /// Loads the syscall exits' tail programs (`exit_tail`) into their program array, before
    /// any exit is attached. The record programs are required; a kernel whose verifier
    /// refuses a clone step leaves that slot empty: clone exits then report without that
    /// step's finding, and `check` lists it as a blind spot.
    fn load_exit_tails(&mut self) -> Result<(), LoadError> {
        for (idx, name) in exit_tail::PROGRAMS {
            let loaded = (|| -> Result<aya::programs::ProgramFd, LoadError> {
                let load_err = |err| LoadError::Load { name: name.into(), err: Box::new(err) };
                let prog = load_program!(self, name, TracePoint);
                let fd = prog.fd().map_err(load_err)?;
                fd.try_clone().map_err(|e| load_err(aya::programs::ProgramError::IOError(e)))
            })();
            let fd = match loaded {
                Ok(fd) => fd,
                Err(e) if !exit_tail::optional(idx) => return Err(e),
                Err(e) => {
                    let why = one_line(&e.to_string());
                    warn!("{why}; events go without that step: {}", exit_tail_loss(idx));
                    self.blind_spots.push(format!("{}: {why}", exit_tail_loss(idx)));
                    continue;
                }
            };
            let map = self.ebpf.map_mut(exit_tail::MAP).ok_or(LoadError::MissingMap(exit_tail::MAP))?;
            let mut array =
                ProgramArray::try_from(map).map_err(|err| LoadError::Map { name: exit_tail::MAP, err })?;
            array.set(idx, &fd, 0).map_err(|err| LoadError::Map { name: exit_tail::MAP, err })?;
        }
        Ok(())
    }

    /// Loads program `name` and attaches it to the tracepoint `category:event`.
    fn attach_event_tracepoint(&mut self, name: &str, category: &str, event: &str) -> Result<(), LoadError> {
        let prog = load_program!(self, name, TracePoint);
        prog.attach(category, event).map_err(|err| LoadError::Attach {
            name: name.into(),
            target: format!("{category}:{event}"),
            err: Box::new(err),
        })?;
        Ok(())
    }

    /// Loads program `name` and attaches it to the raw tracepoint `event`.
    fn attach_raw_tracepoint(&mut self, name: &str, event: &str) -> Result<(), LoadError> {
        let prog = load_program!(self, name, RawTracePoint);
        prog.attach(event).map_err(|err| LoadError::Attach {
            name: name.into(),
            target: format!("raw_tracepoint:{event}"),
            err: Box::new(err),
        })?;
        Ok(())
    }

    fn attach_tracepoint(&mut self, name: &str) -> Result<(), LoadError> {
        let prog = load_program!(self, name, TracePoint);
        prog.attach("syscalls", name).map_err(|err| LoadError::Attach {
            name: name.into(),
            target: format!("syscalls:{name}"),
            err: Box::new(err),
        })?;
        Ok(())
    }

    /// The event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Result<EventRing, LoadError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(LoadError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map(EventRing).map_err(|err| LoadError::Map { name: "EVENTS", err })
    }

    /// The kernel-side log channel (aya-log), if the object has one.
    pub fn take_logger(&mut self) -> Option<KernelLog> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(l) => Some(KernelLog(l)),
            Err(e) => {
                warn!("kernel-side logging unavailable: {e}");
                None
            }
        }
    }

    /// The per-CPU counter maps now, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, LoadError> {
        Ok(Counters {
            outcomes: self.outcomes()?,
            stats: self.stats()?,
            risky: self.risky()?,
            closes: self.closes()?,
        })
    }

    /// The `CLOSES` slots, summed over CPUs.
    fn closes(&self) -> Result<[u64; closes::COUNT as usize], LoadError> {
        let map = self.ebpf.map("CLOSES").ok_or(LoadError::MissingMap("CLOSES"))?;
        let map =
            PerCpuArray::<_, u64>::try_from(map).map_err(|err| LoadError::Map { name: "CLOSES", err })?;
        let mut out = [0u64; closes::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot =
                map.get(&(i as u32), 0).map_err(|err| LoadError::Map { name: "CLOSES", err })?.iter().sum();
        }
        Ok(out)
    }

    /// The risky-getfd counters (one per set of reasons, `risk::slot`), summed over CPUs.
    fn risky(&self) -> Result<[u64; risk::SLOTS as usize], LoadError> {
        let map = self.ebpf.map("RISKY").ok_or(LoadError::MissingMap("RISKY"))?;
        let map =
            PerCpuArray::<_, u64>::try_from(map).map_err(|err| LoadError::Map { name: "RISKY", err })?;
        let mut out = [0u64; risk::SLOTS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = map.get(&(i as u32), 0).map_err(|err| LoadError::Map { name: "RISKY", err })?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Every outcome counter, summed over CPUs.
    fn outcomes(&self) -> Result<Vec<(CounterKey, u64)>, LoadError> {
        let map = self.ebpf.map("OUTCOMES").ok_or(LoadError::MissingMap("OUTCOMES"))?;
        let map = PerCpuHashMap::<_, CounterKey, u64>::try_from(map)
            .map_err(|err| LoadError::Map { name: "OUTCOMES", err })?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (k, per_cpu) = item.map_err(|err| LoadError::Map { name: "OUTCOMES", err })?;
            out.push((k, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// Removes entry states whose thread no longer exists (killed between syscall entry and
    /// exit, or the agent attached mid-call), so the map tends to zero and never fills up.
    /// Returns (entries kept, entries removed). With task-local storage (`state_store`) the
    /// hash stays empty and the kernel frees a thread's slot with the thread.
    pub fn sweep_enter_state(&mut self) -> Result<(usize, usize), LoadError> {
        let map = self.ebpf.map_mut("ENTER_STATE").ok_or(LoadError::MissingMap("ENTER_STATE"))?;
        let mut map = aya::maps::HashMap::<_, u64, pidfd_trace_common::EnterState>::try_from(map)
            .map_err(|err| LoadError::Map { name: "ENTER_STATE", err })?;
        let keys: Vec<u64> = map.keys().filter_map(Result::ok).collect();
        let mut removed = 0;
        for k in &keys {
            let (tgid, tid) = (k >> 32, k & 0xffff_ffff);
            if !std::path::Path::new(&format!("/proc/{tgid}/task/{tid}")).exists() && map.remove(k).is_ok() {
                removed += 1;
            }
        }
        Ok((keys.len() - removed, removed))
    }

    /// The `STATS` map, for finding out which capability reading our maps needs.
    pub fn map_probe(&self) -> Result<MapProbe, LoadError> {
        use std::os::fd::{AsFd, AsRawFd};
        let Some(aya::maps::Map::PerCpuArray(data)) = self.ebpf.map("STATS") else {
            return Err(LoadError::MissingMap("STATS"));
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| LoadError::Map {
            name: "STATS",
            err: aya::maps::MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error: err }),
        })?;
        Ok(MapProbe { fd: data.fd().as_fd().as_raw_fd(), value_size: 8 * cpus })
    }

    /// The `STATS` slots, summed over CPUs.
    fn stats(&self) -> Result<[u64; stats::COUNT as usize], LoadError> {
        let map = self.ebpf.map("STATS").ok_or(LoadError::MissingMap("STATS"))?;
        let map =
            PerCpuArray::<_, u64>::try_from(map).map_err(|err| LoadError::Map { name: "STATS", err })?;
        let mut out = [0u64; stats::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot =
                map.get(&(i as u32), 0).map_err(|err| LoadError::Map { name: "STATS", err })?.iter().sum();
        }
        Ok(out)
    }
}

/// A map of ours to test reading with: its fd and the size of one (all-CPU) value.
pub struct MapProbe {
    /// The map's fd (owned by `Probes`).
    pub fd: std::os::fd::RawFd,
    /// Bytes of one value, all CPUs together.
    pub value_size: usize,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

impl MapProbe {
    /// Looks up key 0 with a raw bpf(BPF_MAP_LOOKUP_ELEM) call; true if the kernel allowed it.
    /// Makes one system call on memory prepared by the caller and allocates nothing, so it is
    /// safe in a child between fork and `_exit` (privileges.rs).
    pub fn lookup_raw(&self, value: &mut [u8]) -> bool {
        let key = 0u32;
        if value.len() < self.value_size {
            return false;
        }
        // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd, pad, key, value, flags.
        let attr: [u64; 4] = [self.fd as u32 as u64, &key as *const u32 as u64, value.as_mut_ptr() as u64, 0];
        // SAFETY: `attr` points at a live key and a value buffer of at least value_size bytes.
        unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_ELEM, attr.as_ptr(), size_of_val(&attr)) == 0 }
    }
}

/// Which program types this kernel lets us load, probed once at start-up.
pub fn program_support() -> ProgramSupport {
    use aya::programs::ProgramType;
    let load = |t: ProgramType, what: &'static str| match aya::sys::is_program_supported(t) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Refusal::Unsupported { what }),
        Err(e) => {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            Err(Refusal::LoadRefused { what, why })
        }
    };
    let kprobe = if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        load(ProgramType::KProbe, "kprobe")
    } else {
        Err(Refusal::NoKprobes)
    };
    ProgramSupport {
        fentry: load(ProgramType::Tracing, "fentry"),
        kprobe,
        tracepoint: load(ProgramType::TracePoint, "tracepoint"),
    }
}

/// task_struct → css_set → pids_cgroup offsets for the EAGAIN disambiguation. A kernel
/// without the pids controller (or with a different shape) just loses that hint.
fn pids_limit_offsets(btf: &Btf) -> PidsLimitOffsets {
    let read = || -> Result<PidsLimitOffsets, crate::btf::BtfError> {
        // The programs cast the css pointer straight to pids_cgroup.
        if btf.member_offset("pids_cgroup", "css")? != 0 || btf.member_size("pids_cgroup", "limit")? != 8 {
            return Ok(PidsLimitOffsets::default());
        }
        Ok(PidsLimitOffsets {
            task_cgroups: btf.member_offset("task_struct", "cgroups")?,
            css_set_subsys: btf.member_offset("css_set", "subsys")?,
            pids_cgrp_id: btf.enum_value("cgroup_subsys_id", "pids_cgrp_id")? as u32,
            pids_counter: btf.member_offset("pids_cgroup", "counter")?,
            pids_limit: btf.member_offset("pids_cgroup", "limit")?,
            css_parent: btf.member_offset("cgroup_subsys_state", "parent")?,
            valid: 1,
        })
    };
    match read() {
        Ok(o) => {
            debug!("pids cgroup offsets from BTF: {o:?}");
            o
        }
        Err(e) => {
            warn!(
                "pids cgroup limit cannot be read on this kernel ({e}); EAGAIN failures will be reported as task_limit"
            );
            PidsLimitOffsets::default()
        }
    }
}

/// Offsets for resolving a pidfd to its pid inside the kernel (pidfd_getfd,
/// pidfd_send_signal). Without them `target_pid` falls back to /proc fdinfo.
fn fd_pid_offsets(btf: &Btf) -> FdPidOffsets {
    let read = || -> Result<FdPidOffsets, crate::btf::BtfError> {
        Ok(FdPidOffsets {
            task_files: btf.member_offset("task_struct", "files")?,
            files_fdt: btf.member_offset("files_struct", "fdt")?,
            fdt_fd: btf.member_offset("fdtable", "fd")?,
            fdt_max_fds: btf.member_offset("fdtable", "max_fds")?,
            file_private_data: btf.member_offset("file", "private_data")?,
            file_f_inode: btf.member_offset("file", "f_inode")?,
            inode_i_private: btf.member_offset("inode", "i_private")?,
            // 6.9+ keeps the struct pid in the pidfs inode, earlier kernels in the file.
            via_inode: u32::from(btf.has_func("pidfs_alloc_file")),
            pid_numbers_nr: btf.member_offset("pid", "numbers")? + btf.member_offset("upid", "nr")?,
            valid: 1,
        })
    };
    match read() {
        Ok(o) => {
            debug!("pidfd → pid offsets from BTF: {o:?}");
            o
        }
        Err(e) => {
            warn!(
                "cannot resolve pidfds in the kernel on this kernel ({e}); target_pid comes from /proc and may be missing"
            );
            FdPidOffsets::default()
        }
    }
}

/// Offsets for the openat exit's look at the fd it installed (reopen of a pidfd). Without
/// them no reopen is recorded, and the start-up log says so.
fn new_fd_offsets(btf: &Btf) -> NewFdOffsets {
    let read = || -> Result<NewFdOffsets, crate::btf::BtfError> {
        Ok(NewFdOffsets {
            file_f_op: btf.member_offset("file", "f_op")?,
            file_f_mode: btf.member_offset("file", "f_mode")?,
            files_fdtab: btf.member_offset("files_struct", "fdtab")?,
            files_fd_array: btf.member_offset("files_struct", "fd_array")?,
            valid: 1,
        })
    };
    read().unwrap_or_else(|e| {
        warn!("cannot see reopened pidfds on this kernel ({e}); reopen events will be missing");
        NewFdOffsets::default()
    })
}

/// Logs (debug) how many instructions the verifier processed for a program: its complexity,
/// against the kernel's 1M budget (kernels before 5.16 do not report it).
fn log_verified(name: &str, info: Option<aya::programs::ProgramInfo>) {
    if let Some(n) = info.and_then(|i| i.verified_instruction_count()) {
        debug!("{name}: verifier processed {n} instructions");
    }
}

/// What clone/clone3 events lack when the kernel refused the tail program of slot `idx`.
fn exit_tail_loss(idx: u32) -> &'static str {
    match idx {
        exit_tail::SCAN => {
            "clone pidfds: the fd-table scan was refused; a clone's pidfd is the number in user memory (forgeable)"
        }
        exit_tail::PIDS => {
            "clone EAGAIN: the pids cgroup walk was refused; stage pids_cgroup is not told apart from other EAGAINs"
        }
        exit_tail::CONTAINER => {
            "risky pidfd use: the container walk was refused; cross_container is never set (caller_container and target_container 0)"
        }
        exit_tail::PATH => "pidfd_getfd: the file-path walk was refused; file_path is null",
        _ => "clone/clone3 refused before they ran (seccomp): not reported (stage denied)",
    }
}

/// The program on `task:task_newtask` (pidfd-trace-ebpf/src/tracepoint/newtask.rs).
const NEWTASK_PROG: &str = "task_newtask";
const NEWTASK_RAW_PROG: &str = "task_newtask_raw";
/// The raw_syscalls programs for 32-bit callers (pidfd-trace-ebpf/src/tracepoint/compat.rs).
const COMPAT_ENTER_PROG: &str = "compat_sys_enter";
const COMPAT_EXIT_PROG: &str = "compat_sys_exit";

/// The creation funnel's syscall table (fprobe/funnel.rs): this architecture's numbers of
/// the syscalls under which SCM_PIDFD and fanotify pidfds are made, and where `pt_regs`
/// keeps the syscall number (x86_64 `orig_ax`, arm64 `syscallno`). `valid == 0` when BTF
/// does not say: every funnel pidfd is then counted unattributed.
fn funnel_syscalls(btf: &Btf) -> FunnelSyscalls {
    let field = if cfg!(target_arch = "x86_64") { "orig_ax" } else { "syscallno" };
    let Ok(regs_nr) = btf.member_offset("pt_regs", field) else { return FunnelSyscalls::NONE };
    let n = |v: libc::c_long| v as i32;
    let mut f = FunnelSyscalls {
        regs_nr,
        valid: 1,
        scm: [n(libc::SYS_recvmsg), n(libc::SYS_recvmmsg), -1, -1],
        fanotify: [
            n(libc::SYS_read),
            n(libc::SYS_readv),
            n(libc::SYS_pread64),
            n(libc::SYS_preadv),
            n(libc::SYS_preadv2),
            -1,
        ],
        ..FunnelSyscalls::NONE
    };
    if cfg!(target_arch = "x86_64") {
        // arch/x86/entry/syscalls/syscall_32.tbl: recvmsg, recvmmsg, recvmmsg_time64; read,
        // readv, pread64, preadv, preadv2. Not socketcall (102): it multiplexes getsockopt
        // too, so an ia32 SO_PEERPIDFD through it would be named scm_pidfd.
        f.scm_compat = [372, 337, 417, -1];
        f.fanotify_compat = [3, 145, 180, 333, 378, -1];
    }
    f
}

/// Offsets behind the facts a caller cannot forge: file kinds (pidfs superblock, anon-inode
/// dentry name, /proc/<pid> directories), pid namespaces and the process name.
fn truth_offsets(btf: &Btf) -> TruthOffsets {
    // x86 only: TS_COMPAT in thread_info.status (thread_info embedded in task_struct).
    let ti_status = btf
        .member_offset("task_struct", "thread_info")
        .and_then(|ti| Ok(ti + btf.member_offset("thread_info", "status")?))
        .ok()
        .filter(|_| cfg!(target_arch = "x86_64"));
    // The caller's cgroup2 directory name (container ids of short-lived containers).
    let kn = (|| -> Result<(u32, u32, u32), crate::btf::BtfError> {
        // pids_limit_offsets supplies task_struct.cgroups; it must be valid too.
        btf.member_offset("task_struct", "cgroups")?;
        Ok((
            btf.member_offset("css_set", "dfl_cgrp")?,
            btf.member_offset("cgroup", "kn")?,
            btf.member_offset("kernfs_node", "name")?,
        ))
    })()
    .ok();
    // x86_64: the saved user registers (arguments of a clone refused before it ran).
    let regs = (|| -> Result<[u32; 5], crate::btf::BtfError> {
        Ok([
            btf.member_offset("task_struct", "stack")?,
            btf.member_offset("pt_regs", "cs")?,
            btf.struct_size("pt_regs")?,
            btf.member_offset("pt_regs", "di")?,
            btf.member_offset("pt_regs", "orig_ax")?,
        ])
    })()
    .ok()
    .filter(|_| cfg!(target_arch = "x86_64"));
    let read = || -> Result<TruthOffsets, crate::btf::BtfError> {
        Ok(TruthOffsets {
            task_stack: regs.map_or(0, |r| r[0]),
            regs_cs: regs.map_or(0, |r| r[1]),
            pt_regs_size: regs.map_or(0, |r| r[2]),
            regs_di: regs.map_or(0, |r| r[3]),
            regs_orig_ax: regs.map_or(0, |r| r[4]),
            regs_valid: u32::from(regs.is_some()),
            cset_dfl_cgrp: kn.map_or(0, |k| k.0),
            cgroup_kn: kn.map_or(0, |k| k.1),
            kn_name: kn.map_or(0, |k| k.2),
            kn_valid: u32::from(kn.is_some()),
            task_ti_status: ti_status.unwrap_or(0),
            ti_status_valid: u32::from(ti_status.is_some()),
            file_dentry: btf.member_offset("file", "f_path")? + btf.member_offset("path", "dentry")?,
            dentry_name: btf.member_offset("dentry", "d_name")? + btf.member_offset("qstr", "name")?,
            dentry_parent: btf.member_offset("dentry", "d_parent")?,
            inode_sb: btf.member_offset("inode", "i_sb")?,
            inode_mode: btf.member_offset("inode", "i_mode")?,
            sb_magic: btf.member_offset("super_block", "s_magic")?,
            sb_root: btf.member_offset("super_block", "s_root")?,
            proc_pid_from_inode: btf.member_offset("proc_inode", "pid")? as i32
                - btf.member_offset("proc_inode", "vfs_inode")? as i32,
            pid_level: btf.member_offset("pid", "level")?,
            pid_numbers: btf.member_offset("pid", "numbers")?,
            upid_size: btf.struct_size("upid")?,
            upid_nr: btf.member_offset("upid", "nr")?,
            task_group_leader: btf.member_offset("task_struct", "group_leader")?,
            task_comm: btf.member_offset("task_struct", "comm")?,
            task_thread_pid: btf.member_offset("task_struct", "thread_pid")?,
            valid: 1,
        })
    };
    match read() {
        Ok(o) => {
            debug!("fd kind / pid namespace offsets from BTF: {o:?}");
            o
        }
        Err(e) => {
            warn!("cannot check fd kinds or pid namespaces on this kernel ({e}); see `pidfd-trace check`");
            TruthOffsets::default()
        }
    }
}

/// Offsets for the target facts of pidfd_getfd / pidfd_send_signal (risk.rs in the kernel
/// programs). Needs the fd-table offsets too; without either, `risk` stays empty and
/// `file_kind` null, and the start-up log says so.
fn risk_offsets(btf: &Btf) -> RiskOffsets {
    let read = || -> Result<RiskOffsets, crate::btf::BtfError> {
        let m = |s: &str, p: &str| btf.member_offset(s, p);
        Ok(RiskOffsets {
            pid_tasks: m("pid", "tasks")?,
            task_pid_links: m("task_struct", "pid_links")?,
            task_flags: m("task_struct", "flags")?,
            task_exit_state: m("task_struct", "exit_state")?,
            task_mm: m("task_struct", "mm")?,
            task_signal: m("task_struct", "signal")?,
            signal_flags: m("signal_struct", "flags")?,
            signal_nr_threads: m("signal_struct", "nr_threads")?,
            task_real_cred: m("task_struct", "real_cred")?,
            task_cred: m("task_struct", "cred")?,
            cred_uid: m("cred", "uid")?,
            cred_euid: m("cred", "euid")?,
            cred_suid: m("cred", "suid")?,
            cred_fsuid: m("cred", "fsuid")?,
            task_cgroups: m("task_struct", "cgroups")?,
            css_set_dfl_cgrp: m("css_set", "dfl_cgrp")?,
            cgroup_kn: m("cgroup", "kn")?,
            kernfs_node_id: m("kernfs_node", "id")?,
            file_dentry: m("file", "f_path")? + m("path", "dentry")?,
            dentry_name: m("dentry", "d_name")? + m("qstr", "name")?,
            inode_i_mode: m("inode", "i_mode")?,
            inode_i_ino: m("inode", "i_ino")?,
            inode_i_sb: m("inode", "i_sb")?,
            sb_s_magic: m("super_block", "s_magic")?,
            sb_s_dev: m("super_block", "s_dev")?,
            file_mnt: m("file", "f_path")? + m("path", "mnt")?,
            dentry_parent: m("dentry", "d_parent")?,
            mount_mnt: m("mount", "mnt")?,
            mount_parent: m("mount", "mnt_parent")?,
            mount_mountpoint: m("mount", "mnt_mountpoint")?,
            mount_mnt_root: m("mount", "mnt")? + m("vfsmount", "mnt_root")?,
            task_last_siginfo: m("task_struct", "last_siginfo")?,
            siginfo_code: m("kernel_siginfo", "si_code")?,
            // 6.15 renamed the parent pointer (RCU-protected since).
            kn_parent: m("kernfs_node", "parent").or_else(|_| m("kernfs_node", "__parent"))?,
            kn_name: m("kernfs_node", "name")?,
            inode_i_nlink: m("inode", "i_nlink")?,
            valid: 1,
        })
    };
    match read() {
        Ok(o) => {
            debug!("risk offsets from BTF: {o:?}");
            o
        }
        Err(e) => {
            warn!(
                "cannot read pidfd targets in the kernel on this kernel ({e}); events carry no risk, file_kind or file_path"
            );
            RiskOffsets::default()
        }
    }
}

/// For the `__fput` release hook (6.9 – 7.0): the address of `pidfs_file_operations` from
/// /proc/kallsyms and the offset of `file.f_op` from BTF. (0, 0) when either is unknown: the
/// hook then recognises pidfs files by their superblock magic instead.
fn pidfs_fops(btf: &Btf) -> (u64, u32) {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    match (Kallsyms::data_address(&text, "pidfs_file_operations"), btf.member_offset("file", "f_op")) {
        (Some(addr), Ok(off)) => (addr, off),
        _ => {
            debug!(
                "pidfs_file_operations not in /proc/kallsyms (or file.f_op not in BTF): pidfs files are recognised by magic"
            );
            (0, 0)
        }
    }
}

/// `pidfd-trace bench-floor` (for `cargo xtask bench`): loads only the floor program, one
/// per-CPU counter bump, and attaches it to each `(category, name)` tracepoint. The programs
/// stay attached while the returned handle lives.
pub fn load_floor(tracepoints: &[(String, String)]) -> Result<aya::Ebpf, LoadError> {
    const FLOOR: &str = "pidfd_floor";
    let mut loader = aya::EbpfLoader::new();
    let (_, object) = object_for_kernel(&mut loader)?;
    let mut ebpf = loader.load(&object)?;
    let prog: &mut aya::programs::TracePoint = ebpf
        .program_mut(FLOOR)
        .ok_or_else(|| LoadError::MissingProgram(FLOOR.into()))?
        .try_into()
        .map_err(|err| LoadError::Load { name: FLOOR.into(), err: Box::new(err) })?;
    prog.load().map_err(|err| LoadError::Load { name: FLOOR.into(), err: Box::new(err) })?;
    for (category, name) in tracepoints {
        prog.attach(category, name).map_err(|err| LoadError::Attach {
            name: FLOOR.into(),
            target: format!("{category}:{name}"),
            err: Box::new(err),
        })?;
    }
    Ok(ebpf)
}

/// One line for an error chain whose verifier log runs to hundreds of lines: the first line
/// and, when there are more, the last non-empty one, which is where the verifier says why it
/// refused (the first is often an unrelated note such as "reg type unsupported for arg#0").
fn one_line(e: &str) -> String {
    let first: String = e.lines().next().unwrap_or(e).chars().take(200).collect();
    match e.lines().skip(1).filter(|l| !l.trim().is_empty()).last() {
        Some(last) => format!("{first} … {}", last.trim().chars().take(200).collect::<String>()),
        None => first,
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_keeps_the_verifiers_last_word() {
        let log = "loading program p failed: Verifier output: reg type unsupported for arg#0 function p#68\n\
                   0: (bf) r6 = r1\n...\n\nBPF program is too large. Processed 1000001 insn\n";
        assert_eq!(
            one_line(log),
            "loading program p failed: Verifier output: reg type unsupported for arg#0 function p#68 … BPF program is too large. Processed 1000001 insn"
        );
        assert_eq!(one_line("just this"), "just this");
    }
}

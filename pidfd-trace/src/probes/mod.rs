//! The kernel boundary: the only module that names aya. It probes which program types this
//! kernel loads, loads the kernel programs with this kernel's offsets, attaches them as the
//! plan says, and hands out what the agent reads: the event ring and the kernel log channel
//! (ring.rs), a `Counters` snapshot of the per-CPU maps, and the map fd the privilege drop
//! tests reading with (plus the raw bpf() look-up that test makes).
mod ring;

pub use ring::{EventRing, KernelLog};
use std::collections::HashSet;

use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntry, FExit, KProbe, TracePoint},
};
use log::{debug, warn};
use pidfd_trace_common::{CounterKey, FdPidOffsets, PidsLimitOffsets, RiskOffsets, globals, risk, stats};

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
    /// aya's view of the kernel BTF, needed to load fentry/fexit; read on first use.
    aya_btf: Option<aya::Btf>,
    loaded: HashSet<&'static str>,
}

impl Probes {
    /// Loads the object, attaches the syscall tracepoints, then tries each function hook's
    /// candidate modes in order, recording in `plan` what was chosen and why the others
    /// were refused.
    pub fn load(opts: &LoadOptions<'_>, plan: &mut [HookPlan], fns: &[FnHook]) -> Result<Self, LoadError> {
        let pids = pids_limit_offsets(opts.btf);
        let fd_pid = fd_pid_offsets(opts.btf);
        let risk = risk_offsets(opts.btf);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::TP_ARG0, &opts.layout.arg0, true)
            .override_global(globals::TP_RET, &opts.layout.ret, true)
            .override_global(globals::PIDS_LIMIT, &pids, true)
            .override_global(globals::FD_PID, &fd_pid, true)
            .override_global(globals::RISK, &risk, true);
        if let Some(bytes) = opts.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let ebpf = loader.load(OBJECT)?;
        let mut probes = Probes { ebpf, attached: Vec::new(), aya_btf: None, loaded: HashSet::new() };
        for hook in plan.iter() {
            if hook.chosen == Some(AttachMode::Tracepoint) {
                for dir in ["enter", "exit"] {
                    probes.attach_tracepoint(&format!("sys_{dir}_{}", hook.hook))?;
                }
                probes.attached.push(Attached { hook: hook.hook, mode: AttachMode::Tracepoint });
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
        Ok(probes)
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

    fn attach_tracepoint(&mut self, name: &str) -> Result<(), LoadError> {
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::MissingProgram(name.into()))?
            .try_into()
            .map_err(|err| LoadError::Load { name: name.into(), err: Box::new(err) })?;
        prog.load().map_err(|err| LoadError::Load { name: name.into(), err: Box::new(err) })?;
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
        Ok(Counters { outcomes: self.outcomes()?, stats: self.stats()?, risky: self.risky()? })
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
    /// Returns (entries kept, entries removed).
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

/// `pidfd-trace bench-floor` (for `cargo xtask bench`): loads only the floor program, one
/// per-CPU counter bump, and attaches it to each `(category, name)` tracepoint. The programs
/// stay attached while the returned handle lives.
pub fn load_floor(tracepoints: &[(String, String)]) -> Result<aya::Ebpf, LoadError> {
    const FLOOR: &str = "pidfd_floor";
    let mut ebpf = aya::EbpfLoader::new().load(OBJECT)?;
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

/// The first line of an error chain (verifier logs run to hundreds of lines).
fn one_line(e: &str) -> String {
    e.lines().next().unwrap_or(e).chars().take(200).collect()
}

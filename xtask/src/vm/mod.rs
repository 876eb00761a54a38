//! `cargo xtask vm`: run the pidfd suite inside Debian cloud kernels (amd64 5.10 to 7.3, arm64
//! 6.1, 6.12, 7.2 and 7.3) under qemu TCG and print one scenario × kernel × arch × mode table.
//!
//! Layout under `<root>/target/vm/` (git-ignored):
//! - `kernels/<arch>/<series>/vmlinuz` and `.../package` (cache, see [`kernels::ensure_kernels`])
//! - `busybox/<arch>/busybox` (arm64: Debian's busybox-static, fetched once)
//! - `<arch>/initramfs/` (staging) and `<arch>/initramfs.cpio.gz` (rebuilt every run)
//! - `logs/<arch>-<series>.log` (full serial console of the last run) and
//!   `logs/<arch>-<series>.boot1.log` (the first boot's, when its kernel crashed before the
//!   suite and the guest was booted once more: see `boot_one`)
//! - `matrix.md` (the table of the last run)

mod initramfs;
mod kernels;
mod qemu;
mod report;

pub use kernels::Arch;

use anyhow::{Context, Result, anyhow, bail};
use kernels::KernelSpec;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Kernel series to boot (comma separated: 5.10, 6.1, 6.12, 6.17, 6.18, 6.19, 7.0, 7.1,
    /// 7.2, 7.3; `7.3/arm64` names one architecture) or all
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Guest architectures (comma separated: amd64, arm64) or all
    #[arg(long, default_value = "all")]
    pub arch: String,
    /// Modes to run in each guest (comma separated), default: fentry,kprobe,tracepoint
    #[arg(long, default_value = "fentry,kprobe,tracepoint")]
    pub modes: String,
    /// Per-guest timeout in seconds (arm64 guests, emulated more slowly, get twice this)
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Guests booted at the same time (each is a qemu with --smp vCPUs)
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// vCPUs per guest
    #[arg(long, default_value_t = 2)]
    pub smp: u32,
    /// amd64 agent and workload binaries to put in the guest (default: target/release)
    #[arg(long)]
    pub agent: Option<PathBuf>,
    #[arg(long)]
    pub workload: Option<PathBuf>,
    /// arm64 agent and workload (static aarch64 builds; `cargo xtask vm` cross-builds them)
    #[arg(long)]
    pub agent_arm64: Option<PathBuf>,
    #[arg(long)]
    pub workload_arm64: Option<PathBuf>,
}

impl Options {
    /// The defaults `cargo xtask test` runs: every kernel, both architectures, every mode.
    pub fn full_matrix(kernel: &str) -> Options {
        Options {
            kernel: kernel.to_string(),
            arch: "all".into(),
            modes: "fentry,kprobe,tracepoint".into(),
            // 180 s per mode: the 5.10 guest (slowest under TCG) took 121-180 s per mode on a
            // loaded host once every-path and close tracking added scenarios.
            timeout: 600,
            // Measured on the 2-core machine: two guests at once each took about as long as
            // one alone (63-117 s against 70-75 s), so two at a time nearly halve the matrix.
            jobs: 2,
            smp: 2,
            agent: None,
            workload: None,
            agent_arm64: None,
            workload_arm64: None,
        }
    }

    /// The architectures the options select (for the caller's builds).
    pub fn archs(&self) -> Result<Vec<Arch>> {
        let mut a: Vec<Arch> = parse_kernels(&self.kernel, &self.arch)?.iter().map(|k| k.arch).collect();
        a.sort();
        a.dedup();
        Ok(a)
    }

    /// Fill in the binaries for every selected architecture: amd64 from the native release
    /// build, arm64 cross-built (static, musl) by `crate::cross`.
    pub fn build_binaries(&mut self, root: &Path) -> Result<()> {
        let archs = self.archs()?;
        if archs.contains(&Arch::Amd64) && (self.agent.is_none() || self.workload.is_none()) {
            let b = crate::build(root)?;
            self.agent.get_or_insert(b.agent);
            self.workload.get_or_insert(b.workload);
        }
        if archs.contains(&Arch::Arm64) && (self.agent_arm64.is_none() || self.workload_arm64.is_none()) {
            let b = crate::cross::build(root, Arch::Arm64.musl_target())?;
            self.agent_arm64.get_or_insert(b.agent);
            self.workload_arm64.get_or_insert(b.workload);
        }
        Ok(())
    }
}

/// Install the host packages the guests need and fetch the arm64 busybox (cached);
/// idempotent. The kernels are resolved and fetched by [`run`] itself (once per run: the
/// archive is asked for the newest build of each series every time).
pub fn setup(root: &Path) -> Result<()> {
    kernels::ensure_host_packages()?;
    kernels::busybox(root, Arch::Arm64)?;
    Ok(())
}

fn parse_archs(arg: &str) -> Result<Vec<Arch>> {
    if arg.trim() == "all" {
        return Ok(Arch::ALL.to_vec());
    }
    let mut out = Vec::new();
    for w in arg.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let a = Arch::parse(w)
            .ok_or_else(|| anyhow!("unknown architecture '{w}': choose amd64, arm64 or all"))?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        bail!("--arch is empty: choose amd64, arm64 or all");
    }
    Ok(out)
}

fn known_series() -> String {
    let mut v: Vec<&str> = Vec::new();
    for k in &kernels::KERNELS {
        if !v.contains(&k.series) {
            v.push(k.series);
        }
    }
    v.join(", ")
}

/// The kernels the options select, in table order.
fn parse_kernels(kernel: &str, arch: &str) -> Result<Vec<KernelSpec>> {
    let archs = parse_archs(arch)?;
    if kernel.trim() == "all" {
        return Ok(kernels::KERNELS.iter().copied().filter(|k| archs.contains(&k.arch)).collect());
    }
    let mut out: Vec<KernelSpec> = Vec::new();
    for w in kernel.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let (series, only) = match w.split_once('/') {
            Some((s, a)) => (
                s,
                Some(Arch::parse(a).ok_or_else(|| anyhow!("unknown architecture in '{w}': amd64 or arm64"))?),
            ),
            None => (w, None),
        };
        let found: Vec<KernelSpec> = kernels::KERNELS
            .iter()
            .copied()
            .filter(|k| k.series == series && only.is_none_or(|a| a == k.arch) && archs.contains(&k.arch))
            .collect();
        if found.is_empty() {
            bail!(
                "unknown kernel '{w}' for --arch {arch}: choose from {} (arm64: {}) or all",
                known_series(),
                kernels::KERNELS
                    .iter()
                    .filter(|k| k.arch == Arch::Arm64)
                    .map(|k| k.series)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    if out.is_empty() {
        bail!("--kernel is empty: choose from {} or all", known_series());
    }
    // table order: amd64 first, then by the KERNELS list
    let pos = |k: &KernelSpec| kernels::KERNELS.iter().position(|x| x == k).unwrap_or(usize::MAX);
    out.sort_by_key(pos);
    Ok(out)
}

fn parse_modes(arg: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for m in arg.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        if !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("bad mode '{m}': only letters, digits, '-' and '_' are allowed");
        }
        if !out.iter().any(|o| o == m) {
            out.push(m.to_string());
        }
    }
    if out.is_empty() {
        bail!("--modes is empty");
    }
    Ok(out)
}

fn binary(given: &Option<PathBuf>, what: &str, flag: &str) -> Result<PathBuf> {
    let Some(p) = given else {
        bail!("{what} binary not given (--{flag})");
    };
    if !p.is_file() {
        bail!("{what} binary {} not found (--{flag})", p.display());
    }
    p.canonicalize().with_context(|| format!("cannot resolve {}", p.display()))
}

/// One kernel of the run: booted (with what it reported) or unavailable (with why).
pub(crate) struct KernelRun {
    spec: KernelSpec,
    package: String,
    log: PathBuf,
    boot: Option<qemu::Boot>,
    guest: report::Guest,
    /// Why this kernel was not booted (not in the archive any more, ...).
    unavailable: Option<String>,
    problems: Vec<String>,
    prototypes: report::Prototypes,
    /// Show the console tail (guest-level trouble) rather than only per-mode stderr.
    console_tail: bool,
    /// The first boot crashed before the suite and this is the second (see [`boot_one`]).
    retried: Option<Retried>,
}

/// Boot every requested kernel, run the suite in each mode, print and write the matrix.
/// Errors if any guest failed or any scenario failed.
pub fn run(opts: &Options, root: &Path) -> Result<()> {
    let t0 = Instant::now();
    let specs = parse_kernels(&opts.kernel, &opts.arch)?;
    let modes = parse_modes(&opts.modes)?;
    if opts.timeout < 10 {
        bail!("--timeout {} is too short: a TCG guest needs about 10 s just to boot", opts.timeout);
    }
    if opts.jobs == 0 || opts.smp == 0 {
        bail!("--jobs and --smp must be at least 1");
    }
    let mut archs: Vec<Arch> = specs.iter().map(|k| k.arch).collect();
    archs.dedup();
    let mut bins: BTreeMap<Arch, (PathBuf, PathBuf)> = BTreeMap::new();
    for a in &archs {
        let (agent, workload, fa, fw) = match a {
            Arch::Amd64 => (&opts.agent, &opts.workload, "agent", "workload"),
            Arch::Arm64 => (&opts.agent_arm64, &opts.workload_arm64, "agent-arm64", "workload-arm64"),
        };
        bins.insert(*a, (binary(agent, "agent", fa)?, binary(workload, "workload", fw)?));
    }

    kernels::ensure_host_packages()?;
    let resolved = kernels::ensure_kernels(root, &specs)?;
    for (spec, r) in &resolved {
        match r {
            Ok(k) => println!("vm: {}", kernels::describe(k, root)),
            Err(e) => println!("vm: kernel {} NOT AVAILABLE (reported in the table): {e}", spec.id()),
        }
    }

    let vm_dir = root.join("target/vm");
    let logs = vm_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut initrds: BTreeMap<Arch, PathBuf> = BTreeMap::new();
    for (a, (agent, workload)) in &bins {
        let t = timeout_for(opts, *a);
        let per_mode = (t.saturating_sub(60) / modes.len() as u64).max(30);
        let busybox = kernels::busybox(root, *a)?;
        let initrd = initramfs::build(
            &vm_dir.join(a.deb()),
            &initramfs::Inputs {
                busybox: &busybox,
                agent,
                workload,
                modes: &modes,
                per_mode_timeout: per_mode,
                check_timeout: 60,
            },
        )?;
        println!(
            "vm: {a} initramfs {} ({} KiB); agent {}, workload {}; modes {}",
            rel(root, &initrd).display(),
            std::fs::metadata(&initrd).map(|m| m.len() / 1024).unwrap_or(0),
            agent.display(),
            workload.display(),
            modes.join(",")
        );
        initrds.insert(*a, initrd);
    }

    // Boot the available kernels, `jobs` at a time; keep the table order.
    let mut runs: Vec<Option<KernelRun>> = Vec::new();
    let mut queue: VecDeque<(usize, kernels::CachedKernel)> = VecDeque::new();
    for (i, (spec, r)) in resolved.into_iter().enumerate() {
        match r {
            Ok(k) => {
                queue.push_back((i, k));
                runs.push(None);
            }
            Err(why) => runs.push(Some(KernelRun {
                spec,
                package: "-".into(),
                log: PathBuf::new(),
                boot: None,
                guest: report::Guest::default(),
                unavailable: Some(why),
                problems: Vec::new(),
                prototypes: report::Prototypes::NotRun,
                console_tail: false,
                retried: None,
            })),
        }
    }
    let queue = Mutex::new(queue);
    let done: Mutex<Vec<(usize, Result<KernelRun>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.min(queue.lock().unwrap().len()).max(1) {
            s.spawn(|| {
                loop {
                    let Some((i, k)) = queue.lock().unwrap().pop_front() else { break };
                    let r = boot_one(opts, &k, &initrds[&k.spec.arch], &logs, &modes);
                    done.lock().unwrap().push((i, r));
                }
            });
        }
    });
    for (i, r) in done.into_inner().unwrap() {
        runs[i] = Some(r?);
    }
    let runs: Vec<KernelRun> = runs.into_iter().flatten().collect();

    let wall = t0.elapsed();
    print_summary(root, &runs, &modes, wall);
    let table = report::markdown(&runs_view(&runs), &modes, wall, opts.jobs, opts.smp);
    let md = vm_dir.join("matrix.md");
    std::fs::write(&md, &table).with_context(|| format!("cannot write {}", md.display()))?;
    println!("\n==== matrix (also in {}) ====\n{table}", rel(root, &md).display());

    let failed_guests = runs.iter().filter(|r| !r.problems.is_empty()).count();
    let unavailable = runs.iter().filter(|r| r.unavailable.is_some()).count();
    let failed_cells: usize = runs
        .iter()
        .flat_map(|r| &r.guest.modes)
        .flat_map(|m| &m.results)
        .filter(|s| s.result != "pass" && s.result != "skip")
        .count();
    println!(
        "vm: {} kernel(s) booted, {unavailable} unavailable, wall time {:.1} s ({} job(s), {} vCPU(s) each)",
        runs.len() - unavailable,
        wall.as_secs_f64(),
        opts.jobs,
        opts.smp
    );
    if failed_guests > 0 || failed_cells > 0 {
        bail!(
            "vm matrix failed: {failed_guests} guest(s) with problems, {failed_cells} failing scenario result(s)"
        );
    }
    if unavailable == runs.len() {
        bail!("vm matrix: no kernel could be booted");
    }
    Ok(())
}

fn timeout_for(opts: &Options, arch: Arch) -> u64 {
    match arch {
        Arch::Amd64 => opts.timeout,
        Arch::Arm64 => opts.timeout * 2,
    }
}

/// A first boot whose guest kernel crashed before the suite (see [`report::pre_suite_crash`]).
pub(crate) struct Retried {
    /// The crash, one line: first Oops/BUG/panic line, where, panic line.
    crash: String,
    /// That boot's console, kept beside the second boot's: `<arch>-<series>.boot1.log`.
    log: PathBuf,
    seconds: f64,
}

fn boot_one(
    opts: &Options,
    k: &kernels::CachedKernel,
    initrd: &Path,
    logs: &Path,
    modes: &[String],
) -> Result<KernelRun> {
    let id = k.spec.id();
    let timeout = timeout_for(opts, k.spec.arch);
    let log = logs.join(format!("{}-{}.log", k.spec.arch, k.spec.series));
    let boot1_log = logs.join(format!("{}-{}.boot1.log", k.spec.arch, k.spec.series));
    // a kept first console belongs to the run that made it
    let _ = std::fs::remove_file(&boot1_log);
    let guest_spec = qemu::Guest { label: &id, arch: k.spec.arch, smp: opts.smp };
    println!("vm [{id}] booting {} (TCG, timeout {timeout} s)", k.package);
    let mut boot = qemu::boot(&guest_spec, &k.vmlinuz, initrd, &log, Duration::from_secs(timeout))?;
    let mut guest = report::parse(&boot.lines);
    let mut retried = None;
    // A guest kernel that crashes before the suite's first marker has not run any program of
    // ours: an emulator or guest-kernel fault, not a result (the 6.18 amd64 guest sometimes
    // oopses on a stale int3 in sched_clock_cpu under TCG, see `qemu_command`). Boot such a
    // guest once more, only once; a crash after the suite started stays a failure.
    if let Some(crash) = report::pre_suite_crash(&guest).map(|c| c.to_string()) {
        std::fs::rename(&log, &boot1_log)
            .with_context(|| format!("cannot keep {} as {}", log.display(), boot1_log.display()))?;
        println!(
            "vm [{id}] guest kernel crashed before the suite started (an infrastructure fault, not a \
             test result), booting {} once more; first console kept in {}: {crash}",
            k.package,
            boot1_log.display()
        );
        retried = Some(Retried { crash, log: boot1_log, seconds: boot.elapsed.as_secs_f64() });
        boot = qemu::boot(&guest_spec, &k.vmlinuz, initrd, &log, Duration::from_secs(timeout))?;
        guest = report::parse(&boot.lines);
    }
    let mut run = KernelRun {
        spec: k.spec,
        package: k.package.clone(),
        log,
        boot: Some(boot),
        guest,
        unavailable: None,
        problems: Vec::new(),
        prototypes: report::Prototypes::NotRun,
        console_tail: false,
        retried,
    };
    judge(&mut run, modes, timeout);
    println!(
        "vm [{id}] {} in {:.1} s{}",
        if run.problems.is_empty() { "finished" } else { "FAILED" },
        run.boot.as_ref().map(|b| b.elapsed.as_secs_f64()).unwrap_or(0.0),
        run.guest.init_at.map(|t| format!(" (init after {t:.1} s)")).unwrap_or_default()
    );
    Ok(run)
}

fn runs_view(runs: &[KernelRun]) -> Vec<report::KernelView<'_>> {
    runs.iter()
        .map(|r| report::KernelView {
            series: r.spec.series,
            arch: r.spec.arch.deb(),
            package: &r.package,
            uname: r.guest.uname.as_deref(),
            btf_hdr_len: r.guest.btf_hdr_len(),
            guest: &r.guest,
            unavailable: r.unavailable.as_deref(),
            problems: &r.problems,
            prototypes: &r.prototypes,
            seconds: r.boot.as_ref().map(|b| b.elapsed.as_secs_f64()),
            retried: r.retried.as_ref().map(|x| x.crash.as_str()),
        })
        .collect()
}

fn rel<'a>(root: &Path, p: &'a Path) -> &'a Path {
    p.strip_prefix(root).unwrap_or(p)
}

/// Decide what went wrong in one guest.
fn judge(run: &mut KernelRun, modes: &[String], timeout: u64) {
    let g = &run.guest;
    let Some(b) = &run.boot else { return };
    let mut p = Vec::new();
    let mut guest_level = false;
    if b.timed_out {
        p.push(format!("timed out after {timeout} s (guest hung or too slow); qemu killed"));
        guest_level = true;
    }
    if let Some(panic) = &g.panic {
        p.push(format!("guest kernel panic: {panic}"));
        guest_level = true;
    }
    for o in g.oops.iter().take(3) {
        p.push(format!("guest kernel BUG/Oops: {o}"));
        guest_level = true;
    }
    if let Some(w) = report::warned_during_run(g) {
        p.push(w);
    }
    if let Some(st) = &b.status
        && !st.success()
        && !b.timed_out
    {
        let err = b.qemu_stderr.lines().last().unwrap_or("").trim().to_string();
        p.push(format!(
            "qemu exited with {st}{}",
            if err.is_empty() { String::new() } else { format!(": {err}") }
        ));
        guest_level = true;
    }
    if g.init_at.is_none() {
        p.push("the guest's /init never started (no init marker on the console)".into());
        guest_level = true;
    } else {
        let mount = |k: &str| g.mounts.iter().find(|(m, _)| m == k).map(|(_, v)| v.as_str());
        if g.mounts.is_empty() {
            p.push("no mount report from the guest".into());
            guest_level = true;
        } else {
            for k in ["tracefs", "bpffs", "cgroup2"] {
                let state = mount(k);
                if state != Some("ok") {
                    p.push(format!("guest could not mount {k} ({})", state.unwrap_or("not reported")));
                    guest_level = true;
                }
            }
        }
        if mount("pids") == Some("none") {
            p.push("guest has no pids cgroup controller (neither cgroup2 nor v1)".into());
        }
    }
    for m in modes {
        match g.modes.iter().find(|r| &r.mode == m) {
            None => {
                if g.init_at.is_some() {
                    p.push(format!("mode {m}: the suite never started"));
                    guest_level = true;
                }
            }
            Some(r) if !r.end_seen => {
                p.push(format!("mode {m}: missing end marker (guest died or hung during the suite)"));
                guest_level = true;
            }
            Some(r) => {
                match r.rc {
                    Some(0) => {}
                    Some(137) => p.push(format!("mode {m}: suite killed by the in-guest timeout (rc=137)")),
                    Some(rc) => p.push(format!("mode {m}: suite exited with rc={rc}")),
                    None => p.push(format!("mode {m}: suite exit code not reported")),
                }
                if r.results.is_empty() {
                    p.push(format!("mode {m}: the suite printed no result lines"));
                }
                for s in &r.results {
                    if !matches!(s.result.as_str(), "pass" | "fail" | "skip") {
                        p.push(format!("mode {m}: scenario {} has unknown result '{}'", s.name, s.result));
                    }
                }
            }
        }
    }
    if g.init_at.is_some() && !b.timed_out {
        match &g.check {
            None => {
                p.push("`pidfd-trace check` never ran".into());
                guest_level = true;
            }
            Some(c) if !c.end_seen => {
                p.push("`pidfd-trace check`: missing end marker".into());
                guest_level = true;
            }
            Some(c) if c.rc != Some(0) => p.push(format!(
                "`pidfd-trace check --output json` exited with rc={}",
                c.rc.map(|r| r.to_string()).unwrap_or_else(|| "?".into())
            )),
            Some(c) => {
                if let Some(bad) = report::entry_state(c, run.spec.series) {
                    p.push(bad);
                }
                run.prototypes = report::prototypes(c);
                if let report::Prototypes::Bad(bad) = &run.prototypes {
                    for b in bad {
                        p.push(format!("prototypes: {b}"));
                    }
                }
            }
        }
        if g.done_at.is_none() && !guest_level {
            p.push("the guest did not reach the end of /init".into());
            guest_level = true;
        }
    }
    if let Some(r) = &run.retried
        && report::pre_suite_crash(g).is_some()
    {
        p.insert(
            0,
            format!(
                "the guest kernel crashed before the suite on both boots (first boot: {}, console in {})",
                r.crash,
                r.log.display()
            ),
        );
    }
    run.problems = p;
    run.console_tail = guest_level;
}

fn print_summary(root: &Path, runs: &[KernelRun], modes: &[String], total: Duration) {
    let mut columns = Vec::new();
    for r in runs {
        for m in modes {
            let results =
                r.guest.modes.iter().find(|x| &x.mode == m).map(|x| x.results.clone()).unwrap_or_default();
            columns.push(report::Column { kernel: r.spec.id(), mode: m.clone(), results });
        }
    }
    println!("\n==== pidfd suite: scenario x kernel/mode ====");
    print!("{}", report::matrix(&columns));

    let mut fails = Vec::new();
    for r in runs {
        for m in &r.guest.modes {
            for s in &m.results {
                if s.result != "pass" && s.result != "skip" {
                    fails.push(format!(
                        "  {} {} {}: {} {}",
                        r.spec.id(),
                        m.mode,
                        s.name,
                        report::cell(&s.result),
                        s.detail
                    ));
                }
            }
        }
    }
    if !fails.is_empty() {
        println!("\nfailing scenarios:");
        for f in &fails {
            println!("{f}");
        }
    }

    println!("\n==== attach plan (pidfd-trace check) ====");
    for r in runs {
        match &r.guest.check {
            Some(c) if c.end_seen => {
                let plan = report::attach_plan(c);
                println!("{} ({}):", r.spec.id(), r.guest.uname.as_deref().unwrap_or("?"));
                if plan.is_empty() {
                    println!("  (no output)");
                }
                for l in plan {
                    println!("  {l}");
                }
            }
            _ => println!("{}: (not available)", r.spec.id()),
        }
    }

    println!("\n==== guests ====");
    for r in runs {
        let g = &r.guest;
        let Some(boot) = &r.boot else {
            println!("{:<11} NOT BOOTED: {}", r.spec.id(), r.unavailable.as_deref().unwrap_or("?"));
            continue;
        };
        let mounts: Vec<String> = g.mounts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let suites: Vec<String> = g
            .modes
            .iter()
            .map(|m| match m.ended {
                Some(e) => format!("{}={:.1}s", m.mode, e - m.started),
                None => format!("{}=unfinished", m.mode),
            })
            .collect();
        if let Some(x) = &r.retried {
            println!(
                "{:<11} first boot ({:.1}s) crashed before the suite, booted again: {} (log {})",
                r.spec.id(),
                x.seconds,
                x.crash,
                rel(root, &x.log).display()
            );
        }
        println!(
            "{:<11} {:<48} uname {}  init {}  total {:.1}s  btf hdr_len {}  [{}]  suites: {}  log {}",
            r.spec.id(),
            r.package,
            g.uname.as_deref().unwrap_or("?"),
            g.init_at.map(|t| format!("{t:.1}s")).unwrap_or_else(|| "never".into()),
            boot.elapsed.as_secs_f64(),
            g.btf_hdr_len().map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
            if mounts.is_empty() { "no mount report".into() } else { mounts.join(" ") },
            if suites.is_empty() { "none".into() } else { suites.join(" ") },
            rel(root, &r.log).display()
        );
    }

    for r in runs.iter().filter(|r| !r.problems.is_empty()) {
        println!("\n==== {} FAILED ====", r.spec.id());
        for p in &r.problems {
            println!("  - {p}");
        }
        for m in &r.guest.modes {
            let bad = m.rc != Some(0) || m.results.iter().any(|s| s.result != "pass" && s.result != "skip");
            if bad && !m.stderr.is_empty() {
                println!("  -- stderr of the suite in mode {} (last 40 lines) --", m.mode);
                for l in tail(&m.stderr, 40) {
                    println!("  | {l}");
                }
            }
            if bad && !m.other.is_empty() && !r.console_tail {
                println!("  -- non-result stdout of the suite in mode {} (last 20 lines) --", m.mode);
                for l in tail(&m.other, 20) {
                    println!("  | {l}");
                }
            }
        }
        if let Some(c) = &r.guest.check
            && c.rc != Some(0)
            && !c.stderr.is_empty()
        {
            println!("  -- stderr of check (last 40 lines) --");
            for l in tail(&c.stderr, 40) {
                println!("  | {l}");
            }
        }
        if let Some(boot) = &r.boot
            && (r.console_tail || r.guest.modes.is_empty())
        {
            let lines: Vec<String> = boot.lines.iter().map(|(_, l)| l.clone()).collect();
            println!("  -- last 40 console lines ({}) --", rel(root, &r.log).display());
            for l in tail(&lines, 40) {
                println!("  | {l}");
            }
            if !boot.qemu_stderr.trim().is_empty() {
                println!("  -- qemu stderr --");
                for l in boot.qemu_stderr.lines().take(20) {
                    println!("  | {l}");
                }
            }
        }
    }
    println!("\nvm: {} kernel(s) in {:.1} s", runs.len(), total.as_secs_f64());
}

fn tail(lines: &[String], n: usize) -> &[String] {
    &lines[lines.len().saturating_sub(n)..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_mode_args() {
        let ids = |k: &str, a: &str| -> Vec<String> {
            parse_kernels(k, a).unwrap().iter().map(|k| k.id()).collect()
        };
        assert_eq!(ids("all", "all").len(), kernels::KERNELS.len());
        assert_eq!(ids("all", "arm64"), vec!["6.1/arm64", "6.12/arm64", "7.2/arm64", "7.3/arm64"]);
        assert_eq!(ids("6.12, 5.10,6.12", "amd64"), vec!["5.10/amd64", "6.12/amd64"]);
        assert_eq!(ids("7.3", "all"), vec!["7.3/amd64", "7.3/arm64"]);
        assert_eq!(ids("7.3/arm64,5.10", "all"), vec!["5.10/amd64", "7.3/arm64"]);
        assert!(parse_kernels("4.19", "all").is_err());
        assert!(parse_kernels("5.10", "arm64").is_err());
        assert!(parse_kernels("7.1", "sparc").is_err());
        assert_eq!(parse_modes("fexit,,kprobe").unwrap(), vec!["fexit", "kprobe"]);
        assert!(parse_modes("fexit;reboot").is_err());
    }
}

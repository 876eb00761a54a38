//! `cargo xtask vm`: run the pidfd suite inside Debian cloud kernels (5.10, 6.1, 6.12) under
//! qemu TCG and print a scenario × kernel×mode matrix.
//!
//! Layout under `<root>/target/vm/` (git-ignored):
//! - `kernels/<version>/vmlinuz` and `kernels/<version>/package` (cache, see [`setup`])
//! - `initramfs/` (staging) and `initramfs.cpio.gz` (rebuilt every run)
//! - `logs/<version>.log` (full serial console of the last run)

mod initramfs;
mod kernels;
mod qemu;
mod report;

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Kernel(s) to boot: 5.10, 6.1, 6.12 or all
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Modes to run in each guest (comma separated), default: fentry,kprobe,tracepoint
    #[arg(long, default_value = "fentry,kprobe,tracepoint")]
    pub modes: String,
    /// Per-guest timeout in seconds (each mode gets an equal share after 60 s for booting;
    /// a 5.10 guest on a loaded 2-core host needed up to 129 s per mode)
    #[arg(long, default_value_t = 660)]
    pub timeout: u64,
    /// Agent binary and workload binary to put in the guest (the lead's build step passes these)
    #[arg(long)]
    pub agent: Option<std::path::PathBuf>,
    #[arg(long)]
    pub workload: Option<std::path::PathBuf>,
}

/// Fetch (cached) every needed host package and kernel; idempotent; prints what it did.
pub fn setup(root: &Path) -> Result<()> {
    kernels::ensure_host_packages()?;
    let all: Vec<&str> = kernels::KERNELS.iter().map(|k| k.version).collect();
    let was_cached: Vec<bool> = all.iter().map(|v| kernels::is_cached(root, v)).collect();
    for (k, cached) in kernels::ensure_kernels(root, &all)?.iter().zip(was_cached) {
        println!(
            "vm setup: {} [{}]",
            kernels::describe(k, root),
            if cached { "already cached" } else { "downloaded" }
        );
    }
    Ok(())
}

fn parse_kernels(arg: &str) -> Result<Vec<&'static str>> {
    let known: Vec<&'static str> = kernels::KERNELS.iter().map(|k| k.version).collect();
    if arg.trim() == "all" {
        return Ok(known);
    }
    let mut out = Vec::new();
    for w in arg.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let v = known
            .iter()
            .copied()
            .find(|k| *k == w)
            .ok_or_else(|| anyhow!("unknown kernel '{w}': choose 5.10, 6.1, 6.12 or all"))?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    if out.is_empty() {
        bail!("--kernel is empty: choose 5.10, 6.1, 6.12 or all");
    }
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

fn binary(given: &Option<PathBuf>, root: &Path, default_name: &str, what: &str) -> Result<PathBuf> {
    let p = match given {
        Some(p) => p.clone(),
        None => root.join("target/release").join(default_name),
    };
    if !p.is_file() {
        if given.is_some() {
            bail!("{what} binary {} not found", p.display());
        }
        bail!("{what} binary not given (--{what}) and {} not found: build it first", p.display());
    }
    p.canonicalize().with_context(|| format!("cannot resolve {}", p.display()))
}

struct KernelRun {
    version: String,
    package: String,
    log: PathBuf,
    boot: qemu::Boot,
    guest: report::Guest,
    problems: Vec<String>,
    /// Show the console tail (guest-level trouble) rather than only per-mode stderr.
    console_tail: bool,
}

/// Boot every requested kernel in turn, run the suite in each mode, print the matrix.
/// Errors if any guest failed or any scenario failed.
pub fn run(opts: &Options, root: &Path) -> Result<()> {
    let t0 = Instant::now();
    let versions = parse_kernels(&opts.kernel)?;
    let modes = parse_modes(&opts.modes)?;
    let agent = binary(&opts.agent, root, "pidfd-trace", "agent")?;
    let workload = binary(&opts.workload, root, "pidfd-workload", "workload")?;
    if opts.timeout < 10 {
        bail!("--timeout {} is too short: a TCG guest needs about 10 s just to boot", opts.timeout);
    }

    kernels::ensure_host_packages()?;
    let cached = kernels::ensure_kernels(root, &versions)?;

    let vm_dir = root.join("target/vm");
    let logs = vm_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let per_mode = (opts.timeout.saturating_sub(60) / modes.len() as u64).max(30);
    let initrd = initramfs::build(
        &vm_dir,
        &initramfs::Inputs {
            agent: &agent,
            workload: &workload,
            modes: &modes,
            per_mode_timeout: per_mode,
            check_timeout: 60,
        },
    )?;
    println!(
        "vm: initramfs {} ({} KiB); agent {}, workload {}; modes {}",
        rel(root, &initrd).display(),
        std::fs::metadata(&initrd).map(|m| m.len() / 1024).unwrap_or(0),
        agent.display(),
        workload.display(),
        modes.join(",")
    );

    let mut runs = Vec::new();
    for k in &cached {
        let log = logs.join(format!("{}.log", k.version));
        println!("vm [{}] booting {} (TCG, timeout {} s)", k.version, k.package, opts.timeout);
        let boot = qemu::boot(&k.version, &k.vmlinuz, &initrd, &log, Duration::from_secs(opts.timeout))?;
        let guest = report::parse(&boot.lines);
        let mut run = KernelRun {
            version: k.version.clone(),
            package: k.package.clone(),
            log,
            boot,
            guest,
            problems: Vec::new(),
            console_tail: false,
        };
        judge(&mut run, &modes, opts.timeout);
        println!(
            "vm [{}] {} in {:.1} s{}",
            run.version,
            if run.problems.is_empty() { "finished" } else { "FAILED" },
            run.boot.elapsed.as_secs_f64(),
            run.guest.init_at.map(|t| format!(" (init after {t:.1} s)")).unwrap_or_default()
        );
        runs.push(run);
    }

    print_summary(root, &runs, &modes, t0.elapsed());
    let failed_guests = runs.iter().filter(|r| !r.problems.is_empty()).count();
    let failed_cells: usize = runs
        .iter()
        .flat_map(|r| &r.guest.modes)
        .flat_map(|m| &m.results)
        .filter(|s| s.result != "pass" && s.result != "skip")
        .count();
    if failed_guests > 0 || failed_cells > 0 {
        bail!(
            "vm matrix failed: {failed_guests} guest(s) with problems, {failed_cells} failing scenario result(s)"
        );
    }
    Ok(())
}

fn rel<'a>(root: &Path, p: &'a Path) -> &'a Path {
    p.strip_prefix(root).unwrap_or(p)
}

/// Decide what went wrong in one guest.
fn judge(run: &mut KernelRun, modes: &[String], timeout: u64) {
    let g = &run.guest;
    let b = &run.boot;
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
            Some(_) => {}
        }
        if g.done_at.is_none() && !guest_level {
            p.push("the guest did not reach the end of /init".into());
            guest_level = true;
        }
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
            columns.push(report::Column { kernel: r.version.clone(), mode: m.clone(), results });
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
                        "  {}/{} {}: {} {}",
                        r.version,
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
                println!("{} ({}):", r.version, r.guest.uname.as_deref().unwrap_or("?"));
                if plan.is_empty() {
                    println!("  (no output)");
                }
                for l in plan {
                    println!("  {l}");
                }
            }
            _ => println!("{}: (not available)", r.version),
        }
    }

    println!("\n==== guests ====");
    for r in runs {
        let g = &r.guest;
        let mounts: Vec<String> = g.mounts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let suites: Vec<String> = g
            .modes
            .iter()
            .map(|m| match m.ended {
                Some(e) => format!("{}={:.1}s", m.mode, e - m.started),
                None => format!("{}=unfinished", m.mode),
            })
            .collect();
        println!(
            "{:<5} {:<48} uname {}  init {}  total {:.1}s  [{}]  suites: {}  log {}",
            r.version,
            r.package,
            g.uname.as_deref().unwrap_or("?"),
            g.init_at.map(|t| format!("{t:.1}s")).unwrap_or_else(|| "never".into()),
            r.boot.elapsed.as_secs_f64(),
            if mounts.is_empty() { "no mount report".into() } else { mounts.join(" ") },
            if suites.is_empty() { "none".into() } else { suites.join(" ") },
            rel(root, &r.log).display()
        );
    }

    for r in runs.iter().filter(|r| !r.problems.is_empty()) {
        println!("\n==== {} FAILED ====", r.version);
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
        if r.console_tail || r.guest.modes.is_empty() {
            let lines: Vec<String> = r.boot.lines.iter().map(|(_, l)| l.clone()).collect();
            println!("  -- last 40 console lines ({}) --", rel(root, &r.log).display());
            for l in tail(&lines, 40) {
                println!("  | {l}");
            }
            if !r.boot.qemu_stderr.trim().is_empty() {
                println!("  -- qemu stderr --");
                for l in r.boot.qemu_stderr.lines().take(20) {
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
        assert_eq!(parse_kernels("all").unwrap(), vec!["5.10", "6.1", "6.12"]);
        assert_eq!(parse_kernels("6.12, 5.10,6.12").unwrap(), vec!["6.12", "5.10"]);
        assert!(parse_kernels("4.19").is_err());
        assert_eq!(parse_modes("fexit,,kprobe").unwrap(), vec!["fexit", "kprobe"]);
        assert!(parse_modes("fexit;reboot").is_err());
    }
}

//! Running commands so that a failure names the command that failed.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Runs `cmd` with inherited stdio; an error names the command and its exit status.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs a `cargo build`, passing its stderr through line by line except what build scripts
/// print as warnings (`warning: pidfd-trace@0.1.0: ...`: aya-build replays the whole nested
/// eBPF build that way, on every build), which is shown only if the build fails. While cargo
/// is silent for `QUIET` (the nested eBPF build says nothing until it ends) it says it is
/// still working.
pub fn cargo_build(cmd: &mut Command) -> Result<()> {
    const QUIET: Duration = Duration::from_secs(15);
    let shown = format!("{cmd:?}");
    let mut child = cmd.stderr(Stdio::piped()).spawn().with_context(|| format!("cannot run {shown}"))?;
    let stderr = child.stderr.take().expect("piped");
    let started = Instant::now();
    let last = Arc::new(Mutex::new(Instant::now()));
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (last, done) = (last.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let mut last = last.lock().unwrap();
                if last.elapsed() >= QUIET && !done.load(Ordering::Relaxed) {
                    let s = started.elapsed().as_secs();
                    eprintln!(
                        "xtask: still building ({}m{:02}s); cargo says nothing while a large crate, or the nested build of the kernel programs, compiles",
                        s / 60,
                        s % 60
                    );
                    *last = Instant::now();
                }
            }
        })
    };
    let mut held = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if is_build_script_output(&line) {
            held.push(line);
        } else {
            eprintln!("{line}");
        }
        *last.lock().unwrap() = Instant::now();
    }
    let status = child.wait().with_context(|| format!("waiting for {shown}"))?;
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    if !status.success() {
        for l in &held {
            eprintln!("{l}");
        }
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// `warning: <package>@<version>: <line>` (a build script's `cargo:warning`) and cargo's
/// closing count of them.
fn is_build_script_output(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("warning: ") else { return false };
    if rest.contains("(build script) generated") {
        return true;
    }
    rest.split_once(": ").is_some_and(|(pkg, _)| pkg.contains('@') && !pkg.contains(' '))
}

/// Runs `cmd` and returns its stdout (trimmed); stderr passes through.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `cmd` runs and exits 0, quietly.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs Debian packages that are missing (apt-get update first if the lists are stale).
pub fn ensure_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let status = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !status.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if install() {
        return Ok(());
    }
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    if !install() {
        bail!("apt-get install {} failed; install them by hand and retry", missing.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_script_lines_are_recognised() {
        assert!(super::is_build_script_output("warning: pidfd-trace@0.1.0: Compiling libc v0.2.177"));
        assert!(super::is_build_script_output("warning: `pidfd-trace` (build script) generated 41 warnings"));
        assert!(!super::is_build_script_output("warning: unused variable: `x`"));
        assert!(!super::is_build_script_output("   Compiling pidfd-trace v0.1.0"));
    }
}

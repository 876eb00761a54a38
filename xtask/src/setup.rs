//! `cargo xtask setup`: installs what building and testing need, only if missing, and says
//! what it did. Safe to run any number of times.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail};

use crate::util::{exec, output, succeeds};

#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Also install what the VM matrix, the Prometheus test, the image and package tests and
    /// the benchmarks need.
    #[arg(long)]
    pub all: bool,
}

/// Debian packages the host tests and benchmarks use (the VM harness has its own list).
pub const TEST_PACKAGES: &[&str] = &["prometheus", "prometheus-alertmanager", "stress-ng", "curl"];

pub fn run(opts: &Options) -> Result<()> {
    nightly()?;
    bpf_linker()?;
    tracefs()?;
    if opts.all {
        lint_tools()?;
        crate::util::ensure_apt(TEST_PACKAGES)?;
        // The image and package tests: a static build for this machine, buildah, podman.
        crate::cross::ensure(crate::cross::host()?)?;
        crate::util::ensure_apt(crate::image::PACKAGES)?;
        crate::util::ensure_apt(crate::deb::PACKAGES)?;
    }
    Ok(())
}

/// clippy and rustfmt for the toolchain that builds the workspace (the lint step of `test`;
/// a minimal rustup profile lacks them).
fn lint_tools() -> Result<()> {
    let comps = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    let missing: Vec<&str> =
        ["clippy", "rustfmt"].into_iter().filter(|c| !comps.lines().any(|l| l.starts_with(c))).collect();
    if missing.is_empty() {
        println!("setup: clippy and rustfmt present");
        return Ok(());
    }
    println!("setup: adding {}", missing.join(" "));
    exec(Command::new("rustup").arg("component").arg("add").args(&missing))
}

/// The nightly toolchain with rust-src (build-std for the bpf target).
fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain");
        exec(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let comps =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if comps.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: nightly rust-src present");
    } else {
        println!("setup: adding rust-src to nightly");
        exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// bpf-linker built against the nightly's own libLLVM: the LLVM that emits our bitcode must
/// be the one that links it. Reinstalled when the nightly's LLVM changes.
fn bpf_linker() -> Result<()> {
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?);
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or_else(|| anyhow!("cannot read the nightly's LLVM version from `rustc -vV`"))?
        .to_string();
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libLLVM.so."))
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}/lib", sysroot.display()))?;
    if linker_uses(&lib) {
        println!("setup: bpf-linker present, linked against {lib}");
        return Ok(());
    }
    let prefix = cargo_home().join("pidfd-trace-llvm").join(&lib);
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = libdir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&lib), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!("setup: installing bpf-linker against LLVM {llvm_major} ({lib}); about a minute");
    exec(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--force", "--version", "^0.13"])
            .args(["--no-default-features", "--features", &format!("llvm-{llvm_major}")])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !linker_uses(&lib) {
        bail!("bpf-linker was installed but does not run against {lib}; see the output above");
    }
    Ok(())
}

/// Whether an installed bpf-linker runs and loads exactly this libLLVM.
fn linker_uses(lib: &str) -> bool {
    let Ok(path) = which("bpf-linker") else { return false };
    succeeds(Command::new(&path).arg("--version"))
        && Command::new("ldd").arg(&path).output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim_start().starts_with(lib))
        })
}

fn which(bin: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([cargo_home().join("bin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{bin} not found"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

/// The agent mounts tracefs itself; mounting it here too keeps bpftrace and the tests happy.
fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        println!("setup: tracefs mounted");
        return Ok(());
    }
    if !crate::util::is_root() {
        println!("setup: tracefs not mounted (needs root; the agent mounts it when run as root)");
        return Ok(());
    }
    println!("setup: mounting tracefs at /sys/kernel/tracing");
    exec(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

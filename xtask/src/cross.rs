//! Static release builds for another architecture (the VM matrix's arm64 guests).
//!
//! Stand-in written by kernel-matrix with the API the fleet branch provides
//! (`build(root, target) -> Binaries`); the fleet version replaces it on merge.
use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{
    Binaries,
    util::{ensure_apt, exec, output},
};

/// Builds static release binaries of the agent and the workload for `target`
/// (`x86_64-unknown-linux-musl` or `aarch64-unknown-linux-musl`) after installing the rustup
/// target and the Debian C cross compiler, which also serves as the linker driver.
pub fn build(root: &Path, target: &str) -> Result<Binaries> {
    let (cc, ar, packages): (&str, &str, &[&str]) = match target {
        "x86_64-unknown-linux-musl" => ("musl-gcc", "ar", &["musl-tools"]),
        "aarch64-unknown-linux-musl" => (
            "aarch64-linux-gnu-gcc",
            "aarch64-linux-gnu-ar",
            &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
        ),
        other => bail!("unknown target {other:?}: x86_64-unknown-linux-musl or aarch64-unknown-linux-musl"),
    };
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == target) {
        exec(Command::new("rustup").args(["target", "add", target]))?;
    }
    ensure_apt(packages)?;
    let env_triple = target.replace('-', "_");
    exec(
        Command::new(env!("CARGO"))
            .current_dir(root)
            .args(["build", "--release", "--target", target, "-p", "pidfd-trace"])
            .args(["--bin", "pidfd-trace", "--bin", "pidfd-workload"])
            .env(format!("CC_{env_triple}"), cc)
            .env(format!("AR_{env_triple}"), ar)
            .env(format!("CARGO_TARGET_{}_LINKER", env_triple.to_uppercase()), cc),
    )?;
    let dir = root.join("target").join(target).join("release");
    Ok(Binaries { agent: dir.join("pidfd-trace"), workload: dir.join("pidfd-workload") })
}

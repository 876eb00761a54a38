//! `cargo xtask test` step "build wiring": a change to the shared record layout must reach
//! the kernel object the agent embeds. In a scratch copy of the workspace it builds the agent,
//! changes one constant of pidfd-trace-common that the kernel programs use
//! (`EVENTS_RING_BYTES`, the ring buffer's size), builds again, and requires the embedded
//! object (`$OUT_DIR/pidfd-trace` of the agent's build script) to have changed. Before the
//! eBPF crate was a build-dependency of the agent this failed: cargo rebuilt the agent but
//! did not re-run its build script.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The workspace entries the scratch copy needs.
const COPY: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "rustfmt.toml",
    "pidfd-trace",
    "pidfd-trace-common",
    "pidfd-trace-ebpf",
    "xtask",
];
const CONSTANT: &str = "pub const EVENTS_RING_BYTES: u32 = 1 << 22;";
const CHANGED: &str = "pub const EVENTS_RING_BYTES: u32 = 1 << 23;";

pub fn run(root: &Path) -> Result<()> {
    // Kept between runs (under target/, so `cargo clean` removes it): the second run only
    // rebuilds the workspace's own crates.
    let base = root.join("target/xtask-build-wiring");
    let src = base.join("src");
    if src.exists() {
        fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    for entry in COPY {
        copy_tree(&root.join(entry), &src.join(entry))?;
    }
    let target = base.join("target");
    let before = embedded_object(&src, &target)?;
    let common = src.join("pidfd-trace-common/src/lib.rs");
    let text = fs::read_to_string(&common)?;
    if !text.contains(CONSTANT) {
        bail!("{} no longer has `{CONSTANT}`: update xtask/src/wiring.rs", common.display());
    }
    fs::write(&common, text.replace(CONSTANT, CHANGED))?;
    let after = embedded_object(&src, &target)?;
    if before == after {
        bail!(
            "changing {CONSTANT:?} in pidfd-trace-common did not change the kernel object the agent embeds: pidfd-trace/build.rs did not re-run (pidfd-trace-ebpf must stay a build-dependency of pidfd-trace)"
        );
    }
    println!(
        "build wiring: changing a shared constant rebuilt the embedded kernel object ({} -> {} bytes, contents differ)",
        before.len(),
        after.len()
    );
    Ok(())
}

/// Builds (checks) the agent in `src` and returns the kernel object its build script embedded.
fn embedded_object(src: &Path, target: &Path) -> Result<Vec<u8>> {
    let cmd = &mut Command::new(env!("CARGO"));
    cmd.current_dir(src)
        .args(["check", "-p", "pidfd-trace", "--bins", "--message-format=json"])
        .env("CARGO_TARGET_DIR", target);
    let out = crate::util::output(cmd)?;
    let out_dir = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "build-script-executed")
        .filter(|m| m["package_id"].as_str().is_some_and(|id| id.contains("/pidfd-trace#")))
        .find_map(|m| m["out_dir"].as_str().map(PathBuf::from))
        .context("cargo reported no build-script run for pidfd-trace")?;
    let object = out_dir.join("pidfd-trace");
    fs::read(&object).with_context(|| format!("reading the embedded object {}", object.display()))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_file() {
        fs::create_dir_all(to.parent().expect("a path inside the copy"))?;
        fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        return Ok(());
    }
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_name() == "target" {
            continue;
        }
        copy_tree(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}

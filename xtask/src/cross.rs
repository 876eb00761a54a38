//! Static release builds for other targets: `cargo xtask build --target <triple>`.
//!
//! The agent and the workload are built for a musl target, so the binaries run on any Linux
//! (container images on an empty base, Debian packages, VM initramfs images) with nothing
//! beside them. The kernel programs are the same bytecode for every architecture: the agent's
//! build.rs builds them with aya-build for the target being built and embeds them. What the
//! C code in the dependency tree (ring) needs, a C compiler for the target and a linker, comes
//! from Debian and is installed here, idempotently, with the rustup target.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    Binaries,
    util::{ensure_apt, exec, output},
};

/// A target this project builds static binaries for.
pub struct Target {
    /// Rust's target triple.
    pub triple: &'static str,
    /// Debian's name for the architecture (`dpkg --print-architecture`, package file names).
    pub deb_arch: &'static str,
    /// What `file` prints for a binary of this architecture.
    pub file_arch: &'static str,
    /// The C compiler for the target's C code (ring).
    cc: &'static str,
    /// The linker driver, if not rustc's default (`cc`).
    linker: Option<&'static str>,
    /// The archiver that goes with `cc`.
    ar: &'static str,
    /// binutils' strip for the target.
    strip: &'static str,
    /// Debian packages that provide `cc` and `ar`.
    packages: &'static [&'static str],
}

/// Every target `build` knows, amd64 first.
pub const TARGETS: &[Target] = &[
    Target {
        triple: "x86_64-unknown-linux-musl",
        deb_arch: "amd64",
        file_arch: "x86-64",
        // musl-gcc compiles against musl's headers; Rust links with its own musl (self-contained).
        cc: "musl-gcc",
        linker: None,
        ar: "ar",
        strip: "strip",
        packages: &["musl-tools", "binutils", "file"],
    },
    Target {
        triple: "aarch64-unknown-linux-musl",
        deb_arch: "arm64",
        file_arch: "ARM aarch64",
        // Debian has no aarch64 musl compiler. ring's C and assembly use only the compiler's
        // and the kernel-independent libc headers, and Rust links its own bundled musl and
        // start files (self-contained), so the glibc cross gcc serves as compiler and linker
        // driver alike.
        cc: "aarch64-linux-gnu-gcc",
        linker: Some("aarch64-linux-gnu-gcc"),
        ar: "aarch64-linux-gnu-ar",
        strip: "aarch64-linux-gnu-strip",
        packages: &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "file"],
    },
];

/// The target called `triple`, or an error listing the known ones.
pub fn target(triple: &str) -> Result<&'static Target> {
    TARGETS.iter().find(|t| t.triple == triple).ok_or_else(|| {
        let known: Vec<&str> = TARGETS.iter().map(|t| t.triple).collect();
        anyhow::anyhow!("unknown target {triple:?}: `cargo xtask build --target` knows {}", known.join(", "))
    })
}

/// Installs what building for `t` needs, only if missing: the rustup target and the Debian
/// C cross toolchain.
pub fn ensure(t: &Target) -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == t.triple) {
        println!("setup: adding the rustup target {}", t.triple);
        exec(Command::new("rustup").args(["target", "add", t.triple]))?;
    }
    ensure_apt(t.packages)
}

/// Builds static release binaries of the agent (kernel programs embedded) and the workload
/// for `target` into `target/<triple>/release`, after installing what that needs, checks with
/// `file` that both are static binaries of the target's architecture, and returns their paths.
pub fn build(root: &Path, target: &str) -> Result<Binaries> {
    let t = self::target(target)?;
    ensure(t)?;
    let env_triple = t.triple.replace('-', "_");
    let cargo_env = format!("CARGO_TARGET_{}", env_triple.to_uppercase());
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root)
        .args(["build", "--release", "--target", t.triple, "-p", "pidfd-trace"])
        .args(["--bin", "pidfd-trace", "--bin", "pidfd-workload"])
        .env(format!("CC_{env_triple}"), t.cc)
        .env(format!("AR_{env_triple}"), t.ar)
        // Static, whatever rustc's default for musl targets is (it links musl dynamically
        // now): rustc's bundled musl and start files, no interpreter.
        .env(format!("{cargo_env}_RUSTFLAGS"), "-C target-feature=+crt-static");
    if let Some(linker) = t.linker {
        cmd.env(format!("{cargo_env}_LINKER"), linker);
    }
    exec(&mut cmd)?;
    let dir = root.join("target").join(t.triple).join("release");
    let bins = Binaries { agent: dir.join("pidfd-trace"), workload: dir.join("pidfd-workload") };
    for bin in [&bins.agent, &bins.workload] {
        let desc = check_static(bin, t)?;
        println!("cross: {} ({}): {desc}", bin.display(), t.deb_arch);
    }
    Ok(bins)
}

/// `file`'s description of `bin`, which must say static and the target's architecture.
pub fn check_static(bin: &Path, t: &Target) -> Result<String> {
    let desc = output(Command::new("file").arg("-b").arg(bin))
        .with_context(|| format!("cannot describe {}", bin.display()))?;
    let is_static = desc.contains("statically linked") || desc.contains("static-pie linked");
    if !is_static || !desc.contains(t.file_arch) {
        bail!(
            "{} is not a static {} binary: `file` says {desc:?}; check the linker set for {}",
            bin.display(),
            t.file_arch,
            t.triple
        );
    }
    Ok(desc)
}

/// A copy of `bin` without symbols, for images and packages (the kernel programs are data
/// inside it and stay): `<dir of bin>/stripped/<name>`.
pub fn stripped(bin: &Path, t: &Target) -> Result<std::path::PathBuf> {
    let dir = bin.parent().context("binary has no directory")?.join("stripped");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(bin.file_name().context("binary has no name")?);
    exec(Command::new(t.strip).arg("-o").arg(&out).arg(bin))?;
    check_static(&out, t)?;
    Ok(out)
}

/// The target whose Debian architecture is `arch` (amd64, arm64).
pub fn by_deb_arch(arch: &str) -> Result<&'static Target> {
    TARGETS.iter().find(|t| t.deb_arch == arch).ok_or_else(|| {
        let known: Vec<&str> = TARGETS.iter().map(|t| t.deb_arch).collect();
        anyhow::anyhow!("unknown architecture {arch:?}: known are {}", known.join(", "))
    })
}

/// The target of this machine's architecture: what the image and package tests run here.
pub fn host() -> Result<&'static Target> {
    by_deb_arch(&output(Command::new("dpkg").arg("--print-architecture"))?)
}

/// Options of the per-architecture artefacts (`cargo xtask image`, `cargo xtask deb`).
#[derive(clap::Args, Debug)]
pub struct ArchOptions {
    /// Architectures to build (Debian names), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "amd64,arm64")]
    pub arch: Vec<String>,
    /// Instead: the test `cargo xtask test` runs (this machine's architecture; root).
    #[arg(long)]
    pub test: bool,
}

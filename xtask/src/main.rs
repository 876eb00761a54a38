//! Project tasks: `cargo xtask setup | build | run | test | rules | e2e | image | deb | manifests | vm`.
mod bench;
mod bench_inventory;
mod cross;
mod deb;
mod e2e;
mod image;
mod kube;
mod rules;
mod setup;
mod soak;
mod test;
mod util;
mod vm;
mod wiring;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "pidfd-trace project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, bpf-linker (against the nightly's LLVM),
    /// tracefs; with --all also the Debian packages the tests use (the VM step fetches its own).
    Setup(setup::Options),
    /// Build the agent (with its kernel programs) and the workload, release mode; with
    /// `--target` static binaries for x86_64-unknown-linux-musl or aarch64-unknown-linux-musl
    /// (installs the rustup target and the C cross compiler if missing).
    Build {
        /// Target triple; the binaries land in target/<triple>/release.
        #[arg(long)]
        target: Option<String>,
    },
    /// Set up, build and run the agent; arguments after `--` go to pidfd-trace
    /// (default: `trace`, the live column view of every pidfd event; `-- serve` for metrics).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test (root): unit, host integration, CLI errors, faults, serve,
    /// the alert rules (promtool), the Prometheus/Alertmanager end-to-end test, the Kubernetes
    /// manifests, the container image under podman, the Debian package and the kernel matrix
    /// in qemu.
    Test(test::Options),
    /// The alert rules: `promtool check rules` and `promtool test rules` on deploy/prometheus/,
    /// and every alert's for/severity/summary/description/runbook section (no root).
    Rules,
    /// A real Prometheus scrapes `serve` while the workload runs; every dashboard query must
    /// return data, the counters must match, and the failure alerts must reach a real
    /// Alertmanager (root).
    E2e,
    /// OCI images (amd64, arm64) of the static agent on an empty base, built offline with
    /// buildah, plus a manifest list; archives in target/images.
    Image(image::Options),
    /// Debian packages (amd64, arm64): binary, hardened systemd unit, /etc/default file,
    /// dashboard; in target/debian.
    Deb(deb::Options),
    /// Regenerate deploy/kubernetes/prometheusrule.yaml from the Prometheus rule file.
    Manifests(kube::Options),
    /// Boot Debian kernels (amd64 5.10 to 7.3, arm64 6.1 to 7.3) in qemu and run the scenario
    /// suite in each mode; writes the table to target/vm/matrix.md.
    Vm(vm::Options),
    /// Measure the agent's overhead beside the floor and the bpftrace peer (root); prints a
    /// table, `--json` for JSON, `--write` to record the run in BENCHMARKS.md.
    Bench(bench::Options),
    /// The build-wiring test alone: in a scratch copy, a changed shared constant must change
    /// the kernel object the agent embeds (also a step of `test`).
    BuildWiring,
    /// What one open-pidfd inventory scan costs (`ls` and a `serve` refresh) on a made host of
    /// many processes holding many fds (root; figures only, not part of `test`).
    BenchInventory(bench_inventory::Options),
    /// N minutes of mixed pidfd load against `serve`: RSS per minute, loss and counter
    /// exactness at the end (root; not part of `test`).
    Soak(soak::Options),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().cmd {
        Cmd::Setup(opts) => setup::run(&opts),
        Cmd::Build { target: None } => build(&root).map(|_| ()),
        Cmd::Build { target: Some(t) } => {
            setup::run(&Default::default())?;
            cross::build(&root, &t).map(|_| ())
        }
        Cmd::Run { args } => {
            println!("xtask run: 1/3 checking the toolchain (nightly rust-src, bpf-linker) and tracefs");
            setup::run(&Default::default())?;
            println!("xtask run: 2/3 building the agent and its kernel programs (release)");
            let started = std::time::Instant::now();
            let bins = build(&root)?;
            println!("xtask run: built in {:.0?}", started.elapsed());
            // A person-readable live view by default (README: Two commands).
            let args = if args.is_empty() { vec!["trace".into()] } else { args };
            println!(
                "xtask run: 3/3 starting `pidfd-trace {}` (Ctrl-C stops it; `cargo xtask run -- serve` serves metrics)",
                args.join(" ")
            );
            let err = Command::new(&bins.agent).args(&args).exec();
            Err(err).with_context(|| format!("cannot start {}", bins.agent.display()))
        }
        Cmd::Image(opts) => {
            setup::run(&Default::default())?;
            image::run(&opts, &root)
        }
        Cmd::Deb(opts) => {
            setup::run(&Default::default())?;
            deb::run(&opts, &root)
        }
        Cmd::Manifests(opts) => kube::run(&opts, &root),
        Cmd::Test(opts) => test::run(&opts, &root),
        Cmd::Bench(opts) => bench::run(&opts, &root),
        Cmd::BuildWiring => wiring::run(&root),
        Cmd::Soak(opts) => soak::run(&opts, &root),
        Cmd::Rules => rules::run(&root),
        Cmd::BenchInventory(opts) => {
            setup::run(&Default::default())?;
            bench_inventory::run(&opts, &build(&root)?)
        }
        Cmd::E2e => {
            setup::run(&Default::default())?;
            e2e::run(&root)
        }
        Cmd::Vm(mut opts) => {
            setup::run(&Default::default())?;
            opts.build_binaries(&root)?;
            vm::run(&opts, &root)
        }
    }
}

pub struct Binaries {
    pub agent: PathBuf,
    pub workload: PathBuf,
}

/// `cargo build --release -p pidfd-trace`: the agent and the workload.
pub fn build(root: &Path) -> Result<Binaries> {
    util::cargo_build(Command::new(env!("CARGO")).current_dir(root).args([
        "build",
        "--release",
        "-p",
        "pidfd-trace",
    ]))?;
    let dir = root.join("target/release");
    Ok(Binaries { agent: dir.join("pidfd-trace"), workload: dir.join("pidfd-workload") })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

//! Project tasks: `cargo xtask setup | build | run | test | e2e | vm`.
mod bench;
mod bench_inventory;
mod e2e;
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
    /// Build the agent (with its kernel programs) and the workload, release mode.
    Build,
    /// Set up, build and run the agent; arguments after `--` go to pidfd-trace
    /// (default: `serve --events-log -`: metrics on :29100 and events as JSON lines on stdout).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test (root): unit, host integration, CLI errors, faults, serve,
    /// the Prometheus end-to-end test and the kernel matrix in qemu.
    Test(test::Options),
    /// A real Prometheus scrapes `serve` while the workload runs; every dashboard query must
    /// return data and the counters must match (root).
    E2e,
    /// Boot Debian kernels in qemu and run the scenario suite in each mode.
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
        Cmd::Build => build(&root).map(|_| ()),
        Cmd::Run { args } => {
            setup::run(&Default::default())?;
            let bins = build(&root)?;
            // serve, with every event also on stdout so a first run shows something at once.
            let args =
                if args.is_empty() { vec!["serve".into(), "--events-log".into(), "-".into()] } else { args };
            let err = Command::new(&bins.agent).args(&args).exec();
            Err(err).with_context(|| format!("cannot start {}", bins.agent.display()))
        }
        Cmd::Test(opts) => test::run(&opts, &root),
        Cmd::Bench(opts) => bench::run(&opts, &root),
        Cmd::BuildWiring => wiring::run(&root),
        Cmd::Soak(opts) => soak::run(&opts, &root),
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
            let bins = build(&root)?;
            opts.agent.get_or_insert(bins.agent);
            opts.workload.get_or_insert(bins.workload);
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
    util::exec(Command::new(env!("CARGO")).current_dir(root).args([
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

//! `cargo xtask test`: set-up, then every test layer in order, then one closing line.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{setup, util, vm};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Skip the kernel matrix in qemu (the slowest layer).
    #[arg(long)]
    pub skip_vm: bool,
    /// Kernels for the matrix (see `cargo xtask vm --help`) or all.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Guests of the matrix booted at the same time.
    #[arg(long, default_value_t = 2)]
    pub vm_jobs: usize,
}

pub fn run(opts: &Options, root: &Path) -> Result<()> {
    if !util::is_root() {
        bail!(
            "cargo xtask test needs root: its integration tests load eBPF programs into this kernel; run it with sudo"
        );
    }
    setup::run(&setup::Options { all: true })?;
    if !opts.skip_vm {
        vm::setup(root)?;
    }
    let mut steps: Vec<(&str, Result<()>, f64)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| {
        println!("\n==> {name}");
        let t = Instant::now();
        let r = f();
        if let Err(e) = &r {
            eprintln!("xtask: {name} failed: {e:#}");
        }
        steps.push((name, r, t.elapsed().as_secs_f64()));
    };
    step("lint: cargo fmt --check, cargo clippy -D warnings", &mut || {
        util::exec(Command::new(env!("CARGO")).current_dir(root).args(["fmt", "--all", "--", "--check"]))?;
        // The default members: `--workspace` would also build pidfd-trace-ebpf for the host,
        // which needs nightly and the bpf target (aya-build lints nothing there either).
        util::exec(Command::new(env!("CARGO")).current_dir(root).args([
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    step("unit and host integration tests (cargo test)", &mut || {
        util::exec(Command::new(env!("CARGO")).current_dir(root).args(["test", "--", "--test-threads=1"]))
    });
    step("build wiring: a shared-layout change rebuilds the embedded kernel object", &mut || {
        crate::wiring::run(root)
    });
    step("alert rules: promtool check/test rules, runbook sections (cargo xtask rules)", &mut || {
        crate::rules::run(root)
    });
    step("Prometheus end to end: serve, dashboards, promtool (cargo xtask e2e)", &mut || {
        crate::e2e::run(root)
    });
    step("Kubernetes manifests: parse, fields, PrometheusRule = rule file", &mut || crate::kube::check(root));
    step("container image: buildah build, podman run as the DaemonSet runs it", &mut || {
        crate::image::test(root)
    });
    step("Debian package: dpkg -i, pidfd-trace check, systemd-analyze verify, purge", &mut || {
        crate::deb::test(root)
    });
    if !opts.skip_vm {
        step("kernel matrix in qemu, amd64 and arm64 (cargo xtask vm)", &mut || {
            let mut vm_opts = vm::Options::full_matrix(&opts.kernel);
            vm_opts.jobs = opts.vm_jobs;
            vm_opts.build_binaries(root)?;
            vm::run(&vm_opts, root)
        });
    }
    println!("\n==> summary");
    let failed = steps.iter().filter(|s| s.1.is_err()).count();
    for (name, r, secs) in &steps {
        println!("{:<6} {secs:>7.1}s  {name}", if r.is_ok() { "ok" } else { "FAILED" });
    }
    println!("xtask test: {} passed, {failed} failed", steps.len() - failed);
    if failed > 0 {
        bail!("{failed} test step(s) failed");
    }
    Ok(())
}

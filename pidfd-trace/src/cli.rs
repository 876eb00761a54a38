//! The command line (DESIGN.md contract): `check`, `trace`, `serve`.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plan::ModeChoice;

#[derive(Parser, Debug)]
#[command(
    name = "pidfd-trace",
    version,
    about = "Watch how this host creates and uses pid file descriptors (eBPF)",
    long_about = "Watch how this host creates and uses pid file descriptors: clone()/clone3() with \
CLONE_PIDFD, pidfd_open, pidfd_send_signal and pidfd_getfd, including every failed pidfd creation \
and the step at which it failed. Needs root (or CAP_BPF + CAP_PERFMON) and a kernel with BTF."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Report what this kernel supports and the attach plan for every hook, then exit.
    Check(CheckArgs),
    /// Print every pidfd event live, as columns or JSON lines.
    Trace(TraceArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct KernelArgs {
    /// How to attach: the best mode per hook (auto) or force one; a forced mode that this
    /// kernel cannot do is an error.
    #[arg(long, value_enum, default_value_t = ModeChoice::Auto)]
    pub mode: ModeChoice,
    /// Kernel BTF to read struct offsets from.
    #[arg(long, hide = true, default_value = crate::preflight::DEFAULT_BTF, env = "PIDFD_TRACE_BTF")]
    pub btf: PathBuf,
    /// Ring-buffer size in KiB (power of two, at least 4; testing loss accounting).
    #[arg(long, hide = true, value_parser = parse_ring_kib)]
    pub ring_kib: Option<u32>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Output format: readable columns or one JSON object per line.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Only events whose caller has this pid or tid (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only events whose caller's command name is exactly NAME (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Only failed calls.
    #[arg(long)]
    pub failures_only: bool,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v < 4 || !v.is_power_of_two() || v > 1 << 20 {
        return Err(format!("{v} must be a power of two between 4 and 1048576"));
    }
    Ok(v)
}

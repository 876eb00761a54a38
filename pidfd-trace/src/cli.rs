//! The command line: `check`, `trace`, `serve`. The contract is docs/cli.md; a flag added
//! here is added there.
// clap turns doc comments on these types into --help text, so an item documented here for
// rustdoc would change --help; the flags' own help strings and docs/cli.md document them.
#![allow(missing_docs)]
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plan::ModeChoice;

#[derive(Parser, Debug)]
#[command(
    name = "pidfd-trace",
    version,
    about = "Watch how this host creates and uses pid file descriptors (eBPF)",
    long_about = "Watch how this host creates and uses pid file descriptors: clone()/clone3() with \
CLONE_PIDFD, pidfd_open, pidfd_send_signal, pidfd_getfd and waitid(P_PIDFD), including every failed pidfd creation \
and the step at which it failed. Needs root (or CAP_BPF + CAP_PERFMON) and a kernel with BTF."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Report what this kernel supports and the attach plan for every hook, then exit.
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Print every pidfd event live, as columns or JSON lines.
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// Run as a service: Prometheus metrics over HTTP and a JSON-lines event log, until
    /// SIGINT/SIGTERM (SIGHUP reopens the events log).
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// List every open pidfd on the host now (holder, target, state), from /proc; works
    /// with or without an agent running. Needs root to see other users' processes.
    Ls(LsArgs),
    /// Benchmark floor for `cargo xtask bench`: attach a per-CPU counter program to the
    /// given tracepoints and wait for SIGTERM.
    #[command(hide = true)]
    BenchFloor(BenchFloorArgs),
}

const CHECK_EXAMPLES: &str = "\
Examples:
  pidfd-trace check                 what this kernel supports and how each hook attaches
  pidfd-trace check -o json | jq .  the same as one JSON document (schema: docs/cli.md)
  pidfd-trace check --mode tracepoint
                                    the plan with function probes switched off";

const TRACE_EXAMPLES: &str = "\
Examples:
  pidfd-trace trace                 every pidfd event on this host, one line each
  pidfd-trace trace -x              only failed calls (EMFILE, EAGAIN, EPERM, ...)
  pidfd-trace trace -p 1234         only calls made by process or thread 1234
  pidfd-trace trace -c systemd -c containerd
                                    only calls made by these command names
  pidfd-trace trace --timestamps relative
                                    seconds since attach instead of the local date and time
  pidfd-trace trace -o json | jq 'select(.event == \"pidfd_send_signal\")'
                                    JSON lines (fields: docs/events.md)";

const SERVE_EXAMPLES: &str = "\
Examples:
  pidfd-trace serve                 metrics on http://:29100/metrics, no events log
  pidfd-trace serve --events-log /var/log/pidfd-trace/events.jsonl
                                    also every event as a JSON line; `kill -HUP` reopens the
                                    file after rotation (logrotate postrotate)
  pidfd-trace serve --web.listen-address 127.0.0.1:29100 --web.config.file /etc/pidfd-trace/web.yml
                                    loopback only, with TLS and basic auth";

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
    /// Also report 32-bit (ia32) callers, whose syscalls the syscalls:sys_* tracepoints skip.
    /// Off by default: it runs a small program on every syscall of the host (raw_syscalls),
    /// which costs a few percent of a tight non-pidfd syscall loop. `check` lists callers a
    /// configuration cannot see.
    #[arg(long)]
    pub compat_syscalls: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Output format: a report, or one JSON document (errors too) on stdout.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Output format: readable columns or one JSON object per line.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Only events whose caller has this pid or tid (repeatable).
    #[arg(short = 'p', long = "pid", value_name = "PID", allow_negative_numbers = true, value_parser = parse_pid)]
    pub pids: Vec<u32>,
    /// Only events whose caller's command name is exactly NAME, at most 15 bytes as the kernel
    /// keeps them (repeatable).
    #[arg(short = 'c', short_alias = 'n', long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<String>,
    /// Only failed calls.
    #[arg(short = 'x', long)]
    pub failures_only: bool,
    /// The TIME column (text output): local date and time, UTC date and time, or seconds
    /// since the agent attached.
    #[arg(long, value_enum, value_name = "WHICH", default_value_t = Timestamps::Local)]
    pub timestamps: Timestamps,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Output format: columns with a total line, or one JSON object per pidfd.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Only pidfds held by this process (repeatable).
    #[arg(short = 'p', long = "pid", value_name = "PID", allow_negative_numbers = true, value_parser = parse_pid)]
    pub pids: Vec<u32>,
    /// Only pidfds held by processes whose command name is exactly NAME, at most 15 bytes
    /// (repeatable).
    #[arg(short = 'c', short_alias = 'n', long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<String>,
    /// Only stale pidfds: their process has exited and been reaped.
    #[arg(long)]
    pub stale: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to serve metrics on: HOST:PORT, [IPv6]:PORT or :PORT (all IPv4 interfaces).
    #[arg(
        long = "web.listen-address",
        value_name = "ADDR",
        default_value = crate::serve::listen::DEFAULT_ADDRESS,
        value_parser = crate::serve::listen::parse_address
    )]
    pub listen_address: std::net::SocketAddr,
    /// Path under which metrics are exposed.
    #[arg(
        long = "web.telemetry-path",
        value_name = "PATH",
        default_value = "/metrics",
        value_parser = crate::serve::listen::parse_telemetry_path
    )]
    pub telemetry_path: String,
    /// TLS and/or basic auth for the endpoint: a YAML file in the Prometheus
    /// exporter-toolkit format, `tls_server_config: {cert_file, key_file[, client_auth_type,
    /// client_ca_file]}` and `basic_auth_users: {NAME: BCRYPT-HASH}` (make a hash with
    /// `htpasswd -nbBC 10 NAME PASSWORD`). Relative file names are relative to the file's
    /// directory. Read once at start; checked in full before anything is loaded.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
    /// Format of the agent's own log lines on stderr.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub log_format: Output,
    /// Least severe agent log level shown.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Write every event as a JSON line (the `trace --output json` fields) to PATH, appending;
    /// `-` is stdout. Without it no events are logged, only counted. SIGHUP reopens PATH (for
    /// log rotation: rename the file, then `kill -HUP`).
    #[arg(long, value_name = "PATH|-")]
    pub events_log: Option<PathBuf>,
    /// Per-process (comm) and per-container series kept per metric: the busiest N values,
    /// the rest summed under `other`.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=10000))]
    pub max_label_values: u16,
    /// How often the open-pidfd inventory (the `pidfd_trace_open_pidfds` and
    /// `pidfd_trace_stale_pidfds` gauges, leak detection) re-reads /proc: 500ms, 30s, 5m, ...
    /// [default: 30s, stretched on hosts where one scan costs more than 1% of it in CPU; a
    /// value given here is kept as is]
    #[arg(long, value_name = "DURATION", value_parser = crate::inventory::refresh::parse_duration)]
    pub inventory_interval: Option<std::time::Duration>,
    /// Leak detection window W: a process is suspected when its open (or stale) pidfds rose by
    /// at least --leak-min-growth over W and in both halves of W; cleared when they did not
    /// rise over the last W/2.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::inventory::refresh::parse_duration)]
    pub leak_window: std::time::Duration,
    /// Leak detection: the least rise over the window that counts as growing.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub leak_min_growth: u64,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// How `trace` prints the TIME column (docs/cli.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Timestamps {
    /// `2026-11-30 21:40:01.123` in the host's time zone (named in the header).
    Local,
    /// `2026-11-30 21:40:01.123` in UTC.
    Utc,
    /// Seconds since the agent attached, `12.345678`.
    Relative,
}

impl ServeArgs {
    /// Checks what one flag's parser cannot: how flags relate. Err is the usage error.
    pub fn validate(&self) -> Result<(), String> {
        use crate::inventory::refresh::{DEFAULT_INTERVAL, humanize};
        let interval = self.inventory_interval.unwrap_or(DEFAULT_INTERVAL);
        if self.leak_window < interval * 2 {
            return Err(format!(
                "--leak-window {} must be at least twice --inventory-interval {}: the leak rule compares counts a window and half a window apart",
                humanize(self.leak_window),
                humanize(interval)
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchFloorArgs {
    /// Tracepoint to attach the floor program to, CATEGORY:NAME (repeatable).
    #[arg(long = "tracepoint", value_name = "CATEGORY:NAME", required = true)]
    pub tracepoints: Vec<String>,
}

/// The kernel keeps a command name in 16 bytes, the last one NUL (TASK_COMM_LEN).
pub const COMM_MAX: usize = 15;

fn parse_pid(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let too_large = || {
        format!(
            "{s} is not a process id: too large (pids stop below pid_max, at most 4194304); --pid takes 1 to {}",
            i32::MAX
        )
    };
    match s.parse::<i64>() {
        Ok(v) if (1..=i64::from(i32::MAX)).contains(&v) => Ok(v as u32),
        Ok(v) if v > 0 => Err(too_large()),
        Ok(v) => Err(format!("{v} is not a process id: --pid takes a positive pid (1 or more)")),
        // Digits that do not even fit an i64.
        Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Err(too_large()),
        Err(_) => Err(format!("`{s}` is not a number: --pid takes a positive pid (1 or more)")),
    }
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the command name is empty: --comm takes a process's command name (`ps -o comm`)".into());
    }
    if s.len() > COMM_MAX {
        let mut cut = COMM_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(format!(
            "`{s}` is {} bytes but the kernel keeps only the first {COMM_MAX} bytes of a command name, so it \
would never match; give `{}` (what `ps -o comm` shows)",
            s.len(),
            &s[..cut]
        ));
    }
    Ok(s.to_string())
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v < 4 || !v.is_power_of_two() || v > 1 << 20 {
        return Err(format!("{v} must be a power of two between 4 and 1048576"));
    }
    Ok(v)
}

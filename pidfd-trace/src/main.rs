//! pidfd-trace: the agent binary. Parses the command line and runs one command; every error
//! becomes one line on stderr and a non-zero exit.
#![warn(missing_docs)]
pub mod btf;
pub mod cgroup;
pub mod check;
pub mod classify;
pub mod cli;
pub mod counters;
pub mod decode;
pub mod enrich;
pub mod event;
pub mod filter;
pub mod floor;
pub mod hooks;
pub mod inventory;
pub mod ls;
pub mod names;
pub mod pipeline;
pub mod plan;
pub mod preflight;
pub mod privileges;
pub mod probes;
pub mod risk;
// serve/ is being changed on another branch (alerting); its rustdoc comes with that merge.
#[allow(missing_docs)]
pub mod serve;
pub mod session;
pub mod sink;
pub mod symbols;
pub mod trace;
pub mod tracefs;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // SIGINT and SIGTERM wait (blocked) until the command is known: trace and serve then turn
    // one that came during start-up into a clean stop (docs/cli.md), any other command dies
    // of it as usual once it is unblocked below.
    let stop_signals = block_stop_signals();
    let raw: Vec<String> = std::env::args().collect();
    if serve::logging::json_requested(&raw) {
        serve::logging::force_json();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            unblock(&stop_signals);
            return usage_error(e);
        }
    };
    if matches!(cli.command, Command::Serve(_) | Command::Trace(_)) {
        // SIGHUP never stops trace or serve (docs/cli.md): ignored while loading, then the
        // pipeline's handler reopens the events log.
        // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        if let Err(e) = pipeline::Signals::hold_early() {
            eprintln!("pidfd-trace: error: {e}");
            return ExitCode::FAILURE;
        }
    }
    unblock(&stop_signals);
    if let Command::Serve(args) = &cli.command
        && let Err(e) = args.validate()
    {
        eprintln!("pidfd-trace: error: {e}; see pidfd-trace --help");
        return ExitCode::from(2);
    }
    if let Command::Serve(args) = &cli.command {
        serve::logging::init(args.log_format, args.log_level);
    } else {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format_target(false)
            .init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `check --output json` has already put its error document on stdout.
            serve::logging::fatal(&format!("pidfd-trace: error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Blocks SIGINT and SIGTERM in this (the only) thread; returns the set for `unblock`.
fn block_stop_signals() -> libc::sigset_t {
    let set = pipeline::stop_signal_set();
    // SAFETY: a valid set; only this thread's mask changes.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    set
}

/// Unblocks what `block_stop_signals` blocked: a signal that came meanwhile is delivered now.
fn unblock(set: &libc::sigset_t) {
    // SAFETY: a valid set; only this thread's mask changes.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, set, std::ptr::null_mut()) };
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Trace(args) => runtime()?.block_on(trace::run(args)),
        Command::BenchFloor(args) => floor::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Ls(args) => ls::run(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// clap's errors span several lines; users get one: what is wrong and where to look.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = e.render().to_string();
    let mut parts = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"));
    let first = parts.next().unwrap_or("invalid arguments").trim_start_matches("error: ");
    let extra: Vec<&str> = parts.filter(|l| l.starts_with('[') || l.starts_with("tip:")).collect();
    let extra = if extra.is_empty() { String::new() } else { format!(" {}", extra.join(" ")) };
    let message = format!("{first}{extra}; see pidfd-trace --help");
    if wants_check_json(std::env::args().skip(1)) {
        check::print_error_document(&message, 2);
    }
    serve::logging::fatal(&format!("pidfd-trace: error: {message}"));
    ExitCode::from(2)
}

/// Whether a command line that clap refused asked for `check --output json`: then the error
/// is also a JSON document on stdout (docs/cli.md).
fn wants_check_json(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    let is_check = args.iter().find(|a| !a.starts_with('-')).is_some_and(|a| a == "check");
    let json = args.windows(2).any(|w| (w[0] == "--output" || w[0] == "-o") && w[1] == "json")
        || args.iter().any(|a| a == "--output=json" || a == "-ojson" || a == "-o=json");
    is_check && json
}

/// Tests only: an allocator that counts the allocations of the calling thread, so a test can
/// prove a path allocates nothing (pipeline.rs).
#[cfg(test)]
pub mod alloc_count {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        cell::Cell,
    };

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    struct Counting;

    fn count() {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc(l) }
        }

        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc_zeroed(l) }
        }

        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            count();
            unsafe { System.realloc(p, l, n) }
        }

        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            unsafe { System.dealloc(p, l) }
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    /// Allocations (and reallocations) this thread has made so far.
    pub fn allocations() -> u64 {
        COUNT.with(Cell::get)
    }
}

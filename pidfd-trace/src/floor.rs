//! `pidfd-trace bench-floor` (hidden): the benchmark floor for `cargo xtask bench`. Attaches
//! the floor program (one per-CPU counter bump, pidfd-trace-ebpf/src/floor.rs) to the named
//! tracepoints, says `attached` on stderr, and holds it there until SIGINT/SIGTERM.
use anyhow::{Context, Result, bail};

use crate::{cli::BenchFloorArgs, preflight, probes, tracefs};

/// `pidfd-trace bench-floor`: holds the floor program attached until SIGINT/SIGTERM.
pub fn run(args: BenchFloorArgs) -> Result<()> {
    preflight::check_privileges(preflight::effective_caps())?;
    let mut tps = Vec::new();
    for tp in &args.tracepoints {
        let Some((category, name)) = tp.split_once(':') else {
            bail!("--tracepoint {tp}: expected CATEGORY:NAME, e.g. syscalls:sys_enter_clone");
        };
        tps.push((category.to_string(), name.to_string()));
    }
    tracefs::ensure_mounted()?;
    // Block the stop signals before attaching, so that one arriving early is not lost.
    let set = crate::pipeline::stop_signal_set();
    // SAFETY: a valid, initialised signal set; this thread is the only one.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        bail!("blocking SIGINT/SIGTERM failed");
    }
    let _floor = probes::load_floor(&tps).context("loading the floor program")?;
    eprintln!("pidfd-trace: floor attached to {}", args.tracepoints.join(" "));
    let mut sig = 0;
    // SAFETY: waits for one of the blocked signals in `set`.
    unsafe { libc::sigwait(&set, &mut sig) };
    Ok(())
}

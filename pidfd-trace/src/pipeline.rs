//! The event path inside the agent: ring buffer → decode → enrich → filter → sink, plus the
//! kernel-side log channel and loss reporting, until a signal asks us to stop.
use std::time::Duration;

use anyhow::{Context, Result};
use log::warn;
use pidfd_trace_common::stats;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

pub use crate::sink::Totals;
use crate::{
    counters::Counters, decode::Decoder, enrich, filter::Filter, probes::EventRing, session::Session,
    sink::Sink,
};

/// Longest a record waits in the ring before the agent reads it: the kernel programs do not
/// wake the agent per record (pidfd-trace-ebpf/src/emit.rs), so the agent drains on this tick.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// Every this many one-second ticks, entry states of threads that exited mid-syscall go.
const ENTER_SWEEP_TICKS: u64 = 10;

pub struct Pipeline<'a> {
    pub decoder: Decoder,
    pub filter: Filter,
    pub sink: &'a mut dyn Sink,
    pub totals: Totals,
}

impl Pipeline<'_> {
    /// Drains every record that is ready. Returns Err only when the sink cannot write.
    fn drain(&mut self, ring: &mut EventRing) -> std::io::Result<()> {
        let mut any = false;
        while let Some(decoded) = ring.next_with(|bytes| self.decoder.decode(bytes)) {
            self.totals.delivered += 1;
            let mut ev = match decoded {
                Ok(ev) => ev,
                Err(e) => {
                    self.totals.decode_errors += 1;
                    warn!("dropping undecodable record: {e}");
                    continue;
                }
            };
            if !self.filter.matches(&ev) {
                continue;
            }
            enrich::enrich(&mut ev);
            self.sink.event(&ev)?;
            self.totals.shown += 1;
            any = true;
        }
        if any { self.sink.flush() } else { Ok(()) }
    }
}

/// Runs until SIGINT/SIGTERM or the sink's reader goes away (e.g. `| head`).
pub async fn run(session: &mut Session, pipe: &mut Pipeline<'_>) -> Result<Counters> {
    run_with_tick(session, pipe, &mut |_, _| Ok(())).await
}

/// `run`, also calling `on_tick` once a second and once more at the end, with a snapshot of
/// the kernel counters and this run's totals: how `serve` refreshes the metrics it reads
/// from the kernel. Returns the last snapshot (for the closing summary).
pub async fn run_with_tick(
    session: &mut Session,
    pipe: &mut Pipeline<'_>,
    on_tick: &mut dyn FnMut(&Counters, &Totals) -> Result<()>,
) -> Result<Counters> {
    let ring = session.probes.take_events()?;
    // SAFETY (both registrations): the AsyncFd owns the value that owns the fd, so the fd
    // cannot be closed while it is registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("polling the event ring buffer")?;
    let logger = session.probes.take_logger();
    let mut logger = match logger {
        Some(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .context("polling the kernel log channel")?,
        ),
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The kernel programs wake us only once the ring is a quarter full (emit.rs); this tick
    // drains it otherwise, so no record waits longer than DRAIN_INTERVAL.
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_seen = 0u64;
    let mut sweeps = 0u64;
    // DESIGN.md's ready line; a JSON object under `serve --log-format json`.
    crate::serve::logging::status(&session.attached_line());
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                if let Err(e) = pipe.drain(guard.get_inner_mut()) {
                    return sink_closed(e, session);
                }
                guard.clear_ready();
            }
            guard = async { logger.as_mut().expect("guarded").readable_mut().await }, if logger.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                if let Err(e) = pipe.drain(ring.get_mut()) {
                    return sink_closed(e, session);
                }
            }
            _ = tick.tick() => {
                let counters = session.probes.counters()?;
                let lost = counters.stat(stats::LOST);
                if lost > lost_seen {
                    warn!("{} event records lost (ring buffer full), {lost} in total; counters stay exact", lost - lost_seen);
                    lost_seen = lost;
                }
                sweeps += 1;
                if sweeps.is_multiple_of(ENTER_SWEEP_TICKS) {
                    let (kept, removed) = session.probes.sweep_enter_state()?;
                    if removed > 0 {
                        log::debug!("entry states: removed {removed} of exited threads, {kept} in flight");
                    }
                }
                on_tick(&counters, &pipe.totals)?;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Records already in the ring when the signal came are still delivered.
    if let Err(e) = pipe.drain(ring.get_mut()) {
        return sink_closed(e, session);
    }
    if let Some(l) = logger.as_mut() {
        l.get_mut().flush();
    }
    let counters = session.probes.counters()?;
    on_tick(&counters, &pipe.totals)?;
    Ok(counters)
}

/// The reader of our output went away (e.g. `| head`): a normal end; any other write error
/// is an error.
fn sink_closed(e: std::io::Error, session: &Session) -> Result<Counters> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(session.probes.counters()?)
    } else {
        Err(e).context("writing events")
    }
}

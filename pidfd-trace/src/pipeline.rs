//! The event path inside the agent: ring buffer → decode → filter → enrich → sink, plus the
//! kernel-side log channel and loss reporting, until a signal asks us to stop. The stages are
//! plain values held by `Pipeline`; only `run` touches the kernel (through `probes`).
use std::{
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

use log::warn;
use pidfd_trace_common::stats;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

pub use crate::sink::Totals;
use crate::{
    counters::Counters, decode::Decoder, enrich::Enricher, filter::Filter, probes::EventRing,
    session::Session, sink::Sink,
};

/// Why the event loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading the kernel maps failed.
    #[error(transparent)]
    Probes(#[from] crate::probes::LoadError),
    /// Polling a kernel fd failed.
    #[error("polling the {what}: {err}")]
    Poll {
        /// `event ring buffer` or `kernel log channel`.
        what: &'static str,
        /// Why.
        err: std::io::Error,
    },
    /// SIGINT/SIGTERM handlers could not be installed.
    #[error("installing the SIGINT/SIGTERM handlers: {0}")]
    Signals(std::io::Error),
    /// The sink could not write (anything but a closed reader).
    #[error("writing events: {0}; check the output (disk full? a reader that stopped?)")]
    Write(std::io::Error),
}

type Result<T> = std::result::Result<T, PipelineError>;

/// Longest a record waits in the ring before the agent reads it: the kernel programs do not
/// wake the agent per record (pidfd-trace-ebpf/src/emit.rs), so the agent drains on this tick.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// Records handled per turn of the event loop (see `Pipeline::drain`).
const DRAIN_BUDGET: usize = 4096;

/// Every this many one-second ticks, entry states of threads that exited mid-syscall go.
const ENTER_SWEEP_TICKS: u64 = 10;

/// The stages every record goes through, in order, and what they counted.
pub struct Pipeline<'a> {
    /// Record bytes → `Event` (decode.rs).
    pub decoder: Decoder,
    /// What the user asked to see (`trace --pid/--comm/--failures-only`).
    pub filter: Filter,
    /// cgroup, container and `target_pid` fallback (enrich.rs).
    pub enricher: Enricher,
    /// Where shown events go (sink/).
    pub sink: &'a mut dyn Sink,
    /// Counts of this run.
    pub totals: Totals,
}

impl Pipeline<'_> {
    /// Drains the records that are ready, at most `DRAIN_BUDGET` of them, so that under a
    /// storm signals (SIGHUP, SIGTERM) and ticks still get their turn. Returns whether the
    /// ring is empty; Err only when the sink cannot write.
    fn drain(&mut self, ring: &mut EventRing) -> std::io::Result<bool> {
        let mut any = false;
        for _ in 0..DRAIN_BUDGET {
            match ring.next_with(|bytes| self.process(bytes)) {
                Some(shown) => any |= shown?,
                None => {
                    if any {
                        self.sink.flush()?;
                    }
                    return Ok(true);
                }
            }
        }
        self.sink.flush()?;
        Ok(false)
    }

    /// Drains until the ring is empty (at the end).
    fn drain_all(&mut self, ring: &mut EventRing) -> std::io::Result<()> {
        while !self.drain(ring)? {}
        Ok(())
    }

    /// One record through decode → filter → enrich → sink. Returns whether it reached the
    /// sink; an undecodable record is counted and dropped; Err only when the sink cannot write.
    pub fn process(&mut self, bytes: &[u8]) -> std::io::Result<bool> {
        self.totals.delivered += 1;
        let Self { decoder, filter, enricher, sink, totals } = self;
        // The event stays where the decoder built it (no move of the large `Event`).
        let shown = decoder.decode_with(bytes, |ev| {
            if !filter.matches(ev) {
                return Ok(false);
            }
            enricher.enrich(ev);
            sink.event(ev)?;
            totals.shown += 1;
            Ok(true)
        });
        match shown {
            Ok(shown) => shown,
            Err(e) => {
                self.totals.decode_errors += 1;
                warn!("dropping undecodable record: {e}");
                Ok(false)
            }
        }
    }
}

/// Runs until SIGINT/SIGTERM or the sink's reader goes away (e.g. `| head`); SIGHUP reopens
/// the sink's files and goes on.
pub async fn run(session: &mut Session, pipe: &mut Pipeline<'_>, signals: Signals) -> Result<Counters> {
    run_with_tick(session, pipe, signals, &mut |_, _| {}).await
}

/// The signals the pipeline answers: SIGINT and SIGTERM stop it, SIGHUP reopens the sink's
/// files. Installed by the command before anything can be signalled to it in earnest (before
/// serve's HTTP server answers, before trace attaches), so a SIGTERM that arrives while the
/// agent is still starting is kept and honoured (clean stop, exit 0) once the pipeline runs,
/// instead of killing the process.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// The stop signals, SIGINT and SIGTERM, as a set (main.rs blocks them during start-up,
/// `bench-floor` waits for them).
pub fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// The stop signal (SIGINT or SIGTERM) that arrived between [`Signals::hold_early`] and the
/// pipeline's start; 0 if none.
static EARLY_STOP: AtomicI32 = AtomicI32::new(0);

impl Signals {
    /// Holds SIGINT and SIGTERM (and ignores SIGHUP) before a tokio runtime exists, for trace
    /// and serve (main.rs, which keeps both signals blocked from its first instruction until
    /// this is in place): `serve` builds its runtime only after loading and dropping
    /// privileges, which takes a second or more, and a signal's default action would kill
    /// either command meanwhile (status 143, no summary; a SIGTERM 20 ms after exec killed
    /// trace on a busy CI host). A stop signal held here ends the pipeline as soon as it
    /// starts (clean stop, exit 0, docs/cli.md).
    ///
    /// Errors: the kernel refused `sigaction` (never for these signals).
    pub fn hold_early() -> Result<()> {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the action only stores to an atomic, which is async-signal-safe.
            unsafe {
                signal_hook_registry::register(sig, move || {
                    if sig != libc::SIGHUP {
                        EARLY_STOP.store(sig, Ordering::Relaxed);
                    }
                })
            }
            .map_err(PipelineError::Signals)?;
        }
        Ok(())
    }

    /// Registers the handlers; needs a tokio runtime with the signal driver.
    pub fn install() -> Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).map_err(PipelineError::Signals)?,
            term: signal(SignalKind::terminate()).map_err(PipelineError::Signals)?,
            // SIGHUP reopens the events log (serve) and never stops the agent (docs/cli.md).
            hup: signal(SignalKind::hangup()).map_err(PipelineError::Signals)?,
        })
    }
}

/// `run`, also calling `on_tick` once a second and once more at the end, with a snapshot of
/// the kernel counters and this run's totals: how `serve` refreshes the metrics it reads
/// from the kernel. Returns the last snapshot (for the closing summary).
pub async fn run_with_tick(
    session: &mut Session,
    pipe: &mut Pipeline<'_>,
    signals: Signals,
    on_tick: &mut dyn FnMut(&Counters, &Totals),
) -> Result<Counters> {
    let ring = session.probes.take_events()?;
    // SAFETY (both registrations): the AsyncFd owns the value that owns the fd, so the fd
    // cannot be closed while it is registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| PipelineError::Poll { what: "event ring buffer", err: err.into() })?;
    let logger = session.probes.take_logger();
    let mut logger = match logger {
        Some(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|err| PipelineError::Poll { what: "kernel log channel", err: err.into() })?,
        ),
        None => None,
    };
    let Signals { int: mut sigint, term: mut sigterm, hup: mut sighup } = signals;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The kernel programs wake us only when the ring's fill crosses a quarter mark (emit.rs); this tick
    // drains it otherwise, so no record waits longer than DRAIN_INTERVAL.
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_seen = 0u64;
    let mut sweeps = 0u64;
    // The ready line (docs/cli.md, "Output and exit status"); a JSON object under `serve --log-format json`.
    crate::serve::logging::status(&session.attached_line());
    let mut stop = EARLY_STOP.load(Ordering::Relaxed) != 0;
    while !stop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|err| PipelineError::Poll { what: "event ring buffer", err })?;
                match pipe.drain(guard.get_inner_mut()) {
                    Err(e) => return sink_closed(e, session),
                    // Records left over: stay ready, so the next turn comes back at once
                    // (after any signal or tick that is also ready).
                    Ok(false) => {}
                    Ok(true) => guard.clear_ready(),
                }
            }
            guard = async { logger.as_mut().expect("guarded").readable_mut().await }, if logger.is_some() => {
                let mut guard = guard.map_err(|err| PipelineError::Poll { what: "kernel log channel", err })?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                match pipe.drain(ring.get_mut()) {
                    Err(e) => return sink_closed(e, session),
                    // More than one budget's worth was waiting (the kernel wakes us only at
                    // quarter marks of the ring): come back at once, after anything else
                    // that is ready, instead of a tick later.
                    Ok(false) => drain_tick.reset_immediately(),
                    Ok(true) => {}
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
                on_tick(&counters, &pipe.totals);
            }
            // Reopen at once: what is still in the ring goes to the new file (no line is lost
            // either way); draining first could take as long as a storm lasts.
            _ = sighup.recv() => {
                if let Err(e) = pipe.sink.reopen() {
                    return sink_closed(e, session);
                }
            }
            _ = sigint.recv() => stop = true,
            _ = sigterm.recv() => stop = true,
        }
    }
    // Records already in the ring when the signal came are still delivered.
    if let Err(e) = pipe.drain_all(ring.get_mut()) {
        return sink_closed(e, session);
    }
    if let Some(l) = logger.as_mut() {
        l.get_mut().flush();
    }
    let counters = session.probes.counters()?;
    on_tick(&counters, &pipe.totals);
    Ok(counters)
}

/// The reader of our output went away (e.g. `| head`): a normal end; any other write error
/// is an error.
fn sink_closed(e: std::io::Error, session: &Session) -> Result<Counters> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(session.probes.counters()?)
    } else {
        Err(PipelineError::Write(e))
    }
}

#[cfg(test)]
mod tests {
    use std::{io, os::fd::FromRawFd};

    use pidfd_trace_common::{EventKind, EventRecord};

    use super::*;
    use crate::{
        decode::testing::{bytes, decoder, record},
        event::Event,
        sink::json::JsonLines,
    };

    struct Collect(Vec<Event>);

    impl Sink for Collect {
        fn event(&mut self, ev: &Event) -> io::Result<()> {
            self.0.push(ev.clone());
            Ok(())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A record of a call this test process made (so /proc lookups find it).
    fn ours(kind: EventKind, ret: i64) -> EventRecord {
        let pid = u64::from(std::process::id());
        EventRecord { pid_tgid: (pid << 32) | pid, ..record(kind, ret, 0) }
    }

    #[test]
    fn records_through_every_stage() {
        // A pidfd of our own, passed by a pidfd_getfd record the kernel could not resolve:
        // the enricher must find its target in /proc/self/fdinfo.
        let me = std::process::id() as i32;
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) } as i32;
        assert!(pidfd >= 0);
        let mut getfd = ours(EventKind::PidfdGetfd, -9);
        getfd.arg0 = pidfd as u64;
        getfd.cpu_seq = 2;
        let mut unknown_kind = ours(EventKind::Clone, 1);
        unknown_kind.kind = 200;
        let mut sink = Collect(Vec::new());
        let mut pipe = Pipeline {
            decoder: decoder(),
            filter: Filter { failures_only: true, ..Default::default() },
            enricher: Enricher::new(),
            sink: &mut sink,
            totals: Totals::default(),
        };
        let shown: Vec<bool> = [
            bytes(&ours(EventKind::PidfdOpen, 3)),   // a success: filtered out
            bytes(&getfd),                           // a failure: shown, enriched
            vec![0u8; size_of::<EventRecord>() / 2], // truncated
            bytes(&unknown_kind),
        ]
        .iter()
        .map(|b| pipe.process(b).unwrap())
        .collect();
        unsafe { libc::close(pidfd) };
        assert_eq!(shown, [false, true, false, false]);
        let t = pipe.totals;
        assert_eq!((t.delivered, t.shown, t.decode_errors), (4, 1, 2));
        let ev = &sink.0[0];
        assert_eq!(
            (ev.event, ev.errno.as_deref(), ev.used_pidfd),
            (EventKind::PidfdGetfd, Some("EBADF"), Some(pidfd))
        );
        assert_eq!(ev.target_pid, Some(i64::from(me)), "enriched from /proc/self/fdinfo");
        assert_eq!(ev.target_fd, Some(15));
    }

    /// A storm's event costs no allocation once the caches are warm: decode, filter, enrich
    /// and the JSON line all work in place (names are static, the cgroup path and container
    /// are shared with the cache, the line goes into the sink's buffer).
    #[test]
    fn storm_events_allocate_nothing() {
        use std::os::unix::fs::MetadataExt;
        let mut r = ours(EventKind::PidfdOpen, 3);
        r.cgroup_id = std::fs::metadata("/sys/fs/cgroup").map_or(1, |m| m.ino());
        // The directory name the kernel read (a systemd scope, a container's): shared too.
        r.cgroup_name[..16].copy_from_slice(b"session-42.scope");
        let mut sink = JsonLines::new(std::fs::File::create("/dev/null").unwrap());
        let mut pipe = Pipeline {
            decoder: decoder(),
            filter: Filter { comms: vec!["nobody".into(), "workerx".into()], ..Default::default() },
            enricher: Enricher::new(),
            sink: &mut sink,
            totals: Totals::default(),
        };
        let mut buf = bytes(&r);
        let mut run = |pipe: &mut Pipeline<'_>, from: u64, n: u64| {
            for i in from..from + n {
                r.cpu_seq = i;
                r.ts_ns += 997;
                // SAFETY: buf holds exactly one EventRecord (made by `bytes`).
                unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().cast::<EventRecord>(), r) };
                pipe.process(&buf).unwrap();
            }
            pipe.sink.flush().unwrap();
        };
        // Warm: the caches fill, the buffer reaches its size.
        let start = crate::alloc_count::allocations();
        run(&mut pipe, 1, 200);
        let before = crate::alloc_count::allocations();
        assert!(before > start, "the counter counts (warming up allocates)");
        run(&mut pipe, 201, 10_000);
        let allocs = crate::alloc_count::allocations() - before;
        assert_eq!(pipe.totals.shown, 10_200);
        assert_eq!(allocs, 0, "allocations for 10,000 storm events");
    }

    /// The user-space cost of one storm event (decode → filter → enrich → JSON to /dev/null),
    /// on made-up pidfd_open records of this process in its own cgroup, as the bench's storm
    /// makes them. A measurement, not a check (it asserts no time): run it with
    /// `cargo test --release -p pidfd-trace --bin pidfd-trace event_path_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a micro benchmark; prints ns per event"]
    fn event_path_cost() {
        use std::os::unix::fs::MetadataExt;
        const N: u64 = 1_000_000;
        let cgroup_id = std::fs::metadata("/sys/fs/cgroup").map_or(1, |m| m.ino());
        let mut r = ours(EventKind::PidfdOpen, 3);
        r.cgroup_id = cgroup_id;
        r.arg0 = u64::from(std::process::id());
        let mut sink = JsonLines::new(std::fs::File::create("/dev/null").unwrap());
        let mut pipe = Pipeline {
            decoder: decoder(),
            filter: Filter::default(),
            enricher: Enricher::new(),
            sink: &mut sink,
            totals: Totals::default(),
        };
        let mut buf = bytes(&r);
        // This thread's CPU time, not the wall clock: the machine is shared.
        let cpu_ns = || {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: valid pointer to a local timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let t = cpu_ns();
        for i in 1..=N {
            r.cpu_seq = i;
            r.ts_ns += 997;
            r.duration_ns = 500 + i % 3000;
            // SAFETY: buf holds exactly one EventRecord (made by `bytes`).
            unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().cast::<EventRecord>(), r) };
            pipe.process(&buf).unwrap();
            if i % 4096 == 0 {
                pipe.sink.flush().unwrap();
            }
        }
        pipe.sink.flush().unwrap();
        let ns = (cpu_ns() - t) as f64 / N as f64;
        assert_eq!(pipe.totals.shown, N);
        println!("event path: {ns:.0} ns of CPU per event over {N} pidfd_open records");
    }

    #[test]
    fn closed_stdout_is_a_broken_pipe() {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is a fresh fd this File now owns.
        let out = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        let mut sink = JsonLines::new(out);
        let mut pipe = Pipeline {
            decoder: decoder(),
            filter: Filter::default(),
            enricher: Enricher::new(),
            sink: &mut sink,
            totals: Totals::default(),
        };
        // The sink buffers lines until the end of the drain: the closed reader shows there.
        assert!(pipe.process(&bytes(&ours(EventKind::PidfdOpen, 3))).unwrap());
        let err = pipe.sink.flush().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!((pipe.totals.delivered, pipe.totals.shown), (1, 1));
    }
}

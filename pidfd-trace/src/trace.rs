//! `pidfd-trace trace`: live events on stdout, status on stderr.
use std::io::{BufWriter, Write};

use anyhow::{Context, Result};

use crate::{
    cli::{Output, TraceArgs},
    decode::Decoder,
    enrich::Enricher,
    filter::Filter,
    pipeline::{self, Pipeline},
    session::Session,
    sink::{
        Sink,
        json::JsonLines,
        text::{Clock, Text},
    },
};

/// `pidfd-trace trace`: events on stdout until SIGINT/SIGTERM or a closed stdout.
pub async fn run(args: TraceArgs) -> Result<()> {
    // Before attaching: a SIGTERM during start-up then stops the agent cleanly.
    let signals = pipeline::Signals::install()?;
    let mut session = Session::start(&args.kernel)?;
    // Before the capabilities go: the helper keeps what counting a caller's pidfds needs.
    crate::enrich::set_counter(std::sync::Arc::new(crate::inventory::helper::Helper::spawn()?));
    session.drop_privileges()?;
    let stdout = std::io::stdout().lock();
    let mut sink: Box<dyn Sink> = match args.output {
        Output::Text => {
            // The header at once, as execsnoop does: the tool is alive before any event.
            let mut text = Text::new(BufWriter::new(stdout), Clock::new(args.timestamps, unix_now_ns()));
            match text.start() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                r => r.context("writing to stdout")?,
            }
            Box::new(text)
        }
        // Buffers its lines itself: one write per drain of the ring buffer.
        Output::Json => Box::new(JsonLines::new(stdout)),
    };
    let mut pipe = Pipeline {
        decoder: Decoder::new(boot_to_unix_ns(), session.facts.sem),
        filter: Filter { pids: args.pids, comms: args.comms, failures_only: args.failures_only },
        enricher: Enricher::new(),
        sink: sink.as_mut(),
        totals: Default::default(),
    };
    let counters = pipeline::run(&mut session, &mut pipe, signals).await?;
    let t = pipe.totals;
    eprintln!(
        "pidfd-trace: {} events received, {} shown, {} lost, {} undecodable",
        t.delivered,
        t.shown,
        counters.stat(pidfd_trace_common::stats::LOST),
        t.decode_errors
    );
    let _ = std::io::stderr().flush();
    Ok(())
}

fn unix_now_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

/// CLOCK_REALTIME − CLOCK_BOOTTIME now, to put kernel boot-time stamps on the wall clock.
pub fn boot_to_unix_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointer to a local timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_BOOTTIME)
}

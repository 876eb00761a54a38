//! `pidfd-trace serve`: attach, then serve Prometheus metrics over HTTP and write the events
//! log until SIGINT/SIGTERM; then flush, detach and exit 0. Everything that can fail on
//! bad input (address, port, log path) is checked before any program is loaded.
pub mod cap;
pub mod http;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod outcomes;
pub mod sinks;

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use log::info;
use prometheus::Registry;

use self::{
    http::{Limits, Site},
    metrics::KernelMetrics,
    sinks::{EventMetrics, EventsLog, Tee},
};
use crate::{
    cli::ServeArgs,
    decode::Decoder,
    filter::Filter,
    pipeline::{self, Pipeline},
    session::Session,
    sink::Sink,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot open events log {path}: {err}; choose a writable file with --events-log, or `-` for stdout"
    )]
    EventsLog { path: PathBuf, err: std::io::Error },
}

pub fn run(args: ServeArgs) -> Result<()> {
    // Bad input first: nothing is loaded into the kernel until these succeed.
    let listener = listen::bind(args.listen_address)?;
    let log_out = match &args.events_log {
        Some(p) => Some(open_events_log(p)?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        // The pipeline runs on this thread (block_on); HTTP on the workers, so a scrape or a
        // misbehaving client never delays draining the ring buffer.
        .worker_threads(2)
        .thread_name("pidfd-trace-http")
        .enable_all()
        .build()?;
    rt.block_on(serve(args, listener, log_out))
}

fn open_events_log(path: &Path) -> Result<Box<dyn Write + Send>, ServeError> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map(|f| Box::new(f) as Box<dyn Write + Send>)
        .map_err(|err| ServeError::EventsLog { path: path.to_path_buf(), err })
}

async fn serve(
    args: ServeArgs,
    listener: std::net::TcpListener,
    log_out: Option<Box<dyn Write + Send>>,
) -> Result<()> {
    let mut session = Session::start(&args.kernel)?;
    let registry = Registry::new();
    metrics::register_build_info(&registry, &session.facts.release)?;
    metrics::register_attach_plan(&registry, &session.plan, &session.probes.attached)?;
    let mut kernel = KernelMetrics::register(&registry, session.facts.sem)?;
    let mut event_metrics = EventMetrics::register(&registry, usize::from(args.max_label_values))?;
    let mut events_log = match log_out {
        Some(out) => Some(EventsLog::new(out, &registry)?),
        None => None,
    };

    let attached = session.attached_line();
    let site = Arc::new(Site {
        landing: Site::landing_page(&args.telemetry_path, &session.facts.release, &attached),
        registry,
        telemetry_path: args.telemetry_path.clone(),
    });
    let (addr, server) =
        http::spawn(listener, site, Limits::default()).context("starting the metrics server")?;
    info!("serving metrics on http://{addr}{}", args.telemetry_path);

    let mut sinks: Vec<&mut dyn Sink> = vec![&mut event_metrics];
    if let Some(l) = events_log.as_mut() {
        sinks.push(l);
    }
    let mut tee = Tee(sinks);
    let mut pipe = Pipeline {
        decoder: Decoder::new(crate::trace::boot_to_unix_ns(), session.facts.sem),
        filter: Filter::default(),
        sink: &mut tee,
        totals: Default::default(),
    };
    let mut refresh = |s: &Session, totals: &pipeline::Totals| -> Result<()> {
        kernel.refresh(&s.probes.outcomes()?, &s.probes.stats()?, totals);
        Ok(())
    };
    let result = pipeline::run_with_tick(&mut session, &mut pipe, &mut refresh).await;
    let totals = pipe.totals;
    let _ = tee.flush();
    server.abort();
    let lost = session.probes.stats().map(|s| s[pidfd_trace_common::stats::LOST as usize]).unwrap_or(0);
    // Dropping the session detaches every program.
    drop(session);
    result?;
    info!(
        "stopped: {} events received, {} lost, {} undecodable; programs detached",
        totals.delivered, lost, totals.decode_errors
    );
    Ok(())
}

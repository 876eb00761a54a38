//! `pidfd-trace serve`: attach, then serve Prometheus metrics over HTTP(S) and write the
//! events log until SIGINT/SIGTERM; then flush, detach and exit 0.
//!
//! Start-up order is the security model:
//! 1. bad input first (web config, certificates, password hashes, address, port, log path):
//!    nothing is loaded into the kernel until all of it is usable;
//! 2. load and attach, on the main thread, while the process still has one thread;
//! 3. drop every capability (capset is per thread, so before any thread exists);
//! 4. only then start the runtime whose worker threads parse what clients send.
pub mod auth;
pub mod http;
pub mod listen;
pub mod logging;
pub mod webconfig;

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use log::{info, warn};
use prometheus::Registry;

use self::{
    http::{Limits, Site},
    webconfig::WebConfig,
};
use crate::{
    cli::ServeArgs,
    counters::Counters,
    decode::Decoder,
    enrich::Enricher,
    filter::Filter,
    pipeline::{self, Pipeline},
    session::Session,
    sink::{
        Sink, Totals,
        events::{EventMetrics, EventsLog, Tee},
        metrics::{self, KernelMetrics},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot open events log {path}: {err}; choose a writable file with --events-log, or `-` for stdout"
    )]
    EventsLog { path: PathBuf, err: std::io::Error },
    #[error("cannot use --web.config.file {path}: {err}")]
    WebConfig { path: PathBuf, err: webconfig::WebConfigError },
}

pub fn run(args: ServeArgs) -> Result<()> {
    // A SIGTERM (systemd stop, kubelet) during start-up is a clean stop: main() held it
    // (`Signals::hold_early`) before anything else.
    // Bad input first: nothing is loaded into the kernel until these succeed.
    let web = match &args.web_config_file {
        Some(path) => {
            WebConfig::load(path).map_err(|err| ServeError::WebConfig { path: path.clone(), err })?
        }
        None => WebConfig::none(),
    };
    let listener = listen::bind(args.listen_address)?;
    let log_out = match &args.events_log {
        Some(p) => Some(open_events_log(p)?),
        None => None,
    };
    // Loading and attaching is the only step that needs privileges; the process has one
    // thread here, so dropping them afterwards covers every thread it will ever run.
    let session = Session::start(&args.kernel)?;
    // Before the capabilities go: the inventory helper keeps the two that reading other
    // processes' fds needs, in a process of its own (inventory/helper.rs).
    let helper = std::sync::Arc::new(crate::inventory::helper::Helper::spawn()?);
    crate::enrich::set_counter(helper.clone());
    session.drop_privileges()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        // The pipeline runs on this thread (block_on); HTTP on the workers, so a scrape or a
        // misbehaving client never delays draining the ring buffer.
        .worker_threads(2)
        // bcrypt checks of basic auth, one at a time (auth.rs).
        .max_blocking_threads(2)
        .thread_name("pidfd-trace-http")
        .enable_all()
        .build()?;
    rt.block_on(serve(args, session, listener, log_out, web, helper))
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
    mut session: Session,
    listener: std::net::TcpListener,
    log_out: Option<Box<dyn Write + Send>>,
    web: WebConfig,
    helper: std::sync::Arc<crate::inventory::helper::Helper>,
) -> Result<()> {
    // The tokio handlers; a stop signal that came earlier was held by `hold_early`.
    let signals = pipeline::Signals::install()?;
    let registry = Registry::new();
    metrics::register_build_info(&registry, &session.facts.release)?;
    metrics::register_attach_plan(&registry, &session.plan_rows())?;
    let mut kernel = KernelMetrics::register(&registry, session.facts.sem)?;
    let mut event_metrics = EventMetrics::register(&registry, usize::from(args.max_label_values))?;
    // The events log is shared with the inventory thread's leak records, whole lines only.
    let shared_log = log_out.map(crate::inventory::refresh::SharedLines::new);
    let mut events_log = match &shared_log {
        Some(out) => {
            let log = EventsLog::new(Box::new(out.writer()), &registry)?;
            match args.events_log.clone().filter(|p| p.as_os_str() != "-") {
                // SIGHUP (logrotate's postrotate) opens the path again, for both writers.
                Some(path) => {
                    let shared = out.clone();
                    Some(log.reopen_with(Box::new(move || {
                        let file = open_events_log(&path).map_err(|e| match e {
                            ServeError::EventsLog { err, .. } => err,
                            other => std::io::Error::other(other.to_string()),
                        })?;
                        shared.replace(file)?;
                        Ok(Box::new(shared.writer()))
                    })))
                }
                None => Some(log),
            }
        }
        None => None,
    };
    let mut ledger = crate::inventory::ledger::Ledger::default();
    crate::inventory::refresh::start(
        helper,
        &registry,
        crate::inventory::refresh::Config {
            interval: args.inventory_interval.unwrap_or(crate::inventory::refresh::DEFAULT_INTERVAL),
            fixed_interval: args.inventory_interval.is_some(),
            rule: crate::inventory::leak::LeakRule {
                window: args.leak_window,
                min_growth: args.leak_min_growth,
            },
            max_label_values: usize::from(args.max_label_values),
        },
        ledger.clone(),
        shared_log,
    )?;

    let rejected = http::Rejected::register(&registry)?;
    let attached = session.attached_line();
    let site = Arc::new(Site {
        landing: Site::landing_page(&args.telemetry_path, &session.facts.release, &attached),
        registry,
        telemetry_path: args.telemetry_path.clone(),
        auth: web.auth,
        rejected,
    });
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    if scheme == "http" && site.auth.is_some() {
        warn!(
            "basic auth over plain HTTP sends passwords readable by anyone on the path; add tls_server_config"
        );
    }
    let tls = web.tls.map(tokio_rustls::TlsAcceptor::from);
    let (addr, server) =
        http::spawn(listener, site, tls, Limits::default()).context("starting the metrics server")?;
    info!("serving metrics on {scheme}://{addr}{} ({})", args.telemetry_path, web.summary);

    let mut sinks: Vec<&mut dyn Sink> = vec![&mut event_metrics, &mut ledger];
    if let Some(l) = events_log.as_mut() {
        sinks.push(l);
    }
    let mut tee = Tee(sinks);
    let mut pipe = Pipeline {
        decoder: Decoder::new(crate::trace::boot_to_unix_ns(), session.facts.sem),
        filter: Filter::default(),
        enricher: Enricher::new(),
        sink: &mut tee,
        totals: Default::default(),
    };
    let mut refresh = |counters: &Counters, totals: &Totals| kernel.refresh(counters, totals);
    let result = pipeline::run_with_tick(&mut session, &mut pipe, signals, &mut refresh).await;
    let totals = pipe.totals;
    let _ = tee.flush();
    server.abort();
    // Dropping the session detaches every program.
    drop(session);
    let lost = result?.stat(pidfd_trace_common::stats::LOST);
    info!(
        "stopped: {} events received, {} lost, {} undecodable; programs detached",
        totals.delivered, lost, totals.decode_errors
    );
    Ok(())
}

//! The HTTP side of `serve` (hyper): `/` a landing page, the telemetry path the text
//! exposition, anything else 404. It runs on the runtime's worker threads, apart from the
//! event pipeline, and every connection is bounded so no client can hold the agent up:
//! a connection limit, a header read timeout, small request buffers, and a lifetime cap.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{sync::Semaphore, task::JoinSet};

/// Bounds on what one client may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// The request head must arrive within this (slowloris).
    pub header_read_timeout: Duration,
    /// A connection, keep-alive included, is closed after this (slow readers).
    pub connection_lifetime: Duration,
    /// Request head size limit; larger heads get 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 32,
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(60),
            max_header_bytes: 8192,
        }
    }
}

/// What the server answers with.
pub struct Site {
    pub registry: Registry,
    pub telemetry_path: String,
    /// The landing page, rendered once.
    pub landing: String,
}

impl Site {
    pub fn landing_page(telemetry_path: &str, kernel: &str, attached: &str) -> String {
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>pidfd-trace</title></head><body>\n\
             <h1>pidfd-trace</h1>\n<p>eBPF agent for Linux pid file descriptors, version {}, kernel {}.</p>\n\
             <p><a href=\"{telemetry_path}\">Metrics</a></p>\n<p>{}</p>\n</body></html>\n",
            env!("CARGO_PKG_VERSION"),
            html_escape(kernel),
            html_escape(attached),
        )
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Serves until the returned task is aborted (dropping it closes every connection).
pub fn spawn(
    listener: std::net::TcpListener,
    site: Arc<Site>,
    limits: Limits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let task = tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut conns = JoinSet::new();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!("accepting a metrics connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while conns.try_join_next().is_some() {}
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!("closing connection from {peer}: {} connections already open", limits.max_connections);
                continue;
            };
            let site = site.clone();
            conns.spawn(async move {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_buf_size(limits.max_header_bytes.max(8192) * 2)
                    .max_header_size(limits.max_header_bytes)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| {
                            let site = site.clone();
                            async move { Ok::<_, Infallible>(route(&req, &site)) }
                        }),
                    );
                match tokio::time::timeout(limits.connection_lifetime, conn).await {
                    Ok(Err(e)) => debug!("metrics connection from {peer}: {e}"),
                    Err(_) => {
                        debug!("metrics connection from {peer} closed after {:?}", limits.connection_lifetime)
                    }
                    Ok(Ok(())) => {}
                }
                drop(slot);
            });
        }
    });
    Ok((addr, task))
}

fn route(req: &Request<Incoming>, site: &Site) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = path == "/" || path == site.telemetry_path;
    if !known {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at ".to_string() + &site.telemetry_path + "\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/" {
        return respond(StatusCode::OK, "text/html; charset=utf-8", site.landing.clone().into_bytes());
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::with_capacity(16 * 1024);
    match encoder.encode(&site.registry.gather(), &mut body) {
        Ok(()) => respond(StatusCode::OK, encoder.format_type(), body),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {e}\n")),
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", text.into_bytes())
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

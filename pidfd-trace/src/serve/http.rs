//! The HTTP side of `serve` (hyper, HTTP/1.1, optionally over TLS with basic auth): `/` a
//! landing page, the telemetry path the text exposition, anything else 404. It runs on the
//! runtime's worker threads, apart from the event pipeline, and no client can hold it up:
//! - at most `max_connections` at once; when all are taken, a new connection evicts the
//!   connection that has waited longest without a request in progress (a client that
//!   connected and sent nothing, trickles its head, stalls in the TLS handshake, or sits
//!   idle after a response), so held connections never lock real scrapes out;
//! - the request head (and the TLS handshake before it) must arrive within
//!   `header_read_timeout`, and is at most `max_header_bytes` (431 beyond);
//! - a connection, keep-alive included, is closed after `connection_lifetime`.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Bytes, Frame, Incoming, SizeHint},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    task::{AbortHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;

use super::auth::BasicAuth;

/// Bounds on what one client may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// The TLS handshake, then the request head, must each arrive within this (slowloris).
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
    /// Basic auth for every path, when the web config has users.
    pub auth: Option<BasicAuth>,
    pub rejected: Rejected,
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

/// `pidfd_trace_http_rejected_total{reason}`: what the server cut short or refused, so an
/// attack (or a misconfigured scraper) shows on the dashboard rather than only in debug logs.
#[derive(Clone)]
pub struct Rejected(IntCounterVec);

impl Rejected {
    /// Every reason, each a series from the start.
    const REASONS: [&'static str; 9] = [
        "evicted",
        "all_busy",
        "header_timeout",
        "head_too_large",
        "malformed",
        "lifetime",
        "unauthorized",
        "tls_handshake",
        "plain_http_on_tls",
    ];

    pub fn register(reg: &Registry) -> Result<Self, prometheus::Error> {
        let c = IntCounterVec::new(
            Opts::new(
                "pidfd_trace_http_rejected_total",
                "Metrics-endpoint connections or requests cut short or refused, by reason: evicted (idle, to make room), all_busy, header_timeout, head_too_large, malformed, lifetime, unauthorized, tls_handshake, plain_http_on_tls.",
            ),
            &["reason"],
        )?;
        reg.register(Box::new(c.clone()))?;
        for r in Self::REASONS {
            c.with_label_values(&[r]);
        }
        Ok(Self(c))
    }

    fn inc(&self, reason: &'static str) {
        debug_assert!(Self::REASONS.contains(&reason));
        self.0.with_label_values(&[reason]).inc();
    }
}

/// How a connection ended badly: a reason for the metric and words for the debug log.
struct Cut(&'static str, String);

impl Cut {
    fn from_hyper(e: hyper::Error, state: &ConnState) -> Self {
        let reason = if e.is_timeout() && state.requests.load(Ordering::Relaxed) > 0 {
            // An idle keep-alive connection closed between requests: normal.
            ""
        } else if e.is_timeout() {
            "header_timeout"
        } else if e.is_parse_too_large() {
            "head_too_large"
        } else if e.is_parse() {
            "malformed"
        } else {
            // A client that went away mid-response and the like: not worth a reason.
            ""
        };
        Cut(reason, e.to_string())
    }
}

/// Serves until the returned task is aborted (dropping it closes every connection).
pub fn spawn(
    listener: std::net::TcpListener,
    site: Arc<Site>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let task = tokio::spawn(async move {
        let mut table = Table::new(limits);
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
            while let Some(done) = conns.try_join_next_with_id() {
                table.remove(done.map_or_else(|e| e.id(), |(id, ())| id));
            }
            match table.make_room() {
                Room::Free => {}
                Room::Evicted => site.rejected.inc("evicted"),
                Room::AllBusy => {
                    site.rejected.inc("all_busy");
                    debug!(
                        "closing connection from {peer}: {} connections busy with requests",
                        limits.max_connections
                    );
                    continue;
                }
            }
            let state = table.clock.new_state();
            let (site, tls, st) = (site.clone(), tls.clone(), state.clone());
            let abort = conns.spawn(async move {
                let conn = connection(stream, site.clone(), tls, st.clone(), limits);
                let cut = match tokio::time::timeout(limits.connection_lifetime, conn).await {
                    Ok(Ok(())) => return,
                    Ok(Err(cut)) => cut,
                    Err(_) => Cut(
                        // Stuck mid-response (a reader that does not read) is worth a reason;
                        // a busy keep-alive scraper reaching the cap is not.
                        if st.idle_since.load(Ordering::Relaxed) == BUSY { "lifetime" } else { "" },
                        format!("closed after {:?}", limits.connection_lifetime),
                    ),
                };
                if !cut.0.is_empty() {
                    site.rejected.inc(cut.0);
                }
                debug!("metrics connection from {peer}: {}", cut.1);
            });
            table.insert(abort, state);
        }
    });
    Ok((addr, task))
}

/// One connection, from the first byte to the last response.
async fn connection(
    stream: TcpStream,
    site: Arc<Site>,
    tls: Option<TlsAcceptor>,
    state: ConnState,
    limits: Limits,
) -> Result<(), Cut> {
    let Some(tls) = tls else {
        return serve_http(stream, site, state, limits).await;
    };
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    let handshake = |why: String| Cut("tls_handshake", why);
    // A TLS client starts with a handshake record (0x16); anything else is most likely plain
    // HTTP: tell that client what is wrong rather than answer with TLS it cannot read.
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return Err(handshake("nothing sent before the header read timeout".into())),
        Ok(Err(e)) => return Err(handshake(e.to_string())),
        Ok(Ok(0)) => return Ok(()),
        Ok(Ok(_)) => {}
    }
    if first[0] != 0x16 {
        let mut stream = stream;
        // Take what was sent, so closing does not reset the connection before the client
        // reads the answer.
        let mut head = vec![0u8; limits.max_header_bytes];
        let _ = tokio::time::timeout_at(deadline, stream.read(&mut head)).await;
        let body = "Client sent an HTTP request to an HTTPS server.\n";
        let reply = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout_at(deadline, stream.write_all(reply.as_bytes())).await;
        let _ = stream.shutdown().await;
        return Err(Cut("plain_http_on_tls", "plain HTTP on the TLS port".into()));
    }
    let stream = match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
        Err(_) => return Err(handshake("TLS handshake timed out".into())),
        Ok(Err(e)) => return Err(handshake(format!("TLS handshake: {e}"))),
        Ok(Ok(s)) => s,
    };
    serve_http(stream, site, state, limits).await
}

/// HTTP/1.1 on an accepted (and perhaps TLS-wrapped) stream.
async fn serve_http<S>(stream: S, site: Arc<Site>, state: ConnState, limits: Limits) -> Result<(), Cut>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_state = state.clone();
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192) * 2)
        .max_header_size(limits.max_header_bytes)
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let (site, state) = (site.clone(), state.clone());
                async move {
                    // A request waiting for its bcrypt check is not yet busy: a flood of
                    // wrong passwords queued behind bcrypt must not pin every slot, so its
                    // connections stay evictable until they are let in.
                    let allowed = match &site.auth {
                        Some(auth) => auth.allows(req.headers().get(header::AUTHORIZATION)).await,
                        None => true,
                    };
                    // Busy from here until hyper has taken the whole body.
                    let idle = state.busy();
                    let resp = if allowed { route(&req, &site) } else { unauthorized(&site) };
                    Ok::<_, Infallible>(resp.map(|body| Guarded { body, _idle: idle }))
                }
            }),
        )
        .await
        .map_err(|e| Cut::from_hyper(e, &conn_state))
}

fn unauthorized(site: &Site) -> Response<Full<Bytes>> {
    site.rejected.inc("unauthorized");
    let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized\n".into());
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"pidfd-trace\", charset=\"UTF-8\""),
    );
    r
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
    if let Err(e) = encoder.encode(&site.registry.gather(), &mut body) {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {e}\n"));
    }
    // Prometheus asks for gzip; the exposition shrinks about tenfold.
    let gzip = accepts_gzip(req.headers());
    let body = if gzip {
        let mut z =
            flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
        match std::io::Write::write_all(&mut z, &body).and_then(|()| z.finish()) {
            Ok(compressed) => compressed,
            Err(e) => {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("compressing metrics failed: {e}\n"),
                );
            }
        }
    } else {
        body
    };
    let mut r = respond(StatusCode::OK, encoder.format_type(), body);
    r.headers_mut().insert(header::VARY, header::HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        r.headers_mut().insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("gzip"));
    }
    r
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a non-zero quality (RFC 9110 12.5.3).
fn accepts_gzip(headers: &header::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let q = parts
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(1.0, |q| q.parse::<f32>().unwrap_or(0.0));
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
        })
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

/// A response body that marks its connection idle again once hyper is done with it.
struct Guarded {
    body: Full<Bytes>,
    _idle: IdleOnDrop,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Milliseconds since the table's start; `BUSY` while a request is in progress.
const BUSY: u64 = u64::MAX;

/// Since when a connection has been waiting for a request (or `BUSY`), shared between the
/// accept loop and the connection's task.
#[derive(Clone)]
struct ConnState {
    idle_since: Arc<AtomicU64>,
    /// Requests whose head arrived on this connection.
    requests: Arc<AtomicU64>,
    clock: Clock,
}

impl ConnState {
    fn busy(&self) -> IdleOnDrop {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.idle_since.store(BUSY, Ordering::Relaxed);
        IdleOnDrop(self.clone())
    }
}

struct IdleOnDrop(ConnState);

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.clock.now_ms(), Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }

    fn new_state(self) -> ConnState {
        ConnState {
            idle_since: Arc::new(AtomicU64::new(self.now_ms())),
            requests: Arc::default(),
            clock: self,
        }
    }
}

/// The open connections, owned by the accept loop.
struct Table {
    limits: Limits,
    clock: Clock,
    open: HashMap<tokio::task::Id, (AbortHandle, Arc<AtomicU64>)>,
}

impl Table {
    fn new(limits: Limits) -> Self {
        Self { limits, clock: Clock(Instant::now()), open: HashMap::new() }
    }

    fn insert(&mut self, abort: AbortHandle, state: ConnState) {
        self.open.insert(abort.id(), (abort, state.idle_since));
    }

    fn remove(&mut self, id: tokio::task::Id) {
        self.open.remove(&id);
    }

    /// Whether a new connection may be served, evicting the longest-idle one if need be.
    /// The newest connection is evicted last, so a real client, which sends its request
    /// right after connecting, is served unless more than `max_connections` others arrive
    /// in between; refusing new connections instead would let a few held ones lock every
    /// scrape out.
    fn make_room(&mut self) -> Room {
        if self.open.len() < self.limits.max_connections {
            return Room::Free;
        }
        let oldest = self
            .open
            .iter()
            .map(|(id, (_, since))| (*id, since.load(Ordering::Relaxed)))
            .filter(|&(_, since)| since != BUSY)
            .min_by_key(|&(_, since)| since);
        let Some((id, since)) = oldest else { return Room::AllBusy };
        debug!(
            "evicting a metrics connection idle for {} ms to make room",
            self.clock.now_ms().saturating_sub(since)
        );
        if let Some((abort, _)) = self.open.remove(&id) {
            abort.abort();
        }
        Room::Evicted
    }
}

enum Room {
    Free,
    Evicted,
    AllBusy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        let h = |v: &str| {
            let mut m = header::HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, header::HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip"));
        assert!(h("deflate, GZIP;q=0.5"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("identity"));
        assert!(!h("br, deflate"));
        assert!(!accepts_gzip(&header::HeaderMap::new()));
    }

    /// The longest-idle connection goes first; busy ones never; all busy refuses.
    #[tokio::test]
    async fn eviction_order() {
        let limits = Limits { max_connections: 3, ..Limits::default() };
        let mut table = Table::new(limits);
        let mut tasks = JoinSet::new();
        let mut states = Vec::new();
        for since in [30, 10, 20] {
            let state = table.clock.new_state();
            state.idle_since.store(since, Ordering::Relaxed);
            let abort = tasks.spawn(std::future::pending::<()>());
            states.push((abort.id(), state.clone()));
            table.insert(abort, state);
        }
        let busy = states[0].1.busy();
        assert!(matches!(table.make_room(), Room::Evicted));
        assert!(!table.open.contains_key(&states[1].0), "idle since 10 ms: evicted first");
        let guard = states[2].1.busy();
        // Room for one again; fill it with a busy connection.
        let state = table.clock.new_state();
        let last = state.busy();
        table.insert(tasks.spawn(std::future::pending::<()>()), state);
        assert!(matches!(table.make_room(), Room::AllBusy), "every connection mid-request");
        drop(guard);
        assert!(matches!(table.make_room(), Room::Evicted), "idle again after its response");
        assert!(!table.open.contains_key(&states[2].0));
        assert!(table.open.contains_key(&states[0].0));
        drop((busy, last));
        // The two evicted tasks were aborted (the others never finish).
        for _ in 0..2 {
            let r = tokio::time::timeout(Duration::from_secs(5), tasks.join_next()).await;
            assert!(matches!(&r, Ok(Some(Err(e))) if e.is_cancelled()), "{r:?}");
        }
    }
}

//! The `--web.*` flags: parsing the listen address and telemetry path, and binding the port
//! before anything is loaded into the kernel, so a taken port costs nothing.
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

/// Outside 9100–9999, which the Prometheus exporter port registry has fully handed out
/// (9100 node_exporter, 9435 ebpf_exporter, ...), and below Linux's ephemeral range
/// (32768+), so an outgoing connection can never be holding it at start-up.
pub const DEFAULT_PORT: u16 = 29100;
pub const DEFAULT_ADDRESS: &str = ":29100";

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "cannot listen on {0}: the port is already in use (another pidfd-trace or exporter?); stop it or choose another port with --web.listen-address"
    )]
    InUse(SocketAddr),
    #[error("cannot listen on {0}: not an address of this host; use one of its addresses, or :PORT for all")]
    NotLocal(SocketAddr),
    #[error(
        "cannot listen on {0}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE); choose a port of 1024 or above"
    )]
    Denied(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Other(SocketAddr, std::io::Error),
}

/// Exporter-style addresses: `HOST:PORT`, `[V6]:PORT`, or `:PORT` for every IPv4 interface.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let bad = || {
        format!(
            "`{s}` is not HOST:PORT or :PORT (e.g. :{DEFAULT_PORT}, 127.0.0.1:{DEFAULT_PORT}, [::1]:{DEFAULT_PORT})"
        )
    };
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if host.contains(':') || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    // A host name (`localhost`): resolved once, now; the first address is the one we bind.
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`{s}`: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}`: {host} has no address"))
}

/// `/metrics`-like: absolute, not `/` (the landing page), no query, fragment or spaces.
pub fn parse_telemetry_path(s: &str) -> Result<String, String> {
    let ok = s.starts_with('/')
        && s.len() > 1
        && s.len() <= 256
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}` must be a path like /metrics (letters, digits, / - _ . ~), not /"))
    }
}

/// Connections the kernel queues for `accept`: std's 128 overflows under a burst of
/// connects, and a dropped SYN costs a real client a 1 s retransmit. The server accepts (and
/// sheds) far faster than it queues, so a long queue never holds a scrape long.
const ACCEPT_BACKLOG: i32 = 1024;

/// Binds the metrics port, with an error that says what to do.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let l = TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => ListenError::InUse(addr),
        std::io::ErrorKind::AddrNotAvailable => ListenError::NotLocal(addr),
        std::io::ErrorKind::PermissionDenied => ListenError::Denied(addr),
        _ => ListenError::Other(addr, e),
    })?;
    // listen() again on a listening socket only changes its backlog (capped by somaxconn).
    // SAFETY: a valid socket fd we own.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), ACCEPT_BACKLOG) } != 0 {
        log::debug!("raising the accept backlog failed: {}", std::io::Error::last_os_error());
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ok = [
            (":29100", "0.0.0.0:29100"),
            ("127.0.0.1:9", "127.0.0.1:9"),
            ("[::1]:8080", "[::1]:8080"),
            ("0.0.0.0:0", "0.0.0.0:0"),
        ];
        for (s, want) in ok {
            assert_eq!(parse_address(s).unwrap().to_string(), want, "{s}");
        }
        assert!(parse_address("localhost:29100").unwrap().ip().is_loopback());
        for bad in ["29100", ":", ":http", "1.2.3.4:99999", "::1:80", "", "host name:80", "127.0.0.1"] {
            assert!(parse_address(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn telemetry_paths() {
        for good in ["/metrics", "/a/b-c_d.e~"] {
            assert_eq!(parse_telemetry_path(good).unwrap(), good);
        }
        for bad in ["/", "metrics", "/m?x=1", "/m etrics", "/m#f", ""] {
            assert!(parse_telemetry_path(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn taken_port_is_one_clear_error() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(held.local_addr().unwrap()).unwrap_err().to_string();
        assert!(err.contains("already in use") && err.contains("--web.listen-address"), "{err}");
    }
}

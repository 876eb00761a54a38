//! `serve` under attack, from the outside: it keeps no capability in any thread once
//! attached; TLS, client certificates and basic auth (`--web.config.file`) checked with the
//! real curl; a bad web config is one line before anything is loaded; and hostile HTTP
//! clients (oversized heads, slowloris, garbage, thousands of held connections, readers that
//! never read) neither lock scrapes out nor stop event processing nor grow its memory.
//! Needs root (loads programs) and curl (`cargo xtask test` installs it). Loopback only.
mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::FromRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_pidfd-trace");
/// The agent's resident set must stay below this whatever clients do (it is ~30-40 MiB).
const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// A scrape during an attack must be answered within this.
const SCRAPE_WITHIN: Duration = Duration::from_secs(3);

/// A running `serve`; killed on drop, so a failing test leaves no agent behind.
struct Serve {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    dir: PathBuf,
    /// Sent with every scrape `healthy` makes (an `Authorization:` line, or empty).
    auth: String,
}

impl Serve {
    fn start(tag: &str, extra: &[&str]) -> Self {
        assert!(unsafe { libc::geteuid() } == 0, "serve tests need root: run `cargo xtask test` as root");
        let dir = tempdir(&format!("serve-{tag}"));
        let log = dir.join("events.jsonl");
        let (child, stderr) = common::spawn_collecting(
            Command::new(AGENT)
                .args(["serve", "--web.listen-address", "127.0.0.1:0", "--log-format", "json"])
                // Every comm its own series, whatever else runs on this host.
                .args(["--max-label-values", "10000", "--events-log", log.to_str().unwrap()])
                .args(extra)
                .stdout(Stdio::null()),
        );
        let mut serve = Serve { child, stderr, addr: "0.0.0.0:0".parse().unwrap(), dir, auth: String::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        serve.addr = loop {
            let lines = serve.lines();
            let serving = lines.iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                let rest = v["msg"].as_str()?.strip_prefix("serving metrics on ")?;
                let rest = rest.strip_prefix("https://").or(rest.strip_prefix("http://"))?;
                rest.split('/').next()?.parse::<SocketAddr>().ok()
            });
            if let (Some(a), true) = (serving, lines.iter().any(|l| l.contains("attached"))) {
                break a;
            }
            assert!(Instant::now() < deadline, "serve did not start: {lines:?}");
            assert!(serve.child.try_wait().unwrap().is_none(), "serve exited: {lines:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        serve
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    /// (VmRSS, VmHWM) in KiB: now and the peak of the whole run.
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGTERM: a clean exit 0 after all that.
    fn stop(mut self) {
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "serve did not stop within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "serve exited with {status}: {:?}", self.lines());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pidfd-trace-sec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// pidfd_open(own pid) from a child process named `comm`, so its event and series are ours alone.
fn pidfd_open_as(comm: &str) {
    assert!(comm.len() <= 15, "the kernel keeps 15 bytes of a comm");
    // A process of its own named `comm`: events carry the process (thread-group leader) name
    // in `comm` (docs/events.md), so a named thread of this test would not do.
    let name = std::ffi::CString::new(comm).unwrap();
    // SAFETY: the child only makes raw syscalls and `_exit`s (fork in a threaded process).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
            let fd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
            libc::_exit(if fd >= 0 { 0 } else { 1 });
        }
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "pidfd_open in the {comm} child failed: status {status:#x}"
    );
}

/// Raw HTTP/1.0 GET with every step bounded by `within`: (status, body), or why it failed.
fn scrape(addr: SocketAddr, path: &str, within: Duration) -> Result<(u16, String), String> {
    scrape_as(addr, path, "", within)
}

/// `scrape` with extra header lines (`auth`: `Authorization: ...\r\n` or empty).
fn scrape_as(addr: SocketAddr, path: &str, auth: &str, within: Duration) -> Result<(u16, String), String> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, within).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(within)).unwrap();
    s.set_write_timeout(Some(within)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    if t.elapsed() > within {
        return Err(format!("took {:?}", t.elapsed()));
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let code =
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(format!("no status: {text:?}"))?;
    Ok((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

fn series_value(body: &str, series: &str) -> Option<u64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok()).map(|v| v as u64)
}

/// What `healthy` measured (printed with the test's output).
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Health {
    /// The first scrape of the check, connect to last byte.
    first_scrape: Duration,
    /// From our pidfd_open to its series in a scrape and its line in the events log.
    event_seen: Duration,
    rss_kib: u64,
    peak_rss_kib: u64,
}

/// `pidfd_trace_http_rejected_total{reason}` now.
fn rejected(serve: &Serve, reason: &str) -> u64 {
    let (_, body) = scrape_as(serve.addr, "/metrics", &serve.auth, SCRAPE_WITHIN).unwrap();
    series_value(&body, &format!("pidfd_trace_http_rejected_total{{reason=\"{reason}\"}}"))
        .unwrap_or_else(|| panic!("no rejected series for {reason}"))
}

fn lost_total(body: &str) -> u64 {
    series_value(body, "pidfd_trace_events_lost_total ").unwrap_or(0)
}

/// While (or right after) an attack: a pidfd_open made now reaches the metrics and the
/// events log, every scrape is answered within SCRAPE_WITHIN, and the agent's memory is
/// bounded. `comm` (at most 13 bytes) names the thread that makes the call.
///
/// This host may be busy with other work (benchmarks' clone storms): if our record was lost
/// to a full ring buffer, which the agent counts, the check is made again with a new call.
fn healthy(serve: &Serve, comm: &str) -> Health {
    let must_scrape = |what: &str| {
        let s = Instant::now();
        let (code, body) = scrape_as(serve.addr, "/metrics", &serve.auth, SCRAPE_WITHIN)
            .unwrap_or_else(|e| panic!("{what}: a scrape failed during the attack: {e}"));
        assert_eq!(code, 200, "{what}: {body}");
        (s.elapsed(), body)
    };
    let (first_scrape, body) = must_scrape(comm);
    for attempt in 0..3 {
        let lost_before = lost_total(&body);
        let comm = if attempt == 0 { comm.to_string() } else { format!("{comm}-{attempt}") };
        let t = Instant::now();
        pidfd_open_as(&comm);
        let series = format!(
            "pidfd_trace_process_events_total{{comm=\"{comm}\",event=\"pidfd_open\",outcome=\"ok\"}}"
        );
        let logged = || {
            std::fs::read_to_string(serve.dir.join("events.jsonl")).unwrap_or_default().lines().any(|l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| {
                    v["comm"] == comm.as_str() && v["event"] == "pidfd_open" && v["errno"].is_null()
                })
            })
        };
        let mut lost_after = lost_before;
        while t.elapsed() < Duration::from_secs(10) {
            let (_, body) = must_scrape(&comm);
            lost_after = lost_total(&body);
            if series_value(&body, &series) == Some(1) && logged() {
                let event_seen = t.elapsed();
                let (rss_kib, peak_rss_kib) = serve.rss_kib();
                assert!(peak_rss_kib < RSS_LIMIT_KIB, "{comm}: peak RSS {peak_rss_kib} KiB");
                let h = Health { first_scrape, event_seen, rss_kib, peak_rss_kib };
                eprintln!("{comm}: {h:?}");
                return h;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            lost_after > lost_before,
            "{comm}: our pidfd_open reached neither the metrics nor the events log within 10 s, and no record was lost"
        );
        eprintln!("{comm}: {} records lost meanwhile (host busy); trying again", lost_after - lost_before);
    }
    panic!("{comm}: three pidfd_opens in a row lost");
}

// ---------------------------------------------------------------------------------------
// Least privilege

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} in {status}"))
        .trim()
        .into()
}

/// Every thread of `pid` holds no capability and has no_new_privs; one line per thread.
fn assert_no_capabilities(pid: u32) -> Vec<String> {
    let tasks: Vec<PathBuf> =
        std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().map(|e| e.unwrap().path()).collect();
    tasks
        .iter()
        .map(|t| {
            let status = std::fs::read_to_string(t.join("status")).unwrap();
            let name = status_field(&status, "Name:");
            for set in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
                assert_eq!(status_field(&status, set), "0000000000000000", "{set} of thread {name} ({t:?})");
            }
            assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "thread {name}");
            format!(
                "thread {name}: CapEff {} CapPrm {} CapBnd {} NoNewPrivs 1",
                status_field(&status, "CapEff:"),
                status_field(&status, "CapPrm:"),
                status_field(&status, "CapBnd:")
            )
        })
        .collect()
}

#[test]
fn serve_keeps_no_capability_in_any_thread() {
    let serve = Serve::start("caps", &[]);
    let lines = serve.lines();
    assert!(
        lines.iter().any(|l| l.contains("dropped all") && l.contains("keeps none")),
        "the log says what it keeps: {lines:?}"
    );
    // Traffic first, so the HTTP workers have run.
    assert_eq!(scrape(serve.addr, "/metrics", SCRAPE_WITHIN).unwrap().0, 200);
    let threads = assert_no_capabilities(serve.pid());
    assert!(threads.len() >= 3, "the pipeline thread and the HTTP workers: {threads:?}");
    for t in &threads {
        eprintln!("{t}");
    }
    // Without capabilities it still reads its maps and ring buffer and serves.
    healthy(&serve, "sec-caps");
    serve.stop();
}

// ---------------------------------------------------------------------------------------
// TLS and basic auth

/// A bcrypt hash in the `$2y$` form htpasswd writes (cost 6 keeps a debug build quick).
fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash_with_result(password, 6).unwrap().format_for_version(bcrypt::Version::TwoY)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A self-signed server certificate for 127.0.0.1 and localhost: (cert, key) PEM files.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    (write(dir, "server.crt", &cert.pem()), write(dir, "server.key", &signing_key.serialize_pem()))
}

/// curl, bounded: (exit code, HTTP status, headers, body).
fn curl(args: &[&str]) -> (i32, u16, String, String) {
    let dir = tempdir("curl");
    let (h, b) = (dir.join("headers"), dir.join("body"));
    let out: Output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", h.to_str().unwrap(), "-o", b.to_str().unwrap()])
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (Debian package curl; `cargo xtask test` installs it)");
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let headers = std::fs::read_to_string(&h).unwrap_or_default();
    let body = std::fs::read_to_string(&b).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let exit = out.status.code().unwrap_or(-1);
    eprintln!("curl {args:?}: exit {exit}, HTTP {code}, {}", String::from_utf8_lossy(&out.stderr).trim());
    (exit, code, headers, body)
}

#[test]
fn tls_and_basic_auth_with_curl() {
    let dir = tempdir("tls");
    let (cert, _) = self_signed(&dir);
    // Relative file names: relative to the config file's directory.
    let config = write(
        &dir,
        "web.yml",
        &format!(
            "# exporter-toolkit format\ntls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {}\n  other: {}\n",
            bcrypt_hash("s3cret:with colon"),
            bcrypt_hash("another")
        ),
    );
    let serve = Serve::start("tls", &["--web.config.file", config.to_str().unwrap()]);
    assert!(
        serve
            .lines()
            .iter()
            .any(|l| l.contains("serving metrics on https://") && l.contains("basic auth for 2 user(s)"))
    );
    let metrics = serve.url("https", "/metrics");
    let ca = cert.to_str().unwrap();

    pidfd_open_as("sec-tls");
    let series = "pidfd_trace_process_events_total{comm=\"sec-tls\",event=\"pidfd_open\",outcome=\"ok\"} 1";
    let t = Instant::now();
    loop {
        let (exit, code, _, body) = curl(&["--cacert", ca, "-u", "prometheus:s3cret:with colon", &metrics]);
        assert_eq!((exit, code), (0, 200), "good credentials over https");
        assert!(body.contains("pidfd_trace_build_info{"), "{body}");
        if body.contains(series) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "our pidfd_open in the metrics over https: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (exit, code, _, body) = curl(&["--cacert", ca, "-u", "other:another", &serve.url("https", "/")]);
    assert_eq!((exit, code), (0, 200), "the landing page, second user");
    assert!(body.contains("pidfd-trace"), "{body}");

    for (what, creds) in [
        ("wrong password", Some("prometheus:wrong")),
        ("another user's password", Some("other:s3cret:with colon")),
        ("unknown user", Some("mallory:s3cret:with colon")),
        ("empty password", Some("prometheus:")),
        ("no credentials", None),
    ] {
        let mut args = vec!["--cacert", ca];
        if let Some(c) = creds {
            args.extend(["-u", c]);
        }
        args.push(&metrics);
        let (exit, code, headers, body) = curl(&args);
        assert_eq!((exit, code), (0, 401), "{what}");
        let challenge = headers.lines().find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"));
        assert!(challenge.is_some_and(|l| l[17..].trim().starts_with("Basic")), "{what}: {headers}");
        assert!(!body.contains("pidfd_trace"), "{what}: no metrics in a 401: {body}");
    }
    // Not trusted: curl refuses the self-signed certificate without --cacert (exit 60).
    let (exit, _, _, _) = curl(&["-u", "prometheus:s3cret:with colon", &metrics]);
    assert_eq!(exit, 60, "an untrusted certificate");
    // Plain HTTP to the TLS port: a 400 that says so, never metrics.
    let (_, code, _, body) = curl(&["-u", "prometheus:s3cret:with colon", &serve.url("http", "/metrics")]);
    assert_eq!(code, 400, "plain HTTP to the TLS port: {body}");
    assert!(body.contains("HTTP request to an HTTPS server") && !body.contains("pidfd_trace"), "{body}");
    // And the server still answers afterwards.
    let (exit, code, _, _) = curl(&["--cacert", ca, "-u", "prometheus:s3cret:with colon", &metrics]);
    assert_eq!((exit, code), (0, 200));
    let (rss, peak) = serve.rss_kib();
    eprintln!("tls: RSS {rss} KiB, peak {peak} KiB");
    // bcrypt ran on the blocking pool: those threads, too, came after the drop.
    for t in assert_no_capabilities(serve.pid()) {
        eprintln!("tls: {t}");
    }
    let (body, ..) = (curl(&["--cacert", ca, "-u", "prometheus:s3cret:with colon", &metrics]).3,);
    let count = |reason: &str| {
        series_value(&body, &format!("pidfd_trace_http_rejected_total{{reason=\"{reason}\"}}")).unwrap()
    };
    eprintln!(
        "tls: rejected unauthorized {}, tls_handshake {}, plain_http_on_tls {}",
        count("unauthorized"),
        count("tls_handshake"),
        count("plain_http_on_tls")
    );
    assert_eq!(count("unauthorized"), 5);
    assert_eq!(count("plain_http_on_tls"), 1);
    assert!(count("tls_handshake") >= 1, "the client that did not trust us");
    serve.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_certificates_required() {
    let dir = tempdir("mtls");
    let (cert, _) = self_signed(&dir);
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pidfd-trace test client CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    write(&dir, "clients-ca.crt", &ca.pem());
    let mut client_params = rcgen::CertificateParams::new(vec!["scraper".to_string()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    let client_crt = write(&dir, "client.crt", &client.pem());
    let client_key = write(&dir, "client.key", &client_key.serialize_pem());
    // A client certificate from another CA.
    let rcgen::CertifiedKey { cert: stranger, signing_key: stranger_key } =
        rcgen::generate_simple_self_signed(vec!["stranger".to_string()]).unwrap();
    let stranger_crt = write(&dir, "stranger.crt", &stranger.pem());
    let stranger_key = write(&dir, "stranger.key", &stranger_key.serialize_pem());
    let config = write(
        &dir,
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clients-ca.crt\n",
    );
    let serve = Serve::start("mtls", &["--web.config.file", config.to_str().unwrap()]);
    let metrics = serve.url("https", "/metrics");
    let ca_file = cert.to_str().unwrap();
    let (exit, code, _, body) = curl(&[
        "--cacert",
        ca_file,
        "--cert",
        client_crt.to_str().unwrap(),
        "--key",
        client_key.to_str().unwrap(),
        &metrics,
    ]);
    assert_eq!((exit, code), (0, 200), "with a client certificate from the configured CA");
    assert!(body.contains("pidfd_trace_build_info{"));
    let (exit, code, _, _) = curl(&["--cacert", ca_file, &metrics]);
    assert!(exit != 0 && code == 0, "no client certificate: the handshake fails (curl exit {exit})");
    let (exit, code, _, _) = curl(&[
        "--cacert",
        ca_file,
        "--cert",
        stranger_crt.to_str().unwrap(),
        "--key",
        stranger_key.to_str().unwrap(),
        &metrics,
    ]);
    assert!(exit != 0 && code == 0, "a certificate of another CA: refused (curl exit {exit})");
    serve.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_web_config_is_one_line_before_anything_is_loaded() {
    let dir = tempdir("badcfg");
    let (cert, key) = self_signed(&dir);
    let (other_cert, _) = {
        let d = dir.join("other");
        std::fs::create_dir_all(&d).unwrap();
        self_signed(&d)
    };
    let hash = bcrypt_hash("pw");
    let tls = |c: &Path, k: &Path| {
        format!("tls_server_config:\n  cert_file: {}\n  key_file: {}\n", c.display(), k.display())
    };
    write(&dir, "not-pem.crt", "hello\n");
    let unreadable = write(&dir, "unreadable.key", &std::fs::read_to_string(&key).unwrap());
    let cases: Vec<(String, Option<String>, &str)> = vec![
        ("missing file".into(), None, "cannot read"),
        ("unparsable".into(), Some("tls_server_config: {cert_file: a\n".into()), "at line"),
        ("wrong shape".into(), Some("tls_server_config: [cert_file]\n".into()), "invalid type: sequence"),
        (
            "unknown top-level key".into(),
            Some("http_server_config:\n  http2: true\n".into()),
            "unknown field `http_server_config`",
        ),
        (
            "unknown tls key".into(),
            Some(format!("{}  min_version: TLS13\n", tls(&cert, &key))),
            "unknown field `min_version`",
        ),
        (
            "missing key_file".into(),
            Some(format!("tls_server_config:\n  cert_file: {}\n", cert.display())),
            "missing field `key_file`",
        ),
        (
            "bad bcrypt hash".into(),
            Some("basic_auth_users:\n  alice: plaintext\n".into()),
            "`alice` is not a bcrypt hash",
        ),
        (
            "truncated bcrypt hash".into(),
            Some(format!("basic_auth_users:\n  alice: {}\n", &hash[..40])),
            "`alice` is not a bcrypt hash",
        ),
        ("missing cert".into(), Some(tls(&dir.join("nope.crt"), &key)), "nope.crt: No such file"),
        ("cert not PEM".into(), Some(tls(&dir.join("not-pem.crt"), &key)), "no certificate in it"),
        ("key not PEM".into(), Some(tls(&cert, &dir.join("not-pem.crt"))), "no usable private key"),
        ("key of another cert".into(), Some(tls(&other_cert, &key)), "does not belong to the certificate"),
        ("cert as key".into(), Some(tls(&cert, &cert)), "no usable private key"),
        ("unreadable key".into(), Some(tls(&cert, &unreadable)), "unreadable.key"),
        (
            "client auth without CA".into(),
            Some(format!("{}  client_auth_type: RequireAndVerifyClientCert\n", tls(&cert, &key))),
            "client_ca_file is required",
        ),
    ];
    // Root reads anything; an unreadable file is simulated by a directory in its place.
    std::fs::remove_file(&unreadable).unwrap();
    std::fs::create_dir(&unreadable).unwrap();
    for (what, text, needle) in cases {
        let path = dir.join("web.yml");
        let _ = std::fs::remove_file(&path);
        if let Some(t) = &text {
            std::fs::write(&path, t).unwrap();
        }
        let t = Instant::now();
        let out = Command::new(AGENT)
            .args([
                "serve",
                "--web.listen-address",
                "127.0.0.1:0",
                "--web.config.file",
                path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: exit code; stderr: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: exactly one line, nothing attached: {err}");
        assert!(
            err.starts_with("pidfd-trace: error: cannot use --web.config.file ") && err.contains(needle),
            "{what}: want {needle:?} in {err}"
        );
        assert!(!err.contains("panicked") && !err.contains(&hash[7..]), "{what}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{what}: failed fast, before loading: {:?}",
            t.elapsed()
        );
        eprintln!("{what}: {}", err.trim_end());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Hostile HTTP clients (plain HTTP)

/// Sends `request` (writing what the server lets us), then reads the answer: the status, or
/// how the connection ended. Bounded by `within`.
fn hostile(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    let t = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, within) {
        Ok(s) => s,
        Err(e) => return format!("connect: {e}"),
    };
    s.set_write_timeout(Some(within)).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let end = match s.read_to_end(&mut raw) {
        Ok(_) => "closed".to_string(),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            format!("still open after {within:?}")
        }
        Err(e) => format!("{e}"),
    };
    let text = String::from_utf8_lossy(&raw);
    match text.strip_prefix("HTTP/1.") {
        Some(r) => format!("HTTP {} after {:?}", r.get(2..5).unwrap_or("?"), t.elapsed()),
        None => format!("{end} after {:?}", t.elapsed()),
    }
}

#[test]
fn hostile_oversized_heads() {
    let serve = Serve::start("big", &[]);
    let addr = serve.addr;
    let mib = "a".repeat(1 << 20);
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("1 MiB header", format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {mib}\r\n\r\n").into_bytes()),
        ("1 MiB request line", format!("GET /{mib} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
        (
            "20k small headers",
            format!("GET /metrics HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(20_000)).into_bytes(),
        ),
        ("1 MiB header, no end", format!("GET /metrics HTTP/1.1\r\nX-Big: {mib}").into_bytes()),
    ];
    // Each four times at once, while we make our own event and scrape.
    let attackers: Vec<_> = requests
        .iter()
        .flat_map(|(what, req)| (0..4).map(move |_| (*what, req.clone())))
        .map(|(what, req)| std::thread::spawn(move || (what, hostile(addr, &req, Duration::from_secs(10)))))
        .collect();
    let h = healthy(&serve, "sec-big");
    for a in attackers {
        let (what, outcome) = a.join().unwrap();
        eprintln!("{what}: {outcome}");
        assert!(
            outcome.starts_with("HTTP 431") || outcome.contains("reset") || outcome.starts_with("closed"),
            "{what}: refused, not served and not left hanging: {outcome}"
        );
    }
    assert!(h.first_scrape < SCRAPE_WITHIN);
    healthy(&serve, "sec-big2");
    let too_large = rejected(&serve, "head_too_large");
    eprintln!("rejected head_too_large: {too_large}");
    assert_eq!(too_large, 16, "every oversized head counted");
    serve.stop();
}

#[test]
fn hostile_garbage_requests() {
    let serve = Serve::start("garbage", &[]);
    let mut noise = vec![0u8; 4096];
    let mut x: u32 = 0x9e37_79b9;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("NUL bytes", b"\x00\x00\x00\x00\r\n\r\n".to_vec()),
        ("random bytes", noise),
        ("no version", b"GET /metrics\r\n\r\n".to_vec()),
        ("HTTP/9.9", b"GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("three words", b"FOO BAR BAZ\r\n\r\n".to_vec()),
        ("bad method", b"G\x01T /metrics HTTP/1.1\r\n\r\n".to_vec()),
        ("header without colon", b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n".to_vec()),
        ("negative length", b"POST /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec()),
        (
            "two lengths",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
        ),
        ("bad chunk", b"POST /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n".to_vec()),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
        (
            "CONNECT",
            b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "path traversal",
            b"GET /../../etc/shadow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("only CRLFs", b"\r\n".repeat(2000)),
    ];
    let mut outcomes = Vec::new();
    for (what, req) in &cases {
        let outcome = hostile(serve.addr, req, Duration::from_secs(8));
        eprintln!("{what}: {outcome}");
        assert!(
            !outcome.starts_with("HTTP 2")
                && !outcome.starts_with("HTTP 5")
                && !outcome.contains("still open"),
            "{what}: refused, not served, not left hanging: {outcome}"
        );
        outcomes.push(outcome);
    }
    healthy(&serve, "sec-garbage");
    let malformed = rejected(&serve, "malformed");
    eprintln!("rejected malformed: {malformed}");
    assert!(malformed >= 10, "malformed requests counted: {malformed}");
    serve.stop();
}

#[test]
fn hostile_slowloris() {
    let serve = Serve::start("slow", &[]);
    // More trickling clients than the connection limit (32), each adding a byte of header
    // every 200 ms for up to 9 s.
    const N: usize = 48;
    let t0 = Instant::now();
    let mut socks: Vec<TcpStream> = (0..N)
        .map(|_| {
            let mut s = TcpStream::connect(serve.addr).unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let closed_at: Arc<Mutex<Vec<Option<Duration>>>> = Arc::new(Mutex::new(vec![None; N]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let (closed_at, done) = (closed_at.clone(), done.clone());
        std::thread::spawn(move || {
            while t0.elapsed() < Duration::from_secs(9) && !done.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, s) in socks.iter_mut().enumerate() {
                    let mut c = closed_at.lock().unwrap();
                    if c[i].is_some() {
                        continue;
                    }
                    let mut buf = [0u8; 256];
                    let gone = match s.read(&mut buf) {
                        Ok(_) => true,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => s.write_all(b"a").is_err(),
                        Err(_) => true,
                    };
                    if gone {
                        c[i] = Some(t0.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            socks
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    // The limit is taken by tricklers: a real scrape still gets in, at once.
    let h = healthy(&serve, "sec-slow");
    assert!(h.first_scrape < SCRAPE_WITHIN);
    // Every trickler is gone by the header read timeout (5 s) plus slack.
    let deadline = Instant::now() + Duration::from_secs(8);
    while closed_at.lock().unwrap().iter().any(Option::is_none) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let socks = trickler.join().unwrap();
    let closed = closed_at.lock().unwrap().clone();
    let mut times: Vec<f64> = closed.iter().flatten().map(|d| d.as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    eprintln!(
        "slowloris: {} of {N} closed by the server; first at {:.1}s, last at {:.1}s",
        times.len(),
        times.first().unwrap_or(&0.0),
        times.last().unwrap_or(&0.0)
    );
    assert_eq!(times.len(), N, "every trickling client cut off: {closed:?}");
    assert!(*times.last().unwrap() < 7.5, "cut off by the 5 s header read timeout: {times:?}");
    drop(socks);
    healthy(&serve, "sec-slow2");
    let (timeouts, evicted) = (rejected(&serve, "header_timeout"), rejected(&serve, "evicted"));
    eprintln!("slowloris: rejected header_timeout {timeouts}, evicted {evicted}");
    // Each trickler once; our own scrapes evict a trickler each while the limit is taken.
    assert!((N as u64..N as u64 + 20).contains(&(timeouts + evicted)), "each trickler cut off and counted");
    serve.stop();
}

/// Raises this process's open-file limit to at least `n` (within the hard limit).
fn raise_nofile(n: u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_cur < n {
        r.rlim_cur = n.min(r.rlim_max);
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0, "raising RLIMIT_NOFILE");
    }
    assert!(r.rlim_cur >= n, "RLIMIT_NOFILE hard limit {} is below {n}", r.rlim_max);
}

#[test]
fn hostile_thousands_of_held_connections() {
    raise_nofile(4096);
    let serve = Serve::start("held", &[]);
    const N: usize = 2000;
    let t = Instant::now();
    let mut held = Vec::with_capacity(N);
    let mut failed = 0;
    for _ in 0..N {
        match TcpStream::connect_timeout(&serve.addr, Duration::from_secs(2)) {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
        assert!(t.elapsed() < Duration::from_secs(20), "opening {N} connections took too long");
    }
    eprintln!("held: {} connections open ({failed} refused) after {:?}", held.len(), t.elapsed());
    // All of them still open on our side: scrapes and events go on.
    let h = healthy(&serve, "sec-held");
    assert!(h.first_scrape < SCRAPE_WITHIN);
    // Some sending half a request too.
    for s in held.iter_mut().take(100) {
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
    }
    healthy(&serve, "sec-held2");
    let open_on_agent = std::fs::read_dir(format!("/proc/{}/fd", serve.pid())).unwrap().count();
    eprintln!("held: the agent has {open_on_agent} fds open");
    assert!(open_on_agent < 200, "the agent holds at most its connection limit: {open_on_agent} fds");
    drop(held);
    healthy(&serve, "sec-held3");
    let (evicted, busy) = (rejected(&serve, "evicted"), rejected(&serve, "all_busy"));
    eprintln!("held: rejected evicted {evicted}, all_busy {busy}");
    assert!(evicted >= (N - 32) as u64, "idle connections evicted to make room: {evicted}");
    serve.stop();
}

/// A client socket with a tiny receive buffer, so the server's writes stall.
fn tiny_window(addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 loopback") };
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 1024;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
            sin_zero: [0; 8],
        };
        let r =
            libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sa) as u32);
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn hostile_readers_that_never_read() {
    let serve = Serve::start("noread", &[]);
    // Pipelined requests whose answers (tens of KiB each) nobody reads, on more connections
    // than the limit: the server's writes stall on a full window.
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
    let socks: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = tiny_window(serve.addr);
            s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
            let _ = s.write_all(request.as_bytes());
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let h = healthy(&serve, "sec-noread");
    assert!(h.first_scrape < SCRAPE_WITHIN);
    drop(socks);
    healthy(&serve, "sec-noread2");
    serve.stop();
}

fn basic_header(user: &str, password: &str) -> String {
    use base64::Engine;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {creds}\r\n")
}

#[test]
fn hostile_wrong_password_flood() {
    let dir = tempdir("flood");
    let config =
        write(&dir, "web.yml", &format!("basic_auth_users:\n  prometheus: {}\n", bcrypt_hash("right")));
    let mut serve = Serve::start("flood", &["--web.config.file", config.to_str().unwrap()]);
    serve.auth = basic_header("prometheus", "right");
    // The scraper's first request pays its one bcrypt check.
    assert_eq!(scrape_as(serve.addr, "/metrics", &serve.auth, SCRAPE_WITHIN).unwrap().0, 200);

    // More password guessers than connection slots, each trying again as soon as answered,
    // for 6 s: every guess costs the agent a bcrypt.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = serve.addr;
    let guessers: Vec<_> = (0..48)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut denied, t) = (0u64, Instant::now());
                let guess = basic_header("prometheus", &format!("guess{i}"));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && t.elapsed() < Duration::from_secs(6)
                {
                    if let Ok((401, _)) = scrape_as(addr, "/metrics", &guess, Duration::from_secs(5)) {
                        denied += 1;
                    }
                }
                denied
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let r = scrape_as(serve.addr, "/metrics", &serve.auth, SCRAPE_WITHIN);
        assert!(matches!(r, Ok((200, _))), "the scraper during the flood: {r:?}");
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let h = healthy(&serve, "sec-flood");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let denied: u64 = guessers.into_iter().map(|g| g.join().unwrap()).sum();
    let (unauthorized, evicted) = (rejected(&serve, "unauthorized"), rejected(&serve, "evicted"));
    eprintln!(
        "flood: {denied} guesses answered 401 (agent counted {unauthorized}), {evicted} waiting guessers evicted; worst scrape {worst:?}"
    );
    assert!(worst < SCRAPE_WITHIN && h.first_scrape < SCRAPE_WITHIN);
    assert!(denied > 0 && unauthorized >= denied, "guesses were answered, and counted");
    serve.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

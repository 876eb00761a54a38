//! `--web.config.file`: TLS and basic auth for the metrics endpoint, in the Prometheus
//! exporter-toolkit format (YAML), read and checked in full before anything is loaded into
//! the kernel: a file that cannot be used is one line and a non-zero exit.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt            # PEM, leaf first; relative to this file's directory
//!   key_file: server.key             # PEM (PKCS#8, PKCS#1 or SEC1)
//!   client_auth_type: RequireAndVerifyClientCert   # optional
//!   client_ca_file: clients-ca.crt   # optional
//! basic_auth_users:
//!   prometheus: $2y$10$...           # bcrypt, e.g. `htpasswd -nbBC 10 prometheus PASSWORD`
//! ```
//! Keys outside these are refused rather than ignored: a setting the operator believes is
//! in force (say, `min_version`) must not silently be absent.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine;
use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;

use super::auth::{BasicAuth, User};

/// Largest web config, certificate or key file read (a certificate chain is a few KiB).
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path} is larger than 1 MiB; is it the right file?")]
    TooLarge { path: PathBuf },
    #[error("{0}")]
    Yaml(String),
    #[error("tls_server_config: {0}")]
    Tls(String),
    #[error("basic_auth_users: {0}")]
    Users(String),
}

/// The file as written. Field names are exporter-toolkit's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
}

/// What the HTTP server enforces.
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    pub auth: Option<BasicAuth>,
    /// One line for the log: what is in force.
    pub summary: String,
}

impl WebConfig {
    /// Plain HTTP, no authentication (no --web.config.file).
    pub fn none() -> Self {
        Self { tls: None, auth: None, summary: "plain HTTP, no authentication".into() }
    }

    /// Reads and checks the file, the certificates and keys it names, and every hash.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = read_text(path)?;
        let file = parse(&text)?;
        // exporter-toolkit resolves relative file names against the config file's directory.
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = file.tls_server_config.map(|t| tls_config(&t, dir)).transpose()?;
        let users = file.basic_auth_users.unwrap_or_default();
        let auth = if users.is_empty() { None } else { Some(basic_auth(users)?) };
        let summary = format!(
            "{}, {}",
            match tls.as_ref().map(|t| t.client_auth) {
                Some(ClientAuth::Require) => "TLS, client certificates required and verified",
                Some(ClientAuth::IfGiven) => "TLS, client certificates verified when given",
                Some(ClientAuth::None) => "TLS",
                None => "plain HTTP",
            },
            match &auth {
                Some(a) => format!("basic auth for {} user(s)", a.user_count()),
                None => "no basic auth".into(),
            }
        );
        Ok(Self { tls: tls.map(|t| Arc::new(t.config)), auth, summary })
    }
}

fn parse(text: &str) -> Result<FileFormat, WebConfigError> {
    // An empty file (or only comments) is a valid config that changes nothing, as in
    // exporter-toolkit.
    let file: Option<FileFormat> =
        serde_yaml_ng::from_str(text).map_err(|e| WebConfigError::Yaml(one_line(&e.to_string())))?;
    Ok(file.unwrap_or_default())
}

/// A built rustls config plus what the log line says about client certificates.
struct Tls {
    config: ServerConfig,
    client_auth: ClientAuth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    None,
    IfGiven,
    Require,
}

fn client_auth(t: &TlsFile) -> Result<ClientAuth, WebConfigError> {
    let bad = |s: &str| WebConfigError::Tls(s.to_string());
    let kind = match t.client_auth_type.as_deref() {
        // exporter-toolkit: a CA file without a type means "require and verify".
        None | Some("") if t.client_ca_file.is_some() => ClientAuth::Require,
        None | Some("") | Some("NoClientCert") => ClientAuth::None,
        Some("VerifyClientCertIfGiven") => ClientAuth::IfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::Require,
        Some(t @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            return Err(bad(&format!(
                "client_auth_type {t} accepts certificates nobody verified, which pidfd-trace does not do; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
            )));
        }
        Some(other) => {
            return Err(bad(&format!(
                "unknown client_auth_type `{other}`; expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )));
        }
    };
    if kind != ClientAuth::None && t.client_ca_file.is_none() {
        return Err(bad("client_auth_type verifies client certificates, so client_ca_file is required"));
    }
    if kind == ClientAuth::None && t.client_ca_file.is_some() {
        return Err(bad("client_ca_file is set but client_auth_type is NoClientCert; remove one of them"));
    }
    Ok(kind)
}

fn tls_config(t: &TlsFile, dir: &Path) -> Result<Tls, WebConfigError> {
    let tls_err = |s: String| WebConfigError::Tls(s);
    let kind = client_auth(t)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let cert_path = dir.join(&t.cert_file);
    let certs = read_certs(&cert_path, "cert_file")?;
    let key_path = dir.join(&t.key_file);
    let key_pem = read_bytes(&key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        tls_err(format!(
            "key_file {}: no usable private key ({}); it must be a PEM private key (PKCS#8, PKCS#1 or SEC1), unencrypted",
            key_path.display(),
            pem_error(&e)
        ))
    })?;

    let verifier: Option<Arc<dyn ClientCertVerifier>> = match kind {
        ClientAuth::None => None,
        ClientAuth::IfGiven | ClientAuth::Require => {
            let ca_path = dir.join(t.client_ca_file.as_ref().expect("checked in client_auth"));
            let mut roots = RootCertStore::empty();
            for c in read_certs(&ca_path, "client_ca_file")? {
                roots.add(c).map_err(|e| {
                    tls_err(format!("client_ca_file {}: unusable CA certificate: {e}", ca_path.display()))
                })?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if kind == ClientAuth::IfGiven { b.allow_unauthenticated() } else { b };
            Some(b.build().map_err(|e| tls_err(format!("client_ca_file {}: {e}", ca_path.display())))?)
        }
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => "the private key does not belong to the certificate".into(),
            e => one_line(&e.to_string()),
        };
        tls_err(format!("cert_file {} with key_file {}: {why}", cert_path.display(), key_path.display()))
    })?;
    // The server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls { config, client_auth: kind })
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let pem = read_bytes(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
        WebConfigError::Tls(format!(
            "{key} {}: not a PEM certificate file ({})",
            path.display(),
            pem_error(&e)
        ))
    })?;
    if certs.is_empty() {
        return Err(WebConfigError::Tls(format!(
            "{key} {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::NoItemsFound => "nothing of that kind in it".into(),
        // The other variants may quote a line of the file: of a key file, that would be a
        // piece of the key in the log.
        rustls_pki_types::pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        rustls_pki_types::pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".into(),
        rustls_pki_types::pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        other => one_line(&other.to_string()),
    }
}

fn basic_auth(users: BTreeMap<String, String>) -> Result<BasicAuth, WebConfigError> {
    let mut out = Vec::with_capacity(users.len());
    for (name, hash) in users {
        if name.contains(':') {
            return Err(WebConfigError::Users(format!(
                "user name `{name}` contains `:`, which HTTP basic auth cannot carry"
            )));
        }
        let cost = bcrypt_cost(&hash).ok_or_else(|| {
            // The hash itself is not repeated: it is a secret of sorts.
            WebConfigError::Users(format!(
                "the password hash of `{name}` is not a bcrypt hash ($2a$, $2b$ or $2y$, cost 4-31, 60 characters); make one with `htpasswd -nbBC 10 {name} PASSWORD`"
            ))
        })?;
        out.push(User { name, hash, cost });
    }
    Ok(BasicAuth::new(out))
}

/// The cost of a well-formed bcrypt hash: `$2b$10$` + 22 characters of salt + 31 of hash,
/// in bcrypt's base64 alphabet, both decoding to the right lengths.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let parts: bcrypt::HashParts = hash.parse().ok()?;
    let cost = parts.get_cost();
    let body = hash.get(7..)?;
    let ok = hash.len() == 60
        && (4..=31).contains(&cost)
        && ["$2a$", "$2b$", "$2y$"].contains(&&hash[..4])
        && bcrypt::BASE_64.decode(&body[..22]).is_ok_and(|s| s.len() == 16)
        && bcrypt::BASE_64.decode(&body[22..]).is_ok_and(|h| h.len() == 23);
    ok.then_some(cost)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, WebConfigError> {
    let read_err = |err| WebConfigError::Read { path: path.to_path_buf(), err };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(std::io::Error::other("is a directory")));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(WebConfigError::TooLarge { path: path.to_path_buf() });
    }
    std::fs::read(path).map_err(read_err)
}

fn read_text(path: &Path) -> Result<String, WebConfigError> {
    String::from_utf8(read_bytes(path)?).map_err(|_| WebConfigError::Yaml("not UTF-8 text".into()))
}

/// Messages from parsers may span lines; the agent's start-up errors are one line.
fn one_line(s: &str) -> String {
    s.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

    #[test]
    fn file_format() {
        assert!(parse("").unwrap().tls_server_config.is_none());
        assert!(parse("# nothing yet\n").unwrap().basic_auth_users.is_none());
        let f = parse("basic_auth_users:\n  alice: x\n").unwrap();
        assert_eq!(f.basic_auth_users.unwrap()["alice"], "x");
        let f = parse("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n").unwrap();
        assert_eq!(f.tls_server_config.unwrap().cert_file, PathBuf::from("a.crt"));

        let err = |t: &str| parse(t).err().map(|e| e.to_string()).unwrap_or_default();
        let e = err("http_server_config:\n  http2: false\n");
        assert!(e.contains("unknown field `http_server_config`"), "{e}");
        let e = err("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n");
        assert!(e.contains("unknown field `min_version`"), "{e}");
        let e = err("tls_server_config:\n  key_file: b\n");
        assert!(e.contains("missing field `cert_file`"), "{e}");
        let e = err("basic_auth_users: [alice]\n");
        assert!(e.contains("invalid type"), "{e}");
        let e = err("tls_server_config: {cert_file: a\n");
        assert!(!e.is_empty() && !e.contains('\n'), "{e}");
    }

    #[test]
    fn client_auth_types() {
        let t = |kind: Option<&str>, ca: bool| TlsFile {
            cert_file: "c".into(),
            key_file: "k".into(),
            client_auth_type: kind.map(str::to_string),
            client_ca_file: ca.then(|| PathBuf::from("ca")),
        };
        assert_eq!(client_auth(&t(None, false)).unwrap(), ClientAuth::None);
        assert_eq!(client_auth(&t(None, true)).unwrap(), ClientAuth::Require);
        assert_eq!(client_auth(&t(Some("NoClientCert"), false)).unwrap(), ClientAuth::None);
        assert_eq!(client_auth(&t(Some("VerifyClientCertIfGiven"), true)).unwrap(), ClientAuth::IfGiven);
        assert_eq!(client_auth(&t(Some("RequireAndVerifyClientCert"), true)).unwrap(), ClientAuth::Require);
        for (kind, ca, needle) in [
            ("RequireAndVerifyClientCert", false, "client_ca_file is required"),
            ("NoClientCert", true, "remove one of them"),
            ("RequireAnyClientCert", true, "nobody verified"),
            ("Sometimes", true, "unknown client_auth_type `Sometimes`"),
        ] {
            let e = client_auth(&t(Some(kind), ca)).unwrap_err().to_string();
            assert!(e.contains(needle), "{kind}: {e}");
        }
    }

    #[test]
    fn bcrypt_hashes() {
        assert_eq!(bcrypt_cost(HASH), Some(10));
        assert_eq!(bcrypt_cost(&HASH.replace("$2y$", "$2b$")), Some(10));
        for bad in [
            "",
            "secret",
            "$2y$10$short",
            &HASH.replace("$10$", "$03$"),
            &HASH.replace("$10$", "$xx$"),
            &HASH.replace("$2y$", "$2x$"),
            &HASH.replace("$2y$", "$1$$"),
            &format!("{HASH}A"),
            &HASH.replace('Q', "*"),
        ] {
            assert_eq!(bcrypt_cost(bad), None, "{bad}");
        }
        let e = basic_auth(BTreeMap::from([("bob".into(), "plain".into())])).err().unwrap().to_string();
        assert!(e.contains("`bob` is not a bcrypt hash") && e.contains("htpasswd -nbBC 10 bob"), "{e}");
        let e = basic_auth(BTreeMap::from([("a:b".into(), HASH.into())])).err().unwrap().to_string();
        assert!(e.contains("contains `:`"), "{e}");
    }

    #[test]
    fn one_line_messages() {
        assert_eq!(one_line("a\n  b\n\n"), "a; b");
    }
}

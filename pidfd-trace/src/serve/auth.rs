//! HTTP basic auth for the metrics endpoint against bcrypt hashes (`basic_auth_users` of
//! the web config). Every comparison involving a secret runs in constant time: the user
//! name against every configured name, the password through bcrypt (whose final comparison
//! is constant-time) or through a keyed digest of the password bcrypt last accepted. An
//! unknown user still costs one bcrypt, against a hash nobody matches, so the answer's
//! timing does not say which names exist.
//!
//! bcrypt is slow on purpose (cost 10: tens of milliseconds of CPU), so it runs on the
//! blocking pool one at a time: a flood of wrong passwords costs at most one core and never
//! the event pipeline's thread. A scraper that keeps presenting the right password is
//! answered from the digest without bcrypt, so such a flood does not delay it either.
use std::sync::{Arc, Mutex};

use base64::Engine;
use hyper::header::HeaderValue;
use ring::hmac;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// bcrypt looks at the first 72 bytes only; a longer password is refused rather than
/// truncated (as Go's bcrypt, which exporter-toolkit uses, does).
const BCRYPT_MAX_PASSWORD: usize = 72;

/// One `basic_auth_users` entry, checked well-formed by the web config.
pub struct User {
    pub name: String,
    pub hash: String,
    pub cost: u32,
}

pub struct BasicAuth {
    users: Vec<User>,
    /// A well-formed hash at the highest configured cost that no password matches.
    decoy: String,
    /// Random per run: the digests below are worthless outside this process.
    key: hmac::Key,
    /// Per user, the keyed digest of the last password bcrypt accepted.
    verified: Mutex<Vec<Option<hmac::Tag>>>,
    bcrypt_slots: Arc<Semaphore>,
}

impl BasicAuth {
    pub fn new(users: Vec<User>) -> Self {
        let cost = users.iter().map(|u| u.cost).max().unwrap_or(10);
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the kernel's random source");
        Self {
            verified: Mutex::new(vec![None; users.len()]),
            users,
            // `.` is zero in bcrypt's base64: a valid salt and hash, matched by no password.
            decoy: format!("$2b${cost:02}${}", ".".repeat(53)),
            key,
            bcrypt_slots: Arc::new(Semaphore::new(1)),
        }
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Whether the request's `Authorization` header carries a configured user and its
    /// password.
    pub async fn allows(&self, header: Option<&HeaderValue>) -> bool {
        let Some((name, password)) = header.and_then(|h| parse_basic(h.as_bytes())) else {
            return false;
        };
        // Compare against every name, always, without branching on a match.
        let mut found = None;
        for (i, u) in self.users.iter().enumerate() {
            let same: bool = u.name.as_bytes().ct_eq(&name).into();
            if same && found.is_none() {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            let tag = self.verified.lock().unwrap_or_else(|p| p.into_inner())[i];
            if let Some(tag) = tag
                && hmac::verify(&self.key, &password, tag.as_ref()).is_ok()
            {
                return true;
            }
        }
        let too_long = password.len() > BCRYPT_MAX_PASSWORD;
        let hash = match found {
            Some(i) if !too_long => self.users[i].hash.clone(),
            _ => self.decoy.clone(),
        };
        let Ok(permit) = self.bcrypt_slots.clone().acquire_owned().await else { return false };
        let pw = password.clone();
        // The permit moves into the blocking task: a client that disconnects mid-check does
        // not let a second bcrypt start beside the first.
        let ok = tokio::task::spawn_blocking(move || {
            let ok = bcrypt::verify(&pw, &hash).unwrap_or(false);
            drop(permit);
            ok
        })
        .await
        .unwrap_or(false);
        match found {
            Some(i) if ok && !too_long => {
                self.verified.lock().unwrap_or_else(|p| p.into_inner())[i] =
                    Some(hmac::sign(&self.key, &password));
                true
            }
            _ => false,
        }
    }
}

/// `Basic base64(name:password)` → (name, password). The scheme is case-insensitive; the
/// password may contain `:`, the name may not.
fn parse_basic(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, creds) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(creds.trim()).ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    Some((raw[..colon].to_vec(), raw[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn basic(user: &str, pass: &str) -> HeaderValue {
        header(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }

    #[test]
    fn header_parsing() {
        assert_eq!(
            parse_basic(b"Basic YWxpY2U6czNjOnJldA=="),
            Some((b"alice".to_vec(), b"s3c:ret".to_vec()))
        );
        assert_eq!(parse_basic(b"basic  YWxpY2U6 "), Some((b"alice".to_vec(), b"".to_vec())));
        for bad in [&b"Bearer YWxpY2U6eA=="[..], b"Basic", b"Basic !!!", b"Basic YWxpY2U=", b"\xff"] {
            assert_eq!(parse_basic(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn passwords() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = BasicAuth::new(vec![
            User { name: "alice".into(), hash: hash.clone(), cost: 4 },
            User { name: "bob".into(), hash: bcrypt::hash("other", 4).unwrap(), cost: 4 },
        ]);
        assert!(bcrypt::verify("", &auth.decoy).is_ok_and(|ok| !ok), "the decoy is a usable hash");
        assert!(!auth.allows(None).await);
        assert!(!auth.allows(Some(&basic("alice", "wrong"))).await);
        assert!(!auth.allows(Some(&basic("mallory", "right"))).await);
        assert!(!auth.allows(Some(&basic("bob", "right"))).await, "another user's password");
        assert!(auth.allows(Some(&basic("alice", "right"))).await);
        // Now answered from the digest; a wrong password still is not.
        assert!(auth.allows(Some(&basic("alice", "right"))).await);
        assert!(!auth.allows(Some(&basic("alice", "righ"))).await);
        assert!(auth.allows(Some(&basic("bob", "other"))).await);
        let long = "x".repeat(80);
        let auth = BasicAuth::new(vec![User {
            name: "carol".into(),
            hash: bcrypt::hash(&long, 4).unwrap(),
            cost: 4,
        }]);
        assert!(!auth.allows(Some(&basic("carol", &long))).await, "over 72 bytes is refused");
    }
}

//! A JSON Web Key Set read over HTTP, for verifying tokens offline: the keys by `kid`, and a
//! re-read on an unknown `kid` that no flood of tokens can turn into a flood of requests.
//!
//! - The document is read at start and again when a token names a `kid` it lacks, at most once
//!   per [`MIN_REREAD`] per key set, however many such tokens arrive: concurrent askers wait for
//!   the one read in progress, later ones within the interval are told "no" at once.
//! - A failed read keeps the keys it had.
//! - The document is at most [`MAX_DOCUMENT_BYTES`] and at most [`MAX_KEYS`] of its keys are used.
//! - Plain `http` only to loopback addresses ([`check_url`]); no redirects are followed.
//! - `n`, `e`, `x` and `y` may be base64url (RFC 7517) or standard base64 with padding (Altinn's).
//!
//! It never verifies a token itself ([`super::jwt`] does) and never logs a key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde_json::Value;
use url::Url;

use crate::policy::is_loopback;

/// An unknown `kid` re-reads the document at most this often.
pub const MIN_REREAD: Duration = Duration::from_secs(10);
/// The largest JWKS or discovery document read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The most keys taken from one document.
pub const MAX_KEYS: usize = 64;

/// Which curve or family a key belongs to; a token's `alg` must fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Rsa,
    P256,
    P384,
}

/// One verification key.
pub struct Key {
    pub(crate) decoding: DecodingKey,
    pub(crate) family: Family,
    /// The JWK's `alg`, when it names one: a token must then use exactly it.
    pub(crate) alg: Option<String>,
    /// The JWK's public parameters as read, to tell an unchanged key at a re-read.
    material: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The JWKS itself.
    Jwks(Url),
    /// `{issuer}/.well-known/openid-configuration`'s `jwks_uri`, read on the first read.
    Discovery { issuer: String },
}

/// Why a read failed (logged; the keys held stay).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Url(String),
    #[error("cannot read {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url} did not send a usable document: {reason}")]
    Document { url: String, reason: String },
    #[error(
        "{url} names issuer {found:?}, not the configured {configured:?} (OpenID Connect Discovery 4.3): the issuer is not trusted"
    )]
    IssuerMismatch {
        url: String,
        found: String,
        configured: String,
    },
    #[error("cannot read the bearer token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Plain `http` is allowed only to loopback addresses (tests, a local simulator, a sidecar);
/// anything else must be `https`.
pub fn check_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "{url}: plain http is allowed only to loopback addresses (127.0.0.0/8, ::1, localhost); use https"
        )),
        other => Err(format!("{url}: scheme {other:?} is not http(s)")),
    }
}

/// Whether `url` is on the origin (scheme, host, port) of the issuer URL `issuer`.
fn same_origin(issuer: &str, url: &Url) -> bool {
    Url::parse(issuer).is_ok_and(|i| i.origin() == url.origin())
}

/// The discovery document of `issuer` (with or without a trailing slash).
pub fn discovery_url(issuer: &str) -> Result<Url, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    Url::parse(&url).map_err(|e| format!("{url:?} is not a URL: {e}"))
}

/// The keys of one issuer, re-read on demand within [`MIN_REREAD`].
pub struct KeySet {
    /// For log lines: `identity.issuers.kubernetes`, `maskinporten`, `altinn`.
    name: String,
    source: Source,
    /// Replaced by a reload's `http_client` ([`KeySet::reread_with`]).
    http: ArcSwap<reqwest::Client>,
    bearer_token_file: Option<PathBuf>,
    keys: ArcSwap<HashMap<String, Arc<Key>>>,
    /// When a read was last tried, and the JWKS URL discovery found; one read at a time.
    read: tokio::sync::Mutex<ReadState>,
}

#[derive(Default)]
struct ReadState {
    last: Option<Instant>,
    discovered: Option<Url>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl KeySet {
    pub fn new(
        name: impl Into<String>,
        source: Source,
        http: reqwest::Client,
        bearer_token_file: Option<PathBuf>,
    ) -> Self {
        KeySet {
            name: name.into(),
            source,
            http: ArcSwap::from_pointee(http),
            bearer_token_file,
            keys: ArcSwap::from_pointee(HashMap::new()),
            read: tokio::sync::Mutex::new(ReadState::default()),
        }
    }

    /// The key with this `kid`, among those last read.
    pub fn key(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys.load().get(kid).cloned()
    }

    /// Whether `key` is still the key held under `kid` (a re-read keeps an unchanged key, so a
    /// token it verified need not be verified again).
    pub fn holds(&self, kid: &str, key: &Arc<Key>) -> bool {
        self.keys
            .load()
            .get(kid)
            .is_some_and(|k| Arc::ptr_eq(k, key))
    }

    /// Hold `keys` from now on, keeping the key held before under each `kid` whose JWK did not
    /// change.
    pub(crate) fn replace(&self, mut keys: HashMap<String, Arc<Key>>) {
        let held = self.keys.load();
        for (kid, key) in &mut keys {
            if let Some(old) = held.get(kid).filter(|old| old.material == key.material) {
                *key = old.clone();
            }
        }
        self.keys.store(Arc::new(keys));
    }

    /// Read the document now unless a read was tried within [`MIN_REREAD`]; a read in progress
    /// is waited for, not repeated. A failure is logged and keeps the keys held.
    pub async fn reread(&self) {
        let mut state = self.read.lock().await;
        if state.last.is_some_and(|at| at.elapsed() < MIN_REREAD) {
            return;
        }
        self.read_now(&mut state).await;
    }

    /// Use `http` from now on and read the document with it at once, whenever the last read was
    /// (a reload: the operator asked, and sees in the log whether the new client reaches the
    /// issuer). A failure is logged and keeps the keys held.
    pub async fn reread_with(&self, http: reqwest::Client) {
        let mut state = self.read.lock().await;
        self.http.store(Arc::new(http));
        self.read_now(&mut state).await;
    }

    async fn read_now(&self, state: &mut ReadState) {
        state.last = Some(Instant::now());
        match self.read_keys(state).await {
            Ok(keys) => {
                tracing::info!(key_set = %self.name, keys = keys.len(), "signing keys read");
                self.replace(keys);
            }
            Err(e) => {
                tracing::warn!(key_set = %self.name, error = %e, "cannot read the signing keys; the keys held before stay in use");
            }
        }
    }

    async fn read_keys(
        &self,
        state: &mut ReadState,
    ) -> Result<HashMap<String, Arc<Key>>, ReadError> {
        // The bearer token goes to the configured JWKS, and to the issuer's own origin only.
        let (jwks_uri, with_token) = match (&self.source, &state.discovered) {
            (Source::Jwks(url), _) => (url.clone(), true),
            (Source::Discovery { issuer }, Some(url)) => (url.clone(), same_origin(issuer, url)),
            (Source::Discovery { issuer }, None) => {
                let url = discovery_url(issuer).map_err(ReadError::Url)?;
                let doc = self.get_json(&url, true).await?;
                let named = doc
                    .get("issuer")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if named != issuer {
                    return Err(ReadError::IssuerMismatch {
                        url: url.to_string(),
                        found: named.to_owned(),
                        configured: issuer.clone(),
                    });
                }
                let found = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .and_then(|u| Url::parse(u).ok())
                    .ok_or_else(|| ReadError::Document {
                        url: url.to_string(),
                        reason: "no jwks_uri URL in it".into(),
                    })?;
                state.discovered = Some(found.clone());
                let with_token = same_origin(issuer, &found);
                (found, with_token)
            }
        };
        let doc = self.get_json(&jwks_uri, with_token).await?;
        parse_jwks(&doc).map_err(|reason| ReadError::Document {
            url: jwks_uri.to_string(),
            reason,
        })
    }

    /// GET `url` as JSON, at most [`MAX_DOCUMENT_BYTES`], with the bearer token file if any and
    /// `with_token`.
    async fn get_json(&self, url: &Url, with_token: bool) -> Result<Value, ReadError> {
        check_url(url).map_err(ReadError::Url)?;
        let shown = url.to_string();
        let mut request = self.http.load().get(url.clone());
        if let Some(path) = self.bearer_token_file.as_ref().filter(|_| with_token) {
            // Read for every request: Kubernetes rotates the projected token in place.
            let token = std::fs::read_to_string(path).map_err(|source| ReadError::TokenFile {
                path: path.display().to_string(),
                source,
            })?;
            request = request.bearer_auth(token.trim());
        }
        let http_error = |e: reqwest::Error| ReadError::Http {
            url: shown.clone(),
            reason: causes(&e),
        };
        let mut response = request.send().await.map_err(http_error)?;
        if !response.status().is_success() {
            return Err(ReadError::Status {
                url: shown,
                status: response.status().as_u16(),
            });
        }
        let body = match crate::body::read(&mut response, MAX_DOCUMENT_BYTES).await {
            Ok(body) => body,
            Err(crate::body::BodyError::Transport(e)) => return Err(http_error(e)),
            Err(crate::body::BodyError::TooLarge) => {
                return Err(ReadError::TooLarge { url: shown });
            }
        };
        serde_json::from_slice(&body).map_err(|e| ReadError::Document {
            url: shown,
            reason: e.to_string(),
        })
    }
}

/// An error and its causes on one line (this module stays below `telemetry`, which has the
/// general form).
fn causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    // Bounded: error chains are short, and at most 8 causes are written.
    for _ in 0..8 {
        let Some(cause) = source else { break };
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// The usable signing keys of a JWKS document, by `kid` (keys without a `kid`, for encryption,
/// of another type, or past [`MAX_KEYS`] are left out).
pub fn parse_jwks(doc: &Value) -> Result<HashMap<String, Arc<Key>>, String> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut out = HashMap::new();
    for jwk in keys {
        if out.len() >= MAX_KEYS {
            break;
        }
        let Some(kid) = jwk.get("kid").and_then(Value::as_str) else {
            continue;
        };
        if kid.is_empty() || jwk.get("use").and_then(Value::as_str) == Some("enc") {
            continue;
        }
        if let Some(key) = parse_jwk(jwk) {
            out.insert(kid.to_owned(), Arc::new(key));
        }
    }
    Ok(out)
}

fn parse_jwk(jwk: &Value) -> Option<Key> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str).and_then(decode_b64);
    let alg = jwk.get("alg").and_then(Value::as_str).map(str::to_owned);
    let text = |name: &str| jwk.get(name).and_then(Value::as_str).unwrap_or_default();
    let material = ["kty", "crv", "n", "e", "x", "y", "alg"]
        .map(text)
        .join("|");
    match jwk.get("kty").and_then(Value::as_str)? {
        "RSA" => {
            let (n, e) = (field("n")?, field("e")?);
            Some(Key {
                decoding: DecodingKey::from_rsa_raw_components(&n, &e),
                family: Family::Rsa,
                alg,
                material,
            })
        }
        "EC" => {
            let family = match jwk.get("crv").and_then(Value::as_str)? {
                "P-256" => Family::P256,
                "P-384" => Family::P384,
                _ => return None,
            };
            let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let (x, y) = (url.encode(field("x")?), url.encode(field("y")?));
            Some(Key {
                decoding: DecodingKey::from_ec_components(&x, &y).ok()?,
                family,
                alg,
                material,
            })
        }
        _ => None,
    }
}

/// Base64url without padding (RFC 7517), or standard base64 with or without padding.
pub fn decode_b64(text: &str) -> Option<Vec<u8>> {
    let normalized: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(normalized)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_base64_alphabets_and_padding_decode_alike() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        assert!(std.contains('+') && std.contains('/') && std.ends_with('='));
        assert_eq!(decode_b64(&std).unwrap(), bytes);
        assert_eq!(decode_b64(&url).unwrap(), bytes);
        assert!(decode_b64("not base64!").is_none());
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "https://kubernetes.default.svc/openid/v1/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://127.9.9.9/jwks",
            "http://[::1]:99/jwks",
            "http://localhost/jwks",
        ] {
            assert!(check_url(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
        for refused in [
            "http://kubernetes.default.svc/openid/v1/jwks",
            "http://10.0.0.1/jwks",
            "http://[::2]/jwks",
            "ftp://127.0.0.1/jwks",
        ] {
            assert!(
                check_url(&Url::parse(refused).unwrap()).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn keys_without_kid_for_encryption_or_of_other_types_are_left_out_and_bounded() {
        let rsa =
            |kid: &str| serde_json::json!({"kty": "RSA", "kid": kid, "n": "AQAB", "e": "AQAB"});
        let mut keys = vec![
            serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
            serde_json::json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}),
            serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
            serde_json::json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AQAB"}),
        ];
        keys.extend((0..100).map(|i| rsa(&format!("k{i}"))));
        let parsed = parse_jwks(&serde_json::json!({ "keys": keys })).unwrap();
        assert_eq!(parsed.len(), MAX_KEYS);
        assert!(parsed.contains_key("k0") && !parsed.contains_key("enc"));
        assert!(!parsed.contains_key("hmac") && !parsed.contains_key("ed"));
        assert!(parse_jwks(&serde_json::json!({"nokeys": []})).is_err());
    }
}

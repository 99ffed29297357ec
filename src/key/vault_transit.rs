//! `key.vault_transit`: grants signed by Vault's or OpenBao's transit secrets engine.
//!
//! One `POST /v1/{mount}/sign/{name}` per grant with the digest (`prehashed`, `pkcs1v15`); the
//! answer `vault:v<N>:<base64>` becomes the raw signature. The public key is read once from
//! `GET /v1/{mount}/keys/{name}` (the latest version), and signing is pinned to that version, so
//! the key Digdir has and the key that signs stay the same until a reload reads them again.
//!
//! The Vault token comes from `token_file` (re-read whenever the file changes: a Vault agent
//! sink), the environment, or a Kubernetes login (done again when two thirds of the lease have
//! passed, or when Vault says the token is no longer good). This module must never put the token
//! or the service-account JWT in a message, a log line or `Debug`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::future::BoxFuture;
use rsa::RsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::secret::Secret;
use super::settings::{VaultKubernetesSettings, VaultTransitSettings};
use super::signer::{RemoteSigner, SignError, SignFailure};
use super::{Algorithm, KeyError};

/// The most of a Vault error body quoted in a message.
const MAX_QUOTED: usize = 200;

/// A transit key, reached over HTTP(S).
pub(crate) struct VaultTransitSigner {
    http: reqwest::Client,
    settings: VaultTransitSettings,
    location: String,
    auth: Auth,
    /// The key version the public key was read from; every signature asks for it.
    version: std::sync::OnceLock<u64>,
}

/// Where the Vault token comes from.
enum Auth {
    Fixed(Secret),
    /// The file, and what it held when last read (with its modification time and length).
    File {
        path: PathBuf,
        read: Mutex<Option<(FileStamp, Secret)>>,
    },
    /// A Kubernetes login, and the token it gave with when to log in again.
    Kubernetes {
        settings: VaultKubernetesSettings,
        token: Mutex<Option<(Secret, Instant)>>,
    },
}

type FileStamp = (Option<SystemTime>, u64);

impl VaultTransitSigner {
    /// The signer for `settings`, its HTTP client trusting `ca_cert` besides the system roots.
    pub(crate) fn new(
        settings: &VaultTransitSettings,
        timeout: Duration,
    ) -> Result<Arc<Self>, KeyError> {
        let location = settings.location();
        let unusable = |reason: String| {
            KeyError::Signer(SignError {
                signer: location.clone(),
                reason,
                failure: SignFailure::Refused,
            })
        };
        // Never the environment's HTTP_PROXY/HTTPS_PROXY/ALL_PROXY: the Vault token goes to
        // Vault and nowhere else (http_client.proxy is for Maskinporten and Altinn only).
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(8);
        if let Some(path) = &settings.ca_cert {
            let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|_| {
                unusable(format!(
                    "ca_cert {} is not a PEM certificate",
                    path.display()
                ))
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder
            .build()
            .map_err(|e| unusable(format!("cannot build the HTTP client: {e}")))?;
        let auth = match (&settings.token, &settings.token_file, &settings.kubernetes) {
            (Some(token), _, _) => Auth::Fixed(Secret::new(token.trim())),
            (None, Some(path), _) => Auth::File {
                path: path.clone(),
                read: Mutex::new(None),
            },
            (None, None, Some(k)) => Auth::Kubernetes {
                settings: k.clone(),
                token: Mutex::new(None),
            },
            (None, None, None) => return Err(unusable("no token configured".into())),
        };
        Ok(Arc::new(VaultTransitSigner {
            http,
            settings: settings.clone(),
            location,
            auth,
            version: std::sync::OnceLock::new(),
        }))
    }

    fn error(&self, failure: SignFailure, reason: impl Into<String>) -> SignError {
        SignError {
            signer: self.location.clone(),
            reason: reason.into(),
            failure,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/{path}",
            self.settings.address.as_str().trim_end_matches('/')
        )
    }

    /// A request with the namespace header; the token is added by [`Self::send`].
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.settings.namespace {
            Some(ns) => request.header("X-Vault-Namespace", ns),
            None => request,
        }
    }

    /// Send with the current token; on 403 get the token again (file re-read, new login) and
    /// try once more if it changed.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, SignError> {
        let mut token = self.token(false).await?;
        for last in [false, true] {
            let mut request = self
                .request(method.clone(), path)
                .header("X-Vault-Token", token.expose());
            if let Some(body) = body {
                request = request.json(body);
            }
            match self.answer(request).await {
                Err(e)
                    if e.failure == SignFailure::Refused && !last && e.reason.contains("403") =>
                {
                    let fresh = self.token(true).await?;
                    if fresh.expose() == token.expose() {
                        return Err(e);
                    }
                    token = fresh;
                }
                other => return other,
            }
        }
        Err(self.error(SignFailure::Refused, "permission denied (HTTP 403)"))
    }

    /// Send and read the JSON answer; every failure becomes a sentence naming the cause.
    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Value, SignError> {
        let mut response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let limit = crate::body::MAX_UPSTREAM_BODY;
        let body = match crate::body::read(&mut response, limit).await {
            Ok(body) => body,
            Err(crate::body::BodyError::Transport(e)) => return Err(self.transport(&e)),
            Err(crate::body::BodyError::TooLarge) => {
                return Err(self.error(
                    SignFailure::Invalid,
                    format!(
                        "the answer is longer than {}, the most the broker reads",
                        crate::body::shown(limit)
                    ),
                ));
            }
        };
        if status.is_success() && body.is_empty() {
            return Ok(Value::Null);
        }
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|_| {
                self.error(
                    SignFailure::Invalid,
                    format!("HTTP {status} without a JSON body"),
                )
            });
        }
        let errors = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["errors"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let said = if errors.is_empty() {
            String::new()
        } else {
            let mut e = errors;
            if e.len() > MAX_QUOTED {
                let cut = (0..=MAX_QUOTED)
                    .rev()
                    .find(|i| e.is_char_boundary(*i))
                    .unwrap_or(0);
                e.truncate(cut);
                e.push('…');
            }
            format!(": {e}")
        };
        let code = status.as_u16();
        Err(match code {
            403 => self.error(
                SignFailure::Refused,
                format!(
                    "permission denied (HTTP 403){said}; the token needs update on {}/sign/{} and read on {}/keys/{}",
                    self.settings.mount, self.settings.name, self.settings.mount, self.settings.name
                ),
            ),
            404 => self.error(
                SignFailure::Refused,
                format!(
                    "no such key or mount (HTTP 404){said}: is transit mounted at {} with a key named {}?",
                    self.settings.mount, self.settings.name
                ),
            ),
            429 | 500.. => self.error(SignFailure::Unreachable, format!("HTTP {code}{said}")),
            _ => self.error(SignFailure::Refused, format!("HTTP {code}{said}")),
        })
    }

    fn transport(&self, e: &reqwest::Error) -> SignError {
        if e.is_timeout() {
            return self.error(SignFailure::Timeout, "no answer in time");
        }
        // The innermost cause says why ("Connection refused (os error 111)").
        let mut cause: &dyn std::error::Error = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let reason = cause.to_string();
        let reason = if reason.to_ascii_lowercase().contains("connection refused") {
            "connection refused".to_owned()
        } else {
            reason
        };
        self.error(SignFailure::Unreachable, reason)
    }

    /// The Vault token: fixed, from the file (re-read when it changed or `again`), or from a
    /// Kubernetes login (again when two thirds of the lease have passed, or `again`).
    async fn token(&self, again: bool) -> Result<Secret, SignError> {
        match &self.auth {
            Auth::Fixed(token) => Ok(token.clone()),
            Auth::File { path, read } => {
                let mut read = read.lock().await;
                let stamp = stamp(path);
                if let Some((seen, token)) = read.as_ref()
                    && *seen == stamp
                    && !again
                {
                    return Ok(token.clone());
                }
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    self.error(
                        SignFailure::Refused,
                        format!("cannot read token_file {}: {e}", path.display()),
                    )
                })?;
                let token = Secret::new(text.trim());
                if token.expose().is_empty() {
                    return Err(self.error(
                        SignFailure::Refused,
                        format!("token_file {} is empty", path.display()),
                    ));
                }
                *read = Some((stamp, token.clone()));
                Ok(token)
            }
            Auth::Kubernetes { settings, token } => {
                let mut token = token.lock().await;
                if let Some((t, renew_at)) = token.as_ref()
                    && Instant::now() < *renew_at
                    && !again
                {
                    return Ok(t.clone());
                }
                let fresh = self.kubernetes_login(settings).await?;
                *token = Some(fresh.clone());
                Ok(fresh.0)
            }
        }
    }

    /// `POST /v1/auth/{mount}/login {role, jwt}`: a Vault token and when to log in again.
    async fn kubernetes_login(
        &self,
        k: &VaultKubernetesSettings,
    ) -> Result<(Secret, Instant), SignError> {
        let jwt = tokio::fs::read_to_string(&k.jwt_file).await.map_err(|e| {
            self.error(
                SignFailure::Refused,
                format!(
                    "cannot read the service-account token {}: {e}",
                    k.jwt_file.display()
                ),
            )
        })?;
        let body = json!({"role": k.role, "jwt": jwt.trim()});
        let answer = self
            .answer(
                self.request(reqwest::Method::POST, &format!("auth/{}/login", k.mount))
                    .json(&body),
            )
            .await
            .map_err(|e| SignError {
                reason: format!("kubernetes login (role {}): {}", k.role, e.reason),
                ..e
            })?;
        let token = answer["auth"]["client_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                self.error(
                    SignFailure::Invalid,
                    "the kubernetes login answered without auth.client_token",
                )
            })?;
        let lease = answer["auth"]["lease_duration"].as_u64().unwrap_or(0);
        // Two thirds of the lease; a lease of 0 does not expire (checked again hourly).
        let renew_in = match lease {
            0 => Duration::from_secs(3600),
            secs => Duration::from_secs(secs.saturating_mul(2) / 3).max(Duration::from_secs(1)),
        };
        let renew_at = Instant::now()
            .checked_add(renew_in)
            .unwrap_or_else(Instant::now);
        tracing::info!(signer = %self.location, lease_seconds = lease, "logged in to Vault with the service-account token");
        Ok((Secret::new(token), renew_at))
    }

    /// The public key of version `pin` of the transit key, or of its latest version (and that
    /// version). Every signature of this signer asks for that version from then on.
    pub(crate) async fn public_key(
        &self,
        pin: Option<u64>,
    ) -> Result<(RsaPublicKey, u64), SignError> {
        let (latest, mut keys) = self.versions().await?;
        let version = pin.unwrap_or(latest);
        let public = keys.remove(&version).ok_or_else(|| {
            self.error(
                SignFailure::Invalid,
                format!("the key has no version {version} (latest {latest})"),
            )
        })?;
        let _ = self.version.set(version);
        Ok((public, version))
    }

    /// The latest version of the transit key and each version's public key.
    pub(crate) async fn versions(
        &self,
    ) -> Result<(u64, std::collections::BTreeMap<u64, RsaPublicKey>), SignError> {
        let path = format!("{}/keys/{}", self.settings.mount, self.settings.name);
        let answer = self.send(reqwest::Method::GET, &path, None).await?;
        let data = &answer["data"];
        let kind = data["type"].as_str().unwrap_or_default();
        if !kind.starts_with("rsa-") {
            return Err(self.error(
                SignFailure::Invalid,
                format!("the key is of type {kind:?}; Maskinporten needs an RSA key (rsa-2048, rsa-3072 or rsa-4096)"),
            ));
        }
        let latest = data["latest_version"]
            .as_u64()
            .ok_or_else(|| self.error(SignFailure::Invalid, "the key has no latest_version"))?;
        let mut keys = std::collections::BTreeMap::new();
        for (version, key) in data["keys"].as_object().into_iter().flatten() {
            let Ok(version) = version.parse::<u64>() else {
                continue;
            };
            let pem = key["public_key"].as_str().ok_or_else(|| {
                self.error(
                    SignFailure::Invalid,
                    format!("version {version} of the key has no public_key"),
                )
            })?;
            let public = RsaPublicKey::from_public_key_pem(pem).map_err(|_| {
                self.error(
                    SignFailure::Invalid,
                    format!("the public key of version {version} is not an RSA public key in PEM"),
                )
            })?;
            keys.insert(version, public);
        }
        if !keys.contains_key(&latest) {
            return Err(self.error(
                SignFailure::Invalid,
                format!("version {latest} of the key has no public_key"),
            ));
        }
        Ok((latest, keys))
    }

    /// `POST {mount}/keys/{name}/rotate`: a new version, kept by Vault (durable there before
    /// its public half is read); returns the new latest version.
    pub(crate) async fn rotate(&self) -> Result<u64, SignError> {
        let path = format!("{}/keys/{}/rotate", self.settings.mount, self.settings.name);
        self.send(reqwest::Method::POST, &path, Some(&json!({})))
            .await?;
        Ok(self.versions().await?.0)
    }

    async fn sign_digest(&self, algorithm: Algorithm, digest: &[u8]) -> Result<Vec<u8>, SignError> {
        let mut body = json!({
            "input": STANDARD.encode(digest),
            "prehashed": true,
            "hash_algorithm": algorithm.vault_hash(),
            "signature_algorithm": "pkcs1v15",
        });
        if let Some(version) = self.version.get() {
            body["key_version"] = (*version).into();
        }
        let path = format!("{}/sign/{}", self.settings.mount, self.settings.name);
        let answer = self.send(reqwest::Method::POST, &path, Some(&body)).await?;
        let signature = answer["data"]["signature"].as_str().unwrap_or_default();
        // `vault:v<N>:<standard base64>`
        let encoded = signature
            .strip_prefix("vault:v")
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, b64)| b64)
            .ok_or_else(|| {
                self.error(
                    SignFailure::Invalid,
                    "the answer has no data.signature of the form vault:v<N>:<base64>",
                )
            })?;
        STANDARD
            .decode(encoded)
            .map_err(|_| self.error(SignFailure::Invalid, "data.signature is not base64"))
    }

    /// Create the transit key (`keygen --vault-transit`): RSA of `bits`, not exportable;
    /// refused when a key of that name exists (creating it again would change nothing, silently).
    pub(crate) async fn create_key(&self, bits: usize) -> Result<(), SignError> {
        match self.public_key(None).await {
            Ok(_) => {
                return Err(self.error(
                    SignFailure::Refused,
                    "a key of this name exists already; refusing to create it again (use it, or pick another name)",
                ));
            }
            Err(e) if e.reason.contains("HTTP 404") => {}
            Err(e) => return Err(e),
        }
        let path = format!("{}/keys/{}", self.settings.mount, self.settings.name);
        let body = json!({"type": format!("rsa-{bits}")});
        self.send(reqwest::Method::POST, &path, Some(&body))
            .await
            .map(|_| ())
    }
}

/// What identifies a version of the token file: modification time and length.
fn stamp(path: &Path) -> FileStamp {
    match std::fs::metadata(path) {
        Ok(meta) => (meta.modified().ok(), meta.len()),
        Err(_) => (None, 0),
    }
}

impl RemoteSigner for VaultTransitSigner {
    fn kind(&self) -> &'static str {
        "vault_transit"
    }
    fn location(&self) -> &str {
        &self.location
    }
    fn sign(
        self: Arc<Self>,
        algorithm: Algorithm,
        digest: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, SignError>> {
        Box::pin(async move { self.sign_digest(algorithm, &digest).await })
    }
}

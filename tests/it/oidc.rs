//! A fake OIDC issuer on loopback (discovery + JWKS, keys made in the test) and the tokens it
//! signs, for the workload-identity and introspection tests. It counts the JWKS reads and can be
//! told to fail them or to send an oversized document.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::EncodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

use crate::support::now_secs;

/// An RSA key made in the test, with its kid.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub private_pem: String,
    pub public: rsa::RsaPublicKey,
}

impl TestKey {
    pub fn generate(kid: &str) -> Self {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        TestKey {
            kid: kid.into(),
            private_pem: private
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap()
                .to_string(),
            public: private.to_public_key(),
        }
    }

    /// The public JWK; `standard`: `n`/`e` in standard base64 with padding, as Altinn writes them.
    pub fn jwk(&self, standard: bool) -> Value {
        let engine = if standard {
            base64::engine::general_purpose::STANDARD
        } else {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
        };
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": engine.encode(self.public.n().to_bytes_be()),
            "e": engine.encode(self.public.e().to_bytes_be()),
        })
    }

    /// `claims` signed with `alg` (RS256, PS256, ...) and this key's kid.
    pub fn sign_with(&self, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(Algorithm::RS256, claims)
    }
}

struct IssuerState {
    base: String,
    keys: Mutex<Vec<TestKey>>,
    /// `n`/`e` in standard base64 with padding.
    standard_base64: bool,
    jwks_reads: AtomicUsize,
    discovery_reads: AtomicUsize,
    failing: AtomicBool,
    oversized: AtomicBool,
    /// The bearer tokens sent with JWKS reads.
    bearers: Mutex<Vec<String>>,
}

pub struct FakeIssuer {
    pub addr: SocketAddr,
    state: Arc<IssuerState>,
}

impl FakeIssuer {
    /// An issuer at `http://127.0.0.1:PORT` serving `keys` at `/openid/v1/jwks`.
    pub async fn start(keys: Vec<TestKey>) -> Self {
        Self::start_with(keys, false).await
    }

    /// `standard_base64`: the JWKS writes `n`/`e` in standard base64 with padding.
    pub async fn start_with(keys: Vec<TestKey>, standard_base64: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IssuerState {
            base: format!("http://{addr}"),
            keys: Mutex::new(keys),
            standard_base64,
            jwks_reads: AtomicUsize::new(0),
            discovery_reads: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            oversized: AtomicBool::new(false),
            bearers: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/openid/v1/jwks", get(jwks))
            // Where Maskinporten publishes its keys: `{issuer}jwk`.
            .route("/jwk", get(jwks))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        FakeIssuer { addr, state }
    }

    /// The issuer (no trailing slash, as Kubernetes writes it).
    pub fn issuer(&self) -> String {
        self.state.base.clone()
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/openid/v1/jwks", self.state.base)
    }

    pub fn jwks_reads(&self) -> usize {
        self.state.jwks_reads.load(Ordering::SeqCst)
    }

    pub fn discovery_reads(&self) -> usize {
        self.state.discovery_reads.load(Ordering::SeqCst)
    }

    pub fn bearers(&self) -> Vec<String> {
        self.state.bearers.lock().unwrap().clone()
    }

    pub fn set_keys(&self, keys: Vec<TestKey>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    pub fn set_oversized(&self, oversized: bool) {
        self.state.oversized.store(oversized, Ordering::SeqCst);
    }
}

async fn discovery(State(state): State<Arc<IssuerState>>) -> Response {
    state.discovery_reads.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({
        "issuer": state.base,
        "jwks_uri": format!("{}/openid/v1/jwks", state.base),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<IssuerState>>, headers: axum::http::HeaderMap) -> Response {
    state.jwks_reads.fetch_add(1, Ordering::SeqCst);
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        state.bearers.lock().unwrap().push(auth.to_owned());
    }
    if state.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys: Vec<Value> = state
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|k| k.jwk(state.standard_base64))
        .collect();
    if state.oversized.load(Ordering::SeqCst) {
        // A document past the broker's 256 KiB bound, whose keys would otherwise be usable.
        let padding = "x".repeat(300 * 1024);
        return axum::Json(json!({"keys": keys, "padding": padding})).into_response();
    }
    axum::Json(json!({ "keys": keys })).into_response()
}

/// Claims of a Kubernetes projected service-account token for `namespace/account`.
pub fn service_account_claims(iss: &str, aud: &str, namespace: &str, account: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": iss,
        "aud": [aud],
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
        "exp": now + 600,
        "iat": now,
        "nbf": now,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": account, "uid": "0b6b6b8e-0000-4000-8000-000000000001"},
            "pod": {"name": format!("{account}-7d9f"), "uid": "0b6b6b8e-0000-4000-8000-000000000002"},
        },
    })
}

/// A token with header `header` and `claims`, with no signature (`alg: none`).
pub fn unsigned(header: &Value, claims: &Value) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!("{}.{}.", b64(header), b64(claims))
}

/// `token` with its payload replaced by `claims`, its signature kept.
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

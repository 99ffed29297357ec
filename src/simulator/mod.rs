//! The local Maskinporten + Altinn: a strict, embedded stand-in for both services, served over
//! HTTP on a listener the caller provides.
//!
//! It lives in its own world. It generates its own signing key, keeps its own registry of clients
//! and seen `jti`s, and refuses grants exactly where Maskinporten would, with the same OAuth error
//! and MP-code (see `PROTOCOL.md`). The broker talks to it only over HTTP, like to the real thing.
//!
//! This module must never reach into the broker (cache, fetch, upstream, broker): it may only use
//! the neutral helpers `crate::key` and `crate::policy::org`. It must never be lenient where the real
//! services are strict, or a bug in the broker would pass locally and fail in production.
//!
//! - `maskinporten`: `POST /token`, `GET /.well-known/oauth-authorization-server`, `GET /jwk`.
//! - `altinn`: `GET /authentication/api/v1/exchange/maskinporten`, and a small Altinn-like API,
//!   `GET /storage/api/v1/whoami`, that checks tokens as Altinn would (for the egress proxy).
//! - `register`: Altinn's system register and system-user requests, and the page where a
//!   customer accepts (`/accessmanagement/ui/systemuser/request?id=`).
//! - `changes`: system-user change requests, and the page where a customer approves one
//!   (`/accessmanagement/ui/systemuser/changerequest?id=`).
//! - `consent`: Altinn's consent requests, the page where a person accepts
//!   (`/accessmanagement/ui/consent/request?id=`), and the look-up before a consent token.

mod altinn;
mod changes;
mod consent;
mod maskinporten;
mod register;
mod self_service;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::{get, post};
use jsonwebtoken::DecodingKey;
use rsa::RsaPublicKey;
use rsa::traits::PublicKeyParts;
use std::sync::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

use crate::key::{Algorithm, SigningKey};

/// The organisation of the simulated clients when the config names none (Digdir's own number).
const DEFAULT_CONSUMER_ORG: &str = "991825827";

/// How long a seen `jti` is remembered: twice the longest grant lifetime Maskinporten accepts
/// (120 s) plus its clock tolerance, so a replay is caught for as long as the grant could verify.
const JTI_MEMORY: Duration = Duration::from_secs(2 * 120 + 2 * 10);

/// A client as registered in Digdir's self-service portal: its id, the public keys it may sign
/// grants with (by `kid`), and the scopes it has been given.
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    pub client_id: String,
    pub keys: Vec<(String, RsaPublicKey)>,
    /// The scopes a grant from this client may ask for.
    pub scopes: Vec<String>,
}

/// What the simulator is started with.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// `expires_in` of the access tokens. Maskinporten's value varies by client; 120 s is common
    /// and the shortest seen, which makes the broker's refresh logic work hardest.
    pub token_lifetime: Duration,
    pub clients: Vec<RegisteredClient>,
    /// The simulator's own signing key; `None` generates a fresh one at start (the normal case).
    /// Tests pass a fixture: generating RSA keys is slow in unoptimised builds.
    pub signing_key: Option<SigningKey>,
    /// The organisation every client belongs to (the token's `consumer`, the vendor in the
    /// register); `None`: 991825827 (Digdir's own number).
    pub consumer_org: Option<String>,
    /// Refuse a system-user grant for an organisation that has not accepted a system user of a
    /// system listing the client (MP-303), as Maskinporten does; `false` grants any valid org.
    pub strict_system_users: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            token_lifetime: Duration::from_secs(120),
            clients: Vec::new(),
            signing_key: None,
            consumer_org: None,
            strict_system_users: false,
        }
    }
}

/// Everything the handlers share: one per running simulator.
struct World {
    base_url: Url,
    /// `base_url` as a string, trailing slash included: the issuer and the grant `aud`.
    issuer: String,
    key: SigningKey,
    /// The private half of `key`, ready to sign the simulator's own tokens.
    encoding: jsonwebtoken::EncodingKey,
    /// The public half of `key`, ready to verify the simulator's own tokens.
    decoding: DecodingKey,
    token_lifetime: Duration,
    /// Registered clients by `client_id`.
    clients: RwLock<HashMap<String, RegisteredClient>>,
    /// `jti`s of accepted grants, per client, for replay detection.
    seen_jtis: moka::future::Cache<String, ()>,
    /// The organisation of every client (`consumer` in its tokens).
    consumer_org: String,
    /// Systems, system-user requests and system users.
    register: Mutex<register::Register>,
    /// `local.system_users: strict`.
    strict_system_users: bool,
    /// Consent requests (Altinn "samtykke").
    consents: Mutex<consent::Consents>,
    /// Key sets kept through the self-service API, with expiry and propagation.
    keys: self_service::Directory,
}

impl World {
    fn client(&self, client_id: &str) -> Option<RegisteredClient> {
        // A poisoned lock only means a writer panicked mid-insert of a whole value; the map is
        // still consistent, so keep serving.
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        clients.get(client_id).cloned()
    }

    fn register(&self, client: RegisteredClient) {
        self.keys.seed(&client.client_id, &client.keys);
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        clients.insert(client.client_id.clone(), client);
    }

    /// Sign claims as the simulator (RS256, with its `kid`), for access and Altinn tokens.
    fn sign(&self, claims: &serde_json::Value) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.key.kid().map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.key.public_jwk()] })
    }
}

/// A verifying key for an RSA public key, for any of RS256/RS384/RS512.
fn decoding_key(key: &RsaPublicKey) -> DecodingKey {
    DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be())
}

/// Seconds since the Unix epoch, as JWT claims count time.
fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A running simulator. Dropping it stops the server as [`SimulatorHandle::shutdown`] does, but
/// without waiting for it.
pub struct SimulatorHandle {
    world: Arc<World>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl SimulatorHandle {
    /// `http://127.0.0.1:PORT/`, trailing slash included.
    pub fn base_url(&self) -> &Url {
        &self.world.base_url
    }

    /// The Maskinporten issuer, which is also the `aud` every grant must carry.
    pub fn issuer(&self) -> String {
        self.world.issuer.clone()
    }

    /// The simulator's own signing keys as a JWKS, the same document `GET /jwk` serves.
    #[cfg(test)]
    pub fn public_jwks(&self) -> serde_json::Value {
        self.world.jwks()
    }

    /// Add a client, or replace the one with the same `client_id` (a key rotation in the portal).
    pub fn register_client(&self, client: RegisteredClient) {
        self.world.register(client);
    }

    /// Stop accepting connections, let in-flight requests finish, and wait for the server task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "simulator server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "simulator server task failed"),
        }
    }
}

/// Start the simulator on `listener` in a background task, with a freshly generated RSA 2048 key
/// unless the config brings one.
pub async fn start(
    config: SimulatorConfig,
    listener: tokio::net::TcpListener,
) -> std::io::Result<SimulatorHandle> {
    let addr = listener.local_addr()?;
    let base_url = Url::parse(&format!("http://{addr}/")).map_err(std::io::Error::other)?;
    let key = match config.signing_key {
        Some(key) => key,
        None => {
            let kid = format!("simulator-{}", uuid::Uuid::new_v4());
            // Key generation is CPU-bound; keep it off the async worker threads.
            tokio::task::spawn_blocking(move || SigningKey::generate(2048, &kid, Algorithm::RS256))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?
        }
    };

    let pem = key.private_pem().map_err(std::io::Error::other)?;
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose().as_bytes())
        .map_err(std::io::Error::other)?;
    let world = Arc::new(World {
        issuer: base_url.to_string(),
        base_url,
        encoding,
        decoding: decoding_key(&key.public_key()),
        key,
        token_lifetime: config.token_lifetime,
        clients: RwLock::new(
            config
                .clients
                .into_iter()
                .map(|c| (c.client_id.clone(), c))
                .collect(),
        ),
        seen_jtis: moka::future::Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(JTI_MEMORY)
            .build(),
        consumer_org: config
            .consumer_org
            .unwrap_or_else(|| DEFAULT_CONSUMER_ORG.to_owned()),
        register: Mutex::default(),
        strict_system_users: config.strict_system_users,
        consents: Mutex::default(),
        keys: Default::default(),
    });
    for client in world
        .clients
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
    {
        world.keys.seed(&client.client_id, &client.keys);
    }

    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(world.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // Either an explicit shutdown or the handle being dropped.
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(issuer = %world.issuer, kid = world.key.kid().unwrap_or_default(), "simulator started");
    Ok(SimulatorHandle { world, stop, task })
}

fn router(world: Arc<World>) -> Router {
    Router::new()
        .route("/token", post(maskinporten::token))
        .route(
            "/.well-known/oauth-authorization-server",
            get(maskinporten::metadata),
        )
        .route("/jwk", get(maskinporten::jwks))
        .route(
            "/authentication/api/v1/exchange/maskinporten",
            get(altinn::exchange),
        )
        .route(
            "/authentication/api/v1/openid/.well-known/openid-configuration/jwks",
            get(altinn::jwks),
        )
        .route("/storage/api/v1/whoami", get(altinn::whoami))
        .route(
            "/selfservice/api/v1/clients/{id}/jwks",
            get(self_service::read).post(self_service::replace),
        )
        .nest("/authentication/api/v1/", register_api())
        .route(
            "/accessmanagement/ui/systemuser/request",
            get(register::confirm_page).post(register::confirm_answer),
        )
        .route(
            "/accessmanagement/ui/systemuser/agentrequest",
            get(register::confirm_page).post(register::confirm_answer),
        )
        .route(
            "/accessmanagement/ui/systemuser/changerequest",
            get(changes::confirm_page).post(changes::confirm_answer),
        )
        .route(
            "/accessmanagement/api/v1/enterprise/consentrequests",
            post(consent::create),
        )
        .route(
            "/accessmanagement/api/v1/enterprise/consentrequests/{id}",
            get(consent::read),
        )
        .route(
            "/accessmanagement/ui/consent/request",
            get(consent::consent_page).post(consent::consent_answer),
        )
        .with_state(world)
}

/// Altinn's system register and system-user request API, under `/authentication/api/v1/`.
fn register_api() -> Router<Arc<World>> {
    use register::*;
    Router::new()
        .route("/systemregister/vendor", post(create_system))
        .route(
            "/systemregister/vendor/{id}",
            get(get_system).put(update_system).delete(delete_system),
        )
        .route("/systemuser/request/vendor", post(create_request))
        .route(
            "/systemuser/request/vendor/agent",
            post(create_agent_request),
        )
        .route("/systemuser/request/vendor/{id}", get(get_request))
        .route(
            "/systemuser/request/vendor/agent/{id}",
            get(get_agent_request),
        )
        .route(
            "/systemuser/request/vendor/byexternalref/{system}/{org}/{external_ref}",
            get(get_request_by_external_ref),
        )
        .route(
            "/systemuser/vendor/bysystem/{system}",
            get(list_system_users),
        )
        .route(
            "/systemuser/vendor/byquery",
            get(changes::system_user_by_query),
        )
        .route(
            "/systemuser/changerequest/vendor",
            post(changes::create_change),
        )
        .route(
            "/systemuser/changerequest/vendor/{id}",
            get(changes::get_change),
        )
        .route(
            "/systemuser/changerequest/vendor/bysystem/{system}",
            get(changes::list_changes),
        )
}

//! Strict fake upstreams and a broker started in-process, for the integration tests.
//!
//! The fakes run on 127.0.0.1 inside the test. `FakeMaskinporten` verifies every grant the way
//! Maskinporten does (signature with the client's public key, header, every claim, `jti` reuse) and
//! records what it saw; it can be scripted to fail. `FakeAltinn` only exchanges tokens that the fake
//! Maskinporten signed. Nothing here is shared with the product's own simulator.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::RsaPublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use maskinporten_broker::app::App;
use maskinporten_broker::config::Settings;

pub const CLIENT_ID: &str = "test-client";
pub const KID: &str = "test-kid";
pub const ORG: &str = "991825827";
pub const OTHER_ORG: &str = "974761076";

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture exists")
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Serve `router` on a fresh loopback port.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// What the fake Maskinporten answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A valid token (after the grant was verified).
    Token,
    /// This HTTP status with an empty JSON body.
    Status(u16),
    /// 429 or 503 with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Wait this long before answering with a token.
    Hang(Duration),
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 JSON without `access_token`.
    MissingToken,
    /// A token whose `iss` is another environment's.
    WrongIssuer,
    /// 400 with this OAuth error and description.
    Refuse(&'static str, &'static str),
    /// A valid token whose response says `expires_in` is this (its JWT `exp` stays sane).
    ExpiresIn(u64),
}

/// A grant as the fake received it, after verification.
#[derive(Debug, Clone)]
pub struct SeenGrant {
    pub header: Header,
    pub claims: Value,
    /// The signed grant as sent, for leak checks.
    pub raw: String,
    /// When the fake received it.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct MpState {
    issuer: String,
    grants: Mutex<Vec<SeenGrant>>,
    calls: AtomicUsize,
    jtis: Mutex<HashSet<String>>,
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Option<Reply>>,
    expires_in: AtomicU64,
    violations: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Requests for the issuer metadata, and how it answers (`None`: normally).
    metadata_calls: AtomicUsize,
    metadata: Mutex<Option<Metadata>>,
    /// The keys registered on the client, by kid (Digdir's self-service portal).
    keys: Mutex<HashMap<String, RsaPublicKey>>,
    /// More clients beside `CLIENT_ID`: client id → its keys by kid.
    other_clients: Mutex<HashMap<String, HashMap<String, RsaPublicKey>>>,
    /// The scopes the test asked the broker for (as a set); a grant asking for others is a
    /// violation and refused with `invalid_scope`.
    expected_scope: Mutex<Option<HashSet<String>>>,
}

pub struct FakeMaskinporten {
    pub addr: SocketAddr,
    state: Arc<MpState>,
}

impl FakeMaskinporten {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MpState {
            issuer: format!("http://{addr}/"),
            expires_in: AtomicU64::new(120),
            keys: Mutex::new(HashMap::from([(
                KID.into(),
                public_key("client-key.pub.pem"),
            )])),
            ..Default::default()
        });
        let router = Router::new()
            .route("/token", post(mp_token))
            .route("/.well-known/oauth-authorization-server", get(mp_metadata))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        FakeMaskinporten { addr, state }
    }

    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }
    /// Requests received, verified or not.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
    /// The most requests it was answering at the same time.
    pub fn most_in_flight(&self) -> usize {
        self.state.most_in_flight.load(Ordering::SeqCst)
    }
    /// Grants that passed verification.
    pub fn grants(&self) -> Vec<SeenGrant> {
        self.state.grants.lock().unwrap().clone()
    }
    /// Everything that was wrong with any grant received; tests assert it stays empty.
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }
    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }
    /// Answer the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }
    /// Answer every request without a scripted reply with this.
    pub fn always(&self, reply: Reply) {
        *self.state.fallback.lock().unwrap() = Some(reply);
    }
    pub fn heal(&self) {
        *self.state.fallback.lock().unwrap() = None;
        self.state.script.lock().unwrap().clear();
    }
    /// Requests for `/.well-known/oauth-authorization-server`.
    pub fn metadata_calls(&self) -> usize {
        self.state.metadata_calls.load(Ordering::SeqCst)
    }
    /// Answer the metadata requests this way from now on.
    pub fn set_metadata(&self, metadata: Metadata) {
        *self.state.metadata.lock().unwrap() = Some(metadata);
    }
    /// Accept grants signed by another key under another kid only (key rotation: the set on
    /// the client is replaced).
    pub fn register_key(&self, kid: &str, public_pem_fixture: &str) {
        *self.state.keys.lock().unwrap() =
            HashMap::from([(kid.to_owned(), public_key(public_pem_fixture))]);
    }
    /// Register another client with its keys by kid (replacing what it had).
    pub fn register_client(&self, client_id: &str, keys: &[(&str, &str)]) {
        let keys = keys
            .iter()
            .map(|(kid, fixture)| ((*kid).to_owned(), public_key(fixture)))
            .collect();
        self.state
            .other_clients
            .lock()
            .unwrap()
            .insert(client_id.to_owned(), keys);
    }
    /// From now on, every grant must ask for exactly these scopes (space separated, in any
    /// order): what the test asked the broker for.
    pub fn expect_scope(&self, scope: &str) {
        *self.state.expected_scope.lock().unwrap() =
            Some(scope.split_whitespace().map(str::to_owned).collect());
    }
    /// Add a key to the set on the client (an upload of {old, new}).
    pub fn add_key(&self, kid: &str, key: RsaPublicKey) {
        self.state.keys.lock().unwrap().insert(kid.to_owned(), key);
    }
}

/// How the fake answers `GET /.well-known/oauth-authorization-server`.
#[derive(Debug, Clone)]
pub enum Metadata {
    /// Its own issuer and token endpoint (the default).
    Normal,
    /// Another issuer than its own.
    WrongIssuer,
    /// 503.
    Down,
}

async fn mp_metadata(State(state): State<Arc<MpState>>) -> Response {
    state.metadata_calls.fetch_add(1, Ordering::SeqCst);
    let reply = state
        .metadata
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(Metadata::Normal);
    let issuer = match reply {
        Metadata::Normal => state.issuer.clone(),
        Metadata::WrongIssuer => "https://maskinporten.no/".into(),
        Metadata::Down => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    axum::Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{}token", state.issuer),
        "jwks_uri": format!("{}jwk", state.issuer),
    }))
    .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// The public key of an `x5c` chain's leaf, checking the chain as Maskinporten does: each entry
/// standard base64 of a DER certificate (MP-123), the leaf valid now (MP-120).
fn certificate_key(x5c: &[String]) -> Result<RsaPublicKey, String> {
    use base64::Engine;
    use rsa::pkcs8::DecodePublicKey;
    if x5c.is_empty() {
        return Err("x5c is empty (MP-123)".into());
    }
    let mut leaf = None;
    for entry in x5c {
        let der = base64::engine::general_purpose::STANDARD
            .decode(entry)
            .map_err(|_| "an x5c entry is not standard base64 (MP-123)".to_owned())?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| "an x5c entry is not a DER certificate (MP-123)".to_owned())?;
        if leaf.is_none() {
            if !cert.validity().is_valid() {
                return Err("the certificate is not valid now (MP-120)".into());
            }
            leaf = Some(
                RsaPublicKey::from_public_key_der(cert.public_key().raw)
                    .map_err(|_| "the certificate's key is not RSA (MP-120)".to_owned())?,
            );
        }
    }
    leaf.ok_or_else(|| "no leaf".to_owned())
}

/// A public key fixture.
pub fn public_key(fixture_name: &str) -> RsaPublicKey {
    use rsa::pkcs8::DecodePublicKey;
    RsaPublicKey::from_public_key_pem(&String::from_utf8(read(fixture_name)).unwrap()).unwrap()
}

/// The `iss` claim of a JWT, before its signature is checked ("" when unreadable).
fn unverified_iss(jwt: &str) -> String {
    use base64::Engine;
    jwt.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|c| c["iss"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Verify a grant like Maskinporten; returns the problems found.
fn verify_grant(state: &MpState, assertion: &str) -> Result<SeenGrant, String> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| format!("header: {e}"))?;
    // Maskinporten accepts RS256, RS384 and RS512 grants; each is verified with its own.
    if ![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512].contains(&header.alg) {
        return Err(format!("alg {:?} is not RS256, RS384 or RS512", header.alg));
    }
    // The client's keys, chosen by the (not yet verified) iss, as Maskinporten looks it up.
    let iss = unverified_iss(assertion);
    let keys = if iss == CLIENT_ID {
        state.keys.lock().unwrap().clone()
    } else {
        state
            .other_clients
            .lock()
            .unwrap()
            .get(&iss)
            .cloned()
            .ok_or_else(|| format!("client {iss:?} not found (MP-100)"))?
    };
    let registered = |kid: &str| {
        keys.get(kid)
            .cloned()
            .ok_or_else(|| format!("Unknown key identifier {kid:?} (MP-124)"))
    };
    let public = match (&header.x5c, &header.kid) {
        // A business certificate: the signature must verify with the leaf's key; a kid that comes
        // along must be registered, and for that very key.
        (Some(x5c), kid) => {
            let leaf = certificate_key(x5c)?;
            if let Some(kid) = kid
                && registered(kid)? != leaf
            {
                return Err(format!(
                    "kid {kid:?} is registered for another key than x5c's (MP-124)"
                ));
            }
            leaf
        }
        (None, Some(kid)) => registered(kid)?,
        (None, None) => return Err("the header has neither kid nor x5c".into()),
    };
    let key =
        DecodingKey::from_rsa_raw_components(&public.n().to_bytes_be(), &public.e().to_bytes_be());
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[state.issuer.as_str()]);
    validation.set_required_spec_claims(&["iss", "sub", "aud", "exp", "iat", "jti", "scope"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(assertion, &key, &validation)
        .map_err(|e| format!("signature or claims invalid: {e} (MP-124)"))?;
    let c = &data.claims;
    let mut problems = Vec::new();
    if c["iss"] != iss.as_str() || c["sub"] != iss.as_str() {
        problems.push(format!(
            "iss/sub {} {} are not the client id",
            c["iss"], c["sub"]
        ));
    }
    if c["aud"] != state.issuer.as_str() {
        problems.push(format!("aud {} is not the issuer", c["aud"]));
    }
    let (iat, exp) = (
        c["iat"].as_u64().unwrap_or(0),
        c["exp"].as_u64().unwrap_or(0),
    );
    if exp <= iat || exp - iat > 120 {
        problems.push(format!(
            "exp - iat = {} is not in 1..=120",
            exp as i64 - iat as i64
        ));
    }
    if now_secs().abs_diff(iat) > 10 {
        problems.push("iat is more than 10 s off".into());
    }
    let scope = c["scope"].as_str().unwrap_or("");
    if scope.is_empty() || scope.contains("  ") {
        problems.push(format!("scope {scope:?} is malformed"));
    }
    if let Some(expected) = state.expected_scope.lock().unwrap().as_ref() {
        let asked: HashSet<String> = scope.split(' ').map(str::to_owned).collect();
        if &asked != expected {
            problems.push(format!(
                "scope {scope:?} is not what was asked for: {expected:?} (invalid_scope)"
            ));
        }
    }
    let jti = c["jti"].as_str().unwrap_or("").to_owned();
    if jti.len() < 16 || !state.jtis.lock().unwrap().insert(jti) {
        problems.push("jti reused or too short (MP-012)".into());
    }
    if let Some(details) = c.get("authorization_details") {
        let ok = details.as_array().is_some_and(|a| a.len() == 1)
            && details[0]["type"] == "urn:altinn:systemuser"
            && details[0]["systemuser_org"]["authority"] == "iso6523-actorid-upis"
            && details[0]["systemuser_org"]["ID"]
                .as_str()
                .is_some_and(|id| id.starts_with("0192:") && id.len() == 14);
        if !ok {
            problems.push(format!("authorization_details malformed: {details}"));
        }
    }
    let allowed: HashSet<&str> = [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "scope",
        "authorization_details",
        "resource",
        "consumer_org",
    ]
    .into();
    for k in c.as_object().unwrap().keys() {
        if !allowed.contains(k.as_str()) {
            problems.push(format!("unexpected claim {k}"));
        }
    }
    if problems.is_empty() {
        Ok(SeenGrant {
            header,
            claims: data.claims,
            raw: assertion.to_owned(),
            at: std::time::Instant::now(),
        })
    } else {
        Err(problems.join("; "))
    }
}

async fn mp_token(
    State(state): State<Arc<MpState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let now_in_flight = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state
        .most_in_flight
        .fetch_max(now_in_flight, Ordering::SeqCst);
    let response = mp_answer(&state, form).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn mp_answer(state: &MpState, form: HashMap<String, String>) -> Response {
    let reply = {
        let scripted = state.script.lock().unwrap().pop_front();
        scripted
            .or_else(|| state.fallback.lock().unwrap().clone())
            .unwrap_or(Reply::Token)
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        state
            .violations
            .lock()
            .unwrap()
            .push("wrong grant_type".into());
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "wrong grant_type",
        );
    }
    let Some(assertion) = form.get("assertion") else {
        state.violations.lock().unwrap().push("no assertion".into());
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing assertion (MP-011)",
        );
    };
    let grant = match verify_grant(state, assertion) {
        Ok(g) => g,
        Err(problem) => {
            state.violations.lock().unwrap().push(problem.clone());
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &problem);
        }
    };
    let expires_in = match reply {
        Reply::ExpiresIn(secs) => secs,
        _ => state.expires_in.load(Ordering::SeqCst),
    };
    let token = |iss: &str| mp_access_token(iss, &grant.claims, expires_in.min(3600));
    state.grants.lock().unwrap().push(grant.clone());
    let ok = |access_token: String| {
        axum::Json(json!({"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in, "scope": grant.claims["scope"]}))
            .into_response()
    };
    match reply {
        Reply::Token | Reply::ExpiresIn(_) => ok(token(&state.issuer)),
        Reply::Status(code) => {
            (StatusCode::from_u16(code).unwrap(), axum::Json(json!({}))).into_response()
        }
        Reply::RetryAfter(code, secs) => (
            StatusCode::from_u16(code).unwrap(),
            [(header::RETRY_AFTER, secs.to_string())],
            "",
        )
            .into_response(),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            ok(token(&state.issuer))
        }
        Reply::Malformed => (StatusCode::OK, "<html>oops</html>").into_response(),
        Reply::MissingToken => {
            axum::Json(json!({"token_type": "Bearer", "expires_in": 120})).into_response()
        }
        Reply::WrongIssuer => ok(token("https://maskinporten.no/")),
        Reply::Refuse(error, description) => {
            oauth_error(StatusCode::BAD_REQUEST, error, description)
        }
    }
}

/// A Maskinporten-like access token, signed with the fake's own key (`other-key.pem`).
fn mp_access_token(iss: &str, grant: &Value, expires_in: u64) -> String {
    let now = now_secs();
    let mut claims = json!({
        "iss": iss, "client_id": grant["iss"], "scope": grant["scope"],
        "consumer": {"authority": "iso6523-actorid-upis", "ID": "0192:991825827"},
        "iat": now, "exp": now + expires_in, "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let Some(d) = grant.get("authorization_details") {
        claims["authorization_details"] = d.clone();
    }
    let key = EncodingKey::from_rsa_pem(&read("other-key.pem")).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

#[derive(Default)]
struct AltinnState {
    mp_issuer: String,
    calls: AtomicUsize,
    lifetime: AtomicU64,
    /// An absolute `exp` for the Altinn tokens instead of now + lifetime (0: none).
    exp: AtomicU64,
    quoted: AtomicBool,
    down: AtomicBool,
    /// Answer 401 to every exchange, as Altinn does for a token it does not accept.
    refusing: AtomicBool,
    exchanged: Mutex<Vec<Value>>,
}

/// A fake Altinn exchange that accepts only tokens of the fake Maskinporten.
pub struct FakeAltinn {
    pub addr: SocketAddr,
    state: Arc<AltinnState>,
}

impl FakeAltinn {
    pub async fn start(mp: &FakeMaskinporten) -> Self {
        let state = Arc::new(AltinnState {
            mp_issuer: mp.issuer(),
            lifetime: AtomicU64::new(1800),
            ..Default::default()
        });
        let router = Router::new()
            .route(
                "/authentication/api/v1/exchange/maskinporten",
                get(altinn_exchange),
            )
            .with_state(state.clone());
        let addr = serve(router).await;
        FakeAltinn { addr, state }
    }
    pub fn exchange_url(&self) -> String {
        format!(
            "http://{}/authentication/api/v1/exchange/maskinporten",
            self.addr
        )
    }
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
    /// Claims of the Maskinporten tokens it exchanged.
    pub fn exchanged(&self) -> Vec<Value> {
        self.state.exchanged.lock().unwrap().clone()
    }
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime.store(secs, Ordering::SeqCst);
    }
    /// Issue Altinn tokens with this absolute `exp` (seconds since 1970), however absurd.
    pub fn set_exp(&self, exp: u64) {
        self.state.exp.store(exp, Ordering::SeqCst);
    }
    pub fn answer_json_quoted(&self, quoted: bool) {
        self.state.quoted.store(quoted, Ordering::SeqCst);
    }
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }
    /// Refuse every exchange with 401 (Altinn's answer to a token it does not accept).
    pub fn set_refusing(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::SeqCst);
    }
}

async fn altinn_exchange(State(state): State<Arc<AltinnState>>, headers: HeaderMap) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if state.refusing.load(Ordering::SeqCst) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let key = DecodingKey::from_rsa_pem(&read("other-key.pub.pem")).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[state.mp_issuer.as_str()]);
    validation.validate_aud = false;
    let Some(claims) = bearer
        .and_then(|t| jsonwebtoken::decode::<Value>(t, &key, &validation).ok())
        .map(|d| d.claims)
    else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let now = now_secs();
    let altinn = json!({
        "iss": "https://platform.tt02.altinn.no/authentication/api/v1/openid/",
        "exp": match state.exp.load(Ordering::SeqCst) {
            0 => now + state.lifetime.load(Ordering::SeqCst),
            exp => exp,
        },
        "iat": now,
        "scope": claims["scope"], "urn:altinn:orgNumber": "991825827",
    });
    state.exchanged.lock().unwrap().push(claims);
    let key = EncodingKey::from_rsa_pem(&read("other-key.pem")).unwrap();
    let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &altinn, &key).unwrap();
    if state.quoted.load(Ordering::SeqCst) {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            format!("\"{token}\""),
        )
            .into_response()
    } else {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            token,
        )
            .into_response()
    }
}

/// The YAML of a broker that talks to the fakes; `extra` is appended (top-level keys).
pub fn config_yaml(mp: &FakeMaskinporten, altinn: &FakeAltinn, extra: &str) -> String {
    let credentials = format!("kid: {KID}\nkey:\n  path: {}\n", fixture("client-key.pem"));
    config_yaml_with(mp, altinn, &credentials, extra)
}

/// As [`config_yaml`] with other credentials (`kid:` and `key:` lines).
pub fn config_yaml_with(
    mp: &FakeMaskinporten,
    altinn: &FakeAltinn,
    credentials: &str,
    extra: &str,
) -> String {
    format!(
        "env: test\nclient_id: {CLIENT_ID}\n{credentials}endpoints:\n  issuer: {}\n  token_url: {}\n  altinn_exchange_url: {}\n{extra}",
        mp.issuer(),
        mp.token_url(),
        altinn.exchange_url(),
    )
}

/// Fakes plus a broker started in-process on a random loopback port.
pub struct TestEnv {
    pub mp: FakeMaskinporten,
    pub altinn: FakeAltinn,
    pub app: App,
    pub http: reqwest::Client,
}

impl TestEnv {
    pub async fn start(extra: &str) -> Self {
        let mp = FakeMaskinporten::start().await;
        let altinn = FakeAltinn::start(&mp).await;
        Self::start_with(mp, altinn, extra).await
    }

    pub async fn start_with(mp: FakeMaskinporten, altinn: FakeAltinn, extra: &str) -> Self {
        let settings =
            Settings::from_yaml(&config_yaml(&mp, &altinn, extra)).expect("test config parses");
        Self::start_settings(mp, altinn, settings).await
    }

    /// A broker with these settings (which should point at `mp` and `altinn`).
    pub async fn start_settings(
        mp: FakeMaskinporten,
        altinn: FakeAltinn,
        settings: Settings,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::spawn(settings, listener).await.expect("broker starts");
        TestEnv {
            mp,
            altinn,
            app,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// GET and parse JSON, asserting the status.
    pub async fn get_json(&self, path: &str, status: u16) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status().as_u16(), status, "GET {path}");
        r.json().await.unwrap()
    }

    /// GET expecting an RFC 9457 problem with this status; returns the body.
    pub async fn problem(&self, path: &str, status: u16) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status().as_u16(), status, "GET {path}");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], status);
        for field in ["type", "title", "detail"] {
            assert!(
                body[field].as_str().is_some_and(|s| !s.is_empty()),
                "problem lacks {field}: {body}"
            );
        }
        body
    }
}

/// Claims of a JWT, unverified (for reading what the broker served).
pub fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// The broker binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_maskinporten-broker");

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start the binary with `args` and `envs`; stderr is piped so tests can read its log.
pub fn spawn_bin(args: &[&str], envs: &[(&str, String)]) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// GET `url` and parse the body as JSON, whatever the status.
pub async fn fetch_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> T {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// Poll `url` until it answers, for at most 15 s.
pub async fn wait_until_up(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not answer within 15 s");
}

/// Send a signal (`"HUP"`, `"TERM"`) to a process.
pub fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

/// Everything a finished child wrote to stderr.
pub async fn stderr_of(child: &mut tokio::process::Child) -> String {
    let mut log = String::new();
    if let Some(err) = child.stderr.as_mut() {
        tokio::io::AsyncReadExt::read_to_string(err, &mut log)
            .await
            .unwrap();
    }
    log
}

/// The binary serving `config_yaml(mp, altinn, extra)` on a free loopback port, its config in a
/// temporary directory that lives as long as this value (tests may rewrite it and send SIGHUP).
pub struct ServedBinary {
    pub child: tokio::process::Child,
    pub base: String,
    pub config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ServedBinary {
    pub async fn start(mp: &FakeMaskinporten, altinn: &FakeAltinn, extra: &str) -> Self {
        Self::start_yaml(|listen| config_yaml(mp, altinn, &format!("{listen}{extra}"))).await
    }

    /// The binary serving the YAML `yaml` makes from a `listen:` line.
    pub async fn start_yaml(yaml: impl FnOnce(&str) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("broker.yaml");
        std::fs::write(&config, yaml(&format!("listen: 127.0.0.1:{port}\n"))).unwrap();
        let child = spawn_bin(&["--config", config.to_str().unwrap()], &[]);
        let base = format!("http://127.0.0.1:{port}");
        wait_until_up(&format!("{base}/healthz")).await;
        ServedBinary {
            child,
            base,
            config,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// `n` valid organisation numbers (mod-11 check digit), counting up from 900000000.
pub fn valid_orgs(n: usize) -> Vec<String> {
    const WEIGHTS: [u32; 8] = [3, 2, 7, 6, 5, 4, 3, 2];
    (90_000_000u32..)
        .filter_map(|prefix| {
            let digits = prefix.to_string();
            let sum: u32 = digits
                .chars()
                .zip(WEIGHTS)
                .map(|(c, w)| c.to_digit(10).unwrap() * w)
                .sum();
            match 11 - sum % 11 {
                10 => None,
                11 => Some(format!("{digits}0")),
                check => Some(format!("{digits}{check}")),
            }
        })
        .take(n)
        .collect()
}

/// How many tokens the broker has cached, by its `/metrics`.
pub async fn cached_tokens(env: &TestEnv) -> usize {
    let text = env.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("broker_token_seconds_until_expiry{"))
        .count()
}

/// The log lines written on this thread (the test's current-thread runtime, where the broker's
/// tasks run too) while it lives, at `level` and above.
pub struct LogCapture {
    lines: Arc<Mutex<Vec<u8>>>,
    _second: tracing::Dispatch,
    _default: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub fn start(level: tracing::Level) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let writer = CaptureWriter(lines.clone());
        // A second live dispatcher: with only one, tracing decides a callsite's interest from
        // the default of whichever thread hits it first, so a callsite first hit by another
        // test's thread would be cached as "never" and its events lost here.
        let second = tracing::Dispatch::new(tracing_subscriber::registry());
        // Scoped to this thread: the other tests share the process.
        let default = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        );
        LogCapture {
            lines,
            _second: second,
            _default: default,
        }
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lines.lock().unwrap()).into_owned()
    }
}

/// The value of the metric line starting with `name` (labels included), 0 when absent: for
/// asserting a delta, the recorder being shared by every test in the binary.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

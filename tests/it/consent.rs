//! Altinn consent: requests, consent tokens and their rules, against a strict fake of Altinn's
//! consent request API and a fake Maskinporten that looks each consent up before it issues a
//! consent token (PROTOCOL.md, "Altinn consent").

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::support::*;
use maskinporten_broker::hash_api_key;

/// A synthetic fødselsnummer (both check digits valid; no real person).
const FNR: &str = "15038512363";
const FROM: &str = "urn:altinn:person:identifier-no:15038512363";
const BANK: &str = "991825827";
const PROVIDER_SCOPE: &str = "skatteetaten:inntekt";
const CONSENT_ID: &str = "0b0b6c2e-4a44-4c45-9d4e-2f0f7d2b6a11";
const SECRET: &[u8] = b"fake-maskinporten";
const WRITE: &str = "altinn:consentrequests.write";
const READ: &str = "altinn:consentrequests.read";

/// One consent as the fake Altinn holds it.
#[derive(Clone)]
struct Stored {
    body: Value,
    status: String,
}

#[derive(Default)]
struct World {
    issuer: String,
    consents: Mutex<HashMap<String, Stored>>,
    /// Every body POSTed, in order.
    posted: Mutex<Vec<Value>>,
    reads: AtomicUsize,
    /// Consent grants Maskinporten was asked for (issued or not).
    consent_grants: Mutex<Vec<Value>>,
    violations: Mutex<Vec<String>>,
    jtis: Mutex<Vec<String>>,
    /// After this many reads of a `Created` consent, it turns into `then` (for --wait).
    flip: Mutex<Option<(usize, String)>>,
    /// The expires_in of consent tokens.
    expires_in: AtomicUsize,
    /// Answer reads with a body larger than the broker reads.
    huge: std::sync::atomic::AtomicBool,
}

struct Fake {
    world: Arc<World>,
    base: String,
}

impl Fake {
    async fn start() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let world = Arc::new(World {
            issuer: format!("http://{addr}/"),
            expires_in: AtomicUsize::new(120),
            ..Default::default()
        });
        let router = Router::new()
            .route("/token", post(mp_token))
            .route(
                "/accessmanagement/api/v1/enterprise/consentrequests",
                post(create),
            )
            .route(
                "/accessmanagement/api/v1/enterprise/consentrequests/{id}",
                get(read),
            )
            .with_state(world.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Fake {
            world,
            base: format!("http://{addr}/"),
        }
    }

    fn yaml(&self, extra: &str) -> String {
        format!(
            "env: test\nclient_id: {CLIENT_ID}\nkid: {KID}\nkey:\n  path: {}\nendpoints:\n  issuer: {base}\n  token_url: {base}token\n  altinn_exchange_url: {base}exchange\n  altinn_platform: {base}\nconsent:\n  org: '{BANK}'\n  redirect_urls: [https://bank.example/back]\n  scopes: ['skatteetaten:*']\n{extra}",
            fixture("client-key.pem"),
            base = self.base
        )
    }

    fn set(&self, id: &str, status: &str, valid_to: &str) {
        let body = json!({"id": id, "from": FROM, "to": format!("urn:altinn:organization:identifier-no:{BANK}"), "validTo": valid_to});
        self.world.consents.lock().unwrap().insert(
            id.to_owned(),
            Stored {
                body,
                status: status.to_owned(),
            },
        );
    }

    fn violations(&self) -> Vec<String> {
        self.world.violations.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.world.posted.lock().unwrap().len()
            + self.world.reads.load(Ordering::SeqCst)
            + self.world.consent_grants.lock().unwrap().len()
    }
}

fn in_an_hour() -> String {
    rfc3339(now_secs() + 3600)
}

fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn violation(world: &World, what: String) -> Response {
    world.violations.lock().unwrap().push(what.clone());
    (StatusCode::BAD_REQUEST, Json(json!({"detail": what}))).into_response()
}

/// The scopes of a bearer token this fake Maskinporten issued; `None` for any other.
fn bearer_scopes(headers: &HeaderMap) -> Option<Vec<String>> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let mut v = Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(SECRET), &v)
        .ok()?
        .claims;
    Some(
        claims["scope"]
            .as_str()?
            .split(' ')
            .map(str::to_owned)
            .collect(),
    )
}

async fn create(State(w): State<Arc<World>>, headers: HeaderMap, body: Json<Value>) -> Response {
    let Json(body) = body;
    if !bearer_scopes(&headers).is_some_and(|s| s.iter().any(|s| s == WRITE)) {
        return violation(&w, format!("POST without a token of scope {WRITE}"));
    }
    w.posted.lock().unwrap().push(body.clone());
    let keys: Vec<&str> = body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut expected = vec![
        "consentRights",
        "from",
        "id",
        "portalViewMode",
        "redirectUrl",
        "requiredDelegator",
        "to",
        "validTo",
    ];
    if body.get("requestMessage").is_some() {
        expected.push("requestMessage");
        expected.sort();
    }
    if keys != expected {
        return violation(&w, format!("unexpected members {keys:?}"));
    }
    if body["to"] != format!("urn:altinn:organization:identifier-no:{BANK}") {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"detail": "to is not the token's org"})),
        )
            .into_response();
    }
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    if uuid::Uuid::parse_str(&id).is_err() {
        return violation(&w, "id is not a UUID".into());
    }
    let mut consents = w.consents.lock().unwrap();
    let (status, stored) = match consents.get(&id) {
        Some(existing) => (StatusCode::OK, existing.clone()),
        None => {
            let stored = Stored {
                body: body.clone(),
                status: "Created".into(),
            };
            consents.insert(id.clone(), stored.clone());
            (StatusCode::CREATED, stored)
        }
    };
    (status, Json(answer(&id, &stored))).into_response()
}

fn answer(id: &str, s: &Stored) -> Value {
    json!({
        "id": id,
        "from": s.body["from"],
        "to": s.body["to"],
        "validTo": s.body["validTo"],
        "status": s.status,
        "viewUri": format!("https://am.ui.tt02.altinn.no/accessmanagement/ui/consent/request?id={id}"),
    })
}

async fn read(State(w): State<Arc<World>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !bearer_scopes(&headers).is_some_and(|s| s.iter().any(|s| s == READ)) {
        return violation(&w, format!("GET without a token of scope {READ}"));
    }
    let reads = w.reads.fetch_add(1, Ordering::SeqCst) + 1;
    if w.huge.load(Ordering::SeqCst) {
        let padding = "x".repeat(300 * 1024);
        return Json(json!({"id": id, "status": "Accepted", "padding": padding})).into_response();
    }
    let mut consents = w.consents.lock().unwrap();
    let Some(stored) = consents.get_mut(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some((after, then)) = w.flip.lock().unwrap().clone()
        && reads >= after
    {
        stored.status = then;
    }
    Json(answer(&id, stored)).into_response()
}

/// Maskinporten: the grant verified with the client's key; a consent grant issued only for an
/// accepted, unexpired consent whose `from` matches.
async fn mp_token(
    State(w): State<Arc<World>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let mut v = Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[w.issuer.as_str()]);
    let key =
        DecodingKey::from_rsa_pem(&std::fs::read(fixture("client-key.pub.pem")).unwrap()).unwrap();
    let Ok(grant) = jsonwebtoken::decode::<Value>(&assertion, &key, &v) else {
        return violation(&w, "a grant that does not verify".into());
    };
    let claims = grant.claims;
    let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
    {
        let mut jtis = w.jtis.lock().unwrap();
        if jtis.contains(&jti) {
            return violation(&w, "jti reused".into());
        }
        jtis.push(jti);
    }
    let scope = claims["scope"].as_str().unwrap_or_default().to_owned();
    let now = now_secs();
    let mut token = json!({"iss": w.issuer, "scope": scope, "iat": now, "exp": now + 120});
    let mut expires_in = 120;
    match claims.get("authorization_details") {
        None if scope == format!("{READ} {WRITE}") => {}
        None => return violation(&w, format!("a plain grant for {scope}")),
        Some(details) => {
            w.consent_grants.lock().unwrap().push(details.clone());
            let detail = &details[0];
            let known: Vec<&str> = detail
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if details.as_array().map(Vec::len) != Some(1)
                || known != ["from", "id", "type"]
                || detail["type"] != "urn:altinn:consent"
            {
                return violation(&w, format!("authorization_details {details}"));
            }
            if !scope.starts_with("skatteetaten:") || scope.contains(' ') {
                return violation(&w, format!("a consent grant for {scope}"));
            }
            let id = detail["id"].as_str().unwrap_or_default();
            let consents = w.consents.lock().unwrap();
            let refuse = |why: &str| {
                (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_authorization_details", "error_description": format!("{why} (MP-303)")}))).into_response()
            };
            let Some(stored) = consents.get(id) else {
                return refuse("no such consent");
            };
            let valid_to = stored.body["validTo"].as_str().unwrap_or_default();
            let until = time::OffsetDateTime::parse(
                valid_to,
                &time::format_description::well_known::Rfc3339,
            )
            .map(|t| t.unix_timestamp() as u64)
            .unwrap_or(0);
            if stored.status != "Accepted" || until <= now || stored.body["from"] != detail["from"]
            {
                return refuse(
                    "the consent is not accepted, has expired, or is from another party",
                );
            }
            expires_in = w.expires_in.load(Ordering::SeqCst) as u64;
            token["exp"] = json!(now + expires_in);
            token["authorization_details"] = json!([{"type": "urn:altinn:consent", "id": id, "from": detail["from"], "consented": rfc3339(now), "validTo": valid_to, "consentRights": []}]);
        }
    }
    let access_token = jsonwebtoken::encode(
        &Header::default(),
        &token,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    Json(json!({"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in, "scope": scope})).into_response()
}

struct Env {
    fake: Fake,
    app: maskinporten_broker::app::App,
    http: reqwest::Client,
}

impl Env {
    async fn start(extra: &str) -> Env {
        let fake = Fake::start().await;
        let settings = maskinporten_broker::config::Settings::from_yaml(&fake.yaml(extra)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = maskinporten_broker::app::App::spawn(settings, listener)
            .await
            .unwrap();
        Env {
            fake,
            app,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.addr)
    }

    async fn post(&self, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut r = self.http.post(self.url("/consents")).json(body);
        if let Some(key) = key {
            r = r.header("x-api-key", key);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut r = self.http.get(self.url(path));
        if let Some(key) = key {
            r = r.header("x-api-key", key);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

fn token_path(id: &str, scope: &str) -> String {
    format!("/token/consent?id={id}&scope={scope}")
}

fn ask() -> Value {
    json!({
        "id": CONSENT_ID,
        "from": FNR,
        "resources": [{"resource": "ske-inntekt", "metadata": {"inntektsaar": "2025"}}],
        "valid_to": "2099-12-31",
        "message": "Lånesøknad",
    })
}

#[tokio::test]
async fn the_request_is_exactly_altinns_body_and_the_same_id_is_answered_200() {
    let env = Env::start("").await;
    let (status, view) = env.post(&ask(), None).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["id"], CONSENT_ID);
    assert_eq!(view["status"], "Created");
    assert!(view["view_uri"].as_str().unwrap().contains(CONSENT_ID));
    assert_eq!(view["from"], "urn:altinn:person:identifier-no:150385*****");
    let posted = env.fake.world.posted.lock().unwrap()[0].clone();
    assert_eq!(
        posted,
        json!({
            "id": CONSENT_ID,
            "from": FROM,
            "to": format!("urn:altinn:organization:identifier-no:{BANK}"),
            "requiredDelegator": null,
            "validTo": "2099-12-31T23:59:59Z",
            "consentRights": [{"action": ["consent"], "resource": [{"type": "urn:altinn:resource", "value": "ske-inntekt"}], "metadata": {"inntektsaar": "2025"}}],
            "requestMessage": {"nb": "Lånesøknad"},
            "redirectUrl": "https://bank.example/back",
            "portalViewMode": "show",
        })
    );
    let (again, _) = env.post(&ask(), None).await;
    assert_eq!(again, 200);
    let (read, view) = env.get(&format!("/consents/{CONSENT_ID}"), None).await;
    assert_eq!((read, view["status"].as_str()), (200, Some("Created")));
    assert!(
        env.fake.violations().is_empty(),
        "{:?}",
        env.fake.violations()
    );
}

#[tokio::test]
async fn a_consent_token_carries_type_id_and_from_and_is_cached_per_consent_and_scope() {
    let env = Env::start("").await;
    env.fake.set(CONSENT_ID, "Accepted", &in_an_hour());
    let (status, body) = env.get(&token_path(CONSENT_ID, PROVIDER_SCOPE), None).await;
    assert_eq!(status, 200, "{body}");
    let claims = claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["authorization_details"][0]["id"], CONSENT_ID);
    assert_eq!(
        env.fake.world.consent_grants.lock().unwrap()[0],
        json!([{"type": "urn:altinn:consent", "id": CONSENT_ID, "from": FROM}])
    );
    let (again, second) = env.get(&token_path(CONSENT_ID, PROVIDER_SCOPE), None).await;
    assert_eq!(again, 200);
    assert_eq!(second["access_token"], body["access_token"]);
    assert_eq!(
        env.fake.world.consent_grants.lock().unwrap().len(),
        1,
        "cached"
    );
    // Another scope is another token, but `from` was read from Altinn once.
    let (other, _) = env
        .get(&token_path(CONSENT_ID, "skatteetaten:formue"), None)
        .await;
    assert_eq!(other, 200);
    assert_eq!(env.fake.world.consent_grants.lock().unwrap().len(), 2);
    assert_eq!(
        env.fake.world.reads.load(Ordering::SeqCst),
        1,
        "from read once"
    );
    assert!(
        env.fake.violations().is_empty(),
        "{:?}",
        env.fake.violations()
    );
}

#[tokio::test]
async fn a_consent_token_never_outlives_the_consents_valid_to() {
    let env = Env::start("cache:\n  min_remaining: 5s\n").await;
    env.fake.world.expires_in.store(3600, Ordering::SeqCst);
    let valid_to = now_secs() + 60;
    env.fake.set(CONSENT_ID, "Accepted", &rfc3339(valid_to));
    let (status, body) = env.get(&token_path(CONSENT_ID, PROVIDER_SCOPE), None).await;
    assert_eq!(status, 200, "{body}");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(expires_in <= 61, "{expires_in} s outlives validTo");
}

#[tokio::test]
async fn a_consent_not_accepted_is_a_409_that_names_its_status() {
    let env = Env::start("").await;
    for status in ["Created", "Rejected", "Revoked", "Expired"] {
        let id = uuid::Uuid::new_v4().to_string();
        env.fake.set(&id, status, &in_an_hour());
        let (code, problem) = env.get(&token_path(&id, PROVIDER_SCOPE), None).await;
        assert_eq!(code, 409, "{problem}");
        assert_eq!(problem["consent_status"], status);
        assert!(problem["detail"].as_str().unwrap().contains(status));
    }
    // Accepted but past validTo is Expired.
    env.fake
        .set(CONSENT_ID, "Accepted", &rfc3339(now_secs() - 10));
    let (code, problem) = env.get(&token_path(CONSENT_ID, PROVIDER_SCOPE), None).await;
    assert_eq!(
        (code, problem["consent_status"].as_str()),
        (409, Some("Expired"))
    );
    assert!(env.fake.world.consent_grants.lock().unwrap().is_empty());
    // With `from` given the broker asks Maskinporten, which refuses; the broker says why.
    let id = uuid::Uuid::new_v4().to_string();
    env.fake.set(&id, "Revoked", &in_an_hour());
    let (code, problem) = env
        .get(
            &format!("{}&from={FNR}", token_path(&id, PROVIDER_SCOPE)),
            None,
        )
        .await;
    assert_eq!(
        (code, problem["consent_status"].as_str()),
        (409, Some("Revoked")),
        "{problem}"
    );
    assert_eq!(env.fake.world.consent_grants.lock().unwrap().len(), 1);
    let (code, _) = env
        .get(
            &token_path(&uuid::Uuid::new_v4().to_string(), PROVIDER_SCOPE),
            None,
        )
        .await;
    assert_eq!(code, 404);
}

const KEY_BANK: &str = "key-of-the-bank-app-0123";
const KEY_OTHER: &str = "key-of-another-app-98765";
const KEY_NARROW: &str = "key-of-narrow-app-456789";

#[tokio::test]
async fn the_routes_are_403_for_clients_without_consent_true_and_scopes_bound_the_token() {
    let env = Env::start(&format!(
        "clients:\n  - name: bank\n    key_sha256: {}\n    profiles: [altinn]\n    consent: true\n    scopes: ['skatteetaten:*']\n  - name: other\n    key_sha256: {}\n    profiles: ['*']\n    scopes: ['skatteetaten:*']\n  - name: narrow\n    key_sha256: {}\n    profiles: [altinn]\n    consent: true\n    scopes: ['skatteetaten:formue']\n",
        hash_api_key(KEY_BANK),
        hash_api_key(KEY_OTHER),
        hash_api_key(KEY_NARROW)
    ))
    .await;
    env.fake.set(CONSENT_ID, "Accepted", &in_an_hour());
    let token = token_path(CONSENT_ID, PROVIDER_SCOPE);
    let get = format!("/consents/{CONSENT_ID}");
    assert_eq!(env.post(&ask(), Some(KEY_OTHER)).await.0, 403);
    assert_eq!(env.get(&get, Some(KEY_OTHER)).await.0, 403);
    assert_eq!(env.get(&token, Some(KEY_OTHER)).await.0, 403);
    assert_eq!(env.get(&token, None).await.0, 401);
    assert_eq!(
        env.fake.calls(),
        0,
        "nothing asked upstream for a refused caller"
    );
    // consent.scopes: skatteetaten:* only.
    let (code, p) = env
        .get(&token_path(CONSENT_ID, "nav:arbeid"), Some(KEY_BANK))
        .await;
    assert_eq!((code, p["scope"].as_str()), (403, Some("nav:arbeid")));
    // The client's own scopes bound it.
    assert_eq!(env.get(&token, Some(KEY_NARROW)).await.0, 403);
    assert_eq!(env.fake.calls(), 0);
    assert_eq!(env.get(&token, Some(KEY_BANK)).await.0, 200);
    assert_eq!(env.post(&ask(), Some(KEY_BANK)).await.0, 200);
}

#[tokio::test]
async fn without_consent_scopes_no_consent_token_is_given() {
    let fake = Fake::start().await;
    let yaml = fake.yaml("").replace("  scopes: ['skatteetaten:*']\n", "");
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = maskinporten_broker::app::App::spawn(settings, listener)
        .await
        .unwrap();
    fake.set(CONSENT_ID, "Accepted", &in_an_hour());
    let r = reqwest::get(format!(
        "http://{}{}",
        app.addr,
        token_path(CONSENT_ID, PROVIDER_SCOPE)
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field_before_any_call() {
    let env = Env::start("").await;
    // The served schema names the configured return URLs, so a schema-valid body is one the
    // broker takes (schemathesis).
    let (_, doc) = env.get("/openapi.json", None).await;
    assert_eq!(
        doc["components"]["schemas"]["ConsentRequestBody"]["properties"]["redirect_url"]["enum"],
        json!(["https://bank.example/back", null])
    );
    let with = |field: &str, value: Value| {
        let mut body = ask();
        body[field] = value;
        body
    };
    for (body, field) in [
        (with("from", json!("15038512364")), "from"),
        (with("from", json!("991825828")), "from"),
        (with("valid_to", json!("2001-01-01")), "valid_to"),
        (with("valid_to", json!("soon")), "valid_to"),
        (
            with("redirect_url", json!("https://evil.example/")),
            "redirect_url",
        ),
        (with("resources", json!([])), "resources"),
        (with("id", json!("not-a-uuid")), "id"),
    ] {
        let (code, problem) = env.post(&body, None).await;
        assert_eq!(code, 400, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{problem}");
        assert!(!problem.to_string().contains("1503851236"), "{problem}");
    }
    for (query, field) in [
        (format!("id=nope&scope={PROVIDER_SCOPE}"), "id"),
        (format!("id={CONSENT_ID}"), "scope"),
        (format!("id={CONSENT_ID}&scope=skatteetaten:*"), "scope"),
        (
            format!("id={CONSENT_ID}&scope={PROVIDER_SCOPE}&from=15038512364"),
            "from",
        ),
    ] {
        let (code, problem) = env.get(&format!("/token/consent?{query}"), None).await;
        assert_eq!(
            (code, problem["field"].as_str()),
            (400, Some(field)),
            "{query}: {problem}"
        );
    }
    assert_eq!(env.get("/consents/nope", None).await.0, 400);
    assert_eq!(env.fake.calls(), 0, "nothing was sent upstream");
}

#[tokio::test(flavor = "current_thread")]
async fn no_fodselsnummer_in_trace_output() {
    let logs = LogCapture::start(tracing::Level::TRACE);
    let env = Env::start("").await;
    assert_eq!(env.post(&ask(), None).await.0, 201);
    env.fake.set(CONSENT_ID, "Accepted", &in_an_hour());
    let (code, _) = env.get(&token_path(CONSENT_ID, PROVIDER_SCOPE), None).await;
    assert_eq!(code, 200);
    let (_, refused) = env
        .post(
            &{
                let mut b = ask();
                b["valid_to"] = json!("2001-01-01");
                b
            },
            None,
        )
        .await;
    let (_, view) = env.get(&format!("/consents/{CONSENT_ID}"), None).await;
    let metrics = reqwest::get(env.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let text = logs.text();
    assert!(
        text.contains("consent request"),
        "the capture works: {text}"
    );
    for (name, output) in [
        ("logs", text),
        ("metrics", metrics),
        ("refusal", refused.to_string()),
        ("view", view.to_string()),
    ] {
        assert!(!output.contains(FNR), "the fødselsnummer is in the {name}");
        assert!(
            !output.contains(&FNR[6..]),
            "the personal number is in the {name}"
        );
    }
}

/// `maskinporten-broker --config <yaml> consent ...`, at most 60 s: exit code, stdout, stderr.
async fn cli(fake: &Fake, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.yaml");
    std::fs::write(&config, fake.yaml("")).unwrap();
    let child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child)
        .await
        .expect("the command finishes")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn request_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "consent",
        "request",
        "--from",
        FNR,
        "--resource",
        "ske-inntekt",
        "--meta",
        "inntektsaar=2025",
        "--valid-to",
        "2099-12-31",
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn consent_request_wait_ends_with_0_on_accepted_and_1_on_rejected() {
    for (then, code) in [("Accepted", 0), ("Rejected", 1)] {
        let fake = Fake::start().await;
        *fake.world.flip.lock().unwrap() = Some((1, then.to_owned()));
        let (exit, stdout, stderr) =
            cli(&fake, &request_args(&["--wait", "--timeout", "30s"])).await;
        assert_eq!(exit, code, "{then}: {stdout}\n{stderr}");
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["status"], "Created", "{stdout}");
        assert_eq!(lines.last().unwrap()["status"], then, "{stdout}");
        for field in ["id", "status", "view_uri", "valid_to"] {
            assert!(lines[0].get(field).is_some(), "{field}: {stdout}");
        }
        let posted = fake.world.posted.lock().unwrap()[0].clone();
        assert_eq!(posted["from"], FROM);
        assert_eq!(
            posted["consentRights"][0]["metadata"],
            json!({"inntektsaar": "2025"})
        );
        assert!(
            !format!("{stdout}{stderr}").contains(FNR),
            "{stdout}{stderr}"
        );
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }
}

#[tokio::test]
async fn consent_cli_refuses_bad_flags_naming_them_before_any_call_and_reads_a_status() {
    let fake = Fake::start().await;
    for (flag, value) in [
        ("--from", "15038512364"),
        ("--valid-to", "2001-01-01"),
        ("--redirect-url", "https://evil.example/"),
    ] {
        let mut args = request_args(&[]);
        match args.iter().position(|a| *a == flag) {
            Some(at) => args[at + 1] = value,
            None => args.extend([flag, value]),
        }
        let (exit, _, stderr) = cli(&fake, &args).await;
        assert_eq!(exit, 1, "{args:?}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
    assert_eq!(fake.calls(), 0);
    fake.set(CONSENT_ID, "Accepted", &in_an_hour());
    let (exit, stdout, _) = cli(&fake, &["consent", "status", CONSENT_ID, "--json"]).await;
    assert_eq!(exit, 0);
    let view: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(view["status"], "Accepted");
    assert_eq!(view["from"], "urn:altinn:person:identifier-no:150385*****");
}

/// The laptop flow in `env: local`: the simulator holds the consent, shows the page, and its
/// Maskinporten issues a consent token only once the consent is accepted.
#[tokio::test]
async fn env_local_runs_the_whole_flow_on_the_simulator() {
    let settings = maskinporten_broker::config::Settings::from_yaml(&format!(
        "env: local\nconsent:\n  org: '{BANK}'\n  redirect_urls: [https://bank.example/back]\n  scopes: ['skatteetaten:*']\n"
    ))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = maskinporten_broker::app::App::spawn(settings, listener)
        .await
        .unwrap();
    let base = format!("http://{}", app.addr);
    let http = reqwest::Client::new();
    let mut body = ask();
    body["id"] = json!(uuid::Uuid::new_v4().to_string());
    let r = http
        .post(format!("{base}/consents"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let view: Value = r.json().await.unwrap();
    let id = view["id"].as_str().unwrap().to_owned();
    let page = view["view_uri"].as_str().unwrap().to_owned();
    let token = format!("{base}{}", token_path(&id, PROVIDER_SCOPE));
    let r = http.get(&token).send().await.unwrap();
    assert_eq!(r.status(), 409, "not accepted yet");
    let html = http.get(&page).send().await.unwrap().text().await.unwrap();
    assert!(
        html.contains("150385*****") && !html.contains(FNR),
        "{html}"
    );
    let r = http
        .post(&page)
        .form(&[("id", id.as_str()), ("action", "accept")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let claims = claims(answer["access_token"].as_str().unwrap());
    assert_eq!(claims["scope"], PROVIDER_SCOPE);
    assert_eq!(
        claims["authorization_details"][0]["type"],
        "urn:altinn:consent"
    );
    assert_eq!(claims["authorization_details"][0]["id"], id.as_str());
    assert_eq!(claims["authorization_details"][0]["from"], FROM);
    // A `from` that is not the consent's is refused by the simulated Maskinporten.
    let r = http
        .get(format!(
            "{base}{}&from=01010112377",
            token_path(&id, "skatteetaten:formue")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "Maskinporten refuses another from");
}

#[tokio::test]
async fn an_answer_past_the_bound_is_a_502_and_a_body_past_16_kib_a_413() {
    let env = Env::start("").await;
    env.fake.set(CONSENT_ID, "Accepted", &in_an_hour());
    env.fake.world.huge.store(true, Ordering::SeqCst);
    let (code, problem) = env.get(&format!("/consents/{CONSENT_ID}"), None).await;
    assert_eq!(code, 502, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("larger than"),
        "{problem}"
    );
    let mut body = ask();
    body["message"] = json!("x".repeat(17 * 1024));
    let (code, _) = env.post(&body, None).await;
    assert_eq!(code, 413);
    assert!(env.fake.world.posted.lock().unwrap().is_empty());
}

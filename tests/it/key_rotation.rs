//! Key expiry and renewal through Digdir's self-service API, against a strict fake of the API
//! (whole-set semantics, 5 keys, no private members, the admin token's scope per method) and the
//! strict fake Maskinporten (which checks the self-service client's grant carries `x5c`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::support::*;

pub(crate) const SS_CLIENT: &str = "ss-client";
const DAY: u64 = 86_400;
const PRIVATE: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

#[derive(Default)]
pub(crate) struct DigdirState {
    /// Each key's public JWK with its `exp`.
    pub(crate) keys: Mutex<Vec<Value>>,
    reads: AtomicUsize,
    posts: Mutex<Vec<Value>>,
    /// Answer every POST with this status instead (0: normally).
    refuse_posts: AtomicUsize,
    violations: Mutex<Vec<String>>,
    /// Every bearer token accepted, for leak checks.
    tokens: Mutex<Vec<String>>,
}

/// A strict fake of `GET|POST {api}clients/{id}/jwks`.
pub(crate) struct FakeDigdir {
    addr: std::net::SocketAddr,
    pub(crate) state: Arc<DigdirState>,
}

impl FakeDigdir {
    pub(crate) async fn start(keys: Vec<Value>) -> Self {
        let state = Arc::new(DigdirState {
            keys: Mutex::new(keys),
            ..Default::default()
        });
        let router = Router::new()
            .route(
                "/api/v1/clients/{id}/jwks",
                get(digdir_read).post(digdir_replace),
            )
            .with_state(state.clone());
        FakeDigdir {
            addr: serve(router).await,
            state,
        }
    }
    fn api(&self) -> String {
        format!("http://{}/api/v1/", self.addr)
    }
    pub(crate) fn posts(&self) -> Vec<Value> {
        self.state.posts.lock().unwrap().clone()
    }
    pub(crate) fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }
}

fn violation(state: &DigdirState, what: String) -> Response {
    state.violations.lock().unwrap().push(what.clone());
    (StatusCode::BAD_REQUEST, axum::Json(json!({"detail": what}))).into_response()
}

/// The bearer token: issued by the fake Maskinporten (signed with other-key.pem) to the
/// self-service client, with `scope` among its scopes.
fn authorize(state: &DigdirState, headers: &HeaderMap, scope: &str) -> Result<(), Box<Response>> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Box::new(violation(state, "no bearer token".into())))?;
    let key =
        DecodingKey::from_rsa_pem(&std::fs::read(fixture("other-key.pub.pem")).unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| Box::new(violation(state, format!("bearer token invalid: {e}"))))?
        .claims;
    if claims["client_id"] != SS_CLIENT {
        return Err(Box::new(violation(
            state,
            format!(
                "token of {} not the self-service client",
                claims["client_id"]
            ),
        )));
    }
    let scopes = claims["scope"].as_str().unwrap_or("");
    if !scopes.split(' ').any(|s| s == scope) {
        return Err(Box::new(violation(state, format!("token lacks {scope}"))));
    }
    state.tokens.lock().unwrap().push(token.to_owned());
    Ok(())
}

async fn digdir_read(
    State(state): State<Arc<DigdirState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, "idporten:dcr.read") {
        return *r;
    }
    if id != CLIENT_ID {
        return violation(&state, format!("read of client {id}"));
    }
    state.reads.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({"keys": state.keys.lock().unwrap().clone()})).into_response()
}

async fn digdir_replace(
    State(state): State<Arc<DigdirState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, "idporten:dcr.write") {
        return *r;
    }
    if id != CLIENT_ID {
        return violation(&state, format!("write of client {id}"));
    }
    state.posts.lock().unwrap().push(body.clone());
    let refuse = state.refuse_posts.load(Ordering::SeqCst);
    if refuse != 0 {
        return StatusCode::from_u16(refuse as u16).unwrap().into_response();
    }
    let Some(keys) = body["keys"].as_array() else {
        return violation(&state, "no keys array".into());
    };
    if keys.len() > 5 {
        return violation(&state, format!("{} keys: at most 5", keys.len()));
    }
    let mut set = Vec::new();
    for key in keys {
        if let Some(m) = PRIVATE.iter().find(|m| key.get(**m).is_some()) {
            return violation(&state, format!("private member {m} sent"));
        }
        if key["use"] != "sig" || key["kty"] != "RSA" || key["kid"].as_str().is_none() {
            return violation(&state, format!("incomplete key {key}"));
        }
        let mut key = key.clone();
        key["exp"] = json!(now_secs() + 365 * DAY);
        set.push(key);
    }
    *state.keys.lock().unwrap() = set.clone();
    axum::Json(json!({"keys": set})).into_response()
}

/// The broker's key (client-key.pem, kid KID) as Digdir holds it, expiring in `days`.
fn held_key(days: u64) -> Value {
    let public = public_key("client-key.pub.pem");
    digdir_key(KID, &public, days)
}

/// Another app's key (other-key.pub.pem) under `kid`.
pub(crate) fn foreign_key(kid: &str, days: u64) -> Value {
    digdir_key(kid, &public_key("other-key.pub.pem"), days)
}

pub(crate) fn digdir_key(kid: &str, public: &rsa::RsaPublicKey, days: u64) -> Value {
    use base64::Engine;
    use rsa::traits::PublicKeyParts;
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    json!({"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
        "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be()),
        "exp": now_secs() + days * DAY})
}

/// `key_rotation:` for the fakes: the self-service client signs with the business certificate
/// (business-legacy.p12, x5c only).
pub(crate) fn rotation_yaml(digdir: &FakeDigdir, more: &str) -> String {
    format!(
        "key_rotation:\n  self_service:\n    client_id: {SS_CLIENT}\n    key:\n      path: {}\n      password_file: {}\n  api: {}\n{more}",
        fixture("business-legacy.p12"),
        fixture("business-legacy.password"),
        digdir.api()
    )
}

async fn start(digdir: &FakeDigdir, more: &str) -> TestEnv {
    let mp = FakeMaskinporten::start().await;
    mp.register_client(SS_CLIENT, &[]);
    let altinn = FakeAltinn::start(&mp).await;
    TestEnv::start_with(mp, altinn, &rotation_yaml(digdir, more)).await
}

/// Wait (bounded: 10 s) until `done`.
pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn admin_grants_carry_x5c(env: &TestEnv) {
    let admin: Vec<_> = env
        .mp
        .grants()
        .into_iter()
        .filter(|g| g.claims["iss"] == SS_CLIENT)
        .collect();
    assert!(!admin.is_empty());
    for g in admin {
        assert!(g.header.x5c.is_some(), "the admin grant carries x5c");
        let scopes = g.claims["scope"].as_str().unwrap();
        assert_eq!(scopes, "idporten:dcr.read idporten:dcr.write");
    }
}

#[tokio::test]
async fn renew_posts_the_same_set_and_keys_the_broker_does_not_hold_stay() {
    let digdir = FakeDigdir::start(vec![held_key(10), foreign_key("another-app", 200)]).await;
    let before = digdir.state.keys.lock().unwrap().clone();
    let env = start(&digdir, "").await;
    until("the renewal", || !digdir.posts().is_empty()).await;
    let posted = &digdir.posts()[0]["keys"];
    assert_eq!(posted.as_array().unwrap().len(), 2, "{posted}");
    for (sent, held) in posted.as_array().unwrap().iter().zip(&before) {
        assert_eq!(sent["kid"], held["kid"]);
        assert_eq!(sent["n"], held["n"], "the same public key posted again");
    }
    assert!(digdir.violations().is_empty(), "{:?}", digdir.violations());
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    admin_grants_carry_x5c(&env);
    // Expiry in view: /readyz and the gauge.
    let mut ready = Value::Null;
    for _ in 0..100 {
        ready = env.get_json("/readyz", 200).await;
        if ready["key_rotation"]["last_check"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = ready["keys"].as_array().unwrap();
    let ours = keys.iter().find(|k| k["kid"] == KID).unwrap();
    assert_eq!(ours["in_use"], true);
    assert!(ours["days_left"].as_i64().unwrap() >= 364, "{ours}");
    assert!(ours["expires_at"].is_string());
    let theirs = keys.iter().find(|k| k["kid"] == "another-app").unwrap();
    assert_eq!(theirs["kept"], "digdir only");
    let metrics = env.get("/metrics").await.text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("broker_key_expires_at_seconds{") && l.contains(&format!("kid=\"{KID}\""))
        })
        .expect("the gauge");
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= (now_secs() + 364 * DAY) as f64, "{line}");
    // Tokens still flow, signed with the same key.
    env.get_json("/token/admin", 200).await;
    env.app.shutdown().await;
}

#[tokio::test]
async fn a_key_far_from_expiry_is_not_posted() {
    let digdir = FakeDigdir::start(vec![held_key(200)]).await;
    let env = start(&digdir, "").await;
    until("the first read", || {
        digdir.state.reads.load(Ordering::SeqCst) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(digdir.posts().is_empty());
    env.app.shutdown().await;
}

#[tokio::test]
async fn a_refused_upload_leaves_the_old_key_signing_and_shows_in_readyz() {
    let logs = LogCapture::start(tracing::Level::WARN);
    let digdir = FakeDigdir::start(vec![held_key(3)]).await;
    digdir.state.refuse_posts.store(503, Ordering::SeqCst);
    let env = start(&digdir, "  check_every: 2s\n").await;
    // Bounded retries with backoff: 5 attempts, then the next check.
    until("five attempts", || digdir.posts().len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(digdir.posts().len(), 5, "at most 5 attempts per check");
    let ready = env.get_json("/readyz", 200).await;
    assert_eq!(ready["key_rotation"]["failing"], true, "{ready}");
    assert_eq!(ready["key_rotation"]["last_failure"]["status"], "503");
    assert_eq!(ready["status"], "degraded");
    // Tokens never stop.
    env.get_json("/token/admin", 200).await;
    let text = logs.text();
    assert!(
        text.contains(&digdir.api()) && text.contains("status=\"503\""),
        "{text}"
    );
    let metrics = env.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "broker_key_rotation_failures_total{client=\"test-client\",status=\"503\"}"
        )),
        "{metrics}"
    );
    env.app.shutdown().await;
}

#[tokio::test]
async fn five_keys_held_by_digdir_is_an_error_naming_the_limit_and_nothing_is_removed() {
    let logs = LogCapture::start(tracing::Level::WARN);
    let keys = (1..=5)
        .map(|i| foreign_key(&format!("app-{i}"), 200))
        .collect();
    let digdir = FakeDigdir::start(keys).await;
    let env = start(&digdir, "").await;
    until("the error", || logs.text().contains("at most 5")).await;
    assert!(
        digdir.posts().is_empty(),
        "no set of 6 is sent, none removed"
    );
    assert_eq!(digdir.state.keys.lock().unwrap().len(), 5);
    assert!(logs.text().contains("too_many_keys"));
    env.get_json("/token/admin", 200).await;
    env.app.shutdown().await;
}

#[tokio::test]
async fn no_private_member_admin_token_or_password_in_a_debug_log() {
    let logs = LogCapture::start(tracing::Level::DEBUG);
    let digdir = FakeDigdir::start(vec![held_key(3)]).await;
    let env = start(&digdir, "").await;
    until("the renewal", || !digdir.posts().is_empty()).await;
    env.get_json("/readyz", 200).await;
    let text = logs.text();
    let tokens = digdir.state.tokens.lock().unwrap().clone();
    assert!(!tokens.is_empty());
    for token in tokens {
        assert!(
            !text.contains(&token[token.len() - 20..]),
            "admin token leaked"
        );
    }
    let password = std::fs::read_to_string(fixture("business-legacy.password")).unwrap();
    assert!(!text.contains(password.trim()), "password leaked");
    assert!(!text.contains("\"d\":"), "private member leaked");
    assert!(digdir.violations().is_empty(), "{:?}", digdir.violations());
    env.app.shutdown().await;
}

/// A broker with `action: rotate` on a JWKS file holding client-key.pem under KID (no `kid:`).
async fn start_rotating(digdir: &FakeDigdir, dir: &std::path::Path, more: &str) -> TestEnv {
    let path = dir.join("keys.json");
    let jwks = json!({"keys": [crate::credentials::private_jwk("client-key.pem", Some(KID))]});
    std::fs::write(&path, jwks.to_string()).unwrap();
    let mp = FakeMaskinporten::start().await;
    mp.register_client(SS_CLIENT, &[]);
    let altinn = FakeAltinn::start(&mp).await;
    let credentials = format!("key:\n  path: {}\n", path.display());
    let extra = rotation_yaml(digdir, &format!("  action: rotate\n{more}"));
    let yaml = config_yaml_with(&mp, &altinn, &credentials, &extra);
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    TestEnv::start_settings(mp, altinn, settings).await
}

fn file_kids(dir: &std::path::Path) -> Vec<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("keys.json")).unwrap()).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn rotate_uploads_switches_after_propagation_and_retires_with_no_failed_token_call() {
    let dir = tempfile::tempdir().unwrap();
    let digdir = FakeDigdir::start(vec![held_key(3), foreign_key("another-app", 200)]).await;
    let env = start_rotating(
        &digdir,
        dir.path(),
        "  propagation: 1s\n  retire_after: 2s\n  check_every: 1h\n",
    )
    .await;
    let orgs = valid_orgs(400);
    let mut orgs = orgs.iter();
    let mut published: Option<(String, std::time::Instant)> = None;
    let mut added = false;
    let mut served = 0;
    // Bounded: 20 s. Tokens for fresh orgs all along: each is a new grant.
    for _ in 0..200 {
        let org = orgs.next().unwrap();
        let r = env.get(&format!("/token/altinn?org={org}")).await;
        assert_eq!(r.status(), 200, "a token call failed during the rotation");
        served += 1;
        // The fake Maskinporten learns a key 300 ms after Digdir got it (propagation 1 s).
        if published.is_none()
            && let Some(new) = digdir.posts().first().and_then(|p| {
                p["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|k| k["kid"] != KID && k["kid"] != "another-app")
                    .cloned()
            })
        {
            published = Some((
                new["kid"].as_str().unwrap().to_owned(),
                std::time::Instant::now(),
            ));
        }
        if let Some((kid, at)) = &published
            && !added
            && at.elapsed() > Duration::from_millis(300)
        {
            let public = maskinporten_broker::public_key_from_jwk(
                &digdir
                    .state
                    .keys
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|k| k["kid"] == kid.as_str())
                    .unwrap()
                    .clone(),
            )
            .unwrap();
            env.mp.add_key(kid, public);
            added = true;
        }
        if file_kids(dir.path()).len() == 1 && published.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (new, _) = published.expect("a new key was uploaded");
    assert_eq!(
        file_kids(dir.path()),
        std::slice::from_ref(&new),
        "the old key left the file"
    );
    let set: Vec<String> = digdir
        .state
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        set,
        ["another-app".to_owned(), new.clone()],
        "the old key left Digdir; the foreign key stayed"
    );
    // The first upload held old + new + foreign.
    assert_eq!(digdir.posts()[0]["keys"].as_array().unwrap().len(), 3);
    assert_clean_switch(&env, &digdir, KID, &new);
    // Never a grant with the new kid before the fake learnt it (no violation above), and the
    // file is 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(served > 10);
    env.app.shutdown().await;
}

/// No grant refused, nothing wrong sent to Digdir, and grants signed with `old`, then `new`.
pub(crate) fn assert_clean_switch(env: &TestEnv, digdir: &FakeDigdir, old: &str, new: &str) {
    assert!(
        env.mp.violations().is_empty(),
        "refused grants: {:?}",
        env.mp.violations()
    );
    assert!(digdir.violations().is_empty(), "{:?}", digdir.violations());
    let grants = env.mp.grants();
    let signed = |kid: &str| {
        grants
            .iter()
            .filter(|g| g.header.kid.as_deref() == Some(kid))
            .count()
    };
    assert!(signed(old) > 0 && signed(new) > 0, "old then new signed");
}

#[tokio::test]
async fn a_read_only_key_store_refuses_rotate_at_start_with_one_line() {
    let digdir = FakeDigdir::start(vec![held_key(3)]).await;
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    // A key from an environment variable (BROKER__KEY__JWK) cannot be rewritten.
    let jwk = crate::credentials::private_jwk("client-key.pem", Some(KID));
    let credentials = format!("key:\n  jwk: '{jwk}'\n");
    let yaml = config_yaml_with(
        &mp,
        &altinn,
        "",
        &format!(
            "{credentials}{}",
            rotation_yaml(&digdir, "  action: rotate\n")
        ),
    );
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match maskinporten_broker::app::App::spawn(settings, listener).await {
        Ok(_) => panic!("rotate on an inline PEM must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with("key_rotation.action: rotate needs key.path") && err.contains("renew"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
}

#[tokio::test]
async fn two_replicas_sharing_one_key_file_make_one_new_key_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let digdir = FakeDigdir::start(vec![held_key(3)]).await;
    let more = "  propagation: 1s\n  retire_after: 1s\n  check_every: 1h\n";
    let a = start_rotating(&digdir, dir.path(), more).await;
    // The second replica reads the same file (not rewritten: it already exists).
    let path = dir.path().join("keys.json");
    let mp = FakeMaskinporten::start().await;
    mp.register_client(SS_CLIENT, &[]);
    let altinn = FakeAltinn::start(&mp).await;
    let yaml = config_yaml_with(
        &mp,
        &altinn,
        &format!("key:\n  path: {}\n", path.display()),
        &rotation_yaml(&digdir, &format!("  action: rotate\n{more}")),
    );
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    let b = TestEnv::start_settings(mp, altinn, settings).await;
    until("the rotation to finish", || {
        file_kids(dir.path()).len() == 1 && file_kids(dir.path())[0] != KID
    })
    .await;
    let new: std::collections::BTreeSet<String> = digdir
        .posts()
        .iter()
        .flat_map(|p| p["keys"].as_array().unwrap().clone())
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .filter(|k| k != KID)
        .collect();
    assert_eq!(
        new.len(),
        1,
        "one new key between the two replicas: {new:?}"
    );
    assert!(digdir.violations().is_empty(), "{:?}", digdir.violations());
    a.app.shutdown().await;
    b.app.shutdown().await;
}

/// Wait (bounded: 30 s) until `done`.
async fn until_long(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn sigkill_right_after_the_upload_resumes_with_the_uploaded_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let jwks = json!({"keys": [crate::credentials::private_jwk("client-key.pem", Some(KID))]});
    std::fs::write(&path, jwks.to_string()).unwrap();
    let digdir = FakeDigdir::start(vec![held_key(3)]).await;
    let mp = FakeMaskinporten::start().await;
    mp.register_client(SS_CLIENT, &[]);
    let altinn = FakeAltinn::start(&mp).await;
    let yaml = |listen: &str, timing: &str| {
        config_yaml_with(
            &mp,
            &altinn,
            &format!("key:\n  path: {}\n", path.display()),
            &format!(
                "{listen}{}",
                rotation_yaml(&digdir, &format!("  action: rotate\n{timing}"))
            ),
        )
    };
    // A long propagation: the broker is waiting when it is killed.
    let mut first =
        ServedBinary::start_yaml(|l| yaml(l, "  propagation: 1h\n  check_every: 1h\n")).await;
    until_long("the upload", || !digdir.posts().is_empty()).await;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    let uploaded: Vec<String> = file_kids(dir.path());
    assert_eq!(
        uploaded.len(),
        2,
        "the new key was durable before the upload"
    );
    let new = uploaded[1].clone();
    let public =
        maskinporten_broker::public_key_from_jwk(&digdir.state.keys.lock().unwrap()[1].clone())
            .unwrap();
    mp.add_key(&new, public);
    // Restarted: no second key is made; the uploaded one is switched to and the old retired.
    let second = ServedBinary::start_yaml(|l| {
        yaml(
            l,
            "  propagation: 1s\n  retire_after: 1s\n  check_every: 1h\n",
        )
    })
    .await;
    until_long("the old key's retirement", || {
        file_kids(dir.path()) == [new.clone()]
    })
    .await;
    let posted: std::collections::BTreeSet<String> = digdir
        .posts()
        .iter()
        .flat_map(|p| p["keys"].as_array().unwrap().clone())
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        posted,
        [KID.to_owned(), new.clone()].into(),
        "no key lost or orphaned"
    );
    let token = reqwest::get(second.url("/token/admin")).await.unwrap();
    assert_eq!(token.status(), 200);
    let last = mp.grants().last().unwrap().header.kid.clone();
    assert_eq!(
        last.as_deref(),
        Some(new.as_str()),
        "signed with the uploaded key"
    );
    assert!(mp.violations().is_empty(), "{:?}", mp.violations());
}

#[tokio::test]
async fn in_env_local_the_simulator_serves_the_self_service_api() {
    let yaml = "env: local\nkey_rotation:\n  self_service:\n    client_id: local-self-service\n  check_every: 1h\n";
    let settings = maskinporten_broker::config::Settings::from_yaml(yaml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = maskinporten_broker::app::App::spawn(settings, listener)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut ready = Value::Null;
    for _ in 0..200 {
        ready = fetch_json(&http, &format!("http://{}/readyz", app.addr)).await;
        if ready["key_rotation"]["last_check"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready["key_rotation"]["failing"], false, "{ready}");
    let key = &ready["keys"][0];
    assert_eq!(key["in_use"], true, "{ready}");
    assert!(key["days_left"].as_i64().unwrap() >= 364, "{ready}");
    app.shutdown().await;
}

#[tokio::test]
async fn an_mp_121_refusal_names_the_expired_kid_and_how_to_renew_it() {
    let env = TestEnv::start("").await;
    env.mp.always(Reply::Refuse(
        "invalid_client",
        "Invalid assertion. Client authentication failed. Expired key (MP-121)",
    ));
    let p = env.problem("/token/admin", 502).await;
    assert_eq!(p["mp_code"], "MP-121");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("the expired key is kid {KID}")),
        "{detail}"
    );
    assert!(p["hint"].as_str().unwrap().contains("keys renew"), "{p}");
}

/// The binary's `keys` command with `config`; (exit code, stdout, stderr).
pub(crate) fn keys_command(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("keys")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn keys_status_and_renew_on_the_command_line() {
    let digdir = FakeDigdir::start(vec![held_key(20), foreign_key("another-app", 200)]).await;
    let mp = FakeMaskinporten::start().await;
    mp.register_client(SS_CLIENT, &[]);
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        config_yaml(&mp, &altinn, &rotation_yaml(&digdir, "")),
    )
    .unwrap();
    let status = tokio::task::spawn_blocking({
        let config = config.clone();
        move || keys_command(&config, &["status", "--json"])
    })
    .await
    .unwrap();
    assert_eq!(status.0, 0, "{}", status.2);
    let body: Value = serde_json::from_str(&status.1).unwrap();
    let ours = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == KID)
        .unwrap()
        .clone();
    assert_eq!(ours["client"], CLIENT_ID);
    assert_eq!(ours["in_use"], true);
    assert_eq!(ours["days_left"], 19);
    assert!(ours["kept"].as_str().unwrap().starts_with("key.path "));
    assert!(digdir.posts().is_empty(), "status changes nothing");
    let renew = tokio::task::spawn_blocking(move || keys_command(&config, &["renew"]))
        .await
        .unwrap();
    assert_eq!(renew.0, 0, "{}", renew.2);
    assert!(renew.1.contains(&format!("renewed: {KID}")), "{}", renew.1);
    assert_eq!(digdir.posts().len(), 1);
    assert_eq!(digdir.posts()[0]["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_answer_past_64_kib_is_refused_and_tokens_still_flow() {
    // 40 keys of about 2 KiB each: a set Digdir would never send.
    let huge: Vec<Value> = (0..40)
        .map(|i| {
            let mut k = foreign_key(&format!("k{i}"), 200);
            k["n"] = json!("A".repeat(2048));
            k
        })
        .collect();
    let digdir = FakeDigdir::start(huge).await;
    let env = start(&digdir, "  check_every: 1h\n").await;
    let mut ready = Value::Null;
    for _ in 0..100 {
        ready = env.get_json("/readyz", 200).await;
        if ready["key_rotation"]["last_failure"].is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ready["key_rotation"]["last_failure"]["status"], "invalid",
        "{ready}"
    );
    assert!(
        ready["key_rotation"]["last_failure"]["error"]
            .as_str()
            .unwrap()
            .contains("larger than 65536 bytes")
    );
    assert!(digdir.posts().is_empty());
    env.get_json("/token/admin", 200).await;
    env.app.shutdown().await;
}

//! `broker_signer_requests_total` counts the probe signature a key outside the process must pass
//! (at start and at every reload) under `purpose="probe"`, so an operator sees a failed probe, and
//! the grants' signatures under `purpose="grant"`. The signer is a strict fake Vault transit
//! engine of this test's own on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use maskinporten_broker::config::Settings;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde_json::{Value, json};

use crate::support::*;

const VAULT_TOKEN: &str = "s.probe-test-token";

/// A transit engine holding the fixture client key. `lying`: it publishes another public key
/// than the one it signs with, so the probe does not verify.
struct FakeVault {
    addr: std::net::SocketAddr,
    lying: Arc<AtomicBool>,
    signs: Arc<AtomicUsize>,
    violations: Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct VaultState {
    lying: Arc<AtomicBool>,
    signs: Arc<AtomicUsize>,
    violations: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeVault {
    async fn start() -> Self {
        let state = VaultState {
            lying: Arc::default(),
            signs: Arc::default(),
            violations: Arc::default(),
        };
        let router = Router::new()
            .route("/v1/transit/keys/{name}", get(public_key))
            .route("/v1/transit/sign/{name}", post(sign))
            .with_state(state.clone());
        FakeVault {
            addr: serve(router).await,
            lying: state.lying,
            signs: state.signs,
            violations: state.violations,
        }
    }
}

/// Whether the request carries the test's Vault token and names key `mp` (recorded when not).
fn checked(state: &VaultState, headers: &HeaderMap, name: &str) -> bool {
    let token = headers.get("x-vault-token").and_then(|v| v.to_str().ok());
    if token != Some(VAULT_TOKEN) || name != "mp" {
        state
            .violations
            .lock()
            .unwrap()
            .push(format!("token {token:?}, key {name}"));
        return false;
    }
    true
}

fn private_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(fixture("client-key.pem")).unwrap())
        .unwrap()
}

async fn public_key(
    State(state): State<VaultState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !checked(&state, &headers, &name) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let pem = if state.lying.load(Ordering::SeqCst) {
        std::fs::read_to_string(fixture("other-key.pub.pem")).unwrap()
    } else {
        rsa::RsaPublicKey::from(&private_key())
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
    };
    Json(json!({"data": {"type": "rsa-2048", "latest_version": 1, "keys": {"1": {"public_key": pem}}}}))
        .into_response()
}

async fn sign(
    State(state): State<VaultState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !checked(&state, &headers, &name) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let asked = (
        &body["prehashed"],
        &body["signature_algorithm"],
        &body["hash_algorithm"],
        &body["key_version"],
    );
    if asked
        != (
            &json!(true),
            &json!("pkcs1v15"),
            &json!("sha2-256"),
            &json!(1),
        )
    {
        state.violations.lock().unwrap().push(format!("{body}"));
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Some(digest) = body["input"].as_str().and_then(|i| STANDARD.decode(i).ok()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    state.signs.fetch_add(1, Ordering::SeqCst);
    let signature = private_key()
        .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
        .unwrap();
    Json(json!({"data": {"signature": format!("vault:v1:{}", STANDARD.encode(signature))}}))
        .into_response()
}

/// The value of `broker_signer_requests_total{signer="vault_transit",purpose,outcome}` (0 when
/// absent).
async fn signer_requests(env: &TestEnv, purpose: &str, outcome: &str) -> u64 {
    series_value(
        &env.get("/metrics").await.text().await.unwrap(),
        purpose,
        outcome,
    )
}

fn series_value(metrics: &str, purpose: &str, outcome: &str) -> u64 {
    let series = format!(
        "broker_signer_requests_total{{signer=\"vault_transit\",purpose=\"{purpose}\",outcome=\"{outcome}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_failed_probe_at_reload_is_counted_and_grants_are_counted_apart() {
    let vault = FakeVault::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, VAULT_TOKEN).unwrap();
    let env = TestEnv::start("").await;
    let vault_yaml = config_yaml_with(
        &env.mp,
        &env.altinn,
        &format!(
            "kid: {KID}\nkey:\n  vault_transit:\n    address: http://{}/\n    name: mp\n    token_file: {}\n",
            vault.addr,
            token_file.display()
        ),
        "",
    );
    let settings = Settings::from_yaml(&vault_yaml).unwrap();

    // A Vault that signs with another key than it publishes: the reload is refused, and the
    // failed probe is on /metrics.
    vault.lying.store(true, Ordering::SeqCst);
    let invalid = signer_requests(&env, "probe", "invalid").await;
    let err = env.app.reload(&settings).await.unwrap_err();
    assert!(format!("{:?}", err).contains("probe signature"), "{err:?}");
    assert_eq!(vault.signs.load(Ordering::SeqCst), 1, "one probe signature");
    assert_eq!(
        signer_requests(&env, "probe", "invalid").await,
        invalid + 1,
        "the failed probe is counted"
    );

    // The honest Vault: the probe passes, and a grant signature is the grant's.
    vault.lying.store(false, Ordering::SeqCst);
    env.app.reload(&settings).await.unwrap();
    assert_eq!(vault.signs.load(Ordering::SeqCst), 2, "one more probe");
    assert_eq!(env.get("/token/admin").await.status(), 200);
    assert_eq!(vault.signs.load(Ordering::SeqCst), 3, "and one grant");
    assert!(signer_requests(&env, "grant", "ok").await >= 1);
    assert_eq!(
        signer_requests(&env, "probe", "invalid").await,
        invalid + 1,
        "a probe that verifies is not counted as invalid"
    );
    assert!(
        vault.violations.lock().unwrap().is_empty(),
        "{:?}",
        vault.violations.lock().unwrap()
    );
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
}

#[tokio::test]
async fn the_start_up_probe_is_counted() {
    let vault = FakeVault::start().await;
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, VAULT_TOKEN).unwrap();
    let credentials = format!(
        "kid: {KID}\nkey:\n  vault_transit:\n    address: http://{}/\n    name: mp\n    token_file: {}\n",
        vault.addr,
        token_file.display()
    );
    let mut broker =
        ServedBinary::start_yaml(|listen| config_yaml_with(&mp, &altinn, &credentials, listen))
            .await;
    let metrics: String = reqwest::get(broker.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // A process of its own: the exact count.
    assert_eq!(series_value(&metrics, "probe", "ok"), 1, "{metrics}");
    assert_eq!(series_value(&metrics, "grant", "ok"), 0, "{metrics}");
    assert_eq!(vault.signs.load(Ordering::SeqCst), 1);
    broker.child.start_kill().unwrap();
    let _ = broker.child.wait().await;
}

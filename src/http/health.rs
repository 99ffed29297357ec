//! `/healthz` (the process answers) and `/readyz` (config and key are loaded, tokens can be made).
//!
//! `/readyz` answers 503 (`status: draining`) once shutdown has begun (SIGTERM), while the broker
//! still serves during `server.shutdown_delay`. Until then it answers 200 whenever the broker serves: config and key are loaded before it listens,
//! and a failing upstream must not make an orchestrator kill a broker that still serves cached
//! tokens. Each Maskinporten client shows its id, kid and issuer (never a key). Upstream trouble shows in the body: `status: degraded` and, per upstream, the failures
//! since the last success and the last error. It never asks for an API key, but with `clients:`
//! configured only an authenticated caller sees which organisations have cached tokens.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use super::auth::Caller;
use super::problem::Problem;
use super::state::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    params(("X-Api-Key" = Option<String>, Header, description = "With clients configured: an API key (or Authorization: Bearer) shows the cached tokens that client may use")),
    responses((status = 200, description = "Config and key are loaded; upstream state, and the cached tokens: counted per profile for everyone, listed with their organisations when no clients are configured or for an authenticated client (those it may use)", body = Object),
        (status = 503, description = "Shutting down (after SIGTERM): still serving during `server.shutdown_delay`, but send no new callers here; `status: draining`", body = Object)))]
pub async fn readyz(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
) -> (StatusCode, Json<serde_json::Value>) {
    let generation = state.broker().generation();
    // `None`: clients are configured and this caller presented no valid key.
    let caller = caller.ok();
    let snapshot = state.tokens.snapshot();
    let mut per_profile = BTreeMap::<&str, usize>::new();
    for (key, _) in &snapshot {
        *per_profile.entry(key.profile.as_str()).or_default() += 1;
    }
    let upstreams = state.broker().health();
    let (keys, key_rotation) = state.keys.json(std::time::SystemTime::now());
    let degraded = upstreams.values().any(|h| h.consecutive_failures > 0)
        || state.token_files.failing()
        || state.keys.failure().is_some();
    let draining = state.is_draining();
    let status = match (draining, degraded) {
        (true, _) => "draining",
        (false, true) => "degraded",
        (false, false) => "ready",
    };
    let mut body = json!({
        "status": status,
        "upstreams": upstreams,
        "env": state.env.to_string(),
        "client_id": generation.fetcher.client_id,
        "kid": generation.fetcher.key.kid(),
        "issuer": generation.fetcher.endpoints.issuer,
        "altinn_platform": generation.fetcher.endpoints.altinn_platform.as_str(),
        "maskinporten_clients": super::token::maskinporten_clients(&generation),
        "cached_token_count": snapshot.len(),
        "cached_tokens_per_profile": per_profile,
        "token_files": state.token_files.report(),
        "keys": keys,
    });
    if let Some(rotation) = key_rotation {
        body["key_rotation"] = rotation;
    }
    // A key in an HSM or Vault: where it is (its state is `upstreams.signer`).
    if let Some(location) = generation.fetcher.key.location() {
        body["signer"] = location.into();
    }
    // Organisations are listed only to whom may ask for their tokens: everyone on an open broker,
    // an authenticated client for the profiles and organisations it may use.
    if let Some(caller) = caller {
        let listed: Vec<_> = snapshot
            .iter()
            .filter(|(key, _)| caller.authorize(key).is_ok())
            .map(|(key, left)| {
                json!({
                    "profile": key.profile.as_str(),
                    "maskinporten_client": key.client.as_str(),
                    "org": key.org.as_ref().map(|o| o.as_str()),
                    "expires_in": left.as_secs(),
                })
            })
            .collect();
        body["cached_tokens"] = listed.into();
    }
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body))
}

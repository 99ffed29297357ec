//! `/healthz` (the process answers) and `/readyz` (config and key are loaded, tokens can be made).
//!
//! `/readyz` answers 200 whenever the broker serves: config and key are loaded before it listens,
//! and a failing upstream must not make an orchestrator kill a broker that still serves cached
//! tokens. Upstream trouble shows in the body: `status: degraded` and, per upstream, the failures
//! since the last success and the last error.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use super::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Config and key are loaded; lists the cached tokens", body = Object)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let generation = state.broker().generation();
    let cached: Vec<_> = state
        .tokens
        .snapshot()
        .into_iter()
        .map(|(key, left)| {
            json!({
                "profile": key.profile.as_str(),
                "org": key.org.as_ref().map(|o| o.as_str()),
                "expires_in": left.as_secs(),
            })
        })
        .collect();
    let upstreams = state.broker().health();
    let degraded =
        upstreams.values().any(|h| h.consecutive_failures > 0) || state.token_files.failing();
    (
        StatusCode::OK,
        Json(json!({
            "status": if degraded { "degraded" } else { "ready" },
            "upstreams": upstreams,
            "env": state.env.to_string(),
            "client_id": generation.fetcher.client_id,
            "kid": generation.fetcher.key.kid(),
            "issuer": generation.fetcher.endpoints.issuer,
            "cached_tokens": cached,
            "token_files": state.token_files.report(),
        })),
    )
}

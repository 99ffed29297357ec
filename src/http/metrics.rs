//! `GET /metrics`: the Prometheus text exposition, for a scraper on the same network.
//!
//! Open like `/readyz`: it shows profile names, org numbers of cached tokens and counts, never a
//! token, grant or key (see `crate::telemetry::meters`).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::state::AppState;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters and histograms of the process, and how long each cached token has left.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain; version=0.0.4"),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let cached = state.tokens.snapshot();
    let mut text = crate::telemetry::meters::render(
        &state.metrics,
        cached.iter().map(|(key, left)| {
            let org = key.org.as_ref().map_or("", |o| o.as_str());
            (key.profile.as_str(), org, *left)
        }),
    );
    let key = &state.broker().generation().fetcher.key;
    let expiry = key.not_after().map(|at| {
        let now = std::time::SystemTime::now();
        let left = match at.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        (key.kid().unwrap_or_default(), left)
    });
    crate::telemetry::meters::render_key_expiry(&mut text, expiry);
    crate::telemetry::meters::render_identity_cache(&mut text, state.identity.cached_tokens());
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        text,
    )
        .into_response()
}

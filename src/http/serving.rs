//! The step every token route shares: the token for a cache key, from the cache's index or a
//! fetch the caller waits for (at most [`MAX_CALLER_WAIT`]), the audit line of each token handed
//! out, and the answer's two shapes (JSON or the bare token). Never the token in a log line.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use axum::response::Response;

use crate::policy::profile::Profile;
use crate::tokens::cache::{CacheKey, Outcome};
use crate::tokens::token::{Token, rfc3339};

use super::auth::Caller;
use super::bodies;
use super::problem::ApiError;
use super::state::AppState;

/// The longest a caller waits for an upstream before getting a 504 (retries included).
pub const MAX_CALLER_WAIT: Duration = Duration::from_secs(20);

/// Whether the caller asked for the bare token (`Accept: text/plain`).
fn wants_text(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("text/plain") && !accept.contains("application/json")
}

/// The token for `key` the caller is authorized for: from the cache, or fetched and waited for
/// (at most [`MAX_CALLER_WAIT`]); counted and logged without the token.
pub(super) async fn token_for(
    state: &AppState,
    caller: &Caller,
    key: &CacheKey,
) -> Result<Arc<Token>, ApiError> {
    match cached(state, caller, key, state.broker().clock().now()) {
        Some(token) => Ok(token),
        None => Box::pin(fetched(state, caller, key)).await,
    }
}

/// The cache-hit path of [`token_for`], which never waits: a token servable at `now` from the
/// cache's index, counted and logged.
pub(super) fn cached(
    state: &AppState,
    caller: &Caller,
    key: &CacheKey,
    now: SystemTime,
) -> Option<Arc<Token>> {
    let token = state.tokens.peek(key, now)?;
    crate::telemetry::meters::cache_lookup(true);
    served(caller, key, &token, Outcome::Hit);
    Some(token)
}

/// The rest of [`token_for`]: the cache's full lookup, and a fetch if it has no servable token.
/// A cache hit needs no timer and no budget; only a fetch is paid for and bounded in time.
pub(super) async fn fetched(
    state: &AppState,
    caller: &Caller,
    key: &CacheKey,
) -> Result<Arc<Token>, ApiError> {
    let (token, outcome) = match state.tokens.get_servable(key).await {
        Some(token) => (token, Outcome::Hit),
        None => tokio::time::timeout(MAX_CALLER_WAIT, state.tokens.get(key, caller.budget()))
            .await
            .map_err(|_| ApiError::WaitedTooLong(MAX_CALLER_WAIT))??,
    };
    crate::telemetry::meters::cache_lookup(outcome == Outcome::Hit);
    served(caller, key, &token, outcome);
    Ok(token)
}

/// The audit line of a token handed out: at info once per caller and token (so once per token
/// lifetime per client and key, not per hit), at debug for every request. Never the token.
pub(super) fn served(caller: &Caller, key: &CacheKey, token: &Token, outcome: Outcome) {
    let (client, org) = (caller.name(), key.org.as_ref().map(|o| o.as_str()));
    let principal = caller.principal();
    let scope = key.on_demand.as_ref().map(tracing::field::display);
    // The field values are written only if the line is (the macros check the level first).
    let expires_at = tracing::field::display(Rfc3339(token.expires_at));
    // Once per client and principal: each workload a subject pattern admits is named once.
    let first = match principal {
        "-" | "api_key" => token.served.first_for(client),
        principal => token.served.first_for(principal),
    };
    if first {
        tracing::info!(client, principal, profile = %key.profile, org, scope, cache = outcome.as_str(), expires_at, fingerprint = %token.value.fingerprint(), "token served");
    } else {
        tracing::debug!(client, principal, profile = %key.profile, org, scope, cache = outcome.as_str(), expires_at, "token served");
    }
}

/// A time as RFC 3339, formatted only when displayed.
struct Rfc3339(SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&rfc3339(self.0))
    }
}

/// The answer of `/token/{profile}` and `GET /token?scope=`: JSON (shared per token and second),
/// or the bare token for `Accept: text/plain`.
pub(super) fn answer(
    token: &Token,
    key: &CacheKey,
    profile: &Profile,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Response, ApiError> {
    let (content_type, body) = if wants_text(headers) {
        let text = Bytes::copy_from_slice(token.value.expose().as_bytes());
        ("text/plain; charset=utf-8", text)
    } else {
        let json = bodies::json(token, key, profile, now).map_err(bodies::unwritable)?;
        ("application/json", json)
    };
    Ok(bodies::no_store(content_type, body))
}

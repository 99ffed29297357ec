//! `POST /api/v1/introspect`: nais/texas's introspection, for APIs that receive Maskinporten or
//! Altinn tokens and want them checked (src/introspection.rs does the checking).
//!
//! JSON or a form with `{identity_provider, token}`; always 200 with `{"active": ...}` for a
//! readable request, 400 `invalid_request` for a bad body. With `clients:` configured, only
//! clients with `introspect: true` may call it (401 `invalid_client`, 403 `unauthorized_client`).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Caller;
use super::problem::Problem;
use super::state::AppState;
use super::texas::{TexasError, parse_body, texas_error};

/// A texas introspection request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectRequest {
    /// `maskinporten` or `altinn`.
    pub identity_provider: String,
    /// The token to check.
    pub token: String,
}

/// Whether a token is valid, texas style.
#[utoipa::path(
    post,
    path = "/api/v1/introspect",
    tag = "texas",
    request_body(content(
        (IntrospectRequest = "application/json"),
        (IntrospectRequest = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "{\"active\": true, ...the token's claims} when the token verifies against the provider's keys and passes introspection.audience/scopes; else {\"active\": false, \"error\": \"...\"} with texas's error strings", body = Object),
        (status = 400, description = "invalid_request: the body is not JSON or a form with identity_provider and token", body = TexasError),
        (status = 401, description = "invalid_client: with clients configured, no API key, token or certificate identifies the caller", body = TexasError),
        (status = 403, description = "unauthorized_client: the caller's client lacks introspect: true", body = TexasError),
        (status = 413, description = "invalid_request: the body is over 16 KiB", body = TexasError),
    )
)]
pub async fn introspect(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Response {
    let allowed = caller.and_then(|caller| match caller.client() {
        Some(client) if !client.introspect => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!(
                "client {:?} may not introspect tokens: give it introspect: true in clients",
                client.name
            ),
        )),
        _ => Ok(()),
    });
    if let Err(problem) = allowed {
        return texas_error(problem);
    }
    let (parts, body) = request.into_parts();
    let asked: IntrospectRequest = match parse_body(&parts.headers, body).await {
        Ok(asked) => asked,
        Err(e) => return texas_error(e.problem()),
    };
    let answer = state
        .introspection
        .load_full()
        .introspect(&asked.identity_provider, &asked.token)
        .await;
    Json(answer).into_response()
}

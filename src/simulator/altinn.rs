//! The simulated Altinn token exchange: a Maskinporten access token in, an Altinn token out.
//!
//! Only tokens this simulator's Maskinporten issued and that have not expired are exchanged. The
//! Altinn token always lives 30 minutes, whatever the Maskinporten token's lifetime, and is served
//! as raw text or, with `Accept: application/json`, as a JSON string.
//!
//! It must never say why it refuses: like Altinn, every refusal is a 401 with an empty body (the
//! reason goes to the trace only).
//!
//! `GET /storage/api/v1/whoami` is a small Altinn-like API for trying the broker's egress proxy: it
//! accepts only an Altinn token this simulator issued (signature, issuer, `exp`) and says who
//! called: client, scopes, organisation and system user.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Value, json};

use super::{World, now_unix};

/// Altinn tokens expire this long after issue.
const ALTINN_TOKEN_LIFETIME: i64 = 30 * 60;

/// Why an exchange is refused; all of them are the same empty 401 on the wire.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExchangeError {
    #[error("no Authorization: Bearer header")]
    NoBearer,
    #[error("the token does not verify: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token has expired")]
    Expired,
    #[error("the simulator could not sign the Altinn token")]
    Signing(jsonwebtoken::errors::Error),
}

impl IntoResponse for ExchangeError {
    fn into_response(self) -> Response {
        match self {
            ExchangeError::Signing(e) => {
                tracing::warn!(error = %e, "simulator could not sign an Altinn token");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
            refusal => {
                tracing::debug!(reason = %refusal, "simulator refused a token exchange");
                StatusCode::UNAUTHORIZED.into_response()
            }
        }
    }
}

/// `GET /authentication/api/v1/exchange/maskinporten`.
pub(super) async fn exchange(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
) -> Result<Response, ExchangeError> {
    let token = bearer(&headers).ok_or(ExchangeError::NoBearer)?;
    let maskinporten = verify_maskinporten_token(&world, token)?;
    let altinn = world
        .sign(&altinn_claims(&world, &maskinporten))
        .map_err(ExchangeError::Signing)?;

    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    Ok(if wants_json {
        Json(altinn).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            altinn,
        )
            .into_response()
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The claims of a Maskinporten token signed by this simulator, for this issuer, not expired.
fn verify_maskinporten_token(world: &World, token: &str) -> Result<Value, ExchangeError> {
    verify_own_token(world, token, &world.issuer)
}

/// The claims of a token signed by this simulator with `issuer`, not expired.
fn verify_own_token(world: &World, token: &str, issuer: &str) -> Result<Value, ExchangeError> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.required_spec_claims = HashSet::from(["exp".to_owned(), "iss".to_owned()]);
    let claims = jsonwebtoken::decode::<Value>(token, &world.decoding, &validation)?.claims;
    // jsonwebtoken still accepts a token in its `exp` second; Altinn does not.
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > now_unix() => Ok(claims),
        _ => Err(ExchangeError::Expired),
    }
}

fn altinn_claims(world: &World, maskinporten: &Value) -> Value {
    let now = now_unix();
    let mut claims = json!({
        "iss": altinn_issuer(world),
        "iat": now,
        "nbf": now,
        "exp": now + ALTINN_TOKEN_LIFETIME,
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": maskinporten.get("scope").cloned().unwrap_or(Value::Null),
        "client_id": maskinporten.get("client_id").cloned().unwrap_or(Value::Null),
        "urn:altinn:authenticatemethod": "maskinporten",
        "urn:altinn:authlevel": 3,
    });
    if let Some(consumer) = maskinporten.get("consumer") {
        claims["consumer"] = consumer.clone();
        if let Some(org) = consumer
            .get("ID")
            .and_then(Value::as_str)
            .and_then(|id| id.strip_prefix("0192:"))
        {
            claims["urn:altinn:orgNumber"] = json!(org);
        }
    }
    if let Some(details) = maskinporten.get("authorization_details") {
        claims["authorization_details"] = details.clone();
    }
    claims
}

/// The issuer of the simulator's Altinn tokens.
fn altinn_issuer(world: &World) -> String {
    world
        .base_url
        .join("authentication/api/v1/openid/")
        .map(String::from)
        .unwrap_or_default()
}

/// `GET /authentication/api/v1/openid/.well-known/openid-configuration/jwks`: the key the Altinn
/// tokens are signed with, with `n` and `e` in standard base64 with padding, as Altinn writes them.
pub(super) async fn jwks(State(world): State<Arc<World>>) -> axum::Json<Value> {
    use base64::Engine;
    let mut doc = world.jwks();
    for key in doc["keys"].as_array_mut().into_iter().flatten() {
        for field in ["n", "e"] {
            let standard = key[field]
                .as_str()
                .and_then(|v| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(v)
                        .ok()
                })
                .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
            if let Some(standard) = standard {
                key[field] = Value::String(standard);
            }
        }
    }
    axum::Json(doc)
}

/// `GET /storage/api/v1/whoami`: who the bearer Altinn token says called, or an empty 401.
pub(super) async fn whoami(State(world): State<Arc<World>>, headers: HeaderMap) -> Response {
    let claims = bearer(&headers)
        .ok_or(ExchangeError::NoBearer)
        .and_then(|token| verify_altinn_token(&world, token));
    match claims {
        Ok(c) => Json(json!({
            "client_id": c.get("client_id"),
            "scope": c.get("scope"),
            "org": c.get("urn:altinn:orgNumber"),
            "system_user_org": c
                .pointer("/authorization_details/0/systemuser_org/ID")
                .and_then(Value::as_str)
                .and_then(|id| id.strip_prefix("0192:")),
            "expires_at": c.get("exp"),
        }))
        .into_response(),
        Err(refusal) => {
            tracing::debug!(reason = %refusal, "simulated Altinn API refused a token");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            )
                .into_response()
        }
    }
}

/// The claims of an Altinn token signed by this simulator, not expired.
fn verify_altinn_token(world: &World, token: &str) -> Result<Value, ExchangeError> {
    verify_own_token(world, token, &altinn_issuer(world))
}

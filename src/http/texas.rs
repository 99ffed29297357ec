//! `POST /api/v1/token`: the token endpoint of nais/texas, so apps written for texas can point
//! `NAIS_TOKEN_ENDPOINT` at the broker and get Maskinporten tokens, and, what texas lacks, the
//! Altinn exchange (`"exchange": "altinn"`) and system users by organisation (`"org"`).
//!
//! Requests are JSON or form-encoded, as texas takes them; answers are texas's
//! `{"access_token","expires_in","token_type"}`, errors texas's `{"error","error_description"}`
//! with texas's statuses (400 `invalid_request` for a bad request, the upstream's status and
//! OAuth error when Maskinporten refuses, 500 `server_error` when it cannot be reached). The same
//! allow-list, clients, cache and fetch rules apply as for `GET /token?scope=`.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Environment;
use crate::policy::on_demand::{OnDemandError, OnDemandRequest};
use crate::policy::org::OrgNumber;
use crate::policy::profile::ON_DEMAND;

use super::auth::Caller;
use super::bodies;
use super::limits::{MAX_BODY_BYTES, too_large};
use super::on_demand::parse_exchange;
use super::problem::{ApiError, Problem};
use super::serving::token_for;
use super::state::AppState;

/// A texas token request, with the broker's extensions `org` and `exchange`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TexasTokenRequest {
    /// Only `maskinporten` (any other is a 400 saying so).
    #[schema(value_type = IdentityProvider)]
    pub identity_provider: String,
    /// The scopes, separated by spaces; no `*`.
    #[schema(pattern = "^[!#-)+-\\[\\]-~]{1,200}( [!#-)+-\\[\\]-~]{1,200}){0,19}$")]
    pub target: String,
    /// The grant's `resource` claim: an absolute https URI without a fragment (RFC 8707).
    #[schema(nullable = false, pattern = "^https://[^\\s#]+$")]
    pub resource: Option<String>,
    /// The system-user form: `[{"type":"urn:altinn:systemuser","systemuser_org":{"authority":"iso6523-actorid-upis","ID":"0192:<orgnr>"}}]`
    /// (a JSON string in a form). Same cache entry as the equivalent `org`.
    #[schema(value_type = Vec<SystemUserDetail>, nullable = false, min_items = 1, max_items = 1)]
    pub authorization_details: Option<Value>,
    /// Fetch a new token even when one is cached (counts against the fetch budget).
    #[schema(nullable = false)]
    pub skip_cache: Option<bool>,
    /// Extension: the system user's organisation number, instead of `authorization_details`.
    #[schema(nullable = false, pattern = "^[0-9]{9}$")]
    pub org: Option<String>,
    /// Extension: `altinn` exchanges the Maskinporten token at Altinn.
    #[schema(value_type = super::on_demand::ExchangeParam, nullable = false)]
    pub exchange: Option<String>,
}

/// [`TexasTokenRequest`] as a form, for the OpenAPI document. A form may also carry
/// `authorization_details` as one field holding the JSON text; no schema can say "JSON text of
/// this shape", so the document leaves it out (use `org` in a form).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TexasTokenForm {
    #[schema(value_type = IdentityProvider)]
    identity_provider: String,
    /// The scopes, separated by spaces; no `*`.
    #[schema(pattern = "^[!#-)+-\\[\\]-~]{1,200}( [!#-)+-\\[\\]-~]{1,200}){0,19}$")]
    target: String,
    #[schema(nullable = false, pattern = "^https://[^\\s#]+$")]
    resource: Option<String>,
    #[schema(nullable = false)]
    skip_cache: Option<bool>,
    #[schema(nullable = false, pattern = "^[0-9]{9}$")]
    org: Option<String>,
    #[schema(value_type = super::on_demand::ExchangeParam, nullable = false)]
    exchange: Option<String>,
}

/// One entry of `authorization_details`, for the OpenAPI document: the system-user form.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SystemUserDetail {
    #[schema(rename = "type", pattern = "^urn:altinn:systemuser$")]
    kind: String,
    systemuser_org: SystemUserOrg,
}

/// The organisation of a system user in `authorization_details`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SystemUserOrg {
    #[schema(pattern = "^iso6523-actorid-upis$")]
    authority: String,
    #[schema(rename = "ID", pattern = "^0192:[0-9]{9}$")]
    id: String,
}

/// The identity providers this endpoint serves, for the OpenAPI document (texas has more).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum IdentityProvider {
    Maskinporten,
}

/// texas's successful answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TexasTokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    pub token_type: &'static str,
}

/// texas's error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TexasError {
    pub error: String,
    pub error_description: String,
}

/// A Maskinporten token, texas style.
#[utoipa::path(
    post,
    path = "/api/v1/token",
    tag = "texas",
    request_body(content(
        (TexasTokenRequest = "application/json"),
        (TexasTokenForm = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "A token with at least cache.min_remaining left", body = TexasTokenResponse),
        (status = 400, description = "invalid_request: bad body, unsupported identity provider, bad org or authorization_details; or Maskinporten's own refusal with its status", body = TexasError),
        (status = 401, description = "invalid_client: API key missing or unknown (when clients are configured)", body = TexasError),
        (status = 403, description = "invalid_scope: a scope outside on_demand.scopes or the client's scopes; unauthorized_client: the client may not use this org or Maskinporten client", body = TexasError),
        (status = 413, description = "invalid_request: the body is over 16 KiB", body = TexasError),
        (status = 429, description = "temporarily_unavailable: no token is cached and the fetch budget is spent (cache.max_fetches_per_second, or the client's own); see Retry-After", body = TexasError),
        (status = 500, description = "server_error: Maskinporten or Altinn unavailable, unreachable, too slow or unusable; see Retry-After", body = TexasError),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Response {
    let response = match serve(&state, caller, request).await {
        Ok(answer) => answer,
        Err(error) => texas_error(error.problem()),
    };
    crate::telemetry::meters::token_request(ON_DEMAND, response.status().as_u16());
    response
}

async fn serve(
    state: &AppState,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = caller?;
    let (parts, body) = request.into_parts();
    let texas: TexasTokenRequest = parse_body(&parts.headers, body).await?;
    let skip_cache = texas.skip_cache.unwrap_or(false);
    let (request, org) = on_demand_request(texas, state.env == Environment::Local)?;
    let (_, key) = state.broker().resolve_on_demand(request, org)?;
    caller.authorize(&key)?;
    if skip_cache {
        state.tokens.refetch(&key, caller.budget()).await?;
    }
    let token = token_for(state, &caller, &key).await?;
    let now = state.broker().clock().now();
    let expires_in = token.remaining(now).as_secs();
    // Every caller of this token in the same second gets the same bytes.
    let body = bodies::shared(&token.served.texas_rendering, expires_in, || {
        serde_json::to_vec(&TexasTokenResponse {
            access_token: token.value.expose().to_owned(),
            expires_in,
            token_type: "Bearer",
        })
    })
    .map_err(bodies::unwritable)?;
    Ok(bodies::no_store("application/json", body))
}

fn bad_request(detail: impl Into<String>) -> ApiError {
    ApiError::BadQuery(detail.into())
}

/// The body as JSON or a form, by its content type, at most [`MAX_BODY_BYTES`].
pub(super) async fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::Problem(too_large()))?;
    if is_media_type(content_type, "application/json") {
        serde_json::from_slice(&bytes)
            .map_err(|e| bad_request(format!("the JSON body is not a request of this route: {e}")))
    } else if is_media_type(content_type, "application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| bad_request(format!("the form is not a request of this route: {e}")))
    } else {
        Err(bad_request(
            "unsupported media type: send application/json or application/x-www-form-urlencoded",
        ))
    }
}

/// Whether a `Content-Type` value is `expected` (lower case): type and subtype compared without
/// regard to case (RFC 9110 section 8.3.1) and exactly, parameters such as `charset` ignored.
/// `application/jsonx` and `application/json-patch+json` are other media types.
fn is_media_type(content_type: &str, expected: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(expected)
}

/// texas's fields as an on-demand request and the system user's organisation.
/// `local`: the broker runs `env: local`.
fn on_demand_request(
    texas: TexasTokenRequest,
    local: bool,
) -> Result<(OnDemandRequest, Option<OrgNumber>), ApiError> {
    if texas.identity_provider != "maskinporten" {
        return Err(bad_request(format!(
            "identity provider {:?} is not supported: this broker serves only maskinporten",
            texas.identity_provider.chars().take(40).collect::<String>()
        )));
    }
    let org = texas
        .org
        .map(|o| o.trim().parse::<OrgNumber>())
        .transpose()?;
    let (detail_org, external_ref) = match texas.authorization_details {
        None | Some(Value::Null) => (None, None),
        Some(details) => system_user(details)?,
    };
    let org = match (org, detail_org) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad_request(
                "org and authorization_details name different organisations",
            ));
        }
        (a, b) => a.or(b),
    };
    let request = OnDemandRequest::new(
        [texas.target.as_str()],
        parse_exchange(texas.exchange.as_deref())?,
        texas.resource,
        None,
        external_ref,
    )
    .and_then(|r| r.in_env(local))
    .map_err(|e| match e {
        OnDemandError::NoScope
        | OnDemandError::TooManyScopes
        | OnDemandError::BadScope(_)
        | OnDemandError::WildcardScope(_) => bad_request(format!("target: {e}")),
        _ => bad_request(e.to_string()),
    })?;
    Ok((request, org))
}

/// The organisation (and `externalRef`) of a system-user `authorization_details`; anything else
/// is refused, as Maskinporten would.
fn system_user(details: Value) -> Result<(Option<OrgNumber>, Option<String>), ApiError> {
    let details = match details {
        Value::String(text) => serde_json::from_str(&text)
            .map_err(|_| bad_request("authorization_details is not JSON"))?,
        other => other,
    };
    let malformed = || {
        bad_request(
            "authorization_details must be [{\"type\":\"urn:altinn:systemuser\",\"systemuser_org\":{\"authority\":\"iso6523-actorid-upis\",\"ID\":\"0192:<organisation number>\"}}]",
        )
    };
    let [detail] = details
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(malformed)?
    else {
        return Err(malformed());
    };
    if detail["type"] != "urn:altinn:systemuser"
        || detail["systemuser_org"]["authority"] != "iso6523-actorid-upis"
    {
        return Err(malformed());
    }
    let id = detail["systemuser_org"]["ID"]
        .as_str()
        .ok_or_else(malformed)?;
    let org = id.strip_prefix("0192:").ok_or_else(malformed)?.parse()?;
    let external_ref = match &detail["externalRef"] {
        Value::Null => None,
        Value::String(r) => Some(r.clone()),
        _ => return Err(malformed()),
    };
    Ok((Some(org), external_ref))
}

/// A problem in texas's error shape and statuses (see the module documentation).
/// tower-http's refusal of a body over [`MAX_BODY_BYTES`] (its Content-Length said so), in
/// texas's error shape like every other answer of this route; other answers pass unchanged.
pub(super) async fn body_too_large(response: Response) -> Response {
    if super::limits::is_bare_413(&response, b"application/json") {
        texas_error(too_large())
    } else {
        response
    }
}

pub(super) fn texas_error(problem: Problem) -> Response {
    let upstream_status = problem.extra.get("upstream_status").and_then(Value::as_u64);
    let upstream_error = problem.extra.get("error").and_then(Value::as_str);
    let (status, error) = match (problem.status, upstream_status, upstream_error) {
        (400, ..) => (StatusCode::BAD_REQUEST, "invalid_request"),
        (413, ..) => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
        (401, ..) => (StatusCode::UNAUTHORIZED, "invalid_client"),
        // A scope outside on_demand.scopes (or the client's scopes): a refusal, documented as
        // 403, in texas's shape with OAuth's error code.
        (403, ..) if problem.kind.ends_with(":scope-not-allowed") => {
            (StatusCode::FORBIDDEN, "invalid_scope")
        }
        (403, ..) => (StatusCode::FORBIDDEN, "unauthorized_client"),
        (429, ..) => (StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable"),
        (502, Some(status @ 400..=499), error) => (
            StatusCode::from_u16(status as u16).unwrap_or(StatusCode::BAD_REQUEST),
            error.unwrap_or("invalid_request"),
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    let mut response = (
        status,
        Json(TexasError {
            error: error.to_owned(),
            error_description: problem.detail.clone(),
        }),
    )
        .into_response();
    if let Some(wait) = problem.retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(texas: TexasTokenRequest) -> Result<(OnDemandRequest, Option<OrgNumber>), ApiError> {
        on_demand_request(texas, false)
    }

    #[test]
    fn media_types_match_without_case_and_exactly() {
        for ok in [
            "application/json",
            "Application/Json",
            " application/json ; charset=utf-8",
        ] {
            assert!(is_media_type(ok, "application/json"), "{ok}");
        }
        for other in [
            "application/jsonx",
            "application/json-patch+json",
            "",
            "application/",
        ] {
            assert!(!is_media_type(other, "application/json"), "{other}");
        }
    }

    fn request(body: Value) -> TexasTokenRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn authorization_details_and_org_are_the_same_request() {
        let details = json!([{"type": "urn:altinn:systemuser",
            "systemuser_org": {"authority": "iso6523-actorid-upis", "ID": "0192:991825827"}}]);
        let a = parse(request(json!({"identity_provider": "maskinporten",
            "target": "a b", "authorization_details": details})))
        .unwrap();
        let b = parse(request(json!({"identity_provider": "maskinporten",
            "target": "b a", "org": "991825827"})))
        .unwrap();
        assert_eq!(a, b);
        let as_text = parse(request(json!({"identity_provider": "maskinporten",
            "target": "a b", "authorization_details": details.to_string()})))
        .unwrap();
        assert_eq!(as_text, b);
    }

    #[test]
    fn refuses_other_providers_and_malformed_details() {
        assert!(
            parse(request(
                json!({"identity_provider": "azuread", "target": "a"})
            ))
            .is_err()
        );
        for details in [
            json!([]),
            json!({"type": "urn:altinn:systemuser"}),
            json!([{"type": "other", "systemuser_org": {"authority": "iso6523-actorid-upis", "ID": "0192:991825827"}}]),
            json!([{"type": "urn:altinn:systemuser", "systemuser_org": {"authority": "iso6523-actorid-upis", "ID": "0192:991825828"}}]),
            json!([{"type": "urn:altinn:systemuser", "systemuser_org": {"authority": "x", "ID": "0192:991825827"}}]),
        ] {
            let r = request(
                json!({"identity_provider": "maskinporten", "target": "a", "authorization_details": details}),
            );
            assert!(parse(r).is_err(), "{details}");
        }
        let both = request(
            json!({"identity_provider": "maskinporten", "target": "a", "org": "974761076",
            "authorization_details": [{"type": "urn:altinn:systemuser", "systemuser_org": {"authority": "iso6523-actorid-upis", "ID": "0192:991825827"}}]}),
        );
        assert!(parse(both).is_err());
    }

    #[test]
    fn problems_take_texas_shapes_and_statuses() {
        /// The status and the texas body (`error`, `error_description` and nothing else).
        fn answered(p: Problem) -> (StatusCode, Value) {
            let r = texas_error(p);
            let status = r.status();
            let body = futures::executor::block_on(axum::body::to_bytes(r.into_body(), 4096))
                .expect("a small body");
            (status, serde_json::from_slice(&body).expect("JSON"))
        }
        let shape =
            |error: &str, detail: &str| json!({"error": error, "error_description": detail});
        let p = Problem::new(StatusCode::BAD_GATEWAY, "upstream-refused", "t", "refused")
            .with("upstream_status", 400)
            .with("error", "invalid_grant");
        assert_eq!(
            answered(p),
            (StatusCode::BAD_REQUEST, shape("invalid_grant", "refused"))
        );
        let p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream-unavailable",
            "t",
            "down",
        );
        assert_eq!(
            answered(p),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                shape("server_error", "down")
            )
        );
        let p = Problem::new(
            StatusCode::FORBIDDEN,
            "scope-not-allowed",
            "t",
            "not listed",
        );
        assert_eq!(
            answered(p),
            (StatusCode::FORBIDDEN, shape("invalid_scope", "not listed"))
        );
        let p = Problem::new(StatusCode::FORBIDDEN, "forbidden", "t", "not your org");
        assert_eq!(
            answered(p),
            (
                StatusCode::FORBIDDEN,
                shape("unauthorized_client", "not your org")
            )
        );
        let p = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "t", "no key");
        assert_eq!(
            answered(p),
            (StatusCode::UNAUTHORIZED, shape("invalid_client", "no key"))
        );
        let p = Problem::new(StatusCode::BAD_REQUEST, "bad-request", "t", "bad body");
        assert_eq!(
            answered(p),
            (
                StatusCode::BAD_REQUEST,
                shape("invalid_request", "bad body")
            )
        );
    }
}

//! `POST /consents`, `GET /consents/{id}`, `GET /token/consent?id=&scope=`: Altinn consent
//! requests and consent tokens for a bank's (or any data consumer's) app.
//!
//! Only API clients with `consent: true` may call them (open when no `clients:` are configured,
//! like the token routes); a consent token's scope must match `consent.scopes` and the client's
//! own `scopes`. Input is checked before any call, and a failure is a 400 that names the field.
//! A fødselsnummer is echoed only masked; it never reaches a log line or a metric label.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::onboarding::consent::{self, Ask, ConsentError, ConsentView, Consents, Right, Session};
use crate::onboarding::flow::Admin;
use crate::policy::consent::{CONSENT_TOKEN, Party};
use crate::tokens::answer::TokenResponse;
use crate::tokens::broker::{ResolveError, SourceError};
use crate::tokens::cache::CacheError;
use crate::upstream::client::UpstreamError;
use crate::upstream::consent::ConsentApiError;
use crate::upstream::fetch::FetchError;

use super::auth::Caller;
use super::limits::MAX_BODY_BYTES;
use super::problem::{ApiError, Problem, upstream_problem};
use super::serving::{answer, token_for};
use super::state::AppState;

/// What `POST /consents` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequestBody {
    /// Your id for the request (a UUID): the same id again answers the same request (200).
    /// Absent: the broker picks one.
    #[schema(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub id: Option<String>,
    /// A fødselsnummer (11 digits, both check digits) or an organisation number (9 digits).
    #[schema(pattern = "^([0-9]{9}|[0-9]{11})$")]
    pub from: String,
    /// The rights asked for: at least one.
    pub resources: Vec<ResourceBody>,
    /// When the consent ends: RFC 3339, or a date (the end of that day, UTC); in the future.
    #[schema(
        pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))?$"
    )]
    pub valid_to: String,
    /// Shown to the person (Norwegian bokmål).
    pub message: Option<String>,
    /// One of consent.redirect_urls; absent: the first of them.
    #[schema(format = "uri", min_length = 1)]
    pub redirect_url: Option<String>,
}

/// One right of a consent request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceBody {
    /// The resource id (the value of urn:altinn:resource).
    #[schema(min_length = 1, max_length = 1000)]
    pub resource: String,
    /// The resource's metadata, e.g. {"inntektsaar": "2025"}.
    pub metadata: Option<BTreeMap<String, String>>,
}

const FORBIDDEN_SCOPE: &str =
    "A scope outside consent.scopes or the client's scopes, or a client without consent: true";

/// Ask a person or an organisation for consent.
#[utoipa::path(
    post,
    path = "/consents",
    tag = "consent",
    request_body(content((ConsentRequestBody = "application/json"))),
    responses(
        (status = 201, description = "A new consent request: send the person its view_uri", body = ConsentView),
        (status = 200, description = "The request with this id existed already", body = ConsentView),
        (status = 400, description = "Bad body: the field member names the field (from, resources, valid_to, message, redirect_url, id)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key's client lacks consent: true", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No consent: section in the config", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Altinn or Maskinporten refused, or answered unusably", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Altinn or Maskinporten unavailable or unreachable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Altinn or Maskinporten did not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Result<Response, Problem> {
    let consents = allowed(&state, caller)?;
    let bytes: Bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            )
        })?;
    let body: ConsentRequestBody = serde_json::from_slice(&bytes).map_err(|e| {
        // serde's message may quote a value (a fødselsnummer): say where, not what.
        bad("body", format!(
            "must be JSON {{\"from\", \"resources\": [{{\"resource\", \"metadata\"?}}], \"valid_to\", \"message\"?, \"redirect_url\"?, \"id\"?}} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let ask = parse_ask(body).map_err(problem)?;
    let now = state.broker().clock().now();
    let (view, created) = session(&state, &consents)?
        .request(&ask, now)
        .await
        .map_err(problem)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

fn parse_ask(body: ConsentRequestBody) -> Result<Ask, ConsentError> {
    let field = |field: &'static str, detail: String| ConsentError::BadRequest { field, detail };
    let id = body
        .id
        .map(|id| uuid::Uuid::parse_str(id.trim()))
        .transpose()
        .map_err(|_| field("id", "must be a UUID".into()))?;
    Ok(Ask {
        id,
        from: Party::parse(&body.from).map_err(|e| field("from", e.to_string()))?,
        rights: body
            .resources
            .into_iter()
            .map(|r| Right {
                resource: r.resource,
                metadata: r.metadata.unwrap_or_default(),
            })
            .collect(),
        valid_to: consent::parse_valid_to(&body.valid_to)?,
        message: body.message,
        redirect_url: body.redirect_url,
    })
}

/// A consent request's state.
#[utoipa::path(
    get,
    path = "/consents/{id}",
    tag = "consent",
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The consent request's id")),
    responses(
        (status = 200, description = "The consent request", body = ConsentView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key's client lacks consent: true", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consent request", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No consent: section in the config", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Altinn or Maskinporten refused, or answered unusably", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Altinn or Maskinporten unavailable or unreachable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Altinn or Maskinporten did not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let consents = allowed(&state, caller)?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| bad("id", "must be a UUID"))?;
    let view = session(&state, &consents)?
        .status(&id)
        .await
        .map_err(problem)?;
    Ok(Json(view).into_response())
}

/// A consent token: a Maskinporten token for a data provider's scope that carries an accepted
/// consent, answered like `/token/{profile}`. Without `id` and `scope` it is the `consent`
/// profile's token, as `/token/{profile}` answers it.
#[utoipa::path(
    get,
    path = "/token/consent",
    tag = "consent",
    params(
        ("id" = String, Query, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The consent's id"),
        ("scope" = String, Query, description = "The data provider's scope: one, matching consent.scopes (and the client's scopes)", pattern = "^[^\\s*]{1,200}$"),
        ("from" = Option<String>, Query, pattern = "^([0-9]{9}|[0-9]{11}|urn:altinn:person:identifier-no:[0-9]{11}|urn:altinn:organization:identifier-no:[0-9]{9})$", description = "Who consented (fødselsnummer, organisation number or their URN); absent: read from Altinn once"),
    ),
    responses(
        (status = 200, description = "A token with at least cache.min_remaining left, never past the consent's validTo", content(
            (TokenResponse = "application/json"),
            (String = "text/plain"),
        )),
        (status = 400, description = "Bad query: the field member names id, scope or from", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = FORBIDDEN_SCOPE, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consent", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The consent is not Accepted (Created, Rejected, Revoked, Deleted or Expired): consent_status says which", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the budget of upstream fetches", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until a fetch fits the budget again"))),
        (status = 500, description = "The grant could not be signed", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No consent: section in the config", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Maskinporten or Altinn refused, or answered unusably", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Maskinporten or Altinn unavailable or unreachable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 504, description = "Maskinporten or Altinn did not answer in time", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again"))),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Response {
    let query = query.unwrap_or_default();
    if query.is_empty() || query.starts_with("org=") {
        // The `consent` profile itself (the CLI in env: local asks for it so).
        return super::token::get_token(State(state), request).await;
    }
    let response = serve(&state, caller, &query, request.headers())
        .await
        .unwrap_or_else(IntoResponse::into_response);
    crate::telemetry::meters::token_request(CONSENT_TOKEN, response.status().as_u16());
    response
}

async fn serve(
    state: &AppState,
    caller: Result<Caller, Problem>,
    query: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Response, Problem> {
    let caller = caller?;
    let consents = allowed_for(state, &caller)?;
    let (id, scope, from) = parse_query(query).map_err(problem)?;
    // Every permission before any call.
    let settings = &consents.settings;
    if !settings.scopes.allows(&scope) {
        return Err(ApiError::Resolve(ResolveError::ConsentScopeNotAllowed { scope }).problem());
    }
    if let Some(client) = caller.client()
        && !client.may_use_scope(&scope)
    {
        return Err(forbidden(format!(
            "client {:?} may not ask for scope {scope:?}: its scopes in the config do not list it",
            client.name
        ))
        .with("scope", scope));
    }
    let session = session(state, &consents)?;
    let now = state.broker().clock().now();
    let consent = session
        .token_for(&consents, id, scope, from, now)
        .await
        .map_err(problem)?;
    let generation = state.broker().generation();
    let (profile, key) = generation
        .resolve_consent(consent, &settings.profile, &settings.scopes)
        .map_err(|e| ApiError::Resolve(e).problem())?;
    caller.authorize(&key)?;
    match token_for(state, &caller, &key).await {
        Ok(token) => answer(
            &token,
            &key,
            &profile,
            headers,
            state.broker().clock().now(),
        )
        .map_err(|e| e.problem()),
        Err(e) => {
            // Maskinporten refused: when the consent is why, say its status.
            if refused_by_maskinporten(&e)
                && let Some(reason) = session.refusal_reason(&consents, id).await
            {
                return Err(problem(reason));
            }
            Err(e.problem())
        }
    }
}

fn refused_by_maskinporten(e: &ApiError) -> bool {
    matches!(e, ApiError::Cache(CacheError::Source(s))
        if matches!(s.as_ref(), SourceError::Fetch(FetchError::Upstream(UpstreamError::Refused { .. }))))
}

/// `id`, `scope` (one) and `from` (optional), each at most once.
fn parse_query(raw: &str) -> Result<(uuid::Uuid, String, Option<Party>), ConsentError> {
    let field = |field: &'static str, detail: &str| ConsentError::BadRequest {
        field,
        detail: detail.to_owned(),
    };
    let (mut id, mut scope, mut from) = (None, None, None);
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        let (slot, name) = match name.as_ref() {
            "id" => (&mut id, "id"),
            "scope" => (&mut scope, "scope"),
            "from" => (&mut from, "from"),
            _ => {
                return Err(field(
                    "query",
                    "a consent token takes id, scope and from only",
                ));
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(field(name, "is given more than once"));
        }
    }
    let id = id
        .as_deref()
        .map(|i| uuid::Uuid::parse_str(i.trim()))
        .ok_or_else(|| field("id", "is required: the consent's id"))?
        .map_err(|_| field("id", "must be a UUID"))?;
    let scope = scope.map(|s| s.trim().to_owned()).unwrap_or_default();
    if scope.is_empty()
        || scope.len() > crate::policy::on_demand::MAX_SCOPE_LEN
        || scope.contains('*')
        || !scope
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    {
        return Err(field(
            "scope",
            "is required: one data provider's scope, without spaces or '*'",
        ));
    }
    let from =
        from.map(|f| Party::parse(&f))
            .transpose()
            .map_err(|e| ConsentError::BadRequest {
                field: "from",
                detail: e.to_string(),
            })?;
    Ok((id, scope, from))
}

/// `consent:` when this caller may use it.
fn allowed(state: &AppState, caller: Result<Caller, Problem>) -> Result<Arc<Consents>, Problem> {
    allowed_for(state, &caller?)
}

fn allowed_for(state: &AppState, caller: &Caller) -> Result<Arc<Consents>, Problem> {
    if let Some(client) = caller.client()
        && !client.consent
    {
        return Err(forbidden(format!(
            "client {:?} may not ask for consents: set consent: true on it in clients[] of the config",
            client.name
        )));
    }
    state.consent.clone().ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "consent-not-configured",
            "Consent not configured",
            "this broker has no consent: section in its config; add one (docs/consent.md) and restart",
        )
    })
}

fn session<'a>(state: &'a AppState, consents: &'a Consents) -> Result<Session<'a>, Problem> {
    let api = consent::api_for(&state.broker().generation(), &consents.settings)
        .map_err(|e| ApiError::Resolve(e).problem())?;
    Ok(Session {
        consent: &consents.settings,
        api,
        admin: Admin::Cache(&state.tokens),
    })
}

fn forbidden(detail: String) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
}

fn bad(field: &'static str, detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "Bad request",
        format!("{field}: {}", detail.into()),
    )
    .with("field", field)
}

/// A consent failure as a problem.
fn problem(error: ConsentError) -> Problem {
    let detail = crate::telemetry::Chain(&error).to_string();
    match error {
        ConsentError::BadRequest { field, detail } => bad(field, detail),
        ConsentError::NotFound(_) => Problem::new(
            StatusCode::NOT_FOUND,
            "no-such-consent",
            "No such consent",
            detail,
        ),
        ConsentError::NotAccepted { status, .. } => Problem::new(
            StatusCode::CONFLICT,
            "consent-not-accepted",
            "Consent not accepted",
            detail,
        )
        .with("consent_status", status),
        ConsentError::Token(e) => super::onboarding::problem(e),
        ConsentError::Altinn(ConsentApiError::Upstream(u)) => upstream_problem(&u),
        ConsentError::Altinn(ConsentApiError::Refused { status, .. }) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "altinn-refused",
            "Altinn refused the request",
            detail,
        )
        .with("upstream", "Altinn")
        .with("upstream_status", status),
        ConsentError::Altinn(ConsentApiError::Invalid { .. }) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "altinn-invalid",
            "Altinn answered unusably",
            detail,
        )
        .with("upstream", "Altinn"),
    }
}

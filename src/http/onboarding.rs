//! `POST /systemusers/requests`, `GET /systemusers/requests/{id}`, `GET /systemusers`: the
//! onboarding job for a vendor app's sign-up page, which never holds the admin token.
//!
//! Only API clients with `onboarding: true` may call them (open when no `clients:` are
//! configured, like the token routes). The broker uses its own admin token; the answers carry
//! request ids, statuses and confirm URLs, never a token. An Altinn refusal is a 502 problem with
//! `altinn_code` and a sentence that says what to do.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::onboarding::flow::{
    self, Admin, Ask, Onboarding, OnboardingError, RequestView, SystemUserView,
};
use crate::onboarding::system::System;
use crate::policy::access::Client;
use crate::upstream::register::RegisterError;

use super::auth::Caller;
use super::limits::MAX_BODY_BYTES;
use super::problem::{ApiError, Problem, upstream_problem};
use super::state::AppState;

/// What `POST /systemusers/requests` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemUserRequestBody {
    /// The customer's organisation number (9 digits, mod-11 check digit).
    #[schema(pattern = "^[0-9]{9}$")]
    pub org: String,
    /// Your reference for the system user; absent: the organisation number. Not `.` or `..`,
    /// no `/`, no control characters.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^/\\x00-\\x1f\\x7f]+$")]
    pub external_ref: Option<String>,
    /// One of `system.allowed_redirect_urls`: where Altinn sends the customer after answering.
    #[schema(format = "uri", min_length = 1)]
    pub redirect_url: Option<String>,
    /// The agent (client delegation) variant: access packages only.
    pub agent: Option<bool>,
}

/// What `GET /systemusers` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SystemUserList {
    pub system_users: Vec<SystemUserView>,
    /// `true` when the list stopped at 10,000 entries.
    pub truncated: bool,
}

/// Ask an organisation for a system user.
#[utoipa::path(
    post,
    path = "/systemusers/requests",
    tag = "onboarding",
    request_body(content((SystemUserRequestBody = "application/json"))),
    responses(
        (status = 201, description = "A new request: send the customer its confirm_url", body = RequestView),
        (status = 200, description = "An existing pending request, or the system user the organisation already has (status Accepted)", body = RequestView),
        (status = 400, description = "Bad body or org, a redirect_url the system does not allow, or --agent without access packages", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key's client lacks onboarding: true, or its orgs do not list org", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Altinn does not know the configured system: run `system register` first", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No system: section in the config (the detail says how to add one)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Altinn (altinn_code: AUTH-…/VLD-…, and what to do) or Maskinporten refused, or answered unusably", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Altinn or Maskinporten unavailable or unreachable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Altinn or Maskinporten did not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_request(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Result<Response, Problem> {
    let (system, client) = allowed(&state, caller)?;
    let bytes: Bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| super::limits::too_large())?;
    let body: SystemUserRequestBody = serde_json::from_slice(&bytes).map_err(|e| {
        bad_request(format!(
            "the body must be JSON {{\"org\", \"external_ref\"?, \"redirect_url\"?, \"agent\"?}}: {e}"
        ))
    })?;
    let org = body
        .org
        .trim()
        .parse()
        .map_err(|e| bad_request(format!("org: {e}")))?;
    if let Some(client) = &client
        && !client.may_use_org(&org)
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!(
                "client {:?} may not ask organisation {org} for a system user: its orgs in the config do not list it",
                client.name
            ),
        ));
    }
    let ask = Ask {
        org,
        external_ref: body.external_ref,
        redirect_url: body.redirect_url,
        agent: body.agent.unwrap_or(false),
    };
    let (view, created) = session(&state, &system)?
        .request(&ask)
        .await
        .map_err(problem)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

/// A request's state.
#[utoipa::path(
    get,
    path = "/systemusers/requests/{id}",
    tag = "onboarding",
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The request id (a UUID) from POST /systemusers/requests")),
    responses(
        (status = 200, description = "The request", body = RequestView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key's client lacks onboarding: true", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such request", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No system: section in the config (the detail says how to add one)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Altinn or Maskinporten refused (altinn_code), or answered unusably", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Altinn or Maskinporten unavailable or unreachable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Altinn or Maskinporten did not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_request(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (system, _) = allowed(&state, caller)?;
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(bad_request(
            "the id must be a request id (a UUID) as POST /systemusers/requests answered",
        ));
    }
    let view = session(&state, &system)?
        .status(&id)
        .await
        .map_err(problem)?;
    Ok(Json(view).into_response())
}

/// Every system user of the system.
#[utoipa::path(
    get,
    path = "/systemusers",
    tag = "onboarding",
    responses(
        (status = 200, description = "The system users (at most 10,000); a client sees those of its own orgs only", body = SystemUserList),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key's client lacks onboarding: true", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Altinn does not know the configured system: run `system register` first", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No system: section in the config (the detail says how to add one)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Altinn or Maskinporten refused (altinn_code), or answered unusably", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Altinn or Maskinporten unavailable or unreachable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Altinn or Maskinporten did not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_system_users(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
) -> Result<Response, Problem> {
    let (system, client) = allowed(&state, caller)?;
    let (mut system_users, truncated) = session(&state, &system)?.list().await.map_err(problem)?;
    // A client sees the system users of its own organisations only.
    if let Some(client) = &client {
        system_users.retain(|u| u.org.parse().is_ok_and(|org| client.may_use_org(&org)));
    }
    Ok(Json(SystemUserList {
        system_users,
        truncated,
    })
    .into_response())
}

/// The configured system and the caller's client (when clients are configured), when this
/// caller may onboard.
pub(super) fn allowed(
    state: &AppState,
    caller: Result<Caller, Problem>,
) -> Result<(Arc<System>, Option<Arc<Client>>), Problem> {
    let client = match caller? {
        Caller::Client(client, _) => Some(client),
        Caller::Anonymous => None,
    };
    if let Some(client) = &client
        && !client.onboarding
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!(
                "client {:?} may not onboard customers: set onboarding: true on it in clients[] of the config",
                client.name
            ),
        ));
    }
    let system = state.system.clone().ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "onboarding-not-configured",
            "Onboarding not configured",
            "this broker has no system: section in its config; add one (docs/onboarding.md) and restart",
        )
    })?;
    Ok((system, client))
}

pub(super) fn session<'a>(
    state: &'a AppState,
    system: &'a System,
) -> Result<Onboarding<'a>, Problem> {
    let api = flow::api_for(&state.broker().generation(), system)
        .map_err(|e| ApiError::Resolve(e).problem())?;
    Ok(Onboarding {
        system,
        api,
        admin: Admin::Cache(&state.tokens),
    })
}

pub(super) fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "Bad request",
        detail,
    )
}

/// An onboarding failure as a problem: Altinn's refusals as 502 with `altinn_code`.
pub(super) fn problem(error: OnboardingError) -> Problem {
    let detail = crate::telemetry::Chain(&error).to_string();
    match error {
        OnboardingError::Altinn(RegisterError::Refused { status, code, .. }) => {
            let mut p = Problem::new(
                StatusCode::BAD_GATEWAY,
                "altinn-refused",
                "Altinn refused the request",
                detail,
            )
            .with("upstream", "Altinn")
            .with("upstream_status", status);
            if let Some(code) = code {
                p = p.with("altinn_code", code);
            }
            p
        }
        OnboardingError::Altinn(RegisterError::Upstream(u)) => upstream_problem(&u),
        OnboardingError::Token { source, .. } => ApiError::Cache(source).problem(),
        OnboardingError::BadRequest(_) => bad_request(detail),
        OnboardingError::NotRegistered(_) => Problem::new(
            StatusCode::CONFLICT,
            "system-not-registered",
            "System not registered",
            detail,
        ),
        OnboardingError::NoSuchRequest(_) => Problem::new(
            StatusCode::NOT_FOUND,
            "no-such-request",
            "No such request",
            detail,
        ),
        OnboardingError::Altinn(RegisterError::Invalid { .. })
        | OnboardingError::Remote { .. }
        | OnboardingError::Deleted(_)
        | OnboardingError::Mismatch(_) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "altinn-invalid",
            "Altinn answered unusably",
            detail,
        )
        .with("upstream", "Altinn"),
    }
}

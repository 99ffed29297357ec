//! `POST /systemusers/changes`, `GET /systemusers/changes/{id}`: change requests for a vendor's
//! own pages (a customer's settings page offering a new right), with the broker's admin token.
//!
//! Only API clients with `onboarding: true` (open when no `clients:` are configured), and only for
//! the organisations in the client's `orgs` (403 before any call to Altinn). Refusals the config
//! can tell come before any call too: a right not in `system:` (400). The answers carry ids,
//! statuses and confirm URLs, never a token.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::onboarding::change::{ChangeAsk, ChangeError, ChangeView};
use crate::policy::org::OrgNumber;

use super::auth::Caller;
use super::limits::MAX_BODY_BYTES;
use super::onboarding::{allowed, bad_request, problem, session};
use super::problem::Problem;
use super::state::AppState;

/// What `POST /systemusers/changes` takes. Without any of the four lists: what `system:` lists now.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemUserChangeBody {
    /// The customer's organisation number (9 digits, mod-11 check digit).
    #[schema(pattern = "^[0-9]{9}$")]
    pub org: String,
    /// The external reference of its system user; absent: the organisation number. Not `.` or
    /// `..`, no `/`, no control characters.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^/\\x00-\\x1f\\x7f]+$")]
    pub external_ref: Option<String>,
    /// Rights (resource ids of `system.rights`) to add.
    pub add_rights: Option<Vec<String>>,
    /// Rights (resource ids) to remove.
    pub remove_rights: Option<Vec<String>>,
    /// Access packages of `system.access_packages` to add.
    pub add_packages: Option<Vec<String>>,
    /// Access packages to remove.
    pub remove_packages: Option<Vec<String>>,
    /// One of `system.allowed_redirect_urls`: where Altinn sends the customer after answering.
    #[schema(format = "uri", min_length = 1)]
    pub redirect_url: Option<String>,
}

/// Ask a customer to approve rights added to (or removed from) its system user.
#[utoipa::path(
    post,
    path = "/systemusers/changes",
    tag = "onboarding",
    request_body(content((SystemUserChangeBody = "application/json"))),
    responses(
        (status = 201, description = "A new change request: send the customer its confirm_url", body = ChangeView),
        (status = 200, description = "The change request already pending for this system user, or NoChangeNeeded (id null)", body = ChangeView),
        (status = 400, description = "Bad body or org, a right or access package not in system:, or a redirect_url the system does not allow", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key's client lacks onboarding: true, or the org is not in its orgs", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The organisation has no system user for this system (with this external_ref)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An agent (client delegation) system user: Altinn cannot change it; delete it and request it anew", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No system: section in the config (the detail says how to add one)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Altinn (altinn_code: AUTH-…, and what to do) or Maskinporten refused, or answered unusably", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Altinn or Maskinporten unavailable or unreachable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Altinn or Maskinporten did not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_change(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Result<Response, Problem> {
    let caller = caller?;
    let (system, _) = allowed(&state, Ok(caller.clone()))?;
    let bytes: Bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| bad_request(format!("the body must be at most {MAX_BODY_BYTES} bytes")))?;
    let body: SystemUserChangeBody = serde_json::from_slice(&bytes).map_err(|e| {
        bad_request(format!(
            "the body must be JSON {{\"org\", \"external_ref\"?, \"add_rights\"?, \"remove_rights\"?, \"add_packages\"?, \"remove_packages\"?, \"redirect_url\"?}}: {e}"
        ))
    })?;
    let org: OrgNumber = body
        .org
        .trim()
        .parse()
        .map_err(|e| bad_request(format!("org: {e}")))?;
    may_onboard_org(&caller, &org)?;
    let ask = ChangeAsk {
        org: Some(org),
        external_ref: body.external_ref,
        add_rights: body.add_rights.unwrap_or_default(),
        remove_rights: body.remove_rights.unwrap_or_default(),
        add_packages: body.add_packages.unwrap_or_default(),
        remove_packages: body.remove_packages.unwrap_or_default(),
        redirect_url: body.redirect_url,
    };
    let onboarding = session(&state, &system)?;
    let (view, created) = onboarding.change(&ask).await.map_err(change_problem)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

/// A change request's state.
#[utoipa::path(
    get,
    path = "/systemusers/changes/{id}",
    tag = "onboarding",
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The change request id (a UUID) from POST /systemusers/changes")),
    responses(
        (status = 200, description = "The change request", body = ChangeView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key's client lacks onboarding: true, or the change is for an org not in its orgs", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such change request", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No system: section in the config (the detail says how to add one)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Altinn or Maskinporten refused (altinn_code), or answered unusably", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Altinn or Maskinporten unavailable or unreachable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Altinn or Maskinporten did not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_change(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let (system, _) = allowed(&state, Ok(caller.clone()))?;
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(bad_request(
            "the id must be a change request id (a UUID) as POST /systemusers/changes answered",
        ));
    }
    let view = session(&state, &system)?
        .change_status(&id)
        .await
        .map_err(problem)?;
    // Fail closed: a change of an organisation the client may not onboard is not shown.
    let org = view.org.parse::<OrgNumber>().map_err(|_| {
        forbidden("the change request names no organisation this client may onboard".to_owned())
    })?;
    may_onboard_org(&caller, &org)?;
    Ok(Json(view).into_response())
}

/// Whether the caller may onboard `org`: a client only for the organisations in its `orgs`.
pub(super) fn may_onboard_org(caller: &Caller, org: &OrgNumber) -> Result<(), Problem> {
    match caller {
        Caller::Client(client, _) if !client.may_use_org(org) => Err(forbidden(format!(
            "client {:?} may not onboard organisation {org}: add it to orgs of the client in clients[] of the config",
            client.name
        ))),
        _ => Ok(()),
    }
}

fn forbidden(detail: String) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
}

/// A change that was not asked for, as a problem.
fn change_problem(error: ChangeError) -> Problem {
    let detail = crate::telemetry::Chain(&error).to_string();
    match error {
        ChangeError::Onboarding(e) => problem(e),
        ChangeError::NotInSystem(_) => bad_request(detail),
        ChangeError::NoSystemUser { .. } => Problem::new(
            StatusCode::NOT_FOUND,
            "no-system-user",
            "No system user",
            detail,
        ),
        ChangeError::Agent { .. } => Problem::new(
            StatusCode::CONFLICT,
            "agent-system-user",
            "An agent system user cannot be changed",
            detail,
        ),
        ChangeError::TooManyChangeRequests(_) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "altinn-invalid",
            "Altinn answered unusably",
            detail,
        )
        .with("upstream", "Altinn"),
    }
}

//! RFC 9457 problem details: the one error shape every route answers with.
//!
//! [`ApiError`] maps each failure of the layers below to a status and a sentence a person can act
//! on. It never includes a token, grant or key: upstream details are limited to the status, the
//! OAuth `error`, the MP-code and its hint.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::policy::org::OrgError;
use crate::tokens::broker::{ResolveError, SourceError};
use crate::tokens::cache::CacheError;
use crate::upstream::client::UpstreamError;
use crate::upstream::fetch::FetchError;

/// When a transient failure leaves no token, callers are told to come back after this long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The challenge of every 401: an API key as a bearer token (or in `X-Api-Key`).
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"maskinporten-broker\"";

/// An RFC 9457 problem, ready to send.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// A 401's `WWW-Authenticate` when it is not [`WWW_AUTHENTICATE`] (a refused token's
    /// `error="invalid_token"`).
    #[serde(skip)]
    // A thin pointer: the problem travels in every handler's `Result`, kept small.
    #[allow(clippy::box_collection)]
    pub challenge: Option<Box<String>>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: format!("urn:maskinporten-broker:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            extra: Default::default(),
            retry_after: None,
            challenge: None,
        }
    }

    /// A 401 for a bearer token that was refused (RFC 6750 §3.1): `WWW-Authenticate: Bearer
    /// error="invalid_token", error_description="<reason>"`.
    pub fn invalid_token(reason: &str) -> Self {
        // A header value and a quoted string: printable ASCII without quotes or backslashes.
        let quoted: String = reason
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                c if c.is_ascii_graphic() || c == ' ' => c,
                _ => '?',
            })
            .collect();
        let mut problem = Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid-token",
            "Invalid token",
            format!("the bearer token was refused: {reason}"),
        );
        problem.challenge =
            Some(format!("Bearer error=\"invalid_token\", error_description=\"{quoted}\"").into());
        problem
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    fn retry_after(mut self, wait: Option<Duration>) -> Self {
        let wait = wait
            .unwrap_or(DEFAULT_RETRY_AFTER)
            .max(Duration::from_secs(1));
        self.retry_after = Some(wait);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §15.5.2: a 401 says how to authenticate.
            let challenge = self
                .challenge
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or(HeaderValue::from_static(WWW_AUTHENTICATE));
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(wait) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        response
    }
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("org")]
    BadOrg(#[from] OrgError),
    #[error("{0}")]
    BadQuery(String),
    #[error(transparent)]
    Cache(#[from] CacheError<SourceError>),
    #[error("no valid token is cached and the upstream did not deliver one within {}; try again shortly", humantime::format_duration(*.0))]
    WaitedTooLong(Duration),
    /// Already a problem (authentication, authorization).
    #[error("{}", .0.detail)]
    Problem(Problem),
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError::Problem(p)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}

impl ApiError {
    pub fn problem(&self) -> Problem {
        let detail = crate::telemetry::Chain(self).to_string();
        match self {
            ApiError::Problem(p) => p.clone(),
            // The upstream is slow (a hang, or retries after timeouts outlast the caller's wait):
            // a gateway timeout, whichever attempt was running.
            ApiError::WaitedTooLong(_) => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-slow",
                "Upstream too slow",
                detail,
            )
            .retry_after(None),
            ApiError::Resolve(ResolveError::UnknownProfile { .. }) => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-profile",
                "Unknown profile",
                detail,
            ),
            ApiError::Resolve(
                ResolveError::ScopeNotAllowed { scope }
                | ResolveError::ConsentScopeNotAllowed { scope },
            ) => Problem::new(
                StatusCode::FORBIDDEN,
                "scope-not-allowed",
                "Scope not allowed",
                detail,
            )
            .with("scope", scope.as_str()),
            ApiError::Resolve(ResolveError::OnDemandOff) => Problem::new(
                StatusCode::FORBIDDEN,
                "scope-not-allowed",
                "Scope not allowed",
                detail,
            ),
            ApiError::Resolve(_) | ApiError::BadOrg(_) | ApiError::BadQuery(_) => Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad request",
                detail,
            ),
            ApiError::Cache(CacheError::TooShortLived { .. }) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "token-too-short-lived",
                "Upstream token too short-lived",
                detail,
            ),
            ApiError::Cache(CacheError::OverBudget(over)) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "fetch-budget-spent",
                "Too many upstream fetches",
                detail,
            )
            .retry_after(Some(over.retry_after)),
            ApiError::Cache(CacheError::Source(source)) => match source.as_ref() {
                SourceError::Resolve(r) => ApiError::Resolve(r.clone()).problem(),
                SourceError::Fetch(FetchError::Grant(_)) => Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "grant-failed",
                    "Cannot sign the grant",
                    detail,
                ),
                SourceError::Fetch(FetchError::Upstream(u)) => upstream_problem(u),
            },
        }
    }
}

/// An upstream failure as a problem: refusals 502, outages 503, slowness 504.
pub(crate) fn upstream_problem(u: &UpstreamError) -> Problem {
    let detail = u.to_string();
    let target = u.target().as_str();
    match u {
        UpstreamError::Refused {
            status,
            error,
            code,
            hint,
            ..
        } => {
            let detail = match hint {
                Some(h) => format!("{detail}. Hint: {h}"),
                None => detail,
            };
            let mut p = Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream-refused",
                "Upstream refused the request",
                detail,
            )
            .with("upstream", target)
            .with("upstream_status", *status);
            if let Some(e) = error {
                p = p.with("error", e.as_str());
            }
            if let Some(c) = code {
                p = p.with("mp_code", c.as_str());
            }
            if let Some(h) = hint {
                p = p.with("hint", *h);
            }
            p
        }
        UpstreamError::Invalid { .. } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "upstream-invalid",
            "Upstream sent an unusable token",
            detail,
        )
        .with("upstream", target),
        UpstreamError::Unavailable {
            status,
            retry_after,
            ..
        } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream-unavailable",
            "Upstream unavailable",
            detail,
        )
        .with("upstream", target)
        .with("upstream_status", *status)
        .retry_after(*retry_after),
        UpstreamError::Unreachable { .. } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream-unreachable",
            "Upstream unreachable",
            detail,
        )
        .with("upstream", target)
        .retry_after(None),
        UpstreamError::Timeout { .. } => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            "Upstream timed out",
            detail,
        )
        .with("upstream", target)
        .retry_after(None),
        UpstreamError::Signer(e) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "signer-unavailable",
            "The signer gave no signature",
            detail,
        )
        .with("upstream", target)
        .with("signer", e.signer.as_str())
        .retry_after(None),
    }
}

//! `GET /token/{profile}` and `GET /token`: the broker's reason to exist.
//!
//! Handlers stay short: parse the query, resolve the profile, ask the cache, shape the answer.
//! The token leaves the process here and only here, in the body of the response to the caller.

use std::future::{Ready, ready};
use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either};
use serde::{Deserialize, Serialize};

use crate::policy::org::OrgNumber;
use crate::policy::profile::Profile;
use crate::tokens::answer::TokenResponse;
use crate::tokens::cache::CacheKey;

use super::auth::{Caller, Identity};
use super::problem::{ApiError, Problem};
use super::serving::{answer, cached, fetched};
use super::state::AppState;

/// The query of `/token/{profile}`: only `org` is known.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    pub org: Option<String>,
}

/// Parse a raw query string; unknown or repeated parameters are caller mistakes worth a 400.
pub fn parse_query(raw: Option<&str>) -> Result<Option<OrgNumber>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let query: TokenQuery = serde_urlencoded::from_str(raw).map_err(|e| {
        ApiError::BadQuery(format!(
            "the query string is not valid ({e}); the only parameter is org=<organisation number>"
        ))
    })?;
    Ok(query.org.map(|o| o.trim().parse()).transpose()?)
}

/// A token for `profile` (and the system user of `org`): JSON, or the bare token for `Accept: text/plain`.
#[utoipa::path(
    get,
    path = "/token/{profile}",
    tag = "tokens",
    params(
        ("profile" = String, Path, description = "A configured profile: the built-in altinn, admin, skd, or one from broker.yaml"),
        ("org" = Option<String>, Query, pattern = "^[0-9]{9}$", description = "Organisation number (9 digits, valid mod-11 check digit) of the system user; only for profiles with a system user, defaults to default_org"),
    ),
    responses(
        (status = 200, description = "A token with at least cache.min_remaining left", content(
            (TokenResponse = "application/json"),
            (String = "text/plain"),
        )),
        (status = 400, description = "Bad query or org, or org not allowed for this profile", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer realm=\"maskinporten-broker\": send the API key as Authorization: Bearer KEY (or X-Api-Key: KEY)"))),
        (status = 403, description = "The API key's client may not have this profile, org or Maskinporten client (clients[].maskinporten_clients; the body's maskinporten_client names it)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such profile", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the budget of upstream fetches (cache.max_fetches_per_second, or the client's max_fetches_per_second); cached tokens are never limited", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until a fetch fits the budget again"))),
        (status = 500, description = "The grant could not be signed", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Maskinporten or Altinn refused, or sent an unusable token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Maskinporten or Altinn unavailable or unreachable, or the signer (HSM, Vault) gave no signature", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait: the upstream's own Retry-After when it sent one"))),
        (status = 504, description = "Maskinporten or Altinn did not answer within http_client.timeout, or no token arrived within the 20 s a caller waits", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again"))),
    )
)]
pub fn get_token(
    State(state): State<AppState>,
    request: Request,
) -> Either<Ready<Response>, BoxFuture<'static, Response>> {
    // Not an async fn: a cache hit is answered here, and its future is only the answer. A fetch
    // (and its large future) is boxed. The request is read where it is (the profile from the
    // path, the caller from the headers) rather than through a chain of extractors, each an
    // await and a copy on every request.
    match Caller::try_identify(request.headers(), request.extensions(), &state) {
        Identity::Known(caller) => serve_token(state, caller, request),
        // A workload token signed with a key not yet read: read the issuer's keys (at most once
        // per 10 s), then go on.
        Identity::UnknownKid(keys) => Either::Right(Box::pin(async move {
            keys.reread().await;
            let caller =
                Caller::try_identify(request.headers(), request.extensions(), &state).settled();
            match serve_token(state, caller, request) {
                Either::Left(ready) => ready.await,
                Either::Right(fetch) => fetch.await,
            }
        })),
    }
}

/// `GET /token/{profile}` once the caller is known (or refused).
fn serve_token(
    state: AppState,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Either<Ready<Response>, BoxFuture<'static, Response>> {
    let segment = request
        .uri()
        .path()
        .strip_prefix("/token/")
        .unwrap_or_default();
    let profile = match percent_encoding::percent_decode_str(segment).decode_utf8() {
        Ok(profile) => profile,
        Err(e) => {
            let refusal = Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad request",
                format!(
                    "the profile in the path cannot be read ({e}); profile names are plain ASCII"
                ),
            );
            return Either::Left(ready(counted(UNKNOWN_PROFILE, Err(refusal.into()))));
        }
    };
    let profile = profile.as_ref();
    let query = request.uri().query();
    let (caller, profile, key) = match prepare(&state, caller, profile, query) {
        Ok(prepared) => prepared,
        Err(e) => {
            // A configured name or "_unknown": the raw path must not grow the label set.
            let label = state.broker().profile_name(profile);
            let label = label.as_ref().map_or(UNKNOWN_PROFILE, |name| name.as_str());
            return Either::Left(ready(counted(label, Err(e))));
        }
    };
    let now = state.broker().clock().now();
    if let Some(token) = cached(&state, &caller, &key, now) {
        let answered = answer(&token, &key, &profile, request.headers(), now);
        return Either::Left(ready(counted(key.profile.as_str(), answered)));
    }
    Either::Right(Box::pin(async move {
        let answered = match fetched(&state, &caller, &key).await {
            Ok(token) => {
                let now = state.broker().clock().now();
                answer(&token, &key, &profile, request.headers(), now)
            }
            Err(e) => Err(e),
        };
        counted(key.profile.as_str(), answered)
    }))
}

/// The metric label of a request for no configured profile.
const UNKNOWN_PROFILE: &str = "_unknown";

/// The response to `GET /token/{profile}`, counted by `profile` (a configured name, or
/// [`UNKNOWN_PROFILE`]) and outcome.
fn counted(profile: &str, answered: Result<Response, ApiError>) -> Response {
    let response = answered.unwrap_or_else(IntoResponse::into_response);
    crate::telemetry::meters::token_request(profile, response.status().as_u16());
    response
}

/// Who asks for which token: the caller, the profile and its cache key; or why not (401, 400,
/// 404, 403, in that order).
fn prepare(
    state: &AppState,
    caller: Result<Caller, Problem>,
    profile: &str,
    query: Option<&str>,
) -> Result<(Caller, Arc<Profile>, CacheKey), ApiError> {
    let caller = caller?;
    let org = parse_query(query)?;
    let (profile, key) = state.broker().resolve(profile, org)?;
    caller.authorize(&key)?;
    Ok((caller, profile, key))
}

/// One profile in the `GET /token` listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProfileListing {
    #[schema(value_type = Vec<Object>)]
    pub profiles: Vec<Arc<Profile>>,
    #[schema(value_type = Option<String>)]
    pub default_org: Option<OrgNumber>,
    pub env: String,
    /// Each Maskinporten client a profile may name (`client`), the default first.
    pub maskinporten_clients: Vec<MaskinportenClientListing>,
}

/// One Maskinporten client in the `GET /token` listing and `/readyz`: who it is, never its key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MaskinportenClientListing {
    pub name: String,
    pub client_id: String,
    pub kid: Option<String>,
    pub issuer: String,
}

/// Every Maskinporten client of `generation`, the default first.
pub(super) fn maskinporten_clients(
    generation: &crate::tokens::broker::Generation,
) -> Vec<MaskinportenClientListing> {
    generation
        .fetchers()
        .map(|(name, f)| MaskinportenClientListing {
            name: name.to_owned(),
            client_id: f.client_id.clone(),
            kid: f.key.kid().map(str::to_owned),
            issuer: f.endpoints.issuer.clone(),
        })
        .collect()
}

/// `GET /token`: the profiles this broker can make tokens for. `GET /token?scope=…` is kept as
/// an alias of `GET /token/on-demand?scope=…` (see `http/on_demand.rs`), which the OpenAPI
/// document describes: there `scope` is required, so no valid request by the schema is refused
/// for lacking it.
#[utoipa::path(
    get,
    path = "/token",
    tag = "tokens",
    responses(
        (status = 200, description = "The configured profiles, the default org, the env and the Maskinporten clients (no secrets). With scope= (an alias of /token/on-demand): a token", content(
            (IndexAnswer = "application/json"),
            (String = "text/plain"),
        )),
        (status = 400, description = "With a query: as /token/on-demand", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer realm=\"maskinporten-broker\": send the API key as Authorization: Bearer KEY (or X-Api-Key: KEY)"))),
        (status = 403, description = "With a query: as /token/on-demand", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "With a query: as /token/on-demand", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "With a query: as /token/on-demand", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "With a query: as /token/on-demand", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn index(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Response {
    match query.filter(|q| !q.is_empty()) {
        None => match caller {
            Ok(_) => Json(listing(&state)).into_response(),
            Err(problem) => problem.into_response(),
        },
        Some(query) => super::on_demand::counted(&state, caller, &query, request.headers()).await,
    }
}

/// The two JSON answers of `GET /token`, for the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum IndexAnswer {
    Listing(ProfileListing),
    Token(TokenResponse<'static>),
}

fn listing(state: &AppState) -> ProfileListing {
    let generation = state.broker().generation();
    ProfileListing {
        profiles: generation.profiles.iter().cloned().collect(),
        default_org: generation.default_org.clone(),
        env: state.env.to_string(),
        maskinporten_clients: maskinporten_clients(&generation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retries_end_before_the_caller_stops_waiting() {
        assert!(
            crate::upstream::retry::RetryPolicy::default().total
                < crate::http::serving::MAX_CALLER_WAIT
        );
    }

    #[test]
    fn accepts_no_query_and_a_valid_org() {
        assert_eq!(parse_query(None).unwrap(), None);
        assert_eq!(parse_query(Some("")).unwrap(), None);
        assert_eq!(
            parse_query(Some("org=991825827"))
                .unwrap()
                .unwrap()
                .as_str(),
            "991825827"
        );
    }

    #[test]
    fn refuses_unknown_parameters_and_bad_orgs() {
        assert!(matches!(
            parse_query(Some("orgnr=991825827")),
            Err(ApiError::BadQuery(_))
        ));
        assert!(matches!(
            parse_query(Some("org=991825828")),
            Err(ApiError::BadOrg(_))
        ));
        assert!(matches!(
            parse_query(Some("org=")),
            Err(ApiError::BadOrg(_))
        ));
        assert!(parse_query(Some("org=991825827&org=974761076")).is_err());
    }

    proptest! {
        #[test]
        fn any_query_string_parses_or_fails_cleanly(q in ".{0,200}") {
            let _ = parse_query(Some(&q));
        }

        #[test]
        fn org_like_queries_never_panic(q in "org=[0-9%a-z&=]{0,30}") {
            let _ = parse_query(Some(&q));
        }
    }
}

//! `GET /token/on-demand?scope=…` (and its alias `GET /token?scope=…`): an on-demand token for
//! scopes no profile names, when `on_demand.scopes` (and the calling client's `scopes`) allow
//! them. Answered exactly like `/token/{profile}`; `on-demand` is the profile name no
//! configuration may take.

use axum::extract::{RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::config::Environment;
use crate::policy::on_demand::OnDemandRequest;
use crate::policy::org::OrgNumber;
use crate::policy::profile::{Exchange, ON_DEMAND};
use crate::tokens::answer::TokenResponse;

use super::auth::Caller;
use super::problem::{ApiError, Problem};
use super::serving::{answer, token_for};
use super::state::AppState;

/// An on-demand token for scopes no profile names, answered like `/token/{profile}`.
#[utoipa::path(
    get,
    path = "/token/on-demand",
    tag = "tokens",
    params(
        ("scope" = String, Query, description = "On-demand scopes (at least one): separate them by spaces, or repeat the parameter; each must match on_demand.scopes (and the client's scopes); no '*'", pattern = "^[!#-)+-\\[\\]-~]{1,200}( [!#-)+-\\[\\]-~]{1,200}){0,19}$"),
        ("org" = Option<String>, Query, description = "Organisation number of the system user (9 digits, mod-11 check digit)", pattern = "^[0-9]{9}$"),
        ("resource" = Option<String>, Query, description = "The grant's resource claim (audience-restricted token, RFC 8707): an absolute https URI without a fragment", pattern = "^https://[^\\s#]+$"),
        ("consumer_org" = Option<String>, Query, description = "The grant's consumer_org claim (a supplier acting for a customer): 0192: and an organisation number", pattern = "^0192:[0-9]{9}$"),
        ("externalRef" = Option<String>, Query, description = "The system user's externalRef"),
        ("exchange" = Option<ExchangeParam>, Query, description = "altinn: exchange the Maskinporten token at Altinn; none (default): the Maskinporten token"),
    ),
    responses(
        (status = 200, description = "A token with at least cache.min_remaining left", content(
            (TokenResponse = "application/json"),
            (String = "text/plain"),
        )),
        (status = 400, description = "Bad query, scope or org", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured)", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer realm=\"maskinporten-broker\": send the API key as Authorization: Bearer KEY (or X-Api-Key: KEY)"))),
        (status = 403, description = "A scope outside on_demand.scopes or the client's scopes (the detail names it), or an org the client may not use", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The grant could not be signed", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Maskinporten or Altinn refused (e.g. invalid_scope with its MP-code and hint), or sent an unusable token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the budget of upstream fetches (cache.max_fetches_per_second, or the client's max_fetches_per_second); cached tokens are never limited", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until a fetch fits the budget again"))),
        (status = 503, description = "Maskinporten or Altinn unavailable or unreachable, or the signer (HSM, Vault) gave no signature", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait: the upstream's own Retry-After when it sent one"))),
        (status = 504, description = "Maskinporten or Altinn did not answer within http_client.timeout, or no token arrived within the 20 s a caller waits", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again"))),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Response {
    counted(
        &state,
        caller,
        query.as_deref().unwrap_or(""),
        request.headers(),
    )
    .await
}

/// `exchange`'s values, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ExchangeParam {
    None,
    Altinn,
}

/// [`serve`], answered as a response and counted under the `on-demand` profile.
pub(super) async fn counted(
    state: &AppState,
    caller: Result<Caller, Problem>,
    query: &str,
    headers: &HeaderMap,
) -> Response {
    let response = serve(state, caller, query, headers)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    crate::telemetry::meters::token_request(ON_DEMAND, response.status().as_u16());
    response
}

/// Serve one on-demand request: parse, allow-list, authorize, then the cache.
pub(super) async fn serve(
    state: &AppState,
    caller: Result<Caller, Problem>,
    query: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let caller = caller?;
    let (request, org) = parse_query(query, state.env == Environment::Local)?;
    let (profile, key) = state.broker().resolve_on_demand(request, org)?;
    caller.authorize(&key)?;
    let token = token_for(state, &caller, &key).await?;
    answer(
        &token,
        &key,
        &profile,
        headers,
        state.broker().clock().now(),
    )
}

/// The parameters of an on-demand request. `scope` may repeat; every other parameter at most
/// once; anything else is a caller mistake worth a 400. `local`: the broker runs `env: local`.
pub(super) fn parse_query(
    raw: &str,
    local: bool,
) -> Result<(OnDemandRequest, Option<OrgNumber>), ApiError> {
    let mut scopes = Vec::new();
    let (mut org, mut resource, mut consumer_org, mut external_ref, mut exchange) =
        (None, None, None, None, None);
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        let slot = match name.as_ref() {
            "scope" => {
                scopes.push(value.into_owned());
                continue;
            }
            "org" => &mut org,
            "resource" => &mut resource,
            "consumer_org" => &mut consumer_org,
            "externalRef" | "external_ref" => &mut external_ref,
            "exchange" => &mut exchange,
            other => {
                return Err(ApiError::BadQuery(format!(
                    "unknown parameter {:?}; an on-demand request takes scope, org, resource, consumer_org, externalRef and exchange",
                    other.chars().take(40).collect::<String>()
                )));
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(ApiError::BadQuery(format!(
                "{name} is given more than once"
            )));
        }
    }
    let exchange = parse_exchange(exchange.as_deref())?;
    let org = org.map(|o| o.trim().parse()).transpose()?;
    let request = OnDemandRequest::new(
        scopes.iter().map(String::as_str),
        exchange,
        resource,
        consumer_org,
        external_ref,
    )
    .and_then(|r| r.in_env(local))
    .map_err(|e| ApiError::BadQuery(e.to_string()))?;
    Ok((request, org))
}

/// `exchange=altinn` or `exchange=none` (the default).
pub(super) fn parse_exchange(value: Option<&str>) -> Result<Exchange, ApiError> {
    match value.map(str::trim) {
        None | Some("") | Some("none") => Ok(Exchange::None),
        Some("altinn") => Ok(Exchange::Altinn),
        Some(_) => Err(ApiError::BadQuery(
            "exchange must be altinn or none".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repeated_and_space_separated_scopes_are_one_request() {
        let (a, org) = parse_query("scope=b&scope=a&org=991825827", false).unwrap();
        let (b, _) = parse_query("scope=a%20b", false).unwrap();
        let (c, _) = parse_query("scope=a+b+a", false).unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(org.unwrap().as_str(), "991825827");
    }

    #[test]
    fn refuses_unknown_repeated_and_bad_parameters() {
        for bad in [
            "scope=a&orgnr=1",
            "scope=a&org=1&org=2",
            "scope=a&exchange=maybe",
            "org=991825827",
            "scope=a&org=991825828",
            "scope=a&resource=javascript:alert(1)",
            "scope=a&resource=http://127.0.0.1/",
            "scope=a&consumer_org=0192:123",
            "scope=altinn:*",
        ] {
            assert!(parse_query(bad, false).is_err(), "{bad}");
        }
        let (r, _) = parse_query(
            "scope=a&exchange=altinn&externalRef=x&resource=https://api.example.no/&consumer_org=0192:974761076",
            false,
        )
        .unwrap();
        assert_eq!(r.exchange, Exchange::Altinn);
        assert_eq!(r.external_ref.as_deref(), Some("x"));
        assert_eq!(r.resource.as_deref(), Some("https://api.example.no/"));
        assert_eq!(r.consumer_org.as_deref(), Some("0192:974761076"));
        let (local, _) = parse_query("scope=a&resource=http://127.0.0.1:1/", true).unwrap();
        assert_eq!(local.resource.as_deref(), Some("http://127.0.0.1:1/"));
    }

    proptest! {
        #[test]
        fn any_query_parses_or_fails_cleanly(q in ".{0,300}") {
            let _ = parse_query(&q, false);
        }
    }
}

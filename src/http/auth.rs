//! Who is asking: the calling client as an axum extractor, and whether it may have a token.
//!
//! With no `clients:` configured every caller is the anonymous local caller. Otherwise a request
//! must carry an API key (`Authorization: Bearer KEY` or `X-Api-Key: KEY`): none or an unknown one
//! is a 401, a profile, organisation or Maskinporten client outside the client's lists a 403. Handlers take a
//! [`Caller`] (or `Result<Caller, Problem>` when they count refusals themselves) and never
//! authenticate by hand.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use crate::policy::access::Client;
use crate::tokens::budget::ClientBudget;
use crate::tokens::cache::CacheKey;

use super::problem::Problem;
use super::state::AppState;

/// Who a request comes from, for authorization and the audit line.
pub enum Caller {
    Anonymous,
    Client(Arc<Client>),
}

impl Caller {
    pub fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "-",
            Caller::Client(c) => &c.name,
        }
    }

    /// The client's own fetch budget, if it has one (`clients[].max_fetches_per_second`).
    pub fn budget(&self) -> Option<&ClientBudget> {
        match self {
            Caller::Anonymous => None,
            Caller::Client(c) => c.budget.as_deref(),
        }
    }

    /// A 403 problem when this caller may not have the token for `key`.
    pub fn authorize(&self, key: &CacheKey) -> Result<(), Problem> {
        let Caller::Client(client) = self else {
            return Ok(());
        };
        let forbidden =
            |detail: String| Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail);
        if !client.may_use_maskinporten_client(key.client.as_str()) {
            return Err(forbidden(format!(
                "client {:?} may not use Maskinporten client {:?}: its maskinporten_clients in the config do not list it",
                client.name,
                key.client.as_str()
            ))
            .with("maskinporten_client", key.client.as_str()));
        }
        match &key.on_demand {
            Some(request) => {
                if let Some(scope) = request.scopes.iter().find(|s| !client.may_use_scope(s)) {
                    return Err(forbidden(format!(
                        "client {:?} may not ask for scope {scope:?}: its scopes in the config do not list it",
                        client.name
                    ))
                    .with("scope", scope.as_str()));
                }
            }
            None if !client.may_use_profile(key.profile.as_str()) => {
                return Err(forbidden(format!(
                    "client {:?} may not use profile {:?}",
                    client.name,
                    key.profile.as_str()
                )));
            }
            None => {}
        }
        if let Some(org) = &key.org
            && !client.may_use_org(org)
        {
            return Err(forbidden(format!(
                "client {:?} may not ask for tokens for organisation {org}",
                client.name
            )));
        }
        Ok(())
    }
}

/// Identify the caller; a 401 problem when clients are configured and the key is missing or unknown.
impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, Problem> {
        Caller::identify(&parts.headers, state)
    }
}

impl Caller {
    /// The caller of a request with these headers (what the extractor does, for a handler that
    /// reads the request itself).
    pub fn identify(headers: &HeaderMap, state: &AppState) -> Result<Caller, Problem> {
        let clients = state.clients.load();
        if clients.is_empty() {
            return Ok(Caller::Anonymous);
        }
        let unauthorized = |detail: &str| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                detail,
            )
        };
        let key = presented_key(headers).ok_or_else(|| {
            unauthorized(
                "this broker requires an API key: send Authorization: Bearer <key> or X-Api-Key: <key>",
            )
        })?;
        clients
            .authenticate(key)
            .map(Caller::Client)
            .ok_or_else(|| unauthorized("the API key is not known to this broker"))
    }
}

/// The API key of `X-Api-Key`, else of `Authorization: Bearer`; an empty one counts as absent,
/// so it never hides a key in the other header.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.trim().split_once(' '))
        .and_then(|(scheme, key)| scheme.eq_ignore_ascii_case("bearer").then_some(key.trim()));
    [api_key, bearer]
        .into_iter()
        .flatten()
        .find(|k| !k.is_empty())
}

//! Who is asking: the calling client as an axum extractor, and whether it may have a token.
//!
//! With no `clients:` configured every caller is the anonymous local caller. Otherwise a request
//! must carry an API key (`Authorization: Bearer KEY` or `X-Api-Key: KEY`), a workload token
//! (`Authorization: Bearer <JWT>` of an issuer under `identity.issuers`), or come over a
//! connection whose verified client certificate a client's `identity` names. None, or an unknown
//! key, is a 401; a refused token a 401 with `WWW-Authenticate: Bearer error="invalid_token"`; a
//! valid token no client claims, or a profile, organisation or Maskinporten client outside the
//! client's lists, a 403. Handlers take a [`Caller`] (or `Result<Caller, Problem>` when they count
//! refusals themselves) and never authenticate by hand.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, StatusCode, header};

use crate::policy::access::Client;
use crate::policy::identity::jwks::KeySet;
use crate::policy::identity::jwt::{Invalid, looks_like_jwt};
use crate::policy::identity::{PeerCertificate, Refusal};
use crate::tokens::budget::ClientBudget;
use crate::tokens::cache::CacheKey;

use super::problem::Problem;
use super::state::AppState;

/// Who a request comes from, for authorization and the audit line.
#[derive(Clone)]
pub enum Caller {
    Anonymous,
    Client(Arc<Client>, Via),
}

/// How a client was identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    ApiKey,
    /// A workload token: `kubernetes:team-a/invoicing`, `<issuer>:<sub>`.
    Token(String),
    /// A verified client certificate: its SPIFFE ID, or its subject.
    Certificate(String),
}

impl Caller {
    pub fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "-",
            Caller::Client(c, _) => &c.name,
        }
    }

    /// How the caller was identified, for the audit line: `api_key`, `kubernetes:team-a/invoicing`,
    /// `spiffe://...`, `CN=...`; `-` for the anonymous caller.
    pub fn principal(&self) -> &str {
        match self {
            Caller::Anonymous => "-",
            Caller::Client(_, Via::ApiKey) => "api_key",
            Caller::Client(_, Via::Token(p) | Via::Certificate(p)) => p,
        }
    }

    /// The client, if clients are configured.
    pub fn client(&self) -> Option<&Client> {
        match self {
            Caller::Anonymous => None,
            Caller::Client(c, _) => Some(c),
        }
    }

    /// The client's own fetch budget, if it has one (`clients[].max_fetches_per_second`).
    pub fn budget(&self) -> Option<&ClientBudget> {
        self.client().and_then(|c| c.budget.as_deref())
    }

    /// A 403 problem when this caller may not have the token for `key`.
    pub fn authorize(&self, key: &CacheKey) -> Result<(), Problem> {
        let Caller::Client(client, _) = self else {
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
        if let Some(consent) = &key.consent {
            // The client's own scopes bound a consent token as they bound on-demand tokens.
            if !client.consent || !client.may_use_scope(&consent.scope) {
                return Err(forbidden(format!(
                    "client {:?} may not have a consent token for scope {:?}: it needs consent: true and the scope in its scopes in the config",
                    client.name, consent.scope
                ))
                .with("scope", consent.scope.as_str()));
            }
            return Ok(());
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
        Caller::identify(&parts.headers, &parts.extensions, state).await
    }
}

/// What the headers and the connection say before any network: the caller (or why not), or a
/// token whose `kid` its issuer's keys lack (re-read them, then ask again).
pub enum Identity {
    Known(Result<Caller, Problem>),
    UnknownKid(Arc<KeySet>),
}

impl Identity {
    /// After the re-read: a `kid` still unknown is a refused token.
    pub fn settled(self) -> Result<Caller, Problem> {
        match self {
            Identity::Known(caller) => caller,
            Identity::UnknownKid(_) => Err(Problem::invalid_token(&Invalid::UnknownKey.reason())),
        }
    }
}

impl Caller {
    /// The caller of a request with these headers and extensions (what the extractor does, for a
    /// handler that reads the request itself); re-reads an issuer's keys at most once.
    pub async fn identify(
        headers: &HeaderMap,
        extensions: &Extensions,
        state: &AppState,
    ) -> Result<Caller, Problem> {
        match Caller::try_identify(headers, extensions, state) {
            Identity::Known(caller) => caller,
            Identity::UnknownKid(keys) => {
                keys.reread().await;
                Caller::try_identify(headers, extensions, state).settled()
            }
        }
    }

    /// [`Caller::identify`] without the network: a verified client certificate a client names,
    /// else the API key or token of the headers.
    pub fn try_identify(
        headers: &HeaderMap,
        extensions: &Extensions,
        state: &AppState,
    ) -> Identity {
        let clients = state.clients.load();
        if clients.is_empty() {
            return Identity::Known(Ok(Caller::Anonymous));
        }
        if let Some(peer) = extensions.get::<Arc<PeerCertificate>>()
            && let Some(client) = clients.by_certificate(peer.spiffe_id.as_deref(), &peer.subject)
        {
            return Identity::Known(Ok(Caller::Client(
                client,
                Via::Certificate(peer.principal().to_owned()),
            )));
        }
        let unauthorized = |detail: &str| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                detail,
            )
        };
        let Some(key) = presented_key(headers) else {
            return Identity::Known(Err(unauthorized(
                "this broker requires an API key: send Authorization: Bearer <key> or X-Api-Key: <key>",
            )));
        };
        if !state.identity.is_empty() && looks_like_jwt(key) {
            return match state.identity.verify(key) {
                Ok(verified) => Identity::Known(
                    clients
                        .by_token(&verified.issuer, &verified.subject)
                        .map(|client| Caller::Client(client, Via::Token(verified.principal.clone())))
                        .ok_or_else(|| {
                            Problem::new(
                                StatusCode::FORBIDDEN,
                                "forbidden",
                                "Forbidden",
                                format!(
                                    "no client in the config has identity issuer {:?} and a subject matching {:?}; add one to clients",
                                    verified.issuer, verified.subject
                                ),
                            )
                        }),
                ),
                Err(Refusal::UnknownKid(keys)) => Identity::UnknownKid(keys),
                Err(Refusal::Invalid(invalid)) => {
                    Identity::Known(Err(Problem::invalid_token(&invalid.reason())))
                }
            };
        }
        Identity::Known(
            clients
                .authenticate(key)
                .map(|client| Caller::Client(client, Via::ApiKey))
                .ok_or_else(|| unauthorized("the API key is not known to this broker")),
        )
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

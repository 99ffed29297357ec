//! The onboarding job, shared by the CLI and the HTTP routes: register the system idempotently,
//! ask an organisation for a system user (returning an existing request or system user instead of
//! failing), read a request, list the system users, and prove an accepted one with a token.
//!
//! The admin token comes from the broker's own cache and fetch machinery: this process's
//! ([`Admin::Cache`]) or, for the CLI in `env: local`, the running broker whose simulator holds the
//! register ([`Admin::Broker`]). A token is only ever sent to Altinn as Bearer; nothing here
//! returns, prints or logs one (the proof is its expiry time).

use serde::Serialize;
use serde_json::{Value, json};
use url::Url;

use super::system::{Difference, System};
use crate::key::secret::Secret;
use crate::policy::org::OrgNumber;
use crate::tokens::broker::{Broker, Generation, ResolveError, SourceError};
use crate::tokens::cache::{CacheError, TokenCache};
use crate::upstream::register::{RegisterApi, RegisterError, field_of};

/// The longest `external_ref` taken.
pub const MAX_EXTERNAL_REF: usize = 255;

/// An `external_ref` is one path segment of Altinn's API: not `.` or `..`, no `/`, no control
/// characters, at most [`MAX_EXTERNAL_REF`] characters.
pub fn check_external_ref(text: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("external_ref {text:?} {why}"));
    if text.is_empty() {
        bad("is empty; leave it out for the organisation number")
    } else if text == "." || text == ".." {
        bad("is a dot segment; choose a reference with other characters")
    } else if text.contains('/') {
        bad("contains '/'")
    } else if text.chars().any(char::is_control) {
        bad("contains a control character")
    } else if text.chars().count() > MAX_EXTERNAL_REF {
        Err(format!(
            "external_ref is longer than {MAX_EXTERNAL_REF} characters"
        ))
    } else {
        Ok(())
    }
}

/// Where the admin token (and the proof token) come from.
pub enum Admin<'a> {
    /// This process's cache: the broker's routes, and the CLI in `test` and `prod`.
    Cache(&'a TokenCache<Broker>),
    /// A running broker over HTTP: the CLI in `env: local`.
    Broker(&'a RunningBroker),
}

/// A broker serving on `base` (the CLI in `env: local` asks it for tokens).
pub struct RunningBroker {
    pub base: Url,
    pub http: reqwest::Client,
    /// Sent as `X-Api-Key` when the broker has `clients:` (`BROKER_API_KEY`).
    pub api_key: Option<Secret>,
}

/// Why onboarding did not get done.
#[derive(Debug, thiserror::Error)]
pub enum OnboardingError {
    #[error(transparent)]
    Altinn(#[from] RegisterError),
    /// The admin (or proof) token could not be had from this process's cache.
    #[error("no {profile} token: {source}")]
    Token {
        profile: String,
        #[source]
        source: CacheError<SourceError>,
    },
    /// The running broker (the CLI in `env: local`) gave no answer to use.
    #[error("the running broker gave no {what}: {detail}")]
    Remote { what: String, detail: String },
    /// The caller asked for something the configured system cannot give.
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "system id {0:?} is taken in Altinn by a deleted system (or one of another organisation), and a deleted id can never be used again: choose a new system.id in the config and run `system register`"
    )]
    Deleted(String),
    /// Altinn does not know the configured system: the vendor's step comes first.
    #[error("Altinn does not know system {0:?}: run `maskinporten-broker system register` first")]
    NotRegistered(String),
    #[error("Altinn has no system-user request with id {0}")]
    NoSuchRequest(String),
    #[error("Altinn's answer does not match what was asked: {0}")]
    Mismatch(String),
}

/// A system-user request (or, for an organisation that already has one, its system user) as the
/// CLI prints it and the HTTP routes answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RequestView {
    pub id: String,
    /// `New`, `Accepted`, `Rejected`, `Denied` or `Timedout`.
    pub status: String,
    /// Where the customer accepts (`null` for a system user the organisation already had).
    pub confirm_url: Option<String>,
    pub org: String,
    pub external_ref: String,
    pub created: Option<String>,
    /// After `--wait` saw `Accepted`: when the proof token (fetched, never shown) expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<String>,
}

impl RequestView {
    fn from_request(v: &Value) -> Self {
        let text = |f: &str| field_of(v, f).as_str().map(str::to_owned);
        RequestView {
            id: text("id").unwrap_or_default(),
            status: text("status").unwrap_or_else(|| "New".to_owned()),
            confirm_url: text("confirmUrl"),
            org: text("partyOrgNo").unwrap_or_default(),
            external_ref: text("externalRef").unwrap_or_default(),
            created: text("created"),
            token_expires_at: None,
        }
    }

    /// The statuses after which nothing changes.
    pub fn is_final(&self) -> bool {
        matches!(
            self.status.as_str(),
            "Accepted" | "Rejected" | "Denied" | "Timedout"
        )
    }
}

/// One system user of the system.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SystemUserView {
    pub org: String,
    pub id: String,
    pub external_ref: String,
    pub created: Option<String>,
}

impl SystemUserView {
    fn from_altinn(v: &Value) -> Self {
        let text = |f: &str| field_of(v, f).as_str().unwrap_or_default().to_owned();
        SystemUserView {
            org: text("reporteeOrgNo"),
            id: text("id"),
            external_ref: text("externalRef"),
            created: field_of(v, "created").as_str().map(str::to_owned),
        }
    }
}

/// `system show`.
#[derive(Debug, Serialize)]
pub struct Shown {
    pub system_id: String,
    pub registered: bool,
    pub differences: Vec<Difference>,
}

/// `system register`.
#[derive(Debug, Serialize)]
pub struct Registered {
    pub system_id: String,
    /// `created`, `updated` or `unchanged`.
    pub action: &'static str,
    /// Whether the update added a right or access package (existing system users lack it).
    #[serde(skip)]
    pub gained: bool,
    /// After a gain: how many customers' system users lack something `system:` lists now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customers_lacking: Option<usize>,
}

/// What a system-user request asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub org: OrgNumber,
    /// Absent: the organisation number (Altinn's default, sent explicitly).
    pub external_ref: Option<String>,
    pub redirect_url: Option<String>,
    /// The agent (client delegation) variant: access packages only.
    pub agent: bool,
}

/// One onboarding session: the configured system, Altinn's API, and the token source.
pub struct Onboarding<'a> {
    pub system: &'a System,
    pub api: RegisterApi,
    pub admin: Admin<'a>,
}

impl Onboarding<'_> {
    /// `system show`.
    pub async fn show(&self) -> Result<Shown, OnboardingError> {
        let token = self.admin_token().await?;
        let registered = self.api.system(&token, &self.system.id).await?;
        Ok(Shown {
            system_id: self.system.id.clone(),
            registered: registered.is_some(),
            differences: registered
                .map(|r| self.system.differences(&r))
                .unwrap_or_default(),
        })
    }

    /// `system register`: GET; absent → POST; different → PUT the whole definition; the same →
    /// nothing. Never deletes.
    pub async fn register(&self) -> Result<Registered, OnboardingError> {
        let (id, body) = (&self.system.id, self.system.body());
        let token = self.admin_token().await?;
        let mut gained = false;
        let action = match self.api.system(&token, id).await? {
            Some(r) if field_of(&r, "isDeleted").as_bool() == Some(true) => {
                return Err(OnboardingError::Deleted(id.clone()));
            }
            None => match self.api.create_system(&token, &body).await {
                Ok(()) => "created",
                // Unreadable, yet taken: deleted (or another vendor's).
                Err(e) if e.code() == Some("VLD-00002") => {
                    return Err(OnboardingError::Deleted(id.clone()));
                }
                Err(e) => return Err(e.into()),
            },
            Some(r) if self.system.differences(&r).is_empty() => "unchanged",
            Some(r) => match self.api.update_system(&token, id, &body).await {
                Ok(()) => {
                    gained = self.system.differences(&r).iter().any(Difference::gains);
                    "updated"
                }
                Err(RegisterError::Refused { advice, .. }) if advice.contains("deleted") => {
                    return Err(OnboardingError::Deleted(id.clone()));
                }
                Err(e) => return Err(e.into()),
            },
        };
        tracing::info!(system_id = %id, action, "system register");
        Ok(Registered {
            system_id: id.clone(),
            action,
            gained,
            customers_lacking: None,
        })
    }

    /// Ask `ask.org` for a system user. `true` with a new request; an existing pending request,
    /// or the system user the organisation already has (`Accepted`), comes back with `false`.
    pub async fn request(&self, ask: &Ask) -> Result<(RequestView, bool), OnboardingError> {
        let system = self.system;
        if let Some(external_ref) = &ask.external_ref {
            check_external_ref(external_ref).map_err(OnboardingError::BadRequest)?;
        }
        if let Some(url) = &ask.redirect_url
            && !system.allowed_redirect_urls.contains(url)
        {
            return Err(OnboardingError::BadRequest(format!(
                "redirect_url {url:?} is not in system.allowed_redirect_urls; add it there and run `system register`, or leave it out"
            )));
        }
        if ask.agent && system.access_packages.is_empty() {
            return Err(OnboardingError::BadRequest(
                "an agent (client delegation) request asks for access packages only, and system.access_packages is empty".to_owned(),
            ));
        }
        let org = ask.org.as_str();
        let external_ref = ask.external_ref.clone().unwrap_or_else(|| org.to_owned());
        let mut body = json!({
            "externalRef": external_ref,
            "systemId": system.id,
            "partyOrgNo": org,
            "accessPackages": system.request_access_packages(),
        });
        if !ask.agent {
            body["rights"] = system.request_rights();
        }
        if let Some(url) = &ask.redirect_url {
            body["redirectUrl"] = json!(url);
        }
        let token = self.admin_token().await?;
        let refusal = match self.api.create_request(&token, ask.agent, &body).await {
            Ok((created, answer)) => {
                let view = RequestView::from_request(&answer);
                if view.external_ref != external_ref || view.org != org {
                    return Err(OnboardingError::Mismatch(format!(
                        "asked for organisation {org} with externalRef {external_ref:?}, got {} with {:?}",
                        view.org, view.external_ref
                    )));
                }
                tracing::info!(org, request_id = %view.id, created, "system-user request");
                return Ok((view, created));
            }
            Err(e) => e,
        };
        match refusal.code() {
            Some("AUTH-00004") => {
                let (users, _) = self.api.system_users(&token, &system.id).await?;
                let user = users
                    .iter()
                    .map(SystemUserView::from_altinn)
                    .filter(|u| u.org == org)
                    .max_by_key(|u| u.external_ref == external_ref)
                    .ok_or(refusal)?;
                Ok((
                    RequestView {
                        id: user.id,
                        status: "Accepted".to_owned(),
                        confirm_url: None,
                        org: user.org,
                        external_ref: user.external_ref,
                        created: user.created,
                        token_expires_at: None,
                    },
                    false,
                ))
            }
            Some("AUTH-00006" | "AUTH-00007" | "AUTH-00008" | "AUTH-00009") => {
                let found = self
                    .api
                    .request_by_external_ref(&token, &system.id, org, &external_ref)
                    .await?;
                let found = found.ok_or(refusal)?;
                Ok((RequestView::from_request(&found), false))
            }
            Some("AUTH-00011") => Err(OnboardingError::NotRegistered(system.id.clone())),
            _ => Err(refusal.into()),
        }
    }

    /// `systemuser status ID`.
    pub async fn status(&self, id: &str) -> Result<RequestView, OnboardingError> {
        let token = self.admin_token().await?;
        self.api
            .request(&token, id)
            .await?
            .map(|v| RequestView::from_request(&v))
            .ok_or_else(|| OnboardingError::NoSuchRequest(id.to_owned()))
    }

    /// `systemuser list`: every system user of the system, and whether the list stopped at
    /// [`crate::upstream::register::MAX_SYSTEM_USERS`].
    pub async fn list(&self) -> Result<(Vec<SystemUserView>, bool), OnboardingError> {
        let token = self.admin_token().await?;
        let (users, truncated) = match self.api.system_users(&token, &self.system.id).await {
            // Altinn's 404 on a system's list: it has no such system.
            Err(e) if e.status() == Some(404) => {
                return Err(OnboardingError::NotRegistered(self.system.id.clone()));
            }
            other => other?,
        };
        Ok((
            users
                .iter()
                .filter(|u| field_of(u, "isDeleted").as_bool() != Some(true))
                .map(SystemUserView::from_altinn)
                .collect(),
            truncated,
        ))
    }

    /// Fetch one token of `profile` for `org` as proof the system user works; its expiry
    /// (RFC 3339), never the token.
    pub async fn prove(&self, profile: &str, org: &OrgNumber) -> Result<String, OnboardingError> {
        match &self.admin {
            Admin::Cache(tokens) => {
                let (_, key) = tokens
                    .source()
                    .resolve(profile, Some(org.clone()))
                    .map_err(|e| OnboardingError::BadRequest(e.to_string()))?;
                let (token, _) =
                    tokens
                        .get(&key, None)
                        .await
                        .map_err(|source| OnboardingError::Token {
                            profile: profile.to_owned(),
                            source,
                        })?;
                Ok(crate::tokens::token::rfc3339(token.expires_at))
            }
            Admin::Broker(broker) => {
                let answer = broker.token(profile, Some(org)).await?;
                Ok(field_of(&answer, "expires_at")
                    .as_str()
                    .unwrap_or_default()
                    .to_owned())
            }
        }
    }

    pub(super) async fn admin_token(&self) -> Result<Secret, OnboardingError> {
        self.admin
            .token(&self.system.profile, "system.profile")
            .await
    }
}

impl Admin<'_> {
    /// A token of `profile` (written at `field` in the config), to send to Altinn as Bearer.
    pub(crate) async fn token(
        &self,
        profile: &str,
        field: &str,
    ) -> Result<Secret, OnboardingError> {
        match self {
            Admin::Cache(tokens) => {
                let (_, key) = tokens
                    .source()
                    .resolve(profile, None)
                    .map_err(|e| OnboardingError::BadRequest(format!("{field}: {e}")))?;
                let (token, _) =
                    tokens
                        .get(&key, None)
                        .await
                        .map_err(|source| OnboardingError::Token {
                            profile: profile.to_owned(),
                            source,
                        })?;
                Ok(token.value.clone())
            }
            Admin::Broker(broker) => {
                let answer = broker.token(profile, None).await?;
                field_of(&answer, "access_token")
                    .as_str()
                    .map(Secret::new)
                    .ok_or_else(|| OnboardingError::Remote {
                        what: format!("{profile} token"),
                        detail: "its answer has no access_token".to_owned(),
                    })
            }
        }
    }
}

/// The register API the system's profile reaches: its Maskinporten client's Altinn platform and
/// HTTP client.
pub fn api_for(generation: &Generation, system: &System) -> Result<RegisterApi, ResolveError> {
    let profile = generation.profile(&system.profile)?;
    let fetcher = generation.fetcher(&profile.client)?;
    Ok(RegisterApi::new(
        fetcher.http().clone(),
        &fetcher.endpoints.altinn_platform,
        fetcher.timeout,
    ))
}

/// The running broker's JSON answer, read to at most [`crate::body::MAX_UPSTREAM_BODY`]; the
/// error is a sentence.
async fn json_of(mut response: reqwest::Response) -> Result<(reqwest::StatusCode, Value), String> {
    let status = response.status();
    let limit = crate::body::MAX_UPSTREAM_BODY;
    let bytes = crate::body::read(&mut response, limit)
        .await
        .map_err(|e| match e {
            crate::body::BodyError::Transport(e) => format!("HTTP {status}, unreadable: {e}"),
            crate::body::BodyError::TooLarge => format!(
                "HTTP {status}, an answer over {}",
                crate::body::shown(limit)
            ),
        })?;
    let body =
        serde_json::from_slice(&bytes).map_err(|e| format!("HTTP {status}, not JSON: {e}"))?;
    Ok((status, body))
}

impl RunningBroker {
    /// `GET /token/{profile}[?org=]` of the running broker: its JSON answer.
    pub(crate) async fn token(
        &self,
        profile: &str,
        org: Option<&OrgNumber>,
    ) -> Result<Value, OnboardingError> {
        let remote = |detail: String| OnboardingError::Remote {
            what: format!("{profile} token"),
            detail,
        };
        let mut url = self
            .base
            .join(&format!("token/{profile}"))
            .map_err(|e| remote(e.to_string()))?;
        if let Some(org) = org {
            url.query_pairs_mut().append_pair("org", org.as_str());
        }
        let mut request = self.http.get(url);
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| remote(self.not_running(e)))?;
        let (status, body) = json_of(response).await.map_err(remote)?;
        if status.is_success() {
            Ok(body)
        } else {
            let detail = field_of(&body, "detail").as_str().unwrap_or_default();
            Err(remote(format!("HTTP {status}: {detail}")))
        }
    }

    fn not_running(&self, e: reqwest::Error) -> String {
        format!(
            "nothing answers at {} ({e}); in env local the onboarding commands use the running broker's simulator: start the broker first (cargo run --release)",
            self.base
        )
    }

    /// The Altinn platform the running broker uses (its `/readyz` says; in `env: local` its
    /// simulator).
    pub async fn altinn_platform(&self) -> Result<Url, OnboardingError> {
        let remote = |detail: String| OnboardingError::Remote {
            what: "Altinn platform URL".to_owned(),
            detail,
        };
        let url = self
            .base
            .join("readyz")
            .map_err(|e| remote(e.to_string()))?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| remote(self.not_running(e)))?;
        let (_, body) = json_of(response).await.map_err(remote)?;
        field_of(&body, "altinn_platform")
            .as_str()
            .and_then(|p| Url::parse(p).ok())
            .ok_or_else(|| remote("its /readyz names no altinn_platform".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, Bytes};

    /// A "running broker" on 127.0.0.1 whose every answer is `body` (a stream, no length).
    async fn broker_answering(chunks: usize) -> RunningBroker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let app = axum::Router::new().fallback(move || async move {
            let mut parts: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from_static(
                b"{\"altinn_platform\":\"http://127.0.0.1:9/\",\"x\":\"",
            ))];
            parts.extend((0..chunks).map(|_| Ok(Bytes::from(vec![b'a'; 64 * 1024]))));
            parts.push(Ok(Bytes::from_static(b"\"}")));
            Body::from_stream(futures::stream::iter(parts))
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        RunningBroker {
            base,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            api_key: None,
        }
    }

    #[tokio::test]
    async fn the_running_brokers_answers_are_read_to_a_bound() {
        // Within the bound: read and used.
        let small = broker_answering(2).await;
        assert_eq!(
            small.altinn_platform().await.unwrap().as_str(),
            "http://127.0.0.1:9/"
        );
        // 2 MiB streamed without a length: refused at 1 MiB, by both reads.
        let large = broker_answering(32).await;
        let refused = large.altinn_platform().await.unwrap_err().to_string();
        assert!(refused.contains("an answer over 1 MiB"), "{refused}");
        let refused = large.token("admin", None).await.unwrap_err().to_string();
        assert!(refused.contains("an answer over 1 MiB"), "{refused}");
    }
}

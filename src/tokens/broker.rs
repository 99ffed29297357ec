//! The broker's token source: which profile and organisation a request means, and fetching for a
//! cache key with the current configuration generation and the retry policy.
//!
//! A *generation* is everything a reload may replace (each Maskinporten client's key, kid, client
//! id and endpoints, the profiles).
//! It is swapped atomically; fetches in flight finish with the generation they started with, and
//! tokens made with an old key stay cached until they expire.
//!
//! A caller's fetch gets the retry policy; a background refresh makes one attempt, admitted by
//! the [`Breaker`] of each upstream it will call, so an outage is not multiplied by the number of
//! cached keys.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use std::time::SystemTime;

use crate::policy::consent::ConsentToken;
use crate::policy::on_demand::{OnDemandRequest, ScopePatterns};
use crate::policy::org::OrgNumber;
use crate::policy::profile::{
    ClientName, DEFAULT_CLIENT, Exchange, Profile, ProfileName, Profiles, SystemUser,
};
use crate::tokens::budget::{self, Breaker};
use crate::tokens::cache::{CacheKey, Purpose, TokenSource};
use crate::tokens::token::Token;
use crate::upstream::client::Target;
use crate::upstream::clock::Clock;
use crate::upstream::fetch::{FetchError, Fetcher};
use crate::upstream::retry::RetryPolicy;

/// What a reload replaces.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The default Maskinporten client (top-level `client_id`, `kid`, `key`).
    pub fetcher: Fetcher,
    /// The clients of `maskinporten_clients`, by name.
    pub clients: BTreeMap<ClientName, Fetcher>,
    pub profiles: Profiles,
    pub default_org: Option<OrgNumber>,
    /// `on_demand.scopes`: what `GET /token?scope=` may ask for; empty turns it off.
    pub on_demand: ScopePatterns,
    /// Where the token endpoint was discovered, for the daily re-read; `None` when configured.
    pub discovery: Option<crate::upstream::discovery::Plan>,
}

impl Generation {
    /// Every Maskinporten client with its name, the default first.
    pub fn fetchers(&self) -> impl Iterator<Item = (&str, &Fetcher)> {
        std::iter::once((DEFAULT_CLIENT, &self.fetcher))
            .chain(self.clients.iter().map(|(n, f)| (n.as_str(), f)))
    }

    /// The Maskinporten client called `name`.
    pub fn fetcher(&self, name: &ClientName) -> Result<&Fetcher, ResolveError> {
        if name.as_str() == DEFAULT_CLIENT {
            return Ok(&self.fetcher);
        }
        self.clients
            .get(name)
            .ok_or_else(|| ResolveError::UnknownClient {
                name: name.to_string(),
            })
    }

    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> Result<Arc<Profile>, ResolveError> {
        self.profiles
            .get(name)
            .cloned()
            .ok_or_else(|| ResolveError::UnknownProfile {
                name: name.to_owned(),
                known: self.profiles.names().join(", "),
            })
    }

    /// Turn a request's profile name and optional org into a cache key, applying the profile's
    /// system-user rule and the configured default organisation.
    pub fn resolve(
        &self,
        name: &str,
        org: Option<OrgNumber>,
    ) -> Result<(Arc<Profile>, CacheKey), ResolveError> {
        let profile = self.profile(name)?;
        let org =
            match (profile.system_user, org) {
                (SystemUser::None, Some(_)) => {
                    return Err(ResolveError::OrgNotAllowed {
                        profile: name.to_owned(),
                    });
                }
                (SystemUser::None, None) => None,
                (SystemUser::Optional, org) => org,
                (SystemUser::Required, Some(org)) => Some(org),
                (SystemUser::Required, None) => Some(self.default_org.clone().ok_or_else(
                    || ResolveError::OrgRequired {
                        profile: name.to_owned(),
                    },
                )?),
            };
        let key = CacheKey {
            client: profile.client.clone(),
            profile: profile.name.clone(),
            org,
            on_demand: None,
            consent: None,
        };
        Ok((profile, key))
    }

    /// Turn a consent token request into a cache key: one per consent and scope, signed by the
    /// Maskinporten client of the profile that made the consent requests (`consent_profile`).
    /// `consent.scopes` (the caller's `allowed`) must match the scope.
    pub fn resolve_consent(
        &self,
        consent: ConsentToken,
        consent_profile: &str,
        allowed: &ScopePatterns,
    ) -> Result<(Arc<Profile>, CacheKey), ResolveError> {
        if !allowed.allows(&consent.scope) {
            return Err(ResolveError::ConsentScopeNotAllowed {
                scope: consent.scope,
            });
        }
        let client = self.profile(consent_profile)?.client.clone();
        let consent = Arc::new(consent);
        let profile = Arc::new(Profile::for_consent(&consent, client));
        let key = CacheKey {
            client: profile.client.clone(),
            profile: profile.name.clone(),
            org: None,
            on_demand: None,
            consent: Some(consent),
        };
        Ok((profile, key))
    }

    /// Turn an on-demand request into a cache key, if `on_demand.scopes` allows every scope.
    pub fn resolve_on_demand(
        &self,
        request: OnDemandRequest,
        org: Option<OrgNumber>,
    ) -> Result<(Arc<Profile>, CacheKey), ResolveError> {
        if self.on_demand.is_empty() {
            return Err(ResolveError::OnDemandOff);
        }
        if let Some(scope) = request.first_outside(&self.on_demand) {
            return Err(ResolveError::ScopeNotAllowed {
                scope: scope.to_owned(),
            });
        }
        let profile = Arc::new(request.profile());
        // On-demand requests use the default Maskinporten client (`request.profile()` says so).
        let key = CacheKey {
            client: profile.client.clone(),
            profile: profile.name.clone(),
            org,
            on_demand: Some(Arc::new(request)),
            consent: None,
        };
        Ok((profile, key))
    }
}

/// Why a request does not name a token the broker can make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("there is no profile named {name:?}; the profiles are: {known}")]
    UnknownProfile { name: String, known: String },
    #[error("profile {profile:?} does not use a system user, so it takes no org parameter")]
    OrgNotAllowed { profile: String },
    #[error(
        "profile {profile:?} needs a system user: pass ?org=<organisation number> or set default_org in the config"
    )]
    OrgRequired { profile: String },
    #[error(
        "on-demand tokens are off: list the scopes callers may ask for under on_demand.scopes in the config"
    )]
    OnDemandOff,
    #[error("scope {scope:?} is not allowed: on_demand.scopes in the config does not list it")]
    ScopeNotAllowed { scope: String },
    #[error(
        "scope {scope:?} is not allowed in a consent token: consent.scopes in the config does not list it"
    )]
    ConsentScopeNotAllowed { scope: String },
    #[error(
        "there is no Maskinporten client named {name:?} since the last reload; ask again for the profile"
    )]
    UnknownClient { name: String },
}

/// Why the source has no token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

pub struct Broker {
    generation: ArcSwap<Generation>,
    clock: Arc<Clock>,
    retry: RetryPolicy,
    health: Mutex<BTreeMap<&'static str, UpstreamHealth>>,
    maskinporten: Breaker,
    altinn: Breaker,
}

/// What the broker last saw of one upstream, for `/readyz`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpstreamHealth {
    /// Failed fetches since the last success.
    pub consecutive_failures: u32,
    /// The last failure, without secrets (status, OAuth error, MP-code).
    pub last_error: Option<String>,
    pub last_success: Option<String>,
}

impl Broker {
    pub fn new(generation: Generation, clock: Arc<Clock>, retry: RetryPolicy) -> Self {
        Broker {
            generation: ArcSwap::from_pointee(generation),
            clock,
            retry,
            health: Mutex::new(BTreeMap::new()),
            maskinporten: Breaker::default(),
            altinn: Breaker::default(),
        }
    }

    /// The state of each upstream that has been called.
    pub fn health(&self) -> BTreeMap<&'static str, UpstreamHealth> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The signer (HSM, Vault) stands before Maskinporten on every fetch: while it fails,
    /// holding back Maskinporten's background refreshes holds back exactly the fetches it fails.
    fn breaker(&self, target: Target) -> &Breaker {
        match target {
            Target::Maskinporten | Target::Signer => &self.maskinporten,
            Target::Altinn => &self.altinn,
        }
    }

    /// Feed each upstream's breaker with how a fetch ended: a transient failure of the target
    /// that failed; every upstream before it (or all, on success) answered.
    fn record_breakers(&self, profile: &Profile, result: &Result<Token, FetchError>) {
        let up = budget::Outcome::Up;
        match result {
            Ok(_) => {
                self.maskinporten.record(up);
                if profile.exchange == Exchange::Altinn {
                    self.altinn.record(up);
                }
            }
            Err(FetchError::Upstream(e)) => {
                if e.target() == Target::Altinn {
                    self.maskinporten.record(up);
                }
                let outcome = if e.is_transient() {
                    budget::Outcome::Down {
                        retry_after: e.retry_after(),
                    }
                } else {
                    up
                };
                self.breaker(e.target()).record(outcome);
            }
            Err(FetchError::Grant(_)) => {}
        }
    }

    /// `remote_signer`: the key is in an HSM or Vault, whose state `/readyz` shows as `signer`.
    fn record(&self, profile: &Profile, remote_signer: bool, result: &Result<Token, FetchError>) {
        self.record_breakers(profile, result);
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::tokens::token::rfc3339(self.clock.now());
        let mut ok = |target: Target| {
            let h = health.entry(target.as_str()).or_default();
            h.consecutive_failures = 0;
            h.last_success = Some(now.clone());
        };
        let signed = match result {
            Ok(_) => true,
            Err(FetchError::Upstream(e)) => e.target() != Target::Signer,
            Err(FetchError::Grant(_)) => false,
        };
        if signed && remote_signer {
            ok(Target::Signer);
        }
        match result {
            Ok(_) => {
                ok(Target::Maskinporten);
                if profile.exchange == Exchange::Altinn {
                    ok(Target::Altinn);
                }
            }
            Err(FetchError::Upstream(e)) => {
                if e.target() == Target::Altinn {
                    ok(Target::Maskinporten);
                }
                let h = health.entry(e.target().as_str()).or_default();
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
                h.last_error = Some(format!("{now}: {e}"));
            }
            Err(FetchError::Grant(_)) => {}
        }
    }

    pub fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Post to `token_url` from now on, if the current generation still discovers with `plan`
    /// (a reload in between wins).
    pub fn set_token_url(&self, plan: &crate::upstream::discovery::Plan, token_url: url::Url) {
        self.generation.rcu(|current| {
            if current.discovery.as_ref() == Some(plan) {
                Arc::new(Generation {
                    fetcher: current.fetcher.with_token_url(token_url.clone()),
                    ..Generation::clone(current)
                })
            } else {
                Arc::clone(current)
            }
        });
    }

    /// Install a new generation (key rotation, config reload).
    /// Sign the default client's grants with `key` from now on (a rotation switched keys).
    pub fn replace_default_key(&self, key: crate::key::SigningKey) {
        self.generation.rcu(|current| {
            let mut fetcher = current.fetcher.clone();
            fetcher.key = key.clone();
            Arc::new(Generation {
                fetcher,
                ..Generation::clone(current)
            })
        });
    }

    pub fn replace(&self, generation: Generation) {
        self.generation.store(Arc::new(generation));
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// The configured profile `name` refers to, if any: a metric label that the raw path of a
    /// request cannot grow.
    pub fn profile_name(&self, name: &str) -> Option<ProfileName> {
        self.generation
            .load()
            .profiles
            .get(name)
            .map(|p| p.name.clone())
    }

    /// [`Generation::resolve`] with the current generation.
    pub fn resolve(
        &self,
        name: &str,
        org: Option<OrgNumber>,
    ) -> Result<(Arc<Profile>, CacheKey), ResolveError> {
        self.generation.load().resolve(name, org)
    }

    /// [`Generation::resolve_on_demand`] with the current generation.
    pub fn resolve_on_demand(
        &self,
        request: OnDemandRequest,
        org: Option<OrgNumber>,
    ) -> Result<(Arc<Profile>, CacheKey), ResolveError> {
        self.generation.load().resolve_on_demand(request, org)
    }
}

impl TokenSource for Broker {
    type Error = SourceError;

    async fn fetch(&self, key: &CacheKey, purpose: Purpose) -> Result<Token, SourceError> {
        let generation = self.generation.load_full();
        let profile = match (&key.on_demand, &key.consent) {
            (Some(request), _) => Arc::new(request.profile()),
            (None, Some(consent)) => Arc::new(Profile::for_consent(consent, key.client.clone())),
            (None, None) => generation.profile(key.profile.as_str())?,
        };
        let org = key.org.as_ref();
        let clock = &self.clock;
        let fetcher = generation.fetcher(&key.client)?;
        let result = match purpose {
            Purpose::Caller => {
                // The generation's own timeout: http_client is reloadable.
                let retry = RetryPolicy {
                    attempt_timeout: fetcher.timeout,
                    ..self.retry.clone()
                };
                retry.run(|| fetcher.fetch(&profile, org, clock)).await
            }
            // One attempt: the cache holds the breakers' probes (`admit_background`) meanwhile.
            Purpose::Background => fetcher.fetch(&profile, org, clock).await,
        };
        self.record(&profile, fetcher.key.location().is_some(), &result);
        let mut token = result?;
        if let Some(consent) = &key.consent {
            // Never past the consent's validTo, as read from Altinn or as the token says.
            let valid_to = consent.valid_to.into_iter().chain(consent_valid_to(&token));
            token.expires_at = valid_to.fold(token.expires_at, SystemTime::min);
        }
        Ok(token)
    }

    type Gate<'a> = (budget::Probe<'a>, Option<budget::Probe<'a>>);

    /// One probe per open breaker of the upstreams this key's fetch calls, Maskinporten's first
    /// (always the same order).
    fn admit_background<'a>(
        &'a self,
        key: &CacheKey,
    ) -> impl std::future::Future<Output = Self::Gate<'a>> + Send + 'a {
        let exchange = match &key.on_demand {
            Some(request) => Some(request.exchange),
            None => self
                .generation
                .load()
                .profiles
                .get(key.profile.as_str())
                .map(|p| p.exchange),
        };
        async move {
            let maskinporten = self.maskinporten.admit_background().await;
            let altinn = match exchange {
                Some(Exchange::Altinn) => Some(self.altinn.admit_background().await),
                _ => None,
            };
            (maskinporten, altinn)
        }
    }

    fn retry_after(error: &SourceError) -> Option<std::time::Duration> {
        match error {
            SourceError::Fetch(FetchError::Upstream(u)) => u.retry_after(),
            _ => None,
        }
    }

    fn is_permanent(error: &SourceError) -> bool {
        match error {
            SourceError::Resolve(_) => true,
            SourceError::Fetch(FetchError::Grant(_)) => true,
            SourceError::Fetch(FetchError::Upstream(u)) => !u.is_transient(),
        }
    }
}

/// The earliest `validTo` in a consent token's `authorization_details` (Maskinporten copies the
/// consent's there); `None` when the token says none.
fn consent_valid_to(token: &Token) -> Option<SystemTime> {
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(token.value.expose()).ok()?;
    claims
        .get("authorization_details")?
        .as_array()?
        .iter()
        .filter_map(|d| d.get("validTo")?.as_str())
        .filter_map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(SystemTime::from)
        .min()
}

//! The token source: (profile, organisation) → grant → Maskinporten → (Altinn) → [`Token`].
//!
//! This is where the protocol steps meet: it signs a grant with the current key, posts it, checks
//! that the answer belongs to the configured environment, and exchanges it at Altinn when the
//! profile says so. It makes one attempt per upstream; retrying and caching are the callers' job.

use std::time::{Duration, SystemTime};

use crate::config::Endpoints;
use crate::key::SigningKey;
use crate::key::secret::Secret;
use crate::policy::org::OrgNumber;
use crate::policy::profile::{Exchange, Profile};
use crate::tokens::token::{Token, from_unix_seconds, unverified_claims};
use crate::upstream::altinn::AltinnClient;
use crate::upstream::client::{self, Target, UpstreamError};
use crate::upstream::clock::Clock;
use crate::upstream::grant::{GrantError, GrantRequest, build_jwt_grant};
use crate::upstream::maskinporten::MaskinportenClient;

/// Everything needed to get a token from one environment with one key.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub client_id: String,
    pub key: SigningKey,
    pub endpoints: Endpoints,
    /// `http_client.timeout`: the longest one upstream call may take.
    pub timeout: Duration,
    /// `exp - iat` of each grant (`grant.lifetime`).
    grant_lifetime: Duration,
    maskinporten: MaskinportenClient,
    altinn: AltinnClient,
}

/// Why no token could be fetched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Grant(#[from] std::sync::Arc<GrantError>),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl Fetcher {
    pub fn new(
        client_id: String,
        key: SigningKey,
        endpoints: Endpoints,
        grant_lifetime: Duration,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Self {
        Fetcher {
            maskinporten: MaskinportenClient::new(
                http.clone(),
                endpoints.token_url.clone(),
                timeout,
            ),
            altinn: AltinnClient::new(http, endpoints.altinn_exchange_url.clone(), timeout),
            client_id,
            key,
            endpoints,
            timeout,
            grant_lifetime,
        }
    }

    /// The generation's HTTP client, which this fetcher's upstream calls go through.
    pub fn http(&self) -> &reqwest::Client {
        self.maskinporten.http()
    }

    /// The same fetcher posting to another token endpoint.
    pub fn with_token_url(&self, token_url: url::Url) -> Self {
        let mut fetcher = self.clone();
        fetcher.maskinporten = self.maskinporten.with_token_url(token_url.clone());
        fetcher.endpoints.token_url = token_url;
        fetcher
    }

    /// The signed grant for a profile (also what `maskinporten-broker grant` prints).
    pub async fn grant(
        &self,
        profile: &Profile,
        org: Option<&OrgNumber>,
        now: SystemTime,
    ) -> Result<Secret, GrantError> {
        build_jwt_grant(
            &self.key,
            &GrantRequest {
                client_id: &self.client_id,
                audience: &self.endpoints.issuer,
                profile,
                org,
                now,
                lifetime: self.grant_lifetime,
            },
        )
        .await
    }

    /// One attempt at a fresh token for `profile` (and the system user of `org`).
    pub async fn fetch(
        &self,
        profile: &Profile,
        org: Option<&OrgNumber>,
        clock: &Clock,
    ) -> Result<Token, FetchError> {
        // A signer out of reach or refusing fails like an upstream (503, retried, breaker).
        let grant = match self.grant(profile, org, clock.now()).await {
            Ok(grant) => grant,
            Err(GrantError::Sign(e)) => return Err(UpstreamError::from(e).into()),
            Err(e) => return Err(std::sync::Arc::new(e).into()),
        };
        let started = clock.now();
        // The checks run inside the observed call so an unusable answer counts as "invalid".
        let mp = client::observe(Target::Maskinporten, async {
            let mp = self
                .maskinporten
                .request_token(&grant)
                .await
                .map_err(|e| name_expired_kid(e, self.key.kid()))?;
            observe_date(clock, mp.server_date);
            self.check_maskinporten_token(&mp.access_token, clock.now())?;
            Ok(mp)
        })
        .await?;
        // expires_in is clamped to MAX_LIFETIME (checked arithmetic: 1e12 or u64::MAX is no panic).
        let maskinporten_token =
            Token::new(mp.access_token, started, mp.expires_in, mp.scope.into());
        match profile.exchange {
            Exchange::None => Ok(maskinporten_token),
            Exchange::Altinn => {
                let altinn = client::observe(Target::Altinn, async {
                    let altinn = self.altinn.exchange(&maskinporten_token.value).await?;
                    observe_date(clock, altinn.server_date);
                    if altinn.expires_at.is_some_and(|at| at <= clock.now()) {
                        return Err(UpstreamError::Invalid {
                            target: Target::Altinn,
                            reason: "the Altinn token has already expired (check the clock of this host)".into(),
                        });
                    }
                    Ok(altinn)
                })
                .await?;
                let now = clock.now();
                let issued_at = altinn.expires_at.map_or(now, |at| now.min(at));
                Ok(Token::until(
                    altinn.token,
                    issued_at,
                    altinn.expires_at,
                    maskinporten_token.scope.clone(),
                ))
            }
        }
    }

    /// A Maskinporten token must come from the configured issuer and not be expired already: a
    /// token from another environment would only fail later, with a confusing 401 at the API.
    fn check_maskinporten_token(
        &self,
        token: &Secret,
        now: SystemTime,
    ) -> Result<(), UpstreamError> {
        let invalid = |reason: String| UpstreamError::Invalid {
            target: Target::Maskinporten,
            reason,
        };
        // Maskinporten's tokens are JWTs; an opaque (by-reference) token has nothing to check.
        let Ok(claims) = unverified_claims(token.expose()) else {
            return Ok(());
        };
        if let Some(iss) = &claims.iss
            && iss.trim_end_matches('/') != self.endpoints.issuer.trim_end_matches('/')
        {
            return Err(invalid(format!(
                "the token was issued by {iss}, not by the configured issuer {}: a token from another environment",
                self.endpoints.issuer
            )));
        }
        if let Some(exp) = claims.exp
            && from_unix_seconds(exp).is_some_and(|at| at <= now)
        {
            return Err(invalid("the access token has already expired".into()));
        }
        Ok(())
    }
}

/// An MP-121 refusal names the kid that expired: the operator renews that one.
fn name_expired_kid(error: UpstreamError, kid: Option<&str>) -> UpstreamError {
    match error {
        UpstreamError::Refused {
            target,
            status,
            error,
            description,
            code,
            hint,
        } if code.as_deref() == Some("MP-121") => UpstreamError::Refused {
            target,
            status,
            error,
            description: Some(format!(
                "{} (the expired key is kid {})",
                description.unwrap_or_default(),
                kid.unwrap_or("(none)")
            )),
            code,
            hint,
        },
        other => other,
    }
}

fn observe_date(clock: &Clock, date: Option<SystemTime>) {
    if let Some(date) = date {
        clock.observe(date, SystemTime::now());
    }
}

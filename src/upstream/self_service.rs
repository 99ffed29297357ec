//! Digdir's self-service API for one client's key set: `GET {api}clients/{client_id}/jwks` reads
//! it, `POST` the same path replaces the whole set (there is no call for one key). Each key Digdir
//! holds carries its own `exp` (unix seconds); a set holds at most 5 keys.
//!
//! The token for the API comes from Maskinporten through a separate self-service client whose
//! grant carries the business certificate (`x5c`), with the scopes `idporten:dcr.read` and
//! `idporten:dcr.write`. This module must never send a private key member: every key is cut down
//! to its public members before it leaves, and never log or return the admin token.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use crate::key::MAX_KEYS_PER_CLIENT;
use crate::key::secret::Secret;
use crate::policy::profile::{ClientName, Exchange, Profile, ProfileName, SystemUser};
use crate::upstream::clock::Clock;
use crate::upstream::fetch::{FetchError, Fetcher};

/// The largest answer read from the API: a set of 5 RSA keys is about 3 KiB.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The members a public RSA JWK sends to Digdir; everything else (`d`, `p`, `q`, `dp`, `dq`,
/// `qi`, `oth`, and any member of our own) stays home.
const PUBLIC_MEMBERS: [&str; 6] = ["kid", "kty", "alg", "use", "n", "e"];

/// One key as Digdir holds it: its public members and its `exp`.
#[derive(Debug, Clone, PartialEq)]
pub struct DigdirKey {
    pub kid: String,
    /// When Digdir stops accepting grants signed with it; absent if Digdir did not say.
    pub exp: Option<SystemTime>,
    /// The public JWK (only [`PUBLIC_MEMBERS`]).
    pub jwk: Value,
}

impl DigdirKey {
    /// A public JWK cut down to its public members; `None` without a `kid`.
    pub fn from_jwk(jwk: &Value) -> Option<DigdirKey> {
        let exp = jwk
            .get("exp")
            .and_then(Value::as_u64)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let kid = jwk.get("kid")?.as_str()?.to_owned();
        Some(DigdirKey {
            kid,
            exp,
            jwk: public_only(jwk),
        })
    }
}

/// Only the public members of a JWK.
pub fn public_only(jwk: &Value) -> Value {
    let mut out = Map::new();
    for member in PUBLIC_MEMBERS {
        if let Some(v) = jwk.get(member) {
            out.insert(member.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

/// Why the key set could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SelfServiceError {
    #[error(
        "cannot get a token for Digdir's self-service API from Maskinporten (key_rotation.self_service)"
    )]
    Token(#[source] FetchError),
    #[error("Digdir's self-service API ({url}) refused {method} with HTTP {status}{detail}")]
    Refused {
        method: &'static str,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("Digdir's self-service API ({url}) is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Digdir's self-service API ({url}) did not answer within {}", humantime::format_duration(*.after))]
    Timeout { url: String, after: Duration },
    #[error("Digdir's self-service API ({url}) sent an unusable answer: {reason}")]
    Invalid { url: String, reason: String },
    #[error(
        "the key set would hold {count} keys; Digdir accepts at most {MAX_KEYS_PER_CLIENT} per client: remove a key no replica or app uses any more (Digdir's self-service portal) and try again"
    )]
    TooManyKeys { count: usize },
}

impl SelfServiceError {
    /// The status for a log line and `/readyz`: the HTTP status, or what went wrong instead.
    pub fn status(&self) -> String {
        match self {
            SelfServiceError::Token(_) => "token".into(),
            SelfServiceError::Refused { status, .. } => status.to_string(),
            SelfServiceError::Unreachable { .. } => "unreachable".into(),
            SelfServiceError::Timeout { .. } => "timeout".into(),
            SelfServiceError::Invalid { .. } => "invalid".into(),
            SelfServiceError::TooManyKeys { .. } => "too_many_keys".into(),
        }
    }
}

#[derive(Deserialize)]
struct SetAnswer {
    #[serde(default)]
    keys: Vec<Value>,
}

/// A client of the self-service API for one managed client id.
#[derive(Clone)]
pub struct SelfServiceClient {
    api: Url,
    /// Signs the self-service client's grants (with `x5c`) and posts them to Maskinporten.
    admin: Fetcher,
    scopes: Vec<String>,
    clock: std::sync::Arc<Clock>,
}

impl std::fmt::Debug for SelfServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfServiceClient")
            .field("api", &self.api.as_str())
            .field("admin_client", &self.admin.client_id)
            .finish()
    }
}

impl SelfServiceClient {
    pub fn new(api: Url, admin: Fetcher, scopes: Vec<String>) -> Self {
        SelfServiceClient {
            api,
            admin,
            scopes,
            clock: Default::default(),
        }
    }

    /// The self-service client's key (the simulator of `env: local` registers it).
    pub fn admin_key(&self) -> &crate::key::SigningKey {
        &self.admin.key
    }

    /// The API's base URL (for log lines).
    pub fn api(&self) -> &Url {
        &self.api
    }

    fn url(&self, client_id: &str) -> Url {
        let mut url = self.api.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["clients", client_id, "jwks"]);
        }
        url
    }

    /// A fresh admin token (the self-service client's grant carries its certificate).
    async fn token(&self) -> Result<Secret, SelfServiceError> {
        let profile = Profile {
            name: ProfileName::new("key_rotation"),
            scopes: self.scopes.clone(),
            exchange: Exchange::None,
            system_user: SystemUser::None,
            client: ClientName::default_client(),
            resource: None,
            consumer_org: None,
            external_ref: None,
            consent: None,
        };
        let token = self
            .admin
            .fetch(&profile, None, &self.clock)
            .await
            .map_err(SelfServiceError::Token)?;
        Ok(token.value)
    }

    /// The key set Digdir holds for `client_id`.
    pub async fn read(&self, client_id: &str) -> Result<Vec<DigdirKey>, SelfServiceError> {
        let token = self.token().await?;
        let request = self.admin.http().get(self.url(client_id));
        self.send("GET", client_id, request, &token).await
    }

    /// Post `set` without the kids `old` (retired keys); the set Digdir holds afterwards.
    pub async fn retire(
        &self,
        client_id: &str,
        set: &[DigdirKey],
        old: &[String],
    ) -> Result<Vec<DigdirKey>, SelfServiceError> {
        let keep: Vec<Value> = set
            .iter()
            .filter(|k| !old.contains(&k.kid))
            .map(|k| k.jwk.clone())
            .collect();
        self.replace(client_id, &keep).await
    }

    /// Replace the whole set with `keys` (public members only; at most 5), and return the set
    /// Digdir holds afterwards.
    pub async fn replace(
        &self,
        client_id: &str,
        keys: &[Value],
    ) -> Result<Vec<DigdirKey>, SelfServiceError> {
        if keys.len() > MAX_KEYS_PER_CLIENT {
            return Err(SelfServiceError::TooManyKeys { count: keys.len() });
        }
        let keys: Vec<Value> = keys.iter().map(public_only).collect();
        let token = self.token().await?;
        let request = self
            .admin
            .http()
            .post(self.url(client_id))
            .json(&serde_json::json!({ "keys": keys }));
        self.send("POST", client_id, request, &token).await
    }

    async fn send(
        &self,
        method: &'static str,
        client_id: &str,
        request: reqwest::RequestBuilder,
        token: &Secret,
    ) -> Result<Vec<DigdirKey>, SelfServiceError> {
        let url = self.url(client_id).to_string();
        let after = self.admin.timeout;
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                SelfServiceError::Timeout {
                    url: url.clone(),
                    after,
                }
            } else {
                SelfServiceError::Unreachable {
                    url: url.clone(),
                    reason: crate::telemetry::Chain(&e).to_string(),
                }
            }
        };
        let mut response = request
            .bearer_auth(token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(after)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body = match crate::body::read(&mut response, MAX_BODY).await {
            Ok(body) => body,
            Err(crate::body::BodyError::Transport(e)) => return Err(transport(e)),
            Err(crate::body::BodyError::TooLarge) => {
                return Err(SelfServiceError::Invalid {
                    url,
                    reason: format!("the answer is larger than {MAX_BODY} bytes"),
                });
            }
        };
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            let detail = if !text.is_empty() && text.len() <= 300 && !text.contains("eyJ") {
                format!(": {text}")
            } else {
                String::new()
            };
            return Err(SelfServiceError::Refused {
                method,
                url,
                status,
                detail,
            });
        }
        let answer: SetAnswer =
            serde_json::from_slice(&body).map_err(|e| SelfServiceError::Invalid {
                url: url.clone(),
                reason: format!("not a key set ({e})"),
            })?;
        Ok(answer.keys.iter().filter_map(DigdirKey::from_jwk).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_members_never_survive() {
        let jwk = serde_json::json!({"kid": "a", "kty": "RSA", "n": "x", "e": "AQAB", "d": "secret", "p": "1", "q": "2", "dp": "3", "dq": "4", "qi": "5", "exp": 7});
        let out = public_only(&jwk);
        assert_eq!(out.as_object().unwrap().len(), 4);
        for m in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(out.get(m).is_none(), "{m}");
        }
        let key = DigdirKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            key.exp,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(7))
        );
    }
}

//! Introspection for API providers, as nais/texas offers it: is this Maskinporten or Altinn token
//! valid, and what does it say? Verified offline against the issuer's published keys (Maskinporten:
//! `{issuer}jwk`; Altinn: `{altinn_platform}authentication/api/v1/openid/.well-known/openid-configuration/jwks`,
//! issuer `{altinn_platform}authentication/api/v1/openid/`), with the same re-read limit on
//! unknown kids as workload identity. `introspection.audience` and `introspection.scopes` narrow
//! what counts as active.
//!
//! The answer is always a JSON object: `{"active": true, ...claims}` or `{"active": false,
//! "error": "..."}` with texas's error strings. It never logs the token.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::identity::jwks::{KeySet, Source};
use super::identity::jwt::{self, Expect, Invalid};

/// Altinn's OpenID issuer, under the platform base.
const ALTINN_ISSUER_PATH: &str = "authentication/api/v1/openid/";
/// Altinn's JWKS, under the issuer.
const ALTINN_JWKS_PATH: &str = ".well-known/openid-configuration/jwks";

/// `introspection:` in broker.yaml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntrospectionSettings {
    /// Only tokens whose `aud` contains this are active (audience-restricted tokens).
    pub audience: Option<String>,
    /// Only tokens with at least one of these scopes (in their space-separated `scope`) are
    /// active.
    pub scopes: Option<Vec<String>>,
}

impl IntrospectionSettings {
    pub(crate) fn check(&self, problems: &mut Vec<String>) {
        if self
            .audience
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            problems.push("introspection.audience: must not be empty (or leave it out)".into());
        }
        if self
            .scopes
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.iter().any(|s| s.trim().is_empty()))
        {
            problems.push(
                "introspection.scopes: list at least one scope, none empty (or leave it out)"
                    .into(),
            );
        }
    }
}

struct Provider {
    issuer: String,
    keys: Arc<KeySet>,
}

/// The two identity providers whose tokens can be introspected.
pub struct Introspection {
    maskinporten: Provider,
    altinn: Provider,
    settings: IntrospectionSettings,
}

impl Introspection {
    /// For a Maskinporten issuer and an Altinn platform base (the default Maskinporten client's
    /// environment); keys are read on first use.
    pub fn new(
        mp_issuer: &str,
        altinn_platform: &url::Url,
        http: reqwest::Client,
        settings: IntrospectionSettings,
    ) -> Self {
        let mp_issuer = mp_issuer.to_owned();
        let mp_jwks = format!("{}/jwk", mp_issuer.trim_end_matches('/'));
        let altinn_issuer = altinn_platform
            .join(ALTINN_ISSUER_PATH)
            .map(String::from)
            .unwrap_or_default();
        let altinn_jwks = format!("{altinn_issuer}{ALTINN_JWKS_PATH}");
        let provider = |name: &str, issuer: String, jwks: String| Provider {
            keys: Arc::new(KeySet::new(
                format!("introspection.{name}"),
                match url::Url::parse(&jwks) {
                    Ok(url) => Source::Jwks(url),
                    Err(_) => Source::Discovery {
                        issuer: issuer.clone(),
                    },
                },
                http.clone(),
                None,
            )),
            issuer,
        };
        Introspection {
            maskinporten: provider("maskinporten", mp_issuer, mp_jwks),
            altinn: provider("altinn", altinn_issuer, altinn_jwks),
            settings,
        }
    }

    /// `{"active": true, ...claims}` or `{"active": false, "error": ...}`.
    pub async fn introspect(&self, identity_provider: &str, token: &str) -> Map<String, Value> {
        let provider = match identity_provider {
            "maskinporten" => &self.maskinporten,
            "altinn" => &self.altinn,
            other => {
                let shown: String = other.chars().take(40).collect();
                return inactive(format!("identity provider '{shown}' is not enabled"));
            }
        };
        let expect = Expect {
            issuer: &provider.issuer,
            audience: self.settings.audience.as_deref(),
            require_iat: true,
        };
        let mut verified = jwt::verify(token, &provider.keys, expect);
        if verified == Err(Invalid::UnknownKey) {
            provider.keys.reread().await;
            verified = jwt::verify(token, &provider.keys, expect);
        }
        let claims = match verified {
            Ok(claims) => claims,
            Err(invalid) => return inactive(invalid.texas()),
        };
        if let Some(wanted) = &self.settings.scopes {
            let scope = claims.get("scope").and_then(Value::as_str).unwrap_or("");
            if !scope.split(' ').any(|s| wanted.iter().any(|w| w == s)) {
                return inactive(
                    "invalid token: none of the scopes in introspection.scopes".into(),
                );
            }
        }
        let mut answer = Map::new();
        answer.insert("active".into(), Value::Bool(true));
        answer.extend(claims.into_iter().filter(|(k, _)| k != "active"));
        answer
    }
}

fn inactive(error: String) -> Map<String, Value> {
    let mut answer = Map::new();
    answer.insert("active".into(), Value::Bool(false));
    answer.insert("error".into(), Value::String(error));
    answer
}

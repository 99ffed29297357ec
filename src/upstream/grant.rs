//! `build_jwt_grant`: the signed JWT (RFC 7523) the broker posts to Maskinporten.
//!
//! Exactly the claims the reference library sends: `iss` = `sub` = client id, `aud` = the
//! Maskinporten issuer, `scope`, `iat`, `exp` (`grant.lifetime`, at most 120 s after `iat`), a
//! fresh random `jti`; header `alg`, `kid` when the key has one, and `x5c` (the business
//! certificate chain, leaf first, standard base64 DER) when the key came with certificates. With an
//! organisation it adds the system-user `authorization_details`.
//! The header and claims are built and hashed here (SHA-256/384/512 of `header.payload`, from
//! `key.algorithm`); the key's signer turns the digest into the signature, in memory for a key
//! file, in an HSM or Vault for a key held there.
//! This module knows nothing about caches or HTTP; it turns inputs into one signed string.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::config::MAX_GRANT_LIFETIME;
use crate::key::secret::Secret;
use crate::key::{SignError, SigningKey};
use crate::policy::org::OrgNumber;
use crate::policy::profile::Profile;
use crate::tokens::token::unix_seconds;

/// Everything a grant depends on besides the key.
#[derive(Debug, Clone)]
pub struct GrantRequest<'a> {
    pub client_id: &'a str,
    /// The Maskinporten issuer, trailing slash included (`https://maskinporten.no/`).
    pub audience: &'a str,
    pub profile: &'a Profile,
    /// The system user's organisation, when the grant is for one.
    pub org: Option<&'a OrgNumber>,
    /// `iat`; the caller passes a clock corrected for upstream skew.
    pub now: SystemTime,
    /// `exp - iat`; capped at [`MAX_GRANT_LIFETIME`].
    pub lifetime: Duration,
}

#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    scope: String,
    iat: u64,
    exp: u64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_org: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization_details: Option<[Detail<'a>; 1]>,
}

/// The one `authorization_details` entry a grant may carry.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    SystemUser(SystemUserDetail<'a>),
    Consent(ConsentDetail),
}

/// A consent token's detail: the consent and who gave it (PROTOCOL.md, "Altinn consent").
#[derive(Debug, Serialize)]
struct ConsentDetail {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    from: String,
}

#[derive(Debug, Serialize)]
struct SystemUserDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    systemuser_org: SystemUserOrg,
    #[serde(rename = "externalRef", skip_serializing_if = "Option::is_none")]
    external_ref: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct SystemUserOrg {
    authority: &'static str,
    #[serde(rename = "ID")]
    id: String,
}

/// Why a grant could not be signed: the signer failed (an HSM or Vault out of reach or refusing;
/// practically never for a key file, validated at load), or the header or claims did not encode.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("cannot sign the JWT grant")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Build and sign a JWT grant.
pub async fn build_jwt_grant(
    key: &SigningKey,
    req: &GrantRequest<'_>,
) -> Result<Secret, GrantError> {
    let iat = unix_seconds(req.now);
    let lifetime = req.lifetime.min(MAX_GRANT_LIFETIME).as_secs().max(1);
    let claims = Claims {
        iss: req.client_id,
        sub: req.client_id,
        aud: req.audience,
        scope: req.profile.scope(),
        iat,
        exp: iat + lifetime,
        jti: uuid::Uuid::new_v4().to_string(),
        resource: req.profile.resource.as_deref(),
        consumer_org: req.profile.consumer_org.as_deref(),
        authorization_details: match (&req.profile.consent, req.org) {
            (Some(consent), _) => Some([Detail::Consent(ConsentDetail {
                kind: crate::policy::consent::CONSENT_TYPE,
                id: consent.id.to_string(),
                from: consent.from.urn(),
            })]),
            (None, Some(org)) => Some([Detail::SystemUser(SystemUserDetail {
                kind: "urn:altinn:systemuser",
                systemuser_org: SystemUserOrg {
                    authority: "iso6523-actorid-upis",
                    id: org.iso6523(),
                },
                external_ref: req.profile.external_ref.as_deref(),
            })]),
            (None, None) => None,
        },
    };
    let mut header = jsonwebtoken::Header::new(key.algorithm().jwt());
    header.kid = key.kid().map(str::to_owned);
    header.x5c = key.x5c();
    // The JWS compact form, as jsonwebtoken::encode writes it: base64url(JSON) of each part.
    let part = |json: Result<Vec<u8>, serde_json::Error>| {
        json.map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
            .map_err(GrantError::Encode)
    };
    let input = format!(
        "{}.{}",
        part(serde_json::to_vec(&header))?,
        part(serde_json::to_vec(&claims))?
    );
    let digest = key.algorithm().digest(input.as_bytes());
    let signature = key.signer().sign_grant(key.algorithm(), digest).await?;
    Ok(Secret::new(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Algorithm;
    use crate::policy::profile::{ProfileName, Profiles};
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::{Value, json};

    const PEM: &str = include_str!("../../tests/fixtures/client-key.pem");
    const PUB: &str = include_str!("../../tests/fixtures/client-key.pub.pem");

    fn key(alg: Algorithm) -> SigningKey {
        SigningKey::from_pem(PEM, "my-kid", alg).unwrap()
    }

    fn profile(name: &str) -> Profile {
        let p = Profiles::from_settings(&Default::default()).unwrap();
        p.get(name).unwrap().as_ref().clone()
    }

    /// Verify the signature with the public key and return header and claims.
    fn verify(grant: &Secret, alg: Algorithm) -> (jsonwebtoken::Header, Value) {
        let mut v = Validation::new(alg.jwt());
        v.set_audience(&["https://test.maskinporten.no/"]);
        v.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Value>(
            grant.expose(),
            &DecodingKey::from_rsa_pem(PUB.as_bytes()).unwrap(),
            &v,
        )
        .expect("grant verifies with the public key");
        (data.header, data.claims)
    }

    fn request<'a>(profile: &'a Profile, org: Option<&'a OrgNumber>) -> GrantRequest<'a> {
        GrantRequest {
            client_id: "client-123",
            audience: "https://test.maskinporten.no/",
            profile,
            org,
            now: SystemTime::now(),
            lifetime: Duration::from_secs(120),
        }
    }

    #[tokio::test]
    async fn carries_exactly_the_reference_claims() {
        let p = profile("admin");
        let req = request(&p, None);
        let (header, claims) = verify(
            &build_jwt_grant(&key(Algorithm::RS256), &req).await.unwrap(),
            Algorithm::RS256,
        );
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("my-kid"));
        assert_eq!(claims["iss"], "client-123");
        assert_eq!(claims["sub"], "client-123");
        assert_eq!(claims["aud"], "https://test.maskinporten.no/");
        assert_eq!(
            claims["scope"],
            "altinn:authentication/systemregister.write altinn:authentication/systemuser.request.read altinn:authentication/systemuser.request.write"
        );
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(iat, unix_seconds(req.now));
        assert_eq!(claims["exp"].as_u64().unwrap() - iat, 120);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
        let mut keys: Vec<&str> = claims
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(keys, ["aud", "exp", "iat", "iss", "jti", "scope", "sub"]);
    }

    #[tokio::test]
    async fn lifetime_is_capped_at_120_seconds() {
        let p = profile("altinn");
        let mut req = request(&p, None);
        req.lifetime = Duration::from_secs(600);
        let (_, claims) = verify(
            &build_jwt_grant(&key(Algorithm::RS256), &req).await.unwrap(),
            Algorithm::RS256,
        );
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            120
        );
    }

    #[tokio::test]
    async fn every_grant_has_a_fresh_jti() {
        let p = profile("altinn");
        let k = key(Algorithm::RS256);
        let mut jtis = std::collections::HashSet::new();
        for _ in 0..20 {
            let grant = build_jwt_grant(&k, &request(&p, None)).await.unwrap();
            let jti = verify(&grant, Algorithm::RS256).1["jti"]
                .as_str()
                .unwrap()
                .to_owned();
            jtis.insert(jti);
        }
        assert_eq!(jtis.len(), 20);
    }

    #[tokio::test]
    async fn a_key_file_signs_exactly_as_jsonwebtoken_does() {
        // The signer split changes nothing for key files: same header, same signature bytes.
        let p = profile("admin");
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            let grant = build_jwt_grant(&key(alg), &request(&p, None))
                .await
                .unwrap();
            let (input, signature) = grant.expose().rsplit_once('.').unwrap();
            let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(PEM.as_bytes()).unwrap();
            let theirs =
                jsonwebtoken::crypto::sign(input.as_bytes(), &encoding, alg.jwt()).unwrap();
            assert_eq!(signature, theirs);
            let header: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(input.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                header,
                json!({"typ": "JWT", "alg": alg.name(), "kid": "my-kid"})
            );
        }
    }

    #[tokio::test]
    async fn system_user_grant_carries_authorization_details() {
        let p = profile("skd");
        let org: OrgNumber = "991825827".parse().unwrap();
        let (_, claims) = verify(
            &build_jwt_grant(&key(Algorithm::RS512), &request(&p, Some(&org)))
                .await
                .unwrap(),
            Algorithm::RS512,
        );
        assert_eq!(
            claims["authorization_details"],
            json!([{"type": "urn:altinn:systemuser",
                    "systemuser_org": {"authority": "iso6523-actorid-upis", "ID": "0192:991825827"}}])
        );
    }

    #[tokio::test]
    async fn profile_extras_become_claims() {
        let mut p = profile("altinn");
        p.name = ProfileName::new("custom");
        p.resource = Some("https://api.example.no".into());
        p.consumer_org = Some("0192:974761076".into());
        p.external_ref = Some("ref-1".into());
        let org: OrgNumber = "991825827".parse().unwrap();
        let (_, claims) = verify(
            &build_jwt_grant(&key(Algorithm::RS384), &request(&p, Some(&org)))
                .await
                .unwrap(),
            Algorithm::RS384,
        );
        assert_eq!(claims["resource"], "https://api.example.no");
        assert_eq!(claims["consumer_org"], "0192:974761076");
        assert_eq!(claims["authorization_details"][0]["externalRef"], "ref-1");
    }

    #[tokio::test]
    async fn consent_grant_carries_the_consent_detail_and_the_providers_scope() {
        use crate::policy::consent::{ConsentToken, Party};
        let consent = std::sync::Arc::new(ConsentToken {
            id: "0b0b6c2e-4a44-4c45-9d4e-2f0f7d2b6a11".parse().unwrap(),
            from: Party::parse("15038512363").unwrap(),
            scope: "skatteetaten:inntekt".into(),
            valid_to: None,
        });
        let p = Profile::for_consent(
            &consent,
            crate::policy::profile::ClientName::default_client(),
        );
        let (_, claims) = verify(
            &build_jwt_grant(&key(Algorithm::RS256), &request(&p, None))
                .await
                .unwrap(),
            Algorithm::RS256,
        );
        assert_eq!(claims["scope"], "skatteetaten:inntekt");
        assert_eq!(
            claims["authorization_details"],
            json!([{"type": "urn:altinn:consent",
                    "id": "0b0b6c2e-4a44-4c45-9d4e-2f0f7d2b6a11",
                    "from": "urn:altinn:person:identifier-no:15038512363"}])
        );
    }
}

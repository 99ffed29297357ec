//! Offline verification of a JWT against a [`KeySet`]: the rules a workload token or a token sent
//! to introspection must pass, and why one did not.
//!
//! - `alg` is RS256/384/512, PS256/384/512, ES256 or ES384 and fits the key (never `none`, never
//!   HMAC: a public key must not become a shared secret);
//! - `kid` is required and names a key of the set;
//! - the signature verifies; `iss` equals the expected issuer; `aud` contains the expected
//!   audience when one is expected; `exp` is required and not past; `nbf` and `iat`, when
//!   present, are not in the future; each time check with [`LEEWAY`].
//!
//! It never logs or returns the token.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{Family, Key, KeySet};

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY: u64 = 60;

/// The algorithms accepted, by their `alg` names.
const ALLOWED: [(&str, Algorithm); 8] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
];

/// What a token must show.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    /// `aud` must contain this; `None`: `aud` is not checked.
    pub audience: Option<&'a str>,
    /// `iat` must be present (Maskinporten's tokens always carry it).
    pub require_iat: bool,
}

/// Why a token was refused. [`Invalid::texas`] is nais/texas's wording, [`Invalid::reason`] a
/// sentence for a `WWW-Authenticate` error description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not three base64url parts with a JSON header.
    Malformed,
    /// An `alg` outside the allow-list (`none`, `HS256`, ...), or one that does not fit the key.
    Algorithm(String),
    MissingKid,
    /// No key with the token's `kid`, even after a re-read.
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    Issuer,
    Audience,
    MissingClaim(String),
    /// A claim of the wrong type, or another failure of the JWT library.
    Other(String),
}

impl Invalid {
    /// nais/texas's error string for this refusal.
    pub fn texas(&self) -> String {
        match self {
            Invalid::Malformed => "invalid token header: InvalidToken".into(),
            Invalid::Algorithm(alg) => {
                format!("invalid token header: algorithm {alg} is not allowed")
            }
            Invalid::MissingKid => "missing key id from token header".into(),
            Invalid::UnknownKey => "token can not be validated with this identity provider".into(),
            Invalid::Signature => "invalid token: InvalidSignature".into(),
            Invalid::Expired => "invalid token: ExpiredSignature".into(),
            Invalid::NotYetValid => "invalid token: ImmatureSignature".into(),
            Invalid::IssuedInFuture => "invalid token: issued in the future (iat)".into(),
            Invalid::Issuer => "invalid token: InvalidIssuer".into(),
            Invalid::Audience => "invalid token: InvalidAudience".into(),
            Invalid::MissingClaim(c) => format!("invalid token: Missing required claim: {c}"),
            Invalid::Other(e) => format!("invalid token: {e}"),
        }
    }

    /// A sentence for the caller (`error_description`): what is wrong, without the token.
    pub fn reason(&self) -> String {
        match self {
            Invalid::Malformed => "the token is not a JWT".into(),
            Invalid::Algorithm(alg) => format!(
                "algorithm {alg} is not allowed (RS256/384/512, PS256/384/512, ES256/384 with the issuer's key)"
            ),
            Invalid::MissingKid => "the token header has no kid".into(),
            Invalid::UnknownKey => "unknown key: the issuer's keys have no such kid".into(),
            Invalid::Signature => "signature: the token's signature does not verify".into(),
            Invalid::Expired => "expired".into(),
            Invalid::NotYetValid => "not yet valid (nbf)".into(),
            Invalid::IssuedInFuture => "issued in the future (iat)".into(),
            Invalid::Issuer => "issuer: iss is not the configured issuer".into(),
            Invalid::Audience => "audience: aud does not contain the broker's audience".into(),
            Invalid::MissingClaim(c) => format!("the token has no {c} claim"),
            Invalid::Other(e) => format!("the token cannot be read: {e}"),
        }
    }
}

/// The header's `alg` and `kid`, checked against the allow-list; nothing verified yet.
fn header(token: &str) -> Result<(Algorithm, String), Invalid> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid::Malformed);
    };
    let head: Value = super::jwks::decode_b64(head)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Invalid::Malformed)?;
    let alg = head.get("alg").and_then(Value::as_str).unwrap_or("none");
    let alg = ALLOWED
        .iter()
        .find(|(name, _)| *name == alg)
        .map(|(_, a)| *a)
        .ok_or_else(|| {
            Invalid::Algorithm(
                alg.chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(16)
                    .collect(),
            )
        })?;
    match head.get("kid").and_then(Value::as_str) {
        Some(kid) if !kid.is_empty() => Ok((alg, kid.to_owned())),
        _ => Err(Invalid::MissingKid),
    }
}

/// The unverified claims, to choose the issuer whose keys verify it. Never trusted as such.
pub fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&super::jwks::decode_b64(payload)?).ok()
}

/// Whether a bearer credential looks like a JWT (three parts, a JSON header) rather than an API
/// key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.split('.').count() == 3
}

/// The outcome before any network: verified claims, a refusal, or "the kid is unknown" (the
/// caller may re-read the keys once and try again).
pub fn verify(
    token: &str,
    keys: &KeySet,
    expect: Expect<'_>,
) -> Result<Map<String, Value>, Invalid> {
    verify_keyed(token, keys, expect).map(|(claims, _)| claims)
}

/// The `kid` and the key that verified a token.
pub type VerifiedBy = (String, Arc<Key>);

/// [`verify`], with the `kid` and key that verified the token.
pub fn verify_keyed(
    token: &str,
    keys: &KeySet,
    expect: Expect<'_>,
) -> Result<(Map<String, Value>, VerifiedBy), Invalid> {
    let (alg, kid) = header(token)?;
    let key = keys.key(&kid).ok_or(Invalid::UnknownKey)?;
    let fits = matches!(
        (key.family, alg),
        (
            Family::Rsa,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (Family::P256, Algorithm::ES256)
            | (Family::P384, Algorithm::ES384)
    );
    let named = ALLOWED
        .iter()
        .find(|(_, a)| *a == alg)
        .map_or("", |(n, _)| n);
    if !fits || key.alg.as_deref().is_some_and(|a| a != named) {
        return Err(Invalid::Algorithm(named.to_owned()));
    }
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY;
    validation.validate_nbf = true;
    validation.set_issuer(&[expect.issuer]);
    let mut required = vec!["exp", "iss"];
    match expect.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Invalid::Signature,
            ErrorKind::ExpiredSignature => Invalid::Expired,
            ErrorKind::ImmatureSignature => Invalid::NotYetValid,
            ErrorKind::InvalidIssuer => Invalid::Issuer,
            ErrorKind::InvalidAudience => Invalid::Audience,
            ErrorKind::MissingRequiredClaim(c) => Invalid::MissingClaim(c.clone()),
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => Invalid::Malformed,
            ErrorKind::InvalidAlgorithm => Invalid::Algorithm(named.to_owned()),
            other => Invalid::Other(format!("{other:?}")),
        })?;
    let claims = data.claims;
    let now = jsonwebtoken::get_current_timestamp();
    match claims.get("iat") {
        Some(iat) => match iat.as_f64() {
            Some(iat) if iat <= now.saturating_add(LEEWAY) as f64 => {}
            Some(_) => return Err(Invalid::IssuedInFuture),
            None => return Err(Invalid::Other("iat is not a number".into())),
        },
        None if expect.require_iat => return Err(Invalid::MissingClaim("iat".into())),
        None => {}
    }
    Ok((claims, (kid, key)))
}

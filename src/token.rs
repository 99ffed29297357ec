//! The token value the cache holds and the HTTP layer serves.
//!
//! A [`Token`] knows when it expires in wall-clock time, so "never serve an expired token" is a
//! comparison, not a guess. Its lifetime always comes from the upstream (`expires_in` from
//! Maskinporten, `exp` inside Altinn's JWT), never from an assumption.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::secret::Secret;

/// An access token ready to hand out.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: Secret,
    /// When the broker received it (local clock); with `expires_at` this gives the lifetime.
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// The scopes Maskinporten granted (space separated); shared, as tokens are cloned per request.
    pub scope: Arc<str>,
}

impl Token {
    /// Time left at `now`; zero once expired.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }

    /// The whole lifetime from receipt to expiry.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }
}

/// The registered claims the broker reads from a JWT it did not sign (and does not verify: the
/// upstream that just handed it over over TLS is the authority).
#[derive(Debug, Clone, Deserialize)]
pub struct UnverifiedClaims {
    pub iss: Option<String>,
    pub exp: Option<u64>,
}

/// Why a token is not a readable JWT. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtShapeError {
    #[error("is not a JWT (expected three base64url parts separated by dots)")]
    NotThreeParts,
    #[error("has a payload that is not base64url-encoded JSON")]
    BadPayload,
}

/// Read the claims of a JWT without verifying its signature (jsonwebtoken's `insecure_decode`,
/// after checking the shape so the error says which part is wrong).
pub fn unverified_claims(jwt: &str) -> Result<UnverifiedClaims, JwtShapeError> {
    if jwt.split('.').count() != 3 {
        return Err(JwtShapeError::NotThreeParts);
    }
    jsonwebtoken::dangerous::insecure_decode_claims(jwt).map_err(|_| JwtShapeError::BadPayload)
}

/// Seconds since the Unix epoch, the unit of JWT time claims.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

pub fn from_unix_seconds(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// RFC 3339 text for `expires_at` in responses, in UTC, whole seconds (as JWT `exp`).
pub fn rfc3339(t: SystemTime) -> String {
    let whole = from_unix_seconds(unix_seconds(t));
    time::OffsetDateTime::from(whole)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt_with(payload: &str) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp_iat_and_iss_without_verifying() {
        let claims = unverified_claims(&jwt_with(r#"{"iss":"x","exp":200,"iat":100}"#)).unwrap();
        assert_eq!(claims.iss.as_deref(), Some("x"));
        assert_eq!(claims.exp, Some(200));
        let all: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(jwt_with(
            r#"{"iss":"x","exp":200,"iat":100}"#,
        ))
        .unwrap();
        assert_eq!(all["iat"], 100);
    }

    #[test]
    fn refuses_things_that_are_not_jwts() {
        assert_eq!(
            unverified_claims("abc").unwrap_err(),
            JwtShapeError::NotThreeParts
        );
        assert_eq!(
            unverified_claims("a.b.c.d").unwrap_err(),
            JwtShapeError::NotThreeParts
        );
        assert_eq!(
            unverified_claims("a.!!!.c").unwrap_err(),
            JwtShapeError::BadPayload
        );
        assert_eq!(
            unverified_claims(&jwt_with("not json")).unwrap_err(),
            JwtShapeError::BadPayload
        );
    }

    #[test]
    fn remaining_is_zero_after_expiry() {
        let now = SystemTime::now();
        let t = Token {
            value: Secret::new("t"),
            issued_at: now - Duration::from_secs(10),
            expires_at: now + Duration::from_secs(5),
            scope: "".into(),
        };
        assert_eq!(t.remaining(now), Duration::from_secs(5));
        assert_eq!(t.remaining(now + Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(t.lifetime(), Duration::from_secs(15));
    }

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(rfc3339(from_unix_seconds(0)), "1970-01-01T00:00:00Z");
    }
}

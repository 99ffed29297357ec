//! The token value the cache holds and the HTTP layer serves.
//!
//! A [`Token`] knows when it expires in wall-clock time, so "never serve an expired token" is a
//! comparison, not a guess. Its lifetime always comes from the upstream (`expires_in` from
//! Maskinporten, `exp` inside Altinn's JWT), never from an assumption, and never longer than
//! [`MAX_LIFETIME`]: an upstream's absurd lifetime is clamped with checked arithmetic, never a
//! panic. A token also carries what the serving side remembers about it while it lives (its
//! shared rendering, who was told about it in the audit log), so that memory dies with it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use serde::Deserialize;

use crate::key::secret::Secret;

/// The longest lifetime the broker believes of any token (Maskinporten issues minutes, Altinn 30
/// minutes). A longer `expires_in` or `exp` is clamped to this: refreshing earlier is always safe.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// How many callers' names one token remembers having logged; more are not remembered (and so
/// are logged on each hit). Callers are configured clients, so this is rarely reached.
const MAX_AUDITED: usize = 64;

/// An access token ready to hand out. Shared (`Arc<Token>`) between the cache and every request.
#[derive(Debug)]
pub struct Token {
    pub value: Secret,
    /// When the broker received it (local clock); with `expires_at` this gives the lifetime.
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// The scopes Maskinporten granted (space separated).
    pub scope: Arc<str>,
    /// What the serving side remembers about this token; starts empty.
    pub served: Served,
}

/// Per-token memory of the serving side. It lives and dies with the token, so a refreshed token
/// never shares its predecessor's rendering and a render touches only its own key.
#[derive(Default)]
pub struct Served {
    /// The latest rendering of the answer, shared by every caller in the same second.
    pub rendering: ArcSwapOption<Rendering>,
    /// The same for texas's answer (`POST /api/v1/token`), which has its own shape.
    pub texas_rendering: ArcSwapOption<Rendering>,
    /// `Bearer <token>` as the egress proxy sends it (made on its first use; `None`: the token
    /// cannot be a header value).
    pub bearer: std::sync::OnceLock<Option<axum::http::HeaderValue>>,
    /// The callers already named in an audit line for this token (bounded by [`MAX_AUDITED`]).
    audited: ArcSwap<Vec<Arc<str>>>,
}

/// One rendering of a token's answer, exact for one value of `expires_in`.
pub struct Rendering {
    pub expires_in: u64,
    pub bytes: Bytes,
}

impl Served {
    /// Whether `caller` is told about this token for the first time (and remember that it was).
    pub fn first_for(&self, caller: &str) -> bool {
        if self.audited.load().iter().any(|c| &**c == caller) {
            return false;
        }
        let mut first = false;
        self.audited.rcu(|seen| {
            first = !seen.iter().any(|c| &**c == caller);
            let mut next = Vec::clone(seen);
            if first && next.len() < MAX_AUDITED {
                next.push(caller.into());
            }
            next
        });
        first
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Served { .. }")
    }
}

impl Token {
    /// A token received at `issued_at` that the upstream says lives `lifetime`, clamped to
    /// [`MAX_LIFETIME`].
    pub fn new(value: Secret, issued_at: SystemTime, lifetime: Duration, scope: Arc<str>) -> Self {
        Token::until(value, issued_at, issued_at.checked_add(lifetime), scope)
    }

    /// A token received at `issued_at` that expires at `expires_at` (`None`: beyond what a date
    /// can hold), clamped to [`MAX_LIFETIME`] after `issued_at`.
    pub fn until(
        value: Secret,
        issued_at: SystemTime,
        expires_at: Option<SystemTime>,
        scope: Arc<str>,
    ) -> Self {
        let latest = issued_at.checked_add(MAX_LIFETIME).unwrap_or(issued_at);
        Token {
            value,
            issued_at,
            expires_at: expires_at.map_or(latest, |at| at.min(latest)),
            scope,
            served: Served::default(),
        }
    }

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

/// The time of a JWT time claim; `None` when no date can hold it (an upstream's absurd `exp`).
pub fn from_unix_seconds(secs: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// RFC 3339 text for `expires_at` in responses, in UTC, whole seconds (as JWT `exp`); empty for
/// a time beyond the year 9999 (never reached: lifetimes are clamped to [`MAX_LIFETIME`]).
pub fn rfc3339(t: SystemTime) -> String {
    i64::try_from(unix_seconds(t))
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
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
        let t = Token::new(
            Secret::new("t"),
            now - Duration::from_secs(10),
            Duration::from_secs(15),
            "".into(),
        );
        assert_eq!(t.remaining(now), Duration::from_secs(5));
        assert_eq!(t.remaining(now + Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(t.lifetime(), Duration::from_secs(15));
    }

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(
            rfc3339(from_unix_seconds(0).unwrap()),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn absurd_lifetimes_are_clamped_not_a_panic() {
        let now = SystemTime::now();
        let t = Token::new(Secret::new("t"), now, Duration::MAX, "".into());
        assert_eq!(t.lifetime(), MAX_LIFETIME);
        let t = Token::until(
            Secret::new("t"),
            now,
            from_unix_seconds(u64::MAX),
            "".into(),
        );
        assert_eq!(t.lifetime(), MAX_LIFETIME);
        assert!(!rfc3339(t.expires_at).is_empty());
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(10u64.pow(13))), "");
    }

    #[test]
    fn each_caller_is_audited_once_per_token() {
        let t = Token::new(
            Secret::new("t"),
            SystemTime::now(),
            Duration::from_secs(60),
            "".into(),
        );
        assert!(t.served.first_for("app-a"));
        assert!(!t.served.first_for("app-a"));
        assert!(t.served.first_for("app-b"));
        for i in 0..2 * MAX_AUDITED {
            t.served.first_for(&format!("c{i}"));
        }
        assert!(t.served.audited.load().len() <= MAX_AUDITED);
    }

    proptest::proptest! {
        #[test]
        fn any_lifetime_or_exp_gives_a_token_without_panicking(secs in proptest::num::u64::ANY, exp in proptest::num::u64::ANY) {
            let now = SystemTime::now();
            let a = Token::new(Secret::new("t"), now, Duration::from_secs(secs), "".into());
            let b = Token::until(Secret::new("t"), now, from_unix_seconds(exp), "".into());
            for t in [a, b] {
                proptest::prop_assert!(t.lifetime() <= MAX_LIFETIME);
                let _ = rfc3339(t.expires_at);
                let _ = t.remaining(now);
            }
        }
    }
}

//! The JSON answers of `GET /token/{profile}`, rendered at most once a second per cached token.
//!
//! Every caller of one key gets the same bytes until `expires_in` ticks down a second, so the
//! cache-hit path shares one buffer instead of escaping a kilobyte of token into fresh JSON for
//! each request. An answer is only reused for the token it was rendered from (same value, same
//! expiry) and the same whole seconds left, so it is exactly what rendering anew would give. Nothing here is logged; `Debug` shows no body.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::body::Bytes;

use crate::cache::CacheKey;
use crate::profile::Profile;
use crate::secret::Secret;
use crate::token::Token;

use super::token::TokenResponse;

/// An answer not asked for during this long is dropped when the next one is stored.
const UNUSED_FOR: Duration = Duration::from_secs(60);

/// The latest answer per cache key.
#[derive(Default)]
pub struct TokenBodies {
    // Read on every request, written once a second per key: copy-on-write, lock-free reads.
    latest: ArcSwap<HashMap<CacheKey, Arc<Rendered>>>,
}

struct Rendered {
    token: Secret,
    expires_at: SystemTime,
    expires_in: u64,
    rendered_at: SystemTime,
    body: Bytes,
}

impl TokenBodies {
    /// The JSON answer for `token` at `now`: the shared one if it is still exact, else a new one.
    pub fn json(
        &self,
        token: &Token,
        key: &CacheKey,
        profile: &Profile,
        now: SystemTime,
    ) -> serde_json::Result<Bytes> {
        let expires_in = token.remaining(now).as_secs();
        if let Some(latest) = self.latest.load().get(key)
            && latest.token == token.value
            && latest.expires_at == token.expires_at
            && latest.expires_in == expires_in
        {
            return Ok(latest.body.clone());
        }
        let answer = TokenResponse::new(token, key, profile, now);
        let rendered = Arc::new(Rendered {
            token: token.value.clone(),
            expires_at: token.expires_at,
            expires_in: answer.expires_in,
            rendered_at: now,
            body: Bytes::from(serde_json::to_vec(&answer)?),
        });
        let body = rendered.body.clone();
        self.latest.rcu(|latest| {
            let mut next: HashMap<_, _> = latest
                .iter()
                .filter(|(_, r)| now.duration_since(r.rendered_at).unwrap_or_default() < UNUSED_FOR)
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect();
            next.insert(key.clone(), rendered.clone());
            next
        });
        Ok(body)
    }
}

impl std::fmt::Debug for TokenBodies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBodies")
            .field("keys", &self.latest.load().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{ProfileName, builtins};

    fn altinn() -> (Profile, CacheKey) {
        let profile = builtins().into_iter().find(|p| p.name.as_str() == "altinn");
        let profile = profile.expect("altinn is built in");
        let key = CacheKey {
            profile: ProfileName::new("altinn"),
            org: None,
            on_demand: None,
        };
        (profile, key)
    }

    fn token(value: &str, issued: SystemTime, lifetime: u64) -> Token {
        Token {
            value: Secret::new(value),
            issued_at: issued,
            expires_at: issued + Duration::from_secs(lifetime),
            scope: "altinn:instances.read".into(),
        }
    }

    fn parsed(body: &Bytes) -> serde_json::Value {
        serde_json::from_slice(body).expect("the body is JSON")
    }

    #[test]
    fn the_same_second_shares_one_body_and_the_next_second_renders_anew() {
        let (profile, key) = altinn();
        let bodies = TokenBodies::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = token("value-a", t0, 120);
        let first = bodies
            .json(&token, &key, &profile, t0 + Duration::from_millis(300))
            .unwrap();
        let same_second = bodies
            .json(&token, &key, &profile, t0 + Duration::from_millis(900))
            .unwrap();
        assert_eq!(first.as_ptr(), same_second.as_ptr(), "one shared buffer");
        assert_eq!(parsed(&first)["expires_in"], 119);

        let later = bodies
            .json(&token, &key, &profile, t0 + Duration::from_millis(1500))
            .unwrap();
        assert_eq!(parsed(&later)["expires_in"], 118);
        assert_eq!(parsed(&later)["access_token"], "value-a");
    }

    #[test]
    fn a_new_token_is_never_answered_with_the_old_body() {
        let (profile, key) = altinn();
        let bodies = TokenBodies::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        bodies
            .json(&token("old", t0, 120), &key, &profile, t0)
            .unwrap();
        // Same seconds left, different token.
        let fresh = bodies
            .json(&token("new", t0, 120), &key, &profile, t0)
            .unwrap();
        assert_eq!(parsed(&fresh)["access_token"], "new");
        // Same value, different expiry (an upstream that reuses token strings).
        let moved = token("new", t0 + Duration::from_secs(5), 115);
        let body = bodies.json(&moved, &key, &profile, t0).unwrap();
        assert_eq!(
            parsed(&body)["expires_at"],
            crate::token::rfc3339(moved.expires_at)
        );
    }

    #[test]
    fn the_body_is_what_rendering_anew_gives() {
        let (profile, key) = altinn();
        let bodies = TokenBodies::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = token("value-a", t0, 60);
        let now = t0 + Duration::from_millis(2300);
        bodies.json(&token, &key, &profile, now).unwrap();
        let shared = bodies.json(&token, &key, &profile, now).unwrap();
        let fresh = serde_json::to_vec(&TokenResponse::new(&token, &key, &profile, now)).unwrap();
        assert_eq!(shared.as_ref(), fresh.as_slice());
    }

    #[test]
    fn answers_unused_for_a_minute_are_dropped() {
        let (profile, key) = altinn();
        let other = CacheKey {
            profile: ProfileName::new("admin"),
            org: None,
            on_demand: None,
        };
        let bodies = TokenBodies::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = token("value-a", t0, 600);
        bodies.json(&token, &other, &profile, t0).unwrap();
        bodies.json(&token, &key, &profile, t0).unwrap();
        assert_eq!(bodies.latest.load().len(), 2);
        bodies
            .json(
                &token,
                &key,
                &profile,
                t0 + UNUSED_FOR + Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(bodies.latest.load().len(), 1);
        assert!(bodies.latest.load().contains_key(&key));
        assert!(!format!("{bodies:?}").contains("value-a"));
    }
}

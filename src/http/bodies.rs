//! The JSON answers of `GET /token/{profile}` (and, by [`shared`], of texas's `POST /api/v1/token`),
//! rendered at most once a second per cached token.
//!
//! Every caller of one key gets the same bytes until `expires_in` ticks down a second, so the
//! cache-hit path shares one buffer instead of escaping a kilobyte of token into fresh JSON for
//! each request. The rendering lives in the token itself ([`crate::tokens::token::Served`]): a render
//! touches only its own key, whatever the number of cached keys, a refreshed token never shares
//! its predecessor's answer, and the answer goes when the token does. It is reused only for the
//! same whole seconds left, so it is exactly what rendering anew would give. Nothing here is
//! logged.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::policy::profile::Profile;
use crate::tokens::cache::CacheKey;
use crate::tokens::token::{Rendering, Token};

use crate::tokens::answer::TokenResponse;

use super::problem::Problem;

/// The JSON answer for `token` (cached for `key`) at `now`: the shared one if it is still exact,
/// else a new one, which becomes the shared one.
pub fn json(
    token: &Token,
    key: &CacheKey,
    profile: &Profile,
    now: SystemTime,
) -> serde_json::Result<Bytes> {
    let expires_in = token.remaining(now).as_secs();
    shared(&token.served.rendering, expires_in, || {
        serde_json::to_vec(&TokenResponse::new(token, key, profile, now))
    })
}

/// A token answer: `body` as `content_type`, never to be stored by a cache on the way. Built
/// directly: `(headers, body).into_response()` would first set a content type of its own.
pub fn no_store(content_type: &'static str, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The 500 for an answer that could not be written as JSON.
pub fn unwritable(e: serde_json::Error) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        format!("the answer could not be written as JSON: {e}"),
    )
}

/// The bytes in `slot` if they were rendered for `expires_in`, else `render`'s, which take their
/// place. `render` must give `expires_in` as the answer's seconds left.
pub fn shared(
    slot: &ArcSwapOption<Rendering>,
    expires_in: u64,
    render: impl FnOnce() -> serde_json::Result<Vec<u8>>,
) -> serde_json::Result<Bytes> {
    if let Some(latest) = slot.load().as_ref()
        && latest.expires_in == expires_in
    {
        return Ok(latest.bytes.clone());
    }
    let bytes = Bytes::from(render()?);
    slot.store(Some(Arc::new(Rendering {
        expires_in,
        bytes: bytes.clone(),
    })));
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::secret::Secret;
    use crate::policy::profile::{ProfileName, builtins};
    use std::time::Duration;

    fn altinn() -> (Profile, CacheKey) {
        let profile = builtins().into_iter().find(|p| p.name.as_str() == "altinn");
        let profile = profile.expect("altinn is built in");
        let key = CacheKey {
            profile: ProfileName::new("altinn"),
            org: None,
            on_demand: None,
            client: crate::policy::profile::ClientName::default_client(),
            consent: None,
        };
        (profile, key)
    }

    fn token(value: &str, issued: SystemTime, lifetime: u64) -> Token {
        let scope = "altinn:instances.read".into();
        Token::new(
            Secret::new(value),
            issued,
            Duration::from_secs(lifetime),
            scope,
        )
    }

    fn parsed(body: &Bytes) -> serde_json::Value {
        serde_json::from_slice(body).expect("the body is JSON")
    }

    #[test]
    fn the_same_second_shares_one_body_and_the_next_second_renders_anew() {
        let (profile, key) = altinn();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = token("value-a", t0, 120);
        let first = json(&token, &key, &profile, t0 + Duration::from_millis(300)).unwrap();
        let same_second = json(&token, &key, &profile, t0 + Duration::from_millis(900)).unwrap();
        assert_eq!(first.as_ptr(), same_second.as_ptr(), "one shared buffer");
        assert_eq!(parsed(&first)["expires_in"], 119);

        let later = json(&token, &key, &profile, t0 + Duration::from_millis(1500)).unwrap();
        assert_eq!(parsed(&later)["expires_in"], 118);
        assert_eq!(parsed(&later)["access_token"], "value-a");
    }

    #[test]
    fn the_texas_answer_has_a_slot_of_its_own() {
        let (profile, key) = altinn();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = token("value-a", t0, 120);
        let ours = json(&token, &key, &profile, t0).unwrap();
        let mut renders = 0;
        let mut texas = || {
            shared(&token.served.texas_rendering, 120, || {
                renders += 1;
                Ok(b"{\"texas\":1}".to_vec())
            })
            .unwrap()
        };
        assert_eq!(texas().as_ref(), b"{\"texas\":1}", "not the other answer");
        assert_eq!(texas().as_ref(), b"{\"texas\":1}");
        assert_eq!(renders, 1, "rendered once for the same seconds left");
        assert_eq!(json(&token, &key, &profile, t0).unwrap(), ours);
    }

    #[test]
    fn a_new_token_is_never_answered_with_the_old_body() {
        let (profile, key) = altinn();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        json(&token("old", t0, 120), &key, &profile, t0).unwrap();
        // Same seconds left, different token.
        let fresh = json(&token("new", t0, 120), &key, &profile, t0).unwrap();
        assert_eq!(parsed(&fresh)["access_token"], "new");
        // Same value, different expiry (an upstream that reuses token strings).
        let moved = token("new", t0 + Duration::from_secs(5), 115);
        let body = json(&moved, &key, &profile, t0).unwrap();
        assert_eq!(
            parsed(&body)["expires_at"],
            crate::tokens::token::rfc3339(moved.expires_at)
        );
    }

    #[test]
    fn the_body_is_what_rendering_anew_gives() {
        let (profile, key) = altinn();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = token("value-a", t0, 60);
        let now = t0 + Duration::from_millis(2300);
        json(&token, &key, &profile, now).unwrap();
        let shared = json(&token, &key, &profile, now).unwrap();
        let fresh = serde_json::to_vec(&TokenResponse::new(&token, &key, &profile, now)).unwrap();
        assert_eq!(shared.as_ref(), fresh.as_slice());
    }

    #[test]
    fn a_render_touches_only_its_own_key_and_the_answer_goes_with_the_token() {
        let (profile, key) = altinn();
        let other = CacheKey {
            profile: ProfileName::new("admin"),
            org: None,
            on_demand: None,
            client: crate::policy::profile::ClientName::default_client(),
            consent: None,
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (mine, theirs) = (token("value-a", t0, 600), token("value-b", t0, 600));
        json(&theirs, &other, &profile, t0).unwrap();
        let before = theirs.served.rendering.load_full().unwrap();
        json(&mine, &key, &profile, t0).unwrap();
        json(&mine, &key, &profile, t0 + Duration::from_secs(61)).unwrap();
        let after = theirs.served.rendering.load_full().unwrap();
        assert!(
            Arc::ptr_eq(&before, &after),
            "the other key's answer is untouched"
        );
        let kept = std::sync::Arc::downgrade(&mine.served.rendering.load_full().unwrap());
        drop(mine);
        assert!(
            kept.upgrade().is_none(),
            "the answer is dropped with its token"
        );
        assert!(!format!("{theirs:?}").contains("value-b"));
    }
}

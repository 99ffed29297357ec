//! The JSON a token is served as: the answer of `GET /token/{profile}`, the content of a
//! `format: json` token file, and what `token --json` prints. One shape, written in one place.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::Serialize;

use crate::policy::profile::Profile;
use crate::tokens::cache::CacheKey;
use crate::tokens::token::{Token, rfc3339};

/// The JSON answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse<'a> {
    pub access_token: &'a str,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub expires_at: String,
    pub scope: Cow<'a, str>,
    pub profile: &'a str,
    pub org: Option<&'a str>,
}

impl<'a> TokenResponse<'a> {
    pub fn new(token: &'a Token, key: &'a CacheKey, profile: &Profile, now: SystemTime) -> Self {
        TokenResponse {
            access_token: token.value.expose(),
            token_type: "Bearer",
            expires_in: token.remaining(now).as_secs(),
            expires_at: rfc3339(token.expires_at),
            scope: if token.scope.is_empty() {
                Cow::Owned(profile.scope())
            } else {
                Cow::Borrowed(&token.scope)
            },
            profile: key.profile.as_str(),
            org: key.org.as_ref().map(|o| o.as_str()),
        }
    }
}

//! Client for Altinn's token exchange (`GET /authentication/api/v1/exchange/maskinporten`).
//!
//! Sends the Maskinporten token as Bearer and reads back the Altinn JWT, raw or JSON-quoted. The
//! Altinn token's lifetime is Altinn's own (30 minutes), read from its `exp`, never inherited from
//! the Maskinporten token.

use std::time::{Duration, SystemTime};

use url::Url;

use crate::key::secret::Secret;
use crate::tokens::token::{from_unix_seconds, unverified_claims};
use crate::upstream::client::{Target, UpstreamError, call};

/// An exchanged Altinn token.
#[derive(Debug, Clone)]
pub struct AltinnToken {
    pub token: Secret,
    /// The token's `exp`; `None` when no date can hold it (the token is then clamped).
    pub expires_at: Option<SystemTime>,
    pub server_date: Option<SystemTime>,
}

/// The exchange endpoint of one Altinn environment.
#[derive(Debug, Clone)]
pub struct AltinnClient {
    http: reqwest::Client,
    exchange_url: Url,
    timeout: Duration,
}

impl AltinnClient {
    pub fn new(http: reqwest::Client, exchange_url: Url, timeout: Duration) -> Self {
        AltinnClient {
            http,
            exchange_url,
            timeout,
        }
    }

    /// Exchange a Maskinporten token for an Altinn token.
    pub async fn exchange(
        &self,
        maskinporten_token: &Secret,
    ) -> Result<AltinnToken, UpstreamError> {
        let target = Target::Altinn;
        let request = self
            .http
            .get(self.exchange_url.clone())
            .bearer_auth(maskinporten_token.expose());
        let answer = call(target, request, self.timeout).await?;
        let (status, date) = (answer.status, answer.date);
        let body = String::from_utf8_lossy(&answer.body);
        let wait = answer.retry_after;
        if !(200..300).contains(&status) {
            let mut err = UpstreamError::from_status(target, status, wait, &body);
            if let UpstreamError::Refused { hint, .. } = &mut err
                && status == 401
            {
                *hint = Some(
                    "Altinn refused the Maskinporten token: it is invalid, expired or from another environment (check env and endpoints)",
                );
            }
            return Err(err);
        }
        let token = parse_body(&body)?;
        let invalid = |reason: &str| UpstreamError::Invalid {
            target,
            reason: reason.to_owned(),
        };
        let claims =
            unverified_claims(&token).map_err(|e| invalid(&format!("the Altinn token {e}")))?;
        let exp = claims
            .exp
            .ok_or_else(|| invalid("the Altinn token has no exp"))?;
        Ok(AltinnToken {
            token: Secret::new(token),
            expires_at: from_unix_seconds(exp),
            server_date: date,
        })
    }
}

/// The body is the JWT itself, or the JWT as a JSON string (with `Accept: application/json`).
fn parse_body(body: &str) -> Result<String, UpstreamError> {
    let text = body.trim();
    let token = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|_| UpstreamError::Invalid {
            target: Target::Altinn,
            reason: "the exchange response is a malformed JSON string".to_owned(),
        })?
    } else {
        text.to_owned()
    };
    if token.is_empty() {
        return Err(UpstreamError::Invalid {
            target: Target::Altinn,
            reason: "the exchange response is empty".to_owned(),
        });
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_raw_and_json_quoted_tokens() {
        assert_eq!(parse_body("a.b.c\n").unwrap(), "a.b.c");
        assert_eq!(parse_body("\"a.b.c\"").unwrap(), "a.b.c");
        assert!(parse_body("\"a.b.c").is_err());
        assert!(parse_body("  ").is_err());
    }
}

//! Client for Maskinporten's token endpoint.
//!
//! Posts a signed grant (form-encoded, RFC 7523) and parses either the token response or the OAuth
//! error, keeping the MP-code and adding a one-line hint for the codes PROTOCOL.md lists. It does not
//! build grants, cache or retry; it makes one call and says what happened.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use url::Url;

use crate::key::secret::Secret;
use crate::upstream::client::{Target, UpstreamError, call};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A successful token response.
#[derive(Debug, Clone)]
pub struct MaskinportenToken {
    pub access_token: Secret,
    pub expires_in: Duration,
    pub scope: String,
    /// The response's `Date` header, for clock-skew correction.
    pub server_date: Option<SystemTime>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<u64>,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

/// The token endpoint of one Maskinporten environment.
#[derive(Debug, Clone)]
pub struct MaskinportenClient {
    http: reqwest::Client,
    token_url: Url,
    timeout: Duration,
}

impl MaskinportenClient {
    pub fn new(http: reqwest::Client, token_url: Url, timeout: Duration) -> Self {
        MaskinportenClient {
            http,
            token_url,
            timeout,
        }
    }

    /// The HTTP client it posts with (shared by every upstream of its generation).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The same client for another token endpoint (the issuer's metadata named a new one).
    pub fn with_token_url(&self, token_url: Url) -> Self {
        MaskinportenClient {
            token_url,
            ..self.clone()
        }
    }

    /// Exchange a signed grant for an access token.
    pub async fn request_token(
        &self,
        assertion: &Secret,
    ) -> Result<MaskinportenToken, UpstreamError> {
        let target = Target::Maskinporten;
        let request = self
            .http
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", JWT_BEARER),
                ("assertion", assertion.expose()),
            ]);
        let answer = call(target, request, self.timeout).await?;
        let (status, body) = (answer.status, &answer.body);
        if answer.is_success() {
            return parse_success(body, answer.date);
        }
        if status == 429 || status >= 500 {
            return Err(UpstreamError::from_status(
                target,
                status,
                answer.retry_after,
                "",
            ));
        }
        match serde_json::from_slice::<ErrorResponse>(body) {
            Ok(err) if err.error.is_some() => {
                Err(refusal(status, err.error, err.error_description))
            }
            _ => Err(UpstreamError::from_status(
                target,
                status,
                answer.retry_after,
                &String::from_utf8_lossy(body),
            )),
        }
    }
}

fn parse_success(
    body: &[u8],
    date: Option<SystemTime>,
) -> Result<MaskinportenToken, UpstreamError> {
    let invalid = |reason: &str| UpstreamError::Invalid {
        target: Target::Maskinporten,
        reason: reason.to_owned(),
    };
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| invalid("the token response is not the expected JSON"))?;
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("the token response has no access_token"))?;
    let expires_in = parsed
        .expires_in
        .filter(|s| *s > 0)
        .ok_or_else(|| invalid("the token response has no positive expires_in"))?;
    let token_type = parsed.token_type.as_deref().unwrap_or("Bearer");
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(invalid("the token_type is not Bearer"));
    }
    Ok(MaskinportenToken {
        access_token: Secret::new(access_token),
        expires_in: Duration::from_secs(expires_in),
        scope: parsed.scope,
        server_date: date,
    })
}

fn refusal(status: u16, error: Option<String>, description: Option<String>) -> UpstreamError {
    let code = description.as_deref().and_then(mp_code);
    let hint = code.as_deref().and_then(hint_for);
    UpstreamError::Refused {
        target: Target::Maskinporten,
        status,
        error,
        description,
        code,
        hint,
    }
}

/// The first `MP-` followed by three digits in an error description.
pub fn mp_code(description: &str) -> Option<String> {
    let bytes = description.as_bytes();
    (0..bytes.len().saturating_sub(5)).find_map(|i| {
        let candidate = &bytes[i..i + 6];
        (candidate.starts_with(b"MP-") && candidate[3..].iter().all(u8::is_ascii_digit))
            .then(|| String::from_utf8_lossy(candidate).into_owned())
    })
}

/// What the person running the broker should do about a Maskinporten error code.
pub fn hint_for(code: &str) -> Option<&'static str> {
    Some(match code {
        "MP-100" => {
            "client not found: check client_id and that env matches the environment the client was registered in"
        }
        "MP-110" => {
            "invalid aud: the grant's audience must be the Maskinporten issuer of this environment (endpoints.issuer)"
        }
        "MP-120" => "invalid certificate, for example a production certificate used in test",
        "MP-121" => {
            "the registered key has expired (keys live one year from upload): renew it with `maskinporten-broker keys renew` (key_rotation, docs/keys.md) or post the same public key again in Digdir's self-service portal"
        }
        "MP-122" => "the certificate belongs to another organisation than the client",
        "MP-123" => "malformed x5c header",
        "MP-124" => {
            "invalid signature: the private key does not match kid (check key.path and kid)"
        }
        "MP-130" => {
            "the grant has expired: the clock of this host is off or the request was delayed"
        }
        "MP-011" => "an invalid parameter value was sent",
        "MP-012" => "the grant was already used (jti reused)",
        "MP-200" => "the scope is not registered on this client in Digdir's self-service portal",
        "MP-201" => "the scope is not allowed for this integration type",
        "MP-250" => "the organisation lacks access to this scope",
        "MP-251" => "no delegation of this scope to the supplier",
        "MP-301" => "unknown authorization_details type",
        "MP-302" => "unknown fields in authorization_details",
        "MP-303" => {
            "no usable system user for this organisation; one of three causes: (1) the organisation has not accepted a system user for your system (maskinporten-broker systemuser request --org N), (2) the system in Altinn's register does not list this client id in clientId (system.client_ids, then maskinporten-broker system register), or (3) the system user was created with an externalRef the grant does not carry (set externalRef in the profile to the request's external_ref)"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_code_anywhere_in_the_description() {
        assert_eq!(
            mp_code(
                "Invalid assertion. Client authentication failed. Invalid JWT signature. (MP-124)"
            )
            .as_deref(),
            Some("MP-124")
        );
        assert_eq!(mp_code("MP-012 jti used").as_deref(), Some("MP-012"));
        assert_eq!(mp_code("no code here"), None);
        assert_eq!(mp_code("MP-12"), None);
        assert_eq!(mp_code("ÆØÅ MP-"), None);
    }

    #[test]
    fn known_codes_have_hints() {
        assert!(
            hint_for("MP-124")
                .unwrap()
                .contains("private key does not match kid")
        );
        let mp303 = hint_for("MP-303").unwrap();
        for cause in ["has not accepted", "clientId", "externalRef"] {
            assert!(mp303.contains(cause), "{cause}");
        }
        assert_eq!(hint_for("MP-999"), None);
    }

    #[test]
    fn success_parsing_requires_token_and_lifetime() {
        let ok = parse_success(
            br#"{"access_token":"a.b.c","token_type":"Bearer","expires_in":120,"scope":"x"}"#,
            None,
        )
        .unwrap();
        assert_eq!(ok.expires_in, Duration::from_secs(120));
        assert_eq!(ok.scope, "x");
        assert!(parse_success(br#"{"token_type":"Bearer","expires_in":120}"#, None).is_err());
        assert!(parse_success(br#"{"access_token":"a","expires_in":0}"#, None).is_err());
        assert!(parse_success(b"<html>", None).is_err());
    }
}

//! Client for Altinn's consent request API, `{altinn_platform}accessmanagement/api/v1/
//! enterprise/consentrequests` (PROTOCOL.md, "Altinn consent"): create a request (idempotent by
//! the `id` the broker chooses) and read one.
//!
//! Every call carries the token it is given as Bearer and nothing else; answers are read up to
//! [`MAX_ANSWER_BYTES`]. A refusal's text from Altinn is passed on only with every run of eleven
//! digits masked: it may echo the fødselsnummer of the request.

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde_json::Value;
use url::Url;

use super::altinn_api::{AltinnApi, CallError};
use super::client::UpstreamError;
use super::register::field_of;
use crate::key::secret::Secret;

/// The largest answer read from Altinn: one consent request is a few KiB.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The statuses Altinn gives a consent request.
pub const STATUSES: &[&str] = &[
    "Created", "Accepted", "Rejected", "Revoked", "Deleted", "Expired",
];

/// Why a consent call gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsentApiError {
    /// Altinn answered with a 4xx.
    #[error("Altinn refused {call} with HTTP {status}: {advice}")]
    Refused {
        call: &'static str,
        status: u16,
        advice: String,
    },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("Altinn sent an unusable answer to {call}: {reason}")]
    Invalid { call: &'static str, reason: String },
}

/// A consent request as Altinn answers it (the parts the broker uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    pub id: String,
    /// One of [`STATUSES`] (Altinn's spelling normalised), or what Altinn sent.
    pub status: String,
    pub view_uri: Option<String>,
    /// RFC 3339, as Altinn sent it.
    pub valid_to: Option<String>,
    /// The `from` URN (a person's holds a fødselsnummer: never print it).
    pub from: Option<String>,
}

/// Altinn's consent request API on one platform.
#[derive(Debug, Clone)]
pub struct ConsentApi {
    http: reqwest::Client,
    /// `{altinn_platform}accessmanagement/api/v1/enterprise/consentrequests/`.
    base: Url,
    timeout: Duration,
}

impl ConsentApi {
    pub fn new(http: reqwest::Client, platform: &Url, timeout: Duration) -> Self {
        let base = platform
            .join("accessmanagement/api/v1/enterprise/consentrequests/")
            .unwrap_or_else(|_| platform.clone());
        ConsentApi {
            http,
            base,
            timeout,
        }
    }

    /// `POST …/consentrequests`: `true` with a new request (201), `false` when one with this
    /// `id` existed (200).
    pub async fn create<B: Serialize>(
        &self,
        token: &Secret,
        body: &B,
    ) -> Result<(bool, ConsentRecord), ConsentApiError> {
        let call = "POST consentrequests";
        let url = self.base.as_str().trim_end_matches('/').to_owned();
        let url = Url::parse(&url).map_err(|e| invalid(call, e.to_string()))?;
        let body = serde_json::to_value(body).map_err(|e| invalid(call, e.to_string()))?;
        let (status, answer) = self
            .send(Method::POST, url, call, token, Some(&body))
            .await?;
        Ok((status == 201, record(call, &answer)?))
    }

    /// `GET …/consentrequests/{id}`: `None` when Altinn has none.
    pub async fn read(
        &self,
        token: &Secret,
        id: &uuid::Uuid,
    ) -> Result<Option<ConsentRecord>, ConsentApiError> {
        let call = "GET consentrequests/{id}";
        let url = self
            .base
            .join(&id.to_string())
            .map_err(|e| invalid(call, e.to_string()))?;
        match self.send(Method::GET, url, call, token, None).await {
            Ok((_, answer)) => record(call, &answer).map(Some),
            Err(ConsentApiError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        call: &'static str,
        token: &Secret,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ConsentApiError> {
        let api = AltinnApi {
            http: &self.http,
            timeout: self.timeout,
            limit: MAX_ANSWER_BYTES,
            log: "Altinn consent call",
        };
        let (status, bytes) = match api.send(method, url, call, token, body).await {
            Ok(answer) => answer,
            Err(CallError::Upstream(e)) => return Err(e.into()),
            Err(CallError::TooLarge) => {
                return Err(invalid(
                    call,
                    format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                ));
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        if !(200..300).contains(&status) {
            return Err(refusal(call, status, &text));
        }
        serde_json::from_str(&text)
            .map(|v| (status, v))
            .map_err(|e| invalid(call, format!("not JSON: {e}")))
    }
}

/// A 4xx as a sentence: Altinn's own detail (masked, short), else what the status means.
fn refusal(call: &'static str, status: u16, body: &str) -> ConsentApiError {
    let detail = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        ["detail", "title"]
            .iter()
            .find_map(|f| field_of(&v, f).as_str().map(str::to_owned))
    });
    let detail = detail
        .filter(|d| d.len() <= 300 && !d.contains("eyJ"))
        .map(|d| mask_numbers(&d));
    let advice = match (status, detail) {
        (401, _) => "Altinn did not accept the token: check that env (test or prod) matches where the Maskinporten client is registered".to_owned(),
        (403, _) => "the token may not make this call: the Maskinporten client needs the scopes altinn:consentrequests.write and .read, and consent.org must be the client's own organisation".to_owned(),
        (_, Some(detail)) => format!("Altinn says: {detail}"),
        (_, None) => "Altinn gave no reason".to_owned(),
    };
    ConsentApiError::Refused {
        call,
        status,
        advice,
    }
}

/// Every run of eleven or more digits with all but its first six replaced by `*`.
pub fn mask_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 11 {
            out.push_str(&run[..6]);
            out.extend(std::iter::repeat_n('*', run.len() - 6));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn invalid(call: &'static str, reason: String) -> ConsentApiError {
    ConsentApiError::Invalid { call, reason }
}

fn record(call: &'static str, v: &Value) -> Result<ConsentRecord, ConsentApiError> {
    let text = |f: &str| field_of(v, f).as_str().map(str::to_owned);
    let id = text("id").ok_or_else(|| invalid(call, "a consent request without an id".into()))?;
    let status = text("status")
        .map(|s| {
            STATUSES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&s))
                .map_or(s, |k| (*k).to_owned())
        })
        .ok_or_else(|| invalid(call, "a consent request without a status".into()))?;
    Ok(ConsentRecord {
        id,
        status,
        view_uri: text("viewUri"),
        valid_to: text("validTo"),
        from: text("from"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_digit_runs_are_masked() {
        assert_eq!(
            mask_numbers("from urn:altinn:person:identifier-no:15038512363 is bad; org 991825827"),
            "from urn:altinn:person:identifier-no:150385***** is bad; org 991825827"
        );
    }

    #[test]
    fn a_record_needs_id_and_status_and_normalises_the_status() {
        let r = record(
            "x",
            &serde_json::json!({"id": "a", "status": "accepted", "viewUri": "https://v"}),
        )
        .unwrap();
        assert_eq!(r.status, "Accepted");
        assert!(record("x", &serde_json::json!({"id": "a"})).is_err());
    }
}

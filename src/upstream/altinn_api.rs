//! One call to an Altinn API that speaks JSON with a Bearer token (the system register, consent
//! requests): the request built the same way for each, the answer read to the caller's bound, and
//! a 429 or 5xx told apart as Altinn being unavailable. What a 4xx or the body means is the
//! caller's.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use url::Url;

use super::client::{Target, UpstreamError};
use crate::key::secret::Secret;

/// How a client calls its API.
pub(super) struct AltinnApi<'a> {
    pub http: &'a reqwest::Client,
    pub timeout: Duration,
    /// The largest answer read.
    pub limit: usize,
    /// The debug line's message, e.g. "Altinn register call".
    pub log: &'static str,
}

/// Why a call gave no answer to look at.
pub(super) enum CallError {
    /// No answer, a 429 or a 5xx, or a timeout.
    Upstream(UpstreamError),
    /// An answer over [`AltinnApi::limit`].
    TooLarge,
}

impl AltinnApi<'_> {
    /// `method url` with `token` as Bearer (and `body` as JSON): the status and the body of any
    /// answer but a 429 or 5xx. `call` names it in the debug line.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        call: &str,
        token: &Secret,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), CallError> {
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let target = Target::Altinn;
        let transport = |e: reqwest::Error| {
            CallError::Upstream(UpstreamError::from_transport(target, &e, self.timeout))
        };
        let started = std::time::Instant::now();
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = match crate::body::read(&mut response, self.limit).await {
            Ok(bytes) => bytes,
            Err(crate::body::BodyError::Transport(e)) => return Err(transport(e)),
            Err(crate::body::BodyError::TooLarge) => return Err(CallError::TooLarge),
        };
        tracing::debug!(
            call,
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "{}",
            self.log
        );
        if status == 429 || status >= 500 {
            return Err(CallError::Upstream(UpstreamError::from_status(
                target, status, None, "",
            )));
        }
        Ok((status, bytes))
    }
}

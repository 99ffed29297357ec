//! What the Maskinporten and Altinn clients share: the HTTP client and the error type.
//!
//! [`UpstreamError`] keeps what a person needs to act (upstream status, OAuth `error`, MP-code and a
//! hint) and whether trying again could help. It never holds a token or a grant.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::config::HttpClientSettings;

/// Which upstream a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Maskinporten,
    Altinn,
    /// The HSM or Vault that signs grants (`key.pkcs11`, `key.vault_transit`).
    Signer,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Maskinporten => "maskinporten",
            Target::Altinn => "altinn",
            Target::Signer => "signer",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Maskinporten => "Maskinporten",
            Target::Altinn => "Altinn",
            Target::Signer => "the signer",
        })
    }
}

/// A failed upstream call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered and said no (4xx). Trying again with the same grant will not help.
    #[error("{target} refused the request with HTTP {status}{}", describe(.error, .description))]
    Refused {
        target: Target,
        status: u16,
        error: Option<String>,
        description: Option<String>,
        code: Option<String>,
        hint: Option<&'static str>,
    },
    /// The upstream is overloaded or failing (5xx, 429): transient.
    #[error("{target} is unavailable (HTTP {status})")]
    Unavailable {
        target: Target,
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No connection could be made or it broke: transient.
    #[error("{target} is unreachable: {reason}")]
    Unreachable { target: Target, reason: String },
    /// No answer within `http_client.timeout`: transient.
    #[error("{target} did not answer within {}", humantime::format_duration(*.after))]
    Timeout { target: Target, after: Duration },
    /// An answer the broker cannot use (malformed, wrong issuer, already expired).
    #[error("{target} sent an unusable response: {reason}")]
    Invalid { target: Target, reason: String },
    /// The signer (HSM, Vault) gave no signature: out of reach, refusing or slow. Treated as
    /// transient: the signer may come back, a Vault token file may be rotated, a session renewed.
    #[error("cannot sign the grant: {0}")]
    Signer(crate::key::SignError),
}

impl From<crate::key::SignError> for UpstreamError {
    fn from(e: crate::key::SignError) -> Self {
        UpstreamError::Signer(e)
    }
}

fn describe(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(": {e}: {d}"),
        (Some(e), None) => format!(": {e}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

/// Run one upstream call, counting its outcome and timing it.
pub async fn observe<T>(
    target: Target,
    call: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    let started = std::time::Instant::now();
    let result = call.await;
    let outcome = result.as_ref().err().map_or("ok", UpstreamError::outcome);
    crate::telemetry::meters::upstream_call(target.as_str(), outcome, started.elapsed());
    result
}

impl UpstreamError {
    /// The outcome label of this failure on `/metrics`.
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::Refused { .. } => "refused",
            UpstreamError::Unavailable { .. } => "unavailable",
            UpstreamError::Unreachable { .. } => "unreachable",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Invalid { .. } => "invalid",
            UpstreamError::Signer(e) => e.failure.as_str(),
        }
    }

    pub fn target(&self) -> Target {
        match self {
            UpstreamError::Refused { target, .. }
            | UpstreamError::Unavailable { target, .. }
            | UpstreamError::Unreachable { target, .. }
            | UpstreamError::Timeout { target, .. }
            | UpstreamError::Invalid { target, .. } => *target,
            UpstreamError::Signer(_) => Target::Signer,
        }
    }

    /// Whether the same call might succeed a moment later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            UpstreamError::Unavailable { .. }
                | UpstreamError::Unreachable { .. }
                | UpstreamError::Timeout { .. }
                | UpstreamError::Signer(_)
        )
    }

    /// The upstream's own wish for when to try again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Classify a reqwest failure (no response at all).
    pub fn from_transport(target: Target, err: &reqwest::Error, timeout: Duration) -> Self {
        if err.is_timeout() {
            return UpstreamError::Timeout {
                target,
                after: timeout,
            };
        }
        // reqwest's own message is generic ("error sending request"); the cause says why.
        let mut reason = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        UpstreamError::Unreachable { target, reason }
    }

    /// Classify a non-success HTTP status whose body is not an OAuth error.
    pub fn from_status(
        target: Target,
        status: u16,
        retry_after: Option<Duration>,
        body: &str,
    ) -> Self {
        if status == 429 || status >= 500 {
            return UpstreamError::Unavailable {
                target,
                status,
                retry_after,
            };
        }
        let text = body.trim();
        UpstreamError::Refused {
            target,
            status,
            error: None,
            description: (!text.is_empty() && text.len() <= 300 && !text.contains("eyJ"))
                .then(|| text.to_owned()),
            code: None,
            hint: None,
        }
    }
}

/// What came back from one upstream call, read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The `Date` header, for clock-skew correction.
    pub date: Option<SystemTime>,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Send a request and read the whole answer; a transport failure becomes an [`UpstreamError`].
pub async fn call(
    target: Target,
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Answer, UpstreamError> {
    let transport = |e: reqwest::Error| UpstreamError::from_transport(target, &e, timeout);
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let date = server_date(response.headers());
    let retry_after = retry_after(response.headers());
    let limit = crate::body::MAX_UPSTREAM_BODY;
    let body = match crate::body::read(&mut response, limit).await {
        Ok(body) => body,
        Err(crate::body::BodyError::Transport(e)) => return Err(transport(e)),
        Err(crate::body::BodyError::TooLarge) => {
            return Err(UpstreamError::Invalid {
                target,
                reason: format!(
                    "the answer is longer than {}, the most the broker reads",
                    crate::body::shown(limit)
                ),
            });
        }
    };
    Ok(Answer {
        status,
        date,
        retry_after,
        body,
    })
}

/// The `Retry-After` header, either seconds or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The `Date` header, for clock-skew detection.
pub fn server_date(headers: &reqwest::header::HeaderMap) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(reqwest::header::DATE)?.to_str().ok()?).ok()
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("http_client.extra_ca_cert: cannot read {0}")]
    ReadCa(String, #[source] std::io::Error),
    #[error("http_client.extra_ca_cert: {0} is not a PEM certificate")]
    BadCa(String),
    #[error("http_client.proxy: not a usable proxy URL")]
    Proxy(#[source] reqwest::Error),
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("cannot build the HTTP client: no TLS protocol version available")]
    Tls,
}

/// The one HTTP client for all upstream calls: rustls, timeouts, optional proxy and extra CA.
pub fn http_client(settings: &HttpClientSettings) -> Result<reqwest::Client, ClientBuildError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .user_agent(concat!("maskinporten-broker/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(proxy) = &settings.proxy {
        builder =
            builder.proxy(reqwest::Proxy::all(proxy.as_str()).map_err(ClientBuildError::Proxy)?);
    } else {
        builder = builder.no_proxy();
    }
    if let Some(path) = &settings.extra_ca_cert {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| ClientBuildError::ReadCa(shown.clone(), e))?;
        let cert =
            reqwest::Certificate::from_pem(&pem).map_err(|_| ClientBuildError::BadCa(shown))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(ClientBuildError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        let t = Target::Maskinporten;
        assert!(UpstreamError::from_status(t, 503, None, "").is_transient());
        assert!(UpstreamError::from_status(t, 429, None, "").is_transient());
        assert!(!UpstreamError::from_status(t, 401, None, "").is_transient());
        assert!(!UpstreamError::from_status(t, 403, None, "").is_transient());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert("retry-after", later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}

//! Issuer metadata (RFC 8414): the token endpoint read from
//! `{issuer}.well-known/oauth-authorization-server`, as Digdir recommends instead of hard-coding it.
//!
//! The document is read at start-up and reload (before the broker serves with it) and re-read
//! daily in the background; a token request never waits for it. Its `issuer` must equal the
//! configured one, or the document describes another Maskinporten. For `test`/`prod` an unreadable
//! document means the built-in endpoints (with a warning); a custom issuer without `token_url`
//! has nothing to fall back to and refuses to start.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::config::{ClientView, Environment, Settings};
use crate::upstream::client::{Target, UpstreamError, call};

/// How often the document is re-read while the broker runs.
pub(crate) const REREAD_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// How soon a failed re-read is tried again (the endpoints read before keep serving).
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// The longest metadata document read; Maskinporten's is about 2 KiB.
const MAX_DOCUMENT: usize = 64 * 1024;

/// Where to read the metadata and what a failure means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The configured issuer; the document's `issuer` must equal it.
    pub(crate) issuer: String,
    pub(crate) url: Url,
    /// A custom issuer: no built-in endpoint to fall back to.
    pub(crate) required: bool,
}

/// What the document says, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub(crate) token_endpoint: Url,
}

/// Why the document could not be used. Never carries the document itself.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the issuer metadata at {url}")]
    Upstream {
        url: String,
        #[source]
        source: UpstreamError,
    },
    #[error("the issuer metadata at {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error(
        "the issuer metadata at {url} is not a JSON document with issuer and an absolute token_endpoint"
    )]
    Malformed { url: String },
    #[error(
        "the issuer metadata at {url} names issuer {found:?}, not the configured {configured:?}: check endpoints.issuer (trailing slash included)"
    )]
    IssuerMismatch {
        url: String,
        found: String,
        configured: String,
    },
}

impl Plan {
    /// The plan for these settings, if the token endpoint is to be discovered: not when
    /// `endpoints.token_url` is set or `endpoints.discovery: false`; in `local` only when
    /// `endpoints.discovery: true` (the simulator serves the document).
    pub(crate) fn of(settings: &Settings, issuer: &str) -> Option<Plan> {
        Plan::of_client(&settings.default_client(), issuer)
    }

    /// [`Plan::of`] for one Maskinporten client's environment and endpoints.
    pub(crate) fn of_client(client: &ClientView<'_>, issuer: &str) -> Option<Plan> {
        let e = client.endpoint_settings;
        if e.token_url.is_some() || e.discovery == Some(false) {
            return None;
        }
        if client.env == Environment::Local && e.discovery != Some(true) {
            return None;
        }
        let base = if issuer.ends_with('/') {
            issuer.to_owned()
        } else {
            format!("{issuer}/")
        };
        let url = Url::parse(&base)
            .and_then(|b| b.join(".well-known/oauth-authorization-server"))
            .ok()?;
        Some(Plan {
            issuer: issuer.to_owned(),
            url,
            required: e.issuer.is_some() && client.env != Environment::Local,
        })
    }

    /// Read and check the document once.
    pub(crate) async fn read(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Metadata, DiscoveryError> {
        let url = self.url.to_string();
        let request = http
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        let answer = call(Target::Maskinporten, request, timeout)
            .await
            .map_err(|source| DiscoveryError::Upstream {
                url: url.clone(),
                source,
            })?;
        if !answer.is_success() {
            return Err(DiscoveryError::Status {
                url,
                status: answer.status,
            });
        }
        #[derive(Deserialize)]
        struct Document {
            issuer: String,
            token_endpoint: Url,
        }
        let document: Document = (answer.body.len() <= MAX_DOCUMENT)
            .then(|| serde_json::from_slice(&answer.body).ok())
            .flatten()
            .ok_or_else(|| DiscoveryError::Malformed { url: url.clone() })?;
        if document.issuer != self.issuer {
            return Err(DiscoveryError::IssuerMismatch {
                url,
                found: document.issuer.chars().take(200).collect(),
                configured: self.issuer.clone(),
            });
        }
        Ok(Metadata {
            token_endpoint: document.token_endpoint,
        })
    }

    /// Read at start-up or reload: `Ok(None)` is a tolerated failure (built-in endpoints, with a
    /// warning); an `Err` refuses the configuration.
    pub(crate) async fn resolve(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Option<Metadata>, DiscoveryError> {
        match self.read(http, timeout).await {
            Ok(metadata) => {
                tracing::info!(issuer = %self.issuer, token_endpoint = %metadata.token_endpoint, "read the issuer metadata");
                Ok(Some(metadata))
            }
            Err(e) if !self.required => {
                tracing::warn!(
                    error = %crate::telemetry::Chain(&e),
                    "issuer metadata unreadable: using the built-in endpoints of the environment"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Re-read the document every `interval` (after a failure, every `retry`) for the plan and token
/// endpoint `current` names at that moment, with the HTTP client and timeout it names (those of
/// the current generation, so a reloaded `http_client` applies), and hand a changed endpoint to
/// `changed`; a failure only logs. Runs until the task is dropped or aborted.
pub(crate) async fn keep_fresh(
    current: impl Fn() -> Option<(Plan, Url, reqwest::Client, Duration)>,
    changed: impl Fn(&Plan, Url),
    (interval, retry): (Duration, Duration),
) {
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        wait = interval;
        let Some((plan, token_url, http, timeout)) = current() else {
            continue;
        };
        match plan.read(&http, timeout).await {
            Ok(metadata) if metadata.token_endpoint != token_url => {
                tracing::info!(token_endpoint = %metadata.token_endpoint, "the issuer metadata names a new token endpoint");
                changed(&plan, metadata.token_endpoint);
            }
            Ok(_) => {}
            Err(e) => {
                wait = retry;
                tracing::warn!(
                    error = %crate::telemetry::Chain(&e),
                    "re-reading the issuer metadata failed; the endpoints read before keep serving"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn settings(yaml: &str) -> Settings {
        Settings::from_yaml(yaml).unwrap()
    }

    #[test]
    fn which_configurations_discover() {
        let prod = settings("env: prod\n");
        let plan = Plan::of(&prod, "https://maskinporten.no/").unwrap();
        assert_eq!(
            plan.url.as_str(),
            "https://maskinporten.no/.well-known/oauth-authorization-server"
        );
        assert!(!plan.required);
        let custom = settings("env: test\nendpoints:\n  issuer: https://mp.example/\n");
        assert!(Plan::of(&custom, "https://mp.example/").unwrap().required);
        for off in [
            "env: test\nendpoints:\n  discovery: false\n",
            "env: test\nendpoints:\n  token_url: https://mp.example/token\n",
            "env: local\n",
        ] {
            assert_eq!(
                Plan::of(&settings(off), "https://mp.example/"),
                None,
                "{off}"
            );
        }
        let local = settings("env: local\nendpoints:\n  discovery: true\n");
        assert!(!Plan::of(&local, "http://127.0.0.1:1/").unwrap().required);
    }

    /// A metadata document that changes its token endpoint after the first read.
    #[tokio::test]
    async fn keep_fresh_reports_a_changed_endpoint_and_survives_failures() {
        let reads = Arc::new(Mutex::new(0u32));
        let served = reads.clone();
        let router = axum::Router::new().route(
            "/.well-known/oauth-authorization-server",
            axum::routing::get(move || {
                let served = served.clone();
                async move {
                    let n = {
                        let mut n = served.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    match n {
                        1 => (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new()),
                        _ => (
                            axum::http::StatusCode::OK,
                            serde_json::json!({"issuer": "http://issuer.test/", "token_endpoint": format!("http://issuer.test/token/{}", n.min(3))}).to_string(),
                        ),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let plan = Plan {
            issuer: "http://issuer.test/".into(),
            url: Url::parse(&format!(
                "http://{addr}/.well-known/oauth-authorization-server"
            ))
            .unwrap(),
            required: true,
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let token_url = Arc::new(Mutex::new(Url::parse("http://issuer.test/token").unwrap()));
        let (read_url, write_url) = (token_url.clone(), token_url.clone());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let task = tokio::spawn(keep_fresh(
            move || {
                let token_url = read_url.lock().unwrap().clone();
                Some((
                    plan.clone(),
                    token_url,
                    http.clone(),
                    Duration::from_secs(2),
                ))
            },
            move |_, url| {
                record.lock().unwrap().push(url.to_string());
                *write_url.lock().unwrap() = url;
            },
            (Duration::from_millis(20), Duration::from_millis(10)),
        ));
        for _ in 0..200 {
            if *reads.lock().unwrap() >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        assert!(*reads.lock().unwrap() >= 5);
        // The failure changed nothing; each new endpoint was reported once.
        assert_eq!(
            *seen.lock().unwrap(),
            ["http://issuer.test/token/2", "http://issuer.test/token/3"]
        );
    }
}

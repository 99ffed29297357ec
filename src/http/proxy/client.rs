//! The egress proxy's HTTP client: hyper's HTTP/1.1 connections, pooled per thread (`pool.rs`),
//! opened by hyper-util's connector over rustls (webpki roots plus `http_client.extra_ca_cert`),
//! with `http_client.connect_timeout` and TCP_NODELAY. It never follows redirects. With
//! `http_client.proxy` set it is reqwest's client instead (`upstream/client.rs`), which speaks
//! to the forward proxy (absolute-form for `http://`, CONNECT for `https://`).
//!
//! What reqwest added to each request, this client adds too: `User-Agent` and `Accept: */*`
//! when the caller sent none.

use std::sync::Arc;

use axum::http::HeaderValue;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::pool::PerThread;
use crate::config::HttpClientSettings;
use crate::upstream::client::{ClientBuildError, http_client};

/// The `User-Agent` the broker's clients send.
pub(crate) const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("maskinporten-broker/", env!("CARGO_PKG_VERSION")));

/// The client a route's requests go through.
pub(crate) enum ProxyClient {
    /// Straight to the upstream: pooled keep-alive connections (a pool per thread), rustls.
    Direct(PerThread),
    /// Through `http_client.proxy`.
    Forwarded(reqwest::Client),
}

impl ProxyClient {
    /// The client for `settings` (at start and at each reload).
    pub(crate) fn build(settings: &HttpClientSettings) -> Result<ProxyClient, ClientBuildError> {
        if settings.proxy.is_some() {
            return Ok(ProxyClient::Forwarded(http_client(settings)?));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &settings.extra_ca_cert {
            let shown = path.display().to_string();
            let pem =
                std::fs::read(path).map_err(|e| ClientBuildError::ReadCa(shown.clone(), e))?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|_| ClientBuildError::BadCa(shown.clone()))?;
                roots
                    .add(cert)
                    .map_err(|_| ClientBuildError::BadCa(shown.clone()))?;
                added += 1;
            }
            if added == 0 {
                return Err(ClientBuildError::BadCa(shown));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| ClientBuildError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(ProxyClient::Direct(PerThread::new(connector)))
    }
}

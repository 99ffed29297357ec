//! The egress proxy's HTTP client: hyper-util's pooled client over rustls (webpki roots plus
//! `http_client.extra_ca_cert`), with `http_client.connect_timeout`, TCP_NODELAY and HTTP/1.1.
//! It never follows redirects. With `http_client.proxy` set it is reqwest's client instead
//! (`upstream/client.rs`), which speaks to the forward proxy (absolute-form for `http://`,
//! CONNECT for `https://`): hyper-util's client has no forward proxy of its own.
//!
//! What reqwest added to each request, this client adds too: `User-Agent` and `Accept: */*`
//! when the caller sent none.
//!
//! Each thread keeps its own pool of upstream connections (as each nginx worker does): a
//! connection is then driven by the thread whose caller uses it, and a proxied request never
//! wakes another thread (app/workers.rs serves each caller's connection on one thread).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::HeaderValue;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

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
        Ok(ProxyClient::Direct(PerThread {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connector,
        }))
    }
}

/// Tells one built client from another, so that a thread's pool is replaced at a reload.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

type Pooled = Client<HttpsConnector<HttpConnector>, Body>;

thread_local! {
    /// This thread's client (and so its pool), with the id of the [`PerThread`] it was made for.
    static THIS_THREADS: RefCell<Option<(u64, Pooled)>> = const { RefCell::new(None) };
}

/// hyper-util's pooled client, one per thread that sends through it.
pub(crate) struct PerThread {
    id: u64,
    connector: HttpsConnector<HttpConnector>,
}

impl PerThread {
    /// Send `request` through this thread's pool, made on first use.
    pub(crate) fn request(&self, request: axum::http::Request<Body>) -> ResponseFuture {
        THIS_THREADS.with(|slot| {
            let mut slot = slot.borrow_mut();
            match &*slot {
                Some((id, client)) if *id == self.id => client.request(request),
                _ => {
                    let client = Client::builder(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .pool_timer(TokioTimer::new())
                        .build(self.connector.clone());
                    let sent = client.request(request);
                    // The pool of the client this one replaces (an older reload's) is dropped.
                    *slot = Some((self.id, client));
                    sent
                }
            }
        })
    }
}

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Duration;

    use axum::http::{Request, StatusCode};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// An upstream on 127.0.0.1 that answers every request 200 on keep-alive connections and
    /// counts the connections it accepted. Runs on its own thread until the test ends.
    fn counting_upstream() -> (String, Arc<AtomicUsize>) {
        let accepted = Arc::new(AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let counter = accepted.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(http1::Builder::new().serve_connection(
                        TokioIo::new(tcp),
                        service_fn(|_| async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Body::empty()))
                        }),
                    ));
                }
            });
        });
        (url, accepted)
    }

    /// A thread with a runtime of its own that sends, for each `(client, count)` it is given,
    /// `count` requests one after another, and says when they are answered. Its runtime (and
    /// so its idle connections) lives until the sender is dropped.
    fn sending_thread(
        url: String,
    ) -> (mpsc::Sender<(Arc<ProxyClient>, usize)>, mpsc::Receiver<()>) {
        let (orders, ordered) = mpsc::channel::<(Arc<ProxyClient>, usize)>();
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            while let Ok((client, count)) = ordered.recv() {
                runtime.block_on(async {
                    let ProxyClient::Direct(client) = &*client else {
                        panic!("no forward proxy is configured: the client is direct");
                    };
                    for _ in 0..count {
                        let request = Request::get(url.as_str()).body(Body::empty()).unwrap();
                        let answer = client.request(request).await.unwrap();
                        assert_eq!(answer.status(), StatusCode::OK);
                        // The answer read to its end gives the connection back to the pool.
                        let _ = axum::body::to_bytes(Body::new(answer.into_body()), 1024).await;
                    }
                    // Let the connection's task put it back as idle.
                    tokio::task::yield_now().await;
                });
                done.send(()).unwrap();
            }
        });
        (orders, finished)
    }

    fn send(
        thread: &(mpsc::Sender<(Arc<ProxyClient>, usize)>, mpsc::Receiver<()>),
        client: &Arc<ProxyClient>,
        count: usize,
    ) {
        thread.0.send((client.clone(), count)).unwrap();
        thread.1.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn each_thread_keeps_its_own_pool_of_upstream_connections() {
        let (url, accepted) = counting_upstream();
        let client = Arc::new(ProxyClient::build(&HttpClientSettings::default()).unwrap());
        let (first, second) = (sending_thread(url.clone()), sending_thread(url));
        // One thread, three requests in turn: one connection, kept alive and reused.
        send(&first, &client, 3);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Another thread does not take the first one's idle connection (still open): it opens
        // its own, and reuses it.
        send(&second, &client, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        send(&first, &client, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A client built anew (a reload) gives the thread a new pool.
        let rebuilt = Arc::new(ProxyClient::build(&HttpClientSettings::default()).unwrap());
        send(&first, &rebuilt, 1);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }
}

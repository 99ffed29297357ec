//! The egress proxy's own client over TLS: an HTTPS upstream on 127.0.0.1 whose certificate only
//! `http_client.extra_ca_cert` vouches for is reached with the token; without that CA the
//! handshake fails and the caller gets a 502 problem.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::*;
use crate::tls::{Ca, write};

/// An HTTPS server on 127.0.0.1 with a certificate signed by `ca`; records each request's
/// `Authorization` and answers `tls ok`.
async fn tls_upstream(ca: &Ca) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let (cert, key) = ca.server();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, recorded) = (acceptor.clone(), recorded.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let authorization = request
                        .headers()
                        .get(header::AUTHORIZATION)
                        .map(|v| v.to_str().unwrap_or("").to_owned())
                        .unwrap_or_default();
                    recorded.lock().unwrap().push(authorization);
                    async { Ok::<_, Infallible>(Response::new(Body::from("tls ok"))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn route(addr: SocketAddr) -> String {
    format!("proxy:\n  tls:\n    upstream: https://{addr}/api/\n    profile: admin\n")
}

#[tokio::test]
async fn an_https_upstream_is_reached_through_the_extra_ca_and_refused_without_it() {
    let ca = Ca::new("upstream test CA");
    let (addr, seen) = tls_upstream(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());

    let env = TestEnv::start(&format!(
        "http_client:\n  extra_ca_cert: {}\n{}",
        ca_file.display(),
        route(addr)
    ))
    .await;
    let response = env.get("/proxy/tls/x").await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "tls ok");
    let seen_now = seen.lock().unwrap().clone();
    assert_eq!(seen_now.len(), 1);
    assert!(seen_now[0].starts_with("Bearer ") && seen_now[0].len() > 20);

    // The same upstream without its CA: no handshake, a 502, nothing reached it.
    let untrusting = TestEnv::start(&route(addr)).await;
    let body = untrusting.problem("/proxy/tls/x", 502).await;
    assert_eq!(
        body["type"]
            .as_str()
            .map(|t| t.ends_with("proxy-upstream-unreachable")),
        Some(true),
        "{body}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

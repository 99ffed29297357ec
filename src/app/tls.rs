//! The listener's TLS (rustls with the ring provider): the server certificate and key, and
//! optionally client certificates verified against `server.tls.client_ca`
//! (`client_auth: optional|required`). A verified client certificate becomes a [`PeerCertificate`]
//! in every request's extensions, which `clients[].identity` can name by its SPIFFE ID or subject.
//!
//! Changed files are read again: before a connection is accepted the three files are looked at
//! (at most once per [`CHECK_INTERVAL`]); when one changed, new connections get the new
//! certificate, key or CA, and a file that does not load keeps the previous ones (logged).
//! It never logs key material.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::tls::{ClientAuth, TlsSettings};
pub(crate) use crate::policy::identity::PeerCertificate;

/// How often the certificate, key and CA files are looked at for changes.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why the TLS files did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.{field}: cannot read {path}: {reason}")]
    Read {
        field: &'static str,
        path: String,
        reason: String,
    },
    #[error("server.tls: {0}")]
    Config(String),
}

/// The client certificate of a TLS connection, if one was sent and verified.
pub fn peer_of<IO>(stream: &tokio_rustls::server::TlsStream<IO>) -> Option<Arc<PeerCertificate>> {
    let (_, connection) = stream.get_ref();
    let leaf = connection.peer_certificates()?.first()?;
    PeerCertificate::from_der(leaf.as_ref()).map(Arc::new)
}

/// The listener's TLS configuration, read again when its files change.
pub struct Tls {
    settings: TlsSettings,
    state: Mutex<State>,
}

struct State {
    acceptor: TlsAcceptor,
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

impl Tls {
    /// Load the files now (a failure stops the start).
    pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(settings)?));
        Ok(Tls {
            state: Mutex::new(State {
                acceptor,
                stamps: stamps(settings),
                checked: Instant::now(),
            }),
            settings: settings.clone(),
        })
    }

    /// The acceptor for a new connection, from the files as they are now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= CHECK_INTERVAL {
            state.checked = Instant::now();
            let now = stamps(&self.settings);
            if now != state.stamps {
                state.stamps = now;
                match server_config(&self.settings) {
                    Ok(config) => {
                        state.acceptor = TlsAcceptor::from(Arc::new(config));
                        tracing::info!("server.tls files changed: new connections use them");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "server.tls files changed but do not load; new connections keep the previous ones");
                    }
                }
            }
        }
        state.acceptor.clone()
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Option<SystemTime>> {
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| stamp(p))
    .collect()
}

fn read_error(field: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Read {
        field,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(field, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(field, path, e))?;
    if certs.is_empty() {
        return Err(read_error(field, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// A rustls server configuration from the files (HTTP/1.1 only, as the broker serves).
fn server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let certs = certificates("cert", &settings.cert)?;
    // The key's own errors may quote its content: say only that it did not load.
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|_| {
        read_error(
            "key",
            &settings.key,
            "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it, or unreadable",
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&settings.client_auth, &settings.client_ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("client_ca", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| read_error("client_ca", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if *auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Config(format!("client_ca: {e}")))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("cert and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

//! `server.tls`: the listener's certificate, key and client-certificate settings (read by
//! `app/tls.rs`).

use std::path::PathBuf;

use serde::Deserialize;

/// `server.tls`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Whether callers must present a client certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates are asked for.
    #[default]
    None,
    /// Asked for and verified when sent; a caller without one may still use an API key or token.
    Optional,
    /// No connection without a certificate that chains to `client_ca`.
    Required,
}

impl TlsSettings {
    pub(crate) fn check(&self, problems: &mut Vec<String>) {
        if self.client_auth != ClientAuth::None && self.client_ca.is_none() {
            problems.push(
                "server.tls.client_ca: is required with client_auth optional or required (the CA client certificates chain to)".into(),
            );
        }
    }
}

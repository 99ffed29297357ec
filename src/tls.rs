//! The listener's TLS (rustls): the server certificate and key, and optionally client
//! certificates verified against `server.tls.client_ca`. A verified client certificate becomes a
//! [`PeerCertificate`] in every request's extensions, which `clients[].identity` can name.

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The one URI SAN, when the certificate has exactly one and it is `spiffe://...`.
    pub spiffe_id: Option<String>,
    /// The subject as sorted (attribute, value) pairs ([`crate::identity::distinguished_name`]).
    pub subject: Vec<(String, String)>,
    /// The subject as written in the certificate (`CN=invoicing, O=Example`).
    pub subject_text: String,
}

impl PeerCertificate {
    /// For the audit line: the SPIFFE ID, else the subject.
    pub fn principal(&self) -> &str {
        self.spiffe_id.as_deref().unwrap_or(&self.subject_text)
    }
}

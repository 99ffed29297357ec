//! PEM text: an RSA private key as PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`), and any
//! `CERTIFICATE` blocks after it (leaf first), which then go into the grant's `x5c`.
//!
//! Errors name the block labels found, never their contents.

use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use x509_parser::pem::Pem;

use super::certificate::Certificate;
use super::{Candidate, KeyError};

/// Whether `bytes` look like PEM (a `-----BEGIN` line).
pub(super) fn looks_like(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

pub(super) fn parse(bytes: &[u8]) -> Result<Candidate, KeyError> {
    let mut private = None;
    let mut chain = Vec::new();
    for block in Pem::iter_from_buffer(bytes) {
        let Ok(block) = block else { break };
        match block.label.as_str() {
            "PRIVATE KEY" if private.is_none() => {
                private = Some(
                    RsaPrivateKey::from_pkcs8_der(&block.contents).map_err(|_| KeyError::NotPem)?,
                )
            }
            "RSA PRIVATE KEY" if private.is_none() => {
                private = Some(
                    RsaPrivateKey::from_pkcs1_der(&block.contents).map_err(|_| KeyError::NotPem)?,
                )
            }
            "ENCRYPTED PRIVATE KEY" => return Err(KeyError::EncryptedPem),
            "CERTIFICATE" => chain.push(Certificate::from_der(&block.contents)?),
            _ => {}
        }
    }
    let private = private.ok_or(KeyError::NotPem)?;
    Ok(Candidate {
        kid: None,
        private,
        chain,
    })
}

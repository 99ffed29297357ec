//! PKCS#12 (`.p12`, `.pfx`): the business certificate (virksomhetssertifikat) with its private key
//! and chain, as Buypass and Commfides hand it out. Both the modern encryption (PBES2: AES-256-CBC
//! with PBKDF2) and the legacy one that vendors and older openssl still produce (3DES, RC2-40,
//! SHA-1 MAC) are read, by the pure-Rust `p12-keystore`.
//!
//! The password is used and dropped; no error names it.

use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
use rsa::RsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;

use super::certificate::Certificate;
use super::{Candidate, KeyError};
use crate::key::secret::Secret;

/// Whether `bytes` may be PKCS#12: DER, so a SEQUENCE. The parse decides.
pub(super) fn looks_like(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30)
}

pub(super) fn parse(bytes: &[u8], password: Option<&Secret>) -> Result<Vec<Candidate>, KeyError> {
    let store = KeyStore::from_pkcs12(
        bytes,
        password.map_or("", Secret::expose),
        Pkcs12ImportPolicy::Relaxed,
    )
    .map_err(|e| match e {
        // A MAC that does not verify, or padding that does not decrypt, is the wrong password.
        p12_keystore::error::Error::MacError(_) | p12_keystore::error::Error::UnpadError => {
            match password {
                None => KeyError::PasswordMissing,
                Some(_) => KeyError::WrongPassword,
            }
        }
        other => KeyError::Pkcs12(other),
    })?;
    let mut candidates = Vec::new();
    for (_, entry) in store.entries() {
        let KeyStoreEntry::PrivateKeyChain(chain) = entry else {
            continue;
        };
        let private = RsaPrivateKey::from_pkcs8_der(chain.key().as_der())
            .map_err(|_| KeyError::Pkcs12NotRsa)?;
        let chain = chain
            .certs()
            .iter()
            .map(|c| Certificate::from_der(c.as_der()))
            .collect::<Result<Vec<_>, _>>()?;
        candidates.push(Candidate {
            kid: None,
            private,
            chain,
        });
    }
    if candidates.is_empty() {
        return Err(KeyError::Pkcs12NoKey);
    }
    Ok(candidates)
}

//! The client's RSA signing key: loaded once from PEM (PKCS#1 or PKCS#8), used to sign grants,
//! and described as a public JWK for Digdir's self-service portal and the local simulator.
//!
//! This module must never let the private half out: [`SigningKey`]'s `Debug` shows only the `kid`,
//! algorithm and key size, and no error message quotes the PEM.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The signature algorithms Maskinporten accepts for grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Algorithm {
    #[default]
    RS256,
    RS384,
    RS512,
}

impl Algorithm {
    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::RS384 => jsonwebtoken::Algorithm::RS384,
            Algorithm::RS512 => jsonwebtoken::Algorithm::RS512,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
        }
    }
}

/// Why a key could not be loaded. The messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "is not an RSA private key in PEM form (expected '-----BEGIN PRIVATE KEY-----' or '-----BEGIN RSA PRIVATE KEY-----')"
    )]
    NotPem,
    #[error("RSA key of {0} bits is too small; Maskinporten requires at least 2048")]
    TooSmall(usize),
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// The private key with its `kid` and algorithm, ready to sign grants.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    private: RsaPrivateKey,
    encoding: jsonwebtoken::EncodingKey,
}

impl SigningKey {
    /// Parse PEM text holding a PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) RSA key.
    pub fn from_pem(pem: &str, kid: &str, algorithm: Algorithm) -> Result<Self, KeyError> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::NotPem)?;
        Self::from_private(private, kid, algorithm)
    }

    /// Read and parse a PEM file.
    pub fn from_file(path: &Path, kid: &str, algorithm: Algorithm) -> Result<Self, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&pem, kid, algorithm)
    }

    /// A fresh key pair, for `keygen` and the `local` environment.
    pub fn generate(bits: usize, kid: &str, algorithm: Algorithm) -> Result<Self, KeyError> {
        let private = RsaPrivateKey::new(&mut rand::thread_rng(), bits)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_private(private, kid, algorithm)
    }

    fn from_private(
        private: RsaPrivateKey,
        kid: &str,
        algorithm: Algorithm,
    ) -> Result<Self, KeyError> {
        let bits = private.size() * 8;
        if bits < 2048 {
            return Err(KeyError::TooSmall(bits));
        }
        let der = private.to_pkcs1_der().map_err(|_| KeyError::NotPem)?;
        let encoding = jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes());
        Ok(SigningKey {
            kid: kid.to_owned(),
            algorithm,
            private,
            encoding,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    pub fn bits(&self) -> usize {
        self.private.size() * 8
    }
    pub(crate) fn encoding_key(&self) -> &jsonwebtoken::EncodingKey {
        &self.encoding
    }

    pub fn public_key(&self) -> RsaPublicKey {
        self.private.to_public_key()
    }

    /// The public half as a JWK (`kty`, `n`, `e`, `kid`, `alg`, `use`), the form Digdir's portal and
    /// JWKS endpoints take.
    pub fn public_jwk(&self) -> serde_json::Value {
        public_jwk(&self.public_key(), &self.kid, self.algorithm)
    }

    /// The private key as PKCS#8 PEM, for `keygen` to write to a file.
    pub fn private_pem(&self) -> Result<Secret, KeyError> {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| Secret::new(pem.as_str()))
            .map_err(|e| KeyError::Generate(e.to_string()))
    }

    /// Whether `public` is the public half of this key.
    pub fn matches(&self, public: &RsaPublicKey) -> bool {
        &self.public_key() == public
    }
}

/// A public RSA key as a JWK.
pub fn public_jwk(key: &RsaPublicKey, kid: &str, algorithm: Algorithm) -> serde_json::Value {
    serde_json::json!({
        "kty": "RSA",
        "use": "sig",
        "alg": algorithm.name(),
        "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    })
}

/// Parse a public JWK (`kty` RSA, `n`, `e`) back into a key.
pub fn public_key_from_jwk(jwk: &serde_json::Value) -> Option<RsaPublicKey> {
    let part = |name: &str| {
        let text = jwk.get(name)?.as_str()?;
        URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .map(|b| rsa::BigUint::from_bytes_be(&b))
    };
    if jwk.get("kty")?.as_str()? != "RSA" {
        return None;
    }
    RsaPublicKey::new(part("n")?, part("e")?).ok()
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("bits", &self.bits())
            .field("private", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKCS8: &str = include_str!("../tests/fixtures/client-key.pem");
    const PKCS1: &str = include_str!("../tests/fixtures/client-key-pkcs1.pem");

    #[test]
    fn loads_pkcs8_and_pkcs1_forms_of_the_same_key() {
        let a = SigningKey::from_pem(PKCS8, "kid-1", Algorithm::RS256).unwrap();
        let b = SigningKey::from_pem(PKCS1, "kid-1", Algorithm::RS256).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.bits(), 2048);
    }

    #[test]
    fn refuses_text_that_is_not_a_key_without_quoting_it() {
        let err = SigningKey::from_pem("-----BEGIN NONSENSE-----\nabc\n", "k", Algorithm::RS256)
            .unwrap_err();
        assert!(matches!(err, KeyError::NotPem));
        assert!(!err.to_string().contains("abc"));
    }

    #[test]
    fn debug_shows_kid_but_not_the_key() {
        let k = SigningKey::from_pem(PKCS8, "kid-1", Algorithm::RS384).unwrap();
        let debug = format!("{k:?}");
        assert!(debug.contains("kid-1") && debug.contains("RS384") && debug.contains("[redacted]"));
        let pem = k.private_pem().unwrap();
        let body_line = pem.expose().lines().nth(1).unwrap();
        assert!(!debug.contains(body_line));
    }

    #[test]
    fn public_jwk_round_trips() {
        let k = SigningKey::from_pem(PKCS8, "kid-1", Algorithm::RS256).unwrap();
        let jwk = k.public_jwk();
        assert_eq!(jwk["kid"], "kid-1");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["e"], "AQAB");
        assert!(k.matches(&public_key_from_jwk(&jwk).unwrap()));
    }
}

//! The client's RSA signing key, in whichever form the organisation holds it, told apart by
//! content: PEM (PKCS#1/PKCS#8, optionally followed by its certificates), a private JWK, a JWKS
//! of several, or PKCS#12 with the business certificate. One file per form (`pem`, `jwk`,
//! `pkcs12`) and one for certificates; this module picks the signing key by `kid` and holds it.
//!
//! This module must never let the private half or a password out: [`SigningKey`]'s `Debug` shows
//! only the `kid`, algorithm, key size and certificate subject, and no error quotes the input.

mod certificate;
mod jwk;
pub(crate) mod jwks_file;
mod pem;
mod pkcs11;
mod pkcs12;
pub(crate) mod rotation;
pub(crate) mod secret;
mod settings;
mod signer;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod vault_rotation;
pub(crate) mod vault_transit;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};

pub use certificate::CertificateError;
pub(crate) use certificate::{Certificate, EXPIRY_WARNING};
pub use jwk::public_key_from_jwk;
pub(crate) use jwk::{private_jwk, public_jwks};
pub(crate) use pkcs11::Pkcs11Signer;
pub use settings::{Pkcs11Settings, VaultKubernetesSettings, VaultTransitSettings};
pub use signer::{OutsideKey, SignError};
pub(crate) use signer::{RemoteSigner, Signer, create_outside, load_outside};
pub use signer::{VaultPin, versioned_kid};
pub(crate) use vault_transit::VaultTransitSigner;

use crate::key::secret::Secret;

/// Digdir accepts at most this many keys on one client.
pub(crate) const MAX_KEYS_PER_CLIENT: usize = 5;

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

/// Which form the key came in; `check` explains each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Pem,
    Jwk,
    Jwks,
    Pkcs12,
    Generated,
    /// In an HSM, reached over PKCS#11 (`key.pkcs11`).
    Pkcs11,
    /// In Vault/OpenBao transit (`key.vault_transit`).
    VaultTransit,
}

impl Form {
    /// One sentence for `check`.
    pub fn explain(self) -> &'static str {
        match self {
            Form::Pem => "PEM private key (PKCS#1 or PKCS#8), e.g. from openssl or `keygen`",
            Form::Jwk => "private JWK (JSON), e.g. from Digdir's self-service portal",
            Form::Jwks => "JWKS with private keys (rotation set); `kid` picks the signing key",
            Form::Pkcs12 => {
                "PKCS#12 business certificate (virksomhetssertifikat) with its private key; grants carry x5c"
            }
            Form::Generated => "generated at start for the local simulator (env local)",
            Form::Pkcs11 => {
                "in an HSM over PKCS#11 (key.pkcs11): the broker sends digests, the key never leaves the token"
            }
            Form::VaultTransit => {
                "in Vault/OpenBao transit (key.vault_transit): the broker sends digests, the key never leaves Vault"
            }
        }
    }
}

/// Why a key could not be loaded. The messages never contain key material or a password.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "is none of the key forms the broker reads: PEM ('-----BEGIN PRIVATE KEY-----' or '-----BEGIN RSA PRIVATE KEY-----'), a private JWK or JWKS (JSON), or PKCS#12 (.p12/.pfx)"
    )]
    Unknown,
    #[error(
        "is not an RSA private key in PEM form (expected '-----BEGIN PRIVATE KEY-----' or '-----BEGIN RSA PRIVATE KEY-----')"
    )]
    NotPem,
    #[error(
        "is an encrypted PEM key; decrypt it once (openssl pkcs8 -in KEY -out key.pem) or use the PKCS#12 file with key.password"
    )]
    EncryptedPem,
    #[error("is neither a JWK as JSON nor base64 of one")]
    InlineJwk,
    #[error("is not valid JSON (line {line}, column {column})")]
    Json { line: usize, column: usize },
    #[error("is not a usable JWK: {0}")]
    Jwk(&'static str),
    #[error("is not a usable JWK: \"{0}\" is not base64url")]
    JwkMember(&'static str),
    #[error("holds a {kty} key; Maskinporten needs an RSA key (kty RSA)")]
    JwkNotRsa { kty: String },
    #[error(
        "holds a public JWK{} (no \"d\"); the broker needs the private JWK you saved when creating the key",
        kid.as_deref().map(|k| format!(" (kid {k:?})")).unwrap_or_default()
    )]
    JwkPublicOnly { kid: Option<String> },
    #[error("is a JWKS without keys")]
    NoKeys,
    #[error(
        "is a PKCS#12 file and needs its password: set key.password, BROKER__KEY__PASSWORD or key.password_file"
    )]
    PasswordMissing,
    #[error("is a PKCS#12 file and the password does not open it (wrong password)")]
    WrongPassword,
    #[error("cannot read the password file {path}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("is not a PKCS#12 file the broker can read")]
    Pkcs12(#[source] p12_keystore::error::Error),
    #[error("is a PKCS#12 file without a private key")]
    Pkcs12NoKey,
    #[error("is a PKCS#12 file whose private key is not RSA")]
    Pkcs12NotRsa,
    #[error("holds an unusable certificate")]
    Certificate(#[from] CertificateError),
    #[error(
        "{kid:?} matches no key in the file; the kids present are: {}",
        if present.is_empty() { "none (the keys have no kid)".to_owned() } else { present.join(", ") }
    )]
    UnknownKid { kid: String, present: Vec<String> },
    #[error(
        "is required: the key file holds {} keys ({}); set kid to the one to sign with",
        present.len(), present.join(", ")
    )]
    AmbiguousKid { present: Vec<String> },
    #[error(
        "is required for this key (set it in the config file or BROKER__KID: the key id Digdir shows for the uploaded key)"
    )]
    KidRequired,
    #[error("RSA key of {0} bits is too small; Maskinporten requires at least 2048")]
    TooSmall(usize),
    #[error("cannot generate a key")]
    Generate(#[source] rsa::Error),
    #[error("cannot encode the key")]
    Encode,
    /// The HSM or Vault holding the key: out of reach, refusing, or a probe that does not verify.
    #[error(transparent)]
    Signer(#[from] SignError),
}

impl KeyError {
    /// Whether the error is about `kid` rather than the key source.
    pub fn is_about_kid(&self) -> bool {
        matches!(
            self,
            KeyError::UnknownKid { .. } | KeyError::AmbiguousKid { .. } | KeyError::KidRequired
        )
    }
}

/// One private key found in a file, before `kid` picks the signing key.
pub(crate) struct Candidate {
    kid: Option<String>,
    private: RsaPrivateKey,
    /// The certificate chain, leaf first (PKCS#12 or PEM with certificates); empty for plain keys.
    chain: Vec<Certificate>,
}

/// Every key a file or text holds, and its form.
pub(crate) struct KeyFile {
    pub(crate) form: Form,
    candidates: Vec<Candidate>,
}

impl KeyFile {
    /// Tell the form apart by content and parse it. `password` opens PKCS#12.
    pub(crate) fn parse(bytes: &[u8], password: Option<&Secret>) -> Result<KeyFile, KeyError> {
        let (form, candidates) = if jwk::looks_like(bytes) {
            let (is_set, candidates) = jwk::parse(bytes)?;
            (if is_set { Form::Jwks } else { Form::Jwk }, candidates)
        } else if pem::looks_like(bytes) {
            (Form::Pem, vec![pem::parse(bytes)?])
        } else if pkcs12::looks_like(bytes) {
            (Form::Pkcs12, pkcs12::parse(bytes, password)?)
        } else {
            return Err(KeyError::Unknown);
        };
        if candidates.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(KeyFile { form, candidates })
    }

    /// Read and parse a file.
    pub(crate) fn read(path: &Path, password: Option<&Secret>) -> Result<KeyFile, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes, password)
    }

    /// The inline `key.jwk`: JSON or base64 of it.
    pub(crate) fn inline_jwk(text: &str) -> Result<KeyFile, KeyError> {
        Self::parse(&jwk::inline(text)?, None)
    }

    /// The kids present, in file order (keys without one are left out).
    pub(crate) fn kids(&self) -> Vec<String> {
        self.candidates
            .iter()
            .filter_map(|c| c.kid.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.candidates.len()
    }

    /// The public JWKS of every key in the file (the set to upload to Digdir).
    pub(crate) fn public_jwks(&self, algorithm: Algorithm) -> jsonwebtoken::jwk::JwkSet {
        let publics: Vec<_> = self
            .candidates
            .iter()
            .map(|c| (c.private.to_public_key(), c.kid.as_deref()))
            .collect();
        public_jwks(publics.iter().map(|(k, kid)| (k, *kid)), algorithm)
    }

    /// Pick the signing key. `configured` is the config's `kid:`; without it a single key's own
    /// kid is used, and `fallback` (the local simulator's) when the key has none.
    pub(crate) fn select(
        self,
        configured: Option<&str>,
        fallback: Option<&str>,
        algorithm: Algorithm,
        now: SystemTime,
    ) -> Result<SigningKey, KeyError> {
        let form = self.form;
        let present = self.kids();
        let mut candidates = self.candidates;
        let (candidate, kid) = match configured {
            Some(kid) => match candidates
                .iter()
                .position(|c| c.kid.as_deref() == Some(kid))
            {
                Some(i) => (candidates.swap_remove(i), Some(kid.to_owned())),
                None if candidates.len() == 1 && present.is_empty() => {
                    (candidates.swap_remove(0), Some(kid.to_owned()))
                }
                None => {
                    return Err(KeyError::UnknownKid {
                        kid: kid.to_owned(),
                        present,
                    });
                }
            },
            None if candidates.len() == 1 => {
                let c = candidates.swap_remove(0);
                let kid = c.kid.clone();
                (c, kid)
            }
            None => return Err(KeyError::AmbiguousKid { present }),
        };
        let kid = kid.or_else(|| fallback.map(str::to_owned));
        if kid.is_none() && candidate.chain.is_empty() {
            return Err(KeyError::KidRequired);
        }
        if let Some(leaf) = candidate.chain.first() {
            leaf.check_key(&candidate.private.to_public_key())?;
            leaf.check_validity(now)?;
        }
        SigningKey::new(candidate.private, kid, algorithm, candidate.chain, form)
    }
}

/// The private key with its `kid`, algorithm and certificate chain, ready to sign grants.
#[derive(Clone)]
pub struct SigningKey {
    kid: Option<String>,
    algorithm: Algorithm,
    public: RsaPublicKey,
    signer: Signer,
    chain: Arc<[Certificate]>,
    form: Form,
}

impl SigningKey {
    /// Parse PEM text holding a PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) RSA key.
    pub fn from_pem(pem: &str, kid: &str, algorithm: Algorithm) -> Result<Self, KeyError> {
        KeyFile::parse(pem.as_bytes(), None)?.select(Some(kid), None, algorithm, SystemTime::now())
    }

    /// Read and parse a key file of any form.
    pub fn from_file(path: &Path, kid: &str, algorithm: Algorithm) -> Result<Self, KeyError> {
        KeyFile::read(path, None)?.select(Some(kid), None, algorithm, SystemTime::now())
    }

    /// A fresh key pair, for `keygen` and the `local` environment.
    pub fn generate(bits: usize, kid: &str, algorithm: Algorithm) -> Result<Self, KeyError> {
        let private =
            RsaPrivateKey::new(&mut rand::thread_rng(), bits).map_err(KeyError::Generate)?;
        Self::new(
            private,
            Some(kid.to_owned()),
            algorithm,
            Vec::new(),
            Form::Generated,
        )
    }

    fn new(
        private: RsaPrivateKey,
        kid: Option<String>,
        algorithm: Algorithm,
        chain: Vec<Certificate>,
        form: Form,
    ) -> Result<Self, KeyError> {
        let bits = private.size() * 8;
        if bits < 2048 {
            return Err(KeyError::TooSmall(bits));
        }
        Ok(SigningKey {
            kid,
            algorithm,
            public: private.to_public_key(),
            signer: Signer::InMemory(Arc::new(private)),
            chain: chain.into(),
            form,
        })
    }

    /// A key held by a signer outside the process (`form` says which), with its public half
    /// as read from there and `kid`/`x5c` from the configuration.
    pub(crate) fn remote(
        signer: Arc<dyn RemoteSigner>,
        public: RsaPublicKey,
        kid: Option<String>,
        algorithm: Algorithm,
        chain: Vec<Certificate>,
        form: Form,
    ) -> Result<Self, KeyError> {
        let bits = public.size() * 8;
        if bits < 2048 {
            return Err(KeyError::TooSmall(bits));
        }
        Ok(SigningKey {
            kid,
            algorithm,
            public,
            signer: Signer::Remote(signer),
            chain: chain.into(),
            form,
        })
    }

    /// The `kid` the grant header carries; none for a business certificate without one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    pub fn bits(&self) -> usize {
        self.public.size() * 8
    }
    pub fn form(&self) -> Form {
        self.form
    }
    /// Who turns a digest into the signature.
    pub(crate) fn signer(&self) -> &Signer {
        &self.signer
    }
    /// Where a key held outside the process is (module and token, Vault address and key).
    pub fn location(&self) -> Option<&str> {
        self.signer.remote().map(|r| r.location())
    }
    /// The private key, for a key the broker holds in memory.
    fn private(&self) -> Option<&RsaPrivateKey> {
        match &self.signer {
            Signer::InMemory(private) => Some(private),
            Signer::Remote(_) => None,
        }
    }
    /// The certificate chain, leaf first; empty for a plain key.
    pub(crate) fn chain(&self) -> &[Certificate] {
        &self.chain
    }
    /// The grant header's `x5c` (standard base64 DER, leaf first), when the key has a certificate.
    pub(crate) fn x5c(&self) -> Option<Vec<String>> {
        (!self.chain.is_empty()).then(|| self.chain.iter().map(Certificate::x5c).collect())
    }
    /// When the key stops working, where the broker knows: the leaf certificate's not-after.
    pub(crate) fn not_after(&self) -> Option<SystemTime> {
        self.chain.first().map(|c| c.not_after)
    }

    pub fn public_key(&self) -> RsaPublicKey {
        self.public.clone()
    }

    /// The public half as a JWK (`kty`, `n`, `e`, `kid`, `alg`, `use`), the form Digdir's portal and
    /// JWKS endpoints take.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::to_value(jwk::public_jwk(
            &self.public_key(),
            self.kid(),
            self.algorithm,
        ))
        .unwrap_or_default()
    }

    /// The private key as PKCS#8 PEM, for `keygen` to write to a file.
    pub fn private_pem(&self) -> Result<Secret, KeyError> {
        self.private()
            .ok_or(KeyError::Encode)?
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| Secret::new(pem.as_str()))
            .map_err(|_| KeyError::Encode)
    }

    /// The private key as a JWK, for `keygen --add-to` (key material: files only); null for a
    /// key outside the process.
    pub(crate) fn private_jwk(&self) -> serde_json::Value {
        self.private().map_or(serde_json::Value::Null, |private| {
            private_jwk(private, self.kid().unwrap_or_default(), self.algorithm)
        })
    }

    /// Whether `public` is the public half of this key.
    pub fn matches(&self, public: &RsaPublicKey) -> bool {
        &self.public == public
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("bits", &self.bits())
            .field("form", &self.form)
            .field("certificate", &self.chain.first().map(|c| &c.subject))
            .field("location", &self.location())
            .field("private", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKCS8: &str = include_str!("../../tests/fixtures/client-key.pem");
    const PKCS1: &str = include_str!("../../tests/fixtures/client-key-pkcs1.pem");

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

    fn jwk_text(kid: Option<&str>) -> String {
        let key = SigningKey::from_pem(PKCS8, kid.unwrap_or("x"), Algorithm::RS256).unwrap();
        let mut jwk = key.private_jwk();
        if kid.is_none() {
            jwk.as_object_mut().unwrap().remove("kid");
        }
        jwk.to_string()
    }

    fn select(text: &str, kid: Option<&str>) -> Result<SigningKey, KeyError> {
        KeyFile::parse(text.as_bytes(), None)?.select(
            kid,
            None,
            Algorithm::RS256,
            SystemTime::now(),
        )
    }

    #[test]
    fn forms_are_told_apart_by_content() {
        let form = |text: &str| KeyFile::parse(text.as_bytes(), None).map(|f| f.form).ok();
        assert_eq!(form(PKCS8), Some(Form::Pem));
        assert_eq!(form(PKCS1), Some(Form::Pem));
        assert_eq!(form(&jwk_text(Some("a"))), Some(Form::Jwk));
        let set = format!("{{\"keys\": [{}]}}", jwk_text(Some("a")));
        assert_eq!(form(&set), Some(Form::Jwks));
        assert!(matches!(
            KeyFile::parse(b"plain words", None).err(),
            Some(KeyError::Unknown)
        ));
    }

    #[test]
    fn a_private_jwk_round_trips_and_keeps_its_kid() {
        let key = select(&jwk_text(Some("from-jwk")), None).unwrap();
        assert_eq!(key.kid(), Some("from-jwk"));
        let pem = SigningKey::from_pem(PKCS8, "k", Algorithm::RS256).unwrap();
        assert_eq!(key.public_key(), pem.public_key());
        // Without p and q the primes are recovered from n, e and d.
        let mut jwk: serde_json::Value = serde_json::from_str(&jwk_text(Some("k"))).unwrap();
        for member in ["p", "q", "dp", "dq", "qi"] {
            jwk.as_object_mut().unwrap().remove(member);
        }
        assert_eq!(
            select(&jwk.to_string(), None).unwrap().public_key(),
            pem.public_key()
        );
    }

    #[test]
    fn kid_rules() {
        // The configured kid names a JWK without one; a PEM needs one.
        assert_eq!(
            select(&jwk_text(None), Some("cfg")).unwrap().kid(),
            Some("cfg")
        );
        assert!(matches!(select(PKCS8, None), Err(KeyError::KidRequired)));
        let set = format!(
            "{{\"keys\": [{}, {}]}}",
            jwk_text(Some("a")),
            jwk_text(Some("b"))
        );
        assert_eq!(select(&set, Some("b")).unwrap().kid(), Some("b"));
        let err = select(&set, Some("c")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"c\" matches no key in the file; the kids present are: a, b"
        );
        assert!(err.is_about_kid());
        assert!(matches!(
            select(&set, None),
            Err(KeyError::AmbiguousKid { .. })
        ));
        assert!(matches!(
            select(&jwk_text(Some("a")), Some("b")),
            Err(KeyError::UnknownKid { .. })
        ));
    }

    #[test]
    fn inline_jwk_takes_json_or_base64_and_errors_never_quote_the_key() {
        use base64::Engine;
        let text = jwk_text(Some("inline"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text);
        for inline in [text.as_str(), b64.as_str()] {
            let file = KeyFile::inline_jwk(inline).unwrap();
            assert_eq!(file.kids(), ["inline"]);
        }
        let d: serde_json::Value = serde_json::from_str(&text).unwrap();
        let d = d["d"].as_str().unwrap();
        let mut broken: serde_json::Value = serde_json::from_str(&text).unwrap();
        broken["n"] = serde_json::json!(12345);
        for bad in [
            format!("{{\"kty\": \"RSA\", \"d\": \"{d}\"}}"),
            broken.to_string(),
            format!("{{\"kty\": \"EC\", \"d\": \"{d}\"}}"),
            format!("{{\"kty\": \"RSA\", \"d\": {d}}}"),
        ] {
            let err = KeyFile::parse(bad.as_bytes(), None).err().unwrap();
            assert!(!err.to_string().contains(&d[..16]), "{err}");
        }
        assert!(matches!(
            KeyFile::inline_jwk("not base64 at all!"),
            Err(KeyError::InlineJwk)
        ));
    }

    #[test]
    fn public_jwk_round_trips() {
        let k = SigningKey::from_pem(PKCS8, "kid-1", Algorithm::RS256).unwrap();
        let jwk = k.public_jwk();
        assert_eq!(jwk["kid"], "kid-1");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["e"], "AQAB");
        assert!(k.matches(&public_key_from_jwk(&jwk).unwrap()));
    }
}

//! Who turns a grant's digest into its signature: the key file in memory, or a signer that keeps
//! the key to itself (an HSM over PKCS#11, Vault/OpenBao transit; a cloud KMS would be one more
//! file beside those, implementing [`RemoteSigner`]).
//!
//! The broker always hashes `header.payload` itself ([`Algorithm::digest`]) and sends out only
//! the digest; the answer is the raw RSASSA-PKCS1-v1_5 signature. `kid` and `x5c` come from the
//! configuration, never from the signer.
//!
//! This module must never let a PIN, a Vault token or the private key out: errors name the
//! signer (module and token, or Vault address and key) and what went wrong, nothing else.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rsa::traits::SignatureScheme;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::Digest;

use super::settings::{Pkcs11Settings, VaultTransitSettings};
use super::{Algorithm, Certificate, Form, KeyError, Pkcs11Signer, SigningKey, VaultTransitSigner};

impl Algorithm {
    /// The digest of the JWS signing input (`header.payload`) for this algorithm.
    pub(crate) fn digest(self, input: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::RS256 => sha2::Sha256::digest(input).to_vec(),
            Algorithm::RS384 => sha2::Sha384::digest(input).to_vec(),
            Algorithm::RS512 => sha2::Sha512::digest(input).to_vec(),
        }
    }

    /// The PKCS#1 v1.5 padding scheme over a digest of this algorithm.
    pub(crate) fn pkcs1v15(self) -> Pkcs1v15Sign {
        match self {
            Algorithm::RS256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
            Algorithm::RS384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
            Algorithm::RS512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
        }
    }

    /// The DER `DigestInfo` prefix (hash OID) a raw `CKM_RSA_PKCS` signature puts before the digest.
    pub(crate) fn digest_info(self, digest: &[u8]) -> Vec<u8> {
        let mut info = self.pkcs1v15().prefix.to_vec();
        info.extend_from_slice(digest);
        info
    }

    /// Vault transit's name of the hash (`hash_algorithm`).
    pub(crate) fn vault_hash(self) -> &'static str {
        match self {
            Algorithm::RS256 => "sha2-256",
            Algorithm::RS384 => "sha2-384",
            Algorithm::RS512 => "sha2-512",
        }
    }
}

/// Why a signer gave no signature. The text names the signer and the cause, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{signer}: {reason}")]
pub struct SignError {
    /// Where the key is: `vault transit at https://vault:8200/ (key maskinporten)`.
    pub signer: String,
    pub reason: String,
    pub failure: SignFailure,
}

/// What kind of failure, for `/metrics` (`outcome`) and the start-up message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignFailure {
    /// No connection, a lost session, a token not present: may work a moment later.
    Unreachable,
    /// The signer answered and said no (permission denied, wrong PIN, no such key).
    Refused,
    /// No answer in time.
    Timeout,
    /// An answer that is not a signature by the configured key.
    Invalid,
}

impl SignFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            SignFailure::Unreachable => "unreachable",
            SignFailure::Refused => "refused",
            SignFailure::Timeout => "timeout",
            SignFailure::Invalid => "invalid",
        }
    }
}

/// A signer that holds the key outside this process. `sign` gets the digest and returns the raw
/// PKCS#1 v1.5 signature; it is async because it may be a network call (blocking libraries run
/// it on `spawn_blocking`).
pub(crate) trait RemoteSigner: Send + Sync + 'static {
    /// `pkcs11`, `vault_transit`: the `signer` label on `/metrics`.
    fn kind(&self) -> &'static str;
    /// Where the key is, for messages, `check` and `/readyz`; no secret.
    fn location(&self) -> &str;
    fn sign(
        self: Arc<Self>,
        algorithm: Algorithm,
        digest: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, SignError>>;
}

/// The one who signs for a [`super::SigningKey`].
#[derive(Clone)]
pub(crate) enum Signer {
    /// A key file (PEM, JWK/JWKS, PKCS#12) or a generated key: signed in memory, inline.
    InMemory(Arc<RsaPrivateKey>),
    Remote(Arc<dyn RemoteSigner>),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signer::InMemory(_) => f.write_str("InMemory([redacted])"),
            Signer::Remote(r) => write!(f, "Remote({})", r.location()),
        }
    }
}

impl Signer {
    /// Sign `digest` (of `algorithm`).
    pub(crate) async fn sign(
        &self,
        algorithm: Algorithm,
        digest: Vec<u8>,
    ) -> Result<Vec<u8>, SignError> {
        match self {
            Signer::InMemory(private) => {
                private
                    .sign(algorithm.pkcs1v15(), &digest)
                    .map_err(|e| SignError {
                        signer: "the key file".into(),
                        reason: e.to_string(),
                        failure: SignFailure::Invalid,
                    })
            }
            Signer::Remote(remote) => remote.clone().sign(algorithm, digest).await,
        }
    }

    /// Sign `digest` for a grant, counted and timed on `/metrics` when the signer is outside
    /// the process.
    pub(crate) async fn sign_grant(
        &self,
        algorithm: Algorithm,
        digest: Vec<u8>,
    ) -> Result<Vec<u8>, SignError> {
        let started = std::time::Instant::now();
        let signature = self.sign(algorithm, digest).await;
        self.count("grant", &signature, started);
        signature
    }

    /// Count one signature of `purpose` (`grant`, `probe`) asked of a signer outside the process
    /// with its outcome; a key file signs in memory and is not counted.
    fn count<T>(
        &self,
        purpose: &'static str,
        result: &Result<T, SignError>,
        started: std::time::Instant,
    ) {
        if let Some(remote) = self.remote() {
            let outcome = result.as_ref().err().map_or("ok", |e| e.failure.as_str());
            crate::telemetry::meters::signer_call(
                remote.kind(),
                purpose,
                outcome,
                started.elapsed(),
            );
        }
    }

    pub(crate) fn remote(&self) -> Option<&Arc<dyn RemoteSigner>> {
        match self {
            Signer::InMemory(_) => None,
            Signer::Remote(r) => Some(r),
        }
    }
}

/// Sign a probe digest and verify it with `public`: a wrong key, a wrong mechanism or a key that
/// is not the one configured fails here, at start-up, at reload and in `check`, with one clear
/// line. Counted on `/metrics` with `purpose="probe"` (a signature that does not verify as
/// `outcome="invalid"`).
pub(crate) async fn probe(
    signer: &Signer,
    public: &RsaPublicKey,
    algorithm: Algorithm,
    location: &str,
) -> Result<(), SignError> {
    let started = std::time::Instant::now();
    let probed = probe_once(signer, public, algorithm, location).await;
    signer.count("probe", &probed, started);
    probed
}

async fn probe_once(
    signer: &Signer,
    public: &RsaPublicKey,
    algorithm: Algorithm,
    location: &str,
) -> Result<(), SignError> {
    let digest = algorithm.digest(b"maskinporten-broker probe");
    let signature = signer.sign(algorithm, digest.clone()).await?;
    algorithm
        .pkcs1v15()
        .verify(public, &digest, &signature)
        .map_err(|_| SignError {
            signer: location.to_owned(),
            reason: format!(
                "the probe signature ({}) does not verify with the key's public half: the key or the mechanism is not RSA PKCS#1 v1.5",
                algorithm.name()
            ),
            failure: SignFailure::Invalid,
        })
}

/// Which version of a Vault transit key signs: `version` (or the latest), under the kid
/// `<kid>-v<N>` when `versioned_kid` (`key_rotation.action: rotate`).
#[derive(Debug, Clone, Copy, Default)]
pub struct VaultPin {
    pub version: Option<u64>,
    pub versioned_kid: bool,
}

/// The kid of version `version` of a transit key under `key_rotation.action: rotate`: the
/// configured `kid` and the version (`mp-v3`).
pub fn versioned_kid(kid: &str, version: u64) -> String {
    format!("{kid}-v{version}")
}

/// A key outside the process, as `key.pkcs11` or `key.vault_transit` configure it (at most one).
#[derive(Debug, Clone, Copy)]
pub struct OutsideKey<'a> {
    pub pkcs11: Option<&'a Pkcs11Settings>,
    pub vault_transit: Option<&'a VaultTransitSettings>,
    pub algorithm: Algorithm,
}

/// The key of `key.pkcs11` or `key.vault_transit` with `kid` from the configuration: its public
/// half (and a certificate on the token) read from there, and a probe signature verified with it.
/// `None` when the key is a file. `max_sessions` bounds the HSM's session pool, `timeout` each
/// call to Vault.
pub(crate) async fn load_outside(
    settings: OutsideKey<'_>,
    kid: Option<&str>,
    vault: VaultPin,
    max_sessions: usize,
    timeout: Duration,
) -> Result<Option<SigningKey>, KeyError> {
    let mut kid = kid.map(str::to_owned);
    let (signer, public, chain, form): (Arc<dyn RemoteSigner>, _, Vec<Certificate>, _) =
        if let Some(p) = settings.pkcs11 {
            let p = p.clone();
            let (signer, public, certificate) =
                blocking(p.location(), "opening the token", move || {
                    Pkcs11Signer::open(&p, max_sessions)
                })
                .await?;
            (
                signer,
                public,
                certificate.into_iter().collect(),
                Form::Pkcs11,
            )
        } else if let Some(v) = settings.vault_transit {
            let signer = VaultTransitSigner::new(v, timeout)?;
            let (public, version) = signer.public_key(vault.version).await?;
            if vault.versioned_kid {
                kid = kid.map(|k| versioned_kid(&k, version));
            }
            (signer, public, Vec::new(), Form::VaultTransit)
        } else {
            return Ok(None);
        };
    if let Some(leaf) = chain.first() {
        leaf.check_key(&public)?;
        leaf.check_validity(std::time::SystemTime::now())?;
    }
    let location = signer.location().to_owned();
    let algorithm = settings.algorithm;
    let key = SigningKey::remote(signer, public.clone(), kid, algorithm, chain, form)?;
    probe(key.signer(), &public, algorithm, &location).await?;
    Ok(Some(key))
}

/// Create the key of `key.pkcs11` (`vault` false) or `key.vault_transit` (`vault` true), RSA of
/// `bits`, refusing when one is there already; then load it as the broker does (probe included).
pub(crate) async fn create_outside(
    settings: OutsideKey<'_>,
    vault: bool,
    kid: &str,
    bits: usize,
    timeout: Duration,
) -> Result<SigningKey, KeyError> {
    let missing = |what: &str| SignError {
        signer: "keygen".into(),
        reason: format!("the config has no {what} section to create the key in"),
        failure: SignFailure::Refused,
    };
    if vault {
        let v = settings
            .vault_transit
            .ok_or_else(|| missing("key.vault_transit"))?;
        VaultTransitSigner::new(v, timeout)?
            .create_key(bits)
            .await?;
    } else {
        let p = settings
            .pkcs11
            .cloned()
            .ok_or_else(|| missing("key.pkcs11"))?;
        blocking(p.location(), "generating the key", move || {
            Pkcs11Signer::generate(&p, bits)
        })
        .await?;
    }
    load_outside(settings, Some(kid), VaultPin::default(), 1, timeout)
        .await?
        .ok_or_else(|| missing("key.pkcs11 or key.vault_transit").into())
}

/// Run a blocking PKCS#11 step off the async workers; a panic inside the module becomes a
/// sentence naming the signer.
async fn blocking<T: Send + 'static>(
    location: String,
    doing: &str,
    step: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, KeyError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|_| SignError {
            signer: location,
            reason: format!("the PKCS#11 module failed while {doing}"),
            failure: SignFailure::Invalid,
        })?
}

/// The longest a remote signer may take for one signature (Vault's HTTP timeout is
/// `http_client.timeout`; this bounds an HSM that hangs).
pub(crate) const SIGN_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = include_str!("../../tests/fixtures/client-key.pem");

    #[tokio::test]
    async fn in_memory_signatures_verify_and_the_digest_info_is_what_pkcs11_expects() {
        use rsa::pkcs8::DecodePrivateKey;
        let private = RsaPrivateKey::from_pkcs8_pem(PEM).unwrap();
        let public = private.to_public_key();
        let signer = Signer::InMemory(Arc::new(private.clone()));
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            probe(&signer, &public, alg, "file").await.unwrap();
            // A raw CKM_RSA_PKCS signature over DigestInfo is the same signature.
            let digest = alg.digest(b"x");
            let raw = private
                .sign(Pkcs1v15Sign::new_unprefixed(), &alg.digest_info(&digest))
                .unwrap();
            assert_eq!(raw, signer.sign(alg, digest).await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_signature_by_another_key_fails_the_probe_with_one_line() {
        use rsa::pkcs8::DecodePrivateKey;
        let private = RsaPrivateKey::from_pkcs8_pem(PEM).unwrap();
        let other =
            RsaPrivateKey::from_pkcs8_pem(include_str!("../../tests/fixtures/other-key.pem"))
                .unwrap();
        let signer = Signer::InMemory(Arc::new(private));
        let err = probe(&signer, &other.to_public_key(), Algorithm::RS256, "here")
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("here: the probe signature"));
        assert!(!err.to_string().contains('\n'));
    }
}

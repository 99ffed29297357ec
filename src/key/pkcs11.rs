//! `key.pkcs11`: grants signed by an HSM over PKCS#11 (the `cryptoki` crate; SoftHSM2 in tests).
//!
//! Each signature is `CKM_RSA_PKCS` over the DER `DigestInfo` of the digest the broker made, on a
//! logged-in session from a pool of at most `cache.max_concurrent_fetches` (the most fetches that
//! can sign at once). PKCS#11 calls block, so they run on `spawn_blocking`.
//!
//! A lost session or login (`CKR_SESSION_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`, a token
//! removed and put back) drops every pooled session, finds the token and key again, logs in and
//! tries once more: no restart needed. The public key is read from the token.
//!
//! This module must never put the PIN in a message, a log line or `Debug`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use futures::future::BoxFuture;
use rsa::{BigUint, RsaPublicKey};

use super::secret::Secret;
use super::settings::Pkcs11Settings;
use super::signer::{RemoteSigner, SIGN_TIMEOUT, SignError, SignFailure};
use super::{Algorithm, Certificate, KeyError};

/// An RSA private key on a PKCS#11 token.
pub(crate) struct Pkcs11Signer {
    ctx: Pkcs11,
    settings: Pkcs11Settings,
    pin: Secret,
    location: String,
    /// Logged-in sessions not in use; at most `max_sessions`.
    idle: Mutex<Vec<Session>>,
    /// The token's slot and the key's handle, found once and again after a loss.
    found: Mutex<Option<(Slot, ObjectHandle)>>,
    /// At most this many signatures at once, each on its own session.
    permits: Arc<tokio::sync::Semaphore>,
    max_sessions: usize,
}

/// What went wrong on the token: a PKCS#11 return value, or something the broker looked for
/// and did not find.
enum P11Error {
    Ck(CkError),
    Missing(String),
}

impl From<CkError> for P11Error {
    fn from(e: CkError) -> Self {
        P11Error::Ck(e)
    }
}

impl P11Error {
    fn rv(&self) -> Option<RvError> {
        match self {
            P11Error::Ck(CkError::Pkcs11(rv, _)) => Some(*rv),
            _ => None,
        }
    }

    /// A lost session, login or token, which a new session (and login) may mend.
    fn is_lost(&self) -> bool {
        matches!(
            self.rv(),
            Some(
                RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::UserNotLoggedIn
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::TokenNotRecognized
                    | RvError::ObjectHandleInvalid
                    | RvError::KeyHandleInvalid
                    | RvError::SlotIdInvalid
                    | RvError::CryptokiNotInitialized
                    | RvError::DeviceError
            )
        )
    }

    fn failure(&self) -> SignFailure {
        match self {
            P11Error::Missing(_) => SignFailure::Refused,
            P11Error::Ck(CkError::LibraryLoading(_)) => SignFailure::Refused,
            P11Error::Ck(CkError::Pkcs11(rv, _)) if lost(*rv) => SignFailure::Unreachable,
            P11Error::Ck(CkError::Pkcs11(..)) => SignFailure::Refused,
            P11Error::Ck(_) => SignFailure::Invalid,
        }
    }

    /// One short sentence: the PKCS#11 name of the return value and what it means here.
    fn reason(&self) -> String {
        match self {
            P11Error::Missing(what) => what.clone(),
            P11Error::Ck(CkError::LibraryLoading(e)) => format!("cannot load the module: {e}"),
            P11Error::Ck(CkError::Pkcs11(rv, function)) => {
                let name = ckr_name(*rv);
                let meaning = match rv {
                    RvError::PinIncorrect => "wrong PIN",
                    RvError::PinLocked => "the PIN is locked",
                    RvError::PinExpired => "the PIN has expired",
                    RvError::UserNotLoggedIn => "the login was lost",
                    RvError::SessionHandleInvalid | RvError::SessionClosed => {
                        "the session was lost"
                    }
                    RvError::TokenNotPresent | RvError::DeviceRemoved => "the token is not present",
                    RvError::KeyFunctionNotPermitted => "the key may not sign (CKA_SIGN is false)",
                    RvError::MechanismInvalid => "the token does not offer CKM_RSA_PKCS",
                    RvError::KeyTypeInconsistent => "the key is not an RSA key",
                    _ => "the token refused",
                };
                format!("{meaning} ({name} from C_{function:?})")
            }
            P11Error::Ck(e) => e.to_string(),
        }
    }
}

fn lost(rv: RvError) -> bool {
    P11Error::Ck(CkError::Pkcs11(rv, cryptoki::context::Function::Sign)).is_lost()
}

/// `PinIncorrect` → `CKR_PIN_INCORRECT`.
fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut name = String::from("CKR");
    for c in debug.chars() {
        if c.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

impl Pkcs11Signer {
    /// Load the module, find the token and the key, log in, and read the public key (and the
    /// certificate, with `certificate_label`). Blocking: call on `spawn_blocking`.
    pub(crate) fn open(
        settings: &Pkcs11Settings,
        max_sessions: usize,
    ) -> Result<(Arc<Self>, RsaPublicKey, Option<Certificate>), KeyError> {
        let signer = Self::connect(settings, max_sessions)?;
        let (public, certificate) = signer
            .read_public()
            .map_err(|e| KeyError::Signer(signer.error(e)))?;
        Ok((signer, public, certificate))
    }

    fn error(&self, e: P11Error) -> SignError {
        SignError {
            signer: self.location.clone(),
            reason: e.reason(),
            failure: e.failure(),
        }
    }

    /// Load and initialize the module; nothing on the token is touched yet.
    fn connect(settings: &Pkcs11Settings, max_sessions: usize) -> Result<Arc<Self>, KeyError> {
        let location = settings.location();
        let fail = |e: P11Error| {
            KeyError::Signer(SignError {
                signer: location.clone(),
                reason: e.reason(),
                failure: e.failure(),
            })
        };
        let pin = pin(settings)?;
        let ctx = Pkcs11::new(&settings.module).map_err(|e| fail(e.into()))?;
        initialize(&ctx).map_err(fail)?;
        let max_sessions = max_sessions.max(1);
        Ok(Arc::new(Pkcs11Signer {
            ctx,
            settings: settings.clone(),
            pin,
            location,
            idle: Mutex::new(Vec::new()),
            found: Mutex::new(None),
            permits: Arc::new(tokio::sync::Semaphore::new(max_sessions)),
            max_sessions,
        }))
    }

    /// The public key from the private key object (its modulus and exponent) or, where the
    /// token hides those, from the public key object of the same label or id.
    fn read_public(&self) -> Result<(RsaPublicKey, Option<Certificate>), P11Error> {
        let (slot, key) = self.target()?;
        let session = self.session(slot)?;
        let wanted = [AttributeType::Modulus, AttributeType::PublicExponent];
        let mut public = rsa_public(&session.get_attributes(key, &wanted)?);
        if public.is_none() {
            let mut template = self.key_template();
            template[0] = Attribute::Class(ObjectClass::PUBLIC_KEY);
            if let Some(object) = session.find_objects(&template)?.first() {
                public = rsa_public(&session.get_attributes(*object, &wanted)?);
            }
        }
        let public = public.ok_or_else(|| {
            P11Error::Missing(
                "the key's modulus and exponent cannot be read (not an RSA key, or no public key object beside it)".into(),
            )
        })?;
        let certificate = match &self.settings.certificate_label {
            None => None,
            Some(label) => Some(self.certificate(&session, label)?),
        };
        self.put_back(session);
        Ok((public, certificate))
    }

    fn certificate(&self, session: &Session, label: &str) -> Result<Certificate, P11Error> {
        let template = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let object = *session.find_objects(&template)?.first().ok_or_else(|| {
            P11Error::Missing(format!("no certificate labelled {label:?} on the token"))
        })?;
        let der = session
            .get_attributes(object, &[AttributeType::Value])?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(der) => Some(der),
                _ => None,
            })
            .ok_or_else(|| P11Error::Missing(format!("certificate {label:?} has no value")))?;
        Certificate::from_der(&der)
            .map_err(|e| P11Error::Missing(format!("certificate {label:?}: {e}")))
    }

    /// The template that finds the private key: by label or by id.
    fn key_template(&self) -> Vec<Attribute> {
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        match (&self.settings.key_label, &self.settings.key_id) {
            (Some(label), _) => template.push(Attribute::Label(label.as_bytes().to_vec())),
            (None, Some(id)) => template.push(Attribute::Id(hex::decode(id).unwrap_or_default())),
            (None, None) => {}
        }
        template
    }

    /// The slot holding the configured token.
    fn slot(&self) -> Result<Slot, P11Error> {
        if let Some(n) = self.settings.slot {
            return Ok(Slot::try_from(n)?);
        }
        let label = self.settings.token_label.as_deref().unwrap_or_default();
        for slot in self.ctx.get_slots_with_token()? {
            if self.ctx.get_token_info(slot)?.label().trim_end() == label {
                return Ok(slot);
            }
        }
        Err(P11Error::Missing(format!(
            "no token labelled {label:?} (softhsm2-util --show-slots or pkcs11-tool --list-slots lists them)"
        )))
    }

    /// The slot and the key handle, found on first use and again after a loss.
    fn target(&self) -> Result<(Slot, ObjectHandle), P11Error> {
        if let Some(found) = *lock(&self.found) {
            return Ok(found);
        }
        let slot = self.slot()?;
        let session = self.session(slot)?;
        let keys = session.find_objects(&self.key_template())?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => {
                return Err(P11Error::Missing(
                    "no such private key on the token (check key_label or key_id)".into(),
                ));
            }
            _ => {
                return Err(P11Error::Missing(format!(
                    "{} private keys match; use key_id to pick one",
                    keys.len()
                )));
            }
        };
        self.put_back(session);
        *lock(&self.found) = Some((slot, key));
        Ok((slot, key))
    }

    /// A pooled session, or a new one, logged in.
    fn session(&self, slot: Slot) -> Result<Session, P11Error> {
        if let Some(session) = lock(&self.idle).pop() {
            return Ok(session);
        }
        let session = self.ctx.open_ro_session(slot)?;
        let pin = AuthPin::new(self.pin.expose().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(e.into()),
        }
    }

    fn put_back(&self, session: Session) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_sessions {
            idle.push(session);
        }
    }

    /// Forget every session and handle: the next use finds the token and key again.
    fn reset(&self) {
        lock(&self.idle).clear();
        *lock(&self.found) = None;
        // After a C_Finalize elsewhere in the process, or a module that lost its state.
        let _ = initialize(&self.ctx);
    }

    fn try_sign(&self, data: &[u8]) -> Result<Vec<u8>, P11Error> {
        let (slot, key) = self.target()?;
        let session = self.session(slot)?;
        let signature = session.sign(&Mechanism::RsaPkcs, key, data)?;
        self.put_back(session);
        Ok(signature)
    }

    /// Sign, recovering once from a lost session, login or token.
    fn sign_blocking(&self, algorithm: Algorithm, digest: &[u8]) -> Result<Vec<u8>, SignError> {
        let data = algorithm.digest_info(digest);
        let result = match self.try_sign(&data) {
            Err(e) if e.is_lost() => {
                tracing::info!(signer = %self.location, reason = %e.reason(), "the PKCS#11 session or login was lost: opening a new one");
                self.reset();
                self.try_sign(&data)
            }
            other => other,
        };
        result.map_err(|e| self.error(e))
    }

    /// Generate an RSA key pair on the token (`keygen --pkcs11`): private key sensitive,
    /// not extractable, sign only; both halves with the configured label or id.
    /// Refused when a private key with that label or id is there already. Blocking.
    pub(crate) fn generate(settings: &Pkcs11Settings, bits: usize) -> Result<(), KeyError> {
        let signer = Self::connect(settings, 1)?;
        match signer.target() {
            Ok(_) => Err(KeyError::Signer(signer.error(P11Error::Missing(
                "a private key with this label or id is on the token already; refusing to make a second (use it, or pick another key_label)".into(),
            )))),
            Err(P11Error::Missing(m)) if m.starts_with("no such private key") => {
                signer.generate_pair(bits).map_err(KeyError::Signer)
            }
            Err(e) => Err(KeyError::Signer(signer.error(e))),
        }
    }

    fn generate_pair(&self, bits: usize) -> Result<(), SignError> {
        let fail = |e: P11Error| self.error(e);
        let slot = self.slot().map_err(fail)?;
        let session = self.ctx.open_rw_session(slot).map_err(|e| fail(e.into()))?;
        let pin = AuthPin::new(self.pin.expose().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(fail(e.into())),
        }
        let naming: Vec<Attribute> = self.key_template().into_iter().skip(1).collect();
        let mut public_template = vec![
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::ModulusBits((bits as u64).into()),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        ];
        public_template.extend(naming.iter().cloned());
        let mut private_template = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
        ];
        private_template.extend(naming);
        session
            .generate_key_pair(
                &Mechanism::RsaPkcsKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|e| fail(e.into()))?;
        Ok(())
    }
}

impl RemoteSigner for Pkcs11Signer {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }
    fn location(&self) -> &str {
        &self.location
    }
    fn sign(
        self: Arc<Self>,
        algorithm: Algorithm,
        digest: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, SignError>> {
        Box::pin(async move {
            let timeout = |reason: &str| SignError {
                signer: self.location.clone(),
                reason: reason.to_owned(),
                failure: SignFailure::Timeout,
            };
            // The permit travels into the blocking task: a hung call keeps its session counted.
            let permit = tokio::time::timeout(SIGN_TIMEOUT, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| timeout("every session stayed busy"))?
                .map_err(|_| timeout("the session pool is closed"))?;
            let this = self.clone();
            let task = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                this.sign_blocking(algorithm, &digest)
            });
            match tokio::time::timeout(SIGN_TIMEOUT, task).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(SignError {
                    signer: self.location.clone(),
                    reason: "the PKCS#11 call failed".into(),
                    failure: SignFailure::Invalid,
                }),
                Err(_) => Err(timeout("no signature in time")),
            }
        })
    }
}

/// `C_Initialize`, once per process: another signer of the same module (a reload, a second
/// client) finds it initialized.
fn initialize(ctx: &Pkcs11) -> Result<(), P11Error> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The user PIN from `pin` (`BROKER__KEY__PKCS11__PIN`) or `pin_file`.
fn pin(settings: &Pkcs11Settings) -> Result<Secret, KeyError> {
    if let Some(pin) = &settings.pin {
        return Ok(Secret::new(pin.as_str()));
    }
    let path: &Path = settings.pin_file.as_deref().unwrap_or(Path::new(""));
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::PasswordFile {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

fn rsa_public(attributes: &[Attribute]) -> Option<RsaPublicKey> {
    let mut n = None;
    let mut e = None;
    for a in attributes {
        match a {
            Attribute::Modulus(v) if !v.is_empty() => n = Some(BigUint::from_bytes_be(v)),
            Attribute::PublicExponent(v) if !v.is_empty() => e = Some(BigUint::from_bytes_be(v)),
            _ => {}
        }
    }
    RsaPublicKey::new(n?, e?).ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_read_as_their_pkcs11_names_and_lost_sessions_are_recoverable() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert!(lost(RvError::UserNotLoggedIn) && lost(RvError::SessionHandleInvalid));
        assert!(!lost(RvError::PinIncorrect));
        let wrong = P11Error::Ck(CkError::Pkcs11(
            RvError::PinIncorrect,
            cryptoki::context::Function::Login,
        ));
        assert_eq!(wrong.reason(), "wrong PIN (CKR_PIN_INCORRECT from C_Login)");
        assert_eq!(wrong.failure(), SignFailure::Refused);
    }
}

/// Against SoftHSM2 (installed by `.ci/install-signer-tools.sh` when missing), with a token
/// directory of this test process.
#[cfg(test)]
mod softhsm_tests {
    use super::*;
    use std::time::Duration;

    const PIN: &str = "unit-pin";

    fn settings() -> Pkcs11Settings {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let installed = std::process::Command::new("bash")
            .arg(root.join(".ci/install-signer-tools.sh"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(installed.status.success(), "{installed:?}");
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::create_dir(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        let tokens = dir.join("tokens");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}\n", tokens.display()),
        )
        .unwrap();
        // The only PKCS#11 user in this test binary; read when the module is initialized.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        let key = root.join("tests/fixtures/client-key.pem");
        for args in [
            vec![
                "--init-token",
                "--free",
                "--label",
                "unit",
                "--pin",
                PIN,
                "--so-pin",
                "so-pin",
            ],
            vec![
                "--import",
                key.to_str().unwrap(),
                "--token",
                "unit",
                "--label",
                "k",
                "--id",
                "01",
                "--pin",
                PIN,
            ],
        ] {
            let out = std::process::Command::new("softhsm2-util")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        Pkcs11Settings {
            module: [
                "/usr/lib/softhsm/libsofthsm2.so",
                "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            ]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .unwrap(),
            token_label: Some("unit".into()),
            slot: None,
            key_label: Some("k".into()),
            key_id: None,
            pin_file: None,
            pin: Some(PIN.into()),
            certificate_label: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signature_past_the_session_limit_waits_for_a_session() {
        let (signer, public, _) = Pkcs11Signer::open(&settings(), 2).unwrap();
        let digest = Algorithm::RS256.digest(b"x");
        let sign = || signer.clone().sign(Algorithm::RS256, digest.clone());
        // Both sessions busy: a third signature waits.
        let busy = signer.permits.clone().acquire_many_owned(2).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), sign()).await;
        assert!(waited.is_err(), "signed past the limit of 2 sessions");
        drop(busy);
        let signature = sign().await.unwrap();
        let verified = public.verify(Algorithm::RS256.pkcs1v15(), &digest, &signature);
        assert!(verified.is_ok());
        // A burst of 8 leaves at most 2 sessions open.
        let burst = futures::future::join_all((0..8).map(|_| sign())).await;
        assert!(burst.iter().all(Result::is_ok));
        assert!(lock(&signer.idle).len() <= 2);
    }
}

//! The key keeper: keeps the default client's key alive through Digdir's self-service API.
//!
//! Every `key_rotation.check_every` it reads Digdir's set, puts each key's expiry in view
//! (`/readyz`, `broker_key_expires_at_seconds`, warn lines at 30, 14, 7 and 1 days) and, when a
//! key in use expires within `renew_before`, renews it: it posts the whole set as Digdir holds
//! it, with the same public keys, so Digdir gives each a new year. Keys the broker does not hold
//! stay in the set; it never removes one (another replica or app may sign with it).
//!
//! A failure never stops tokens: the key keeps signing, a warn line names the API and the status,
//! `broker_key_rotation_failures_total` counts it, `/readyz` shows it, and the check is tried
//! again with backoff (at most [`MAX_ATTEMPTS`] times, then at the next `check_every`).
//!
//! It sits above `config/` and `upstream/`: `key/mod.rs` never imports it. It never logs a key,
//! the admin token or a password.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::KeyRotationSettings;
use crate::key::SigningKey;
use crate::key::jwks_file::{
    CREATED_AT, JwksFile, JwksFileError, SIGNING_SINCE, from_unix, signing_kid, unix,
};
use crate::key::status::{Failure, KeyReport, KeyWatch};
use crate::upstream::self_service::{DigdirKey, SelfServiceClient, SelfServiceError, public_only};

/// Attempts per check before waiting for the next `check_every`.
pub const MAX_ATTEMPTS: u32 = 5;
/// The days before expiry at which a warning is logged once.
pub const WARN_DAYS: [i64; 4] = [30, 14, 7, 1];

/// A key the broker holds: its kid and public JWK.
#[derive(Debug, Clone)]
pub struct HeldKey {
    pub kid: String,
    pub jwk: Value,
    /// The certificate's not-after, for a business certificate.
    pub not_after: Option<SystemTime>,
}

impl HeldKey {
    /// The public half of a signing key; `None` for a key without a kid (Digdir needs one).
    pub fn of(key: &SigningKey) -> Option<HeldKey> {
        Some(HeldKey {
            kid: key.kid()?.to_owned(),
            jwk: public_only(&key.public_jwk()),
            not_after: key.not_after(),
        })
    }
}

/// What one check did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The kids renewed (posted again); empty when nothing was due.
    pub renewed: Vec<String>,
    pub keys: Vec<KeyReport>,
}

/// Keeps one client's keys alive.
pub struct KeyKeeper {
    pub client_id: String,
    /// The keys the broker holds (all of a JWKS file), and which signs.
    pub held: Vec<HeldKey>,
    pub in_use: Option<String>,
    /// Where the keys are kept, for reports (`key.path /run/keys.json`).
    pub kept: String,
    pub api: SelfServiceClient,
    pub settings: KeyRotationSettings,
    pub watch: KeyWatch,
    /// With `action: rotate`: the JWKS file of `key.path`, rewritten step by step.
    pub rotate: Option<JwksFile>,
    /// The algorithm of new keys (`key.algorithm`).
    pub algorithm: crate::key::Algorithm,
    /// Called after a switch, so this process signs with the new key at once (other processes
    /// sharing the file reload it when it changes).
    /// `None`: the key file changed; `Some(n)`: sign with version n of the Vault transit key.
    pub on_switch: Option<Box<dyn Fn(Option<u64>) + Send + Sync>>,
    /// With `action: rotate` and `key.vault_transit`: the transit key, rotated in Vault.
    pub vault: Option<crate::key::vault_rotation::VaultRotation>,
    /// The kid the file said signs at the last step: another process may switch it.
    seen_signing: Mutex<Option<String>>,
    /// (kid, days) warnings already logged: at most 5 keys × 4 tiers.
    warned: Mutex<HashSet<(String, i64)>>,
}

/// Why a rotation step failed: Digdir refused, or the key file could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error(transparent)]
    Api(#[from] SelfServiceError),
    #[error(transparent)]
    File(#[from] JwksFileError),
    #[error("cannot make a new key pair")]
    Generate(#[source] crate::key::KeyError),
    #[error(transparent)]
    Vault(#[from] crate::key::vault_rotation::VaultStepError),
}

impl KeeperError {
    pub fn status(&self) -> String {
        match self {
            KeeperError::Api(e) => e.status(),
            KeeperError::File(_) => "key_file".into(),
            KeeperError::Generate(_) => "generate".into(),
            KeeperError::Vault(e) => e.status(),
        }
    }
}

/// Why the keeper cannot start as configured (one line each).
#[derive(Debug, thiserror::Error)]
pub enum StartKeeperError {
    #[error(transparent)]
    Key(#[from] crate::key::store::KeyLoadError),
    #[error("{0}")]
    Refused(String),
}

/// When a key was uploaded (our own member; absent after a crash right after the upload).
pub const UPLOADED_AT: &str = "broker_uploaded_at";

impl KeyKeeper {
    pub fn new(
        client_id: String,
        held: Vec<HeldKey>,
        in_use: Option<String>,
        kept: String,
        api: SelfServiceClient,
        settings: KeyRotationSettings,
        watch: KeyWatch,
    ) -> Self {
        watch.set_action(settings.action.name());
        KeyKeeper {
            client_id,
            held,
            in_use,
            kept,
            api,
            settings,
            watch,
            rotate: None,
            algorithm: crate::key::Algorithm::RS256,
            on_switch: None,
            vault: None,
            seen_signing: Mutex::default(),
            warned: Mutex::default(),
        }
    }

    /// Read Digdir's set and report it; change nothing.
    pub async fn status(&self) -> Result<Vec<KeyReport>, SelfServiceError> {
        let now = SystemTime::now();
        let set = self.api.read(&self.client_id).await?;
        let keys = self.report(&set, now);
        self.watch.set_keys(keys.clone());
        self.watch.checked(now);
        Ok(keys)
    }

    /// One step: with `action: rotate` a rotation step, else [`KeyKeeper::check`]. Returns when
    /// the next step is due while a rotation is in progress.
    pub async fn step(
        &self,
        force: bool,
    ) -> Result<(Vec<KeyReport>, Option<Duration>), KeeperError> {
        let (keys, next) = match (&self.rotate, &self.vault) {
            (Some(file), _) => self.rotate_step(file, force).await?,
            (None, Some(vault)) => {
                let switch_to = |version: u64| {
                    if let Some(switched) = &self.on_switch {
                        switched(Some(version));
                    }
                };
                let keeping = crate::key::vault_rotation::Keeping {
                    api: &self.api,
                    client_id: &self.client_id,
                    settings: &self.settings,
                    switch_to: &switch_to,
                };
                let step = vault.step(&keeping, force).await?;
                let held: Vec<HeldKey> = step
                    .held
                    .into_iter()
                    .map(|(kid, jwk)| HeldKey {
                        kid,
                        jwk,
                        not_after: None,
                    })
                    .collect();
                let now = SystemTime::now();
                let reports = self.report_with(&step.set, &held, Some(&step.signing), now);
                (reports, step.next)
            }
            (None, None) => (self.check(force).await?.keys, None),
        };
        self.watch.set_keys(keys.clone());
        self.watch.checked(SystemTime::now());
        Ok((keys, next))
    }

    /// Read Digdir's set, report it, renew what is due (`force`: renew every held key now).
    pub async fn check(&self, force: bool) -> Result<Outcome, SelfServiceError> {
        let now = SystemTime::now();
        let set = self.api.read(&self.client_id).await?;
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|h| force || self.is_due(h, &set, now))
            .map(|h| h.kid.clone())
            .collect();
        let set = if due.is_empty() {
            set
        } else {
            let renewed = self.renew(&set).await?;
            tracing::info!(
                client_id = %self.client_id,
                kids = due.join(", "),
                api = %self.api.api(),
                "renewed in Digdir: the same public keys posted again, each valid for another year"
            );
            renewed
        };
        let keys = self.report(&set, now);
        self.watch.set_keys(keys.clone());
        self.watch.checked(now);
        Ok(Outcome { renewed: due, keys })
    }

    /// A key in use whose expiry Digdir puts within `renew_before`, or which Digdir lacks.
    fn is_due(&self, held: &HeldKey, set: &[DigdirKey], now: SystemTime) -> bool {
        if self.in_use.as_deref() != Some(&held.kid) {
            return false;
        }
        match set.iter().find(|k| k.kid == held.kid) {
            Some(k) => k
                .exp
                .is_some_and(|exp| exp < now + self.settings.renew_before),
            None => true,
        }
    }

    /// Post the whole set as Digdir holds it, plus the key in use if Digdir lacks it (other
    /// keys of the file are not added back: one may have been retired on purpose).
    async fn renew(&self, set: &[DigdirKey]) -> Result<Vec<DigdirKey>, SelfServiceError> {
        let mut keys: Vec<Value> = set.iter().map(|k| k.jwk.clone()).collect();
        for held in &self.held {
            if self.in_use.as_deref() == Some(&held.kid) && !set.iter().any(|k| k.kid == held.kid) {
                keys.push(held.jwk.clone());
            }
        }
        self.api.replace(&self.client_id, &keys).await
    }

    /// Each key in Digdir's set (and each held key Digdir lacks), with the warn lines and the
    /// gauge.
    fn report(&self, set: &[DigdirKey], now: SystemTime) -> Vec<KeyReport> {
        self.report_with(set, &self.held, self.in_use.as_deref(), now)
    }

    fn report_with(
        &self,
        set: &[DigdirKey],
        held_keys: &[HeldKey],
        in_use: Option<&str>,
        now: SystemTime,
    ) -> Vec<KeyReport> {
        let mut reports = Vec::new();
        for key in set {
            let held = held_keys.iter().find(|h| h.kid == key.kid);
            let expires_at = match (key.exp, held.and_then(|h| h.not_after)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            reports.push(KeyReport {
                client: self.client_id.clone(),
                kid: key.kid.clone(),
                kept: held.map_or_else(|| "digdir only".to_owned(), |_| self.kept.clone()),
                expires_at,
                in_use: in_use == Some(key.kid.as_str()),
            });
        }
        for held in held_keys {
            if !set.iter().any(|k| k.kid == held.kid) {
                tracing::warn!(client_id = %self.client_id, kid = %held.kid, "the key is not in Digdir's set for this client: grants signed with it are refused; `maskinporten-broker keys renew` uploads it");
            }
        }
        for report in &reports {
            if let Some(at) = report.expires_at {
                let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                crate::telemetry::meters::key_expires_at(&report.client, &report.kid, secs as f64);
            }
            self.warn_if_expiring(report, now);
        }
        reports
    }

    /// One warn line per key and tier (30, 14, 7, 1 days), the first check that crosses it.
    fn warn_if_expiring(&self, report: &KeyReport, now: SystemTime) {
        let Some(days) = report.days_left(now) else {
            return;
        };
        let Some(tier) = WARN_DAYS.iter().rev().find(|t| days < **t).copied() else {
            return;
        };
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() > 64 {
            warned.clear();
        }
        if warned.insert((report.kid.clone(), tier)) {
            tracing::warn!(
                client_id = %report.client,
                kid = %report.kid,
                in_use = report.in_use,
                days_left = days,
                expires_at = report.expires_at.map(crate::tokens::token::rfc3339),
                "the key expires within {tier} days: Maskinporten refuses its grants afterwards (MP-121); the broker renews it when key_rotation is set, or run `maskinporten-broker keys renew`"
            );
        }
    }

    /// Check every `check_every` until `stop`; failures retried with backoff.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        for warning in self.settings.warnings() {
            tracing::warn!("{warning}");
        }
        loop {
            let next = self.check_with_retries(&stop).await;
            let wait = next.map_or(self.settings.check_every, |n| {
                n.min(self.settings.check_every) + Duration::from_millis(50)
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One step, tried at most [`MAX_ATTEMPTS`] times with doubling waits; when the next step
    /// of a rotation in progress is due.
    pub async fn check_with_retries(&self, stop: &CancellationToken) -> Option<Duration> {
        let base = (self.settings.check_every / 20).min(Duration::from_secs(60));
        for attempt in 1..=MAX_ATTEMPTS {
            match self.step(false).await {
                Ok((_, next)) => return next,
                Err(e) => {
                    let status = e.status();
                    crate::telemetry::meters::key_rotation_failure(&self.client_id, &status);
                    tracing::warn!(
                        client_id = %self.client_id,
                        api = %self.api.api(),
                        status,
                        attempt,
                        error = %crate::telemetry::Chain(&e),
                        "Digdir's self-service API: the key set could not be read, renewed or rotated; the current key keeps signing"
                    );
                    self.watch.failed(Failure {
                        api: self.api.api().to_string(),
                        status,
                        message: e.to_string(),
                        at: SystemTime::now(),
                        attempts: attempt,
                    });
                }
            }
            if attempt == MAX_ATTEMPTS {
                return None;
            }
            let wait = base
                .saturating_mul(1 << (attempt - 1))
                .min(self.settings.check_every);
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        None
    }
}

impl KeyKeeper {
    /// One pass of the rotation, from the file and Digdir's set: upload a pending key, switch to
    /// it once propagated, retire old keys after `retire_after`, or start a rotation when the key
    /// in use is due (`force`: now). Returns when the next step is due, if one is in progress.
    /// Another process holding the file's lock is left to it.
    pub async fn rotate_step(
        &self,
        file: &JwksFile,
        force: bool,
    ) -> Result<(Vec<KeyReport>, Option<Duration>), KeeperError> {
        let _lock = match file.try_lock() {
            Ok(lock) => lock,
            Err(JwksFileError::Locked(_)) => {
                tracing::info!(path = %file.path().display(), "another process is rotating this key file; leaving it to that one");
                return Ok((self.watch.keys(), Some(self.settings.propagation)));
            }
            Err(e) => return Err(e.into()),
        };
        let mut set = self.api.read(&self.client_id).await?;
        let mut keys = file.read()?;
        self.follow_switch(signing_kid(&keys));
        let mut started = false;
        let next = loop {
            let now = SystemTime::now();
            let signing = signing_kid(&keys);
            let kid_of = |k: &Value| {
                k.get("kid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            let in_digdir = |set: &[DigdirKey], kid: &str| set.iter().any(|k| k.kid == kid);
            let member = |k: &Value, m: &str| k.get(m).and_then(Value::as_u64);
            // A pending key: made here, not yet signing.
            if let Some(i) = keys
                .iter()
                .position(|k| member(k, SIGNING_SINCE).is_none() && Some(kid_of(k)) != signing)
            {
                let kid = kid_of(&keys[i]);
                if !in_digdir(&set, &kid) {
                    let mut upload: Vec<Value> = set.iter().map(|k| k.jwk.clone()).collect();
                    upload.push(public_only(&keys[i]));
                    set = self.api.replace(&self.client_id, &upload).await?;
                    tracing::info!(client_id = %self.client_id, kid, api = %self.api.api(), "rotate: the new key is uploaded beside the old; grants keep the old key until propagation has passed");
                    keys[i][UPLOADED_AT] = unix(SystemTime::now()).into();
                    file.write(&keys)?;
                    break Some(self.settings.propagation);
                }
                let uploaded = match member(&keys[i], UPLOADED_AT) {
                    Some(at) => from_unix(at),
                    None => {
                        // A crash right after the upload: Digdir has it; wait from now.
                        keys[i][UPLOADED_AT] = unix(now).into();
                        file.write(&keys)?;
                        now
                    }
                };
                let ready = uploaded + self.settings.propagation;
                if now < ready {
                    break Some(ready.duration_since(now).unwrap_or_default());
                }
                keys[i][SIGNING_SINCE] = unix(now).max(2).into();
                file.write(&keys)?;
                *self.seen_signing.lock().unwrap_or_else(|e| e.into_inner()) = Some(kid.clone());
                if let Some(switched) = &self.on_switch {
                    switched(None);
                }
                tracing::info!(client_id = %self.client_id, kid, "rotate: switched; grants are signed with the new key (the broker reloads the key file)");
                break Some(self.settings.retire_after);
            }
            // Old keys: marked, but not the one signing.
            let since = keys
                .iter()
                .find(|k| Some(kid_of(k)) == signing)
                .and_then(|k| member(k, SIGNING_SINCE));
            let old: Vec<String> = keys
                .iter()
                .filter(|k| member(k, SIGNING_SINCE).is_some() && Some(kid_of(k)) != signing)
                .map(kid_of)
                .collect();
            if let (Some(since), false) = (since, old.is_empty()) {
                let retire = from_unix(since) + self.settings.retire_after;
                if now < retire {
                    break Some(retire.duration_since(now).unwrap_or_default());
                }
                if old.iter().any(|kid| in_digdir(&set, kid)) {
                    set = self.api.retire(&self.client_id, &set, &old).await?;
                }
                keys.retain(|k| !old.contains(&kid_of(k)));
                file.write(&keys)?;
                tracing::info!(client_id = %self.client_id, retired = old.join(", "), "rotate: the old key left Digdir's set and the key file");
                break None;
            }
            // Nothing in progress: start one when the key in use is due.
            let due = signing.as_deref().is_some_and(|kid| {
                force && !started
                    || set.iter().find(|k| k.kid == kid).is_none_or(|k| {
                        k.exp
                            .is_some_and(|exp| exp < now + self.settings.renew_before)
                    })
            });
            if !due || started {
                break None;
            }
            if set.len() >= crate::key::MAX_KEYS_PER_CLIENT {
                return Err(SelfServiceError::TooManyKeys {
                    count: set.len() + 1,
                }
                .into());
            }
            let kid = fresh_kid();
            let algorithm = self.settings_algorithm();
            let generated = tokio::task::spawn_blocking({
                let kid = kid.clone();
                move || SigningKey::generate(2048, &kid, algorithm)
            })
            .await
            .map_err(|_| KeeperError::Generate(crate::key::KeyError::Encode))?
            .map_err(KeeperError::Generate)?;
            let mut private = generated.private_jwk();
            private[CREATED_AT] = unix(now).into();
            // Durable before its public half leaves.
            if let Some(i) = keys.iter().position(|k| Some(kid_of(k)) == signing)
                && member(&keys[i], SIGNING_SINCE).is_none()
            {
                keys[i][SIGNING_SINCE] = 1.into();
            }
            keys.push(private);
            file.write(&keys)?;
            tracing::info!(client_id = %self.client_id, kid, path = %file.path().display(), "rotate: a new key pair is in the key file");
            started = true;
        };
        let held: Vec<HeldKey> = keys
            .iter()
            .filter_map(|k| {
                DigdirKey::from_jwk(k).map(|d| HeldKey {
                    kid: d.kid,
                    jwk: d.jwk,
                    not_after: None,
                })
            })
            .collect();
        let reports = self.report_with(
            &set,
            &held,
            signing_kid(&keys).as_deref(),
            SystemTime::now(),
        );
        Ok((reports, next))
    }

    /// Another process (a replica, `keys rotate`) switched the key: sign with it here too.
    fn follow_switch(&self, signing: Option<String>) {
        let mut seen = self.seen_signing.lock().unwrap_or_else(|e| e.into_inner());
        if seen.is_some()
            && *seen != signing
            && let Some(switched) = &self.on_switch
        {
            switched(None);
        }
        *seen = signing;
    }

    fn settings_algorithm(&self) -> crate::key::Algorithm {
        self.algorithm
    }
}

/// A fresh kid: the date and a random suffix, unique enough for Digdir's global namespace.
pub fn fresh_kid() -> String {
    let date = time::OffsetDateTime::now_utc().date();
    format!(
        "broker-{date}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Where the default client's key is kept, for reports.
pub fn kept(key: &crate::config::KeySettings, signing: &SigningKey) -> String {
    if let Some(location) = signing.location() {
        return location.to_owned();
    }
    match (&key.path, &key.pem, &key.jwk) {
        (Some(path), _, _) => format!("key.path {}", path.display()),
        (_, Some(_), _) => "key.pem".to_owned(),
        (_, _, Some(_)) => "key.jwk".to_owned(),
        _ => "generated (env local)".to_owned(),
    }
}

/// The keeper `key_rotation:` asks for (`None` without it): the self-service client's key
/// loaded and checked, its token fetched from the same Maskinporten as the app's (`endpoints`).
pub async fn build(
    settings: &crate::config::Settings,
    signing: &SigningKey,
    endpoints: crate::config::Endpoints,
    http: reqwest::Client,
    local_base: Option<&url::Url>,
    watch: KeyWatch,
) -> Result<Option<KeyKeeper>, StartKeeperError> {
    let Some(rotation) = &settings.key_rotation else {
        return Ok(None);
    };
    let (rotate, vault) = match rotation.action {
        crate::config::RotationAction::Renew => (None, None),
        crate::config::RotationAction::Rotate => match rotatable(settings, signing)? {
            Rotatable::File(file) => (Some(file), None),
            Rotatable::Vault(vault) => (None, Some(vault)),
        },
    };
    let admin_key =
        crate::key::store::load_client_key(settings, &self_service_view(settings, rotation))
            .await?;
    let admin = crate::upstream::fetch::Fetcher::new(
        rotation.self_service.client_id.clone(),
        admin_key,
        endpoints,
        settings.grant.lifetime,
        http,
        settings.http_client.timeout,
    );
    let api = SelfServiceClient::new(
        rotation.api(settings.env, local_base),
        admin,
        rotation.self_service.scopes.clone(),
    );
    let mut held: Vec<HeldKey> = Vec::new();
    if let Ok(Some((_, file))) = crate::key::store::read_key_file(settings) {
        for jwk in file.public_jwks(settings.key.algorithm).keys {
            if let Ok(value) = serde_json::to_value(&jwk)
                && let Some(key) = DigdirKey::from_jwk(&value)
            {
                held.push(HeldKey {
                    kid: key.kid,
                    jwk: key.jwk,
                    not_after: None,
                });
            }
        }
    }
    match HeldKey::of(signing) {
        Some(key) => {
            held.retain(|h| h.kid != key.kid);
            held.push(key);
        }
        None => {
            tracing::warn!("key_rotation: the signing key has no kid; Digdir's set cannot name it")
        }
    }
    let mut keeper = KeyKeeper::new(
        settings.client_id().to_owned(),
        held,
        signing.kid().map(str::to_owned),
        kept(&settings.key, signing),
        api,
        rotation.clone(),
        watch,
    );
    keeper.rotate = rotate;
    keeper.vault = vault;
    keeper.algorithm = settings.key.algorithm;
    Ok(Some(keeper))
}

/// Where `action: rotate` makes new key pairs.
enum Rotatable {
    File(JwksFile),
    Vault(crate::key::vault_rotation::VaultRotation),
}

/// `action: rotate` needs a key store the broker can write: a JWK or JWKS file in a writable
/// folder, or a Vault transit key with a `kid:` (version N signs as `<kid>-vN`). Anything else
/// is refused at start, with one line (renew still works).
fn rotatable(
    settings: &crate::config::Settings,
    signing: &SigningKey,
) -> Result<Rotatable, StartKeeperError> {
    let refuse = |why: String| {
        StartKeeperError::Refused(format!(
            "key_rotation.action: rotate {why}; use action: renew (it posts the same public key again)"
        ))
    };
    if signing.form() == crate::key::Form::Pkcs11 {
        return Err(refuse(
            "is not supported for a key in an HSM (key.pkcs11: renew-only)".into(),
        ));
    }
    if let Some(vault) = &settings.key.vault_transit {
        let Some(kid) = settings.default_client().kid else {
            return Err(refuse(
                "with key.vault_transit needs kid: (each Vault key version signs as <kid>-v<N>)"
                    .into(),
            ));
        };
        return crate::key::vault_rotation::VaultRotation::new(
            vault,
            settings.http_client.timeout,
            kid,
            signing.kid(),
            settings.key.algorithm,
        )
        .map(Rotatable::Vault)
        .map_err(|e| refuse(format!("cannot reach key.vault_transit: {e}")));
    }
    let Some(path) = settings.key.path.as_deref() else {
        return Err(refuse(format!(
            "needs key.path to be a JWKS file the broker can write, not {}",
            kept(&settings.key, signing)
        )));
    };
    let file = JwksFile::new(path);
    file.read().map_err(|_| {
        refuse(format!(
            "needs key.path {} to be a JWK or JWKS file (a PEM cannot hold two keys)",
            path.display()
        ))
    })?;
    file.check_writable().map_err(|_| {
        refuse(format!(
            "cannot write beside key.path {} (a read-only mount?)",
            path.display()
        ))
    })?;
    Ok(Rotatable::File(file))
}

/// `key_rotation.self_service` as a Maskinporten client the key store can load.
pub fn self_service_view<'s>(
    settings: &'s crate::config::Settings,
    rotation: &'s KeyRotationSettings,
) -> crate::config::ClientView<'s> {
    crate::config::ClientView {
        name: "key_rotation.self_service",
        client_id: &rotation.self_service.client_id,
        kid: rotation.self_service.kid.as_deref(),
        key: &rotation.self_service.key,
        env: settings.env,
        endpoint_settings: &settings.endpoints,
        field: "key_rotation.self_service.".to_owned(),
    }
}

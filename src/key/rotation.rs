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
    /// (kid, days) warnings already logged: at most 5 keys × 4 tiers.
    warned: Mutex<HashSet<(String, i64)>>,
}

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

    /// Post the whole set as Digdir holds it, plus any held key it lacks.
    async fn renew(&self, set: &[DigdirKey]) -> Result<Vec<DigdirKey>, SelfServiceError> {
        let mut keys: Vec<Value> = set.iter().map(|k| k.jwk.clone()).collect();
        for held in &self.held {
            if !set.iter().any(|k| k.kid == held.kid) {
                keys.push(held.jwk.clone());
            }
        }
        self.api.replace(&self.client_id, &keys).await
    }

    /// Each key in Digdir's set (and each held key Digdir lacks), with the warn lines and the
    /// gauge.
    fn report(&self, set: &[DigdirKey], now: SystemTime) -> Vec<KeyReport> {
        let mut reports = Vec::new();
        for key in set {
            let held = self.held.iter().find(|h| h.kid == key.kid);
            let expires_at = match (key.exp, held.and_then(|h| h.not_after)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            reports.push(KeyReport {
                client: self.client_id.clone(),
                kid: key.kid.clone(),
                kept: held.map_or_else(|| "digdir only".to_owned(), |_| self.kept.clone()),
                expires_at,
                in_use: self.in_use.as_deref() == Some(&key.kid),
            });
        }
        for held in &self.held {
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
            self.check_with_retries(&stop).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.check_every) => {}
            }
        }
    }

    /// One check, tried at most [`MAX_ATTEMPTS`] times with doubling waits.
    pub async fn check_with_retries(&self, stop: &CancellationToken) {
        let base = (self.settings.check_every / 20).min(Duration::from_secs(60));
        for attempt in 1..=MAX_ATTEMPTS {
            match self.check(false).await {
                Ok(_) => return,
                Err(e) => {
                    let status = e.status();
                    crate::telemetry::meters::key_rotation_failure(&self.client_id, &status);
                    tracing::warn!(
                        client_id = %self.client_id,
                        api = %self.api.api(),
                        status,
                        attempt,
                        error = %crate::telemetry::Chain(&e),
                        "Digdir's self-service API: the key set could not be read or renewed; the current key keeps signing"
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
                return;
            }
            let wait = base
                .saturating_mul(1 << (attempt - 1))
                .min(self.settings.check_every);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
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
) -> Result<Option<KeyKeeper>, crate::key::store::KeyLoadError> {
    let Some(rotation) = &settings.key_rotation else {
        return Ok(None);
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
    Ok(Some(KeyKeeper::new(
        settings.client_id().to_owned(),
        held,
        signing.kid().map(str::to_owned),
        kept(&settings.key, signing),
        api,
        rotation.clone(),
        watch,
    )))
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

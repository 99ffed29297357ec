//! `key_rotation.action: rotate` for a key in Vault/OpenBao transit (`key.vault_transit`).
//!
//! Vault keeps the key pairs: `transit/keys/<name>/rotate` makes a new version, durable in Vault
//! before its public half is read. Each version signs under its own kid, `<kid>-v<N>`
//! ([`versioned_kid`]). The steps are those of a JWKS file: upload the new version's public key
//! beside the old (and any keys Digdir holds that the broker does not), sign with the old version
//! until `propagation` has passed, switch (grants ask Vault for the new `key_version`), and after
//! `retire_after` remove the old version's kid from Digdir's set (Vault keeps the version).
//!
//! The progress lives in Vault (`latest_version`) and Digdir's set, so a restart resumes from
//! them: the oldest version Digdir holds signs first (it is in Digdir's set, so its grants pass),
//! a newer one held by Digdir is switched to `propagation` after the restart, and one Vault made
//! but Digdir lacks is uploaded. The times of the steps are kept in memory only: a restart waits
//! each again, from the restart, which delays a rotation but never refuses a grant.
//!
//! It sits above `config/` and `upstream/` like `rotation.rs`, and never logs the Vault token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::config::KeyRotationSettings;
use crate::key::{SignError, VaultTransitSigner, versioned_kid};
use crate::upstream::self_service::{DigdirKey, SelfServiceClient, SelfServiceError, public_only};

/// What one step left: Digdir's set, the versions the broker holds (kid, public JWK), the kid
/// that signs, and when the next step is due.
pub struct VaultStep {
    pub set: Vec<DigdirKey>,
    pub held: Vec<(String, Value)>,
    pub signing: String,
    pub next: Option<Duration>,
}

/// Why a step failed: Digdir refused, or Vault did.
#[derive(Debug, thiserror::Error)]
pub enum VaultStepError {
    #[error(transparent)]
    Api(#[from] SelfServiceError),
    #[error(transparent)]
    Vault(SignError),
}

impl VaultStepError {
    pub fn status(&self) -> String {
        match self {
            VaultStepError::Api(e) => e.status(),
            VaultStepError::Vault(_) => "vault".into(),
        }
    }
}

/// The Vault side of a rotation: the transit key and what this process has seen of the steps.
pub struct VaultRotation {
    signer: Arc<VaultTransitSigner>,
    /// The configured `kid:`; version N signs as `<kid>-vN`.
    kid: String,
    algorithm: crate::key::Algorithm,
    state: tokio::sync::Mutex<Progress>,
}

/// What this process has seen; lost on restart (each wait then starts again from the restart).
#[derive(Default)]
struct Progress {
    /// The version that signs here; `None` until the first step has looked at Digdir's set.
    signing: Option<u64>,
    /// The version loaded at start (`<kid>-v<latest>`), until the first step.
    loaded: Option<u64>,
    /// When each version was uploaded, or first seen in Digdir's set.
    uploaded: BTreeMap<u64, SystemTime>,
    /// When this process switched, or first saw older versions beside the one signing.
    switched_at: Option<SystemTime>,
}

impl VaultRotation {
    /// For the transit key of `settings`, whose configured kid is `kid`; `in_use` is the kid of
    /// the key loaded at start.
    pub(crate) fn new(
        settings: &crate::key::VaultTransitSettings,
        timeout: Duration,
        kid: &str,
        in_use: Option<&str>,
        algorithm: crate::key::Algorithm,
    ) -> Result<Self, crate::key::KeyError> {
        let loaded = in_use
            .and_then(|k| k.strip_prefix(kid))
            .and_then(|rest| rest.strip_prefix("-v"))
            .and_then(|n| n.parse().ok());
        Ok(VaultRotation {
            signer: VaultTransitSigner::new(settings, timeout)?,
            kid: kid.to_owned(),
            algorithm,
            state: tokio::sync::Mutex::new(Progress {
                loaded,
                ..Progress::default()
            }),
        })
    }

    fn kid(&self, version: u64) -> String {
        versioned_kid(&self.kid, version)
    }

    /// The public JWK of `version`, as Digdir takes it.
    fn public_jwk(&self, version: u64, public: &rsa::RsaPublicKey) -> Value {
        let jwk = crate::key::jwk::public_jwk(public, Some(&self.kid(version)), self.algorithm);
        public_only(&serde_json::to_value(jwk).unwrap_or_default())
    }

    pub fn location(&self) -> &str {
        crate::key::RemoteSigner::location(self.signer.as_ref())
    }
}

/// Who the step works for: the client whose set Digdir keeps, and how.
pub struct Keeping<'k> {
    pub api: &'k SelfServiceClient,
    pub client_id: &'k str,
    pub settings: &'k KeyRotationSettings,
    /// Sign with this version from now on.
    pub switch_to: &'k (dyn Fn(u64) + Sync),
}

impl VaultRotation {
    /// One pass of a Vault rotation: upload a version Vault made and Digdir lacks, switch to it
    /// once propagated, retire older versions from Digdir after `retire_after`, or make a new
    /// version when the one signing is due (`force`: now). Returns when the next step is due.
    pub async fn step(
        &self,
        keeping: &Keeping<'_>,
        force: bool,
    ) -> Result<VaultStep, VaultStepError> {
        let vault = self;
        let Keeping {
            api,
            client_id,
            settings,
            switch_to,
        } = *keeping;
        let mut progress = vault.state.lock().await;
        let mut set = api.read(client_id).await?;
        let in_digdir = |set: &[DigdirKey], kid: &str| set.iter().any(|k| k.kid == kid);
        let mut started = false;
        let (next, publics, signing) = loop {
            let now = SystemTime::now();
            let (latest, publics) = vault
                .signer
                .versions()
                .await
                .map_err(VaultStepError::Vault)?;
            let ours: Vec<u64> = publics
                .keys()
                .copied()
                .filter(|n| in_digdir(&set, &vault.kid(*n)))
                .collect();
            // At first the oldest version Digdir holds signs: a newer one may not have
            // propagated yet (a restart in the middle of a rotation).
            let signing = match progress.signing {
                Some(signing) => signing,
                None => {
                    let loaded = progress.loaded.unwrap_or(latest);
                    let first = ours.first().copied().unwrap_or(loaded);
                    if first != loaded {
                        switch_to(first);
                    }
                    progress.signing = Some(first);
                    first
                }
            };
            if latest > signing {
                let kid = vault.kid(latest);
                if !in_digdir(&set, &kid) {
                    let Some(public) = publics.get(&latest) else {
                        break (None, publics, signing);
                    };
                    let mut upload: Vec<Value> = set.iter().map(|k| k.jwk.clone()).collect();
                    upload.push(vault.public_jwk(latest, public));
                    set = api.replace(client_id, &upload).await?;
                    progress.uploaded.insert(latest, SystemTime::now());
                    tracing::info!(client_id = %client_id, kid, api = %api.api(), "rotate: the new Vault key version is uploaded beside the old; grants keep the old version until propagation has passed");
                    break (Some(settings.propagation), publics, signing);
                }
                let uploaded = *progress.uploaded.entry(latest).or_insert(now);
                let ready = uploaded + settings.propagation;
                if now < ready {
                    break (
                        Some(ready.duration_since(now).unwrap_or_default()),
                        publics,
                        signing,
                    );
                }
                progress.signing = Some(latest);
                progress.switched_at = Some(now);
                switch_to(latest);
                tracing::info!(client_id = %client_id, kid, "rotate: switched; grants are signed with the new Vault key version");
                break (Some(settings.retire_after), publics, latest);
            }
            let old: Vec<String> = ours
                .iter()
                .filter(|n| **n < signing)
                .map(|n| vault.kid(*n))
                .collect();
            if !old.is_empty() {
                let switched = *progress.switched_at.get_or_insert(now);
                let retire = switched + settings.retire_after;
                if now < retire {
                    break (
                        Some(retire.duration_since(now).unwrap_or_default()),
                        publics,
                        signing,
                    );
                }
                set = api.retire(client_id, &set, &old).await?;
                progress.switched_at = None;
                tracing::info!(client_id = %client_id, retired = old.join(", "), "rotate: the old Vault key version left Digdir's set (Vault keeps it)");
                break (None, publics, signing);
            }
            // Nothing in progress: a new version when the one signing is due.
            let kid = vault.kid(signing);
            let due = force && !started
                || set
                    .iter()
                    .find(|k| k.kid == kid)
                    .is_none_or(|k| k.exp.is_some_and(|exp| exp < now + settings.renew_before));
            if !due || started {
                break (None, publics, signing);
            }
            if set.len() >= crate::key::MAX_KEYS_PER_CLIENT {
                return Err(SelfServiceError::TooManyKeys {
                    count: set.len() + 1,
                }
                .into());
            }
            let version = vault.signer.rotate().await.map_err(VaultStepError::Vault)?;
            tracing::info!(client_id = %client_id, version, signer = vault.location(), "rotate: Vault made a new key version");
            started = true;
        };
        let held = publics
            .iter()
            .filter(|(n, _)| **n >= signing || in_digdir(&set, &vault.kid(**n)))
            .map(|(n, public)| (vault.kid(*n), vault.public_jwk(*n, public)))
            .collect();
        Ok(VaultStep {
            set,
            held,
            signing: vault.kid(signing),
            next,
        })
    }
}

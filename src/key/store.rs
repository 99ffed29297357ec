//! The key store: every Maskinporten client's signing key, loaded from where the config says it
//! is kept (a file of any form, inline PEM or JWK text, an HSM or Vault), and the key files
//! watched for changes. `app/` only wires it: it asks for the keys at start and on reload, and
//! for the paths to watch.
//!
//! This module sits above `config/` (it reads `ClientView`), so `key/mod.rs` never imports it;
//! callers name it `crate::key::store`. It must never log or return key material or a password:
//! errors name the config field and say what is wrong with the content, never quote it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{ClientView, Environment, LOCAL_KID, Settings};
use crate::key::secret::Secret;
use crate::key::{EXPIRY_WARNING, KeyError, KeyFile, SigningKey};

/// A key that did not load, with the config field it came from (`maskinporten_clients.b.key.path`).
#[derive(Debug, thiserror::Error)]
#[error("{field}")]
pub struct KeyLoadError {
    pub field: String,
    #[source]
    pub source: KeyError,
}

/// The signing key the config names for the default client, checked (kid rules, certificate
/// validity). Warns when the certificate expires within 30 days; called at start and on every
/// reload.
pub(crate) async fn load_key(settings: &Settings) -> Result<SigningKey, KeyLoadError> {
    load_client_key(settings, &settings.default_client()).await
}

/// The keys of every Maskinporten client: the default's, and those of `maskinporten_clients` in
/// the order of [`Settings::named_clients`].
pub(crate) async fn load_keys(settings: &Settings) -> Result<ClientKeys, KeyLoadError> {
    let mut named = Vec::new();
    for client in settings.named_clients() {
        named.push(load_client_key(settings, &client).await?);
    }
    Ok(ClientKeys {
        default: load_key(settings).await?,
        named,
    })
}

/// Every Maskinporten client's signing key, loaded before anything is built.
pub(crate) struct ClientKeys {
    pub(crate) default: SigningKey,
    pub(crate) named: Vec<SigningKey>,
}

impl ClientKeys {
    /// Each key with the client it belongs to, the default first.
    pub(crate) fn with_clients<'s>(
        &self,
        settings: &'s Settings,
    ) -> impl Iterator<Item = (ClientView<'s>, &SigningKey)> {
        std::iter::once((settings.default_client(), &self.default))
            .chain(settings.named_clients().zip(&self.named))
    }
}

/// One Maskinporten client's key; errors name the client's field (`maskinporten_clients.b.key.path`).
/// A key in an HSM or Vault is reached, its public key read and a probe signature verified.
pub(crate) async fn load_client_key(
    settings: &Settings,
    client: &ClientView<'_>,
) -> Result<SigningKey, KeyLoadError> {
    load_client_key_at(settings, client, None).await
}

/// The default client's key at version `version` of its Vault transit key: the key rotation
/// switches to it once Digdir has had it for `propagation`.
pub(crate) async fn load_vault_version(
    settings: &Settings,
    version: u64,
) -> Result<SigningKey, KeyLoadError> {
    load_client_key_at(settings, &settings.default_client(), Some(version)).await
}

async fn load_client_key_at(
    settings: &Settings,
    client: &ClientView<'_>,
    vault_version: Option<u64>,
) -> Result<SigningKey, KeyLoadError> {
    let marked = rotation_signing_kid(settings, client);
    let (kid, alg) = (client.kid.or(marked.as_deref()), client.key.algorithm);
    warn_of_readable_secret_files(client);
    let vault = crate::key::VaultPin {
        version: vault_version,
        versioned_kid: vault_rotates(settings, client),
    };
    let outside = crate::key::load_outside(
        client.key.outside(),
        kid,
        vault,
        settings.cache.max_concurrent_fetches,
        settings.http_client.timeout,
    )
    .await
    .map_err(|source| KeyLoadError {
        field: client.field(if client.key.pkcs11.is_some() {
            "key.pkcs11"
        } else {
            "key.vault_transit"
        }),
        source,
    })?;
    if let Some(key) = outside {
        tracing::info!(
            client = client.name,
            kid,
            signer = key.location(),
            "the signing key is outside the process; a probe signature verified"
        );
        return Ok(key);
    }
    let fallback = (client.env == Environment::Local).then_some(LOCAL_KID);
    let Some((field, file)) = read_client_key_file(client)? else {
        let kid = kid.unwrap_or(LOCAL_KID);
        tracing::info!(
            client = client.name,
            kid,
            "no key file configured: generated an ephemeral key pair for the local simulator (env local)"
        );
        return SigningKey::generate(2048, kid, alg).map_err(|source| KeyLoadError {
            field: client.field("key"),
            source,
        });
    };
    let key = file
        .select(kid, fallback, alg, SystemTime::now())
        .map_err(|source| KeyLoadError {
            field: if source.is_about_kid() {
                client.field("kid")
            } else {
                field
            },
            source,
        })?;
    warn_if_expiring(&key, SystemTime::now());
    Ok(key)
}

/// With `key_rotation:` on and `kid:` left out, the default client's JWKS file says which key
/// signs: the newest one the rotation switched to (`broker_signing_since`).
fn rotation_signing_kid(settings: &Settings, client: &ClientView<'_>) -> Option<String> {
    if client.kid.is_some() || !client.field.is_empty() || settings.key_rotation.is_none() {
        return None;
    }
    let keys = crate::key::jwks_file::JwksFile::new(client.key.path.as_deref()?)
        .read()
        .ok()?;
    crate::key::jwks_file::signing_kid(&keys)
}

/// Whether the client's key is a Vault transit key that `key_rotation.action: rotate` rotates:
/// then each version signs under its own kid, `<kid>-v<N>`.
pub(crate) fn vault_rotates(settings: &Settings, client: &ClientView<'_>) -> bool {
    client.field.is_empty()
        && client.key.vault_transit.is_some()
        && settings
            .key_rotation
            .as_ref()
            .is_some_and(|r| r.action == crate::config::RotationAction::Rotate)
}

/// Every key the configured source holds (all of a JWKS), with the config field it came from;
/// `None` in `local` without a key. The default client's.
pub(crate) fn read_key_file(
    settings: &Settings,
) -> Result<Option<(String, KeyFile)>, KeyLoadError> {
    read_client_key_file(&settings.default_client())
}

fn read_client_key_file(
    client: &ClientView<'_>,
) -> Result<Option<(String, KeyFile)>, KeyLoadError> {
    let key = client.key;
    let at = |field: String| move |source| KeyLoadError { field, source };
    if let Some(pem) = &key.pem {
        let field = client.field("key.pem");
        let file = KeyFile::parse(pem.as_bytes(), None).map_err(at(field.clone()))?;
        return Ok(Some((field, file)));
    }
    if let Some(jwk) = &key.jwk {
        let field = client.field("key.jwk");
        let file = KeyFile::inline_jwk(jwk).map_err(at(field.clone()))?;
        return Ok(Some((field, file)));
    }
    match &key.path {
        Some(path) if client.env != Environment::Local || path.exists() => {
            warn_if_readable_by_others(&client.field("key.path"), path);
            let password = password(client)?;
            let field = client.field("key.path");
            let file = KeyFile::read(path, password.as_ref()).map_err(at(field.clone()))?;
            Ok(Some((field, file)))
        }
        _ => Ok(None),
    }
}

/// The PKCS#12 password from `key.password` (or `BROKER__KEY__PASSWORD`) or `key.password_file`.
fn password(client: &ClientView<'_>) -> Result<Option<Secret>, KeyLoadError> {
    if let Some(password) = &client.key.password {
        return Ok(Some(Secret::new(password.as_str())));
    }
    let Some(path) = &client.key.password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| KeyLoadError {
        field: client.field("key.password_file"),
        source: KeyError::PasswordFile {
            path: path.display().to_string(),
            source,
        },
    })?;
    Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
}

/// A certificate that expires within [`EXPIRY_WARNING`] gets a warning at start and each reload.
fn warn_if_expiring(key: &SigningKey, now: SystemTime) {
    let Some(leaf) = key.chain().first() else {
        return;
    };
    if let Ok(left) = leaf.not_after.duration_since(now)
        && left < EXPIRY_WARNING
    {
        tracing::warn!(
            kid = key.kid(),
            subject = %leaf.subject,
            not_after = %crate::tokens::token::rfc3339(leaf.not_after),
            days_left = left.as_secs() / 86_400,
            "the business certificate expires within 30 days: order a renewed one from the vendor and switch key.path"
        );
    }
}

/// A private key, password, PIN or token readable by group or others is one `cat` away from
/// leaking. `field` is the config field naming the file (`key.path`, `key.password_file`).
pub(crate) fn warn_if_readable_by_others(field: &str, path: &std::path::Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(field, path = %path.display(), mode = format!("{mode:o}"), "the secret file is readable by group or others; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = (field, path);
}

/// The secret files besides the key file, warned about as [`warn_if_readable_by_others`].
fn warn_of_readable_secret_files(client: &ClientView<'_>) {
    let key = client.key;
    let files = [
        ("key.password_file", key.password_file.as_deref()),
        (
            "key.pkcs11.pin_file",
            key.pkcs11.as_ref().and_then(|p| p.pin_file.as_deref()),
        ),
        (
            "key.vault_transit.token_file",
            key.vault_transit
                .as_ref()
                .and_then(|v| v.token_file.as_deref()),
        ),
    ];
    for (field, path) in files {
        if let Some(path) = path {
            warn_if_readable_by_others(&client.field(field), path);
        }
    }
}

/// How often the config and key files are checked for changes (Kubernetes swaps mounted secrets
/// by symlink, which file-change notifications miss; a cheap `stat` does not).
pub(crate) const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The key files of every Maskinporten client (the default's first).
pub(crate) fn key_paths(settings: &Settings) -> Vec<PathBuf> {
    settings
        .maskinporten_clients()
        .iter()
        .filter_map(|c| c.key.path.clone())
        .collect()
}

/// The config file and the key files it names (one per Maskinporten client), and when each was
/// last seen modified. After a reload the key files watched are those the new config names.
pub(crate) struct WatchedFiles {
    config: PathBuf,
    keys: Vec<PathBuf>,
    seen: Vec<Option<SystemTime>>,
}

impl WatchedFiles {
    pub(crate) fn new(config: &Path, keys: Vec<PathBuf>) -> Self {
        let mut files = WatchedFiles {
            config: config.to_owned(),
            keys,
            seen: Vec::new(),
        };
        files.seen = files.stamps();
        files
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        let stamp = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        std::iter::once(&self.config)
            .chain(&self.keys)
            .map(stamp)
            .collect()
    }

    /// Whether any file changed since the last look.
    pub(crate) fn changed(&mut self) -> bool {
        let now = self.stamps();
        let changed = now != self.seen;
        self.seen = now;
        changed
    }

    /// Watch `keys` from now on (the key files of a config just applied).
    pub(crate) fn follow_keys(&mut self, keys: Vec<PathBuf>) {
        self.keys = keys;
        self.seen = self.stamps();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, secs: u64) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn the_watched_key_file_follows_key_path() {
        let dir = tempfile::tempdir().unwrap();
        let [config, old, new] = ["broker.yaml", "old.pem", "new.pem"].map(|f| {
            let path = dir.path().join(f);
            std::fs::write(&path, f).unwrap();
            touch(&path, 1_000);
            path
        });
        let mut files = WatchedFiles::new(&config, vec![old.clone()]);
        assert!(!files.changed());
        touch(&old, 2_000);
        assert!(files.changed(), "the key file named at start is watched");
        assert!(!files.changed(), "a change is reported once");

        files.follow_keys(vec![new.clone()]);
        touch(&old, 3_000);
        assert!(!files.changed(), "the old key file is no longer watched");
        touch(&new, 3_000);
        assert!(files.changed(), "the new key file is");
        touch(&config, 4_000);
        assert!(files.changed(), "and the config file still is");
    }
}

//! `key.pkcs11` and `key.vault_transit`: the settings of a key the broker never holds, in an HSM
//! or in Vault/OpenBao transit (`config/` points at them; `config/signers.rs` checks them).
//!
//! The PIN (`BROKER__KEY__PKCS11__PIN`) and the Vault token (`BROKER__KEY__VAULT_TRANSIT__TOKEN`)
//! may come from the environment; their `Debug` prints `[redacted]`.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

/// `key.pkcs11`: an RSA private key on a PKCS#11 token (an HSM, SoftHSM2).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Settings {
    /// The vendor's PKCS#11 library (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token, by label (`token_label`) or by slot number (`slot`): one of the two.
    #[serde(default)]
    pub token_label: Option<String>,
    #[serde(default)]
    pub slot: Option<u64>,
    /// The private key, by `CKA_LABEL` (`key_label`) or `CKA_ID` in hex (`key_id`): one of the two.
    #[serde(default)]
    pub key_label: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    /// The user PIN, from a file (`pin_file`) or `BROKER__KEY__PKCS11__PIN` (`pin`).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    #[serde(default)]
    pub pin: Option<String>,
    /// A certificate object on the token whose DER becomes the grant's `x5c`.
    #[serde(default)]
    pub certificate_label: Option<String>,
}

impl fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("slot", &self.slot)
            .field("key_label", &self.key_label)
            .field("key_id", &self.key_id)
            .field("pin_file", &self.pin_file)
            .field("pin", &self.pin.as_ref().map(|_| "[redacted]"))
            .field("certificate_label", &self.certificate_label)
            .finish()
    }
}

impl Pkcs11Settings {
    /// Where the key is, for messages: `pkcs11 token "maskinporten" key "mp-2026" (module …)`.
    pub fn location(&self) -> String {
        let token = match (&self.token_label, self.slot) {
            (Some(label), _) => format!("token {label:?}"),
            (None, Some(slot)) => format!("slot {slot}"),
            (None, None) => "no token".into(),
        };
        let key = match (&self.key_label, &self.key_id) {
            (Some(label), _) => format!("key {label:?}"),
            (None, Some(id)) => format!("key id {id}"),
            (None, None) => "no key".into(),
        };
        format!("pkcs11 {token} {key} (module {})", self.module.display())
    }
}

/// `key.vault_transit`: an RSA key in Vault's or OpenBao's transit secrets engine.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultTransitSettings {
    /// `https://vault.example.no:8200/`; plain http only to a loopback address.
    pub address: Url,
    #[serde(default = "default_transit_mount")]
    pub mount: String,
    /// The transit key's name.
    pub name: String,
    /// A file holding the Vault token, re-read when it changes (a Vault agent sink).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The token itself, from `BROKER__KEY__VAULT_TRANSIT__TOKEN`.
    #[serde(default)]
    pub token: Option<String>,
    /// Log in with the pod's service-account token instead of a Vault token.
    #[serde(default)]
    pub kubernetes: Option<VaultKubernetesSettings>,
    /// PEM of the CA that signed Vault's certificate, beside the system's roots.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Sent as `X-Vault-Namespace` (Vault Enterprise, OpenBao namespaces).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `key.vault_transit.kubernetes`: Vault's Kubernetes auth method.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultKubernetesSettings {
    pub role: String,
    #[serde(default = "default_kubernetes_mount")]
    pub mount: String,
    #[serde(default = "default_jwt_file")]
    pub jwt_file: PathBuf,
}

fn default_transit_mount() -> String {
    "transit".into()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_file() -> PathBuf {
    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
}

impl fmt::Debug for VaultTransitSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultTransitSettings")
            .field("address", &self.address.as_str())
            .field("mount", &self.mount)
            .field("name", &self.name)
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("kubernetes", &self.kubernetes)
            .field("ca_cert", &self.ca_cert)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl VaultTransitSettings {
    /// Where the key is, for messages: `vault transit at https://vault:8200/ (key maskinporten)`.
    pub fn location(&self) -> String {
        let mount = if self.mount == "transit" {
            String::new()
        } else {
            format!(", mount {}", self.mount)
        };
        let namespace = self
            .namespace
            .as_ref()
            .map(|n| format!(", namespace {n}"))
            .unwrap_or_default();
        format!(
            "vault transit at {} (key {}{mount}{namespace})",
            self.address, self.name
        )
    }
}

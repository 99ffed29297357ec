//! `key.pkcs11` and `key.vault_transit`: a key the broker never holds, in an HSM or in
//! Vault/OpenBao transit (the signers themselves are in `src/key/`).
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

    fn check(&self, at: &str, problems: &mut Vec<String>) {
        let at = format!("{at}key.pkcs11.");
        if self.token_label.is_some() == self.slot.is_some() {
            problems.push(format!(
                "{at}token_label: set exactly one of token_label and slot"
            ));
        }
        if self.key_label.is_some() == self.key_id.is_some() {
            problems.push(format!(
                "{at}key_label: set exactly one of key_label and key_id"
            ));
        }
        if let Some(id) = &self.key_id
            && (id.is_empty() || hex::decode(id).is_err())
        {
            problems.push(format!(
                "{at}key_id: {id:?} is not hex (the CKA_ID, e.g. 01 or a1b2)"
            ));
        }
        match (&self.pin, &self.pin_file) {
            (Some(_), Some(_)) => problems.push(format!(
                "{at}pin_file: set either pin_file or BROKER__KEY__PKCS11__PIN, not both"
            )),
            (None, None) => problems.push(format!(
                "{at}pin_file: is required (a file holding the user PIN), or set BROKER__KEY__PKCS11__PIN"
            )),
            _ => {}
        }
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

    fn check(&self, at: &str, problems: &mut Vec<String>) {
        let at = format!("{at}key.vault_transit.");
        match self.address.scheme() {
            "https" => {}
            "http" if crate::proxy_route::is_loopback(&self.address) => {}
            "http" => problems.push(format!(
                "{at}address: plain http only to a loopback address (127.0.0.1, ::1, localhost); use https"
            )),
            other => problems.push(format!("{at}address: scheme {other} is not https")),
        }
        let segment = |v: &str| {
            !v.is_empty()
                && v.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
                && !v.contains(['?', '#', '%'])
        };
        if !segment(&self.mount) {
            problems.push(format!(
                "{at}mount: {:?} is not a mount path (e.g. transit)",
                self.mount
            ));
        }
        if !segment(&self.name) || self.name.contains('/') {
            problems.push(format!(
                "{at}name: {:?} is not a transit key name",
                self.name
            ));
        }
        let sources = [
            self.token_file.is_some(),
            self.token.is_some(),
            self.kubernetes.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => problems.push(format!(
                "{at}token_file: is required (a file holding the Vault token), or BROKER__KEY__VAULT_TRANSIT__TOKEN, or {at}kubernetes"
            )),
            1 => {}
            _ => problems.push(format!(
                "{at}token_file: set only one of token_file, BROKER__KEY__VAULT_TRANSIT__TOKEN and kubernetes"
            )),
        }
        if let Some(k) = &self.kubernetes
            && (k.role.trim().is_empty() || !segment(&k.mount))
        {
            problems.push(format!(
                "{at}kubernetes: role must not be empty and mount must be a mount path"
            ));
        }
    }
}

/// The checks of `key.pkcs11` and `key.vault_transit` of one client (`at` is its prefix):
/// each one's own fields, and `kid`, which a key outside the process does not carry.
pub(super) fn check(
    at: &str,
    kid: Option<&str>,
    pkcs11: Option<&Pkcs11Settings>,
    vault: Option<&VaultTransitSettings>,
    problems: &mut Vec<String>,
) {
    if let Some(p) = pkcs11 {
        p.check(at, problems);
    }
    if let Some(v) = vault {
        v.check(at, problems);
    }
    if (pkcs11.is_some() || vault.is_some()) && kid.is_none() {
        problems.push(format!(
            "{at}kid: is required with key.pkcs11 and key.vault_transit (a key there has no kid of its own): the key id Digdir shows for the uploaded public key"
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    fn problems(key: &str) -> Vec<String> {
        match Settings::from_yaml(&format!("env: test\nclient_id: c\n{key}"))
            .unwrap()
            .validate()
        {
            Ok(_) => vec![],
            Err(crate::config::ConfigError::Invalid(p)) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_complete_pkcs11_section_is_accepted_and_its_debug_hides_the_pin() {
        let yaml = "kid: k\nkey:\n  pkcs11:\n    module: /m.so\n    token_label: t\n    key_label: k\n    pin: '123456'\n";
        assert_eq!(problems(yaml), Vec::<String>::new());
        let s = Settings::from_yaml(&format!("env: test\nclient_id: c\n{yaml}")).unwrap();
        let debug = format!("{:?}", s.key);
        assert!(
            debug.contains("[redacted]") && !debug.contains("123456"),
            "{debug}"
        );
    }

    #[test]
    fn pkcs11_needs_one_token_one_key_one_pin_and_a_kid() {
        let p = problems("key:\n  pkcs11:\n    module: /m.so\n    key_id: xyz\n");
        for expected in [
            "key.pkcs11.token_label: set exactly one of token_label and slot",
            "key.pkcs11.key_id: \"xyz\" is not hex (the CKA_ID, e.g. 01 or a1b2)",
            "key.pkcs11.pin_file: is required",
            "kid: is required with key.pkcs11",
        ] {
            assert!(
                p.iter().any(|p| p.starts_with(expected)),
                "{expected} in {p:?}"
            );
        }
    }

    #[test]
    fn vault_http_only_to_loopback_one_token_source_and_debug_hides_the_token() {
        let base = "kid: k\nkey:\n  vault_transit:\n    name: mp\n    token: s.secret-token\n";
        assert!(problems(&format!("{base}    address: http://127.0.0.1:8200/\n")).is_empty());
        assert!(problems(&format!("{base}    address: https://vault.example.no/\n")).is_empty());
        let p = problems(&format!(
            "{base}    address: http://vault.example.no:8200/\n"
        ));
        assert!(
            p[0].starts_with("key.vault_transit.address: plain http only"),
            "{p:?}"
        );
        let p = problems(&format!(
            "{base}    address: https://v/\n    token_file: /t\n"
        ));
        assert!(
            p[0].starts_with("key.vault_transit.token_file: set only one"),
            "{p:?}"
        );
        let s = Settings::from_yaml(&format!(
            "env: test\nclient_id: c\n{base}    address: https://v/\n"
        ))
        .unwrap();
        let debug = format!("{:?}", s.key);
        assert!(!debug.contains("s.secret-token"), "{debug}");
        assert_eq!(
            s.key.vault_transit.unwrap().location(),
            "vault transit at https://v/ (key mp)"
        );
    }

    #[test]
    fn only_one_key_source() {
        let p = problems(
            "kid: k\nkey:\n  path: /k.pem\n  vault_transit:\n    address: https://v/\n    name: mp\n    token: t\n",
        );
        assert!(
            p.iter().any(|p| p.starts_with("key: set only one of")),
            "{p:?}"
        );
    }
}

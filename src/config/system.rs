//! `system:` of broker.yaml: the vendor's system in Altinn's system register, as plain settings.
//! Checked (id form, languages, rights, redirect URLs) by `onboarding::system` when it is built.

use serde::{Deserialize, Serialize};

/// `system:` in broker.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSettings {
    /// `<vendor org>_<name>`: the vendor's organisation number, `_`, a name without spaces.
    pub id: String,
    #[serde(default)]
    pub name: Languages,
    #[serde(default)]
    pub description: Languages,
    /// Resource ids (the values of `urn:altinn:resource`).
    #[serde(default)]
    pub rights: Vec<String>,
    /// `urn:altinn:accesspackage:…` values.
    #[serde(default)]
    pub access_packages: Vec<String>,
    /// Absent or empty: the client id of every configured Maskinporten client.
    #[serde(default)]
    pub client_ids: Vec<String>,
    /// Where a customer may be sent after answering a request; https only.
    #[serde(default)]
    pub allowed_redirect_urls: Vec<String>,
    #[serde(default = "visible")]
    pub visible: bool,
    /// The profile whose token the register calls use; absent: `admin`.
    #[serde(default)]
    pub profile: Option<String>,
}

fn visible() -> bool {
    true
}

/// A text in Altinn's three languages; all three are required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Languages {
    pub nb: Option<String>,
    pub nn: Option<String>,
    pub en: Option<String>,
}

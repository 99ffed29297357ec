//! Token profiles: what a named token (`/token/{profile}`) asks Maskinporten for and what happens to
//! the answer.
//!
//! The three built-in profiles are the reference library's functions: `altinn`
//! (`get_altinn_token`, or `get_systemuser_token(org)` with an organisation), `admin`
//! (`get_admin_token`) and `skd` (`get_skd_token(org)`). `broker.yaml` may change any field of
//! them or add new ones; [`Profiles::from_settings`] merges the two field by field.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The profile name of on-demand tokens (in answers, metrics and logs); no configured profile
/// may take it.
pub const ON_DEMAND: &str = "on-demand";

/// Scopes of the `altinn` profile (the reference library's `altinn_scopes`).
pub const ALTINN_SCOPES: &[&str] = &["altinn:instances.read", "altinn:instances.write"];
/// Scopes of the `admin` profile (the reference library's `admin_scopes`).
pub const ADMIN_SCOPES: &[&str] = &[
    "altinn:authentication/systemregister.write",
    "altinn:authentication/systemuser.request.read",
    "altinn:authentication/systemuser.request.write",
];
/// Name and scopes of the `consent` profile, whose token creates and reads Altinn consent
/// requests (`consent.profile` may name another).
pub const CONSENT_PROFILE: &str = "consent";
pub const CONSENT_SCOPES: &[&str] = &[
    "altinn:consentrequests.read",
    "altinn:consentrequests.write",
];
/// Scope of the `skd` profile (the reference library's `skd_scopes`).
pub const SKD_SCOPES: &[&str] = &["skatteetaten:innrapporteringaksjonaerregisteroppgave"];

/// What to do with the Maskinporten token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exchange {
    /// Serve the Maskinporten token as it is.
    None,
    /// Exchange it at Altinn for an Altinn token (30 minutes' life).
    Altinn,
}

/// Whether the grant carries a system-user `authorization_details` for an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemUser {
    /// Never: an `org` for this profile is a caller mistake.
    None,
    /// With `org` it is a system-user token, without it an ordinary one.
    Optional,
    /// Always: `org` from the request or the configured `default_org`.
    Required,
}

/// A profile name as it appears in the URL and the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ProfileName(Arc<str>);

impl ProfileName {
    pub fn new(name: &str) -> Self {
        ProfileName(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Look-ups by `&str` without building a `ProfileName` (the hot path of every request).
impl std::borrow::Borrow<str> for ProfileName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a Maskinporten client (`maskinporten_clients.<name>`; [`DEFAULT_CLIENT`] for the
/// top-level `client_id`/`kid`/`key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ClientName(Arc<str>);

/// The client of the top-level `client_id`, `kid` and `key`.
pub const DEFAULT_CLIENT: &str = "default";

impl ClientName {
    pub fn new(name: &str) -> Self {
        ClientName(name.into())
    }
    pub fn default_client() -> Self {
        ClientName::new(DEFAULT_CLIENT)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ClientName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `name` is usable as a profile or client name: letters, digits, '-' and '_'.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A complete, validated profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub name: ProfileName,
    pub scopes: Vec<String>,
    pub exchange: Exchange,
    pub system_user: SystemUser,
    /// The Maskinporten client whose id and key sign this profile's grants.
    pub client: ClientName,
    /// RFC 8707 audience restriction sent as the grant's `resource` claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Customer organisation when a supplier acts on its behalf (`consumer_org` claim).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_org: Option<String>,
    /// `externalRef` of the system user; required by Maskinporten if the system user has one.
    #[serde(rename = "externalRef", skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<String>,
    /// A consent token's consent (`authorization_details` of type `urn:altinn:consent`).
    #[serde(skip)]
    pub consent: Option<Arc<crate::policy::consent::ConsentToken>>,
}

impl Profile {
    /// A consent token's ad-hoc profile: the data provider's scope, signed by `client` (the
    /// consent profile's), with the consent in the grant.
    pub fn for_consent(
        consent: &Arc<crate::policy::consent::ConsentToken>,
        client: ClientName,
    ) -> Profile {
        Profile {
            name: ProfileName::new(crate::policy::consent::CONSENT_TOKEN),
            scopes: vec![consent.scope.clone()],
            exchange: Exchange::None,
            system_user: SystemUser::None,
            client,
            resource: None,
            consumer_org: None,
            external_ref: None,
            consent: Some(consent.clone()),
        }
    }

    /// The `scope` claim: the scopes joined by single spaces.
    pub fn scope(&self) -> String {
        self.scopes.join(" ")
    }
}

/// A profile as written in `broker.yaml`: every field optional so it can amend a built-in one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSettings {
    pub scopes: Option<Vec<String>>,
    pub exchange: Option<Exchange>,
    pub system_user: Option<SystemUser>,
    pub resource: Option<String>,
    pub consumer_org: Option<String>,
    #[serde(rename = "externalRef", alias = "external_ref")]
    pub external_ref: Option<String>,
    /// `maskinporten_clients.<name>` whose credentials sign the grant; absent: `default`.
    pub client: Option<String>,
}

fn builtin(name: &str, scopes: &[&str], exchange: Exchange, system_user: SystemUser) -> Profile {
    Profile {
        name: ProfileName::new(name),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        exchange,
        system_user,
        client: ClientName::default_client(),
        resource: None,
        consumer_org: None,
        external_ref: None,
        consent: None,
    }
}

/// The profiles every broker has unless its config changes them.
pub fn builtins() -> Vec<Profile> {
    vec![
        builtin(
            "altinn",
            ALTINN_SCOPES,
            Exchange::Altinn,
            SystemUser::Optional,
        ),
        builtin("admin", ADMIN_SCOPES, Exchange::None, SystemUser::None),
        builtin("skd", SKD_SCOPES, Exchange::None, SystemUser::Required),
        builtin(
            CONSENT_PROFILE,
            CONSENT_SCOPES,
            Exchange::None,
            SystemUser::None,
        ),
    ]
}

/// All profiles of a running broker, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profiles(BTreeMap<ProfileName, Arc<Profile>>);

impl Profiles {
    /// A config problem when no profile is called `name` (`field` names where it was written).
    pub fn check_named(&self, name: &str, field: &str) -> Option<String> {
        self.get(name).is_none().then(|| {
            format!(
                "{field}: there is no profile named {name:?}; the profiles are: {}",
                self.names().join(", ")
            )
        })
    }

    /// Merge the configured profiles over the built-in ones. Returns every problem found, each
    /// prefixed with its field path, so config validation can report them all at once.
    pub fn from_settings(
        settings: &BTreeMap<String, ProfileSettings>,
    ) -> Result<Self, Vec<String>> {
        let mut map: BTreeMap<ProfileName, Arc<Profile>> = builtins()
            .into_iter()
            .map(|p| (p.name.clone(), Arc::new(p)))
            .collect();
        let mut problems = Vec::new();
        for (name, s) in settings {
            let field = |f: &str| format!("profiles.{name}.{f}");
            if !is_name(name) {
                problems.push(format!(
                    "profiles.{name}: a profile name uses only letters, digits, '-' and '_'"
                ));
                continue;
            }
            if name == ON_DEMAND {
                problems.push(format!(
                    "profiles.{name}: this name is reserved for on-demand tokens (GET /token?scope=...)"
                ));
                continue;
            }
            let key = ProfileName::new(name);
            let base = map.get(&key).map(|p| p.as_ref().clone());
            let Some(scopes) = s.scopes.clone().or(base.as_ref().map(|b| b.scopes.clone())) else {
                problems.push(format!(
                    "{}: is required for a new profile",
                    field("scopes")
                ));
                continue;
            };
            if scopes.is_empty() {
                problems.push(format!("{}: must not be empty", field("scopes")));
            }
            for scope in &scopes {
                if scope.is_empty() || scope.contains(char::is_whitespace) {
                    problems.push(format!(
                        "{}: {scope:?} is not a single scope (no spaces; list each scope separately)",
                        field("scopes")
                    ));
                }
            }
            let profile = Profile {
                name: key.clone(),
                scopes,
                exchange: s
                    .exchange
                    .or(base.as_ref().map(|b| b.exchange))
                    .unwrap_or(Exchange::None),
                system_user: s
                    .system_user
                    .or(base.as_ref().map(|b| b.system_user))
                    .unwrap_or(SystemUser::None),
                client: s
                    .client
                    .as_deref()
                    .map(ClientName::new)
                    .or(base.as_ref().map(|b| b.client.clone()))
                    .unwrap_or_else(ClientName::default_client),
                resource: s
                    .resource
                    .clone()
                    .or(base.as_ref().and_then(|b| b.resource.clone())),
                consumer_org: s
                    .consumer_org
                    .clone()
                    .or(base.as_ref().and_then(|b| b.consumer_org.clone())),
                external_ref: s
                    .external_ref
                    .clone()
                    .or(base.as_ref().and_then(|b| b.external_ref.clone())),
                consent: None,
            };
            if profile.external_ref.is_some() && profile.system_user == SystemUser::None {
                problems.push(format!(
                    "{}: only means something with system_user optional or required",
                    field("externalRef")
                ));
            }
            map.insert(key, Arc::new(profile));
        }
        if problems.is_empty() {
            Ok(Profiles(map))
        } else {
            Err(problems)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.0.values()
    }

    /// Every scope any profile asks for, sorted, once each (what a simulator must allow).
    pub fn all_scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = self.iter().flat_map(|p| p.scopes.clone()).collect();
        scopes.sort();
        scopes.dedup();
        scopes
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Profiles, Vec<String>> {
        let settings: BTreeMap<String, ProfileSettings> = serde_yaml_ng(yaml);
        Profiles::from_settings(&settings)
    }

    fn serde_yaml_ng(yaml: &str) -> BTreeMap<String, ProfileSettings> {
        config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn builtins_carry_the_reference_scopes_and_flags() {
        let p = Profiles::from_settings(&BTreeMap::new()).unwrap();
        assert_eq!(p.names(), ["admin", "altinn", "consent", "skd"]);
        let consent = p.get("consent").unwrap();
        assert_eq!(
            consent.scope(),
            "altinn:consentrequests.read altinn:consentrequests.write"
        );
        assert_eq!(
            (consent.exchange, consent.system_user),
            (Exchange::None, SystemUser::None)
        );
        let altinn = p.get("altinn").unwrap();
        assert_eq!(
            altinn.scope(),
            "altinn:instances.read altinn:instances.write"
        );
        assert_eq!(
            (altinn.exchange, altinn.system_user),
            (Exchange::Altinn, SystemUser::Optional)
        );
        let admin = p.get("admin").unwrap();
        assert_eq!(admin.scopes, ADMIN_SCOPES);
        assert_eq!(
            (admin.exchange, admin.system_user),
            (Exchange::None, SystemUser::None)
        );
        let skd = p.get("skd").unwrap();
        assert_eq!(
            skd.scope(),
            "skatteetaten:innrapporteringaksjonaerregisteroppgave"
        );
        assert_eq!(
            (skd.exchange, skd.system_user),
            (Exchange::None, SystemUser::Required)
        );
    }

    #[test]
    fn a_custom_profile_is_added_and_a_builtin_amended_field_by_field() {
        let p = parse(
            "skattemelding:\n  scopes: [skatteetaten:formueinntekt/skattemelding, altinn:instances.read]\n  system_user: required\naltinn:\n  externalRef: my-ref\n",
        )
        .unwrap();
        let s = p.get("skattemelding").unwrap();
        assert_eq!(
            s.scope(),
            "skatteetaten:formueinntekt/skattemelding altinn:instances.read"
        );
        assert_eq!(
            (s.exchange, s.system_user),
            (Exchange::None, SystemUser::Required)
        );
        let a = p.get("altinn").unwrap();
        assert_eq!(a.external_ref.as_deref(), Some("my-ref"));
        assert_eq!(a.scopes, ALTINN_SCOPES);
        assert_eq!(a.exchange, Exchange::Altinn);
    }

    #[test]
    fn problems_name_the_field() {
        let errs =
            parse("new:\n  exchange: altinn\nempty:\n  scopes: []\nspacey:\n  scopes: [\"a b\"]\n")
                .unwrap_err();
        assert!(
            errs.contains(&"profiles.new.scopes: is required for a new profile".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.contains(&"profiles.empty.scopes: must not be empty".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("profiles.spacey.scopes: \"a b\"")),
            "{errs:?}"
        );
    }
}

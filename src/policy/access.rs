//! Who may ask for which token: API-key clients, their allowed profiles and organisations.
//!
//! The config stores only the SHA-256 of each API key (`maskinporten-broker hash-key` prints it);
//! a presented key is hashed and compared with every stored hash in constant time, so neither
//! the keys nor timing reveal anything. This module never logs or returns a presented key.

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::policy::on_demand::ScopePatterns;
use crate::policy::org::OrgNumber;
use crate::tokens::budget::ClientBudget;

/// One client of a shared broker, as written in `clients:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Shown in audit lines.
    pub name: String,
    /// Lowercase hex SHA-256 of the API key; or `identity`, or both.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Known by a workload token or a client certificate instead of an API key.
    #[serde(default)]
    pub identity: Option<crate::policy::identity::ClientIdentity>,
    /// May call `POST /api/v1/introspect`.
    #[serde(default)]
    pub introspect: bool,
    /// Profiles this client may use; `["*"]` for all.
    pub profiles: Vec<String>,
    /// Organisation numbers it may ask system-user tokens for; absent means none.
    #[serde(default)]
    pub orgs: Vec<String>,
    /// Upstream fetches per second this client's requests may start (cache hits are free);
    /// absent means only the global `cache.max_fetches_per_second` applies.
    #[serde(default)]
    pub max_fetches_per_second: Option<u32>,
    /// On-demand scope patterns this client may ask for, within `on_demand.scopes`; absent means
    /// none (fail closed); `["*"]` means every scope `on_demand.scopes` allows.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Maskinporten clients (`default`, `maskinporten_clients.<name>`) whose tokens this client
    /// may have; absent means all.
    #[serde(default)]
    pub maskinporten_clients: Option<Vec<String>>,
    /// May call the onboarding routes (`/systemusers...`), which use the admin token.
    #[serde(default)]
    pub onboarding: bool,
    /// May ask for consents and consent tokens (`/consents`, `/token/consent`).
    #[serde(default)]
    pub consent: bool,
}

/// The hash of an API key, as stored in the config.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.trim().as_bytes()))
}

/// A validated client.
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    /// `None`: no API key (known by `identity` only).
    hash: Option<[u8; 32]>,
    identity: Option<crate::policy::identity::Matcher>,
    /// May call `POST /api/v1/introspect`.
    pub introspect: bool,
    profiles: Vec<String>,
    orgs: Vec<OrgNumber>,
    /// Its own fetch budget, if it has one; shared by reference with the requests it makes.
    pub budget: Option<std::sync::Arc<ClientBudget>>,
    scopes: Option<ScopePatterns>,
    maskinporten_clients: Option<Vec<String>>,
    /// `onboarding: true`: may ask for system users with the broker's admin token.
    pub onboarding: bool,
    /// `consent: true`: may ask for consents and consent tokens.
    pub consent: bool,
}

impl Client {
    /// Whether this client may have tokens of the Maskinporten client `name`.
    pub fn may_use_maskinporten_client(&self, name: &str) -> bool {
        self.maskinporten_clients
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }
    pub fn may_use_profile(&self, profile: &str) -> bool {
        self.profiles.iter().any(|p| p == "*" || p == profile)
    }
    pub fn may_use_org(&self, org: &OrgNumber) -> bool {
        self.orgs.contains(org)
    }
    /// Whether this client may ask for `scope` on demand (`on_demand.scopes` is checked too).
    /// Without `scopes` of its own it may ask for none: an absent permission is no permission.
    pub fn may_use_scope(&self, scope: &str) -> bool {
        self.scopes.as_ref().is_some_and(|s| s.allows(scope))
    }
}

/// The configured clients; empty means no authentication.
#[derive(Debug, Clone, Default)]
pub struct Clients(Vec<Arc<Client>>);

impl Clients {
    /// Validate `clients:`; problems carry their field path.
    pub fn from_settings(settings: &[ClientSettings]) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut clients: Vec<Arc<Client>> = Vec::new();
        for (i, c) in settings.iter().enumerate() {
            let field = |f: &str| format!("clients[{i}].{f}");
            let identity = c.identity.as_ref().and_then(|id| {
                crate::policy::identity::Matcher::parse(&field("identity"), id)
                    .inspect_err(|p| problems.push(p.clone()))
                    .ok()
            });
            let mut hash = [0u8; 32];
            let hash = match &c.key_sha256 {
                None if c.identity.is_none() => {
                    problems.push(format!(
                        "{}: give key_sha256 (an API key's hash) or identity (a workload token or client certificate)",
                        field("key_sha256")
                    ));
                    None
                }
                None => None,
                Some(text) => hex::decode_to_slice(text.trim().to_ascii_lowercase(), &mut hash)
                    .ok()
                    .map(|()| hash)
                    .or_else(|| {
                        problems.push(format!(
                            "{}: must be 64 hex digits (run `maskinporten-broker hash-key`)",
                            field("key_sha256")
                        ));
                        None
                    }),
            };
            if let Some(j) = clients
                .iter()
                .position(|other| hash.is_some() && other.hash == hash)
            {
                // One key, two clients: which client a caller is would depend on the order.
                problems.push(format!(
                    "{}: the same API key as clients[{j}] ({:?}); {:?} and {:?} each need their own key",
                    field("key_sha256"),
                    clients[j].name,
                    clients[j].name,
                    c.name
                ));
            }
            if let Some(j) = clients
                .iter()
                .position(|other| identity.is_some() && other.identity == identity)
            {
                // One identity, two clients: the first would silently win.
                problems.push(format!(
                    "{}: the same identity as clients[{j}] ({:?}); {:?} and {:?} each need their own",
                    field("identity"),
                    clients[j].name,
                    clients[j].name,
                    c.name
                ));
            }
            if c.name.trim().is_empty() {
                problems.push(format!("{}: must not be empty", field("name")));
            }
            if c.profiles.is_empty() {
                problems.push(format!(
                    "{}: list the profiles, or [\"*\"] for all",
                    field("profiles")
                ));
            }
            let mut orgs = Vec::new();
            for o in &c.orgs {
                match o.parse::<OrgNumber>() {
                    Ok(org) => orgs.push(org),
                    Err(e) => problems.push(format!("{}: {o:?}: {e}", field("orgs"))),
                }
            }
            let budget = match c.max_fetches_per_second.map(std::num::NonZeroU32::new) {
                None => None,
                Some(Some(rate)) => Some(std::sync::Arc::new(ClientBudget::new(&c.name, rate))),
                Some(None) => {
                    problems.push(format!(
                        "{}: must be at least 1 (or left out for no limit of its own)",
                        field("max_fetches_per_second")
                    ));
                    None
                }
            };
            let scopes = c.scopes.as_ref().and_then(|s| {
                ScopePatterns::parse(&field("scopes"), s)
                    .inspect_err(|p| problems.extend(p.iter().cloned()))
                    .ok()
            });
            clients.push(Arc::new(Client {
                name: c.name.clone(),
                hash,
                identity,
                introspect: c.introspect,
                profiles: c.profiles.clone(),
                orgs,
                budget,
                scopes,
                maskinporten_clients: c.maskinporten_clients.clone(),
                onboarding: c.onboarding,
                consent: c.consent,
            }));
        }
        if problems.is_empty() {
            Ok(Clients(clients))
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client holding `api_key`, comparing against every client in constant time.
    pub fn authenticate(&self, api_key: &str) -> Option<Arc<Client>> {
        let presented = Sha256::digest(api_key.trim().as_bytes());
        let mut found = None;
        for client in &self.0 {
            if let Some(hash) = &client.hash
                && bool::from(hash.ct_eq(&presented[..]))
            {
                found = Some(client.clone());
            }
        }
        found
    }

    /// The client a verified token names: the first whose `identity` is this issuer and this
    /// subject exactly, else the first whose subject pattern matches.
    pub fn by_token(&self, issuer: &str, subject: &str) -> Option<Arc<Client>> {
        let matching = |exact: bool| {
            self.0.iter().find(|c| match &c.identity {
                Some(
                    m @ crate::policy::identity::Matcher::Token {
                        issuer: i,
                        subject: s,
                    },
                ) => {
                    i == issuer
                        && m.is_exact() == exact
                        && crate::policy::identity::subject_matches(s, subject)
                }
                _ => false,
            })
        };
        matching(true).or_else(|| matching(false)).cloned()
    }

    /// The client a verified client certificate names, by its SPIFFE ID (its one URI SAN) or
    /// its subject.
    pub fn by_certificate(
        &self,
        spiffe_id: Option<&str>,
        subject: &[(String, String)],
    ) -> Option<Arc<Client>> {
        self.0
            .iter()
            .find(|c| match &c.identity {
                Some(crate::policy::identity::Matcher::SpiffeId(id)) => {
                    spiffe_id == Some(id.as_str())
                }
                Some(crate::policy::identity::Matcher::CertificateSubject(rdns)) => rdns == subject,
                _ => false,
            })
            .cloned()
    }

    /// The names of the clients without `scopes` of their own, who may have no on-demand token.
    pub fn without_on_demand_scopes(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|c| c.scopes.is_none())
            .map(|c| c.name.as_str())
    }

    /// The issuers named by `clients[].identity.issuer`, with their field paths.
    pub fn token_issuers(&self) -> impl Iterator<Item = (usize, &str)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match &c.identity {
                Some(crate::policy::identity::Matcher::Token { issuer, .. }) => {
                    Some((i, issuer.as_str()))
                }
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients() -> Clients {
        Clients::from_settings(&[ClientSettings {
            name: "app-a".into(),
            key_sha256: Some(hash_api_key("secret-key-a")),
            identity: None,
            introspect: false,
            profiles: vec!["altinn".into()],
            orgs: vec!["991825827".into()],
            max_fetches_per_second: None,
            scopes: None,
            maskinporten_clients: None,
            onboarding: false,
            consent: false,
        }])
        .unwrap()
    }

    #[test]
    fn authenticates_by_hash() {
        let c = clients();
        assert_eq!(c.authenticate("secret-key-a").unwrap().name, "app-a");
        assert!(c.authenticate("secret-key-b").is_none());
        assert!(c.authenticate("").is_none());
    }

    #[test]
    fn checks_profiles_and_orgs() {
        let c = clients();
        let a = c.authenticate("secret-key-a").unwrap();
        assert!(a.may_use_profile("altinn"));
        assert!(!a.may_use_profile("admin"));
        assert!(a.may_use_org(&"991825827".parse().unwrap()));
        assert!(!a.may_use_org(&"974761076".parse().unwrap()));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let errs = Clients::from_settings(&[ClientSettings {
            name: "".into(),
            key_sha256: Some("xyz".into()),
            identity: None,
            introspect: false,
            profiles: vec![],
            orgs: vec!["1".into()],
            max_fetches_per_second: Some(0),
            scopes: None,
            maskinporten_clients: None,
            onboarding: false,
            consent: false,
        }])
        .unwrap_err();
        assert!(errs.iter().any(|e| e.starts_with("clients[0].key_sha256")));
        assert!(errs.iter().any(|e| e.starts_with("clients[0].name")));
        assert!(errs.iter().any(|e| e.starts_with("clients[0].profiles")));
        assert!(errs.iter().any(|e| e.starts_with("clients[0].orgs")));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("clients[0].max_fetches_per_second"))
        );
    }

    #[test]
    fn two_clients_with_one_key_are_refused_naming_both() {
        let client = |name: &str, hash: String| ClientSettings {
            name: name.into(),
            key_sha256: Some(hash),
            identity: None,
            introspect: false,
            profiles: vec!["*".into()],
            orgs: vec![],
            scopes: None,
            max_fetches_per_second: None,
            maskinporten_clients: None,
            onboarding: false,
            consent: false,
        };
        let errs = Clients::from_settings(&[
            client("app-a", hash_api_key("shared")),
            client("app-b", hash_api_key("other")),
            client("app-c", hash_api_key("shared").to_uppercase()),
        ])
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("clients[2].key_sha256: the same API key as clients[0]")
                && errs[0].contains("\"app-a\"")
                && errs[0].contains("\"app-c\""),
            "{errs:?}"
        );
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

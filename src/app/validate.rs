//! `Settings::validate`: every section of broker.yaml checked, with the parts that need a
//! module's own rules built by that module (profiles, API clients, on-demand patterns, proxy
//! routes, token files). It lives above `config` so that `config` stays a leaf of plain
//! settings types that imports none of the modules reading it.

use crate::config::{ConfigError, Problems, Settings};
use crate::http::proxy::route::ProxyRoute;
use crate::onboarding::system::System;
use crate::policy::access::Clients;
use crate::policy::on_demand::ScopePatterns;
use crate::policy::org::OrgNumber;
use crate::policy::profile::Profiles;
use crate::tokens::files::TokenFile;

impl Settings {
    /// Check everything that can be checked without I/O; every problem, with its field path.
    /// One short check per section, in the order of the file.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let mut problems = Problems::default();
        self.check_credentials(&mut problems);
        let default_org = self.parse_default_org(&mut problems);
        self.check_sections(&mut problems);
        let clients = self.parse_clients(&mut problems);
        self.identity.check(&mut problems.0);
        self.introspection.check(&mut problems.0);
        for (i, issuer) in clients.token_issuers() {
            if !self.identity.issuers.contains_key(issuer) {
                problems.push(format!(
                    "clients[{i}].identity.issuer: there is no issuer named {issuer:?} under identity.issuers"
                ));
            }
        }
        let on_demand = ScopePatterns::parse("on_demand.scopes", &self.on_demand.scopes)
            .unwrap_or_else(|p| {
                p.into_iter().for_each(|p| problems.push(p));
                ScopePatterns::default()
            });
        let profiles = Profiles::from_settings(&self.profiles)
            .inspect_err(|p| p.iter().for_each(|p| problems.push(p.as_str())));
        if let Ok(profiles) = &profiles {
            self.check_client_names(profiles, &mut problems);
        }
        let known = profiles.as_ref().ok();
        let proxy =
            crate::http::proxy::route::validate(&self.proxy, self.env, known, &mut problems.0);
        let token_files = crate::tokens::files::validate(&self.token_files, known, &mut problems.0);
        let system = self.system.as_ref().and_then(|s| {
            let client_ids = self
                .maskinporten_clients()
                .iter()
                .map(|c| c.client_id.to_owned())
                .collect();
            crate::onboarding::system::validate(s, client_ids, known, &mut problems.0)
        });
        let consent = self
            .consent
            .as_ref()
            .and_then(|c| c.validate(known, &mut problems.0));
        match profiles {
            Ok(profiles) => problems.into_result(Validated {
                default_org,
                profiles,
                clients,
                proxy,
                token_files,
                on_demand,
                system,
                consent,
            }),
            Err(_) => Err(ConfigError::Invalid(problems.0)),
        }
    }

    /// Every Maskinporten client a profile (`profiles.<name>.client`) or an API client
    /// (`clients[].maskinporten_clients`) names must be configured.
    fn check_client_names(&self, profiles: &Profiles, problems: &mut Problems) {
        let known = |name: &str| {
            name == crate::policy::profile::DEFAULT_CLIENT
                || self.maskinporten_clients.contains_key(name)
        };
        let names = || {
            std::iter::once(crate::policy::profile::DEFAULT_CLIENT)
                .chain(self.maskinporten_clients.keys().map(String::as_str))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for profile in profiles.iter() {
            let client = profile.client.as_str();
            if !known(client) {
                problems.push(format!(
                    "profiles.{}.client: there is no Maskinporten client named {client:?}; the clients are: {}",
                    profile.name,
                    names()
                ));
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            for client in c.maskinporten_clients.iter().flatten() {
                if !known(client) {
                    problems.push(format!(
                        "clients[{i}].maskinporten_clients: there is no Maskinporten client named {client:?}; the clients are: {}",
                        names()
                    ));
                }
            }
        }
    }

    fn parse_default_org(&self, problems: &mut Problems) -> Option<OrgNumber> {
        let text = self.default_org.as_ref()?;
        text.parse()
            .inspect_err(|e| problems.push(format!("default_org: {text:?} is not valid: {e}")))
            .ok()
    }

    /// `clients:`, and the rule that a broker reachable from other hosts must authenticate.
    fn parse_clients(&self, problems: &mut Problems) -> Clients {
        if !self.listen.ip().is_loopback() && self.clients.is_empty() && !self.allow_unauthenticated
        {
            problems.push(format!(
                "listen: {} is reachable from other hosts, so configure clients (API keys) or write allow_unauthenticated: true",
                self.listen
            ));
        }
        Clients::from_settings(&self.clients).unwrap_or_else(|p| {
            p.into_iter().for_each(|p| problems.push(p));
            Clients::default()
        })
    }
}

/// What validation parsed along the way, so it is not parsed twice.
#[derive(Debug, Clone)]
pub struct Validated {
    pub(crate) default_org: Option<OrgNumber>,
    pub(crate) profiles: Profiles,
    pub(crate) clients: Clients,
    pub(crate) proxy: Vec<ProxyRoute>,
    pub(crate) token_files: Vec<TokenFile>,
    pub(crate) on_demand: ScopePatterns,
    /// `system:`, checked: the onboarding commands and routes use it.
    pub(crate) system: Option<System>,
    /// `consent:`, checked: the consent commands and routes use it.
    pub(crate) consent: Option<crate::config::Consent>,
}

impl Validated {
    /// Every scope the profiles ask for, and the on-demand patterns (the `local` simulator
    /// registers these for the broker's client and matches `*` as any run of characters).
    pub(crate) fn scopes(&self) -> Vec<String> {
        let mut scopes = self.profiles.all_scopes();
        scopes.extend(self.on_demand.patterns().iter().cloned());
        if let Some(consent) = &self.consent {
            scopes.extend(consent.scopes.patterns().iter().cloned());
        }
        scopes
    }
}

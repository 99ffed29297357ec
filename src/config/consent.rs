//! `consent:` of broker.yaml: the organisation that asks people and companies for consent
//! (Altinn "samtykke"), where they may be sent back to, and which data providers' scopes a
//! consent token may carry. Checked at start with field paths; [`Consent`] is the checked form
//! the routes and commands use.
//!
//! It must never let a consent token through by default: absent or empty `scopes` means no
//! scope at all, so `/token/consent` is refused.

use serde::Deserialize;

use crate::policy::on_demand::ScopePatterns;
use crate::policy::org::OrgNumber;
use crate::policy::profile::{CONSENT_PROFILE, Exchange, Profiles, SystemUser};

/// `consent:` in broker.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentSettings {
    /// The organisation asking (the request's `to`): the Maskinporten client's own.
    pub org: String,
    /// The https URLs Altinn may send a person back to after answering.
    #[serde(default)]
    pub redirect_urls: Vec<String>,
    /// Patterns (`*` as in `on_demand.scopes`) of the data providers' scopes a consent token may
    /// carry; absent or empty: none.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The profile whose token creates and reads consent requests; absent: `consent`.
    #[serde(default)]
    pub profile: Option<String>,
}

/// A checked `consent:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub org: OrgNumber,
    pub redirect_urls: Vec<String>,
    pub scopes: ScopePatterns,
    pub profile: String,
}

impl ConsentSettings {
    /// Every problem with its field path; the checked section when there is none.
    pub fn validate(
        &self,
        profiles: Option<&Profiles>,
        problems: &mut Vec<String>,
    ) -> Option<Consent> {
        let before = problems.len();
        let org = self
            .org
            .trim()
            .parse::<OrgNumber>()
            .inspect_err(|e| {
                problems.push(format!("consent.org: {:?} is not valid: {e}", self.org))
            })
            .ok();
        for (i, u) in self.redirect_urls.iter().enumerate() {
            match url::Url::parse(u) {
                Ok(url) if url.scheme() == "https" && url.host().is_some() => {}
                _ => problems.push(format!(
                    "consent.redirect_urls[{i}]: {u:?} must be an https URL"
                )),
            }
        }
        let scopes = ScopePatterns::parse("consent.scopes", &self.scopes)
            .inspect_err(|p| problems.extend(p.iter().cloned()))
            .unwrap_or_default();
        let profile = self.profile.as_deref().unwrap_or(CONSENT_PROFILE);
        if let Some(profiles) = profiles {
            match profiles.get(profile) {
                None => problems.extend(profiles.check_named(profile, "consent.profile")),
                Some(p) if p.exchange != Exchange::None || p.system_user != SystemUser::None => {
                    problems.push(format!(
                        "consent.profile: profile {profile:?} must give a plain Maskinporten token (exchange: none, system_user: none): Altinn's consent API takes one"
                    ));
                }
                Some(_) => {}
            }
        }
        if problems.len() != before {
            return None;
        }
        Some(Consent {
            org: org?,
            redirect_urls: self.redirect_urls.clone(),
            scopes,
            profile: profile.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Consent, Vec<String>> {
        let settings: ConsentSettings = config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        let profiles = Profiles::from_settings(&Default::default()).unwrap();
        let mut problems = Vec::new();
        settings
            .validate(Some(&profiles), &mut problems)
            .ok_or(problems)
    }

    #[test]
    fn a_good_section_uses_the_builtin_profile_and_no_scope_by_default() {
        let c = check("org: '991825827'\nredirect_urls: [https://bank.example/back]").unwrap();
        assert_eq!(c.profile, "consent");
        assert!(c.scopes.is_empty());
        assert!(!c.scopes.allows("skatteetaten:inntekt"));
    }

    #[test]
    fn problems_name_the_field() {
        let problems = check(
            "org: '991825828'\nredirect_urls: [http://bank.example/, https://ok.example/]\nscopes: ['a b']\nprofile: nope",
        )
        .unwrap_err();
        for field in [
            "consent.org:",
            "consent.redirect_urls[0]:",
            "consent.scopes:",
            "consent.profile:",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field}: {problems:?}"
            );
        }
        assert_eq!(problems.len(), 4, "{problems:?}");
        let exchanged = check("org: '991825827'\nprofile: altinn").unwrap_err();
        assert!(exchanged[0].contains("exchange: none"), "{exchanged:?}");
    }
}

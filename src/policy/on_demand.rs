//! On-demand tokens: any scope a caller asks for, when the allow-list lets it through.
//!
//! A request names its scopes and, optionally, a system-user organisation, `resource`,
//! `consumer_org`, `externalRef` and the Altinn exchange. [`OnDemandRequest::new`] normalises
//! it (scopes sorted and de-duplicated) so that two spellings of one request are one cache entry,
//! and turns it into an ad-hoc [`Profile`] named [`ON_DEMAND`] for the grant. [`ScopePatterns`]
//! is the allow-list: `on_demand.scopes` in the config, narrowed per API client by
//! `clients[].scopes`. Nothing here knows HTTP.

use std::fmt;

use serde::Deserialize;

use crate::policy::profile::{ClientName, Exchange, ON_DEMAND, Profile, ProfileName, SystemUser};

/// Most scopes one on-demand request may name.
pub const MAX_SCOPES: usize = 20;
/// Longest scope accepted (Maskinporten's scopes are far shorter).
pub const MAX_SCOPE_LEN: usize = 200;
/// Longest `resource`, `consumer_org` or `externalRef` accepted.
pub const MAX_CLAIM_LEN: usize = 300;

/// `on_demand:` in broker.yaml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnDemandSettings {
    /// Scope patterns callers may ask for; empty (the default) turns on-demand tokens off.
    /// `*` matches any run of characters: `altinn:*`.
    pub scopes: Vec<String>,
}

/// A list of scope patterns; `*` matches any run of characters, everything else itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopePatterns(Vec<String>);

impl ScopePatterns {
    /// Validate patterns; problems are prefixed with `field`.
    pub fn parse(field: &str, patterns: &[String]) -> Result<Self, Vec<String>> {
        let problems: Vec<String> = patterns
            .iter()
            .filter(|p| p.is_empty() || p.contains(char::is_whitespace))
            .map(|p| format!("{field}: {p:?} is not a scope pattern (one scope, no spaces; * matches any run of characters)"))
            .collect();
        if problems.is_empty() {
            Ok(ScopePatterns(patterns.to_vec()))
        } else {
            Err(problems)
        }
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some pattern matches all of `scope`.
    pub fn allows(&self, scope: &str) -> bool {
        self.0.iter().any(|pattern| glob_matches(pattern, scope))
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no '*' at all: an exact match
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Why an on-demand request is not one the broker can make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnDemandError {
    #[error("name at least one scope: scope=<scope> (repeat it, or separate scopes by spaces)")]
    NoScope,
    #[error("at most {MAX_SCOPES} scopes per request")]
    TooManyScopes,
    #[error(
        "{0:?} is not a scope (at most {MAX_SCOPE_LEN} printable characters without spaces or quotes)"
    )]
    BadScope(String),
    #[error(
        "{0:?} contains '*': ask for the scopes themselves ('*' is only for patterns in on_demand.scopes)"
    )]
    WildcardScope(String),
    #[error("{0} is too long or has characters that are not printable (at most {MAX_CLAIM_LEN})")]
    BadClaim(&'static str),
    #[error(
        "resource must be an absolute https URI without a fragment (RFC 8707), such as https://api.example.no/; http only for a loopback host in env: local"
    )]
    BadResource,
    #[error("consumer_org must be 0192: followed by a valid organisation number: {0}")]
    BadConsumerOrg(String),
}

/// A normalised on-demand request: what the grant asks for, without the organisation (which is
/// part of the cache key beside it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OnDemandRequest {
    /// Sorted, without duplicates.
    pub scopes: Vec<String>,
    pub exchange: Exchange,
    pub resource: Option<String>,
    pub consumer_org: Option<String>,
    pub external_ref: Option<String>,
}

impl OnDemandRequest {
    /// Normalise: every space-separated scope of every `scopes` item, sorted and de-duplicated;
    /// optional claims checked for length and printable characters.
    pub fn new<'a>(
        scopes: impl IntoIterator<Item = &'a str>,
        exchange: Exchange,
        resource: Option<String>,
        consumer_org: Option<String>,
        external_ref: Option<String>,
    ) -> Result<Self, OnDemandError> {
        let mut list = Vec::new();
        for scope in scopes.into_iter().flat_map(str::split_whitespace) {
            if scope.len() > MAX_SCOPE_LEN
                || !scope
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
            {
                return Err(OnDemandError::BadScope(truncate(scope)));
            }
            if scope.contains('*') {
                return Err(OnDemandError::WildcardScope(truncate(scope)));
            }
            list.push(scope.to_owned());
            if list.len() > MAX_SCOPES * 4 {
                return Err(OnDemandError::TooManyScopes);
            }
        }
        list.sort();
        list.dedup();
        if list.is_empty() {
            return Err(OnDemandError::NoScope);
        }
        if list.len() > MAX_SCOPES {
            return Err(OnDemandError::TooManyScopes);
        }
        let claim = |name: &'static str, value: Option<String>| {
            let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
            match &value {
                Some(v) if v.len() > MAX_CLAIM_LEN || v.chars().any(char::is_control) => {
                    Err(OnDemandError::BadClaim(name))
                }
                _ => Ok(value),
            }
        };
        let resource = claim("resource", resource)?;
        if resource
            .as_deref()
            .is_some_and(|r| resource_scheme(r).is_none())
        {
            return Err(OnDemandError::BadResource);
        }
        let consumer_org = claim("consumer_org", consumer_org)?;
        if let Some(org) = &consumer_org {
            check_consumer_org(org)?;
        }
        Ok(OnDemandRequest {
            scopes: list,
            exchange,
            resource,
            consumer_org,
            external_ref: claim("externalRef", external_ref)?,
        })
    }

    /// This request where the broker runs: an `http` resource (on a loopback host) only in
    /// `env: local`, where the APIs are the simulator's.
    pub fn in_env(self, local: bool) -> Result<Self, OnDemandError> {
        match self.resource.as_deref().and_then(resource_scheme) {
            Some(ResourceScheme::LoopbackHttp) if !local => Err(OnDemandError::BadResource),
            _ => Ok(self),
        }
    }

    /// The first scope outside `patterns`, if any.
    pub fn first_outside<'a>(&'a self, patterns: &ScopePatterns) -> Option<&'a str> {
        self.scopes
            .iter()
            .map(String::as_str)
            .find(|s| !patterns.allows(s))
    }

    /// The ad-hoc profile the grant is built from. The organisation is optional: with one the
    /// grant is for that system user.
    pub fn profile(&self) -> Profile {
        Profile {
            name: ProfileName::new(ON_DEMAND),
            scopes: self.scopes.clone(),
            exchange: self.exchange,
            system_user: SystemUser::Optional,
            // On-demand tokens always use the default Maskinporten client.
            client: ClientName::default_client(),
            resource: self.resource.clone(),
            consumer_org: self.consumer_org.clone(),
            external_ref: self.external_ref.clone(),
            consent: None,
        }
    }
}

impl fmt::Display for OnDemandRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scopes.join(" "))
    }
}

/// Which kind of RFC 8707 resource indicator a text is; `None` when it is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResourceScheme {
    Https,
    /// `http://` on `localhost`, 127.0.0.0/8 or `[::1]`: allowed in `env: local` only.
    LoopbackHttp,
}

/// An absolute `https://` (or loopback `http://`) URI with a host and without a fragment, as
/// RFC 8707 section 2 asks of a resource indicator. The text itself goes into the grant, so it
/// must already be in that form (`https:host` or `https:/x`, which a URL parser would repair,
/// are refused).
fn resource_scheme(text: &str) -> Option<ResourceScheme> {
    let lower = text.get(..8)?.to_ascii_lowercase();
    let https = lower.starts_with("https://");
    if !https && !lower.starts_with("http://") {
        return None;
    }
    if text.contains('#') || text.contains(char::is_whitespace) {
        return None;
    }
    let url = url::Url::parse(text).ok()?;
    let host = url.host()?;
    if https {
        return Some(ResourceScheme::Https);
    }
    let loopback = match host {
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    loopback.then_some(ResourceScheme::LoopbackHttp)
}

/// `0192:` (ISO 6523 ICD for Norwegian organisation numbers) and a valid organisation number.
fn check_consumer_org(text: &str) -> Result<(), OnDemandError> {
    let number = text.strip_prefix("0192:").ok_or_else(|| {
        OnDemandError::BadConsumerOrg(format!("{:?} does not start with 0192:", truncate(text)))
    })?;
    number
        .parse::<crate::policy::org::OrgNumber>()
        .map(|_| ())
        .map_err(|e| OnDemandError::BadConsumerOrg(e.to_string()))
}

/// At most 60 characters of caller input, for an error message.
fn truncate(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn patterns(p: &[&str]) -> ScopePatterns {
        ScopePatterns::parse(
            "on_demand.scopes",
            &p.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn patterns_match_whole_scopes_with_star_as_any_run() {
        let p = patterns(&[
            "altinn:*",
            "skatteetaten:innrapporteringaksjonaerregisteroppgave",
        ]);
        assert!(p.allows("altinn:instances.read"));
        assert!(p.allows("altinn:"));
        assert!(p.allows("skatteetaten:innrapporteringaksjonaerregisteroppgave"));
        assert!(!p.allows("skatteetaten:other"));
        assert!(!p.allows("xaltinn:instances.read"));
        assert!(!p.allows("skatteetaten:innrapporteringaksjonaerregisteroppgavex"));
        let mid = patterns(&["a*b*c"]);
        assert!(mid.allows("abc") && mid.allows("a-b-c") && mid.allows("abbc"));
        assert!(!mid.allows("ab") && !mid.allows("acb") && !mid.allows("abcd"));
        assert!(!ScopePatterns::default().allows("altinn:x"));
    }

    #[test]
    fn bad_patterns_name_the_field() {
        let err =
            ScopePatterns::parse("clients[0].scopes", &["a b".into(), "".into()]).unwrap_err();
        assert_eq!(err.len(), 2);
        assert!(err[0].starts_with("clients[0].scopes: \"a b\""));
    }

    #[test]
    fn two_spellings_of_one_request_are_equal() {
        let a = OnDemandRequest::new(["b a", "a"], Exchange::None, None, None, None).unwrap();
        let b = OnDemandRequest::new(
            ["a", "b", "b"],
            Exchange::None,
            Some(" ".into()),
            None,
            None,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.scopes, ["a", "b"]);
        assert_eq!(a.profile().scope(), "a b");
        let c = OnDemandRequest::new(["a b"], Exchange::Altinn, None, None, None).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn refuses_empty_oversized_and_strange_requests() {
        let none: [&str; 0] = [];
        assert_eq!(
            OnDemandRequest::new(none, Exchange::None, None, None, None),
            Err(OnDemandError::NoScope)
        );
        assert_eq!(
            OnDemandRequest::new(["  "], Exchange::None, None, None, None),
            Err(OnDemandError::NoScope)
        );
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert_eq!(
            OnDemandRequest::new(
                many.iter().map(String::as_str),
                Exchange::None,
                None,
                None,
                None
            ),
            Err(OnDemandError::TooManyScopes)
        );
        assert!(matches!(
            OnDemandRequest::new(["a\"b"], Exchange::None, None, None, None),
            Err(OnDemandError::BadScope(_))
        ));
        assert_eq!(
            OnDemandRequest::new(
                ["a"],
                Exchange::None,
                Some("x".repeat(MAX_CLAIM_LEN + 1)),
                None,
                None
            ),
            Err(OnDemandError::BadClaim("resource"))
        );
    }

    fn with_claims(
        resource: Option<&str>,
        consumer_org: Option<&str>,
    ) -> Result<OnDemandRequest, OnDemandError> {
        OnDemandRequest::new(
            ["a"],
            Exchange::None,
            resource.map(str::to_owned),
            consumer_org.map(str::to_owned),
            None,
        )
    }

    #[test]
    fn a_resource_is_an_absolute_https_uri_without_a_fragment() {
        for good in [
            "https://api.example.no/",
            "https://api.example.no",
            "HTTPS://api.example.no/x?y=1",
            "https://[2001:db8::1]:8443/x",
        ] {
            let r = with_claims(Some(good), None).unwrap();
            assert_eq!(r.resource.as_deref(), Some(good));
            assert!(r.in_env(false).is_ok(), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "api.example.no",
            "/relative",
            "https:api.example.no",
            "https:/api.example.no",
            "https://api.example.no/#x",
            "https://api.example.no/#",
            "https:// api.example.no/",
            "ftp://api.example.no/",
            "urn:altinn:resource:x",
            "http://api.example.no/",
            "http://127.0.0.1.example/",
        ] {
            assert_eq!(
                with_claims(Some(bad), None),
                Err(OnDemandError::BadResource),
                "{bad}"
            );
        }
        for loopback in [
            "http://127.0.0.1:8080/",
            "http://localhost/x",
            "http://[::1]/",
        ] {
            let r = with_claims(Some(loopback), None).unwrap();
            assert_eq!(r.clone().in_env(false), Err(OnDemandError::BadResource));
            assert!(r.in_env(true).is_ok(), "{loopback}");
        }
    }

    #[test]
    fn consumer_org_is_0192_and_a_valid_organisation_number() {
        assert!(with_claims(None, Some("0192:974761076")).is_ok());
        for bad in [
            "0192:123",
            "0192:974761077",
            "974761076",
            "9908:974761076",
            "0192:",
        ] {
            assert!(
                matches!(
                    with_claims(None, Some(bad)),
                    Err(OnDemandError::BadConsumerOrg(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_requested_scope_contains_no_star() {
        for bad in ["altinn:*", "*", "a*b"] {
            assert!(
                matches!(
                    OnDemandRequest::new([bad], Exchange::None, None, None, None),
                    Err(OnDemandError::WildcardScope(_))
                ),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_scope_text_normalises_or_fails_cleanly(s in ".{0,300}", p in "[a-z:*]{1,12}") {
            if let Ok(r) = OnDemandRequest::new([s.as_str()], Exchange::None, None, None, None) {
                prop_assert!(!r.scopes.is_empty() && r.scopes.len() <= MAX_SCOPES);
                prop_assert!(r.scopes.windows(2).all(|w| w[0] < w[1]));
            }
            let _ = patterns(&[p.as_str()]).allows(&s);
        }
    }
}

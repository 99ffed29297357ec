//! Workload identity: callers known by a token their platform gave them (a Kubernetes projected
//! service-account token, a SPIFFE JWT-SVID) or by a verified client certificate, instead of a
//! static API key.
//!
//! `identity.issuers.<name>` names the issuers whose tokens are accepted; `clients[].identity`
//! says which subject of which issuer (or which certificate) is which client. Tokens are verified
//! offline ([`jwt`]) against the issuer's keys ([`jwks`]); nothing here knows HTTP routes.

pub mod cache;
pub mod jwks;
pub mod jwt;
pub mod subject;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use cache::{CacheSettings, Seen, VerifiedCache};
use jwks::{KeySet, Source};
use jwt::{Expect, Invalid};

/// `identity:` in broker.yaml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// Token issuers by a name of our choosing (`kubernetes`), which `clients[].identity.issuer`
    /// refers to.
    pub issuers: BTreeMap<String, IssuerSettings>,
    /// The cache of tokens that verified ([`cache`]).
    pub cache: CacheSettings,
}

/// One token issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The tokens' `iss`, exactly.
    pub issuer: String,
    /// The JWKS; absent: `jwks_uri` of `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_uri: Option<Url>,
    /// `aud` must contain this (the broker's own audience, so a token minted for another service
    /// cannot be replayed here).
    pub audience: String,
    /// A PEM CA to trust for reading the JWKS (the cluster's `ca.crt`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A token sent to read the JWKS (the pod's own service-account token), read anew each time.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
}

impl IdentitySettings {
    /// Every problem, with its field path.
    pub(crate) fn check(&self, problems: &mut Vec<String>) {
        self.cache.check(problems);
        for (name, i) in &self.issuers {
            let at = format!("identity.issuers.{name}");
            if !crate::policy::profile::is_name(name) {
                problems.push(format!(
                    "{at}: an issuer name uses only letters, digits, '-' and '_'"
                ));
            }
            if i.issuer.trim().is_empty() {
                problems.push(format!("{at}.issuer: must not be empty"));
            }
            if i.audience.trim().is_empty() {
                problems.push(format!(
                    "{at}.audience: must not be empty (use the broker's own, e.g. maskinporten-broker)"
                ));
            }
            match &i.jwks_uri {
                Some(url) => {
                    if let Err(e) = jwks::check_url(url) {
                        problems.push(format!("{at}.jwks_uri: {e}"));
                    }
                }
                None => match jwks::discovery_url(&i.issuer) {
                    Ok(url) => {
                        if let Err(e) = jwks::check_url(&url) {
                            problems.push(format!(
                                "{at}.issuer: discovery would read {e}; or set {at}.jwks_uri"
                            ));
                        }
                    }
                    Err(e) => problems.push(format!("{at}.issuer: {e}")),
                },
            }
        }
    }
}

/// `clients[].identity`: who this client is, instead of (or beside) an API key. Exactly one form:
/// `{issuer, subject}` (a token), `{spiffe_id}` or `{certificate_subject}` (a client certificate).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIdentity {
    #[serde(default)]
    pub issuer: Option<String>,
    /// The token's `sub`, exactly, or a pattern where `*` stands for any characters
    /// (`system:serviceaccount:team-a:*`).
    #[serde(default)]
    pub subject: Option<String>,
    /// The one URI SAN of a verified client certificate (X.509-SVID).
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// A verified client certificate's subject, as `CN=invoicing,O=Example` in RFC 4514 (order
    /// and spaces after commas do not matter; `\,` `\+` `\"` `\\` `\=` `\;` and hex `\2C`
    /// escape); compared attribute by attribute with the certificate's parsed subject.
    #[serde(default)]
    pub certificate_subject: Option<String>,
}

/// A parsed [`ClientIdentity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    Token { issuer: String, subject: String },
    SpiffeId(String),
    CertificateSubject(Vec<(String, String)>),
}

impl Matcher {
    /// `field` is `clients[i].identity`.
    pub fn parse(field: &str, c: &ClientIdentity) -> Result<Matcher, String> {
        let forms = (
            c.issuer.as_deref(),
            c.subject.as_deref(),
            c.spiffe_id.as_deref(),
            c.certificate_subject.as_deref(),
        );
        match forms {
            (Some(issuer), Some(subject), None, None) if !subject.is_empty() => {
                Ok(Matcher::Token {
                    issuer: issuer.to_owned(),
                    subject: subject.to_owned(),
                })
            }
            (None, None, Some(id), None) if id.starts_with("spiffe://") => {
                Ok(Matcher::SpiffeId(id.to_owned()))
            }
            (None, None, Some(id), None) => Err(format!(
                "{field}.spiffe_id: {id:?} is not a SPIFFE ID (spiffe://trust-domain/path)"
            )),
            (None, None, None, Some(text)) => match subject::parse(text) {
                Ok(rdns) => Ok(Matcher::CertificateSubject(rdns)),
                Err(e) => Err(format!(
                    "{field}.certificate_subject: {text:?} is not a subject like CN=invoicing,O=Example (RFC 4514): {e}"
                )),
            },
            _ => Err(format!(
                "{field}: give either issuer and subject (a token), or spiffe_id, or certificate_subject (a client certificate)"
            )),
        }
    }

    /// Whether a subject pattern is exact (preferred over patterns when both match).
    pub fn is_exact(&self) -> bool {
        !matches!(self, Matcher::Token { subject, .. } if subject.contains('*'))
    }
}

/// Whether `subject` matches `pattern`, where each `*` stands for any run of characters.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = subject.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The one URI SAN, when the certificate has exactly one and it is `spiffe://...`.
    pub spiffe_id: Option<String>,
    /// The subject as sorted (attribute, value) pairs from its parsed RDNs
    /// ([`subject::from_certificate`]); empty when a value is not a string.
    pub subject: Vec<(String, String)>,
    /// The subject as written in the certificate (`CN=invoicing, O=Example`).
    pub subject_text: String,
}

impl PeerCertificate {
    /// For the audit line: the SPIFFE ID, else the subject.
    pub fn principal(&self) -> &str {
        self.spiffe_id.as_deref().unwrap_or(&self.subject_text)
    }

    /// Read from the leaf certificate rustls verified.
    pub(crate) fn from_der(der: &[u8]) -> Option<PeerCertificate> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject_text = cert.subject().to_string();
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let spiffe_id = match uris.as_slice() {
            [one] if one.starts_with("spiffe://") => Some(one.clone()),
            _ => None,
        };
        Some(PeerCertificate {
            spiffe_id,
            subject: subject::from_certificate(cert.subject()).unwrap_or_default(),
            subject_text,
        })
    }
}

/// A verified caller identity, for matching a client and for the audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The configured issuer's name.
    pub issuer: String,
    pub subject: String,
    /// How the caller was identified, for the audit line: `kubernetes:team-a/invoicing` (a
    /// service account), else `<issuer>:<sub>`.
    pub principal: String,
}

/// Why a token identified no one.
#[derive(Debug)]
pub enum Refusal {
    Invalid(Invalid),
    /// The kid is unknown: re-read these keys (rate-limited), then try once more.
    UnknownKid(Arc<KeySet>),
}

/// The configured issuers with their keys, and the tokens that verified; built at start.
#[derive(Debug, Default)]
pub struct Issuers {
    issuers: Vec<Issuer>,
    verified: VerifiedCache,
}

#[derive(Debug)]
struct Issuer {
    name: String,
    /// The CA trusted besides the roots for reading its keys (`ca_file`).
    ca_file: Option<PathBuf>,
    issuer: String,
    audience: String,
    keys: Arc<KeySet>,
}

impl Issuers {
    /// One key set per issuer, each with the HTTP client `client_for` makes for its `ca_file`
    /// (trusted besides the system roots).
    pub fn build<E>(
        settings: &IdentitySettings,
        client_for: impl Fn(Option<&std::path::Path>) -> Result<reqwest::Client, E>,
    ) -> Result<Issuers, E> {
        let mut issuers = Vec::new();
        for (name, i) in &settings.issuers {
            let client = client_for(i.ca_file.as_deref())?;
            let source = match &i.jwks_uri {
                Some(url) => Source::Jwks(url.clone()),
                None => Source::Discovery {
                    issuer: i.issuer.clone(),
                },
            };
            issuers.push(Issuer {
                name: name.clone(),
                ca_file: i.ca_file.clone(),
                issuer: i.issuer.clone(),
                audience: i.audience.clone(),
                keys: Arc::new(KeySet::new(
                    format!("identity.issuers.{name}"),
                    source,
                    client,
                    i.bearer_token_file.clone(),
                )),
            });
        }
        Ok(Issuers {
            issuers,
            verified: VerifiedCache::new(settings.cache.max_entries),
        })
    }

    /// Each issuer's HTTP client made anew by `client_for` (a reload's `http_client`), in the
    /// issuers' order; nothing changes until [`Issuers::reread_with`].
    pub fn make_clients<E>(
        &self,
        client_for: impl Fn(Option<&std::path::Path>) -> Result<reqwest::Client, E>,
    ) -> Result<Vec<reqwest::Client>, E> {
        self.issuers
            .iter()
            .map(|i| client_for(i.ca_file.as_deref()))
            .collect()
    }

    /// Use `clients` (of [`Issuers::make_clients`]) from now on, and read every issuer's keys
    /// with them at once; a failed read keeps the keys held. The cache of verified tokens is
    /// emptied (a reload): each token is verified again on its next use.
    pub async fn reread_with(&self, clients: Vec<reqwest::Client>) {
        let reads = self
            .issuers
            .iter()
            .zip(clients)
            .map(|(i, c)| i.keys.reread_with(c));
        futures::future::join_all(reads).await;
        self.verified.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Read every issuer's keys once (at start; a failure is logged and retried on demand).
    pub async fn read_keys(&self) {
        futures::future::join_all(self.issuers.iter().map(|i| i.keys.reread())).await;
    }

    /// How many verified tokens the cache holds (for `/metrics`).
    pub fn cached_tokens(&self) -> u64 {
        self.verified.entry_count()
    }

    /// Who `token` says the caller is: from the cache of tokens that verified, if it is there
    /// and still in time with its key still held, else verified with the keys held now (and
    /// cached when it verifies).
    pub fn verify(&self, token: &str) -> Result<Verified, Refusal> {
        if !self.verified.is_on() {
            return self.verify_now(token).map(|seen| seen.verified);
        }
        let now = jsonwebtoken::get_current_timestamp();
        let digest = VerifiedCache::digest(token);
        if let Some(verified) = self.verified.get(&digest, now) {
            crate::telemetry::meters::identity_cache_lookup(&verified.issuer, true);
            return Ok(verified);
        }
        let seen = self.verify_now(token);
        let issuer = match &seen {
            Ok(seen) => seen.verified.issuer.as_str(),
            Err(_) => "_unknown",
        };
        crate::telemetry::meters::identity_cache_lookup(issuer, false);
        let seen = seen?;
        let verified = seen.verified.clone();
        self.verified.insert(digest, seen, now);
        Ok(verified)
    }

    /// [`Issuers::verify`] without the cache: the signature checked with the keys held now.
    fn verify_now(&self, token: &str) -> Result<Seen, Refusal> {
        let claims = jwt::unverified_claims(token).ok_or(Refusal::Invalid(Invalid::Malformed))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(Refusal::Invalid(Invalid::Issuer))?;
        let expect = Expect {
            issuer: &issuer.issuer,
            audience: Some(&issuer.audience),
            require_iat: false,
        };
        let (claims, (kid, key)) = match jwt::verify_keyed(token, &issuer.keys, expect) {
            Ok(verified) => verified,
            Err(Invalid::UnknownKey) => return Err(Refusal::UnknownKid(issuer.keys.clone())),
            Err(e) => return Err(Refusal::Invalid(e)),
        };
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Refusal::Invalid(Invalid::MissingClaim("sub".into())))?
            .to_owned();
        let time = |name: &str| claims.get(name).and_then(Value::as_f64).map(|t| t as u64);
        Ok(Seen {
            verified: Verified {
                principal: principal(&issuer.name, &subject, &claims),
                issuer: issuer.name.clone(),
                subject,
            },
            // jwt::verify required exp; an exp too large for u64 is held at most MAX_LIFETIME.
            exp: time("exp").unwrap_or_default(),
            nbf: time("nbf"),
            keys: issuer.keys.clone(),
            kid,
            key,
        })
    }
}

/// `kubernetes:team-a/invoicing` for a service account's token, else `<issuer>:<sub>`.
fn principal(issuer: &str, subject: &str, claims: &Map<String, Value>) -> String {
    let from_claim = claims.get("kubernetes.io").and_then(|k| {
        let ns = k.get("namespace")?.as_str()?;
        let sa = k.get("serviceaccount")?.get("name")?.as_str()?;
        Some(format!("{ns}/{sa}"))
    });
    let from_sub = || {
        let rest = subject.strip_prefix("system:serviceaccount:")?;
        let (ns, sa) = rest.split_once(':')?;
        Some(format!("{ns}/{sa}"))
    };
    match from_claim.or_else(from_sub) {
        Some(account) => format!("{issuer}:{account}"),
        None => format!("{issuer}:{subject}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_exactly_or_by_star() {
        let p = "system:serviceaccount:team-a:*";
        assert!(subject_matches(p, "system:serviceaccount:team-a:invoicing"));
        assert!(!subject_matches(
            p,
            "system:serviceaccount:team-b:invoicing"
        ));
        assert!(!subject_matches(p, "system:serviceaccount:team-a"));
        assert!(subject_matches("a", "a"));
        assert!(!subject_matches("a", "ab"));
        assert!(subject_matches("*:x:*", "ns:x:y"));
        assert!(!subject_matches("a*a", "a"));
        assert!(subject_matches("*", "anything"));
    }

    #[test]
    fn identities_take_exactly_one_form() {
        let parse = |yaml: &str| {
            Matcher::parse("clients[0].identity", &serde_json::from_str(yaml).unwrap())
        };
        assert_eq!(
            parse(r#"{"issuer":"k","subject":"s"}"#).unwrap(),
            Matcher::Token {
                issuer: "k".into(),
                subject: "s".into()
            }
        );
        assert!(parse(r#"{"spiffe_id":"spiffe://example.org/a"}"#).is_ok());
        assert!(parse(r#"{"spiffe_id":"https://example.org/a"}"#).is_err());
        assert!(parse(r#"{"issuer":"k"}"#).is_err());
        assert!(parse(r#"{"issuer":"k","subject":"s","spiffe_id":"spiffe://x/y"}"#).is_err());
        assert_eq!(
            parse(r#"{"certificate_subject":"CN=invoicing, O=Example"}"#).unwrap(),
            parse(r#"{"certificate_subject":"o=Example,CN=invoicing"}"#).unwrap()
        );
        assert!(parse(r#"{"certificate_subject":"invoicing"}"#).is_err());
    }

    #[test]
    fn service_accounts_are_named_namespace_slash_account() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"kubernetes.io":{"namespace":"team-a","serviceaccount":{"name":"invoicing"}}}"#,
        )
        .unwrap();
        assert_eq!(
            principal("kubernetes", "x", &claims),
            "kubernetes:team-a/invoicing"
        );
        assert_eq!(
            principal(
                "kubernetes",
                "system:serviceaccount:team-b:batch",
                &Map::new()
            ),
            "kubernetes:team-b/batch"
        );
        assert_eq!(
            principal("spire", "spiffe://ex/a", &Map::new()),
            "spire:spiffe://ex/a"
        );
    }
}

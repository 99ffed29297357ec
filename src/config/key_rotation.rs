//! The `key_rotation:` section: how the broker keeps the default client's key alive through
//! Digdir's self-service API (`GET|POST {api}clients/{client_id}/jwks`). Plain settings and their
//! checks; the work is done by `key/rotation.rs` with `upstream/self_service.rs`.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{Environment, KeySettings, Problems};
use crate::policy::is_loopback;

/// The self-service API in Digdir's test environment (the `/api/v1/` prefix since 2025-05-22).
pub const SELF_SERVICE_API_TEST: &str = "https://api.test.samarbeid.digdir.no/api/v1/";
/// The self-service API in production.
pub const SELF_SERVICE_API_PROD: &str = "https://api.samarbeid.digdir.no/api/v1/";
/// Where the `local` simulator serves the self-service API, under its base URL.
pub const SELF_SERVICE_API_LOCAL_PATH: &str = "selfservice/api/v1/";
/// The scopes the admin token needs: read the key set, and write it.
pub const SCOPE_READ: &str = "idporten:dcr.read";
pub const SCOPE_WRITE: &str = "idporten:dcr.write";

/// A key lives at most this long after it was posted to Digdir (MP-121 afterwards).
pub const KEY_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// What to do with a key that expires within `renew_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationAction {
    /// Post the same public key again: Digdir renews it for a year. Works for every key store.
    #[default]
    Renew,
    /// Make a new key pair where the key lives, upload it beside the old, switch, retire the old.
    Rotate,
}

impl RotationAction {
    pub fn name(self) -> &'static str {
        match self {
            RotationAction::Renew => "renew",
            RotationAction::Rotate => "rotate",
        }
    }
}

/// `key_rotation:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotationSettings {
    /// The self-service client Digdir grants (it signs with a business certificate).
    pub self_service: SelfServiceSettings,
    /// The self-service API's base; absent: the environment's (test, prod; local: the simulator).
    #[serde(default)]
    pub api: Option<Url>,
    /// Act when Digdir says a key in use expires sooner than this.
    #[serde(default = "default_renew_before", with = "humantime_serde")]
    pub renew_before: Duration,
    #[serde(default)]
    pub action: RotationAction,
    /// A new key is uploaded this long before grants use it.
    #[serde(default = "default_propagation", with = "humantime_serde")]
    pub propagation: Duration,
    /// The old key leaves Digdir's set this long after the switch.
    #[serde(default = "default_retire_after", with = "humantime_serde")]
    pub retire_after: Duration,
    /// How often Digdir's set is read.
    #[serde(default = "default_check_every", with = "humantime_serde")]
    pub check_every: Duration,
}

/// `key_rotation.self_service:`: the client whose token may read and write the key set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfServiceSettings {
    pub client_id: String,
    /// The kid of the business certificate, when it is registered on the self-service client.
    #[serde(default)]
    pub kid: Option<String>,
    /// The same fields as `key:` (a business certificate: its grant carries `x5c`).
    #[serde(default)]
    pub key: KeySettings,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_renew_before() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_propagation() -> Duration {
    Duration::from_secs(300)
}
fn default_retire_after() -> Duration {
    Duration::from_secs(3600)
}
fn default_check_every() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_scopes() -> Vec<String> {
    vec![SCOPE_READ.to_owned(), SCOPE_WRITE.to_owned()]
}

/// Digdir's documented propagation time: a shorter wait may sign with a key Maskinporten does
/// not know yet.
const DIGDIR_PROPAGATION: Duration = Duration::from_secs(120);

impl KeyRotationSettings {
    /// The self-service API's base URL in `env`; `local_base` is the simulator's.
    pub fn api(&self, env: Environment, local_base: Option<&Url>) -> Url {
        if let Some(api) = &self.api {
            return api.clone();
        }
        let fallback = || Url::parse(SELF_SERVICE_API_TEST).ok();
        let url = match (env, local_base) {
            (Environment::Prod, _) => Url::parse(SELF_SERVICE_API_PROD).ok(),
            (Environment::Local, Some(base)) => base.join(SELF_SERVICE_API_LOCAL_PATH).ok(),
            _ => fallback(),
        };
        url.or_else(fallback)
            .unwrap_or_else(|| Url::parse("https://localhost/").expect("a valid URL"))
    }

    /// Every problem with its field path (`key_rotation.check_every: ...`); `kid` is the
    /// top-level one (rotation picks the signing key itself from a JWKS file; a Vault transit
    /// key's versions sign as `<kid>-v<N>`, so there it is required), `vault` whether the key is
    /// in Vault transit; `key` the top-level key (PKCS#11 is renew-only).
    pub(crate) fn check(
        &self,
        env: Environment,
        kid: Option<&str>,
        key: &KeySettings,
        problems: &mut Problems,
    ) {
        let at = "key_rotation.";
        let (vault, hsm) = (key.vault_transit.is_some(), key.pkcs11.is_some());
        match (self.action, kid, vault) {
            (RotationAction::Rotate, _, _) if hsm => problems.push(format!(
                "{at}action: rotate is not supported for a key in an HSM (key.pkcs11: renew-only); use action: renew (it posts the same public key again)"
            )),
            (RotationAction::Rotate, Some(_), false) => problems.push(format!(
                "{at}action: rotate picks the signing key itself (the newest key that has propagated); leave kid: out"
            )),
            (RotationAction::Rotate, None, true) => problems.push(format!(
                "{at}action: rotate with key.vault_transit needs kid: (Vault key version N signs as <kid>-v<N>)"
            )),
            _ => {}
        }
        let ss = &self.self_service;
        if ss.client_id.trim().is_empty() {
            problems.push(format!("{at}self_service.client_id: must not be empty"));
        }
        super::check_kid_and_key(
            &format!("{at}self_service."),
            ss.kid.as_deref(),
            &ss.key,
            env == Environment::Local,
            problems,
        );
        if ss.scopes.is_empty() {
            problems.push(format!(
                "{at}self_service.scopes: must not be empty ({SCOPE_READ} reads the key set, {SCOPE_WRITE} writes it)"
            ));
        }
        for (i, scope) in ss.scopes.iter().enumerate() {
            if scope.trim().is_empty() || scope.contains(char::is_whitespace) {
                problems.push(format!(
                    "{at}self_service.scopes[{i}]: {scope:?} is not one scope"
                ));
            }
        }
        if let Some(api) = &self.api {
            match api.scheme() {
                "https" => {}
                "http" if is_loopback(api) => {}
                "http" => problems.push(format!(
                    "{at}api: plain http only to a loopback address (127.0.0.1, ::1, localhost); use https"
                )),
                other => problems.push(format!("{at}api: scheme {other} is not https")),
            }
            if !api.path().ends_with('/') {
                problems.push(format!(
                    "{at}api: must end with '/' (e.g. {SELF_SERVICE_API_TEST})"
                ));
            }
            if api.query().is_some() || api.fragment().is_some() || !api.username().is_empty() {
                problems.push(format!(
                    "{at}api: a base URL without query, fragment or user"
                ));
            }
        }
        if self.renew_before.is_zero() || self.renew_before >= KEY_LIFETIME {
            problems.push(format!(
                "{at}renew_before: must be more than 0 and less than a key's lifetime (365 days), e.g. 30d"
            ));
        }
        for (name, value) in [
            ("check_every", self.check_every),
            ("retire_after", self.retire_after),
        ] {
            if value.is_zero() {
                problems.push(format!("{at}{name}: must be more than 0"));
            }
        }
        if self.check_every > self.renew_before {
            problems.push(format!(
                "{at}check_every: must be shorter than renew_before, or a key could expire between two checks"
            ));
        }
    }

    /// Valid but unwise values: logged at start, never refused (tests run whole rotations in
    /// seconds).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let at = "key_rotation.";
        if self.propagation < DIGDIR_PROPAGATION {
            warnings.push(format!(
                "{at}propagation: {} is shorter than the 2 minutes Digdir takes to spread a new key; grants may be refused right after a switch",
                humantime::format_duration(self.propagation)
            ));
        }
        if self.retire_after < self.propagation {
            warnings.push(format!(
                "{at}retire_after: shorter than propagation; another replica may still sign with the old key when it leaves Digdir"
            ));
        }
        if self.check_every < Duration::from_secs(60) {
            warnings.push(format!(
                "{at}check_every: {} reads Digdir's key set very often",
                humantime::format_duration(self.check_every)
            ));
        }
        if self.renew_before < Duration::from_secs(7 * 86_400) {
            warnings.push(format!(
                "{at}renew_before: {} leaves little time to fix a failing renewal",
                humantime::format_duration(self.renew_before)
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, Environment, Settings};

    const BASE: &str = "env: test\nclient_id: c\nkid: k\nkey:\n  path: /k.json\nkey_rotation:\n  self_service:\n    client_id: ss\n    key:\n      path: /v.p12\n      password_file: /pw\n";

    fn problems(extra: &str) -> Vec<String> {
        match Settings::from_yaml(&format!("{BASE}{extra}"))
            .unwrap()
            .validate()
        {
            Ok(_) => vec![],
            Err(ConfigError::Invalid(p)) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn defaults_are_the_issues() {
        let s = Settings::from_yaml(BASE).unwrap();
        let r = s.key_rotation.unwrap();
        assert_eq!(
            r.self_service.scopes,
            ["idporten:dcr.read", "idporten:dcr.write"]
        );
        assert_eq!(r.renew_before.as_secs(), 30 * 86_400);
        assert_eq!(r.action, super::RotationAction::Renew);
        assert_eq!(r.propagation.as_secs(), 300);
        assert_eq!(r.retire_after.as_secs(), 3600);
        assert_eq!(r.check_every.as_secs(), 6 * 3600);
        assert_eq!(
            r.api(Environment::Test, None).as_str(),
            super::SELF_SERVICE_API_TEST
        );
        assert_eq!(
            r.api(Environment::Prod, None).as_str(),
            super::SELF_SERVICE_API_PROD
        );
        let local = url::Url::parse("http://127.0.0.1:9/").unwrap();
        assert_eq!(
            r.api(Environment::Local, Some(&local)).as_str(),
            "http://127.0.0.1:9/selfservice/api/v1/"
        );
        assert!(problems("").is_empty(), "{:?}", problems(""));
        assert!(r.warnings().is_empty());
    }

    #[test]
    fn every_field_is_checked_with_its_path() {
        let p = problems(
            "  api: http://digdir.example/api\n  renew_before: 400d\n  check_every: 0s\n  retire_after: 0s\n",
        );
        for expected in [
            "key_rotation.api: plain http only to a loopback address",
            "key_rotation.api: must end with '/'",
            "key_rotation.renew_before: must be more than 0",
            "key_rotation.check_every: must be more than 0",
            "key_rotation.retire_after: must be more than 0",
        ] {
            assert!(
                p.iter().any(|p| p.starts_with(expected)),
                "{expected} in {p:?}"
            );
        }
        let yaml = "env: test\nclient_id: c\nkid: k\nkey:\n  path: /k.json\nkey_rotation:\n  self_service:\n    client_id: ' '\n    scopes: []\n";
        let p = match Settings::from_yaml(yaml).unwrap().validate() {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("{other:?}"),
        };
        for expected in [
            "key_rotation.self_service.client_id: must not be empty",
            "key_rotation.self_service.key.path: is required",
            "key_rotation.self_service.scopes: must not be empty",
        ] {
            assert!(
                p.iter().any(|p| p.starts_with(expected)),
                "{expected} in {p:?}"
            );
        }
        assert!(problems("  api: http://127.0.0.1:8/api/v1/\n").is_empty());
        assert!(Settings::from_yaml(&format!("{BASE}  action: replace\n")).is_err());
    }

    #[test]
    fn short_durations_warn_and_are_not_refused() {
        let extra =
            "  propagation: 1s\n  retire_after: 2s\n  check_every: 1s\n  renew_before: 1d\n";
        assert!(problems(extra).is_empty(), "{:?}", problems(extra));
        let s = Settings::from_yaml(&format!("{BASE}{extra}")).unwrap();
        let w = s.key_rotation.unwrap().warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("key_rotation.propagation: 1s is shorter"));
    }
}

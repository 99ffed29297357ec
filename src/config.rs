//! Settings: the shape of `broker.yaml`, how it is loaded, and how it is checked.
//!
//! Loading layers the YAML file under environment variables: `BROKER__<FIELD>` with `__` between
//! nesting levels, so `BROKER__CLIENT_ID=abc` sets `client_id` and `BROKER__CACHE__MIN_REMAINING=20s`
//! sets `cache.min_remaining`. Every default lives here, in the `Default` impls and `default_*`
//! functions. [`Settings::validate`] reports every problem at once, each with its field path, so a
//! broken config is fixed in one round, before the broker listens.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::access::{ClientSettings, Clients};
use crate::key::Algorithm;
use crate::org::OrgNumber;
use crate::profile::{ProfileSettings, Profiles};

/// Which Maskinporten and Altinn to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// maskinporten.no and platform.altinn.no.
    #[default]
    Prod,
    /// test.maskinporten.no and platform.tt02.altinn.no.
    Test,
    /// The embedded simulator on a loopback port: no credentials, no network.
    Local,
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Environment::Prod => "prod",
            Environment::Test => "test",
            Environment::Local => "local",
        })
    }
}

/// The whole of `broker.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub env: Environment,
    /// The Maskinporten client id (Digdir's "integrasjons-ID"). Optional only in `local`.
    pub client_id: Option<String>,
    /// The key id Digdir gave the uploaded public key. Optional only in `local`.
    pub kid: Option<String>,
    #[serde(default)]
    pub key: KeySettings,
    /// Organisation for system-user profiles when a request has no `org`.
    pub default_org: Option<String>,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub endpoints: EndpointSettings,
    #[serde(default)]
    pub http_client: HttpClientSettings,
    #[serde(default)]
    pub cache: CacheSettings,
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileSettings>,
    #[serde(default)]
    pub local: LocalSettings,
    #[serde(default)]
    pub log: LogSettings,
    /// API-key clients; when any is configured every token request must present a key.
    #[serde(default)]
    pub clients: Vec<ClientSettings>,
    /// Serve without client authentication on a non-loopback address (say so explicitly).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Egress proxy routes: `/proxy/{name}/...` forwarded with the profile's token added.
    #[serde(default)]
    pub proxy: BTreeMap<String, crate::proxy_route::ProxyRouteSettings>,
    /// Files kept holding a fresh token, for programs that read files more easily than HTTP.
    #[serde(default)]
    pub token_files: Vec<crate::token_files::TokenFileSettings>,
}

/// Where the private key comes from: a PEM file, or PEM text (meant for `BROKER__KEY__PEM` from a
/// container secret). Exactly one of the two outside `local`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub path: Option<PathBuf>,
    pub pem: Option<String>,
    #[serde(default)]
    pub algorithm: Algorithm,
}

impl fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySettings")
            .field("path", &self.path)
            .field("pem", &self.pem.as_ref().map(|_| "[redacted]"))
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// Overrides of the environment's upstream URLs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSettings {
    /// The Maskinporten issuer; also the grant's `aud`.
    pub issuer: Option<String>,
    pub token_url: Option<Url>,
    pub altinn_exchange_url: Option<Url>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpClientSettings {
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The whole upstream call, connect to last byte.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// An HTTP(S) proxy for all upstream calls.
    pub proxy: Option<Url>,
    /// A PEM CA certificate to trust besides the built-in roots (a TLS-inspecting proxy).
    pub extra_ca_cert: Option<PathBuf>,
}

impl Default for HttpClientSettings {
    fn default() -> Self {
        HttpClientSettings {
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
            proxy: None,
            extra_ca_cert: None,
        }
    }
}

/// When cached tokens are refreshed and which are still served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Refresh in the background once only this fraction of the lifetime is left.
    #[serde(default = "default_refresh_when_left")]
    pub refresh_when_left: f64,
    /// ... but never later than this long before expiry (short tokens).
    #[serde(default = "default_refresh_floor", with = "humantime_serde")]
    pub refresh_floor: Duration,
    /// A token with less life than this left is never served.
    #[serde(default = "default_min_remaining", with = "humantime_serde")]
    pub min_remaining: Duration,
    /// Entries nobody asked for during this long are dropped (and no longer refreshed).
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            refresh_when_left: default_refresh_when_left(),
            refresh_floor: default_refresh_floor(),
            min_remaining: default_min_remaining(),
            idle: default_idle(),
        }
    }
}

/// The embedded simulator of `env: local`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// `expires_in` of the simulated Maskinporten tokens.
    #[serde(default = "default_local_token_lifetime", with = "humantime_serde")]
    pub token_lifetime: Duration,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            token_lifetime: default_local_token_lifetime(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter (`info`, `maskinporten_broker=debug`); `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_refresh_when_left() -> f64 {
    1.0 / 3.0
}
fn default_refresh_floor() -> Duration {
    Duration::from_secs(5)
}
fn default_min_remaining() -> Duration {
    Duration::from_secs(10)
}
fn default_idle() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_local_token_lifetime() -> Duration {
    Duration::from_secs(120)
}
fn default_log_level() -> String {
    "info".to_owned()
}

/// The client id and kid the `local` environment uses when the config names none.
pub const LOCAL_CLIENT_ID: &str = "local-client";
pub const LOCAL_KID: &str = "local-kid";

/// The upstream URLs the broker talks to, after defaults and overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: String,
    pub token_url: Url,
    pub altinn_exchange_url: Url,
}

impl Endpoints {
    /// The defaults of an environment. `local` lives wherever its simulator listens.
    pub fn defaults(env: Environment, local_base: Option<&Url>) -> Endpoints {
        let (mp, altinn) = match env {
            Environment::Prod => ("https://maskinporten.no/", "https://platform.altinn.no/"),
            Environment::Test => (
                "https://test.maskinporten.no/",
                "https://platform.tt02.altinn.no/",
            ),
            Environment::Local => {
                let base = local_base
                    .map(Url::as_str)
                    .unwrap_or("http://127.0.0.1:9090/");
                (base, base)
            }
        };
        let join = |base: &str, path: &str| {
            Url::parse(base)
                .and_then(|b| b.join(path))
                .expect("built-in endpoint URLs are valid")
        };
        Endpoints {
            issuer: mp.to_owned(),
            token_url: join(mp, "token"),
            altinn_exchange_url: join(altinn, "authentication/api/v1/exchange/maskinporten"),
        }
    }
}

/// Why the broker cannot start with this configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load the configuration: {0}")]
    Load(String),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Settings {
    /// Load `path` (YAML) and the `BROKER__*` environment variables over it.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// As [`Settings::load`], with the environment given as a map (tests) or read from the
    /// process (`None`).
    pub fn load_with_env(
        path: &Path,
        env: Option<config::Map<String, String>>,
    ) -> Result<Settings, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Load(format!(
                "{} does not exist; pass --config PATH or start from the broker.yaml in the repository",
                path.display()
            )));
        }
        config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Yaml))
            .add_source(
                config::Environment::with_prefix("BROKER")
                    .prefix_separator("__")
                    .separator("__")
                    .source(env),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(format!("{}: {e}", path.display())))
    }

    /// Parse settings from YAML text alone (tests, examples).
    pub fn from_yaml(yaml: &str) -> Result<Settings, ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))
    }

    /// Check everything that can be checked without I/O; every problem, with its field path.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let mut problems = Vec::new();
        let local = self.env == Environment::Local;
        let required = |value: &Option<String>, field: &str, problems: &mut Vec<String>| match value
            .as_deref()
            .map(str::trim)
        {
            Some("") => problems.push(format!("{field}: must not be empty")),
            None if !local => problems.push(format!(
                "{field}: is required (set it in the config file or BROKER__{})",
                field.to_uppercase()
            )),
            _ => {}
        };
        required(&self.client_id, "client_id", &mut problems);
        required(&self.kid, "kid", &mut problems);
        match (&self.key.path, &self.key.pem) {
            (Some(_), Some(_)) => {
                problems.push("key: set either key.path or key.pem, not both".to_owned())
            }
            (None, None) if !local => problems.push(
                "key.path: is required (the PEM file of the private key; or key.pem via BROKER__KEY__PEM)"
                    .to_owned(),
            ),
            _ => {}
        }
        let default_org = match &self.default_org {
            None => None,
            Some(text) => match text.parse::<OrgNumber>() {
                Ok(org) => Some(org),
                Err(e) => {
                    problems.push(format!("default_org: {text:?} is not valid: {e}"));
                    None
                }
            },
        };
        if let Some(issuer) = &self.endpoints.issuer
            && Url::parse(issuer).is_err()
        {
            problems.push(format!("endpoints.issuer: {issuer:?} is not a URL"));
        }
        let c = &self.cache;
        if !(c.refresh_when_left > 0.0 && c.refresh_when_left < 1.0) {
            problems.push(format!(
                "cache.refresh_when_left: must be between 0 and 1 (a fraction of the lifetime), got {}",
                c.refresh_when_left
            ));
        }
        if c.idle.is_zero() {
            problems.push("cache.idle: must be longer than 0s".to_owned());
        }
        if self.http_client.timeout.is_zero() || self.http_client.connect_timeout.is_zero() {
            problems.push("http_client: timeouts must be longer than 0s".to_owned());
        }
        if local && self.local.token_lifetime <= c.min_remaining {
            problems.push(format!(
                "local.token_lifetime: must be longer than cache.min_remaining ({}), or no token could ever be served",
                humantime::format_duration(c.min_remaining)
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!(
                "log.level: {:?} is not a valid filter: {e}",
                self.log.level
            ));
        }
        let clients = match Clients::from_settings(&self.clients) {
            Ok(c) => c,
            Err(mut p) => {
                problems.append(&mut p);
                Clients::default()
            }
        };
        if !self.listen.ip().is_loopback() && self.clients.is_empty() && !self.allow_unauthenticated
        {
            problems.push(format!(
                "listen: {} is reachable from other hosts, so configure clients (API keys) or write allow_unauthenticated: true",
                self.listen
            ));
        }
        let profiles = match Profiles::from_settings(&self.profiles) {
            Ok(p) => Some(p),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        };
        let proxy =
            crate::proxy_route::validate(&self.proxy, self.env, profiles.as_ref(), &mut problems);
        let token_files =
            crate::token_files::validate(&self.token_files, profiles.as_ref(), &mut problems);
        match profiles {
            Some(profiles) if problems.is_empty() => Ok(Validated {
                default_org,
                profiles,
                clients,
                proxy,
                token_files,
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }

    pub fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or(LOCAL_CLIENT_ID)
    }

    pub fn kid(&self) -> &str {
        self.kid.as_deref().unwrap_or(LOCAL_KID)
    }

    /// The environment's endpoints with this config's overrides applied.
    pub fn endpoints(&self, local_base: Option<&Url>) -> Endpoints {
        let mut e = Endpoints::defaults(self.env, local_base);
        if let Some(issuer) = &self.endpoints.issuer {
            e.issuer = issuer.clone();
        }
        if let Some(url) = &self.endpoints.token_url {
            e.token_url = url.clone();
        }
        if let Some(url) = &self.endpoints.altinn_exchange_url {
            e.altinn_exchange_url = url.clone();
        }
        e
    }
}

/// What validation parsed along the way, so it is not parsed twice.
#[derive(Debug, Clone)]
pub struct Validated {
    pub default_org: Option<OrgNumber>,
    pub profiles: Profiles,
    pub clients: Clients,
    pub proxy: Vec<crate::proxy_route::ProxyRoute>,
    pub token_files: Vec<crate::token_files::TokenFile>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "env: test\nclient_id: abc\nkid: k1\nkey:\n  path: /keys/k.pem\n";

    fn problems(yaml: &str) -> Vec<String> {
        match Settings::from_yaml(yaml).unwrap().validate() {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_everything_but_credentials() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.key.algorithm, Algorithm::RS256);
        assert_eq!(s.cache.min_remaining, Duration::from_secs(10));
        assert_eq!(s.http_client.timeout, Duration::from_secs(15));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn env_absent_means_prod() {
        let s = Settings::from_yaml("client_id: a\nkid: b\nkey:\n  path: k.pem\n").unwrap();
        assert_eq!(s.env, Environment::Prod);
        let e = s.endpoints(None);
        assert_eq!(e.issuer, "https://maskinporten.no/");
        assert_eq!(e.token_url.as_str(), "https://maskinporten.no/token");
        assert_eq!(
            e.altinn_exchange_url.as_str(),
            "https://platform.altinn.no/authentication/api/v1/exchange/maskinporten"
        );
    }

    #[test]
    fn test_environment_and_overrides() {
        let s = Settings::from_yaml(&format!(
            "{MINIMAL}endpoints:\n  token_url: http://127.0.0.1:1/t\n"
        ))
        .unwrap();
        let e = s.endpoints(None);
        assert_eq!(e.issuer, "https://test.maskinporten.no/");
        assert_eq!(e.token_url.as_str(), "http://127.0.0.1:1/t");
        assert_eq!(
            e.altinn_exchange_url.as_str(),
            "https://platform.tt02.altinn.no/authentication/api/v1/exchange/maskinporten"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let p =
            problems("env: prod\nkid: ''\ndefault_org: '123'\ncache:\n  refresh_when_left: 2\n");
        assert!(
            p.iter().any(|l| l.starts_with("client_id: is required")),
            "{p:?}"
        );
        assert!(p.contains(&"kid: must not be empty".to_owned()), "{p:?}");
        assert!(
            p.iter().any(|l| l.starts_with("key.path: is required")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("default_org: \"123\" is not valid")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|l| l.starts_with("cache.refresh_when_left")),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Settings::from_yaml("clientid: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("clientid"), "{err}");
    }

    #[test]
    fn environment_variables_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.yaml");
        std::fs::write(&path, MINIMAL).unwrap();
        let env = config::Map::from([
            ("BROKER__CLIENT_ID".to_owned(), "from-env".to_owned()),
            ("BROKER__CACHE__MIN_REMAINING".to_owned(), "20s".to_owned()),
        ]);
        let s = Settings::load_with_env(&path, Some(env)).unwrap();
        assert_eq!(s.client_id(), "from-env");
        assert_eq!(s.kid(), "k1");
        assert_eq!(s.cache.min_remaining, Duration::from_secs(20));
    }

    #[test]
    fn a_missing_file_says_so() {
        let err = Settings::load(Path::new("/nonexistent/broker.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent/broker.yaml does not exist")
        );
    }

    #[test]
    fn a_public_listen_address_needs_clients_or_an_explicit_opt_out() {
        let p = problems(&format!("{MINIMAL}listen: 0.0.0.0:8080\n"));
        assert!(
            p.iter()
                .any(|l| l.starts_with("listen: 0.0.0.0:8080 is reachable")),
            "{p:?}"
        );
        let open = Settings::from_yaml(&format!(
            "{MINIMAL}listen: 0.0.0.0:8080\nallow_unauthenticated: true\n"
        ))
        .unwrap();
        assert!(open.validate().is_ok());
        let loopback6 = Settings::from_yaml(&format!("{MINIMAL}listen: '[::1]:8080'\n")).unwrap();
        assert!(loopback6.validate().is_ok());
    }

    #[test]
    fn key_pem_is_redacted_in_debug() {
        let s = Settings::from_yaml("key:\n  pem: SECRETPEM\n").unwrap();
        assert!(!format!("{s:?}").contains("SECRETPEM"));
    }
}

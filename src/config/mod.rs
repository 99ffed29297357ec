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

mod consent;
mod key_rotation;
mod proxy;
mod system;
pub mod tls;
mod token_files;

pub use consent::{Consent, ConsentSettings};
pub use key_rotation::{
    KEY_LIFETIME, KeyRotationSettings, RotationAction, SCOPE_READ, SCOPE_WRITE, SelfServiceSettings,
};
pub use proxy::{DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, ProxyRouteSettings};
pub use system::{Languages, SystemSettings};
pub use token_files::{TokenFileFormat, TokenFileSettings};

use crate::key::Algorithm;
use crate::policy::access::ClientSettings;
use crate::policy::is_loopback;
use crate::policy::on_demand::OnDemandSettings;
use crate::policy::profile::ProfileSettings;

mod signers;
pub use crate::key::{Pkcs11Settings, VaultKubernetesSettings, VaultTransitSettings};

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

/// The whole of `broker.yaml`. Every field has a default (`Settings::default()` and each
/// section's `Default`), so a file names only what differs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub env: Environment,
    /// The Maskinporten client id (Digdir's "integrasjons-ID"). Optional only in `local`.
    pub client_id: Option<String>,
    /// The key id Digdir gave the uploaded public key. Optional only in `local`.
    pub kid: Option<String>,
    pub key: KeySettings,
    /// More Maskinporten clients beside the top-level one (which is named `default`); a profile
    /// picks one with `client:`.
    pub maskinporten_clients: BTreeMap<String, MaskinportenClientSettings>,
    pub grant: GrantSettings,
    /// Organisation for system-user profiles when a request has no `org`.
    pub default_org: Option<String>,
    pub listen: SocketAddr,
    /// Connection limits: header-read and keep-alive timeouts, most connections open at once.
    pub server: ServerSettings,
    pub endpoints: EndpointSettings,
    pub http_client: HttpClientSettings,
    pub cache: CacheSettings,
    pub profiles: BTreeMap<String, ProfileSettings>,
    pub local: LocalSettings,
    pub log: LogSettings,
    /// API-key clients; when any is configured every token request must present a key.
    pub clients: Vec<ClientSettings>,
    /// Issuers of workload tokens that `clients[].identity` may name.
    pub identity: crate::policy::identity::IdentitySettings,
    /// What `POST /api/v1/introspect` counts as active.
    pub introspection: crate::policy::introspection::IntrospectionSettings,
    /// Scopes callers may ask for without a profile (`GET /token?scope=`, `POST /api/v1/token`).
    pub on_demand: OnDemandSettings,
    /// Serve without client authentication on a non-loopback address (say so explicitly).
    pub allow_unauthenticated: bool,
    /// Egress proxy routes: `/proxy/{name}/...` forwarded with the profile's token added.
    #[serde(default)]
    pub proxy: BTreeMap<String, ProxyRouteSettings>,
    /// Files kept holding a fresh token, for programs that read files more easily than HTTP.
    #[serde(default)]
    pub token_files: Vec<TokenFileSettings>,
    /// The vendor's system in Altinn's system register (onboarding customers).
    #[serde(default)]
    pub system: Option<SystemSettings>,
    /// Altinn consent requests and consent tokens (banks and other data consumers).
    #[serde(default)]
    pub consent: Option<ConsentSettings>,
    /// Renew or rotate the default client's key through Digdir's self-service API (docs/keys.md).
    #[serde(default)]
    pub key_rotation: Option<KeyRotationSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            env: Environment::default(),
            client_id: None,
            kid: None,
            key: KeySettings::default(),
            maskinporten_clients: BTreeMap::new(),
            grant: GrantSettings::default(),
            default_org: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            server: ServerSettings::default(),
            endpoints: EndpointSettings::default(),
            http_client: HttpClientSettings::default(),
            cache: CacheSettings::default(),
            profiles: BTreeMap::new(),
            local: LocalSettings::default(),
            log: LogSettings::default(),
            clients: Vec::new(),
            identity: Default::default(),
            introspection: Default::default(),
            on_demand: OnDemandSettings::default(),
            allow_unauthenticated: false,
            proxy: BTreeMap::new(),
            token_files: Vec::new(),
            system: None,
            consent: None,
            key_rotation: None,
        }
    }
}

/// Where the private key comes from: a file of any form (PEM, private JWK, JWKS, PKCS#12; told
/// apart by content), PEM text (`BROKER__KEY__PEM`) or JWK text (`BROKER__KEY__JWK`, JSON or base64
/// of it), meant for container secrets. Exactly one of the three outside `local`. A PKCS#12 file
/// takes its password from `password` (`BROKER__KEY__PASSWORD`) or `password_file`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    pub path: Option<PathBuf>,
    pub pem: Option<String>,
    pub jwk: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub algorithm: Algorithm,
    /// The key in an HSM, over PKCS#11 (docs/signers.md).
    pub pkcs11: Option<Pkcs11Settings>,
    /// The key in Vault/OpenBao transit (docs/signers.md).
    pub vault_transit: Option<VaultTransitSettings>,
}

impl KeySettings {
    /// `key.pkcs11` or `key.vault_transit`, as the key module reads them.
    pub fn outside(&self) -> crate::key::OutsideKey<'_> {
        crate::key::OutsideKey {
            pkcs11: self.pkcs11.as_ref(),
            vault_transit: self.vault_transit.as_ref(),
            algorithm: self.algorithm,
        }
    }
}

impl fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "[redacted]");
        f.debug_struct("KeySettings")
            .field("path", &self.path)
            .field("pem", &redacted(&self.pem))
            .field("jwk", &redacted(&self.jwk))
            .field("password", &redacted(&self.password))
            .field("password_file", &self.password_file)
            .field("algorithm", &self.algorithm)
            .field("pkcs11", &self.pkcs11)
            .field("vault_transit", &self.vault_transit)
            .finish()
    }
}

/// One entry of `maskinporten_clients:`: another Maskinporten client (its own id and key),
/// optionally in another environment or at other endpoints than the top-level ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskinportenClientSettings {
    pub client_id: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub key: KeySettings,
    /// Absent: the top-level `env`.
    #[serde(default)]
    pub env: Option<Environment>,
    /// Absent: the top-level `endpoints` when `env` is the top-level one, else the env's defaults.
    #[serde(default)]
    pub endpoints: Option<EndpointSettings>,
}

/// One Maskinporten client's credentials and endpoints as the rest of the broker reads them:
/// the top-level one (`default`) or a `maskinporten_clients` entry.
#[derive(Debug, Clone)]
pub struct ClientView<'a> {
    pub name: &'a str,
    pub client_id: &'a str,
    pub kid: Option<&'a str>,
    pub key: &'a KeySettings,
    pub env: Environment,
    pub endpoint_settings: &'a EndpointSettings,
    /// The prefix of this client's config fields: `""` or `maskinporten_clients.<name>.`.
    pub field: String,
}

impl ClientView<'_> {
    /// The config field `name` of this client (`key.path` → `maskinporten_clients.b.key.path`).
    pub fn field(&self, name: &str) -> String {
        format!("{}{name}", self.field)
    }

    /// This client's environment defaults with its overrides applied.
    pub fn endpoints(&self, local_base: Option<&Url>) -> Endpoints {
        Endpoints::with_overrides(self.env, self.endpoint_settings, local_base)
    }
}

/// The JWT grant the broker signs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrantSettings {
    /// `exp - iat`; Maskinporten accepts at most 120 s.
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
}

impl Default for GrantSettings {
    fn default() -> Self {
        GrantSettings {
            lifetime: Duration::from_secs(120),
        }
    }
}

impl GrantSettings {
    fn check(&self, problems: &mut Problems) {
        if self.lifetime < Duration::from_secs(1) || self.lifetime > MAX_GRANT_LIFETIME {
            problems.push(format!(
                "grant.lifetime: must be between 1s and 120s (Maskinporten refuses longer grants), got {}",
                humantime::format_duration(self.lifetime)
            ));
        }
    }
}

/// Overrides of the environment's upstream URLs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointSettings {
    /// The Maskinporten issuer; also the grant's `aud`.
    pub issuer: Option<String>,
    pub token_url: Option<Url>,
    /// Absent: `{altinn_platform}authentication/api/v1/exchange/maskinporten`.
    pub altinn_exchange_url: Option<Url>,
    /// The Altinn platform base URL, ending in `/` (`https://platform.tt02.altinn.no/` for
    /// `test`, `https://platform.altinn.no/` for `prod`, the simulator for `local`). Altinn's
    /// APIs live under it (`authentication/api/v1/...`); https except on a loopback address.
    pub altinn_platform: Option<Url>,
    /// Read the token endpoint from `{issuer}.well-known/oauth-authorization-server`; default on
    /// for `test` and `prod` and for a custom issuer without `token_url`.
    pub discovery: Option<bool>,
}

static NO_ENDPOINT_OVERRIDES: EndpointSettings = EndpointSettings {
    issuer: None,
    token_url: None,
    altinn_exchange_url: None,
    altinn_platform: None,
    discovery: None,
};

impl EndpointSettings {
    /// `at` is the field prefix: `endpoints.` or `maskinporten_clients.<name>.endpoints.`.
    fn check(&self, at: &str, problems: &mut Problems) {
        if let Some(issuer) = &self.issuer
            && Url::parse(issuer).is_err()
        {
            problems.push(format!("{at}issuer: {issuer:?} is not a URL"));
        }
        if self.issuer.is_some() && self.token_url.is_none() && self.discovery == Some(false) {
            problems.push(format!(
                "{at}token_url: is required with a custom {at}issuer and {at}discovery: false (or let discovery read it)"
            ));
        }
        if let Some(platform) = &self.altinn_platform {
            check_altinn_platform(&format!("{at}altinn_platform"), platform, problems);
        }
    }
}

/// `endpoints.altinn_platform`: a base URL others are joined to, so it must end in `/` (without
/// it `Url::join` would drop its last segment); https, except to a loopback address (a local
/// fake or simulator), since the admin token travels to it.
fn check_altinn_platform(field: &str, url: &Url, problems: &mut Problems) {
    if !url.path().ends_with('/') || url.query().is_some() || url.fragment().is_some() {
        problems.push(format!(
            "{field}: {url} must end in '/' with no query (the base the Altinn API paths are joined to, e.g. https://platform.tt02.altinn.no/)"
        ));
    }
    if url.scheme() != "https" && !(url.scheme() == "http" && is_loopback(url)) {
        problems.push(format!(
            "{field}: {url} must be https (plain http only to a loopback address such as 127.0.0.1)"
        ));
    }
}

/// `kid` and the key source of one Maskinporten client; `at` is its field prefix.
fn check_kid_and_key(
    at: &str,
    kid: Option<&str>,
    k: &KeySettings,
    local: bool,
    problems: &mut Problems,
) {
    if kid.map(str::trim) == Some("") {
        problems.push(format!("{at}kid: must not be empty"));
    }
    let files = [k.path.is_some(), k.pem.is_some(), k.jwk.is_some()];
    let files = files.iter().filter(|s| **s).count();
    let outside = usize::from(k.pkcs11.is_some()) + usize::from(k.vault_transit.is_some());
    match (files, outside) {
        (0, 0) if !local => problems.push(format!(
            "{at}key.path: is required (the key file: PEM, private JWK, JWKS or PKCS#12; or {at}key.pem / {at}key.jwk, for the top-level key via BROKER__KEY__PEM / BROKER__KEY__JWK; or a key in an HSM or Vault: {at}key.pkcs11 / {at}key.vault_transit)"
        )),
        (0 | 1, 0) | (0, 1) => {}
        (_, 0) => problems.push(format!(
            "{at}key: set only one of key.path, key.pem and key.jwk"
        )),
        _ => problems.push(format!(
            "{at}key: set only one of key.path, key.pem, key.jwk, key.pkcs11 and key.vault_transit"
        )),
    }
    signers::check(
        at,
        kid,
        k.pkcs11.as_ref(),
        k.vault_transit.as_ref(),
        &mut problems.0,
    );
    if k.password.is_some() && k.password_file.is_some() {
        problems.push(format!(
            "{at}key: set either key.password or key.password_file, not both"
        ));
    }
}

/// `server:`: how many connections the broker holds and how long each may stall (src/serve.rs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// A request head (request line and headers) must arrive within this long of its first byte.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Most connections open at once; absent means derived from the file descriptor limit.
    pub max_connections: Option<usize>,
    /// After SIGTERM: `/readyz` answers 503 at once, and the broker keeps accepting and serving
    /// for this long (so a load balancer stops sending before the listener closes), then stops
    /// accepting and drains. 0 turns it off. SIGINT (Ctrl-C) does not wait.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// TLS (and client certificates) on the listener; absent: plain HTTP.
    pub tls: Option<tls::TlsSettings>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections: None,
            shutdown_delay: DEFAULT_SHUTDOWN_DELAY,
            tls: None,
        }
    }
}

/// `server.shutdown_delay` when absent: longer than a Kubernetes endpoint update usually takes to
/// reach every node's proxy.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// The longest `server.shutdown_delay`: below Kubernetes' default grace period of 30 s, so the
/// drain still has time before SIGKILL.
pub const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpClientSettings {
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The whole upstream call, connect to last byte.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// An HTTP(S) proxy for all upstream calls.
    pub proxy: Option<Url>,
    /// A PEM CA certificate to trust besides the built-in roots (a TLS-inspecting proxy).
    pub extra_ca_cert: Option<PathBuf>,
}

impl Default for HttpClientSettings {
    fn default() -> Self {
        HttpClientSettings {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            proxy: None,
            extra_ca_cert: None,
        }
    }
}

/// When cached tokens are refreshed and which are still served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Refresh in the background once only this fraction of the lifetime is left.
    pub refresh_when_left: f64,
    /// Each refresh-ahead moment is moved earlier by a random share, up to this fraction of the
    /// token's lifetime (uniform, drawn anew for every token), so replicas started together do
    /// not refresh in lockstep. Never later than without it, never before the token was issued;
    /// 0 turns it off.
    pub refresh_jitter: f64,
    /// ... but never later than this long before expiry (short tokens).
    #[serde(with = "humantime_serde")]
    pub refresh_floor: Duration,
    /// A token with less life than this left is never served.
    #[serde(with = "humantime_serde")]
    pub min_remaining: Duration,
    /// Entries nobody asked for during this long are dropped (and no longer refreshed).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// The most cached tokens; the least recently used go first.
    pub max_entries: u64,
    /// Upstream fetches per second for all callers together; over it a caller gets a 429.
    pub max_fetches_per_second: u32,
    /// Upstream fetches running at once; the rest queue.
    pub max_concurrent_fetches: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            refresh_when_left: 1.0 / 3.0,
            refresh_jitter: DEFAULT_REFRESH_JITTER,
            refresh_floor: Duration::from_secs(5),
            min_remaining: Duration::from_secs(10),
            idle: Duration::from_secs(15 * 60),
            max_entries: 10_000,
            max_fetches_per_second: 50,
            max_concurrent_fetches: 16,
        }
    }
}

/// `cache.refresh_jitter` when absent: a 120 s Maskinporten token is refreshed between 40 s and
/// 52 s before expiry.
pub const DEFAULT_REFRESH_JITTER: f64 = 0.1;

/// The embedded simulator of `env: local`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalSettings {
    /// `expires_in` of the simulated Maskinporten tokens.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// `strict`: the simulated Maskinporten refuses a system-user grant for an organisation that
    /// has not accepted a system user of the system (MP-303), as the real one does; `open`
    /// (default): any valid organisation gets one.
    pub system_users: SystemUsers,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            token_lifetime: Duration::from_secs(120),
            system_users: SystemUsers::default(),
        }
    }
}

/// `local.system_users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemUsers {
    #[default]
    Open,
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing filter (`info`, `maskinporten_broker=debug`); `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".to_owned(),
            format: LogFormat::default(),
        }
    }
}

/// Maskinporten documents 120 s as the longest grant it accepts.
pub const MAX_GRANT_LIFETIME: Duration = Duration::from_secs(120);

/// Most connections `server.max_connections` may ask for (a semaphore counts in `u32`; far more
/// than one broker should hold).
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// The client id and kid the `local` environment uses when the config names none.
pub const LOCAL_CLIENT_ID: &str = "local-client";
pub const LOCAL_KID: &str = "local-kid";

/// The Altinn token exchange, under the platform base.
const EXCHANGE_PATH: &str = "authentication/api/v1/exchange/maskinporten";

/// The upstream URLs the broker talks to, after defaults and overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: String,
    pub token_url: Url,
    pub altinn_exchange_url: Url,
    /// The Altinn platform base, ending in `/`: Altinn's APIs are joined to it.
    pub altinn_platform: Url,
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
            altinn_exchange_url: join(altinn, EXCHANGE_PATH),
            altinn_platform: join(altinn, ""),
        }
    }
}

impl Endpoints {
    /// The defaults of `env` with the overrides of `settings`.
    pub fn with_overrides(
        env: Environment,
        settings: &EndpointSettings,
        local_base: Option<&Url>,
    ) -> Endpoints {
        let mut e = Endpoints::defaults(env, local_base);
        if let Some(issuer) = &settings.issuer {
            e.issuer = issuer.clone();
        }
        if let Some(url) = &settings.token_url {
            e.token_url = url.clone();
        }
        if let Some(platform) = &settings.altinn_platform {
            // The exchange lives on the platform unless it is configured on its own.
            if let Ok(exchange) = platform.join(EXCHANGE_PATH) {
                e.altinn_exchange_url = exchange;
            }
            e.altinn_platform = platform.clone();
        }
        if let Some(url) = &settings.altinn_exchange_url {
            e.altinn_exchange_url = url.clone();
        }
        e
    }
}

/// Why the broker cannot start with this configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot load the configuration: {} does not exist; pass --config PATH or start from the broker.yaml in the repository",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot load the configuration from {origin}")]
    Load {
        origin: String,
        #[source]
        source: Box<config::ConfigError>,
    },
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Every problem validation found, each with its field path.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<String>);

impl Problems {
    pub(crate) fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// `value` when nothing was found, else every problem.
    pub(crate) fn into_result<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
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
            return Err(ConfigError::Missing(path.to_owned()));
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
            .map_err(|source| ConfigError::Load {
                origin: format!("{} and BROKER__* variables", path.display()),
                source: Box::new(source),
            })
    }

    /// Parse settings from YAML text alone (tests, examples).
    pub fn from_yaml(yaml: &str) -> Result<Settings, ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|source| ConfigError::Load {
                origin: "YAML text".to_owned(),
                source: Box::new(source),
            })
    }

    /// Check every section that needs no rule of a module above config; every problem goes to
    /// `problems` with its field path. The parts built by their own modules (profiles, clients,
    /// on-demand patterns, proxy routes, token files) are checked by `Settings::validate` in
    /// `app/validate.rs`, which calls this after [`Settings::check_credentials`].
    pub(crate) fn check_sections(&self, problems: &mut Problems) {
        self.endpoints.check("endpoints.", problems);
        self.server.check(problems);
        self.cache.check(problems);
        self.http_client.check(problems);
        self.check_local(problems);
        self.log.check(problems);
        if let Some(rotation) = &self.key_rotation {
            rotation.check(self.env, self.kid.as_deref(), &self.key, problems);
        }
    }

    /// `client_id` and one source of the key: required outside `local`. `kid` may come from the
    /// key itself (a JWK) or be absent for a business certificate; loading the key decides.
    pub(crate) fn check_credentials(&self, problems: &mut Problems) {
        let local = self.env == Environment::Local;
        match self.client_id.as_deref().map(str::trim) {
            Some("") => problems.push("client_id: must not be empty"),
            None if !local => problems
                .push("client_id: is required (set it in the config file or BROKER__CLIENT_ID)"),
            _ => {}
        }
        check_kid_and_key("", self.kid.as_deref(), &self.key, local, problems);
        self.check_maskinporten_clients(problems);
        self.grant.check(problems);
    }

    /// `maskinporten_clients:`: each entry as complete as the top-level client, under its own
    /// field path. Client ids may repeat (one client, two keys).
    fn check_maskinporten_clients(&self, problems: &mut Problems) {
        for (name, c) in &self.maskinporten_clients {
            let at = format!("maskinporten_clients.{name}.");
            if name == crate::policy::profile::DEFAULT_CLIENT {
                problems.push(format!(
                    "maskinporten_clients.{name}: the client named default is the top-level client_id, kid and key; set those there, or give this client another name"
                ));
            } else if !crate::policy::profile::is_name(name) {
                problems.push(format!(
                    "maskinporten_clients.{name}: a client name uses only letters, digits, '-' and '_'"
                ));
            }
            if c.client_id.trim().is_empty() {
                problems.push(format!("{at}client_id: must not be empty"));
            }
            let env = c.env.unwrap_or(self.env);
            if env == Environment::Local && self.env != Environment::Local {
                problems.push(format!(
                    "{at}env: local needs the top-level env: local (its simulator); use test or prod"
                ));
            }
            let local = env == Environment::Local;
            check_kid_and_key(&at, c.kid.as_deref(), &c.key, local, problems);
            if let Some(endpoints) = &c.endpoints {
                endpoints.check(&format!("{at}endpoints."), problems);
            }
        }
    }

    fn check_local(&self, problems: &mut Problems) {
        let min_remaining = self.cache.min_remaining;
        if self.env == Environment::Local && self.local.token_lifetime <= min_remaining {
            problems.push(format!(
                "local.token_lifetime: must be longer than cache.min_remaining ({}), or no token could ever be served",
                humantime::format_duration(min_remaining)
            ));
        }
    }

    pub fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or(LOCAL_CLIENT_ID)
    }

    /// The environment's endpoints with this config's overrides applied (the default client's).
    pub fn endpoints(&self, local_base: Option<&Url>) -> Endpoints {
        Endpoints::with_overrides(self.env, &self.endpoints, local_base)
    }

    /// Every Maskinporten client: the top-level one (`default`) first, then
    /// `maskinporten_clients` by name.
    pub fn maskinporten_clients(&self) -> Vec<ClientView<'_>> {
        let named = self.named_clients();
        std::iter::once(self.default_client())
            .chain(named)
            .collect()
    }

    /// The top-level `client_id`, `kid` and `key`: the client named `default`.
    pub fn default_client(&self) -> ClientView<'_> {
        ClientView {
            name: crate::policy::profile::DEFAULT_CLIENT,
            client_id: self.client_id(),
            kid: self.kid.as_deref(),
            key: &self.key,
            env: self.env,
            endpoint_settings: &self.endpoints,
            field: String::new(),
        }
    }

    /// `maskinporten_clients`, by name.
    pub fn named_clients(&self) -> impl Iterator<Item = ClientView<'_>> {
        self.maskinporten_clients.iter().map(|(name, c)| {
            let env = c.env.unwrap_or(self.env);
            let inherited = (env == self.env).then_some(&self.endpoints);
            ClientView {
                name,
                client_id: &c.client_id,
                kid: c.kid.as_deref(),
                key: &c.key,
                env,
                endpoint_settings: c
                    .endpoints
                    .as_ref()
                    .or(inherited)
                    .unwrap_or(&NO_ENDPOINT_OVERRIDES),
                field: format!("maskinporten_clients.{name}."),
            }
        })
    }
}

impl CacheSettings {
    fn check(&self, problems: &mut Problems) {
        if !(self.refresh_when_left > 0.0 && self.refresh_when_left < 1.0) {
            problems.push(format!(
                "cache.refresh_when_left: must be between 0 and 1 (a fraction of the lifetime), got {}",
                self.refresh_when_left
            ));
        }
        if !(0.0..=0.5).contains(&self.refresh_jitter) {
            problems.push(format!(
                "cache.refresh_jitter: must be between 0 and 0.5 (a fraction of the lifetime; 0 turns it off), got {}",
                self.refresh_jitter
            ));
        }
        if self.idle.is_zero() {
            problems.push("cache.idle: must be longer than 0s");
        }
        for (field, value) in [
            ("max_entries", self.max_entries),
            (
                "max_fetches_per_second",
                u64::from(self.max_fetches_per_second),
            ),
            ("max_concurrent_fetches", self.max_concurrent_fetches as u64),
        ] {
            if value == 0 {
                problems.push(format!("cache.{field}: must be at least 1"));
            }
        }
    }
}

impl ServerSettings {
    fn check(&self, problems: &mut Problems) {
        for (field, value) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.keep_alive_timeout", self.keep_alive_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("{field}: must be longer than 0s"));
            }
        }
        if let Some(tls) = &self.tls {
            tls.check(&mut problems.0);
        }
        if self.shutdown_delay > MAX_SHUTDOWN_DELAY {
            problems.push(format!(
                "server.shutdown_delay: must be at most {} (leave the drain time before the orchestrator's SIGKILL), got {}",
                humantime::format_duration(MAX_SHUTDOWN_DELAY),
                humantime::format_duration(self.shutdown_delay)
            ));
        }
        let most = MAX_CONNECTIONS_LIMIT;
        if let Some(max) = self.max_connections
            && !(1..=most).contains(&max)
        {
            problems.push(format!(
                "server.max_connections: must be between 1 and {most}, got {max}; leave it out to derive it from the file descriptor limit"
            ));
        }
    }
}

impl HttpClientSettings {
    fn check(&self, problems: &mut Problems) {
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            problems.push("http_client: timeouts must be longer than 0s");
        }
    }
}

impl LogSettings {
    fn check(&self, problems: &mut Problems) {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            problems.push(format!(
                "log.level: {:?} is not a valid filter: {e}",
                self.level
            ));
        }
    }
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
    fn altinn_platform_defaults_per_environment_and_carries_the_exchange() {
        let platform = |yaml: &str| {
            let s = Settings::from_yaml(yaml).unwrap();
            let e = s.endpoints(Some(&Url::parse("http://127.0.0.1:4321/").unwrap()));
            (
                e.altinn_platform.to_string(),
                e.altinn_exchange_url.to_string(),
            )
        };
        assert_eq!(platform(MINIMAL).0, "https://platform.tt02.altinn.no/");
        assert_eq!(
            platform("client_id: a\nkid: b\nkey:\n  path: k.pem\n").0,
            "https://platform.altinn.no/"
        );
        assert_eq!(platform("env: local\n").0, "http://127.0.0.1:4321/");
        let custom = platform(&format!(
            "{MINIMAL}endpoints:\n  altinn_platform: http://127.0.0.1:7/altinn/\n"
        ));
        assert_eq!(custom.0, "http://127.0.0.1:7/altinn/");
        assert_eq!(
            custom.1, "http://127.0.0.1:7/altinn/authentication/api/v1/exchange/maskinporten",
            "the exchange follows the platform unless set on its own"
        );
    }

    #[test]
    fn altinn_platform_must_end_in_a_slash_and_be_https_except_on_loopback() {
        let refused = |yaml: &str, expected: &[&str]| {
            let p = problems(&format!("{MINIMAL}{yaml}"));
            for e in expected {
                assert!(p.iter().any(|l| l.starts_with(e)), "{e} in {p:?}");
            }
        };
        let at = "endpoints.altinn_platform: http://platform.example.no/x must";
        refused(
            "endpoints:\n  altinn_platform: http://platform.example.no/x\n",
            &[&format!("{at} end in '/'"), &format!("{at} be https")],
        );
        refused(
            "maskinporten_clients:\n  b:\n    client_id: b\n    key: {path: b.pem}\n    endpoints:\n      altinn_platform: http://10.0.0.1/\n",
            &["maskinporten_clients.b.endpoints.altinn_platform: http://10.0.0.1/ must be https"],
        );
        for ok in [
            "https://platform.example.no/",
            "http://127.0.0.1:9/",
            "http://[::1]:9/",
            "http://localhost:9/",
        ] {
            let s =
                Settings::from_yaml(&format!("{MINIMAL}endpoints:\n  altinn_platform: '{ok}'\n"))
                    .unwrap();
            assert!(s.validate().is_ok(), "{ok}");
        }
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
        let err = Settings::from_yaml("clientid: x\n").unwrap_err();
        let err = crate::telemetry::Chain(&err).to_string();
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
        assert_eq!(s.kid.as_deref(), Some("k1"));
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
        let s = Settings::from_yaml("key:\n  jwk: SECRETJWK\n  password: SECRETPW\n").unwrap();
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("SECRETJWK") && !debug.contains("SECRETPW"),
            "{debug}"
        );
    }

    #[test]
    fn one_key_source_one_password_source_and_a_grant_of_at_most_120_seconds() {
        let p = problems(
            "env: test\nclient_id: c\nkey:\n  path: k\n  jwk: '{}'\n  password: a\n  password_file: b\ngrant:\n  lifetime: 121s\n",
        );
        assert!(
            p.contains(&"key: set only one of key.path, key.pem and key.jwk".to_owned()),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("key: set either key.password")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("grant.lifetime: must be between 1s and 120s")),
            "{p:?}"
        );
        let ok = Settings::from_yaml("env: test\nclient_id: c\nkey:\n  path: k.p12\n").unwrap();
        assert!(
            ok.validate().is_ok(),
            "kid is decided when the key is loaded"
        );
        assert_eq!(ok.grant.lifetime, Duration::from_secs(120));
    }

    #[test]
    fn a_named_client_inherits_env_and_endpoints_unless_its_env_differs() {
        let s = Settings::from_yaml(&format!(
            "{MINIMAL}endpoints:\n  token_url: http://127.0.0.1:1/t\nmaskinporten_clients:\n  same:\n    client_id: s\n    key: {{path: s.pem}}\n  prod:\n    client_id: p\n    env: prod\n    key: {{path: p.pem}}\n"
        ))
        .unwrap();
        assert!(s.validate().is_ok());
        let clients = s.maskinporten_clients();
        let names: Vec<_> = clients.iter().map(|c| c.name).collect();
        assert_eq!(names, ["default", "prod", "same"], "the default first");
        assert_eq!(
            clients[2].endpoints(None).token_url.as_str(),
            "http://127.0.0.1:1/t"
        );
        assert_eq!(clients[1].env, Environment::Prod);
        assert_eq!(
            clients[1].endpoints(None).issuer,
            "https://maskinporten.no/"
        );
        assert_eq!(
            clients[1].field("key.path"),
            "maskinporten_clients.prod.key.path"
        );
    }
}

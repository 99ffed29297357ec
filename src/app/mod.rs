//! Start-up: from validated settings to a listening broker, and back down on shutdown.
//!
//! Order matters and every step fails before the broker listens: validate the settings, load the
//! key, start the `local` simulator if asked, build the HTTP client, the broker, the cache and the
//! router. [`App::spawn`] serves on a given listener (tests use `127.0.0.1:0`); [`run`] binds the
//! configured address and waits for SIGTERM/SIGINT.

mod changes;
pub mod cli;
mod clients;
pub mod commands;
pub mod consent;
mod follow;
mod heap;
pub mod keys;
pub mod onboarding;
mod serve;
mod tls;
mod validate;
mod workers;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::{ClientView, ConfigError, Environment, LOCAL_KID, Settings};
use crate::http;
use crate::http::limits::REQUEST_TIMEOUT;
use crate::http::proxy::table::Proxy;
use crate::http::state::{AppState, Shared};
use crate::key::SigningKey;
use crate::key::store::{
    ClientKeys, FILE_CHECK_INTERVAL, KeyLoadError, WatchedFiles, key_paths, load_keys,
};
use crate::policy::profile::ClientName;
use crate::simulator::{self, RegisteredClient, SimulatorConfig, SimulatorHandle};
use crate::tokens::broker::{Broker, Generation};
use crate::tokens::budget::FetchBudget;
use crate::tokens::cache::{Policy, TokenCache};
use crate::tokens::files::TokenFiles;
use crate::upstream::client::{ClientBuildError, http_client};
use crate::upstream::clock::Clock;
use crate::upstream::discovery::{self, DiscoveryError, Metadata, Plan};
use crate::upstream::fetch::Fetcher;
use crate::upstream::retry::RetryPolicy;

use validate::Validated;

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyLoadError),
    #[error(transparent)]
    Keeper(#[from] crate::key::rotation::StartKeeperError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("endpoints.issuer")]
    Discovery(#[from] DiscoveryError),
    #[error("{field}")]
    ClientDiscovery {
        field: String,
        #[source]
        source: Box<DiscoveryError>,
    },
    #[error(transparent)]
    Tls(#[from] self::tls::TlsError),
    #[error("cannot start the local simulator")]
    Simulator(#[source] std::io::Error),
    #[error("cannot start the connection worker threads")]
    Workers(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Since #27 a client without `scopes` gets no on-demand token: say so once per client at start,
/// so that an upgrade does not surprise anyone.
fn warn_of_clients_without_on_demand_scopes(validated: &Validated) {
    if validated.on_demand.is_empty() {
        return;
    }
    for name in validated.clients.without_on_demand_scopes() {
        tracing::warn!(
            client = name,
            "client has no on-demand scopes (clients[].scopes absent): it is refused every on-demand token; write scopes: ['*'] for all that on_demand.scopes allows"
        );
    }
}

/// Everything built from one config, before serving.
pub(crate) struct Built {
    pub(crate) state: AppState,
    pub(crate) simulator: Option<SimulatorHandle>,
}

/// Build the broker from settings (validates, loads the key, starts the `local` simulator).
pub(crate) async fn build(settings: Settings) -> Result<Built, StartError> {
    let validated = settings.validate()?;
    // Before the keys: the start-up probe of a key in an HSM or Vault is counted on /metrics.
    let metrics = crate::telemetry::meters::install();
    warn_of_clients_without_on_demand_scopes(&validated);
    let keys = load_keys(&settings).await?;
    let simulator = match settings.env {
        Environment::Local => Some(start_simulator(&settings, &keys, &validated).await?),
        _ => None,
    };
    let local_base = simulator.as_ref().map(SimulatorHandle::base_url);
    let clients = Arc::new(ArcSwap::from_pointee(validated.clients.clone()));
    let http = http_client(&settings.http_client)?;
    let discovered = discover(&settings, local_base, &http).await?;
    // Workload-token issuers: their keys read once now; a failure is logged and the keys are
    // read again when a token names one (the broker still serves API-key clients meanwhile).
    for (name, issuer) in &settings.identity.issuers {
        if let Some(path) = &issuer.bearer_token_file {
            let field = format!("identity.issuers.{name}.bearer_token_file");
            crate::key::store::warn_if_readable_by_others(&field, path);
        }
    }
    let (identity, introspection, proxy_client) =
        clients::start(&settings, local_base, &http).await?;
    let proxy = Proxy::new(&validated.proxy, local_base, proxy_client);
    let files = validated.token_files.clone();
    let system = validated.system.clone().map(Arc::new);
    let consent = validated
        .consent
        .clone()
        .map(|c| Arc::new(crate::onboarding::consent::Consents::new(c)));
    let fixed_orgs: Vec<_> = validated
        .proxy
        .iter()
        .filter(|r| r.org.is_some())
        .cloned()
        .collect();
    let key_watch = crate::key::status::KeyWatch::default();
    if let Some(kid) = keys.default.kid() {
        key_watch.set_keys(vec![crate::key::status::KeyReport {
            client: settings.client_id().to_owned(),
            kid: kid.to_owned(),
            kept: crate::key::rotation::kept(&settings.key, &keys.default),
            expires_at: keys.default.not_after(),
            in_use: true,
        }]);
    }
    let generation = generation(&settings, validated, keys, local_base, discovered, http);
    let token_files = token_files(&generation, &files, &fixed_orgs)?;
    let clock = Arc::new(Clock::default());
    let broker = Broker::new(generation, clock.clone(), RetryPolicy::default());
    let budget = FetchBudget::new(
        NonZeroU32::new(settings.cache.max_fetches_per_second).unwrap_or(NonZeroU32::MIN),
        settings.cache.max_concurrent_fetches,
    );
    let tokens = TokenCache::new(broker, Policy::from(&settings.cache), budget, clock);
    Ok(Built {
        state: AppState::new(Shared {
            tokens,
            env: settings.env,
            clients,
            metrics,
            openapi: http::openapi::served(
                &http::document(),
                system.as_deref(),
                consent.as_deref().map(|c| &c.settings),
            )
            .into(),
            proxy,
            token_files,
            draining: Default::default(),
            identity,
            introspection: ArcSwap::from_pointee(introspection),
            system,
            consent,
            keys: key_watch,
        }),
        simulator,
    })
}

/// What discovery read for each Maskinporten client (the default first): the plan, and what it
/// read (`None` after a tolerated failure); `None` for a client that does not discover.
pub(crate) type Discovered = Vec<Option<(Plan, Option<Metadata>)>>;

/// The issuer metadata of every Maskinporten client that discovers its token endpoint. A
/// required read that fails refuses the settings.
pub(crate) async fn discover(
    settings: &Settings,
    local_base: Option<&Url>,
    http: &reqwest::Client,
) -> Result<Discovered, StartError> {
    let mut discovered = Vec::new();
    for client in settings.maskinporten_clients() {
        let issuer = client.endpoints(local_base).issuer;
        let Some(plan) = Plan::of_client(&client, &issuer) else {
            discovered.push(None);
            continue;
        };
        let metadata = match plan.resolve(http, settings.http_client.timeout).await {
            Ok(metadata) => metadata,
            Err(source) if client.field.is_empty() => return Err(source.into()),
            Err(source) => {
                return Err(StartError::ClientDiscovery {
                    field: client.field("endpoints.issuer"),
                    source: Box::new(source),
                });
            }
        };
        discovered.push(Some((plan, metadata)));
    }
    Ok(discovered)
}

/// Token files and proxy routes with a fixed org must name a token the broker can make, by the
/// same rules as a request (`Generation::resolve`); checked before the broker listens.
fn token_files(
    generation: &Generation,
    files: &[crate::tokens::files::TokenFile],
    fixed_orgs: &[crate::http::proxy::route::ProxyRoute],
) -> Result<TokenFiles, StartError> {
    let mut problems: Vec<String> = fixed_orgs
        .iter()
        .filter_map(|r| {
            generation
                .resolve(&r.profile, r.org.clone())
                .err()
                .map(|e| format!("proxy.{}.org: {e}", r.name))
        })
        .collect();
    match TokenFiles::new(files, generation) {
        Ok(files) if problems.is_empty() => Ok(files),
        Ok(_) => Err(ConfigError::Invalid(problems).into()),
        Err(mut more) => {
            problems.append(&mut more);
            Err(ConfigError::Invalid(problems).into())
        }
    }
}

/// The reloadable part of the broker, from validated settings, every client's key and what
/// discovery read (in the order of [`Settings::maskinporten_clients`]; missing entries did not
/// discover).
pub(crate) fn generation(
    settings: &Settings,
    validated: Validated,
    keys: ClientKeys,
    local_base: Option<&Url>,
    discovered: Discovered,
    http: reqwest::Client,
) -> Generation {
    let mut discovered = discovered.into_iter();
    let mut fetcher = |client: &ClientView<'_>, key: &SigningKey| {
        let mut endpoints = client.endpoints(local_base);
        let (plan, metadata) = discovered.next().flatten().unzip();
        if let Some(metadata) = metadata.flatten() {
            endpoints.token_url = metadata.token_endpoint;
        }
        let fetcher = Fetcher::new(
            client.client_id.to_owned(),
            key.clone(),
            endpoints,
            settings.grant.lifetime,
            http.clone(),
            settings.http_client.timeout,
        );
        (fetcher, plan)
    };
    let (default, discovery) = fetcher(&settings.default_client(), &keys.default);
    let clients = (settings.named_clients().zip(&keys.named))
        .map(|(client, key)| (ClientName::new(client.name), fetcher(&client, key).0))
        .collect();
    Generation {
        fetcher: default,
        clients,
        profiles: validated.profiles,
        default_org: validated.default_org,
        on_demand: validated.on_demand,
        discovery,
    }
}

/// The broker's Maskinporten clients as the `local` simulator should know them: each id, the
/// public half of its key, and every scope the profiles and `on_demand.scopes` may ask for.
pub(crate) fn simulator_clients(
    settings: &Settings,
    keys: &ClientKeys,
    validated: &Validated,
) -> Vec<RegisteredClient> {
    keys.with_clients(settings)
        .map(|(client, key)| simulator_client(client.client_id, key, validated))
        .collect()
}

/// One Maskinporten client as the `local` simulator should know it.
pub(crate) fn simulator_client(
    client_id: &str,
    key: &SigningKey,
    validated: &Validated,
) -> RegisteredClient {
    RegisteredClient {
        client_id: client_id.to_owned(),
        keys: vec![(key.kid().unwrap_or(LOCAL_KID).to_owned(), key.public_key())],
        scopes: validated.scopes(),
    }
}

async fn start_simulator(
    settings: &Settings,
    keys: &ClientKeys,
    validated: &Validated,
) -> Result<SimulatorHandle, StartError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(StartError::Simulator)?;
    let handle = simulator::start(
        SimulatorConfig {
            signing_key: None,
            token_lifetime: settings.local.token_lifetime,
            clients: simulator_clients(settings, keys, validated),
            consumer_org: validated
                .system
                .as_ref()
                .map(|s| s.vendor.to_string())
                .or_else(|| validated.consent.as_ref().map(|c| c.org.to_string())),
            strict_system_users: settings.local.system_users == crate::config::SystemUsers::Strict,
        },
        listener,
    )
    .await
    .map_err(StartError::Simulator)?;
    tracing::info!(url = %handle.base_url(), "local simulator of Maskinporten and Altinn is running");
    Ok(handle)
}

/// The key keeper of `key_rotation:`, started beside the server.
async fn spawn_keeper(
    settings: &Settings,
    built: &Built,
    stop: &CancellationToken,
) -> Result<Option<JoinHandle<()>>, StartError> {
    let Some(mut keeper) = keeper(settings, built).await? else {
        return Ok(None);
    };
    let (state, settings) = (built.state.clone(), settings.clone());
    if keeper.vault.is_some() {
        // Before serving: after a restart in the middle of a rotation, the Vault version that
        // signs is the oldest Digdir holds, not the latest (bounded; a failure is retried).
        let wanted = Arc::new(std::sync::Mutex::new(None));
        let seen = wanted.clone();
        keeper.on_switch = Some(Box::new(move |version| {
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = version;
        }));
        let first = tokio::time::timeout(settings.http_client.timeout * 3, keeper.step(false));
        if let Ok(Err(e)) = first.await {
            tracing::warn!(error = %crate::telemetry::Chain(&e), "key_rotation: the first look at Digdir's set failed; the latest Vault key version signs until it succeeds");
        }
        let version = *wanted.lock().unwrap_or_else(|e| e.into_inner());
        if version.is_some() {
            switch_key(&state, &settings, version).await;
        }
    }
    keeper.on_switch = Some(Box::new(move |vault_version| {
        let (state, settings) = (state.clone(), settings.clone());
        tokio::spawn(async move { switch_key(&state, &settings, vault_version).await });
    }));
    let stop = stop.clone();
    Ok(Some(tokio::spawn(Arc::new(keeper).run(stop))))
}

/// Sign with the key the rotation switched to: the key file again (`None`), or version
/// `Some(n)` of the Vault transit key. A key that does not load leaves the previous one signing.
async fn switch_key(state: &AppState, settings: &Settings, vault_version: Option<u64>) {
    let loaded = match vault_version {
        Some(version) => crate::key::store::load_vault_version(settings, version).await,
        None => crate::key::store::load_key(settings).await,
    };
    match loaded {
        Ok(key) => {
            tracing::info!(
                kid = key.kid(),
                "the key rotation switched: grants are signed with the new key"
            );
            state.broker().replace_default_key(key);
        }
        Err(e) => {
            tracing::error!(error = %crate::telemetry::Chain(&e), "the rotated key does not load; the previous key keeps signing")
        }
    }
}

/// The key keeper `key_rotation:` asks for; in `env: local` its self-service client is
/// registered with the simulator.
pub(crate) async fn keeper(
    settings: &Settings,
    built: &Built,
) -> Result<Option<crate::key::rotation::KeyKeeper>, StartError> {
    let generation = built.state.broker().generation();
    let fetcher = &generation.fetcher;
    let local_base = built.simulator.as_ref().map(SimulatorHandle::base_url);
    let Some(keeper) = crate::key::rotation::build(
        settings,
        &fetcher.key,
        fetcher.endpoints.clone(),
        fetcher.http().clone(),
        local_base,
        built.state.keys.clone(),
    )
    .await?
    else {
        return Ok(None);
    };
    if let (Some(sim), Some(rotation)) = (&built.simulator, &settings.key_rotation) {
        let admin = keeper.api.admin_key();
        sim.register_client(RegisteredClient {
            client_id: rotation.self_service.client_id.clone(),
            keys: vec![(
                admin.kid().unwrap_or(LOCAL_KID).to_owned(),
                admin.public_key(),
            )],
            scopes: rotation.self_service.scopes.clone(),
        });
    }
    Ok(Some(keeper))
}

/// A broker serving on a listener; stop it with [`App::shutdown`].
pub struct App {
    pub addr: SocketAddr,
    pub(crate) state: AppState,
    simulator: Option<SimulatorHandle>,
    /// The settings the broker started with: those a reload cannot change stay in force.
    started: Settings,
    stop: CancellationToken,
    server: JoinHandle<()>,
    /// Re-reads the issuer metadata daily; aborted on shutdown.
    rediscovery: JoinHandle<()>,
    /// The key keeper of `key_rotation:`; stopped on shutdown.
    keeper: Option<JoinHandle<()>>,
}

impl App {
    /// Build from settings and serve on `listener` until [`App::shutdown`].
    pub async fn spawn(settings: Settings, listener: TcpListener) -> Result<App, StartError> {
        let started = settings.clone();
        // The listener's certificate and key load first: a broker that cannot serve TLS as
        // configured does not start.
        let tls = started
            .server
            .tls
            .as_ref()
            .map(self::tls::Tls::load)
            .transpose()?
            .map(Arc::new);
        let built = build(settings).await?;
        let (current, changed) = (built.state.clone(), built.state.clone());
        // With the current generation's own HTTP client: no client of its own, and a reloaded
        // `http_client` applies here too.
        let rediscovery = tokio::spawn(discovery::keep_fresh(
            move || {
                let g = current.broker().generation();
                let plan = g.discovery.clone()?;
                let fetcher = &g.fetcher;
                let token_url = fetcher.endpoints.token_url.clone();
                Some((plan, token_url, fetcher.http().clone(), fetcher.timeout))
            },
            move |plan, url| changed.broker().set_token_url(plan, url),
            (discovery::REREAD_INTERVAL, discovery::RETRY_INTERVAL),
        ));
        let addr = listener.local_addr().map_err(StartError::Simulator)?;
        let service = http::service(built.state.clone(), REQUEST_TIMEOUT);
        let stop = CancellationToken::new();
        let server_settings = started.server.clone();
        raise_and_log_connection_limits(&server_settings);
        built.state.token_files.spawn(&built.state.tokens, &stop);
        let keeper = spawn_keeper(&started, &built, &stop).await?;
        // Histogram samples are folded into buckets whether or not anyone scrapes /metrics.
        tokio::spawn(crate::telemetry::meters::keep_bounded(stop.clone()));
        let signal = stop.clone();
        let workers = workers::Workers::per_core().map_err(StartError::Workers)?;
        let server = tokio::spawn(async move {
            serve::serve(listener, service, &server_settings, tls, workers, signal).await;
        });
        // The router and its OpenAPI document are built: what that took is free now.
        heap::give_back_free_memory();
        Ok(App {
            addr,
            state: built.state,
            simulator: built.simulator,
            started,
            stop,
            server,
            rediscovery,
            keeper,
        })
    }

    /// The `local` simulator's base URL, if this broker runs one.
    pub(crate) fn simulator_url(&self) -> Option<&Url> {
        self.simulator.as_ref().map(SimulatorHandle::base_url)
    }

    /// Replace key, kid, client id, endpoints (discovered again), `http_client`, profiles,
    /// `on_demand`, default org and clients with those of `settings`; the egress proxy's client,
    /// the identity issuers' key sets and the introspection verifiers are rebuilt with the new
    /// `http_client` and `endpoints` (their sections as at start; issuers' keys read again). Everything is built before
    /// anything is applied: a config that does not validate, a key that does not load, a discovery
    /// that must succeed and fails, or an HTTP client that cannot be built changes nothing. Tokens
    /// already cached stay until they expire; they are valid whatever key signed the grant.
    /// Sections read only at start-up ([`needing_restart`]) are logged, not applied.
    pub async fn reload(&self, settings: &Settings) -> Result<(), StartError> {
        let validated = settings.validate()?;
        let keys = load_keys(settings).await?;
        let http = http_client(&settings.http_client)?;
        let discovered = discover(settings, self.simulator_url(), &http).await?;
        let outside = clients::Rebuilt::build(
            &self.state,
            &self.started,
            settings,
            self.simulator_url(),
            &http,
        )?;
        let registrations = simulator_clients(settings, &keys, &validated);
        let kid = keys.default.kid().map(str::to_owned);
        let clients = Arc::new(validated.clients.clone());
        let generation = generation(
            settings,
            validated,
            keys,
            self.simulator_url(),
            discovered,
            http,
        );
        // Built completely: apply.
        if let Some(sim) = &self.simulator {
            registrations
                .into_iter()
                .for_each(|r| sim.register_client(r));
        }
        self.state.clients.store(clients);
        self.state.broker().replace(generation);
        outside.apply(&self.state).await;
        tracing::info!(
            kid = kid.as_deref(),
            maskinporten_clients = settings.maskinporten_clients.len() + 1,
            "configuration and key reloaded (key, kid, client_id, maskinporten_clients, endpoints, grant, http_client, profiles, on_demand, default_org, clients; http_client and endpoints also for the proxy's, identity's and introspection's clients)"
        );
        let unchanged = needing_restart(&self.started, settings);
        if !unchanged.is_empty() {
            tracing::warn!(
                sections = unchanged.join(", "),
                "changed in the configuration, but needs a restart to take effect; the values the broker started with stay in force"
            );
        }
        Ok(())
    }

    /// The orchestrator asked the broker to go (SIGTERM): `/readyz` answers 503 at once, so the
    /// broker is taken out of its Service's endpoints, while it keeps accepting and serving for
    /// `server.shutdown_delay` (callers still sent here while the endpoint change spreads get
    /// their answers); then [`App::shutdown`].
    pub async fn terminate(self) {
        let delay = self.started.server.shutdown_delay;
        self.state.begin_draining();
        if !delay.is_zero() {
            tracing::info!(
                shutdown_delay = %humantime::format_duration(delay),
                "shutting down: /readyz answers 503; still accepting and serving for the shutdown delay"
            );
            tokio::time::sleep(delay).await;
        }
        self.shutdown().await;
    }

    /// Stop accepting, let requests in flight finish, stop background work.
    pub async fn shutdown(self) {
        self.state.begin_draining();
        self.stop.cancel();
        self.rediscovery.abort();
        if let Some(keeper) = &self.keeper {
            keeper.abort();
        }
        let _ = self.server.await;
        self.state.tokens.shutdown();
        if let Some(sim) = self.simulator {
            sim.shutdown().await;
        }
    }
}

/// The sections of `new` that differ from the running settings but are read only at start-up:
/// the listener, connection limits, cache policy, logging, the environment and its simulator.
pub fn needing_restart(running: &Settings, new: &Settings) -> Vec<&'static str> {
    // Compared by their Debug form: these sections hold no secrets and need no PartialEq.
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    [
        ("env", differs(&running.env, &new.env)),
        ("listen", differs(&running.listen, &new.listen)),
        ("server", differs(&running.server, &new.server)),
        ("cache", differs(&running.cache, &new.cache)),
        ("local", differs(&running.local, &new.local)),
        ("system", differs(&running.system, &new.system)),
        ("log", differs(&running.log, &new.log)),
        ("identity", differs(&running.identity, &new.identity)),
        (
            "introspection",
            differs(&running.introspection, &new.introspection),
        ),
        ("proxy", differs(&running.proxy, &new.proxy)),
        (
            "key_rotation",
            differs(&running.key_rotation, &new.key_rotation),
        ),
        (
            "token_files",
            differs(&running.token_files, &new.token_files),
        ),
    ]
    .into_iter()
    .filter_map(|(section, changed)| changed.then_some(section))
    .collect()
}

/// Raise the open-files limit where allowed and log the connection limits in force.
fn raise_and_log_connection_limits(server: &crate::config::ServerSettings) {
    let fd_limit = serve::raise_fd_limit();
    let max = server.max_connections();
    tracing::info!(
        max_connections = max,
        fd_soft_limit = fd_limit,
        header_read_timeout = %humantime::format_duration(server.header_read_timeout),
        keep_alive_timeout = %humantime::format_duration(server.keep_alive_timeout),
        "connection limits"
    );
    if server.max_connections.is_some() && max > serve::derived_max_connections(fd_limit) {
        tracing::warn!(
            max_connections = max,
            fd_soft_limit = fd_limit,
            "server.max_connections leaves little room below the file descriptor limit (ulimit -n) for upstream connections and files"
        );
    }
}

/// Run the broker on the configured address until SIGTERM or SIGINT; reload on SIGHUP or when
/// the config or key file changes.
pub async fn run(settings: Settings, config_path: &Path) -> Result<(), StartError> {
    let addr = settings.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let key_paths = key_paths(&settings);
    // Before serving: a SIGHUP that arrives once callers can see the broker must reload it, not
    // end it (the default action of SIGHUP), and a file changed meanwhile must count as changed.
    let files = WatchedFiles::new(config_path, key_paths);
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hangup = None::<()>;
    let app = App::spawn(settings, listener).await?;
    tracing::info!(addr = %app.addr, env = %app.state.env, "maskinporten-broker is listening");
    let signal = tokio::select! {
        signal = shutdown_signal() => signal,
        _ = reload_on_change(&app, config_path, files, hangup) => Stop::Interrupt,
    };
    match signal {
        Stop::Terminate => app.terminate().await,
        Stop::Interrupt => {
            tracing::info!("shutting down: finishing requests in flight");
            app.shutdown().await
        }
    }
    Ok(())
}

/// Reload on SIGHUP or when the config or key file changes. Never returns.
async fn reload_on_change(
    app: &App,
    config_path: &Path,
    mut files: WatchedFiles,
    #[cfg(unix)] mut hangup: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))] _hangup: Option<()>,
) {
    let mut tick = tokio::time::interval(FILE_CHECK_INTERVAL);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let reason = tokio::select! {
            _ = hup => "SIGHUP",
            _ = tick.tick() => {
                if !files.changed() { continue; }
                "file change"
            }
        };
        let reloaded = match Settings::load(config_path) {
            Ok(settings) => app.reload(&settings).await.map(|()| settings),
            Err(e) => Err(e.into()),
        };
        match reloaded {
            Ok(settings) => {
                files.follow_keys(key_paths(&settings));
                tracing::info!(reason, "reloaded")
            }
            Err(e) => {
                tracing::error!(reason, error = %crate::telemetry::Chain(&e), "reload refused; the previous configuration keeps serving")
            }
        }
    }
}

/// Which signal asked the broker to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGTERM: an orchestrator; wait `server.shutdown_delay` before closing the listener.
    Terminate,
    /// SIGINT (Ctrl-C): a person at a terminal; stop at once.
    Interrupt,
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C), saying which.
pub(crate) async fn shutdown_signal() -> Stop {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => Stop::Interrupt,
        _ = term => Stop::Terminate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_read_at_start_up_are_named_when_they_change() {
        let base = "env: test\nclient_id: a\nkid: k\nkey:\n  path: k.pem\n";
        let running = Settings::from_yaml(base).unwrap();
        assert!(needing_restart(&running, &running).is_empty());
        let new = Settings::from_yaml(&format!(
            "{base}listen: 127.0.0.1:9999\ncache:\n  min_remaining: 20s\nserver:\n  keep_alive_timeout: 5s\nclients: []\n"
        ))
        .unwrap();
        assert_eq!(
            needing_restart(&running, &new),
            ["listen", "server", "cache"]
        );
        // The proxy's routes and the token files are read at start too; grant reloads.
        let new = Settings::from_yaml(&format!(
            "{base}proxy:\n  r:\n    upstream: https://api.example/\n    profile: admin\ntoken_files:\n  - profile: admin\n    path: /run/t\ngrant:\n  lifetime: 60s\n"
        ))
        .unwrap();
        assert_eq!(needing_restart(&running, &new), ["proxy", "token_files"]);
    }
}

//! Start-up: from validated settings to a listening broker, and back down on shutdown.
//!
//! Order matters and every step fails before the broker listens: validate the settings, load the
//! key, start the `local` simulator if asked, build the HTTP client, the broker, the cache and the
//! router. [`App::spawn`] serves on a given listener (tests use `127.0.0.1:0`); [`run`] binds the
//! configured address and waits for SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::broker::{Broker, Generation};
use crate::cache::{Policy, TokenCache};
use crate::clock::Clock;
use crate::config::{ConfigError, Environment, Settings, Validated};
use crate::fetch::Fetcher;
use crate::http::{self, AppState, Shared};
use crate::key::{KeyError, SigningKey};
use crate::retry::RetryPolicy;
use crate::simulator::{self, RegisteredClient, SimulatorConfig, SimulatorHandle};
use crate::token_files::TokenFiles;
use crate::upstream::{ClientBuildError, http_client};

/// Longest a single request to the broker may take before it gets a 503.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{field}")]
    Key {
        field: &'static str,
        #[source]
        source: KeyError,
    },
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("cannot start the local simulator")]
    Simulator(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The loaded key and where it came from.
pub(crate) fn load_key(settings: &Settings) -> Result<SigningKey, StartError> {
    let (kid, alg) = (settings.kid(), settings.key.algorithm);
    if let Some(pem) = &settings.key.pem {
        return SigningKey::from_pem(pem, kid, alg).map_err(|source| StartError::Key {
            field: "key.pem",
            source,
        });
    }
    match &settings.key.path {
        Some(path) if settings.env != Environment::Local || path.exists() => {
            warn_if_readable_by_others(path);
            SigningKey::from_file(path, kid, alg).map_err(|source| StartError::Key {
                field: "key.path",
                source,
            })
        }
        _ => {
            tracing::info!(
                kid,
                "no key file configured: generated an ephemeral key pair for the local simulator (env local)"
            );
            SigningKey::generate(2048, kid, alg).map_err(|source| StartError::Key {
                field: "key",
                source,
            })
        }
    }
}

/// A private key readable by group or others is one `cat` away from leaking.
fn warn_if_readable_by_others(path: &std::path::Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the key file is readable by group or others; chmod 600 it");
        }
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
    let key = load_key(&settings)?;
    let simulator = match settings.env {
        Environment::Local => Some(start_simulator(&settings, &key, &validated).await?),
        _ => None,
    };
    let local_base = simulator.as_ref().map(SimulatorHandle::base_url);
    let clients = Arc::new(ArcSwap::from_pointee(validated.clients.clone()));
    let proxy = http::proxy::Proxy::new(&validated.proxy, local_base, &settings.http_client)?;
    let files = validated.token_files.clone();
    let fixed_orgs: Vec<_> = validated
        .proxy
        .iter()
        .filter(|r| r.org.is_some())
        .cloned()
        .collect();
    let generation = generation(&settings, validated, key, local_base)?;
    let token_files = token_files(&generation, &files, &fixed_orgs)?;
    let clock = Arc::new(Clock::default());
    let broker = Broker::new(generation, clock.clone(), RetryPolicy::default());
    let tokens = TokenCache::new(broker, Policy::from(&settings.cache), clock);
    Ok(Built {
        state: AppState::new(Shared {
            tokens,
            bodies: Default::default(),
            env: settings.env,
            clients,
            metrics: crate::meters::install(),
            openapi: serde_json::to_vec(&http::document())
                .unwrap_or_default()
                .into(),
            proxy,
            token_files,
        }),
        simulator,
    })
}

/// Token files and proxy routes with a fixed org must name a token the broker can make, by the
/// same rules as a request (`Generation::resolve`); checked before the broker listens.
fn token_files(
    generation: &Generation,
    files: &[crate::token_files::TokenFile],
    fixed_orgs: &[crate::proxy_route::ProxyRoute],
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

/// The reloadable part of the broker, from validated settings and a loaded key.
pub(crate) fn generation(
    settings: &Settings,
    validated: Validated,
    key: SigningKey,
    local_base: Option<&Url>,
) -> Result<Generation, StartError> {
    let fetcher = Fetcher::new(
        settings.client_id().to_owned(),
        key,
        settings.endpoints(local_base),
        http_client(&settings.http_client)?,
        settings.http_client.timeout,
    );
    Ok(Generation {
        fetcher,
        profiles: validated.profiles,
        default_org: validated.default_org,
        on_demand: validated.on_demand,
    })
}

/// The broker's Maskinporten client as the `local` simulator should know it: its id, the public
/// half of its key, and every scope its profiles and `on_demand.scopes` may ask for.
pub(crate) fn simulator_client(
    client_id: &str,
    key: &SigningKey,
    validated: &Validated,
) -> RegisteredClient {
    RegisteredClient {
        client_id: client_id.to_owned(),
        keys: vec![(key.kid().to_owned(), key.public_key())],
        scopes: validated.scopes(),
    }
}

async fn start_simulator(
    settings: &Settings,
    key: &SigningKey,
    validated: &Validated,
) -> Result<SimulatorHandle, StartError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(StartError::Simulator)?;
    let handle = simulator::start(
        SimulatorConfig {
            signing_key: None,
            token_lifetime: settings.local.token_lifetime,
            clients: vec![simulator_client(settings.client_id(), key, validated)],
        },
        listener,
    )
    .await
    .map_err(StartError::Simulator)?;
    tracing::info!(url = %handle.base_url(), "local simulator of Maskinporten and Altinn is running");
    Ok(handle)
}

/// A broker serving on a listener; stop it with [`App::shutdown`].
pub struct App {
    pub addr: SocketAddr,
    pub(crate) state: AppState,
    simulator: Option<SimulatorHandle>,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl App {
    /// Build from settings and serve on `listener` until [`App::shutdown`].
    pub async fn spawn(settings: Settings, listener: TcpListener) -> Result<App, StartError> {
        let built = build(settings).await?;
        let addr = listener.local_addr().map_err(StartError::Simulator)?;
        let service = http::service(built.state.clone(), REQUEST_TIMEOUT);
        let stop = CancellationToken::new();
        built.state.token_files.spawn(&built.state.tokens, &stop);
        let signal = stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, tower::make::Shared::new(service))
                .with_graceful_shutdown(async move { signal.cancelled().await })
                .await
        });
        Ok(App {
            addr,
            state: built.state,
            simulator: built.simulator,
            stop,
            server,
        })
    }

    /// The `local` simulator's base URL, if this broker runs one.
    pub(crate) fn simulator_url(&self) -> Option<&Url> {
        self.simulator.as_ref().map(SimulatorHandle::base_url)
    }

    /// Replace key, kid, client id, endpoints, profiles, default org and clients with those of
    /// `settings`. A config that does not validate or a key that does not load changes nothing.
    /// Tokens already cached stay until they expire; they are valid whatever key signed the grant.
    /// `listen`, `cache`, `http_client` timeouts and `log` need a restart.
    pub(crate) fn reload(&self, settings: &Settings) -> Result<(), StartError> {
        let validated = settings.validate()?;
        let key = load_key(settings)?;
        if let Some(sim) = &self.simulator {
            sim.register_client(simulator_client(settings.client_id(), &key, &validated));
        }
        let kid = key.kid().to_owned();
        self.state
            .clients
            .store(Arc::new(validated.clients.clone()));
        let generation = generation(settings, validated, key, self.simulator_url())?;
        self.state.broker().replace(generation);
        tracing::info!(kid, "configuration and key reloaded");
        Ok(())
    }

    /// Stop accepting, let requests in flight finish, stop background work.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.server.await;
        self.state.tokens.shutdown();
        if let Some(sim) = self.simulator {
            sim.shutdown().await;
        }
    }
}

/// Run the broker on the configured address until SIGTERM or SIGINT; reload on SIGHUP or when
/// the config or key file changes.
pub async fn run(settings: Settings, config_path: &Path) -> Result<(), StartError> {
    let addr = settings.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let key_path = settings.key.path.clone();
    let app = App::spawn(settings, listener).await?;
    tracing::info!(addr = %app.addr, env = %app.state.env, "maskinporten-broker is listening");
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = reload_on_change(&app, config_path, key_path.as_deref()) => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
    app.shutdown().await;
    Ok(())
}

/// How often the config and key files are checked for changes (Kubernetes swaps mounted secrets
/// by symlink, which file-change notifications miss; a cheap `stat` does not).
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Reload on SIGHUP or when the config or key file changes. Never returns.
async fn reload_on_change(app: &App, config_path: &Path, key_path: Option<&Path>) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let stamp =
        |p: Option<&Path>| p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let mut seen = (stamp(Some(config_path)), stamp(key_path));
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
                let now = (stamp(Some(config_path)), stamp(key_path));
                if now == seen { continue; }
                seen = now;
                "file change"
            }
        };
        match Settings::load(config_path)
            .map_err(StartError::from)
            .and_then(|s| app.reload(&s))
        {
            Ok(()) => tracing::info!(reason, "reloaded"),
            Err(e) => {
                tracing::error!(reason, error = %crate::telemetry::Chain(&e), "reload refused; the previous configuration keeps serving")
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
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
        _ = ctrl_c => {}
        _ = term => {}
    }
}

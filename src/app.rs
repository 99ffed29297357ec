//! Start-up: from validated settings to a listening broker, and back down on shutdown.
//!
//! Order matters and every step fails before the broker listens: validate the settings, load the
//! key, start the `local` simulator if asked, build the HTTP client, the broker, the cache and the
//! router. [`App::spawn`] serves on a given listener (tests use `127.0.0.1:0`); [`run`] binds the
//! configured address and waits for SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::broker::{Broker, Generation};
use crate::cache::{Policy, TokenCache};
use crate::clock::Clock;
use crate::config::{ConfigError, Environment, Settings};
use crate::fetch::Fetcher;
use crate::http::{self, AppState};
use crate::key::{KeyError, SigningKey};
use crate::retry::RetryPolicy;
use crate::simulator::{self, RegisteredClient, SimulatorConfig, SimulatorHandle};
use crate::upstream::{ClientBuildError, http_client};

/// Longest a single request to the broker may take before it gets a 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{field}: {source}")]
    Key {
        field: &'static str,
        source: KeyError,
    },
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("cannot start the local simulator: {0}")]
    Simulator(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The loaded key and where it came from.
pub fn load_key(settings: &Settings) -> Result<SigningKey, StartError> {
    let (kid, alg) = (settings.kid(), settings.key.algorithm);
    if let Some(pem) = &settings.key.pem {
        return SigningKey::from_pem(pem, kid, alg).map_err(|source| StartError::Key {
            field: "key.pem",
            source,
        });
    }
    match &settings.key.path {
        Some(path) if settings.env != Environment::Local || path.exists() => {
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

/// Everything built from one config, before serving.
pub struct Built {
    pub state: AppState,
    pub simulator: Option<SimulatorHandle>,
    pub settings: Settings,
}

/// Build the broker from settings (validates, loads the key, starts the `local` simulator).
pub async fn build(settings: Settings) -> Result<Built, StartError> {
    let validated = settings.validate()?;
    let key = load_key(&settings)?;
    let simulator = match settings.env {
        Environment::Local => Some(start_simulator(&settings, &key, &validated.profiles).await?),
        _ => None,
    };
    let endpoints = settings.endpoints(simulator.as_ref().map(SimulatorHandle::base_url));
    let http = http_client(&settings.http_client)?;
    let fetcher = Fetcher::new(
        settings.client_id().to_owned(),
        key,
        endpoints,
        http,
        settings.http_client.timeout,
    );
    let clock = Arc::new(Clock::default());
    let broker = Broker::new(
        Generation {
            fetcher,
            profiles: validated.profiles,
            default_org: validated.default_org,
        },
        clock.clone(),
        RetryPolicy::default(),
    );
    let tokens = TokenCache::new(broker, Policy::from(&settings.cache), clock);
    Ok(Built {
        state: AppState {
            tokens,
            env: settings.env,
            clients: Arc::new(validated.clients),
            metrics: crate::metrics::install(),
        },
        simulator,
        settings,
    })
}

async fn start_simulator(
    settings: &Settings,
    key: &SigningKey,
    profiles: &crate::profile::Profiles,
) -> Result<SimulatorHandle, StartError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(StartError::Simulator)?;
    let handle = simulator::start(
        SimulatorConfig {
            token_lifetime: settings.local.token_lifetime,
            clients: vec![RegisteredClient {
                client_id: settings.client_id().to_owned(),
                keys: vec![(key.kid().to_owned(), key.public_key())],
                scopes: profiles.all_scopes(),
            }],
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
    pub state: AppState,
    simulator: Option<SimulatorHandle>,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl App {
    /// Build from settings and serve on `listener` until [`App::shutdown`].
    pub async fn spawn(settings: Settings, listener: TcpListener) -> Result<App, StartError> {
        let built = build(settings).await?;
        let addr = listener.local_addr().map_err(StartError::Simulator)?;
        let router = http::router(built.state.clone(), REQUEST_TIMEOUT);
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
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
    pub fn simulator_url(&self) -> Option<&Url> {
        self.simulator.as_ref().map(SimulatorHandle::base_url)
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

/// Run the broker on the configured address until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), StartError> {
    let addr = settings.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let app = App::spawn(settings, listener).await?;
    tracing::info!(addr = %app.addr, env = %app.state.env, "maskinporten-broker is listening");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    app.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
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

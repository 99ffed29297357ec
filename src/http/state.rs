//! The state every handler shares, built once at start-up: the token cache with its broker,
//! the API clients, the metrics handle, the OpenAPI document, the proxy's routes and the token
//! files. Handlers take it with axum's `State`; it is one shared pointer.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Environment;
use crate::http::proxy::table::Proxy;
use crate::onboarding::system::System;
use crate::policy::access::Clients;
use crate::tokens::broker::Broker;
use crate::tokens::cache::TokenCache;
use crate::tokens::files::TokenFiles;

/// The broker's cache of tokens, filled from the broker's source.
pub type Tokens = TokenCache<Broker>;

/// Everything handlers share; built once at start-up. Cloned for every request by axum's `State`
/// extractor, so it is one shared pointer rather than a clone of each field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub tokens: Tokens,
    pub env: Environment,
    /// API-key clients; empty means token routes are open (loopback or explicit opt-out).
    pub clients: Arc<ArcSwap<Clients>>,
    /// Renders the process-wide metrics for `GET /metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The OpenAPI document as JSON, rendered once from the route table.
    pub openapi: axum::body::Bytes,
    /// The egress proxy's routes (`/proxy/{name}/...`).
    pub proxy: Proxy,
    /// Token files and their state, for `/readyz`.
    pub token_files: TokenFiles,
    /// Set once shutdown has begun: `/readyz` answers 503 from then on.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// The issuers of workload tokens (`identity.issuers`, fixed at start); their key sets take
    /// a reload's `http_client`.
    pub(crate) identity: crate::policy::identity::Issuers,
    /// `POST /api/v1/introspect`'s verifiers (`introspection` fixed at start); rebuilt at reload
    /// with the new `endpoints` and `http_client`.
    pub(crate) introspection: ArcSwap<crate::policy::introspection::Introspection>,
    /// `system:`, checked: the onboarding routes need it (`None`: not configured).
    pub system: Option<Arc<System>>,
    /// `consent:`, checked, and the accepted consents it remembers (`None`: not configured).
    pub consent: Option<Arc<crate::onboarding::consent::Consents>>,
    /// Each managed key's expiry and the key keeper's state (`key_rotation:`), for `/readyz`.
    pub keys: crate::key::status::KeyWatch,
}

impl Shared {
    /// Shutdown has begun: `/readyz` answers 503 so that no new callers are sent here.
    pub(crate) fn begin_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The token source behind the cache: profiles, resolution, upstream health.
    pub fn broker(&self) -> &Broker {
        self.tokens.source()
    }
}

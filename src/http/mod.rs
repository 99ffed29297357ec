//! The HTTP face of the broker: the router, the shared state, and the handlers' modules.

pub mod auth;
pub mod bodies;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod proxy;
pub mod token;

use std::time::Duration;

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tower::{Service, ServiceBuilder};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access::Clients;
use crate::broker::Broker;
use crate::cache::TokenCache;
use crate::config::Environment;

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
    /// The JSON answers of token requests, shared while they are exact.
    pub bodies: bodies::TokenBodies,
    pub env: Environment,
    /// API-key clients; empty means token routes are open (loopback or explicit opt-out).
    pub clients: Arc<ArcSwap<Clients>>,
    /// Renders the process-wide metrics for `GET /metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The egress proxy's routes (`/proxy/{name}/...`).
    pub proxy: proxy::Proxy,
    /// Token files and their state, for `/readyz`.
    pub token_files: crate::token_files::TokenFiles,
}

/// Every route the router serves; `/openapi.json` must document exactly these (tests/observability.rs).
pub const ROUTES: &[&str] = &[
    "/token",
    "/token/{profile}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/proxy/{name}/{rest}",
];

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The routes. Middleware is added by [`service`], around the whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/token", get(token::list_profiles))
        .route("/token/{profile}", get(token::get_token))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route("/proxy/{name}", any(proxy::forward))
        .route("/proxy/{name}/", any(proxy::forward))
        .route("/proxy/{name}/{*rest}", any(proxy::forward))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .with_state(state)
}

/// The router inside its middleware: request ids, tracing, size limits and a deadline of
/// `request_timeout` for every request. Wrapped once around the router rather than with
/// `Router::layer`, which would clone the whole stack for every request.
pub fn service(
    state: AppState,
    request_timeout: Duration,
) -> impl Service<Request<Body>, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let id = request
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            // The path only: the query may carry an org number but never a secret; keep it short.
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(limits::GuardLayer::new(request_timeout))
        .service(router(state))
}

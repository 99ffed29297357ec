//! The HTTP face of the broker: the router, the shared state, and the handlers' modules.

pub mod auth;
pub mod bodies;
pub mod front;
pub mod health;
pub mod limits;
pub mod metrics;
mod on_demand;
pub mod onboarding;
pub mod openapi;
pub mod problem;
pub mod proxy;
pub mod texas;
pub mod token;

use std::time::Duration;

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use axum::routing::any;
use tower::{Layer, Service};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    pub env: Environment,
    /// API-key clients; empty means token routes are open (loopback or explicit opt-out).
    pub clients: Arc<ArcSwap<Clients>>,
    /// Renders the process-wide metrics for `GET /metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The OpenAPI document as JSON, rendered once from the route table.
    pub openapi: axum::body::Bytes,
    /// The egress proxy's routes (`/proxy/{name}/...`).
    pub proxy: proxy::Proxy,
    /// Token files and their state, for `/readyz`.
    pub token_files: crate::token_files::TokenFiles,
    /// `system:`, checked: the onboarding routes need it (`None`: not configured).
    pub system: Option<Arc<crate::onboarding::system::System>>,
}

impl Shared {
    /// The token source behind the cache: profiles, resolution, upstream health.
    pub fn broker(&self) -> &Broker {
        self.tokens.source()
    }
}

/// The route table: each route once, by its handler. The path, the methods and the OpenAPI
/// operation come from the handler's `#[utoipa::path]`; authentication from the handler's
/// [`Caller`] argument; the size limits and the deadline of [`service`] wrap every route alike.
fn table() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(token::index))
        .routes(routes!(texas::token))
        .routes(routes!(token::get_token))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::openapi))
        .routes(routes!(proxy::forward))
        .routes(routes!(onboarding::create_request))
        .routes(routes!(onboarding::get_request))
        .routes(routes!(onboarding::list_system_users))
        // `{rest}` of any depth, and none: OpenAPI cannot spell axum's catch-all.
        .route("/proxy/{name}", any(proxy::forward))
        .route("/proxy/{name}/", any(proxy::forward))
        .route("/proxy/{name}/{rest}/", any(proxy::forward))
        .route("/proxy/{name}/{rest}/{*more}", any(proxy::forward))
}

/// The OpenAPI document of the route table, served by `GET /openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = table().into_openapi();
    openapi::add_refusals(&mut doc);
    doc
}

/// Every path the router serves, as the OpenAPI document lists it (the integration tests check
/// that each is served and that `/openapi.json` documents exactly these).
pub fn route_paths() -> Vec<String> {
    document().paths.paths.into_keys().collect()
}

/// "GET /token, GET /token/{profile}, POST /api/v1/token, ...": the routes for a 404's detail,
/// from the table.
pub(crate) fn route_summary() -> &'static str {
    static SUMMARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SUMMARY.get_or_init(|| {
        let mut routes = Vec::new();
        for (path, item) in document().paths.paths {
            for (method, operation) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                if operation.is_some() {
                    routes.push(format!("{method} {path}"));
                }
            }
        }
        routes.join(", ")
    })
}

/// The routes of the table. Middleware is added by [`service`], around the whole router.
pub fn router(state: AppState) -> Router {
    let (router, _) = table().split_for_parts();
    router
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .with_state(state)
}

/// The router behind the front door ([`front`]): request id, span, size limits and a deadline of
/// `request_timeout` for every request. Wrapped once around the router rather than with
/// `Router::layer`, which would clone the whole stack for every request.
pub fn service(
    state: AppState,
    request_timeout: Duration,
) -> impl Service<Request<Body>, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    front::FrontLayer::new(request_timeout).layer(router(state))
}

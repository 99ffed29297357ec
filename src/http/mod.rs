//! The HTTP face of the broker: the router, the shared state, and the handlers' modules.

pub mod auth;
pub mod bodies;
pub mod changes;
pub mod consent;
pub mod front;
pub mod health;
pub mod introspect;
mod lanes;
pub mod limits;
pub mod metrics;
pub mod on_demand;
pub mod onboarding;
pub mod openapi;
pub mod problem;
pub mod proxy;
mod serving;
pub mod state;
pub mod texas;
pub mod token;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter, on};
use tower::{Layer, Service};
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use problem::Problem;
use state::AppState;

/// The route table: each route once, by its handler. The path, the methods and the OpenAPI
/// operation come from the handler's `#[utoipa::path]`; authentication from the handler's
/// [`Caller`] argument; the size limits and the deadline of [`service`] wrap every route alike.
fn table() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(token::index))
        .routes(routes!(on_demand::token))
        .merge(
            // The POST routes read a body: tower-http bounds it, and its refusal of a body whose
            // Content-Length is over the bound is answered in texas's error shape.
            OpenApiRouter::new()
                .routes(routes!(texas::token))
                .routes(routes!(introspect::introspect))
                .layer(RequestBodyLimitLayer::new(limits::MAX_BODY_BYTES))
                .layer(axum::middleware::map_response(texas::body_too_large)),
        )
        .merge(
            // The same bound on the onboarding POST, refused as problem+json.
            OpenApiRouter::new()
                .routes(routes!(onboarding::create_request))
                .layer(RequestBodyLimitLayer::new(limits::MAX_BODY_BYTES))
                .layer(axum::middleware::map_response(limits::body_too_large)),
        )
        .routes(routes!(token::get_token))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::openapi))
        .routes(routes!(proxy::forward))
        .routes(routes!(onboarding::get_request))
        .routes(routes!(onboarding::list_system_users))
        .routes(routes!(changes::create_change))
        .routes(routes!(changes::get_change))
        .routes(routes!(consent::create))
        .routes(routes!(consent::get))
        .routes(routes!(consent::token))
        // `{rest}` of any depth, and none: OpenAPI cannot spell axum's catch-all.
        .route("/proxy/{name}", proxy_methods())
        .route("/proxy/{name}/", proxy_methods())
        .route("/proxy/{name}/{rest}/", proxy_methods())
        .route("/proxy/{name}/{rest}/{*more}", proxy_methods())
}

/// The proxy's handler for [`proxy::METHODS`] (which `http/lanes.rs` takes too), at the depths
/// OpenAPI cannot spell: TRACE (it would echo the request, token included, back) and CONNECT are
/// a 405 at every depth.
fn proxy_methods() -> MethodRouter<AppState> {
    let filter = |method: &Method| {
        MethodFilter::try_from(method.clone()).expect("the proxy's methods are standard ones")
    };
    let [first, rest @ ..] = &proxy::METHODS;
    let methods = rest
        .iter()
        .fold(filter(first), |methods, method| methods.or(filter(method)));
    on(methods, proxy::forward)
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

/// The routes of the table with their fallbacks. The front door (request id, span, limits,
/// deadline, the panic guard and the sensitive-header marks) is added by [`service`], around the
/// whole router.
pub fn router(state: AppState) -> Router {
    let (router, _) = table().split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The router, and in front of it the two busiest routes ([`lanes`]), behind the front door
/// ([`front`]): request id, span, size limits, a deadline of
/// `request_timeout`, a 500 problem for a handler that panics and sensitive marks on credential
/// headers, for every request. Wrapped once around the router rather than with
/// `Router::layer`, which would clone the whole stack for every request.
pub fn service(
    state: AppState,
    request_timeout: Duration,
) -> impl Service<Request<Body>, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    let routes = route_paths();
    let lanes = lanes::Lanes::new(router(state.clone()), state, &routes);
    front::FrontLayer::new(request_timeout).layer(lanes)
}

/// 404 for routes that do not exist.
pub async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no such route; the routes are {}", route_summary()),
    )
}

/// 405 for a method a route does not take.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!(
            "this route does not take this method (GET also answers HEAD); the routes are {}",
            route_summary()
        ),
    )
}

//! The HTTP face of the broker: the router, the shared state, and the handlers' modules.

pub mod auth;
pub mod bodies;
pub mod front;
pub mod health;
pub mod introspect;
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
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter, on};
use tower::{Layer, Service};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};
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
                .layer(RequestBodyLimitLayer::new(texas::MAX_BODY_BYTES))
                .layer(axum::middleware::map_response(texas::body_too_large)),
        )
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
        .route("/proxy/{name}", proxy_methods())
        .route("/proxy/{name}/", proxy_methods())
        .route("/proxy/{name}/{rest}/", proxy_methods())
        .route("/proxy/{name}/{rest}/{*more}", proxy_methods())
}

/// The proxy's handler for the methods its `#[utoipa::path]` names, at the depths OpenAPI cannot
/// spell: TRACE (it would echo the request, token included, back) and CONNECT are a 405 at every
/// depth.
fn proxy_methods() -> MethodRouter<AppState> {
    let methods = MethodFilter::GET
        .or(MethodFilter::HEAD)
        .or(MethodFilter::POST)
        .or(MethodFilter::PUT)
        .or(MethodFilter::PATCH)
        .or(MethodFilter::DELETE)
        .or(MethodFilter::OPTIONS);
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

/// The routes of the table, guarded ([`guarded`]). The front door is added by [`service`],
/// around the whole router.
pub fn router(state: AppState) -> Router {
    let (router, _) = table().split_for_parts();
    guarded(
        router
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(state),
    )
}

/// The layers of tower-http every route gets, inside the front door:
/// - a handler that panics answers 500 `problem+json` and the connection lives on
///   (`CatchPanicLayer`; the panic's message is not repeated to the caller);
/// - `Authorization`, `X-Api-Key`, `Cookie` and `Set-Cookie` are marked sensitive, so a
///   `Debug` of the headers (a log line, a panic) prints `Sensitive` instead of the value.
fn guarded(router: Router) -> Router {
    let sensitive: std::sync::Arc<[axum::http::HeaderName]> = std::sync::Arc::new([
        axum::http::header::AUTHORIZATION,
        axum::http::HeaderName::from_static("x-api-key"),
        axum::http::header::COOKIE,
    ]);
    router
        .layer(SetSensitiveResponseHeadersLayer::new([
            axum::http::header::SET_COOKIE,
        ]))
        .layer(SetSensitiveRequestHeadersLayer::from_shared(sensitive))
        .layer(CatchPanicLayer::custom(panicked))
}

/// The answer of a handler that panicked: a 500 problem, logged once without the panic's payload
/// (it may quote a value the broker handled).
fn panicked(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; answered 500");
    problem::Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the broker failed while answering this request; try again, and report it with the X-Request-Id if it repeats",
    )
    .into_response()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn boom() -> &'static str {
        panic!("boom")
    }

    /// A router with the product's guards around two handlers: one that panics, one that shows
    /// the request headers as `Debug` prints them.
    async fn serve_guarded() -> std::net::SocketAddr {
        let app = guarded(Router::new().route("/panic", get(boom)).route(
            "/headers",
            get(|headers: axum::http::HeaderMap| async move { format!("{headers:?}") }),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// Send `request` on `stream` and read one answer whose body is `Content-Length` long.
    async fn exchange(stream: &mut tokio::net::TcpStream, request: &str) -> String {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..100 {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(
                n > 0,
                "the connection was closed: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return text;
                }
            }
        }
        panic!("no complete answer");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_problem_and_the_connection_lives_on() {
        let addr = serve_guarded().await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let first = exchange(&mut stream, "GET /panic HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(first.starts_with("HTTP/1.1 500"), "{first}");
        assert!(first.contains("application/problem+json"), "{first}");
        assert!(first.contains("\"status\":500"), "{first}");
        assert!(
            !first.contains("boom"),
            "the panic's message stays in the broker: {first}"
        );
        let second = exchange(&mut stream, "GET /headers HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            second.starts_with("HTTP/1.1 200"),
            "same connection after the panic: {second}"
        );
    }

    #[tokio::test]
    async fn credentials_in_headers_are_marked_sensitive() {
        let addr = serve_guarded().await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answer = exchange(
            &mut stream,
            "GET /headers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret-1\r\nX-Api-Key: secret-2\r\nCookie: secret-3\r\nX-Other: visible\r\n\r\n",
        )
        .await;
        assert!(answer.contains("visible"), "{answer}");
        for secret in ["secret-1", "secret-2", "secret-3"] {
            assert!(
                !answer.contains(secret),
                "{secret} printed by Debug: {answer}"
            );
        }
    }
}

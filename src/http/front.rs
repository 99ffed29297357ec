//! The front door: what every request passes before the router, as one tower layer and one
//! future.
//!
//! - **Request id.** The caller's `X-Request-Id`, always echoed in the response. Without one, a
//!   fresh UUID v4 when the request's span is recorded (log level info or debug), returned in
//!   the response and added to a `/proxy/` request (so the egress proxy forwards it). At a
//!   quieter level no line would carry it, so none is made.
//! - **Span and access log.** Each request runs in a `request` span (method, path, request id)
//!   at info, so every line it logs names the request; at debug one line when it starts and one
//!   when it is answered (status, latency), 5xx answers included. The upstream failure behind a
//!   5xx is logged once per fetch where it happens, not once per caller. When the level filters
//!   these out, no span is built and no clock is read.
//! - **Limits.** Requests larger than a token request can be get their 414/431 problem here,
//!   before the router ([`super::limits`]).
//! - **Deadline.** No answer after `request_timeout` (the proxy: [`limits::PROXY_DEADLINE`])
//!   is a 503 problem. The timer is armed only if the answer is not ready when first asked for,
//!   so a cache hit never touches the timer wheel; the deadline runs from that moment, a few
//!   microseconds after the request arrived.
//! - **Panics.** A handler that panics answers 500 `problem+json` and the connection lives on;
//!   the panic's message is not repeated to the caller (it may quote a value the broker handled).
//! - **Sensitive headers.** `Authorization`, `X-Api-Key` and `Cookie` in the request and
//!   `Set-Cookie` in the answer are marked sensitive, so a `Debug` of the headers (a log line, a
//!   panic) prints `Sensitive` instead of the value.
//!
//! This replaced tower-http's request-id, trace and propagate layers and our separate limits
//! layer: four futures nested per request, a span, two clock reads and a timer entry even when
//! nothing recorded them were the largest part of what the cache-hit path spent beyond a bare
//! axum server (issue 15; the figures are in README.md's benchmark section). The panic guard and
//! the sensitive marks were tower-http's `CatchPanicLayer` and `SetSensitive*HeadersLayer` around
//! each route: those boxed every answer's body twice and cloned their header lists per request
//! (issue 23; bench/README.md has the instruction counts). Here they cost a landing pad and
//! four header look-ups.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::header;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};
use tracing::{Level, Span};

use super::limits;
use super::problem::Problem;

/// The header that carries a request's id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request headers marked sensitive: the caller's credentials.
const SENSITIVE_REQUEST: [HeaderName; 3] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::COOKIE,
];

/// The layer of [`Front`]: `deadline` is the longest any non-proxy request may take.
#[derive(Debug, Clone, Copy)]
pub struct FrontLayer {
    deadline: Duration,
}

impl FrontLayer {
    pub fn new(deadline: Duration) -> Self {
        FrontLayer { deadline }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;
    fn layer(&self, inner: S) -> Front<S> {
        Front {
            inner,
            deadline: self.deadline,
        }
    }
}

/// The service of [`FrontLayer`], around the router.
#[derive(Debug, Clone)]
pub struct Front<S> {
    inner: S,
    deadline: Duration,
}

type Answered = Result<Response, Infallible>;

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<Either<Ready<Answered>, S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        mark_sensitive(request.headers_mut(), &SENSITIVE_REQUEST);
        let proxy = limits::is_proxy(&request);
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            // The path only: the query may carry an org number but never a secret.
            path = %request.uri().path(),
            request_id = tracing::field::Empty,
        );
        let id = match request.headers().get(&REQUEST_ID) {
            Some(given) => Some(given.clone()),
            // A fresh id only where it can be found again: in the lines of a recorded span.
            None if !span.is_disabled() => {
                let fresh = fresh_request_id();
                if proxy {
                    request.headers_mut().insert(REQUEST_ID, fresh.clone());
                }
                Some(fresh)
            }
            None => None,
        };
        if let Some(id) = &id {
            span.record("request_id", id.to_str().unwrap_or("-"));
        }
        let started = tracing::enabled!(Level::DEBUG).then(|| {
            span.in_scope(|| tracing::debug!("started processing request"));
            Instant::now()
        });
        let limit = if proxy {
            limits::PROXY_DEADLINE
        } else {
            self.deadline
        };
        let answer = match limits::oversized(&request, proxy) {
            Some(refusal) => Either::Left(ready(Ok(refusal))),
            None => {
                let inner = &mut self.inner;
                match catch_unwind(AssertUnwindSafe(|| span.in_scope(|| inner.call(request)))) {
                    Ok(answer) => Either::Right(answer),
                    Err(_) => Either::Left(ready(Ok(panicked()))),
                }
            }
        };
        Answer {
            answer,
            timer: None,
            limit,
            id,
            span,
            started,
        }
    }
}

/// Mark every value of the headers in `names` sensitive, in one pass comparing names: a look-up
/// per name (`HeaderMap::entry`) hashes the name and reserves room for an insert, which showed
/// as 3.8% of a cache hit's instructions under callgrind.
fn mark_sensitive(headers: &mut HeaderMap, names: &[HeaderName]) {
    for (name, value) in headers.iter_mut() {
        if names.contains(name) {
            value.set_sensitive(true);
        }
    }
}

/// The answer of a handler that panicked: a 500 problem, logged once without the panic's payload
/// (it may quote a value the broker handled).
fn panicked() -> Response {
    tracing::error!("a request handler panicked; answered 500");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the broker failed while answering this request; try again, and report it with the X-Request-Id if it repeats",
    )
    .into_response()
}

/// A fresh request id: a UUID v4 in its usual 36-character form.
fn fresh_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

pin_project! {
    /// The router's answer within the deadline, with the request id, in the request's span.
    pub struct Answer<F> {
        #[pin]
        answer: F,
        #[pin]
        timer: Option<Sleep>,
        limit: Duration,
        id: Option<HeaderValue>,
        span: Span,
        started: Option<Instant>,
    }
}

impl<F: Future<Output = Answered>> Future for Answer<F> {
    type Output = Answered;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answered> {
        let mut this = self.project();
        let _entered = this.span.enter();
        // A panic ends the answer here: the future is not polled again (this one is ready).
        let polled = catch_unwind(AssertUnwindSafe(|| this.answer.as_mut().poll(cx)));
        let mut response = match polled {
            Ok(Poll::Ready(Ok(response))) => response,
            Err(_) => panicked(),
            Ok(Poll::Pending) => {
                if this.timer.is_none() {
                    this.timer.set(Some(tokio::time::sleep(*this.limit)));
                }
                let timer = this.timer.as_mut().as_pin_mut();
                if timer.is_none_or(|timer| timer.poll(cx).is_pending()) {
                    return Poll::Pending;
                }
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "request-timeout",
                    "Request timed out",
                    format!(
                        "the request took longer than {}",
                        humantime::format_duration(*this.limit)
                    ),
                )
                .into_response()
            }
        };
        if let Some(id) = this.id.take() {
            response.headers_mut().entry(REQUEST_ID).or_insert(id);
        }
        mark_sensitive(response.headers_mut(), &[header::SET_COOKIE]);
        if let Some(started) = this.started {
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::debug!(
                status = response.status().as_u16(),
                latency_ms,
                "finished processing request"
            );
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(deadline: Duration) -> Front<Router> {
        let router = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "late"
                }),
            )
            .route("/fast", get(|| async { "ok" }))
            .route(
                "/proxy/{*rest}",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "proxied"
                }),
            );
        FrontLayer::new(deadline).layer(router)
    }

    async fn call(app: &Front<Router>, request: Request) -> Response {
        app.clone().oneshot(request).await.unwrap()
    }

    async fn get_uri(app: &Front<Router>, uri: &str) -> Response {
        call(app, Request::get(uri).body(Body::empty()).unwrap()).await
    }

    #[tokio::test]
    async fn a_request_past_the_deadline_gets_a_503_problem_and_a_fast_one_no_timer() {
        let app = app(Duration::from_millis(50));
        let slow = get_uri(&app, "/slow").await;
        assert_eq!(slow.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(slow.headers()["content-type"], "application/problem+json");

        let mut fast = std::pin::pin!(
            app.clone()
                .oneshot(Request::get("/fast").body(Body::empty()).unwrap())
        );
        let waker = futures::task::noop_waker();
        let Poll::Ready(Ok(fast)) = fast.as_mut().poll(&mut Context::from_waker(&waker)) else {
            panic!("a ready answer is returned at the first poll, with no timer");
        };
        assert_eq!(fast.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn proxy_requests_outlive_the_token_deadline_and_may_have_longer_uris() {
        let app = app(Duration::from_millis(50));
        let long = "a".repeat(2 * limits::MAX_URI_BYTES);
        let proxied = get_uri(&app, &format!("/proxy/r/{long}")).await;
        assert_eq!(proxied.status(), StatusCode::OK);
        let token = get_uri(&app, &format!("/token/{long}")).await;
        assert_eq!(token.status(), StatusCode::URI_TOO_LONG);
        assert_eq!(token.headers()["content-type"], "application/problem+json");
        let too_long = "a".repeat(limits::MAX_PROXY_URI_BYTES);
        let refused = get_uri(&app, &format!("/proxy/r/{too_long}")).await;
        assert_eq!(refused.status(), StatusCode::URI_TOO_LONG);
    }

    #[tokio::test]
    async fn the_callers_request_id_is_echoed_and_a_fresh_one_made_when_logs_record_it() {
        let app = app(Duration::from_secs(1));
        let request = Request::get("/fast")
            .header(REQUEST_ID, "caller-7")
            .body(Body::empty())
            .unwrap();
        let answered = call(&app, request).await;
        assert_eq!(answered.headers()[REQUEST_ID], "caller-7");
        let unrecorded = get_uri(&app, "/fast").await;
        assert!(
            !unrecorded.headers().contains_key(REQUEST_ID),
            "no log records the request: no id to quote"
        );

        let recording = tracing_subscriber::fmt()
            .with_max_level(Level::INFO)
            .with_writer(std::io::sink)
            .finish();
        let _recorded = tracing::subscriber::set_default(recording);
        let fresh = get_uri(&app, "/fast").await;
        let id = fresh.headers()[REQUEST_ID].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        let again = get_uri(&app, "/fast").await;
        assert_ne!(again.headers()[REQUEST_ID], fresh.headers()[REQUEST_ID]);
        let refused = get_uri(
            &app,
            &format!("/token/{}", "a".repeat(limits::MAX_URI_BYTES)),
        )
        .await;
        assert!(
            refused.headers().contains_key(REQUEST_ID),
            "refusals carry one too"
        );
    }

    async fn boom() -> &'static str {
        panic!("boom")
    }

    /// The front door served on loopback around two handlers: one that panics, one that shows
    /// the request headers as `Debug` prints them.
    async fn serve_front() -> std::net::SocketAddr {
        let router = Router::new().route("/panic", get(boom)).route(
            "/headers",
            get(|headers: HeaderMap| async move { format!("{headers:?}") }),
        );
        let app = FrontLayer::new(Duration::from_secs(5)).layer(router);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, tower::make::Shared::new(app))
                .await
                .unwrap()
        });
        addr
    }

    /// Send `request` on `stream` and read one answer whose body is `Content-Length` long.
    async fn exchange(stream: &mut tokio::net::TcpStream, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        let addr = serve_front().await;
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

    /// A service that panics in `call` itself, before any future exists.
    #[derive(Clone)]
    struct PanicsWhenCalled;

    impl Service<Request> for PanicsWhenCalled {
        type Response = Response;
        type Error = Infallible;
        type Future = Ready<Result<Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request) -> Self::Future {
            panic!("boom in call")
        }
    }

    #[tokio::test]
    async fn a_service_panicking_when_called_answers_500_problem() {
        let app = FrontLayer::new(Duration::from_secs(5)).layer(PanicsWhenCalled);
        let answered = app
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(answered.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            answered.headers()["content-type"],
            "application/problem+json"
        );
    }

    #[tokio::test]
    async fn credentials_in_headers_are_marked_sensitive() {
        let addr = serve_front().await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answer = exchange(
            &mut stream,
            "GET /headers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret-1\r\nX-Api-Key: secret-2\r\nCookie: secret-3\r\nCookie: secret-5\r\nX-Other: visible\r\n\r\n",
        )
        .await;
        assert!(answer.contains("visible"), "{answer}");
        for secret in ["secret-1", "secret-2", "secret-3", "secret-5"] {
            assert!(
                !answer.contains(secret),
                "{secret} printed by Debug: {answer}"
            );
        }
        let router = Router::new().route(
            "/cookie",
            get(|| async { ([(header::SET_COOKIE, "session=secret-4")], "ok") }),
        );
        let app = FrontLayer::new(Duration::from_secs(5)).layer(router);
        let answered = call(&app, Request::get("/cookie").body(Body::empty()).unwrap()).await;
        let cookie = &answered.headers()[header::SET_COOKIE];
        assert!(cookie.is_sensitive(), "Set-Cookie is marked sensitive");
        assert!(!format!("{:?}", answered.headers()).contains("secret-4"));
    }
}

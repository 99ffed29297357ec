//! Request limits: a token broker needs short URLs and few headers, so anything larger is refused
//! before a handler sees it (414, 431), and no request runs longer than the deadline (503), each
//! with a problem body like every other error. `/proxy/` requests get longer URIs and bound their
//! own time (route timeouts); their bodies are bounded by the proxy itself (`max_body`).

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use pin_project_lite::pin_project;
use tokio::time::Timeout;
use tower::{Layer, Service};

use super::problem::Problem;

/// Longest path + query accepted.
pub const MAX_URI_BYTES: usize = 1024;
/// Most bytes of header names and values together.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most header fields (each value of a repeated header counts).
pub const MAX_HEADER_COUNT: usize = 64;

/// hyper's own limits sit above ours, so a request over ours gets our problem body; a request
/// over hyper's gets hyper's bare 431/414/400 (status only, no body: hyper has no hook for it)
/// and the connection is closed. hyper refuses more header fields than this (its default) ...
pub const HYPER_MAX_HEADERS: usize = 100;
/// ... and a request head (request line and headers) larger than this buffer.
pub const MAX_HEAD_BUFFER: usize = 64 * 1024;

const _: () = {
    assert!(MAX_HEADER_COUNT < HYPER_MAX_HEADERS);
    // The largest head ours let through: request line, and per header ": " and CRLF.
    assert!(
        MAX_PROXY_URI_BYTES + 32 + MAX_HEADER_BYTES + 4 * MAX_HEADER_COUNT < MAX_HEAD_BUFFER / 2
    );
};
/// Longest path + query accepted on `/proxy/` routes: upstream APIs take longer queries.
pub const MAX_PROXY_URI_BYTES: usize = 8 * 1024;
/// The last-resort deadline of `/proxy/` requests, which bound themselves with their route's
/// `timeout` (at most an hour) and the token wait: bodies may stream for that long.
pub const PROXY_DEADLINE: Duration = Duration::from_secs(3600 + 120);

/// Whether a request is for the egress proxy, which takes bodies and longer URIs.
fn is_proxy(request: &Request) -> bool {
    request.uri().path().starts_with("/proxy/")
}

/// Size limits, then the deadline, for every request: one plain tower layer rather than
/// `axum::middleware::from_fn`, which boxes the rest of the stack and clones it on every request.
#[derive(Debug, Clone, Copy)]
pub struct GuardLayer {
    deadline: Duration,
}

impl GuardLayer {
    pub fn new(deadline: Duration) -> Self {
        GuardLayer { deadline }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            deadline: self.deadline,
        }
    }
}

/// The service of [`GuardLayer`].
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    deadline: Duration,
}

type Answered = Result<Response, Infallible>;

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Answered>, Deadline<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Some(refusal) = oversized(&request) {
            return Either::Left(ready(Ok(refusal)));
        }
        let limit = if is_proxy(&request) {
            PROXY_DEADLINE
        } else {
            self.deadline
        };
        Either::Right(Deadline {
            answer: tokio::time::timeout(limit, self.inner.call(request)),
            limit,
        })
    }
}

pin_project! {
    /// The inner service's answer, or a 503 problem once `limit` has passed (a last resort: token
    /// requests already give up waiting for an upstream sooner).
    pub struct Deadline<F> {
        #[pin]
        answer: Timeout<F>,
        limit: Duration,
    }
}

impl<F: Future<Output = Answered>> Future for Deadline<F> {
    type Output = Answered;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answered> {
        let this = self.project();
        match this.answer.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(answered)) => Poll::Ready(answered),
            Poll::Ready(Err(_)) => Poll::Ready(Ok(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request-timeout",
                "Request timed out",
                format!(
                    "the request took longer than {}",
                    humantime::format_duration(*this.limit)
                ),
            )
            .into_response())),
        }
    }
}

/// A 414 or 431 problem when the request is larger than a token request can be.
fn oversized(request: &Request) -> Option<Response> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    let max_uri = if is_proxy(request) {
        MAX_PROXY_URI_BYTES
    } else {
        MAX_URI_BYTES
    };
    if uri_len > max_uri {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "URI too long",
            format!("the path and query may have at most {max_uri} bytes"),
        )
        .into_response()
        .into();
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES || request.headers().len() > MAX_HEADER_COUNT {
        return Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request headers too large",
            format!(
                "the headers may have at most {MAX_HEADER_BYTES} bytes together, in at most {MAX_HEADER_COUNT} fields"
            ),
        )
        .into_response()
        .into();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use std::time::Duration;
    use tower::ServiceExt;

    #[tokio::test]
    async fn an_oversized_request_is_refused_before_the_router() {
        let app = GuardLayer::new(Duration::from_secs(1))
            .layer(Router::new().route("/{*rest}", get(|| async { "ok" })));
        let long = format!("/{}", "a".repeat(MAX_URI_BYTES));
        let response = app
            .oneshot(Request::get(long).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::URI_TOO_LONG);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }

    #[tokio::test]
    async fn proxy_requests_may_have_longer_uris_and_outlive_the_token_deadline() {
        let app = Router::new().route(
            "/{*rest}",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "ok"
            }),
        );
        let app = GuardLayer::new(Duration::from_millis(50)).layer(app);
        let long = "a".repeat(2 * MAX_URI_BYTES);
        let status = |path: String| {
            let app = app.clone();
            async move {
                let request = Request::get(path).body(Body::empty()).unwrap();
                app.oneshot(request).await.unwrap().status()
            }
        };
        assert_eq!(status(format!("/proxy/r/{long}")).await, StatusCode::OK);
        assert_eq!(
            status(format!("/token/{long}")).await,
            StatusCode::URI_TOO_LONG
        );
        assert_eq!(
            status("/token/slow".into()).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let too_long = "a".repeat(MAX_PROXY_URI_BYTES);
        assert_eq!(
            status(format!("/proxy/r/{too_long}")).await,
            StatusCode::URI_TOO_LONG
        );
    }

    #[tokio::test]
    async fn a_request_past_the_deadline_gets_a_503_problem() {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/fast", get(|| async { "ok" }));
        let app = GuardLayer::new(Duration::from_millis(50)).layer(app);
        let slow = app
            .clone()
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(slow.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(slow.headers()["content-type"], "application/problem+json");
        let fast = app
            .oneshot(Request::get("/fast").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(fast.status(), StatusCode::OK);
    }
}

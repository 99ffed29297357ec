//! Request limits: a token broker needs short URLs and few headers, so anything larger is refused
//! before a handler sees it (414, 431), and no request runs longer than the deadline (503), each
//! with a problem body like every other error.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

/// Longest path + query accepted.
pub const MAX_URI_BYTES: usize = 1024;
/// Most bytes of header names and values together.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Size limits, then the deadline: one middleware, as each layer costs on every request.
pub async fn guard(limit: std::time::Duration, request: Request, next: Next) -> Response {
    if let Some(refusal) = oversized(&request) {
        return refusal;
    }
    deadline(limit, request, next).await
}

/// A 414 or 431 problem when the request is larger than a token request can be.
fn oversized(request: &Request) -> Option<Response> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "URI too long",
            format!("the path and query may have at most {MAX_URI_BYTES} bytes"),
        )
        .into_response()
        .into();
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request headers too large",
            format!("the headers may have at most {MAX_HEADER_BYTES} bytes together"),
        )
        .into_response()
        .into();
    }
    None
}

/// Answer 503 with a problem body when a request runs past `limit` (a last resort: token requests
/// already give up waiting for an upstream sooner).
pub async fn deadline(limit: std::time::Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request-timeout",
            "Request timed out",
            format!(
                "the request took longer than {}",
                humantime::format_duration(limit)
            ),
        )
        .into_response(),
    }
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
    async fn a_request_past_the_deadline_gets_a_503_problem() {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/fast", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(|r, n| {
                deadline(Duration::from_millis(50), r, n)
            }));
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

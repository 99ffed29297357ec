//! Request limits: a token broker needs short URLs and few headers, so anything larger is refused
//! before a handler sees it (414, 431), with a problem body like every other error.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

/// Longest path + query accepted.
pub const MAX_URI_BYTES: usize = 1024;
/// Most bytes of header names and values together.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

pub async fn enforce(request: Request, next: Next) -> Response {
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
        .into_response();
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
        .into_response();
    }
    next.run(request).await
}

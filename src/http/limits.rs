//! Request limits: a token broker needs short URLs and few headers, so anything larger is refused
//! before a handler sees it (414, 431), and no request runs longer than the deadline (503), each
//! with a problem body like every other error. `/proxy/` requests get longer URIs and bound their
//! own time (route timeouts); their bodies are bounded by the proxy itself (`max_body`). The
//! limits are applied by the front door ([`super::front`]).

use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

/// Longest a single request to the broker may take before it gets a 503.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest body of a POST route (`/api/v1/token`, `/api/v1/introspect`,
/// `/systemusers/requests`): each request is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The refusal of a body over [`MAX_BODY_BYTES`].
pub(super) fn too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "Payload too large",
        format!("the body must be at most {MAX_BODY_BYTES} bytes"),
    )
}

/// tower-http's refusal of a body over [`MAX_BODY_BYTES`] (its Content-Length said so), as the
/// problem+json every other refusal is; other answers pass unchanged.
pub(super) async fn body_too_large(response: Response) -> Response {
    if is_bare_413(&response, b"application/problem+json") {
        too_large().into_response()
    } else {
        response
    }
}

/// Whether `response` is tower-http's bare 413 rather than a handler's own answer, whose
/// Content-Type starts with `ours`.
pub(super) fn is_bare_413(response: &Response, ours: &[u8]) -> bool {
    response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_none_or(|t| !t.as_bytes().starts_with(ours))
}

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
pub(super) fn is_proxy(request: &Request) -> bool {
    request.uri().path().starts_with("/proxy/")
}

/// A 414 or 431 problem when the request is larger than a token request can be.
/// `proxy`: the request is for the egress proxy ([`is_proxy`]), which takes longer URIs.
pub(super) fn oversized(request: &Request, proxy: bool) -> Option<Response> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    let max_uri = if proxy {
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
    use axum::body::Body;

    fn refusal(uri: &str, headers: usize) -> Option<StatusCode> {
        let mut request = Request::get(uri).body(Body::empty()).unwrap();
        for i in 0..headers {
            let name = axum::http::HeaderName::try_from(format!("x-h{i}")).unwrap();
            request.headers_mut().insert(name, "v".parse().unwrap());
        }
        oversized(&request, is_proxy(&request)).map(|r| r.status())
    }

    #[test]
    fn oversized_requests_are_refused_with_the_right_status() {
        let long = format!("/token/{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(refusal(&long, 0), Some(StatusCode::URI_TOO_LONG));
        assert_eq!(refusal(&format!("/proxy/r/{long}"), 0), None);
        let too_long = format!("/proxy/r/{}", "a".repeat(MAX_PROXY_URI_BYTES));
        assert_eq!(refusal(&too_long, 0), Some(StatusCode::URI_TOO_LONG));
        assert_eq!(
            refusal("/token/altinn", MAX_HEADER_COUNT + 1),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        assert_eq!(refusal("/token/altinn", MAX_HEADER_COUNT), None);
    }
}

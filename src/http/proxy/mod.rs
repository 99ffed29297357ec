//! `/proxy/{name}/{rest}`: the egress proxy. A request to a configured route goes to the route's
//! upstream with the profile's token as `Authorization: Bearer`, so the app never touches a token.
//!
//! - **Where:** only under the route's base URL; the path rules live in `path.rs`. Redirects
//!   are passed back, never followed.
//! - **Who:** the same client rules as `/token/{profile}` (API key, allowed profiles and orgs);
//!   the organisation comes from the route's fixed `org` or the `X-Broker-Org` header.
//! - **What:** method, query, headers (minus hop-by-hop ones and the caller's credentials) and body,
//!   streamed both ways; the request body is bounded by the route's `max_body`.
//! - **401 from the upstream:** the token is replaced, and the request sent once more when its
//!   body can be replayed (no body, or up to [`REPLAY_LIMIT`], which is then buffered).
//! - **The token never comes back:** a response header whose value contains a token the broker
//!   sent (an upstream echoing request headers, a redirect with the token in `Location`) is
//!   replaced by `[redacted]` and counted. Response bodies pass untouched.
//!
//! This module never logs a token or a request header.

pub(crate) mod client;
mod deadline;
pub(crate) mod path;
mod pool;
pub(crate) mod route;
pub(crate) mod table;

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::Either;
use url::Url;

use client::ProxyClient;

use crate::policy::org::OrgNumber;
use crate::tokens::token::Token;
use table::{Proxy, Route};

use super::auth::Caller;
use super::problem::{ApiError, Problem};
use super::serving::token_for;
use super::state::AppState;

/// Largest request body buffered so it can be sent again after a 401.
pub const REPLAY_LIMIT: u64 = 1024 * 1024;
/// The methods the proxy forwards (its `#[utoipa::path]` names the same). TRACE would echo the
/// request, token included, back; CONNECT would tunnel: both, like any other method, are a 405.
pub const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];
/// The header a caller names the system user's organisation with.
pub const ORG_HEADER: HeaderName = HeaderName::from_static("x-broker-org");

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Request headers that are the caller's business with the broker, not the upstream's: its
/// credentials, the organisation it asked for, and what the broker and the client library set
/// themselves (`Host`, `Content-Length`, `Expect`).
const NOT_FORWARDED: [HeaderName; 7] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::COOKIE,
    ORG_HEADER,
    header::HOST,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

/// Forward a request to a configured route's upstream with the route profile's token.
#[utoipa::path(
    method(get, head, post, put, patch, delete, options),
    path = "/proxy/{name}/{rest}",
    tag = "proxy",
    params(
        ("name" = String, Path, description = "A route configured under proxy: in broker.yaml"),
        ("rest" = String, Path, description = "The path below the route's upstream base URL, with the query string passed through; no segment of only dots and whitespace ('.', '..', '..;', '...', encoded or not), encoded slashes, backslashes, '//' or non-UTF-8"),
        ("X-Broker-Org" = Option<String>, Header, description = "Organisation number (9 digits) of the system user, for routes without a fixed org; validated like ?org= of /token/{profile}, never forwarded"),
    ),
    responses(
        (status = 200, description = "Whatever the upstream answered: its status (redirects included, never followed), headers minus hop-by-hop ones, and body, streamed"),
        (status = 400, description = "Path leaves the route's base (segments of only dots and whitespace after decoding and cutting ;parameters, encoded slashes, backslashes, '//', non-UTF-8, absolute-form target), bad X-Broker-Org, an org the profile does not take, or the caller hung up before its request body ended", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or unknown (when clients are configured); or the upstream's own 401, passed back", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key's client may not use this route's profile, org or Maskinporten client", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such proxy route (the detail lists them)", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "A small request body (buffered for a retry) did not arrive within the route's timeout", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Request body larger than the route's max_body", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The grant could not be signed", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The upstream could not be reached, or Maskinporten/Altinn refused the token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No token: Maskinporten or Altinn unavailable, or the signer (HSM, Vault) gave no signature; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The upstream did not answer within the route's timeout", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn forward(
    State(state): State<AppState>,
    caller: Result<Caller, Problem>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let route = state.proxy.routes.get(split(request.uri().path()).0);
    let label = route.map_or("_unknown", |r| r.name.as_str());
    let method = request.method().clone();
    let result = match route {
        Some(route) => forward_to(&state, caller, route, request).await,
        None => Err(unknown_route(&state.proxy).into()),
    };
    let (response, failure) = match result {
        Ok(response) => (response, None),
        Err(e) => {
            let problem = e.problem();
            let aborted = problem.kind.ends_with(BODY_ABORTED);
            let detail = problem.detail.clone();
            (problem.into_response(), Some((detail, aborted)))
        }
    };
    let status = response.status().as_u16();
    crate::telemetry::meters::proxy_request(label, status);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match failure {
        Some((error, true)) => {
            tracing::info!(route = label, %method, status, elapsed_ms, %error, "the caller aborted its request body")
        }
        Some((error, false)) => {
            tracing::warn!(route = label, %method, status, elapsed_ms, %error, "proxy request failed")
        }
        None => tracing::debug!(route = label, %method, status, elapsed_ms, "proxied"),
    }
    response
}

/// `/proxy/{name}/{rest}` → (name, rest), from the raw path (still percent-encoded).
fn split(path: &str) -> (&str, &str) {
    let after = path.strip_prefix("/proxy/").unwrap_or("");
    match after.bytes().position(|b| b == b'/') {
        Some(i) => (&after[..i], &after[i + 1..]),
        None => (after, ""),
    }
}

async fn forward_to(
    state: &AppState,
    caller: Result<Caller, Problem>,
    route: &Route,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = caller?;
    let (parts, body) = request.into_parts();
    let rest = split(parts.uri.path()).1;
    if parts.version < Version::HTTP_2 && parts.uri.authority().is_some() {
        return Err(bad_request(
            "absolute-form request targets are not accepted: send only the path, /proxy/{name}/...",
        )
        .into());
    }
    let org = request_org(&parts.headers, route)?;
    let (_, key) = state.broker().resolve(&route.profile, org)?;
    caller.authorize(&key)?;
    let url = path::target(&route.base, rest, parts.uri.query())
        .map_err(|e| bad_request(format!("{e}; route {:?}", route.name)))?;
    let mut body = RequestBody::read(body, &parts.headers, route.max_body, route.timeout).await?;
    // The caller's own map, stripped in place: the request's headers are copied only into
    // each request sent.
    let mut headers = parts.headers;
    strip_not_forwarded(&mut headers);
    if !headers.contains_key(header::USER_AGENT) {
        headers.insert(header::USER_AGENT, client::USER_AGENT);
    }
    if !headers.contains_key(header::ACCEPT) {
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    }
    if let Some(host) = &route.host {
        headers.insert(header::HOST, host.clone());
    }
    let token = token_for(state, &caller, &key).await?;
    // In the map before it is copied for a send: a copy has no room to spare for one more.
    headers.insert(header::AUTHORIZATION, authorization(route, &token)?);
    let client = state.proxy.client();
    let exchange = Exchange {
        client: &client,
        route,
        method: &parts.method,
        uri: &url,
        headers,
    };
    let answer = exchange.send(&mut body, None).await?;
    if answer.status == StatusCode::UNAUTHORIZED {
        // The token is replaced either way, so the next request has a fresh one.
        let fresh = Box::pin(state.tokens.invalidate(&key, &token, caller.budget())).await?;
        if fresh.value != token.value && body.replayable() {
            tracing::info!(route = %route.name, profile = %key.profile, "the upstream refused the token (401): sending once more with a fresh one");
            let again = exchange.send(&mut body, Some(&fresh)).await?;
            return Ok(into_response(again, &route.name, &[token, fresh]));
        }
    }
    Ok(into_response(
        answer,
        &route.name,
        std::slice::from_ref(&token),
    ))
}

/// The organisation of a request: the route's fixed one, or the `X-Broker-Org` header.
fn request_org(headers: &HeaderMap, route: &Route) -> Result<Option<OrgNumber>, ApiError> {
    let mut values = headers.get_all(ORG_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(route.org.clone());
    };
    if values.next().is_some() {
        return Err(bad_request("send X-Broker-Org once").into());
    }
    let org: OrgNumber = value
        .to_str()
        .map_err(|_| bad_request("X-Broker-Org: must be 9 digits"))?
        .trim()
        .parse()?;
    match &route.org {
        Some(fixed) if *fixed != org => Err(bad_request(format!(
            "route {:?} always uses organisation {fixed}; leave out X-Broker-Org or send that number",
            route.name
        ))
        .into()),
        _ => Ok(Some(org)),
    }
}

/// Remove from the caller's headers hop-by-hop ones (and those `Connection` names) and the
/// caller's business with the broker ([`NOT_FORWARDED`]).
fn strip_not_forwarded(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    strip_listed(headers, &NOT_FORWARDED);
}

/// Remove hop-by-hop headers, including every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    strip_listed(headers, &HOP_BY_HOP);
}

/// Remove every header named in `listed`. One pass over the names comes first: most requests
/// and answers carry few of them, and comparing names costs less than a look-up per listed name.
fn strip_listed<const N: usize>(headers: &mut HeaderMap, listed: &[HeaderName; N]) {
    const { assert!(N <= 32, "one bit per listed name") };
    let mut present = 0u32;
    for (i, name) in listed.iter().enumerate() {
        if headers.keys().any(|key| key == name) {
            present |= 1 << i;
        }
    }
    for (i, name) in listed.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The request body: buffered when small enough to send twice, else streamed (once).
enum RequestBody {
    Buffered(Bytes),
    Streamed {
        body: Option<Body>,
        length: Option<u64>,
        /// Set when the caller's body ended the exchange (too large, or the caller hung up).
        fault: Arc<OnceLock<BodyFault>>,
        max_body: u64,
    },
}

impl RequestBody {
    /// Read a small body into memory (within `timeout`), or wrap a large one as a bounded stream.
    async fn read(
        body: Body,
        headers: &HeaderMap,
        max_body: u64,
        timeout: Duration,
    ) -> Result<Self, ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(too_large(max_body).into());
        }
        if body.is_end_stream() {
            // No body (a GET, say): nothing to read, and no timer to arm.
            return Ok(RequestBody::Buffered(Bytes::new()));
        }
        let replay_limit = REPLAY_LIMIT.min(max_body);
        if body.size_hint().exact().is_some_and(|n| n <= replay_limit) {
            let limit = usize::try_from(replay_limit).unwrap_or(usize::MAX);
            let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit));
            let bytes = read
                .await
                .map_err(|_| {
                    Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body-timeout",
                        "Request body too slow",
                        format!(
                            "the request body did not arrive within {}",
                            humantime::format_duration(timeout)
                        ),
                    )
                })?
                .map_err(|_| body_aborted())?;
            return Ok(RequestBody::Buffered(bytes));
        }
        let fault = Arc::new(OnceLock::new());
        let seen_fault = fault.clone();
        let mut seen: u64 = 0;
        let stream = body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(|e| {
                let _ = seen_fault.set(BodyFault::CallerGone);
                std::io::Error::other(e)
            })?;
            seen = seen.saturating_add(chunk.len() as u64);
            if seen > max_body {
                let _ = seen_fault.set(BodyFault::OverLimit);
                return Err(std::io::Error::other("request body over max_body"));
            }
            Ok(chunk)
        });
        Ok(RequestBody::Streamed {
            body: Some(Body::from_stream(stream)),
            length: declared,
            fault,
            max_body,
        })
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }

    /// The caller's problem when the streamed body is what ended the exchange.
    fn fault(&self) -> Option<Problem> {
        let RequestBody::Streamed {
            fault, max_body, ..
        } = self
        else {
            return None;
        };
        match fault.get()? {
            BodyFault::OverLimit => Some(too_large(*max_body)),
            BodyFault::CallerGone => Some(body_aborted()),
        }
    }
}

/// Why a streamed request body ended early: the caller's doing, not the upstream's.
#[derive(Debug, Clone, Copy)]
enum BodyFault {
    /// More than `max_body` bytes.
    OverLimit,
    /// The caller's connection ended (or broke) before the body did.
    CallerGone,
}

/// One request to the upstream, sendable once more with another token.
struct Exchange<'a> {
    client: &'a ProxyClient,
    route: &'a Route,
    method: &'a Method,
    /// The path and query sent, on the route's origin.
    uri: &'a Uri,
    /// What is forwarded of the caller's headers, with the first token's `Authorization` (built
    /// once, copied into each request sent).
    headers: HeaderMap,
}

/// A request body as sent: bytes (sent with their length), or the caller's stream.
enum Outgoing {
    Bytes(Bytes),
    Stream(Body),
}

/// The upstream's answer: status, headers and body (which ends with an error past the route's
/// timeout, as the whole exchange must end within it).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl Exchange<'_> {
    /// Send once: with the headers as built, whose Authorization carries the first token, or
    /// with `fresh`'s in its place (the retry after a 401).
    async fn send(
        &self,
        body: &mut RequestBody,
        fresh: Option<&Token>,
    ) -> Result<Answer, ApiError> {
        let mut headers = self.headers.clone();
        if let Some(token) = fresh {
            headers.insert(header::AUTHORIZATION, authorization(self.route, token)?);
        }
        let outgoing = match body {
            RequestBody::Buffered(bytes) => Outgoing::Bytes(bytes.clone()),
            RequestBody::Streamed {
                body: stream,
                length,
                ..
            } => {
                if let Some(n) = length {
                    headers.insert(header::CONTENT_LENGTH, (*n).into());
                }
                stream
                    .take()
                    .map_or(Outgoing::Bytes(Bytes::new()), Outgoing::Stream)
            }
        };
        let started = Instant::now();
        let result = match self.client {
            ProxyClient::Direct(client) => self.direct(client, headers, outgoing).await,
            // Boxed: reqwest's future is not carried by every direct request's.
            ProxyClient::Forwarded(client) => {
                Box::pin(self.forwarded(client, headers, outgoing)).await
            }
        };
        crate::telemetry::meters::proxy_upstream(&self.route.name, started.elapsed());
        result.map_err(|problem| body.fault().unwrap_or(problem).into())
    }

    /// Through this thread's pooled connections; the route's timeout covers the answer's body too.
    async fn direct(
        &self,
        client: &pool::PerThread,
        headers: HeaderMap,
        outgoing: Outgoing,
    ) -> Result<Answer, Problem> {
        let outgoing = match outgoing {
            Outgoing::Bytes(bytes) => Body::from(bytes),
            Outgoing::Stream(body) => body,
        };
        let mut request = axum::http::Request::new(outgoing);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        // One timer for the whole exchange: it bounds the answer's head here, then its body.
        let mut timer = Box::pin(tokio::time::sleep(self.route.timeout));
        let sent = client.request(&self.route.base, request);
        let answer = match futures::future::select(std::pin::pin!(sent), timer.as_mut()).await {
            Either::Right(_) => return Err(self.timeout_problem()),
            Either::Left((Err(e), _)) if timed_out(&e) => return Err(self.timeout_problem()),
            Either::Left((Err(e), _)) => return Err(self.unreachable_problem(&e)),
            Either::Left((Ok(answer), _)) => answer,
        };
        let (parts, incoming) = answer.into_parts();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: Body::new(deadline::Deadline::new(incoming, timer)),
        })
    }

    /// Through reqwest's client and `http_client.proxy`.
    async fn forwarded(
        &self,
        client: &reqwest::Client,
        headers: HeaderMap,
        outgoing: Outgoing,
    ) -> Result<Answer, Problem> {
        let origin = &self.route.base[..url::Position::BeforePath];
        let url = Url::parse(&format!("{origin}{}", self.uri))
            .map_err(|_| bad_request(path::PathError::BadCharacter.to_string()))?;
        let mut request = reqwest::Request::new(self.method.clone(), url);
        *request.timeout_mut() = Some(self.route.timeout);
        *request.headers_mut() = headers;
        match outgoing {
            Outgoing::Bytes(bytes) if bytes.is_empty() => {}
            Outgoing::Bytes(bytes) => *request.body_mut() = Some(bytes.into()),
            Outgoing::Stream(body) => {
                *request.body_mut() = Some(reqwest::Body::wrap_stream(body.into_data_stream()))
            }
        }
        let mut answer = match client.execute(request).await {
            Ok(answer) => answer,
            Err(e) if e.is_timeout() => return Err(self.timeout_problem()),
            Err(e) => return Err(self.unreachable_problem(&e)),
        };
        Ok(Answer {
            status: answer.status(),
            headers: std::mem::take(answer.headers_mut()),
            body: Body::from_stream(answer.bytes_stream()),
        })
    }

    /// 504, naming the route (not the URL: its query is the caller's).
    fn timeout_problem(&self) -> Problem {
        let name = &self.route.name;
        Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "proxy-upstream-timeout",
            "Upstream timed out",
            format!(
                "the upstream of route {name:?} did not answer within {} (proxy.{name}.timeout)",
                humantime::format_duration(self.route.timeout)
            ),
        )
        .with("route", name.as_str())
    }

    /// 502 with the causes of `e` (not `e` itself, whose text may carry the URL).
    fn unreachable_problem(&self, e: &(dyn std::error::Error + 'static)) -> Problem {
        let name = &self.route.name;
        let mut reason = String::new();
        let mut source = e.source();
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "proxy-upstream-unreachable",
            "Upstream unreachable",
            format!("the upstream of route {name:?} could not be reached{reason}"),
        )
        .with("route", name.as_str())
    }
}

/// Whether a failure of the client was a timeout (the connect timeout), as reqwest tells one.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The `Authorization` header of `token`, or a 502 if the token cannot be a header value.
fn authorization(route: &Route, token: &Token) -> Result<header::HeaderValue, ApiError> {
    bearer(token).ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "proxy-token-unusable",
            "Token unusable",
            format!(
                "the token of profile {:?} cannot be sent in an Authorization header",
                route.profile
            ),
        )
        .with("route", route.name.as_str())
        .into()
    })
}

/// `Authorization: Bearer <token>`, marked sensitive; `None` if the token cannot be a header.
/// Made once per token and shared by every request that sends it.
fn bearer(token: &Token) -> Option<header::HeaderValue> {
    let made = token.served.bearer.get_or_init(|| {
        const PREFIX: &[u8] = b"Bearer ";
        let secret = token.value.expose().as_bytes();
        let mut text = Vec::with_capacity(PREFIX.len() + secret.len());
        text.extend_from_slice(PREFIX);
        text.extend_from_slice(secret);
        let mut value = header::HeaderValue::from_maybe_shared(Bytes::from(text)).ok()?;
        value.set_sensitive(true);
        Some(value)
    });
    made.clone()
}

/// The upstream's answer as the caller's: status, headers minus hop-by-hop ones and with no
/// token the broker `sent`, body streamed.
fn into_response(answer: Answer, route: &str, sent: &[Arc<Token>]) -> Response {
    let mut headers = answer.headers;
    strip_hop_by_hop(&mut headers);
    redact_tokens(&mut headers, route, sent);
    let mut response = Response::new(answer.body);
    *response.status_mut() = answer.status;
    *response.headers_mut() = headers;
    response
}

/// Replace each header value that contains one of the tokens `sent` by `[redacted]`, counting
/// and logging each (the header's name only): the app behind the proxy must never hold a token.
fn redact_tokens(headers: &mut HeaderMap, route: &str, sent: &[Arc<Token>]) {
    for (name, value) in headers.iter_mut() {
        // A value shorter than every token cannot hold one: most headers need no search.
        if sent.iter().all(|t| value.len() < t.value.expose().len()) {
            continue;
        }
        // Tokens are ASCII, so the lossy text holds one wherever the bytes do.
        let text = String::from_utf8_lossy(value.as_bytes());
        if sent.iter().any(|t| text.contains(t.value.expose())) {
            *value = header::HeaderValue::from_static(REDACTED);
            crate::telemetry::meters::proxy_redacted_header(route);
            tracing::warn!(route, header = %name, "the upstream's answer carried the broker's token in a header; replaced by [redacted]");
        }
    }
}

/// What a response header carrying the broker's token says instead.
const REDACTED: &str = "[redacted]";

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "Bad request",
        detail,
    )
}

/// The slug of [`body_aborted`], by which `forward` tells the caller's abort from a failure.
const BODY_ABORTED: &str = "request-body-aborted";

/// The caller hung up (or its connection broke) before its request body ended. Counted as a 4xx:
/// the upstream did nothing wrong. Nobody is left to read the answer; it is for the log and
/// the metrics.
fn body_aborted() -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        BODY_ABORTED,
        "Request body aborted",
        "the request body ended before it was complete: the caller closed the connection",
    )
}

fn too_large(max_body: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Request body too large",
        format!("this route forwards request bodies of at most {max_body} bytes (max_body)"),
    )
}

fn unknown_route(proxy: &Proxy) -> Problem {
    let names = proxy.names();
    let known = if names.is_empty() {
        "none is configured (proxy: in broker.yaml)".to_owned()
    } else {
        names.join(", ")
    };
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown-proxy-route",
        "Unknown proxy route",
        format!("there is no proxy route by that name; the routes are: {known}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_raw_path_splits_into_route_and_rest() {
        assert_eq!(split("/proxy/a/b/c"), ("a", "b/c"));
        assert_eq!(split("/proxy/a/"), ("a", ""));
        assert_eq!(split("/proxy/a"), ("a", ""));
        assert_eq!(split("/proxy/a/%2e%2e/x"), ("a", "%2e%2e/x"));
    }

    #[test]
    fn hop_by_hop_credentials_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer api-key"),
            ("x-api-key", "api-key"),
            ("cookie", "a=b"),
            ("x-broker-org", "991825827"),
            ("host", "broker"),
            ("accept", "application/json"),
            ("x-custom", "kept"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut out = h;
        strip_not_forwarded(&mut out);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-custom"]);
    }

    fn token(value: &str) -> Token {
        Token::new(
            crate::key::secret::Secret::new(value),
            std::time::SystemTime::now(),
            Duration::from_secs(60),
            "altinn:instances.read".into(),
        )
    }

    #[test]
    fn the_bearer_value_is_made_once_per_token_and_marked_sensitive() {
        let first = token("value-a");
        let sent = bearer(&first).unwrap();
        assert_eq!(sent.as_bytes(), b"Bearer value-a");
        assert!(sent.is_sensitive());
        let again = bearer(&first).unwrap();
        assert_eq!(
            again.as_bytes().as_ptr(),
            sent.as_bytes().as_ptr(),
            "one shared value"
        );
        // A refreshed token has its own value, never its predecessor's.
        assert_eq!(
            bearer(&token("value-b")).unwrap().as_bytes(),
            b"Bearer value-b"
        );
        // A token that cannot be a header value is refused every time.
        let broken = token("value\nwith a newline");
        assert!(bearer(&broken).is_none());
        assert!(bearer(&broken).is_none());
    }
}

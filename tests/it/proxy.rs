//! The egress proxy: `/proxy/{name}/{rest}` forwards to a fake upstream on 127.0.0.1 that records
//! what it received, with the broker's token added and nothing of the caller's credentials.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use maskinporten_broker::hash_api_key;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::support::*;

/// One request as the fake upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn bearer(&self) -> &str {
        self.headers[header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap()
    }
}

#[derive(Default)]
struct UpstreamState {
    seen: Mutex<Vec<Seen>>,
    revoked: Mutex<HashSet<String>>,
    /// Revoke the token of the next request (answer it 401, and every later use of it).
    revoke_next: AtomicBool,
    /// Answer 401 to everything.
    refuse_all: AtomicBool,
    /// `/stream-down` waits for this between its two chunks.
    release: Notify,
    /// `/stream-up` signals this when the first chunk of the body arrived.
    first_chunk: Notify,
    chunks_up: AtomicUsize,
}

/// A fake API on 127.0.0.1 that checks nothing but records everything.
struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
}

impl FakeUpstream {
    async fn start() -> Self {
        let state = Arc::new(UpstreamState::default());
        let router = Router::new()
            .fallback(upstream_handler)
            .with_state(state.clone());
        let addr = serve(router).await;
        FakeUpstream { addr, state }
    }
    fn base(&self) -> String {
        format!("http://{}/api/", self.addr)
    }
    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn upstream_handler(State(state): State<Arc<UpstreamState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    if state.revoke_next.swap(false, Ordering::SeqCst) {
        state.revoked.lock().unwrap().insert(bearer.clone());
    }
    let refused =
        state.refuse_all.load(Ordering::SeqCst) || state.revoked.lock().unwrap().contains(&bearer);
    let body = if path.ends_with("/stream-up") {
        let mut stream = body.into_data_stream();
        let mut all = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            if state.chunks_up.fetch_add(1, Ordering::SeqCst) == 0 {
                state.first_chunk.notify_one();
            }
            all.extend_from_slice(&chunk);
        }
        Bytes::from(all)
    } else {
        axum::body::to_bytes(body, 64 << 20)
            .await
            .unwrap_or_default()
    };
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body,
    });
    if refused {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response();
    }
    match path.as_str() {
        "/api/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "late".into_response()
        }
        "/api/redirect" => (
            StatusCode::FOUND,
            [(header::LOCATION, "http://127.0.0.1:9/elsewhere")],
        )
            .into_response(),
        // A careless upstream: echoes the Authorization header, in headers and in the body, and
        // redirects with the token in the query.
        "/api/echo" => (
            StatusCode::FOUND,
            [
                ("x-echo-authorization", format!("Bearer {bearer}")),
                (
                    "location",
                    format!("https://elsewhere.example/cb?access_token={bearer}"),
                ),
                ("x-innocent", "kept".to_owned()),
            ],
            format!("you sent {bearer}"),
        )
            .into_response(),
        // The head at once, a first chunk, then nothing (the body never ends).
        "/api/stall-body" => {
            let chunks = futures::stream::once(async { Ok::<_, std::io::Error>("first;") })
                .chain(futures::stream::pending());
            Body::from_stream(chunks).into_response()
        }
        "/api/stream-down" => {
            let state = state.clone();
            let chunks = futures::stream::once(async { Ok::<_, std::io::Error>("first;") }).chain(
                futures::stream::once(async move {
                    state.release.notified().await;
                    Ok("second")
                }),
            );
            Body::from_stream(chunks).into_response()
        }
        _ => (
            StatusCode::CREATED,
            [
                ("x-upstream", "yes"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic"),
                ("trailer", "x-t"),
            ],
            axum::Json(json!({"ok": true})),
        )
            .into_response(),
    }
}

/// Routes to `up`: `r` (admin), `skd` (system user from the header), `fixed` (fixed org),
/// `small` (max_body 1000), `slow` (timeout 300ms), `dead` (nothing listens).
fn routes(up: &FakeUpstream) -> String {
    let base = up.base();
    let dead = format!("http://127.0.0.1:{}/", free_port());
    format!(
        "default_org: '{ORG}'\nproxy:\n  r:\n    upstream: {base}\n    profile: admin\n  skd:\n    upstream: {base}\n    profile: skd\n  fixed:\n    upstream: {base}\n    profile: skd\n    org: '{OTHER_ORG}'\n  small:\n    upstream: {base}\n    profile: admin\n    max_body: 1000\n  slow:\n    upstream: {base}\n    profile: admin\n    timeout: 300ms\n  dead:\n    upstream: {dead}\n    profile: admin\n"
    )
}

async fn start() -> (TestEnv, FakeUpstream) {
    let up = FakeUpstream::start().await;
    let env = TestEnv::start(&routes(&up)).await;
    (env, up)
}

/// As [`start`], with one more route to the upstream (admin profile) named `name`, for metrics
/// no other test touches.
async fn start_with_route(name: &str) -> (TestEnv, FakeUpstream) {
    let up = FakeUpstream::start().await;
    let extra = format!(
        "{}  {name}:\n    upstream: {}\n    profile: admin\n",
        routes(&up),
        up.base()
    );
    let env = TestEnv::start(&extra).await;
    (env, up)
}

fn assert_problem(response_status: u16, content_type: Option<&str>, status: u16) {
    assert_eq!(response_status, status);
    assert_eq!(content_type, Some("application/problem+json"));
}

async fn problem(response: reqwest::Response, status: u16) -> Value {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_problem(response.status().as_u16(), content_type.as_deref(), status);
    response.json().await.unwrap()
}

/// A request written by hand, so no client library normalises the target first.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the broker answers within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn get_request(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn a_request_goes_to_the_upstream_with_method_path_query_body_and_the_token() {
    let (env, up) = start().await;
    let response = env
        .http
        .post(env.url("/proxy/r/instances/1/data?a=1&b=x%2Fy"))
        .header("content-type", "application/json")
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"ok": true}));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/api/instances/1/data?a=1&b=x%2Fy");
    assert_eq!(seen[0].body, r#"{"hello":"world"}"#);
    assert_eq!(seen[0].headers["content-type"], "application/json");
    let served = env.get_json("/token/admin", 200).await;
    assert_eq!(seen[0].bearer(), served["access_token"].as_str().unwrap());
    assert_eq!(env.mp.calls(), 1, "the proxy and /token share the cache");

    for (target, expected) in [
        ("/proxy/r/", "/api/"),
        ("/proxy/r", "/api/"),
        ("/proxy/r/a%20b/", "/api/a%20b/"),
    ] {
        let status = env.get(target).await.status();
        assert_eq!(status, 201, "{target}");
        assert_eq!(up.seen().last().unwrap().target, expected);
    }
}

#[tokio::test]
async fn hop_by_hop_headers_and_the_callers_credentials_are_not_forwarded() {
    let (env, up) = start().await;
    let response = env
        .http
        .get(env.url("/proxy/skd/x"))
        .header("authorization", "Bearer callers-own-token")
        .header("x-api-key", "callers-api-key")
        .header("cookie", "session=abc")
        .header("x-broker-org", OTHER_ORG)
        .header("connection", "x-named-hop")
        .header("x-named-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic abc")
        .header("te", "trailers")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    for name in ["keep-alive", "proxy-authenticate", "trailer"] {
        assert!(response.headers().get(name).is_none(), "{name} came back");
    }
    let seen = &up.seen()[0];
    for name in [
        "x-api-key",
        "cookie",
        "x-broker-org",
        "x-named-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert!(seen.headers.get(name).is_none(), "{name} was forwarded");
    }
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 1);
    assert_ne!(seen.bearer(), "callers-own-token");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["host"], up.addr.to_string());
    // The org of the header is the token's system user.
    let grant = env.mp.grants().pop().unwrap();
    assert_eq!(
        grant.claims["authorization_details"][0]["systemuser_org"]["ID"],
        format!("0192:{OTHER_ORG}")
    );
}

#[tokio::test]
async fn traversal_and_host_tricks_are_400_and_never_reach_the_upstream() {
    let (env, up) = start().await;
    let port = up.addr.port();
    for target in [
        "/proxy/r/../secret".to_owned(),
        "/proxy/r/a/../../secret".into(),
        "/proxy/r/%2e%2e/secret".into(),
        "/proxy/r/%2E%2E/secret".into(),
        "/proxy/r/.%2e/secret".into(),
        "/proxy/r/%252e%252e/secret".into(),
        "/proxy/r/a%2fb".into(),
        "/proxy/r/a%2Fb".into(),
        "/proxy/r/%2f%2fevil.example/x".into(),
        "/proxy/r/a%5cb".into(),
        "/proxy/r/a%5Cb".into(),
        "/proxy/r//evil.example/x".into(),
        format!("/proxy/r//127.0.0.1:{port}/secret"),
        "/proxy/r/http://evil.example/x".into(),
        "/proxy/r/a/./b".into(),
        format!("http://127.0.0.1:{port}/proxy/r/x"),
        // Read as `..` by Tomcat, Jetty, Spring, or by servers that trim or decode again.
        "/proxy/r/a/..;/b".into(),
        "/proxy/r/..;/b".into(),
        "/proxy/r/%2e%2e;/b".into(),
        "/proxy/r/..%3b/b".into(),
        "/proxy/r/..%20/b".into(),
        "/proxy/r/.../b".into(),
        "/proxy/r/%25252e%25252e/b".into(),
        // Overlong and invalid UTF-8.
        "/proxy/r/%c0%ae%c0%ae/b".into(),
        "/proxy/r/a%ff/b".into(),
    ] {
        let (status, answer) = raw(env.app.addr, &get_request(&target)).await;
        assert_eq!(status, 400, "{target}: {answer}");
        assert!(
            answer.contains("application/problem+json"),
            "{target}: {answer}"
        );
    }
    // A raw backslash is not even a valid request target; refused before routing.
    let (status, _) = raw(env.app.addr, &get_request("/proxy/r/a\\b")).await;
    assert_eq!(status, 400);
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // A scheme-looking first segment stays a path segment under the base.
    let (status, _) = raw(env.app.addr, &get_request("/proxy/r/evil.example:80/x")).await;
    assert_eq!(status, 201);
    assert_eq!(up.seen()[0].target, "/api/evil.example:80/x");
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem_naming_the_routes() {
    let (env, up) = start().await;
    let body = problem(env.get("/proxy/nope/x").await, 404).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("dead, fixed, r, skd, slow, small")
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn bodies_over_max_body_are_413_whether_declared_or_streamed() {
    let (env, up) = start().await;
    let declared = env
        .http
        .post(env.url("/proxy/small/x"))
        .body(vec![b'a'; 1001])
        .send()
        .await
        .unwrap();
    problem(declared, 413).await;
    assert!(up.seen().is_empty(), "refused before the upstream");

    let chunks = futures::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; 600]))),
    );
    let streamed = env
        .http
        .post(env.url("/proxy/small/x"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    problem(streamed, 413).await;

    let fits = env
        .http
        .post(env.url("/proxy/small/x"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 201);
    assert_eq!(up.seen().last().unwrap().body.len(), 1000);
}

#[tokio::test]
async fn response_bodies_stream_through_without_waiting_for_the_end() {
    let (env, up) = start().await;
    let response = env.get("/proxy/r/stream-down").await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the first chunk arrives before the upstream finished")
        .unwrap()
        .unwrap();
    assert_eq!(first, "first;");
    up.state.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn request_bodies_stream_through_without_waiting_for_the_end() {
    let (env, up) = start().await;
    let (send, receive) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(receive));
    let request = env
        .http
        .put(env.url("/proxy/r/stream-up"))
        .body(body)
        .send();
    let request = tokio::spawn(request);
    send.send(Ok(Bytes::from(vec![b'a'; 2 << 20])))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), up.state.first_chunk.notified())
        .await
        .expect("the upstream sees the body before the caller finished sending it");
    send.send(Ok(Bytes::from_static(b"end"))).await.unwrap();
    drop(send);
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 201);
    let seen = up.seen();
    assert_eq!(seen[0].body.len(), (2 << 20) + 3);
}

fn tokio_stream_from<T: Send + 'static>(
    mut receive: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| receive.poll_recv(cx))
}

#[tokio::test]
async fn a_401_replaces_the_token_and_sends_the_request_once_more() {
    let (env, up) = start().await;
    assert_eq!(env.get("/proxy/r/x").await.status(), 201);
    up.state.revoke_next.store(true, Ordering::SeqCst);
    // Exactly the replay limit (1 MiB): buffered, so it can be sent twice.
    let replayable = vec![b'r'; 1 << 20];
    let response = env
        .http
        .post(env.url("/proxy/r/x"))
        .body(replayable.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].bearer(), seen[0].bearer(), "the revoked token");
    assert_ne!(
        seen[2].bearer(),
        seen[1].bearer(),
        "sent again with a fresh one"
    );
    assert_eq!(seen[1].body, replayable);
    assert_eq!(seen[2].body, replayable);
    assert_eq!(env.mp.calls(), 2);
    let served = env.get_json("/token/admin", 200).await;
    assert_eq!(
        served["access_token"],
        seen[2].bearer(),
        "the cache has the fresh token"
    );
}

#[tokio::test]
async fn a_401_with_a_streamed_body_or_a_second_401_goes_back_as_is() {
    let (env, up) = start().await;
    assert_eq!(env.get("/proxy/r/x").await.status(), 201);
    up.state.revoke_next.store(true, Ordering::SeqCst);
    // One byte over the replay limit (1 MiB), with Content-Length: streamed, not buffered.
    let streamed = env
        .http
        .post(env.url("/proxy/r/x"))
        .body(vec![b'a'; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 401, "not replayable: passed back");
    assert_eq!(streamed.headers()["www-authenticate"], "Bearer");
    assert_eq!(up.seen().len(), 2);
    // The rejected token was replaced all the same: the next request carries a fresh one.
    assert_eq!(env.mp.calls(), 2);
    assert_eq!(env.get("/proxy/r/x").await.status(), 201);
    let seen = up.seen();
    assert_ne!(seen[2].bearer(), seen[1].bearer());

    // The upstream refuses every token (on a route whose token was never replaced): the first
    // request fetches a token, is refused, tries one fresh token and passes its 401 back; the
    // next two 401s within 5 s go back as they are, with no fetch and no second attempt.
    up.state.refuse_all.store(true, Ordering::SeqCst);
    let (calls, sent) = (env.mp.calls(), up.seen().len());
    for _ in 0..3 {
        assert_eq!(env.get("/proxy/fixed/x").await.status(), 401);
    }
    assert_eq!(
        env.mp.calls(),
        calls + 2,
        "the first token and one fresh one; none for the next two 401s within 5 s"
    );
    assert_eq!(up.seen().len(), sent + 4, "2 + 1 + 1 attempts");
}

#[tokio::test]
async fn redirects_are_passed_back_and_never_followed() {
    let (env, up) = start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = http.get(env.url("/proxy/r/redirect")).send().await.unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "http://127.0.0.1:9/elsewhere"
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn the_org_comes_from_a_valid_header_or_the_routes_fixed_org() {
    let (env, up) = start().await;
    let with_org = |route: &str, org: &str| {
        env.http
            .get(env.url(&format!("/proxy/{route}/x")))
            .header("x-broker-org", org)
            .send()
    };
    for bad in ["12345", "991825828", "abc"] {
        problem(with_org("skd", bad).await.unwrap(), 400).await;
    }
    let body = problem(with_org("r", ORG).await.unwrap(), 400).await;
    assert!(body["detail"].as_str().unwrap().contains("org"), "{body}");
    problem(with_org("fixed", ORG).await.unwrap(), 400).await;
    assert!(up.seen().is_empty());

    assert_eq!(with_org("fixed", OTHER_ORG).await.unwrap().status(), 201);
    assert_eq!(env.get("/proxy/fixed/x").await.status(), 201);
    assert_eq!(env.get("/proxy/skd/x").await.status(), 201, "default_org");
    let orgs: Vec<String> = env
        .mp
        .grants()
        .iter()
        .map(|g| g.claims["authorization_details"][0]["systemuser_org"]["ID"].to_string())
        .collect();
    assert_eq!(
        orgs,
        [format!("\"0192:{OTHER_ORG}\""), format!("\"0192:{ORG}\"")],
        "one token per organisation, shared by the two fixed-org requests"
    );
}

#[tokio::test]
async fn the_client_rules_of_the_token_routes_apply() {
    let up = FakeUpstream::start().await;
    let extra = format!(
        "{}clients:\n  - name: app\n    key_sha256: {}\n    profiles: [skd]\n    orgs: ['{ORG}']\n",
        routes(&up),
        hash_api_key("key-1")
    );
    let env = TestEnv::start(&extra).await;
    problem(env.get("/proxy/skd/x").await, 401).await;
    let with_key = |route: &str| {
        env.http
            .get(env.url(&format!("/proxy/{route}/x")))
            .header("x-api-key", "key-1")
            .send()
    };
    problem(with_key("r").await.unwrap(), 403).await;
    problem(with_key("fixed").await.unwrap(), 403).await;
    assert!(up.seen().is_empty());
    assert_eq!(with_key("skd").await.unwrap().status(), 201);
    let bearer_key = env
        .http
        .get(env.url("/proxy/skd/x"))
        .bearer_auth("key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer_key.status(), 201);
    for seen in up.seen() {
        assert!(seen.headers.get("x-api-key").is_none());
        assert_ne!(seen.bearer(), "key-1");
    }
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_and_an_unreachable_one_a_502() {
    let (env, _up) = start().await;
    let body = problem(env.get("/proxy/slow/slow").await, 504).await;
    assert!(body["detail"].as_str().unwrap().contains("300ms"), "{body}");
    let body = problem(env.get("/proxy/dead/x").await, 502).await;
    assert_eq!(body["route"], "dead");
}

#[tokio::test]
async fn an_answer_body_still_arriving_when_the_route_timeout_ends_is_cut_there() {
    let (env, _up) = start().await;
    let started = std::time::Instant::now();
    // `slow` has a 300 ms timeout; the upstream sends its head and a first chunk at once.
    let answer = env.get("/proxy/slow/stall-body").await;
    assert_eq!(answer.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(5), answer.bytes()).await;
    assert!(read.expect("the body ends").is_err(), "cut, not ended");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_class_and_time_the_upstream() {
    // A route no other test uses: its lines are this test's alone (one recorder per binary).
    let (env, _up) = start_with_route("metrics-own").await;
    let unknown = "broker_proxy_requests_total{route=\"_unknown\",class=\"4xx\"}";
    let before = metric(&env.get("/metrics").await.text().await.unwrap(), unknown);
    env.get("/proxy/metrics-own/x").await;
    env.get("/proxy/metrics-own/y").await;
    // (Not %2e%2e: the client itself would fold that dot segment away.)
    env.get("/proxy/metrics-own/a%5c..%5cb").await;
    env.get("/proxy/nope/x").await;
    let text = env.get("/metrics").await.text().await.unwrap();
    for (line, count) in [
        (
            "broker_proxy_requests_total{route=\"metrics-own\",class=\"2xx\"}",
            2.0,
        ),
        (
            "broker_proxy_requests_total{route=\"metrics-own\",class=\"4xx\"}",
            1.0,
        ),
        (
            "broker_proxy_upstream_duration_seconds_count{route=\"metrics-own\"}",
            2.0,
        ),
    ] {
        assert_eq!(metric(&text, line), count, "{line} in:\n{text}");
    }
    // The unknown route is shared with other tests: at least this test's one more.
    assert!(metric(&text, unknown) >= before + 1.0, "{text}");
}

#[tokio::test]
async fn upstreams_must_be_https_except_loopback_and_routes_must_be_well_formed() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    for (route, field) in [
        (
            "  r:\n    upstream: http://api.example/\n    profile: admin\n",
            "proxy.r.upstream",
        ),
        (
            "  r:\n    upstream: https://api.example/v1\n    profile: admin\n",
            "proxy.r.upstream",
        ),
        (
            "  r:\n    upstream: local:/x/\n    profile: admin\n",
            "proxy.r.upstream",
        ),
        (
            "  r:\n    upstream: https://api.example/\n    profile: nope\n",
            "proxy.r.profile",
        ),
        (
            "  R_1:\n    upstream: https://api.example/\n    profile: admin\n",
            "proxy.R_1",
        ),
        (
            "  r:\n    upstream: https://api.example/\n    profile: admin\n    org: '{ORG}'\n",
            "proxy.r.org",
        ),
        (
            "  r:\n    upstream: https://api.example/\n    profile: admin\n    max_body: 0\n",
            "proxy.r.max_body",
        ),
    ] {
        let yaml = config_yaml(
            &mp,
            &altinn,
            &format!("proxy:\n{}", route.replace("{ORG}", ORG)),
        );
        let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let Err(error) = maskinporten_broker::app::App::spawn(settings, listener).await else {
            panic!("{route} was accepted");
        };
        assert!(error.to_string().contains(field), "{field}: {error}");
    }
    let ok = "  r:\n    upstream: https://api.example/v1/\n    profile: admin\n";
    let yaml = config_yaml(&mp, &altinn, &format!("proxy:\n{ok}"));
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    assert!(settings.validate().is_ok());
}

#[tokio::test]
async fn openapi_documents_the_proxy_route_with_every_status() {
    let (env, _up) = start().await;
    let doc = env.get_json("/openapi.json", 200).await;
    let path = &doc["paths"]["/proxy/{name}/{rest}"];
    for method in ["get", "post", "put", "patch", "delete", "head", "options"] {
        let responses = &path[method]["responses"];
        for status in [
            "200", "400", "401", "403", "404", "413", "502", "503", "504",
        ] {
            assert!(responses[status].is_object(), "{method} {status}: {path}");
        }
    }
    let params = path["get"]["parameters"].as_array().unwrap();
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "X-Broker-Org" && p["in"] == "header")
    );
}

#[tokio::test]
async fn trace_and_connect_are_405_at_every_depth_and_never_reach_the_upstream() {
    let (env, up) = start().await;
    for method in ["TRACE", "CONNECT"] {
        for target in [
            "/proxy/r",
            "/proxy/r/",
            "/proxy/r/x",
            "/proxy/r/x/",
            "/proxy/r/a/b/c",
        ] {
            let request =
                format!("{method} {target} HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n");
            let (status, answer) = raw(env.app.addr, &request).await;
            assert_eq!(status, 405, "{method} {target}: {answer}");
            assert!(answer.contains("application/problem+json"), "{answer}");
        }
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // The methods the proxy takes reach the upstream at every depth.
    for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for target in ["/proxy/r", "/proxy/r/x", "/proxy/r/a/b/"] {
            let response = env
                .http
                .request(method.clone(), env.url(target))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201, "{method} {target}");
        }
    }
    assert_eq!(up.seen().len(), 21);
}

#[tokio::test]
async fn a_response_header_carrying_the_token_is_redacted_and_counted_and_bodies_pass_untouched() {
    let (env, up) = start_with_route("leaky").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for _ in 0..2 {
        let response = http.get(env.url("/proxy/leaky/echo")).send().await.unwrap();
        assert_eq!(response.status(), 302);
        let headers = response.headers().clone();
        assert_eq!(headers["x-echo-authorization"], "[redacted]");
        assert_eq!(headers["location"], "[redacted]");
        assert_eq!(headers["x-innocent"], "kept");
        let token = up.seen().last().unwrap().bearer().to_owned();
        let body = response.text().await.unwrap();
        assert_eq!(
            body,
            format!("you sent {token}"),
            "the body is passed untouched"
        );
        for (name, value) in &headers {
            assert!(
                !value.to_str().unwrap_or("").contains(&token),
                "{name} carries the token"
            );
        }
    }
    let text = env.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("broker_proxy_redacted_headers_total{route=\"leaky\"} 4\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_caller_hanging_up_during_a_chunked_upload_is_the_callers_abort() {
    let logs = LogCapture::start(tracing::Level::INFO);
    let (env, up) = start_with_route("upload").await;
    let mut stream = tokio::net::TcpStream::connect(env.app.addr).await.unwrap();
    stream
        .write_all(b"POST /proxy/upload/stream-up HTTP/1.1\r\nHost: broker\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), up.state.first_chunk.notified())
        .await
        .expect("the upstream sees the first chunk");
    drop(stream);
    let mut counted = Vec::new();
    for _ in 0..100 {
        let text = env.get("/metrics").await.text().await.unwrap();
        counted = text
            .lines()
            .filter(|l| l.starts_with("broker_proxy_requests_total{route=\"upload\""))
            .map(str::to_owned)
            .collect();
        if !counted.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        counted,
        ["broker_proxy_requests_total{route=\"upload\",class=\"4xx\"} 1"],
        "the caller's abort, not the upstream's failure"
    );
    let logs = logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("route=\"upload\""))
        .unwrap_or_else(|| panic!("no log line for the route:\n{logs}"));
    assert!(
        line.contains("the caller aborted its request body"),
        "{line}"
    );
    assert!(line.contains("INFO"), "{line}");
    assert!(!logs.contains("could not be reached"), "{logs}");
}

#[tokio::test]
async fn a_content_length_upload_that_stops_arriving_is_a_408_body_timeout_and_never_forwarded() {
    let (env, up) = start().await;
    // 100 bytes announced, 3 sent, then nothing (the connection stays open): the `slow` route's
    // 300 ms pass while the body is read.
    let mut stream = tokio::net::TcpStream::connect(env.app.addr).await.unwrap();
    stream
        .write_all(b"POST /proxy/slow/upload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("the broker answers within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("body-timeout"), "{text}");
    assert!(up.seen().is_empty(), "nothing reached the upstream");
}

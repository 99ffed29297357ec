//! Connections are bounded: stalled and idle connections are closed, the number open is capped
//! below the file descriptor limit, and callers keep being answered meanwhile; hyper's own
//! refusals close cleanly; shutdown finishes the requests in flight.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A request that never finishes its head.
const HALF_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Half: ";
/// hyper's buffer for a request head (`MAX_HEAD_BUFFER` in src/http/limits.rs).
const MAX_HEAD_BUFFER: usize = 64 * 1024;

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// A connection that sent half a request.
async fn stalled(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = connect(addr).await;
    tcp.write_all(HALF_REQUEST).await.unwrap();
    tcp
}

/// Everything the broker sends until it closes the connection, or `None` if it is still open
/// after `within`.
async fn until_closed(tcp: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match tokio::time::timeout(within, tcp.read_to_end(&mut got)).await {
        Ok(_) => Some(got), // EOF, or a reset: closed either way
        Err(_) => None,
    }
}

/// Send one request on `tcp` and read its answer (the broker's bodies are small and sized).
async fn exchange(tcp: &mut TcpStream, path: &str) -> String {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: broker\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
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
                return text.into_owned();
            }
        }
        assert!(n > 0, "closed mid-answer: {text}");
    }
    panic!("no complete answer")
}

#[tokio::test]
async fn a_half_sent_request_and_a_silent_connection_are_closed_after_the_header_read_timeout() {
    let env = TestEnv::start("server:\n  header_read_timeout: 300ms\n").await;
    let started = Instant::now();
    let mut half = stalled(env.app.addr).await;
    let mut silent = connect(env.app.addr).await;
    let got = until_closed(&mut half, Duration::from_secs(10)).await;
    assert!(got.is_some(), "still open after 10 s");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the timeout"
    );
    assert!(
        until_closed(&mut silent, Duration::from_secs(10))
            .await
            .is_some()
    );
    // Closed, not answered: nothing of a request was complete.
    assert!(got.unwrap().is_empty());
    // Others are still served.
    assert_eq!(env.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_lives_for_the_keep_alive_timeout_then_closes() {
    let env =
        TestEnv::start("server:\n  header_read_timeout: 300ms\n  keep_alive_timeout: 1500ms\n")
            .await;
    let mut tcp = connect(env.app.addr).await;
    assert!(
        exchange(&mut tcp, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // Idle longer than the header-read timeout: still open, for the keep-alive timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The broker's idle time starts after this request was sent, whenever its answer arrives here.
    let idle = Instant::now();
    assert!(
        exchange(&mut tcp, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let got = until_closed(&mut tcp, Duration::from_secs(15)).await;
    assert_eq!(got.as_deref(), Some(&b""[..]), "closed, quietly");
    assert!(
        idle.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        idle.elapsed()
    );
}

#[tokio::test]
async fn at_max_connections_a_new_caller_takes_the_place_of_the_longest_stalled() {
    // The header-read timeout is far away: only making room can answer the caller.
    let env = TestEnv::start("server:\n  header_read_timeout: 60s\n  max_connections: 4\n").await;
    let mut stalled_ones = Vec::new();
    for _ in 0..4 {
        stalled_ones.push(stalled(env.app.addr).await);
        tokio::time::sleep(Duration::from_millis(20)).await; // distinct ages
    }
    let answered = tokio::time::timeout(Duration::from_secs(20), env.get("/healthz"))
        .await
        .expect("answered long before the stalled connections time out");
    assert_eq!(answered.status(), 200);
    let oldest = until_closed(&mut stalled_ones[0], Duration::from_secs(5)).await;
    assert!(oldest.is_some(), "the longest stalled made room");
    let youngest = until_closed(&mut stalled_ones[3], Duration::from_millis(300)).await;
    assert!(youngest.is_none(), "the others are left alone");
}

#[tokio::test]
async fn hundreds_of_stalled_connections_over_the_cap_never_keep_a_caller_waiting() {
    let env = TestEnv::start("server:\n  header_read_timeout: 60s\n  max_connections: 50\n").await;
    let mut stalled_ones = Vec::new();
    for _ in 0..300 {
        stalled_ones.push(stalled(env.app.addr).await);
    }
    for path in ["/healthz", "/token/admin", "/healthz"] {
        let r = tokio::time::timeout(Duration::from_secs(20), env.get(path))
            .await
            .expect("answered long before the stalled connections time out");
        assert_eq!(r.status(), 200, "{path}");
    }
    let mut closed = 0;
    for tcp in &mut stalled_ones[..250] {
        if until_closed(tcp, Duration::from_secs(5)).await.is_some() {
            closed += 1;
        }
    }
    assert!(
        closed >= 240,
        "the oldest made room: {closed} of 250 closed"
    );
}

#[tokio::test]
async fn a_caller_is_answered_while_1000_stalled_connections_are_open_and_they_are_all_closed() {
    // 1000 connections cost this process 2000 file descriptors (both ends); see `ulimit -n`.
    let env = TestEnv::start("server:\n  header_read_timeout: 3s\n").await;
    let mut stalled_ones = Vec::with_capacity(1000);
    for _ in 0..1000 {
        stalled_ones.push(stalled(env.app.addr).await);
    }
    let token = env.get("/token/admin").await;
    assert_eq!(token.status(), 200);
    assert_eq!(env.get("/healthz").await.status(), 200);
    let mut closed = 0;
    for tcp in &mut stalled_ones {
        if until_closed(tcp, Duration::from_secs(20)).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 1000, "every stalled connection is closed");
}

#[tokio::test]
async fn accept_never_fails_under_a_low_file_descriptor_limit() {
    // The binary under `ulimit -n 128`: it derives max_connections 64 from it, makes room at the
    // cap, and keeps answering; 150 stalled connections never make accept fail with EMFILE.
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        config_yaml(
            &mp,
            &altinn,
            &format!("listen: 127.0.0.1:{port}\nserver:\n  header_read_timeout: 3s\n"),
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", "ulimit -n 128 && exec \"$0\" --config \"$1\"", BIN])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&format!("{base}/healthz")).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut stalled_ones = Vec::new();
    for _ in 0..150 {
        stalled_ones.push(stalled(addr).await);
    }
    let http = reqwest::Client::new();
    for path in ["/healthz", "/token/admin"] {
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            http.get(format!("{base}{path}")).send(),
        )
        .await
        .expect("answered within 20 s")
        .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for tcp in &mut stalled_ones {
        assert!(until_closed(tcp, Duration::from_secs(20)).await.is_some());
    }
    signal(child.id().unwrap(), "TERM");
    child.wait().await.unwrap();
    let log = stderr_of(&mut child).await;
    assert!(log.contains("max_connections=64"), "{log}");
    assert!(log.contains("connection limit reached"), "{log}");
    assert!(!log.contains("cannot accept"), "{log}");
}

#[tokio::test]
async fn hyper_s_own_refusals_have_no_body_but_close_the_connection() {
    let env = TestEnv::start("").await;
    // A garbage request line: hyper answers 400 itself (status only; it has no hook for a body).
    let mut tcp = connect(env.app.addr).await;
    tcp.write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut tcp, Duration::from_secs(10))
        .await
        .expect("closed");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    // A head that fills hyper's buffer (64 KiB) before it ends: its bare 431, and closed.
    // Exactly the buffer's size, so hyper has read every byte sent when it closes (unread
    // bytes would make the close a reset, which can discard the 431 before it is read).
    let mut tcp = stalled(env.app.addr).await;
    let fill = MAX_HEAD_BUFFER - HALF_REQUEST.len();
    tcp.write_all("a".repeat(fill).as_bytes()).await.unwrap();
    let got = until_closed(&mut tcp, Duration::from_secs(10))
        .await
        .expect("closed");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{got}"
    );
    assert!(!got.contains("problem+json"), "{got}");
}

/// Request headers: names and values.
type Headers = Vec<(String, String)>;

#[tokio::test]
async fn over_size_requests_within_hyper_s_limits_get_problem_bodies() {
    let env = TestEnv::start("").await;
    let cases: Vec<(String, Headers, u16)> = vec![
        // 20 KB of one header: over our 8 KiB, under hyper's 64 KiB buffer.
        (
            "/healthz".into(),
            vec![("x-filler".into(), "a".repeat(20_000))],
            431,
        ),
        // 80 small headers: over our 64 fields, under hyper's 100.
        (
            "/healthz".into(),
            (0..80).map(|i| (format!("x-h{i}"), "v".into())).collect(),
            431,
        ),
        // A 30 KB query: over our 1 KiB, under hyper's 64 KiB.
        (
            format!("/token/altinn?org={}", "9".repeat(30_000)),
            vec![],
            414,
        ),
    ];
    for (path, headers, status) in cases {
        let mut request = env.http.get(env.url(&path));
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{} headers", headers.len());
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["status"], status);
    }
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight() {
    let TestEnv {
        mp,
        altinn: _altinn,
        app,
        http,
    } = TestEnv::start("").await;
    mp.script([Reply::Hang(Duration::from_millis(800))]);
    let url = format!("http://{}/token/admin", app.addr);
    let in_flight = tokio::spawn(async move { http.get(url).send().await });
    // Let the request reach the upstream, then shut down.
    for _ in 0..100 {
        if mp.calls() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mp.calls(), 1);
    let addr = app.addr;
    tokio::time::timeout(Duration::from_secs(20), app.shutdown())
        .await
        .expect("shutdown ends");
    let answer = in_flight
        .await
        .unwrap()
        .expect("answered before the shutdown ended");
    assert_eq!(answer.status(), 200);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

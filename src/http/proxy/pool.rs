//! Each thread's keep-alive connections to the proxy's upstreams: hyper's own HTTP/1.1
//! connections (`hyper::client::conn::http1`), opened through the proxy client's connector
//! (rustls, `http_client.connect_timeout`, TCP_NODELAY), kept per thread as each nginx worker
//! keeps its own. A proxied request then never wakes another thread, and finding a connection
//! is a look in a short list of this thread's origins, not a lock and a hash of the origin.
//!
//! - A connection goes back to its thread's pool when the answer's body has been read to its
//!   end; an answer dropped before its end takes its connection with it (hyper closes it).
//! - At most [`MAX_IDLE_PER_ORIGIN`] idle connections per origin and thread are kept (the
//!   oldest goes first), and none longer than [`IDLE_TIMEOUT`]: a task on the thread's runtime
//!   closes those every half of it.
//! - A request that an idle connection closed before it was sent (the upstream's keep-alive
//!   ended just then) goes on the next connection, or a new one: it was never sent.
//! - A reload builds a new client, whose id tells the threads to start new pools; the old
//!   pool's connections close as their answers end.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::ServiceExt;
use url::Url;

/// Idle connections kept per origin and thread; past it, the oldest is closed.
pub(crate) const MAX_IDLE_PER_ORIGIN: usize = 64;
/// How long a connection may stay idle before it is closed (hyper-util's default, kept).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Origins a thread's pool keeps connections for: the routes' upstreams, far fewer than this.
const MAX_ORIGINS: usize = 256;

/// Tells one built client from another, so that a thread's pool is replaced at a reload.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's pool (for the client whose id it carries).
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { client: u64::MAX, origins: Vec::new() }) };
}

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened (TCP, the connect timeout, or TLS).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed before or while the request was answered.
    Exchange(hyper::Error),
    /// The request's URI has no `http` or `https` origin (never from a route).
    NoOrigin,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SendError::Connect(_) => "could not connect",
            SendError::Exchange(_) => "the exchange failed",
            SendError::NoOrigin => "the upstream URL has no http or https origin",
        })
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(&**e),
            SendError::Exchange(e) => Some(e),
            SendError::NoOrigin => None,
        }
    }
}

/// The direct client: a connector, and a pool of its connections in each thread that sends.
pub(crate) struct PerThread {
    id: u64,
    connector: HttpsConnector<HttpConnector>,
}

impl PerThread {
    pub(crate) fn new(connector: HttpsConnector<HttpConnector>) -> PerThread {
        PerThread {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connector,
        }
    }

    /// Send `request` (its URI the path and query only, as written on the wire) to the origin
    /// of `upstream` (its scheme, host and port; its path is not read), on one of this thread's
    /// idle connections to it or on a new one. Sets `Host` from `upstream` when the request has
    /// none.
    pub(crate) async fn request(
        &self,
        upstream: &Url,
        mut request: Request<Body>,
    ) -> Result<Response<Returning>, SendError> {
        let https = match upstream.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(SendError::NoOrigin),
        };
        if !request.headers().contains_key(header::HOST) {
            let host = host_value(upstream).ok_or(SendError::NoOrigin)?;
            request.headers_mut().insert(header::HOST, host);
        }
        let origin = self.origin(https, upstream.authority());
        while let Some(mut sender) = checkout(self.id, origin) {
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(answer) => return Ok(self.returning(answer, sender, origin)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
        // Boxed: the rare path's future (TCP, TLS, handshake) is not carried by every request's.
        let mut sender = Box::pin(self.connect(upstream)).await?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(SendError::Exchange)?;
        Ok(self.returning(answer, sender, origin))
    }

    /// This thread's slot for the origin (made, with the thread's pool, on first use).
    fn origin(&self, https: bool, authority: &str) -> Option<usize> {
        POOL.with(|pool| {
            let mut pool = pool.try_borrow_mut().ok()?;
            if pool.client != self.id {
                *pool = Pool {
                    client: self.id,
                    origins: Vec::new(),
                };
                spawn_reaper(self.id);
            }
            if let Some(i) = pool
                .origins
                .iter()
                .position(|o| o.https == https && o.authority == authority)
            {
                return Some(i);
            }
            if pool.origins.len() >= MAX_ORIGINS {
                return None;
            }
            pool.origins.push(Origin {
                https,
                authority: authority.to_owned(),
                idle: Vec::new(),
            });
            Some(pool.origins.len() - 1)
        })
    }

    async fn connect(&self, upstream: &Url) -> Result<http1::SendRequest<Body>, SendError> {
        let uri = Uri::try_from(&upstream[..url::Position::BeforePath])
            .map_err(|_| SendError::NoOrigin)?;
        let io = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(SendError::Connect)?;
        let (sender, connection) = http1::handshake(io).await.map_err(SendError::Exchange)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "an upstream connection of the proxy ended with an error");
            }
        });
        Ok(sender)
    }

    fn returning(
        &self,
        answer: Response<Incoming>,
        sender: http1::SendRequest<Body>,
        origin: Option<usize>,
    ) -> Response<Returning> {
        let home = origin.map(|origin| Home {
            sender,
            client: self.id,
            origin,
        });
        answer.map(|body| Returning {
            body,
            ended: false,
            home,
        })
    }
}

/// A thread's pool: its idle connections by origin.
struct Pool {
    client: u64,
    origins: Vec<Origin>,
}

struct Origin {
    https: bool,
    authority: String,
    /// Oldest first; the last is the one most recently used.
    idle: Vec<Idle>,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Pool {
    /// Close the connections idle since before `now - IDLE_TIMEOUT`, and those already closed.
    fn prune(&mut self, now: Instant) {
        for origin in &mut self.origins {
            origin
                .idle
                .retain(|idle| !idle.sender.is_closed() && now - idle.since < IDLE_TIMEOUT);
        }
    }
}

/// The most recently used idle connection to the origin that is still open.
fn checkout(client: u64, origin: Option<usize>) -> Option<http1::SendRequest<Body>> {
    let origin = origin?;
    POOL.with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        if pool.client != client {
            return None;
        }
        let idle = &mut pool.origins.get_mut(origin)?.idle;
        while let Some(Idle { sender, .. }) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    })
}

/// Put a connection whose answer ended back into this thread's pool (or close it).
fn checkin(home: Home) {
    let _ = POOL.try_with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return;
        };
        if pool.client != home.client || home.sender.is_closed() {
            return;
        }
        let Some(origin) = pool.origins.get_mut(home.origin) else {
            return;
        };
        if origin.idle.len() >= MAX_IDLE_PER_ORIGIN {
            origin.idle.remove(0);
        }
        origin.idle.push(Idle {
            sender: home.sender,
            since: Instant::now(),
        });
    });
}

/// Every half of [`IDLE_TIMEOUT`], close this thread's connections idle for longer; ends when
/// the thread's pool belongs to another client (a reload). Without a runtime (never in the
/// broker) idle connections are closed only as the pool is used.
fn spawn_reaper(client: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(IDLE_TIMEOUT / 2).await;
            let current = POOL.with(|pool| {
                let Ok(mut pool) = pool.try_borrow_mut() else {
                    return true;
                };
                pool.prune(Instant::now());
                pool.client == client
            });
            if !current {
                break;
            }
        }
    });
}

/// Where a connection goes back to.
struct Home {
    sender: http1::SendRequest<Body>,
    client: u64,
    origin: usize,
}

/// An upstream's answer body; read to its end, it gives its connection back to the pool.
pub(crate) struct Returning {
    body: Incoming,
    ended: bool,
    home: Option<Home>,
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if (self.ended || self.body.is_end_stream())
            && let Some(home) = self.home.take()
        {
            checkin(home);
        }
    }
}

/// The `Host` value for `upstream`: its host, with `:port` when the port is not the scheme's
/// default (`Url::port` leaves that out). The route table makes each route's with it once; a
/// request sent without one gets it here.
pub(super) fn host_value(upstream: &Url) -> Option<HeaderValue> {
    let host = upstream.host_str()?;
    match upstream.port() {
        Some(port) => HeaderValue::try_from(format!("{host}:{port}")).ok(),
        None => HeaderValue::try_from(host).ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    use axum::http::StatusCode;
    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::config::HttpClientSettings;
    use crate::http::proxy::client::ProxyClient;

    /// Connections an upstream accepted, and those that have since ended.
    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        ended: AtomicUsize,
    }

    impl Seen {
        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        /// Waits (at most 5 s) for `n` connections to have ended.
        fn wait_ended(&self, n: usize) {
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while self.ended.load(Ordering::SeqCst) < n && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(self.ended.load(Ordering::SeqCst), n, "connections ended");
        }
    }

    /// An upstream on 127.0.0.1 that answers every request 200 with a short body, on keep-alive
    /// connections unless `one_answer` (then it closes each connection after its first answer,
    /// without saying so, as a server whose keep-alive ran out does). Runs on its own thread.
    fn upstream(one_answer: bool) -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let counter = seen.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    counter.accepted.fetch_add(1, Ordering::SeqCst);
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let service = service_fn(|_| async {
                            Ok::<_, std::convert::Infallible>(Response::new(Body::from("ok")))
                        });
                        let connection = server::Builder::new()
                            .keep_alive(!one_answer)
                            .serve_connection(TokioIo::new(tcp), service);
                        let _ = connection.await;
                        counter.ended.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
        });
        (url, seen)
    }

    fn direct() -> Arc<ProxyClient> {
        Arc::new(ProxyClient::build(&HttpClientSettings::default()).unwrap())
    }

    /// A GET of `url` on `client`'s pool, its answer's body not read yet.
    async fn answer(client: &ProxyClient, url: &str) -> Response<Returning> {
        let ProxyClient::Direct(client) = client else {
            panic!("no forward proxy is configured: the client is direct");
        };
        let request = Request::get("/").body(Body::empty()).unwrap();
        client
            .request(&Url::parse(url).unwrap(), request)
            .await
            .unwrap()
    }

    /// Sends on `client` and reads the answer to its end.
    async fn get(client: &ProxyClient, url: &str) {
        let answer = answer(client, url).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let body = axum::body::to_bytes(Body::new(answer.into_body()), 1024).await;
        assert_eq!(body.unwrap(), "ok");
    }

    type Order = Box<dyn FnOnce(&tokio::runtime::Runtime) + Send>;

    /// A thread with a current-thread runtime of its own (and so a pool of its own, as each
    /// worker has) that runs what it is given, one after another. Its runtime lives until the
    /// sender is dropped.
    fn worker() -> mpsc::Sender<(Order, mpsc::Sender<()>)> {
        let (orders, ordered) = mpsc::channel::<(Order, mpsc::Sender<()>)>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            while let Ok((order, done)) = ordered.recv() {
                order(&runtime);
                let _ = done.send(());
            }
        });
        orders
    }

    /// Runs `order` on `worker` and waits (at most 10 s) until it is done.
    fn on(worker: &mpsc::Sender<(Order, mpsc::Sender<()>)>, order: Order) {
        let (done, finished) = mpsc::channel();
        worker.send((order, done)).unwrap();
        finished.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    /// `count` requests one after another on `worker`, each answer read to its end.
    fn send(
        worker: &mpsc::Sender<(Order, mpsc::Sender<()>)>,
        client: &Arc<ProxyClient>,
        url: &str,
        count: usize,
    ) {
        let (client, url) = (client.clone(), url.to_owned());
        on(
            worker,
            Box::new(move |runtime| {
                runtime.block_on(async {
                    for _ in 0..count {
                        get(&client, &url).await;
                    }
                    // Let the connection's task see the answer's end.
                    tokio::task::yield_now().await;
                })
            }),
        );
    }

    /// Moves `worker`'s clock on by `by` (its timers fire as they would have), then lets it run
    /// in real time again.
    fn advance_clock(worker: &mpsc::Sender<(Order, mpsc::Sender<()>)>, by: Duration) {
        on(
            worker,
            Box::new(move |runtime| {
                runtime.block_on(async {
                    tokio::time::pause();
                    tokio::time::advance(by).await;
                    tokio::task::yield_now().await;
                    tokio::time::resume();
                })
            }),
        );
    }

    #[test]
    fn each_thread_keeps_its_own_pool_of_upstream_connections() {
        let (url, seen) = upstream(false);
        let client = direct();
        let (first, second) = (worker(), worker());
        // One thread, three requests in turn: one connection, kept alive and reused.
        send(&first, &client, &url, 3);
        assert_eq!(seen.accepted(), 1);
        // Another thread does not take the first one's idle connection (still open): it opens
        // its own, and reuses it.
        send(&second, &client, &url, 2);
        assert_eq!(seen.accepted(), 2);
        send(&first, &client, &url, 2);
        assert_eq!(seen.accepted(), 2);
        // A client built anew (a reload) gives the thread a new pool, and the old pool's idle
        // connection on that thread is closed.
        let rebuilt = direct();
        send(&first, &rebuilt, &url, 1);
        assert_eq!(seen.accepted(), 3);
        seen.wait_ended(1);
    }

    /// An upstream on 127.0.0.1 that answers each connection's first request 200 "ok" and then
    /// closes it without saying so (no `Connection: close`), as a server whose keep-alive ran
    /// out just then does.
    fn closing_upstream() -> (String, Arc<Seen>) {
        use std::io::{Read, Write};
        let seen = Arc::new(Seen::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let counter = seen.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(mut tcp) = tcp else { return };
                counter.accepted.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                drop(tcp);
                counter.ended.fetch_add(1, Ordering::SeqCst);
            }
        });
        (url, seen)
    }

    #[test]
    fn requests_are_answered_when_the_upstream_closes_each_connection_after_one_answer() {
        let (url, seen) = closing_upstream();
        let client = direct();
        let thread = worker();
        // Each answer ends its connection; every request still gets its answer, on a new one.
        // Before each next request the upstream has closed and the worker's runtime has run
        // once more (and so read the close): a request sent while the close is still on its way
        // is written to a dying connection, a reset no client can tell from a failed request.
        // (A request hyper hands back unsent, when it finds the close only then, is sent on
        // another connection too; that moment cannot be made to happen on purpose.)
        for sent in 1..=20 {
            send(&thread, &client, &url, 1);
            seen.wait_ended(sent);
            on(
                &thread,
                Box::new(|runtime| {
                    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
                }),
            );
        }
        assert_eq!(seen.accepted(), 20);
    }

    #[test]
    fn an_answer_dropped_before_its_end_does_not_give_its_connection_back() {
        let (url, seen) = upstream(false);
        let client = direct();
        let thread = worker();
        let (c, u) = (client.clone(), url.clone());
        on(
            &thread,
            Box::new(move |runtime| {
                runtime.block_on(async {
                    drop(answer(&c, &u).await);
                    tokio::task::yield_now().await;
                })
            }),
        );
        seen.wait_ended(1);
        send(&thread, &client, &url, 1);
        assert_eq!(seen.accepted(), 2);
    }

    #[test]
    fn idle_connections_past_the_bound_per_origin_are_closed() {
        let (url, seen) = upstream(false);
        let client = direct();
        let thread = worker();
        let over = MAX_IDLE_PER_ORIGIN + 6;
        let (c, u) = (client.clone(), url.clone());
        on(
            &thread,
            Box::new(move |runtime| {
                runtime.block_on(async {
                    // All answers held at once: each request needs a connection of its own.
                    let mut answers = Vec::new();
                    for _ in 0..over {
                        answers.push(answer(&c, &u).await);
                    }
                    for answer in answers {
                        let body = Body::new(answer.into_body());
                        axum::body::to_bytes(body, 1024).await.unwrap();
                    }
                    tokio::task::yield_now().await;
                })
            }),
        );
        assert_eq!(seen.accepted(), over);
        seen.wait_ended(over - MAX_IDLE_PER_ORIGIN);
        // The ones kept are reused.
        send(&thread, &client, &url, 3);
        assert_eq!(seen.accepted(), over);
    }

    #[test]
    fn past_the_bound_on_origins_requests_are_still_answered_without_keeping_connections() {
        let (url, seen) = upstream(false);
        let client = direct();
        let thread = worker();
        let c = client.clone();
        on(
            &thread,
            Box::new(move |_| {
                let ProxyClient::Direct(direct) = &*c else {
                    panic!("no forward proxy is configured: the client is direct");
                };
                for i in 0..MAX_ORIGINS {
                    let origin = direct.origin(false, &format!("origin-{i}.invalid"));
                    assert_eq!(origin, Some(i));
                }
                assert_eq!(direct.origin(false, "one-more.invalid"), None);
            }),
        );
        send(&thread, &client, &url, 2);
        assert_eq!(seen.accepted(), 2);
        seen.wait_ended(2);
    }

    #[test]
    fn connections_idle_past_the_timeout_are_closed_by_the_threads_reaper() {
        let (url, seen) = upstream(false);
        let client = direct();
        let thread = worker();
        send(&thread, &client, &url, 1);
        advance_clock(&thread, IDLE_TIMEOUT - Duration::from_secs(1));
        // Not yet: idle for less than the timeout.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(seen.ended.load(Ordering::SeqCst), 0);
        advance_clock(&thread, IDLE_TIMEOUT);
        seen.wait_ended(1);
        send(&thread, &client, &url, 1);
        assert_eq!(seen.accepted(), 2);
    }
}

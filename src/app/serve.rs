//! The accept loop: how many connections the broker holds open, and how long each may stall.
//!
//! `axum::serve` has no timer, so hyper's header-read timeout never fires and a caller that sends
//! half a request keeps a connection, and a file descriptor, for ever. This loop bounds each way a
//! connection can sit on a file descriptor:
//! - at most `server.max_connections` are open (by default derived from the process's file
//!   descriptor limit, [`derived_max_connections`], after raising its soft limit towards the
//!   hard one, [`raise_fd_limit`]). A connection accepted at the cap takes the place of the one
//!   that has waited longest without a request in flight (stalled or idle); when every one is
//!   answering a request, the loop waits for one to end before it accepts again, and new callers
//!   wait in the kernel's listen backlog. So `accept` never fails with `EMFILE`; should it fail
//!   anyway, it is retried after a pause, never in a busy loop;
//! - a request head must be complete within `server.header_read_timeout` of its first byte (for
//!   the first request of a connection: of the connection's start), else the connection is closed;
//! - a kept-alive connection with no request in flight is closed after `server.keep_alive_timeout`.
//!
//! The two timers are ours, not hyper's: hyper starts its header-read timer as soon as the previous
//! response is written, so it would close every idle kept-alive connection after the header-read
//! timeout and a separate keep-alive timeout could never take effect. A request in flight is
//! bounded by the request deadline of `http::limits`, not here.
//!
//! Each accepted connection is handed to the next connection worker ([`Workers`]), which serves
//! it to its end on one thread.
//!
//! On shutdown the loop stops accepting, lets every request in flight finish, closes idle
//! connections, and returns once every connection has closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use futures::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower::util::Oneshot;

use super::workers::Workers;
use crate::config::ServerSettings;
use crate::http::limits;

impl ServerSettings {
    /// The configured cap, or the one derived from the file descriptor limit.
    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections
            .unwrap_or_else(|| derived_max_connections(fd_soft_limit()))
    }
}

/// File descriptors kept free for everything but callers' connections, at the least: upstream
/// connections (and, in `env: local`, the simulator's end of them), the listener, the key and
/// config files, stdio and the runtime's own.
const FD_HEADROOM_MIN: u64 = 64;
/// The derived cap never exceeds this, whatever the limit (often 1,048,576 in containers): a
/// stalled connection costs about 16 KiB, so 4096 of them about 64 MiB.
const DERIVED_MAX: u64 = 4096;
/// ... nor goes below this, however low the limit.
const DERIVED_MIN: u64 = 8;

/// `max_connections` for a file descriptor soft limit: the limit less a quarter of it (at least
/// 64) for everything else, between 8 and 4096. 1024 → 768; 256 → 192; 20,000 → 4096.
pub(crate) fn derived_max_connections(fd_soft_limit: u64) -> usize {
    let headroom = (fd_soft_limit / 4).max(FD_HEADROOM_MIN);
    let cap = fd_soft_limit
        .saturating_sub(headroom)
        .clamp(DERIVED_MIN, DERIVED_MAX);
    usize::try_from(cap).unwrap_or(DERIVED_MIN as usize)
}

/// The process's soft limit on open files (1024, a common default, where it cannot be read).
pub(crate) fn fd_soft_limit() -> u64 {
    #[cfg(unix)]
    if let Ok((soft, _hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        return soft;
    }
    1024
}

/// The soft limit on open files is raised to at most this at start-up (never above the hard
/// limit): enough for the largest derived cap and its headroom.
const FD_LIMIT_WANTED: u64 = 8_192;

/// Raise the soft limit on open files towards the hard limit, as Go programs and most servers do:
/// the soft limit (often 1024) is only a default, the hard limit is what the operator allows.
/// Returns the soft limit now in force.
pub(crate) fn raise_fd_limit() -> u64 {
    #[cfg(unix)]
    if let Err(e) = rlimit::increase_nofile_limit(FD_LIMIT_WANTED) {
        tracing::debug!(error = %e, "could not raise the soft limit on open files");
    }
    fd_soft_limit()
}

/// How long the loop pauses when `accept` itself fails (out of file descriptors or memory).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serve `service` on `listener` until `stop` is cancelled, then finish the requests in flight.
/// With `tls`, each connection's TLS handshake must end within the header-read timeout. Each
/// connection runs on one of `workers`, which end with this function.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    service: S,
    settings: &ServerSettings,
    tls: Option<Arc<super::tls::Tls>>,
    workers: Workers,
    stop: CancellationToken,
) where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let max = settings
        .max_connections()
        .clamp(1, crate::config::MAX_CONNECTIONS_LIMIT);
    let timeouts = Timeouts {
        header_read: settings.header_read_timeout,
        keep_alive: settings.keep_alive_timeout,
    };
    let slots = Arc::new(Semaphore::new(max));
    let mut http = http1::Builder::new();
    // Our size limits (http::limits) answer with a problem body; hyper's own only with a status.
    // Its buffer must hold any request ours refuse, so ours speak first. Its header count limit
    // is left at its default (limits::HYPER_MAX_HEADERS): setting it, even to the default,
    // makes hyper fill a 100-entry buffer on every request.
    http.max_buf_size(limits::MAX_HEAD_BUFFER);
    let open = Arc::new(Open::default());
    let mut at_cap = false;
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            // The caller gave up between connecting and our accept: nothing to do.
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                if !accept_failing {
                    tracing::error!(error = %e, "cannot accept connections; retrying every {} ms", ACCEPT_RETRY.as_millis());
                    accept_failing = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        if accept_failing {
            tracing::info!("accepting connections again");
            accept_failing = false;
        }
        // A slot for it. At the cap, make room by closing the connection that has waited longest
        // without a request in flight; if every one is answering a request, wait for one to end.
        // Nothing more is accepted meanwhile, so at most one connection waits beyond the cap.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                at_cap = false;
                slot
            }
            Err(_) => {
                if !at_cap {
                    tracing::warn!(
                        max_connections = max,
                        "connection limit reached: closing the connections idle or stalled the longest to make room"
                    );
                    at_cap = true;
                }
                open.evict_longest_waiting();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let registered = Registered::new(&open, slot);
        let (http, service) = (http.clone(), service.clone());
        // The socket moves to a worker's own runtime (its epoll), where it is served.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand an accepted connection to a worker");
                continue;
            }
        };
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        workers.spawn(async move {
            let tcp = match TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::debug!(error = %e, "a worker cannot take an accepted connection");
                    return;
                }
            };
            match tls {
                None => connection(tcp, None, http, service, timeouts, registered).await,
                Some(acceptor) => {
                    // The handshake holds the connection's slot and is bounded like a request head.
                    match tokio::time::timeout(timeouts.header_read, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let peer = super::tls::peer_of(&stream);
                            connection(stream, peer, http, service, timeouts, registered).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    // Finish the requests in flight, close idle connections; then every connection has closed
    // once every slot is back.
    open.drain_all();
    let _ = slots.acquire_many(max as u32).await;
}

/// Accept errors that concern one connection only; anything else concerns the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header_read: Duration,
    keep_alive: Duration,
}

/// One connection, from accept (and TLS handshake) to close; its slot is given back when it ends.
/// `peer`: the verified client certificate, put into each request's extensions.
async fn connection<S, IO>(
    tcp: IO,
    peer: Option<Arc<super::tls::PeerCertificate>>,
    http: http1::Builder,
    service: S,
    timeouts: Timeouts,
    registered: Registered,
) where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = registered.activity.clone();
    let io = TokioIo::new(Watched {
        io: tcp,
        activity: activity.clone(),
    });
    let service = Tracked {
        inner: service,
        activity: activity.clone(),
        peer,
    };
    let conn = http.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    // The timeouts are watched by a task of their own, which sleeps until the current phase's
    // deadline and signals a stall: the connection's task is woken by its socket on every
    // request and then polls only the connection and the signals (plain atomics; a timer polled
    // or a cancellation token shared by every connection would cost each request).
    let watchdog = tokio::spawn({
        let activity = activity.clone();
        async move {
            let why = activity.stalled(timeouts).await;
            activity.signal(if why == HEADER_READ_TIMEOUT {
                STALLED_HEAD
            } else {
                STALLED_IDLE
            });
        }
    });
    let _watchdog = AbortOnDrop(watchdog);
    let mut draining = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return Poll::Ready(());
        }
        let signals = activity.signals(cx);
        if signals & CLOSE != 0 {
            tracing::debug!("closing the connection idle or stalled the longest, to make room");
            return Poll::Ready(());
        }
        if signals & (STALLED_HEAD | STALLED_IDLE) != 0 {
            let reason = if signals & STALLED_HEAD != 0 {
                HEADER_READ_TIMEOUT
            } else {
                KEEP_ALIVE_TIMEOUT
            };
            tracing::debug!(reason, "closing a stalled connection");
            return Poll::Ready(());
        }
        if signals & DRAIN != 0 && !draining {
            // Finish the request in flight, if any, then close; an idle connection closes now.
            conn.as_mut().graceful_shutdown();
            draining = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Pending
    })
    .await;
}

/// Ends the watchdog with its connection.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`Activity`] signal: close the connection now (to make room at the cap).
const CLOSE: u8 = 1;
/// [`Activity`] signal: finish the request in flight, then close (shutdown).
const DRAIN: u8 = 2;
/// [`Activity`] signal from the watchdog: a request head took too long.
const STALLED_HEAD: u8 = 4;
/// [`Activity`] signal from the watchdog: kept alive without a request for too long.
const STALLED_IDLE: u8 = 8;
const HEADER_READ_TIMEOUT: &str = "header read timeout";
const KEEP_ALIVE_TIMEOUT: &str = "keep-alive timeout";

/// Where a connection is in its life, for the two timeouts.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a request head that started at `since` (or waiting for the first one).
    Head { since: Instant },
    /// This many requests are being answered.
    Busy { requests: usize },
    /// Kept alive with nothing to do since `since`.
    Idle { since: Instant },
}

/// The open connections, so that at the cap the one waiting longest without a request in flight
/// can be closed to make room (as nginx reuses idle keep-alive connections).
#[derive(Debug, Default)]
struct Open {
    connections: Mutex<(u64, HashMap<u64, Arc<Activity>>)>,
}

impl Open {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Arc<Activity>>)> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Close the connection idle or stalled the longest; none if every one is answering.
    fn evict_longest_waiting(&self) {
        let mut open = self.lock();
        let longest = open
            .1
            .iter()
            .filter_map(|(id, a)| a.waiting_since().map(|since| (since, *id)))
            .min();
        if let Some((_, id)) = longest
            && let Some(activity) = open.1.remove(&id)
        {
            activity.signal(CLOSE);
        }
    }

    /// Ask every open connection to finish its request in flight and close (shutdown).
    fn drain_all(&self) {
        for activity in self.lock().1.values() {
            activity.signal(DRAIN);
        }
    }
}

/// A connection's entry in [`Open`] and its slot; both go when the connection ends.
struct Registered {
    open: Arc<Open>,
    id: u64,
    activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
}

impl Registered {
    fn new(open: &Arc<Open>, slot: OwnedSemaphorePermit) -> Self {
        let activity = Arc::new(Activity::new());
        let mut entries = open.lock();
        let id = entries.0;
        entries.0 = id.wrapping_add(1);
        entries.1.insert(id, activity.clone());
        drop(entries);
        Registered {
            open: open.clone(),
            id,
            activity,
            _slot: slot,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.lock().1.remove(&self.id);
    }
}

/// What the connection's reads and its requests tell the watchdog.
#[derive(Debug)]
struct Activity {
    /// The [`Phase`], packed into one word ([`Activity::pack`]): the request path marks a
    /// request's start and end without a lock.
    phase: AtomicU64,
    /// The `since` of a phase is kept as nanoseconds after this.
    epoch: Instant,
    /// [`CLOSE`], [`DRAIN`], [`STALLED_HEAD`], [`STALLED_IDLE`]: set by the accept loop and the
    /// watchdog; the connection's task reads them.
    signals: AtomicU8,
    /// Wakes the connection's task when a signal is set.
    waker: AtomicWaker,
}

/// The phase kinds in the top two bits of [`Activity::phase`].
const HEAD: u64 = 0;
const BUSY: u64 = 1;
const IDLE: u64 = 2;
const KIND_SHIFT: u32 = 62;
const PAYLOAD: u64 = (1 << KIND_SHIFT) - 1;

impl Activity {
    fn new() -> Self {
        let epoch = Instant::now();
        Activity {
            phase: AtomicU64::new(HEAD << KIND_SHIFT),
            epoch,
            signals: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        }
    }

    fn pack(&self, phase: Phase) -> u64 {
        let nanos = |at: Instant| {
            u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
        };
        let (kind, payload) = match phase {
            Phase::Head { since } => (HEAD, nanos(since)),
            Phase::Busy { requests } => (BUSY, u64::try_from(requests).unwrap_or(u64::MAX)),
            Phase::Idle { since } => (IDLE, nanos(since)),
        };
        (kind << KIND_SHIFT) | payload.min(PAYLOAD)
    }

    fn unpack(&self, word: u64) -> Phase {
        let payload = word & PAYLOAD;
        let since = || self.epoch + Duration::from_nanos(payload);
        match word >> KIND_SHIFT {
            BUSY => Phase::Busy {
                requests: usize::try_from(payload).unwrap_or(usize::MAX),
            },
            IDLE => Phase::Idle { since: since() },
            _ => Phase::Head { since: since() },
        }
    }

    fn phase(&self) -> Phase {
        self.unpack(self.phase.load(Ordering::Acquire))
    }

    /// Move to the phase `next` gives for the current one (none: stay).
    fn update(&self, mut next: impl FnMut(Phase) -> Option<Phase>) {
        let _ = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                next(self.unpack(word)).map(|phase| self.pack(phase))
            });
    }

    /// Set `signal` and wake the connection's task.
    fn signal(&self, signal: u8) {
        self.signals.fetch_or(signal, Ordering::AcqRel);
        self.waker.wake();
    }

    /// The signals set so far; a later one wakes the task of `cx`.
    fn signals(&self, cx: &Context<'_>) -> u8 {
        self.waker.register(cx.waker());
        self.signals.load(Ordering::Acquire)
    }

    #[cfg(test)]
    fn closed(&self) -> bool {
        self.signals.load(Ordering::Acquire) & CLOSE != 0
    }

    /// Since when the connection has waited without a request in flight; `None` while busy.
    fn waiting_since(&self) -> Option<Instant> {
        match self.phase() {
            Phase::Head { since } | Phase::Idle { since } => Some(since),
            Phase::Busy { .. } => None,
        }
    }

    /// Bytes arrived: on an idle connection they start the next request head.
    fn read(&self) {
        if self.phase.load(Ordering::Acquire) >> KIND_SHIFT == IDLE {
            self.update(|phase| match phase {
                Phase::Idle { .. } => Some(Phase::Head {
                    since: Instant::now(),
                }),
                _ => None,
            });
        }
    }

    /// hyper parsed a request head and called the service.
    fn begin(self: &Arc<Self>) -> Busy {
        self.update(|phase| {
            Some(match phase {
                Phase::Busy { requests } => Phase::Busy {
                    requests: requests.saturating_add(1),
                },
                Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
            })
        });
        Busy(self.clone())
    }

    fn end(&self) {
        self.update(|phase| match phase {
            Phase::Busy { requests: 0 | 1 } => Some(Phase::Idle {
                since: Instant::now(),
            }),
            Phase::Busy { requests } => Some(Phase::Busy {
                requests: requests - 1,
            }),
            _ => None,
        });
    }

    /// When the current phase runs out, and why; `None` while a request is answered.
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, &'static str)> {
        match self.phase() {
            Phase::Head { since } => Some((since + timeouts.header_read, HEADER_READ_TIMEOUT)),
            Phase::Idle { since } => Some((since + timeouts.keep_alive, KEEP_ALIVE_TIMEOUT)),
            Phase::Busy { .. } => None,
        }
    }

    /// Resolves once the connection has stalled past its phase's timeout. It sleeps until the
    /// deadline of the phase it saw and looks again, so the request path never has to wake it.
    async fn stalled(&self, timeouts: Timeouts) -> &'static str {
        loop {
            match self.deadline(timeouts) {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => tokio::time::sleep(timeouts.header_read.min(timeouts.keep_alive)).await,
            }
        }
    }
}

/// A request being answered; its drop (answer ready, or request abandoned) ends it.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The connection's socket, telling [`Activity`] when bytes arrive.
struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The broker's tower service as hyper calls it, marking the connection busy per request.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    peer: Option<Arc<super::tls::PeerCertificate>>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answering<Oneshot<S, Request<Body>>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(peer) = &self.peer {
            request.extensions_mut().insert(peer.clone());
        }
        Answering {
            busy: self.activity.begin(),
            answer: self.inner.clone().oneshot(request.map(Body::new)),
        }
    }
}

pin_project! {
    /// The answer to one request; the connection counts as busy until it is dropped.
    struct Answering<F> {
        #[pin]
        answer: F,
        busy: Busy,
    }
}

impl<F: Future> Future for Answering<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().answer.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[test]
    fn the_derived_cap_leaves_headroom_below_the_fd_limit() {
        assert_eq!(derived_max_connections(1024), 768);
        assert_eq!(derived_max_connections(5_000), 3_750);
        assert_eq!(derived_max_connections(20_000), 4_096);
        assert_eq!(derived_max_connections(256), 192);
        assert_eq!(derived_max_connections(100), 36);
        assert_eq!(derived_max_connections(10), 8);
        assert_eq!(derived_max_connections(1 << 20), 4_096);
        assert_eq!(derived_max_connections(u64::MAX), 4_096);
    }

    #[test]
    fn defaults_and_validation() {
        let s = ServerSettings::default();
        assert_eq!(s.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.keep_alive_timeout, Duration::from_secs(60));
        assert!(s.max_connections() >= DERIVED_MIN as usize);
        let yaml =
            "server:\n  header_read_timeout: 0s\n  keep_alive_timeout: 0s\n  max_connections: 0\n";
        let problems = crate::config::Settings::from_yaml(yaml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        for field in [
            "header_read_timeout",
            "keep_alive_timeout",
            "max_connections",
        ] {
            assert!(
                problems.contains(&format!("server.{field}: must be")),
                "{problems}"
            );
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_waiting_connection_makes_room_never_a_busy_one() {
        let open = Arc::new(Open::default());
        let slots = Arc::new(Semaphore::new(3));
        let slot = || slots.clone().try_acquire_owned().unwrap();
        let busy = Registered::new(&open, slot()); // the oldest, but answering a request
        let _request = busy.activity.begin();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let stalled = Registered::new(&open, slot());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let young = Registered::new(&open, slot());

        open.evict_longest_waiting();
        assert!(stalled.activity.closed());
        assert!(!busy.activity.closed() && !young.activity.closed());
        open.evict_longest_waiting();
        assert!(young.activity.closed(), "the next one, once");
        open.evict_longest_waiting();
        assert!(!busy.activity.closed(), "never one in flight");
        drop((stalled, young));
        assert_eq!(open.lock().1.len(), 1);
        assert_eq!(slots.available_permits(), 2);
    }

    #[tokio::test]
    async fn each_connections_watchdog_ends_with_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("ok")))
        });
        let stop = CancellationToken::new();
        let settings = ServerSettings::default();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                serve(
                    listener,
                    service,
                    &settings,
                    None,
                    Workers::start(2).unwrap(),
                    stop,
                )
                .await
            }
        });
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let idle = tasks();
        for _ in 0..50 {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer).await.unwrap();
            assert!(answer.starts_with(b"HTTP/1.1 200"));
        }
        // Each connection had its task and its watchdog; none outlives the connection.
        for _ in 0..100 {
            if tasks() <= idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(tasks() <= idle, "{} tasks alive, {idle} before", tasks());
        stop.cancel();
        server.await.unwrap();
    }

    #[test]
    fn a_phase_survives_its_packing() {
        let activity = Activity::new();
        let later = activity.epoch + Duration::from_millis(1234);
        for phase in [
            Phase::Head { since: later },
            Phase::Idle { since: later },
            Phase::Busy { requests: 3 },
        ] {
            let back = activity.unpack(activity.pack(phase));
            assert_eq!(format!("{back:?}"), format!("{phase:?}"));
        }
        // Absurd values saturate instead of spilling into the kind bits.
        let busy = activity.unpack(activity.pack(Phase::Busy {
            requests: usize::MAX,
        }));
        assert!(matches!(busy, Phase::Busy { requests } if requests as u64 == PAYLOAD));
        let far = activity.epoch + Duration::from_secs(u64::from(u32::MAX) * 1000);
        assert!(matches!(
            activity.unpack(activity.pack(Phase::Idle { since: far })),
            Phase::Idle { .. }
        ));
    }

    #[tokio::test]
    async fn phases_run_out_by_their_own_timeout() {
        let timeouts = Timeouts {
            header_read: Duration::from_millis(40),
            keep_alive: Duration::from_millis(120),
        };
        let activity = Arc::new(Activity::new());
        let started = Instant::now();
        assert_eq!(activity.stalled(timeouts).await, "header read timeout");
        assert!(started.elapsed() >= timeouts.header_read);

        let busy = activity.begin();
        assert!(activity.deadline(timeouts).is_none(), "a request in flight");
        drop(busy);
        let idle = Instant::now();
        assert_eq!(activity.stalled(timeouts).await, "keep-alive timeout");
        assert!(idle.elapsed() >= timeouts.keep_alive);

        let before = Instant::now();
        activity.read();
        let (at, why) = activity.deadline(timeouts).unwrap();
        assert_eq!(why, "header read timeout");
        assert!(at >= before + timeouts.header_read);
    }
}

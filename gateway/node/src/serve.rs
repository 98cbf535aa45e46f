//! Serving an axum router (REST and gRPC alike, HTTP/1.1 and cleartext HTTP/2) on a listener
//! handed in from outside, until shutdown, then draining in-flight requests for a bounded time.
//! A [`Direct`] front (the public REST front) may answer the paths it claims without the
//! router ([`serve_direct`]).
//!
//! Every connection is bounded ([`ServeLimits`]): how many may be open, how long a request head
//! and a request body may take, how long a connection may sit idle, and how many HTTP/2 streams
//! and buffered bytes one connection may hold. Each refusal is reported to the caller's
//! [`OnRefusal`], which the composition root counts.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::serve::Listener;
use bytes::Bytes;
use http::{Request, Version, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use switchyard_core::GatewayError;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::seams::ClientAddr;
use crate::tls::{self, PeerCertificate, ServerTls};

/// The shutdown signal, in every request's extensions. Draining waits for requests, not for
/// connections a handler has taken over (WebSockets), so such a handler ends its connection
/// when this is cancelled.
#[derive(Debug, Clone)]
pub struct Shutdown(pub CancellationToken);

/// The bounds on one listener's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// Open connections; past it a new connection is closed at once.
    pub connections_max: u32,
    /// For an HTTP/1.1 request head to arrive, from its first byte. A
    /// kept-alive connection waiting for its next request is `idle_timeout`'s.
    pub header_read_timeout: Duration,
    /// From a request's head to the end of its body, for handlers that read the whole body.
    pub body_read_timeout: Duration,
    /// How long a connection may stay open without a request in progress.
    pub idle_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub http2_stream_window_bytes: u32,
    pub http2_connection_window_bytes: u32,
    pub http2_send_buf_bytes: usize,
    /// What an HTTP/1.1 connection may buffer of what it reads: a request head that does not
    /// fit is answered 431 and the connection closed, so a head that never ends holds this
    /// much at most (hyper's own cap is about 400 KiB). At least 8 KiB.
    pub http1_read_buf_bytes: usize,
}

/// [`ServeLimits::http1_read_buf_bytes`] for a largest request head of `header_bytes_max`: the
/// head's headers plus 16 KiB for the request line and the headers' separators.
pub fn http1_read_buf_for(header_bytes_max: usize) -> usize {
    header_bytes_max
        .saturating_add(16 * 1024)
        .max(HTTP1_READ_BUF_MIN)
}

/// The smallest read buffer hyper takes.
const HTTP1_READ_BUF_MIN: usize = 8 * 1024;

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            connections_max: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: 100,
            http2_stream_window_bytes: 256 * 1024,
            http2_connection_window_bytes: 1024 * 1024,
            http1_read_buf_bytes: http1_read_buf_for(64 * 1024),
            http2_send_buf_bytes: 400 * 1024,
        }
    }
}

/// Why a listener refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A connection past `connections_max`, closed at once.
    ConnectionsMax,
    /// A request head not complete within `header_read_timeout`; the connection is closed.
    HeaderTimeout,
    /// A request body not complete within `body_read_timeout`; answered 408.
    BodyTimeout,
    /// A TLS handshake that failed, or did not complete within `header_read_timeout`; the
    /// connection is closed.
    TlsHandshake,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::ConnectionsMax,
        Refusal::HeaderTimeout,
        Refusal::BodyTimeout,
        Refusal::TlsHandshake,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::ConnectionsMax => "connections_max",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }
}

/// `listener` with `TCP_NODELAY` set on every connection it accepts, as the gateway's
/// binary listens. Without it the kernel holds a small segment back while an earlier one
/// waits for its acknowledgement (Nagle's algorithm), and a client that delays its ACK stalls
/// the answer by up to 40 ms on Linux: an answer whose headers and body leave in two writes
/// (HTTP/2's frames, a body that arrives after its headers, WebSocket messages). Every write
/// the gateway makes is already a whole message or frame, so nothing is gained by holding it.
/// A socket the option cannot be set on is served as it is, and logged at debug level.
pub fn with_nodelay(
    listener: tokio::net::TcpListener,
) -> impl Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|stream: &mut tokio::net::TcpStream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set on an accepted connection");
        }
    })
}

/// Told of each refusal.
pub type OnRefusal = Arc<dyn Fn(Refusal) + Send + Sync>;

/// A front a listener calls directly, not through its router, for the paths it claims (the
/// public REST front): the router's dispatch, its extractors and the boxed future of each
/// handler cost a visible share of a request that is only forwarded. The router still serves
/// every path, so a path the front does not claim is answered as before.
pub trait Direct: Send + Sync + 'static {
    /// Whether this front answers a request for `path`.
    fn claims(&self, path: &str) -> bool;

    /// Answers `request` from `client`.
    fn call(
        &self,
        request: Request<Body>,
        client: SocketAddr,
    ) -> impl Future<Output = Response> + Send + '_;
}

/// No direct front: the router answers every request.
#[derive(Debug)]
pub enum NoDirect {}

impl Direct for NoDirect {
    fn claims(&self, _path: &str) -> bool {
        match *self {}
    }

    async fn call(&self, _request: Request<Body>, _client: SocketAddr) -> Response {
        match *self {}
    }
}

/// Serves `router` on `listener` with the default [`ServeLimits`] and refusals uncounted. On
/// `shutdown` it stops accepting, lets open requests finish for up to `drain`, then returns.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    serve_with(
        listener,
        router,
        shutdown,
        drain,
        ServeLimits::default(),
        None,
        Arc::new(|_| {}),
    )
    .await
}

/// Serves `router` on `listener` within `limits`, over TLS when `tls` is given, telling
/// `on_refusal` of each refusal. On `shutdown` it stops accepting, lets open requests finish
/// for up to `drain`, then closes the connections still open and returns.
///
/// A TLS handshake runs in the connection's own task, bounded by `header_read_timeout`, with
/// the configuration in force when it starts; a client certificate the handshake verified
/// reaches every request of the connection as an `Arc<PeerCertificate>` extension.
pub async fn serve_with<L>(
    listener: L,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
    limits: ServeLimits,
    tls: Option<Arc<ServerTls>>,
    on_refusal: OnRefusal,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    serve_direct::<L, NoDirect>(
        listener, router, None, shutdown, drain, limits, tls, on_refusal,
    )
    .await
}

/// [`serve_with`], with `direct` answering the requests it claims without the router.
#[allow(clippy::too_many_arguments)]
pub async fn serve_direct<L, D>(
    listener: L,
    router: Router,
    direct: Option<Arc<D>>,
    shutdown: CancellationToken,
    drain: Duration,
    limits: ServeLimits,
    tls: Option<Arc<ServerTls>>,
    on_refusal: OnRefusal,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    D: Direct,
{
    let connections = Arc::new(Semaphore::new(limits.connections_max as usize));
    let front = Front {
        router,
        direct,
        shutdown,
        drain,
        limits,
        tls,
        on_refusal,
        connections,
    };
    serve_front(listener, front).await
}

/// What one listener serves, and within which bounds: the arguments of [`serve_direct`], and
/// the permits of the open connections, which the listeners of the per-core layout share.
struct Front<D> {
    router: Router,
    direct: Option<Arc<D>>,
    shutdown: CancellationToken,
    drain: Duration,
    limits: ServeLimits,
    tls: Option<Arc<ServerTls>>,
    on_refusal: OnRefusal,
    /// `limits.connections_max` permits.
    connections: Arc<Semaphore>,
}

impl<D> Clone for Front<D> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            direct: self.direct.clone(),
            shutdown: self.shutdown.clone(),
            drain: self.drain,
            limits: self.limits.clone(),
            tls: self.tls.clone(),
            on_refusal: self.on_refusal.clone(),
            connections: self.connections.clone(),
        }
    }
}

async fn serve_front<L, D>(mut listener: L, front: Front<D>) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    D: Direct,
{
    let Front {
        router,
        direct,
        shutdown,
        drain,
        limits,
        tls,
        on_refusal,
        connections,
    } = front;
    let router = router.layer(axum::Extension(Shutdown(shutdown.clone())));
    let builder = Arc::new(Builders::new(&limits));
    let closing = CancellationToken::new();
    let limits = Arc::new(limits);
    loop {
        let (io, addr) = tokio::select! {
            // Shutdown first: a connection accepted once draining began would only be refused.
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            on_refusal(Refusal::ConnectionsMax);
            drop(io);
            continue;
        };
        let mut connection = Connection {
            router: router.clone(),
            direct: direct.clone(),
            client: ClientAddr(addr),
            limits: limits.clone(),
            on_refusal: on_refusal.clone(),
            peer: None,
        };
        let (builder, shutdown, closing) = (builder.clone(), shutdown.clone(), closing.clone());
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(async move {
            match acceptor {
                None => connection.run(&builder, io, shutdown, closing).await,
                // A TLS connection's handshake and stream are several KiB more than a plain
                // one's state: boxed, so that a plain connection's task does not carry them.
                Some(acceptor) => {
                    Box::pin(async move {
                        let handshake = tokio::select! {
                            done = tokio::time::timeout(
                                connection.limits.header_read_timeout,
                                acceptor.accept(io),
                            ) => done,
                            () = closing.cancelled() => return,
                        };
                        match handshake {
                            Ok(Ok(stream)) => {
                                connection.peer =
                                    tls::peer_certificate(stream.get_ref().1).map(Arc::new);
                                connection.run(&builder, stream, shutdown, closing).await;
                            }
                            Ok(Err(error)) => {
                                (connection.on_refusal)(Refusal::TlsHandshake);
                                tracing::debug!(client = %addr, %error, "TLS handshake failed");
                            }
                            Err(_) => {
                                (connection.on_refusal)(Refusal::TlsHandshake);
                                tracing::debug!(client = %addr, "TLS handshake timed out");
                            }
                        }
                    })
                    .await;
                }
            }
            drop(permit);
        });
    }
    // The port is closed while the open connections drain: a new connection is refused at
    // once (and a load balancer tries another gateway) rather than queued where nobody will
    // accept it, and in the per-core layout the kernel stops handing this socket any.
    drop(listener);
    // Every connection holds a permit until it ends, so holding them all means none is left
    // (in the per-core layout, on any of the listeners that share the permits).
    let drained = connections.acquire_many(limits.connections_max);
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "drain timeout: closing connections with requests still open"
        );
        closing.cancel();
    }
    Ok(())
}

/// The most threads [`serve_per_core`] runs, as `runtime.worker_threads` allows.
pub const PER_CORE_THREADS_MAX: usize = crate::config::WORKER_THREADS_MAX;

/// `count` listening sockets on `addr`, all on one port with `SO_REUSEPORT`, for
/// [`serve_per_core`]: the kernel hands each new connection to one of them (by a hash of its
/// addresses and ports). With port 0 the first takes a free port and the others join it.
///
/// A port some socket already listens on is refused (`AddrInUse`), as a plain bind would
/// refuse it, even when that socket has `SO_REUSEPORT` too (another gateway, or this one's
/// older process still draining): joining it would split the port's connections between
/// two processes. The check sees the sockets already listening: two gateways that bind the
/// same port at the same instant can both pass it, so a supervisor starts them one after
/// the other. Processes of the same user could still join the port once bound (Linux
/// refuses other users).
pub fn bind_per_core(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    check_per_core_threads(count)?;
    if addr.port() != 0 {
        // Without SO_REUSEPORT the bind fails if anything listens on the port.
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let mut port_of_all = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&port_of_all.into())?;
        // tokio's and the standard library's backlog.
        socket.listen(1024)?;
        let listener = std::net::TcpListener::from(socket);
        port_of_all = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn check_per_core_threads(count: usize) -> io::Result<()> {
    if count == 0 || count > PER_CORE_THREADS_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("between 1 and {PER_CORE_THREADS_MAX} listening sockets, not {count}"),
        ));
    }
    Ok(())
}

/// [`serve_direct`] on each of `listeners` (from [`bind_per_core`]), each on a thread of its
/// own that runs a single-threaded runtime: a connection and its requests stay on the thread
/// whose socket the kernel gave the connection to. Each thread calls `on_thread_start` with
/// its index before its runtime starts (the node makes the instance connections of its calls
/// the thread's own there). Every accepted connection gets `TCP_NODELAY` ([`with_nodelay`]).
/// The threads share `limits.connections_max` and drain together: on `shutdown` each stops
/// accepting, and its drain ends when the connections of every thread have ended, or at
/// `drain`. If one thread fails (or cannot start), `shutdown` is cancelled, so the whole node
/// stops, and the error is returned once every thread has drained. Dropping the returned
/// future stops the threads too (they drain on their own).
#[allow(clippy::too_many_arguments)]
pub async fn serve_per_core<D>(
    listeners: Vec<std::net::TcpListener>,
    router: Router,
    direct: Option<Arc<D>>,
    shutdown: CancellationToken,
    drain: Duration,
    limits: ServeLimits,
    tls: Option<Arc<ServerTls>>,
    on_refusal: OnRefusal,
    on_thread_start: Arc<dyn Fn(usize) + Send + Sync>,
) -> io::Result<()>
where
    D: Direct,
{
    use futures_util::StreamExt as _;
    check_per_core_threads(listeners.len())?;
    let stop = shutdown.child_token();
    let _stop_when_dropped = stop.clone().drop_guard();
    let front = Front {
        router,
        direct,
        shutdown: stop.clone(),
        drain,
        connections: Arc::new(Semaphore::new(limits.connections_max as usize)),
        limits,
        tls,
        on_refusal,
    };
    let mut first_error = None;
    let mut threads = futures_util::stream::FuturesUnordered::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let (done, ended) = tokio::sync::oneshot::channel();
        let (front, on_thread_start) = (front.clone(), on_thread_start.clone());
        let started = std::thread::Builder::new()
            .name(format!("switchyard-public-{index}"))
            .spawn(move || {
                on_thread_start(index);
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            listener.set_nonblocking(true)?;
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            serve_front(with_nodelay(listener), front).await
                        })
                    });
                // Nobody left to tell only if the node's task was dropped.
                let _ = done.send(served);
            });
        match started {
            Ok(_) => threads.push(ended),
            Err(error) => {
                tracing::error!(%error, "a thread of the public front could not start; stopping");
                shutdown.cancel();
                first_error = Some(error);
                break;
            }
        }
    }
    while let Some(ended) = threads.next().await {
        let served = ended.unwrap_or_else(|_| Err(io::Error::other("a public thread panicked")));
        if let Err(error) = served {
            tracing::error!(%error, "a thread of the public front failed; stopping");
            shutdown.cancel();
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The HTTP/1.1 and HTTP/2 server settings of one listener's connections.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &ServeLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            // The head timeout is the connection's own ([`head_overdue`]): hyper's armed and
            // boxed a timer for every request, and ran it while a kept-alive connection
            // waited, closing it at the head timeout rather than the idle timeout.
            .header_read_timeout(None)
            .max_buf_size(limits.http1_read_buf_bytes.max(HTTP1_READ_BUF_MIN))
            // A client that shuts its write side after a complete request still gets the answer.
            .half_close(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // The CONNECT protocol carries WebSockets over HTTP/2.
            .enable_connect_protocol()
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .initial_stream_window_size(limits.http2_stream_window_bytes)
            .initial_connection_window_size(limits.http2_connection_window_bytes)
            .max_send_buf_size(limits.http2_send_buf_bytes)
            .keep_alive_interval(limits.idle_timeout);
        Self { http1, http2 }
    }
}

/// What one connection's requests need.
struct Connection<D> {
    router: Router,
    direct: Option<Arc<D>>,
    client: ClientAddr,
    limits: Arc<ServeLimits>,
    on_refusal: OnRefusal,
    /// The client certificate its TLS handshake verified.
    peer: Option<Arc<PeerCertificate>>,
}

impl<D: Direct> Connection<D> {
    async fn run<I>(
        self,
        builders: &Builders,
        io: I,
        shutdown: CancellationToken,
        closing: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(ConnState::new());
        let mut io = Watched::new(io, state.clone());
        let on_refusal = self.on_refusal.clone();
        let idle_timeout = self.limits.idle_timeout;
        let head_timeout = self.limits.header_read_timeout;
        // Which protocol the client speaks, from its first bytes: bounded as a connection
        // without a request is (the idle timeout), and ended by shutdown.
        let http2 = tokio::select! {
            sniffed = io.sniff() => match sniffed {
                Ok(http2) => http2,
                Err(error) => {
                    tracing::trace!("connection ended before its first request: {error:#}");
                    return;
                }
            },
            () = shutdown.cancelled() => return,
            () = idle(&state, idle_timeout) => return,
            () = closing.cancelled() => return,
        };
        let this = Arc::new(self);
        let requests = state.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let this = this.clone();
            let guard = ActiveGuard::new(requests.clone());
            async move {
                let response = this.call(request, &guard.0).await;
                drop(guard);
                Ok::<_, Infallible>(response)
            }
        });
        let ends = Ends {
            state: &state,
            on_refusal: &on_refusal,
            idle_timeout,
            head_timeout: (!http2).then_some(head_timeout),
            shutdown,
            closing,
        };
        if http2 {
            let conn = pin!(builders.http2.serve_connection(TokioIo::new(io), service));
            ends.drive(conn, |conn| conn.graceful_shutdown()).await;
        } else {
            let conn = builders.http1.serve_connection(TokioIo::new(io), service);
            let conn = pin!(conn.with_upgrades());
            ends.drive(conn, |conn| conn.graceful_shutdown()).await;
        }
    }

    async fn call(&self, request: Request<Incoming>, state: &Arc<ConnState>) -> Response {
        if request.version() == Version::HTTP_11 && !request.headers().contains_key(header::HOST) {
            // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request without Host.
            return refusal_response(&GatewayError::InvalidArgument {
                field: "host",
                reason: "an HTTP/1.1 request must carry a Host header".to_owned(),
            });
        }
        let (parts, body) = request.into_parts();
        let timed = TimedBody::new(
            body,
            self.limits.body_read_timeout,
            self.on_refusal.clone(),
            state.clone(),
        );
        if let Some(direct) = &self.direct
            && direct.claims(parts.uri.path())
        {
            let request = Request::from_parts(parts, Body::new(timed));
            // Boxed: hyper keeps a connection's service future inline in the connection's
            // task, sized for its largest state, also while the connection waits idle. The
            // front's future is several KiB (the pipeline, the forwarder, the call); boxed, it
            // is held only while a request is in flight. Measured: 27.7 → 22.3 KiB per idle
            // keep-alive connection, instructions per request unchanged (47,381 → 47,235).
            return Box::pin(direct.call(request, self.client.0)).await;
        }
        let mut request = Request::from_parts(parts, Body::new(timed));
        request.extensions_mut().insert(ConnectInfo(self.client));
        if let Some(peer) = &self.peer {
            request.extensions_mut().insert(peer.clone());
        }
        match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// What ends a connection being served: its end, a shutdown or its idle timeout (each
/// first a graceful one), an HTTP/1.1 request head not complete in time, or the end of the
/// drain.
struct Ends<'a> {
    state: &'a ConnState,
    on_refusal: &'a OnRefusal,
    idle_timeout: Duration,
    /// The HTTP/1.1 head timeout; `None` on HTTP/2, whose heads are bounded by its streams.
    head_timeout: Option<Duration>,
    shutdown: CancellationToken,
    closing: CancellationToken,
}

impl Ends<'_> {
    /// Drives `conn` to its end. The rare events (shutdown, the idle and head timeouts, the
    /// end of the drain) are looked at only when one of them woke the task, not at every wake
    /// of a busy connection: polling the two cancellation futures and the idle timer on each
    /// of a request's wakes took locks, about 2 % of a forwarded request's instructions.
    async fn drive<C>(self, mut conn: Pin<&mut C>, graceful: fn(Pin<&mut C>))
    where
        C: Future<Output = hyper::Result<()>>,
    {
        let nudge = Arc::new(Nudge::default());
        let nudge_waker = std::task::Waker::from(nudge.clone());
        let mut shutdown = pin!(self.shutdown.cancelled());
        let mut closing = pin!(self.closing.cancelled());
        let mut idle = pin!(idle(self.state, self.idle_timeout));
        let head_timeout = self.head_timeout;
        let state = self.state;
        let mut head = pin!(async move {
            match head_timeout {
                Some(timeout) => head_overdue(state, timeout).await,
                None => std::future::pending().await,
            }
        });
        let mut ending = false;
        std::future::poll_fn(|cx| {
            nudge.task.register(cx.waker());
            if nudge.due.swap(false, Ordering::AcqRel) {
                let mut rare = Context::from_waker(&nudge_waker);
                if closing.as_mut().poll(&mut rare).is_ready() {
                    return Poll::Ready(());
                }
                if head.as_mut().poll(&mut rare).is_ready() {
                    // Closed at once, as a head that never completes gets no answer.
                    (self.on_refusal)(Refusal::HeaderTimeout);
                    tracing::trace!("connection ended: a request head not complete in time");
                    return Poll::Ready(());
                }
                if !ending
                    && (shutdown.as_mut().poll(&mut rare).is_ready()
                        || idle.as_mut().poll(&mut rare).is_ready())
                {
                    ending = true;
                    graceful(conn.as_mut());
                }
            }
            let result = ready!(conn.as_mut().poll(cx));
            if let Err(error) = result {
                tracing::trace!("connection ended: {error:#}");
            }
            Poll::Ready(())
        })
        .await;
    }
}

/// The waker of a connection's rare events: it notes that they are due, then wakes the
/// connection's task.
struct Nudge {
    due: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl Default for Nudge {
    /// Due at first, so that the first poll registers the rare events' wakers.
    fn default() -> Self {
        Self {
            due: AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        }
    }
}

impl std::task::Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake();
    }
}

async fn idle(state: &ConnState, timeout: Duration) {
    loop {
        let since = state.since_last_change();
        if state.active.load(Ordering::Acquire) == 0 && since >= timeout {
            return;
        }
        // Busy: look again a whole timeout later; idle: when this quiet spell reaches it.
        let wait = if state.active.load(Ordering::Acquire) > 0 {
            timeout
        } else {
            timeout - since
        };
        tokio::time::sleep(wait).await;
    }
}

/// Resolves once a request head has been arriving for `timeout`: bytes came while no
/// request was in progress, and no request started since. It looks at the clock when its
/// sleep ends, not at every byte or request: while no head is pending it sleeps a whole
/// `timeout` (a head that begins meanwhile began less than `timeout` before it wakes, so
/// the second sleep ends exactly `timeout` after the head's first byte). A connection
/// waiting for its next request is the idle timeout's, not this one's. Two heads start no
/// clock and are bounded by the idle timeout instead: one whose first bytes hyper read
/// together with the request before it (pipelined), and one after a chunked body that the
/// gateway left unread (its length unknown, its rest not told from a head).
async fn head_overdue(state: &ConnState, timeout: Duration) {
    loop {
        let wait = match state.head_pending_for() {
            Some(pending) if pending >= timeout => return,
            Some(pending) => timeout - pending,
            None => timeout,
        };
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

/// What a connection's requests and its byte stream tell each other.
struct ConnState {
    /// Requests in progress.
    active: AtomicUsize,
    /// When the connection started; `last_change_us` counts from here.
    opened: tokio::time::Instant,
    /// When a request last started or ended, in µs since `opened`.
    last_change_us: AtomicU64,
    /// Whether bytes of a request head arrived while no request was in progress.
    head_pending: AtomicBool,
    /// When the first of those bytes came, in µs since `opened`.
    head_started_us: AtomicU64,
    /// Bytes of an ended request's body that hyper has still to read and discard, which are
    /// not a head; `u64::MAX` when their count is unknown (chunked), then until the next
    /// request.
    unread_body: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            opened: tokio::time::Instant::now(),
            last_change_us: AtomicU64::new(0),
            head_pending: AtomicBool::new(false),
            head_started_us: AtomicU64::new(0),
            unread_body: AtomicU64::new(0),
        }
    }

    fn elapsed_us(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// `n` bytes arrived with no request in progress: a request head's, once what is left of
    /// an unread body is past.
    fn bytes_between_requests(&self, n: usize) {
        let unread = self.unread_body.load(Ordering::Relaxed);
        if unread == u64::MAX {
            return;
        }
        if unread > 0 {
            let n = n as u64;
            self.unread_body
                .store(unread.saturating_sub(n), Ordering::Relaxed);
            if n <= unread {
                return;
            }
        }
        self.head_bytes();
    }

    /// Bytes of a request head arrived (no request in progress): the head's clock starts
    /// with the first of them.
    fn head_bytes(&self) {
        if !self.head_pending.swap(true, Ordering::Relaxed) {
            self.head_started_us
                .store(self.elapsed_us(), Ordering::Relaxed);
        }
    }

    /// How long the pending request head has been arriving, if one is.
    fn head_pending_for(&self) -> Option<Duration> {
        if !self.head_pending.load(Ordering::Relaxed) {
            return None;
        }
        let started = self.head_started_us.load(Ordering::Relaxed);
        Some(Duration::from_micros(
            self.elapsed_us().saturating_sub(started),
        ))
    }

    fn touch(&self) {
        self.last_change_us
            .store(self.elapsed_us(), Ordering::Release);
    }

    fn since_last_change(&self) -> Duration {
        let last = Duration::from_micros(self.last_change_us.load(Ordering::Acquire));
        self.opened.elapsed().saturating_sub(last)
    }
}

/// Counts a request in progress on its connection while alive.
struct ActiveGuard(Arc<ConnState>);

impl ActiveGuard {
    fn new(state: Arc<ConnState>) -> Self {
        state.head_pending.store(false, Ordering::Relaxed);
        state.unread_body.store(0, Ordering::Relaxed);
        state.active.fetch_add(1, Ordering::AcqRel);
        state.touch();
        Self(state)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The HTTP/2 client preface (RFC 9113 §3.4): a cleartext connection or a TLS stream that
/// begins with it speaks HTTP/2; any other first bytes are HTTP/1.1.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's byte stream, noting when bytes arrive between requests. It first reads as
/// much of the HTTP/2 preface as the client sends ([`Watched::sniff`]), then gives those bytes
/// back to the first reads.
struct Watched<I> {
    inner: I,
    state: Arc<ConnState>,
    /// The first bytes, read to tell the protocol.
    first: [u8; HTTP2_PREFACE.len()],
    /// How many of `first` were read, and how many of them given back.
    first_len: usize,
    first_given: usize,
}

impl<I: AsyncRead + Unpin> Watched<I> {
    fn new(inner: I, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            first: [0; HTTP2_PREFACE.len()],
            first_len: 0,
            first_given: 0,
        }
    }

    /// Reads until the bytes differ from the HTTP/2 preface (`false`: HTTP/1.1) or complete it
    /// (`true`). A client that closes before sending anything ends the connection.
    async fn sniff(&mut self) -> io::Result<bool> {
        while self.first_len < HTTP2_PREFACE.len() {
            let n = self.inner.read(&mut self.first[self.first_len..]).await?;
            if n == 0 {
                if self.first_len == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                return Ok(false);
            }
            let read = self.first_len..self.first_len + n;
            self.first_len += n;
            self.state.head_bytes();
            if self.first[read.clone()] != HTTP2_PREFACE[read] {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first_given < self.first_len {
            let this = &mut *self;
            let rest = &this.first[this.first_given..this.first_len];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.first_given += n;
            if this.first_given == this.first_len && buf.remaining() > 0 {
                // And what the socket holds after them, so that hyper reads a request head
                // whole where it can: given the first bytes alone, it would read the rest into
                // a second reservation and keep its buffer twice the size for the
                // connection's life (docs/benchmarks.md, "Memory"). A failure or nothing to
                // read now is left for the next read.
                let _ = Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        let n = buf.filled().len() - before;
        if n > 0 && self.state.active.load(Ordering::Acquire) == 0 {
            self.state.bytes_between_requests(n);
        }
        Poll::Ready(result)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The JSON answer to a request refused before routing.
fn refusal_response(error: &GatewayError) -> Response {
    let mut response = Response::new(Body::from(error.to_json(None)));
    *response.status_mut() = http::StatusCode::from_u16(error.http_status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The error of a request body not complete within `body_read_timeout`; handlers that read
/// the whole body answer it with `request_timeout` (408).
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {timeout_ms} ms")]
pub struct BodyReadTimeout {
    pub timeout_ms: u64,
}

/// A request body that fails with [`BodyReadTimeout`] once its deadline passes.
struct TimedBody {
    inner: Incoming,
    /// Told, if the body is dropped before its end, how much of it hyper will still read
    /// ([`ConnState::unread_body`]).
    state: Arc<ConnState>,
    /// When the body must be complete: the request's start plus the timeout.
    due: tokio::time::Instant,
    /// The timer, made only once the body has to be waited for (most bodies arrive with
    /// their head and never need one).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    on_refusal: OnRefusal,
    expired: bool,
}

impl TimedBody {
    fn new(
        inner: Incoming,
        timeout: Duration,
        on_refusal: OnRefusal,
        state: Arc<ConnState>,
    ) -> Self {
        Self {
            inner,
            state,
            due: tokio::time::Instant::now() + timeout,
            deadline: None,
            timeout,
            on_refusal,
            expired: false,
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let due = self.due;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        ready!(deadline.as_mut().poll(cx));
        self.expired = true;
        (self.on_refusal)(Refusal::BodyTimeout);
        let timeout_ms = self.timeout.as_millis() as u64;
        Poll::Ready(Some(Err(Box::new(BodyReadTimeout { timeout_ms }))))
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    /// A body left unread (a request refused before its body was read): hyper reads the rest
    /// to keep the connection, after the request ended, and those bytes must not start the
    /// next head's clock.
    fn drop(&mut self) {
        if !hyper::body::Body::is_end_stream(self) {
            let rest = hyper::body::Body::size_hint(&self.inner)
                .exact()
                .unwrap_or(u64::MAX);
            self.state.unread_body.store(rest, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_and_a_plain_listener_does_not() {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let mut plain = bind().await.unwrap();
        let mut nodelay = with_nodelay(bind().await.unwrap());
        let _a = tokio::net::TcpStream::connect(plain.local_addr().unwrap())
            .await
            .unwrap();
        let _b = tokio::net::TcpStream::connect(nodelay.local_addr().unwrap())
            .await
            .unwrap();
        let (from_plain, _) = Listener::accept(&mut plain).await;
        let (from_nodelay, _) = Listener::accept(&mut nodelay).await;
        assert!(!from_plain.nodelay().unwrap());
        assert!(from_nodelay.nodelay().unwrap());
    }

    /// A `Watched` reading what `sent` writes, in the writes given, then the end.
    async fn watched(sent: &[&[u8]]) -> Watched<tokio::io::DuplexStream> {
        let (mut client, server) = tokio::io::duplex(4096);
        for chunk in sent {
            client.write_all(chunk).await.unwrap();
        }
        drop(client);
        Watched::new(server, Arc::new(ConnState::new()))
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_anything_else_http1() {
        let head: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(watched(&[HTTP2_PREFACE]).await.sniff().await.unwrap());
        assert!(!watched(&[head]).await.sniff().await.unwrap());
        // A prefix of the preface that then differs, and a prefix that ends there.
        assert!(
            !watched(&[b"PRI * HTTP/1.1\r\n"])
                .await
                .sniff()
                .await
                .unwrap()
        );
        assert!(!watched(&[b"PRI"]).await.sniff().await.unwrap());
        // The preface in pieces.
        let (a, b) = HTTP2_PREFACE.split_at(5);
        assert!(watched(&[a, b]).await.sniff().await.unwrap());
        // Nothing at all ends the connection.
        assert!(watched(&[]).await.sniff().await.is_err());
    }

    /// The rest of a body left unread, read after its request ended, starts no head clock;
    /// the bytes past it do. A rest of unknown length starts none until the next request.
    #[tokio::test]
    async fn the_rest_of_an_unread_body_is_not_a_head() {
        let state = ConnState::new();
        state.unread_body.store(10, Ordering::Relaxed);
        state.bytes_between_requests(4);
        state.bytes_between_requests(6);
        assert_eq!(state.head_pending_for(), None);
        state.bytes_between_requests(3);
        assert!(state.head_pending_for().is_some());

        let state = Arc::new(ConnState::new());
        state.unread_body.store(5, Ordering::Relaxed);
        state.bytes_between_requests(8);
        assert!(state.head_pending_for().is_some(), "3 bytes past the rest");

        let state = Arc::new(ConnState::new());
        state.unread_body.store(u64::MAX, Ordering::Relaxed);
        state.bytes_between_requests(1_000_000);
        assert_eq!(state.head_pending_for(), None);
        drop(ActiveGuard::new(state.clone()));
        state.bytes_between_requests(1);
        assert!(state.head_pending_for().is_some());
    }

    #[tokio::test]
    async fn the_first_read_gives_back_the_sniffed_bytes_with_what_follows() {
        let head: &[u8] = b"POST /sample/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
        let mut io = watched(&[head]).await;
        assert!(!io.sniff().await.unwrap());
        assert!(io.first_len > 0 && io.first_len < head.len());
        assert!(io.state.head_pending.load(Ordering::Relaxed));
        // One read returns the whole request: the sniffed bytes and the rest.
        let mut buf = [0u8; 256];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], head);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_small_read_gets_the_sniffed_bytes_over_several_reads() {
        let head: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut io = watched(&[head]).await;
        assert!(!io.sniff().await.unwrap());
        let mut got = Vec::new();
        let mut buf = [0u8; 5];
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, head);
    }
}

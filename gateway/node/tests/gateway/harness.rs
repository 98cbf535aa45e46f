//! Starting gateways and sample instances on loopback, and a small HTTP client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::serve::ListenerExt as _;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sample_service::Sample;
use serde_json::Value;
use switchyard::bus::{Bus, MemoryBus};
use switchyard::config::{Config, ControlAuth};
use switchyard::node::{Builder, Node, PublicListeners};
use switchyard::seams::{Connector, Seams, SystemClock, TokioConnector};
use switchyard_proto::forwarding::forwarding_service_server::{
    ForwardingService, ForwardingServiceServer,
};
use switchyard_proto::forwarding::{ForwardingReq, ForwardingResp};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Polls `check` every 10 ms until it holds; fails the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Gateway {
    /// The node itself, for what HTTP cannot show (its state after shutdown).
    pub node: Arc<Node>,
    public: SocketAddr,
    control: SocketAddr,
    pub node_id: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl Gateway {
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(MemoryBus::new(), configure).await
    }

    pub async fn start_on(bus: impl Bus, configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_built(bus, configure, |builder| builder).await
    }

    /// A gateway whose node is built with `build` (request or registration policies added).
    pub async fn start_built(
        bus: impl Bus,
        configure: impl FnOnce(&mut Config),
        build: impl FnOnce(Builder) -> Builder,
    ) -> Self {
        Self::start_with_connector(Arc::new(TokioConnector), bus, configure, build).await
    }

    /// A gateway that opens connections to instances through `connector`.
    pub async fn start_with_connector(
        connector: Arc<dyn Connector>,
        bus: impl Bus,
        configure: impl FnOnce(&mut Config),
        build: impl FnOnce(Builder) -> Builder,
    ) -> Self {
        let configure = |c: &mut Config, _: SocketAddr, _: SocketAddr| configure(c);
        let gw = Self::launch(connector, bus, configure, build).await;
        gw.wait_ready_probe().await;
        gw
    }

    /// A gateway whose listeners may speak TLS: not waited for (the caller knows how to reach
    /// its `/readyz`).
    pub async fn launch_tls(
        bus: impl Bus,
        configure: impl FnOnce(&mut Config),
        build: impl FnOnce(Builder) -> Builder,
    ) -> Self {
        let configure = |c: &mut Config, _: SocketAddr, _: SocketAddr| configure(c);
        Self::launch(Arc::new(TokioConnector), bus, configure, build).await
    }

    /// A gateway whose config is written knowing its public and control addresses (to allow
    /// or refuse them in its address policy).
    pub async fn start_knowing_addrs(
        bus: impl Bus,
        configure: impl FnOnce(&mut Config, SocketAddr, SocketAddr),
    ) -> Self {
        let gw = Self::launch(Arc::new(TokioConnector), bus, configure, |b| b).await;
        gw.wait_ready_probe().await;
        gw
    }

    /// A gateway serving on `bus` that may not be ready yet (its bus unreachable).
    pub async fn start_unready(bus: impl Bus, configure: impl FnOnce(&mut Config)) -> Self {
        let configure = |c: &mut Config, _: SocketAddr, _: SocketAddr| configure(c);
        Self::launch(Arc::new(TokioConnector), bus, configure, |builder| builder).await
    }

    /// A gateway in the per-core layout: its public front served by `threads` threads, each
    /// with its own socket on the port.
    pub async fn start_per_core(threads: usize, configure: impl FnOnce(&mut Config)) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let public =
            PublicListeners::PerCore(switchyard::serve::bind_per_core(addr, threads).unwrap());
        let configure = |c: &mut Config, _: SocketAddr, _: SocketAddr| configure(c);
        let gw = Self::launch_on(
            public,
            Arc::new(TokioConnector),
            MemoryBus::new(),
            configure,
            |b| b,
        )
        .await;
        gw.wait_ready_probe().await;
        gw
    }

    async fn launch(
        connector: Arc<dyn Connector>,
        bus: impl Bus,
        configure: impl FnOnce(&mut Config, SocketAddr, SocketAddr),
        build: impl FnOnce(Builder) -> Builder,
    ) -> Self {
        let public = PublicListeners::Shared(TcpListener::bind("127.0.0.1:0").await.unwrap());
        Self::launch_on(public, connector, bus, configure, build).await
    }

    async fn launch_on(
        public: PublicListeners<TcpListener>,
        connector: Arc<dyn Connector>,
        bus: impl Bus,
        configure: impl FnOnce(&mut Config, SocketAddr, SocketAddr),
        build: impl FnOnce(Builder) -> Builder,
    ) -> Self {
        let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (public_addr, control_addr) =
            (public.local_addr().unwrap(), control.local_addr().unwrap());
        let mut config = Config::default();
        config.shutdown.drain_timeout_ms = 5_000;
        // Most tests are about something else: credentials are off unless a test turns them
        // on (control_auth.rs does, with keys of its own).
        config.control.auth = ControlAuth::None;
        // The instances of these tests listen on loopback, which the address policy refuses
        // unless allowed; the gateway's own listeners stay refused.
        config.upstream.allow_addresses = vec!["127.0.0.0/8".to_owned()];
        configure(&mut config, public_addr, control_addr);
        let seams = Seams {
            connector,
            clock: Arc::new(SystemClock),
            bus: Arc::new(bus),
            seed: 7,
        };
        let shutdown = CancellationToken::new();
        let node = build(Node::builder(config, seams)).build();
        let handle = tokio::spawn(node.clone().serve_public(public, control, shutdown.clone()));
        Self {
            node_id: node.id().to_owned(),
            node,
            public: public_addr,
            control: control_addr,
            shutdown,
            handle: Some(handle),
        }
    }

    /// The control listener's address, for tests that speak raw TCP or TLS.
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// The public listener's address, for tests that speak raw TCP.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    pub fn public_url(&self) -> String {
        format!("http://{}", self.public)
    }

    pub fn control_url(&self) -> String {
        format!("http://{}", self.control)
    }

    /// The GraphQL endpoint on the public listener.
    pub fn graphql_url(&self) -> String {
        format!("http://{}/graphql", self.public)
    }

    /// The GraphQL endpoint on the control listener.
    pub fn control_graphql_url(&self) -> String {
        format!("http://{}/graphql", self.control)
    }

    /// The GraphQL-over-WebSocket endpoint on the public listener.
    pub fn graphql_ws_url(&self) -> String {
        format!("ws://{}/graphql", self.public)
    }

    pub async fn status(&self) -> Value {
        let (_, _, body) = http("GET", &format!("{}/v1/cluster", self.control_url())).await;
        serde_json::from_slice(&body).unwrap()
    }

    /// Waits for `/readyz` to answer 200, then returns the node's status.
    pub async fn wait_ready(&self) -> Value {
        self.wait_ready_probe().await;
        self.status().await
    }

    /// Waits for `/readyz` to answer 200 (which needs no credential).
    pub async fn wait_ready_probe(&self) {
        let url = format!("{}/readyz", self.public_url());
        eventually(Duration::from_secs(10), || async {
            matches!(try_http("GET", &url).await, Ok((StatusCode::OK, _, _)))
        })
        .await;
    }

    pub async fn register(&self, service: &str, id: &str, addr: &str, lease_ms: u64) {
        let url = format!(
            "{}/v1/services/{service}/instances/{id}",
            self.control_url()
        );
        let body = serde_json::json!({ "addr": addr, "lease_ms": lease_ms });
        let (status, _, body) =
            http_with("PUT", &url, &[], serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "registration failed: {body:?}");
    }

    /// Starts a graceful shutdown now; the returned future resolves once the node stopped.
    pub fn stop(mut self) -> impl std::future::Future<Output = ()> {
        self.shutdown.cancel();
        let handle = self.handle.take();
        async move {
            if let Some(handle) = handle {
                handle.await.unwrap().unwrap();
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The sample service, counting requests in flight and requests received.
#[derive(Clone)]
struct Counting {
    inner: Sample,
    in_flight: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    /// Never answers: a hung instance.
    hung: bool,
}

#[tonic::async_trait]
impl ForwardingService for Counting {
    async fn send(
        &self,
        request: tonic::Request<ForwardingReq>,
    ) -> Result<tonic::Response<ForwardingResp>, tonic::Status> {
        self.received.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.hung {
            // Counted in flight until the gateway gives up and the call is dropped.
            let _leave = scopeguard(self.in_flight.clone());
            std::future::pending::<()>().await;
        }
        let result = self.inner.send(request).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// Decrements the count when dropped.
struct Leave(Arc<AtomicUsize>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn scopeguard(count: Arc<AtomicUsize>) -> Leave {
    Leave(count)
}

pub struct Instance {
    pub addr: String,
    in_flight: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl Instance {
    pub async fn start(service: &str, id: &str) -> Self {
        Self::launch(service, id, false).await
    }

    /// An instance that accepts every call and never answers it.
    pub async fn start_hung(service: &str, id: &str) -> Self {
        Self::launch(service, id, true).await
    }

    async fn launch(service: &str, id: &str, hung: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let svc = ForwardingServiceServer::new(Counting {
            inner: Sample::new(service, id),
            in_flight: in_flight.clone(),
            received: received.clone(),
            hung,
        });
        let routes = tonic::service::Routes::new(svc).into_axum_router();
        let shutdown = CancellationToken::new();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let listener = listener.tap_io(move |_| {
            accepted.fetch_add(1, Ordering::SeqCst);
        });
        let handle = tokio::spawn(switchyard::serve::serve(
            listener,
            routes,
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        Self {
            addr,
            in_flight,
            received,
            connections,
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Connections the instance accepted (the gateway's, one per connection slot).
    pub fn connections_accepted(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests_received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Stops serving and closes the port.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    /// Stops serving, so new connections are refused, and keeps the port bound without a
    /// listener for as long as the returned guard lives: with many tests binding ports at
    /// once, another test's listener could otherwise take the port and answer where a
    /// refusal is expected.
    pub async fn stop_refusing(self) -> Refusing {
        let addr = self.addr.clone();
        self.stop().await;
        let addr: SocketAddr = addr
            .trim_start_matches("http://")
            .parse()
            .expect("an instance address is a socket address");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // Connections the instance accepted may linger in TIME_WAIT on this port.
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(addr)
            .unwrap_or_else(|e| panic!("holding the stopped instance's port {addr}: {e}"));
        Refusing { _socket: socket }
    }
}

/// A stopped instance's port, bound and not listening: connections to it are refused and no
/// other listener can take it.
#[must_use = "the port is free for any listener once this is dropped"]
pub struct Refusing {
    _socket: tokio::net::TcpSocket,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub type HttpResult = (StatusCode, HeaderMap, Bytes);

pub async fn try_http_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResult, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let call = client.request(request);
    let response = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .map_err(|_| format!("{method} {url}: no answer in 20 s"))?
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

pub async fn try_http(method: &str, url: &str) -> Result<HttpResult, String> {
    try_http_with(method, url, &[], Vec::new()).await
}

pub async fn http_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> HttpResult {
    try_http_with(method, url, headers, body).await.unwrap()
}

pub async fn http(method: &str, url: &str) -> HttpResult {
    http_with(method, url, &[], Vec::new()).await
}

/// The values of header `name` in an `/echo` answer of the sample service, in order.
pub fn echoed_header(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_owned())
        .collect()
}

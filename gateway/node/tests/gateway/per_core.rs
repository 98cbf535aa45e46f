//! The per-core layout (`runtime.layout = "per_core"`): the public front served by several
//! threads, each with its own socket on the port and its own connection to each instance;
//! the connection cap and the drain are the front's, across its threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use switchyard::serve::{NoDirect, ServeLimits, bind_per_core, serve_per_core};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::harness::{Gateway, Instance, eventually, try_http};
use crate::listener::{HEALTHZ, exchange, open_served, refusals};

/// New client connections for the tests below. The kernel spreads them over the threads' sockets
/// by a hash of their ports, so all 32 land on one of two threads with odds of 2^-31.
const CONNECTIONS: usize = 32;

#[tokio::test]
async fn the_sockets_of_the_layout_share_one_port() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let sockets = bind_per_core(any, 3).unwrap();
    let ports: Vec<u16> = sockets
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    assert_ne!(ports[0], 0);
    assert!(ports.iter().all(|&p| p == ports[0]), "{ports:?}");
    for count in [0, switchyard::serve::PER_CORE_THREADS_MAX + 1] {
        let error = bind_per_core(any, count).unwrap_err();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::InvalidInput,
            "{count}: {error}"
        );
    }
    // A layout of no socket is refused rather than served by nobody.
    let error = serve_per_core::<NoDirect>(
        Vec::new(),
        axum::Router::new(),
        None,
        CancellationToken::new(),
        Duration::from_secs(1),
        ServeLimits::default(),
        None,
        Arc::new(|_| {}),
        Arc::new(|_| {}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
}

#[tokio::test]
async fn a_port_in_use_is_refused_even_to_sockets_of_the_layout() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let group = bind_per_core(any, 2).unwrap();
    let taken = group[0].local_addr().unwrap();
    let error = bind_per_core(taken, 2).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    let plain = std::net::TcpListener::bind(any).unwrap();
    let error = bind_per_core(plain.local_addr().unwrap(), 1).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
}

#[tokio::test]
async fn the_threads_stop_when_their_serving_is_dropped() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let sockets = bind_per_core(any, 2).unwrap();
    let addr = sockets[0].local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(serve_per_core::<NoDirect>(
        sockets,
        axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" })),
        None,
        shutdown.clone(),
        Duration::from_secs(1),
        ServeLimits::default(),
        None,
        Arc::new(|_| {}),
        Arc::new(|_| {}),
    ));
    let mut stream = open_served(addr).await;
    serving.abort();
    // The threads close their sockets and, the drain over, the connection they served.
    eventually(Duration::from_secs(5), || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(exchange(&mut stream, HEALTHZ).await.is_err());
    assert!(!shutdown.is_cancelled(), "only the threads stop");
}

#[tokio::test]
async fn each_thread_forwards_on_a_connection_of_its_own() {
    let gw = Gateway::start_per_core(2, |_| {}).await;
    let inst = Instance::start("orders", "o-1").await;
    gw.register("orders", "o-1", &inst.addr, 60_000).await;
    // Each request on a connection of its own (the client opens one per call).
    for _ in 0..CONNECTIONS {
        let url = format!("{}/orders/test/echo-body", gw.public_url());
        let (status, _, body) = try_http("GET", &url).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body:?}");
    }
    assert_eq!(inst.requests_received(), CONNECTIONS);
    // One connection per thread that served; on the shared layout all calls share one.
    assert_eq!(inst.connections_accepted(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn the_threads_share_the_connection_cap() {
    const CAP: u32 = 2;
    let gw = Gateway::start_per_core(2, |c| c.public.connections_max = CAP).await;
    // The cap's connections, served (retried until the readiness probe's has ended). Whether
    // they landed on one thread or on both, a cap per thread would leave room on one.
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(open_served(gw.public_addr()).await);
    }
    let refused_before = refusals(&gw, "connections_max");
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
        let answer = exchange(&mut stream, HEALTHZ).await;
        assert!(
            answer.is_err(),
            "a connection past the cap was served: {answer:?}"
        );
    }
    for stream in &mut held {
        let answer = exchange(stream, HEALTHZ).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let refused = CONNECTIONS as u64;
    eventually(Duration::from_secs(5), || async {
        refusals(&gw, "connections_max") == refused_before + refused
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn every_thread_drains_its_requests_at_shutdown() {
    const REQUESTS: usize = CONNECTIONS;
    let gw = Gateway::start_per_core(2, |c| c.shutdown.drain_timeout_ms = 10_000).await;
    let inst = Instance::start("slow", "s-1").await;
    gw.register("slow", "s-1", &inst.addr, 60_000).await;
    let url = format!("{}/slow/test/sleep/1000", gw.public_url());
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { try_http("GET", &url).await })
        })
        .collect();
    eventually(Duration::from_secs(10), || async {
        inst.requests_in_flight() == REQUESTS
    })
    .await;
    let stopped = tokio::spawn(gw.stop());
    for request in requests {
        let (status, _, body) = request.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK, "{body:?}");
    }
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the gateway did not stop after its requests ended")
        .unwrap();
}

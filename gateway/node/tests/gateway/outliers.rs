//! Outliers beyond connect failures: hung instances are ejected after consecutive timeouts,
//! requests in flight per instance are bounded, the gateway's own shortages neither eject
//! nor evict, and requests waiting on a connection that fails share its failure.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use switchyard::bus::MemoryBus;
use switchyard::config::Config;
use switchyard::seams::{BoxFuture, Connector, Io, TokioConnector};
use switchyard::telemetry::EjectionReason;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::harness::{self, Gateway, Instance, http};

#[tokio::test]
async fn consecutive_timeouts_eject_a_hung_instance() {
    let gw = Gateway::start(|c| {
        c.upstream.timeout_ms = 200;
        c.upstream.timeouts_to_eject = 2;
        c.upstream.ejection_base_ms = 60_000;
        c.upstream.ejection_max_ms = 60_000;
    })
    .await;
    let hung = Instance::start_hung("slow", "hung").await;
    let ok = Instance::start("slow", "ok").await;
    gw.register("slow", "hung", &hung.addr, 30_000).await;
    gw.register("slow", "ok", &ok.addr, 30_000).await;
    let url = format!("{}/slow/hello", gw.public_url());
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(http("GET", &url).await.0.as_u16());
    }
    let timeouts = statuses.iter().filter(|&&s| s == 504).count();
    assert_eq!(
        timeouts, 2,
        "two timeouts eject the hung instance, and no request is sent to it after: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 504),
        "{statuses:?}"
    );
    assert_eq!(hung.requests_received(), 2);
    let metrics = gw.node.metrics();
    assert_eq!(metrics.ejections_of(EjectionReason::Timeout), 1);
    assert_eq!(metrics.ejections_of(EjectionReason::ConnectFailed), 0);
}

#[tokio::test]
async fn an_instance_at_its_in_flight_bound_is_not_chosen() {
    let gw = Gateway::start(|c| {
        c.upstream.timeout_ms = 10_000;
        c.upstream.in_flight_per_instance_max = 2;
    })
    .await;
    let hung = Instance::start_hung("busy", "hung").await;
    gw.register("busy", "hung", &hung.addr, 30_000).await;
    let url = format!("{}/busy/hello", gw.public_url());
    let pending: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { harness::try_http("GET", &url).await })
        })
        .collect();
    harness::eventually(Duration::from_secs(5), || async {
        hung.requests_in_flight() == 2
    })
    .await;

    // The only instance is full: refused at once, without reaching it.
    let (status, _, body) = http("GET", &url).await;
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(json["error"]["code"], "overloaded", "{json}");
    assert_eq!(hung.requests_received(), 2);

    // With another instance, the next request goes there.
    let ok = Instance::start("busy", "ok").await;
    gw.register("busy", "ok", &ok.addr, 30_000).await;
    for _ in 0..5 {
        assert_eq!(http("GET", &url).await.0, StatusCode::OK);
    }
    assert_eq!((hung.requests_received(), ok.requests_received()), (2, 5));
    for p in pending {
        p.abort();
    }
}

/// Fails every connect with the OS error `errno`.
struct Failing(i32);

impl Connector for Failing {
    fn connect(&self, _authority: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let errno = self.0;
        Box::pin(async move { Err(io::Error::from_raw_os_error(errno)) })
    }
}

/// Sends requests for `for_ms` through a gateway whose every connect fails with `errno`, and
/// returns the codes answered and the instance's state in the registry after.
async fn connects_failing_with(errno: i32, for_ms: u64) -> (Vec<String>, Value) {
    let configure = |c: &mut Config| {
        c.upstream.evict_after_ms = 50;
        c.upstream.ejection_base_ms = 1;
        c.upstream.ejection_max_ms = 1;
    };
    let gw =
        Gateway::start_with_connector(Arc::new(Failing(errno)), MemoryBus::new(), configure, |b| b)
            .await;
    gw.register("lonely", "l-1", "http://127.0.0.1:9", 30_000)
        .await;
    let url = format!("{}/lonely/hello", gw.public_url());
    let started = tokio::time::Instant::now();
    let mut codes = Vec::new();
    while started.elapsed() < Duration::from_millis(for_ms) && codes.len() < 5_000 {
        let (_, _, body) = http("GET", &url).await;
        let json: Value = serde_json::from_slice(&body).unwrap();
        codes.push(json["error"]["code"].as_str().unwrap_or("").to_owned());
    }
    let (_, _, body) = http("GET", &format!("{}/v1/services/lonely", gw.control_url())).await;
    let view: Value = serde_json::from_slice(&body).unwrap();
    (codes, view["instances"][0]["state"].clone())
}

#[tokio::test]
async fn the_gateways_own_shortage_neither_ejects_nor_evicts() {
    const EMFILE: i32 = 24;
    const ECONNREFUSED: i32 = 111;
    let (codes, state) = connects_failing_with(EMFILE, 300).await;
    assert!(codes.iter().all(|c| c == "overloaded"), "{codes:?}");
    assert_eq!(
        state, "live",
        "out of file descriptors here is not the instance's fault"
    );
    // The same with the instance refusing: evicted.
    let (codes, state) = connects_failing_with(ECONNREFUSED, 300).await;
    assert!(
        codes.contains(&"upstream_connect_failed".to_owned()),
        "{codes:?}"
    );
    assert_eq!(state, "evicted");
}

/// A TCP connection that, once `cut` is set, neither delivers nor sends another byte: the
/// gateway's side of a half-open connection.
struct Cuttable {
    inner: tokio::net::TcpStream,
    cut: Arc<AtomicBool>,
}

impl AsyncRead for Cuttable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cut.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct CuttableConnector(Arc<AtomicBool>);

impl Connector for CuttableConnector {
    fn connect(&self, authority: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let (authority, cut) = (authority.to_owned(), self.0.clone());
        Box::pin(async move {
            let inner = tokio::net::TcpStream::connect(authority).await?;
            Ok(Box::new(Cuttable { inner, cut }) as Box<dyn Io>)
        })
    }
}

#[tokio::test]
async fn keep_alive_pings_find_a_half_open_connection_before_the_deadline() {
    let cut = Arc::new(AtomicBool::new(false));
    let gw = Gateway::start_with_connector(
        Arc::new(CuttableConnector(cut.clone())),
        MemoryBus::new(),
        |c| {
            c.upstream.timeout_ms = 10_000;
            c.upstream.keepalive_interval_ms = 100;
            c.upstream.keepalive_timeout_ms = 100;
        },
        |b| b,
    )
    .await;
    let inst = Instance::start("quiet", "q-1").await;
    gw.register("quiet", "q-1", &inst.addr, 30_000).await;
    let url = format!("{}/quiet/test/sleep/20000", gw.public_url());
    let call = tokio::spawn(async move { http("GET", &url).await });
    harness::eventually(Duration::from_secs(5), || async {
        inst.requests_in_flight() == 1
    })
    .await;
    cut.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let (status, _, body) = call.await.unwrap();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "upstream_reset", "{json}");
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "found by the pings, not the deadline: {:?}",
        started.elapsed()
    );
}

/// Connects through tokio, except to `dead`: each dial there is counted and held until
/// `release` is set, then refused.
struct HeldThenRefused {
    dead: String,
    dials: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    released: Arc<AtomicBool>,
}

impl Connector for HeldThenRefused {
    fn connect(&self, authority: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        if authority != self.dead {
            return TokioConnector.connect(authority);
        }
        self.dials.fetch_add(1, Ordering::SeqCst);
        let (release, released) = (self.release.clone(), self.released.clone());
        Box::pin(async move {
            let notified = release.notified();
            if !released.load(Ordering::SeqCst) {
                notified.await;
            }
            Err(io::Error::from(io::ErrorKind::ConnectionRefused))
        })
    }
}

/// The requests in flight on the REST front, read from the gateway's metrics.
fn rest_in_flight(gw: &Gateway) -> u64 {
    let mut text = String::new();
    gw.node.metrics().encode(&mut text);
    text.lines()
        .find(|l| l.starts_with("switchyard_http_requests_in_flight{front=\"rest\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn requests_waiting_on_a_failed_connect_share_its_failure() {
    const WAITING: usize = 4;
    let dead = "127.0.0.1:9";
    let dials = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let released = Arc::new(AtomicBool::new(false));
    let connector = HeldThenRefused {
        dead: dead.to_owned(),
        dials: dials.clone(),
        release: release.clone(),
        released: released.clone(),
    };
    let gw =
        Gateway::start_with_connector(Arc::new(connector), MemoryBus::new(), |_| {}, |b| b).await;
    gw.register("shared", "dead", &format!("http://{dead}"), 30_000)
        .await;
    let url = format!("{}/shared/hello", gw.public_url());
    // Every request chooses the only instance and waits on its one connection being opened.
    let pending: Vec<_> = (0..WAITING)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http("GET", &url).await })
        })
        .collect();
    harness::eventually(Duration::from_secs(10), || async {
        rest_in_flight(&gw) == WAITING as u64
    })
    .await;
    assert_eq!(dials.load(Ordering::SeqCst), 1, "one connection for all");
    released.store(true, Ordering::SeqCst);
    release.notify_waiters();
    for p in pending {
        let (status, _, body) = p.await.unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
        assert_eq!(json["error"]["code"], "upstream_connect_failed", "{json}");
    }
    assert_eq!(
        dials.load(Ordering::SeqCst),
        1,
        "the requests that waited on the failed connection share its failure: none dials the ejected instance again"
    );
    assert_eq!(
        gw.node
            .metrics()
            .ejections_of(EjectionReason::ConnectFailed),
        1
    );

    // Past the failure's span (the wait is the point: time passing is what ends it), the
    // next request dials again: the ejection has not ended, but there is no other instance.
    tokio::time::sleep(2 * switchyard::forwarding::FAILURE_SHARED_FOR).await;
    let (status, _, _) = http("GET", &url).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

//! The bounds on slow and greedy clients at the listeners: a slow request head closes the
//! connection, a slow body is answered 408, connections past the cap are closed at once, and
//! each is counted; a client that half-closes after a complete request is answered; an
//! HTTP/1.1 request without `Host` is refused; HTTP/2 with prior knowledge still works.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard::serve::Refusal;
use switchyard::telemetry::ListenerLabel;
use switchyard::telemetry::metrics::REFUSAL_REASONS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Gateway, Instance, eventually};

/// Long enough for a loaded machine to notice, short enough for a quick test.
const SHORT_MS: u64 = 300;
/// How long past a bound the gateway may take to act on it.
const SLACK: Duration = Duration::from_secs(3);

/// Reads until the server closes the connection (or resets it), within `limit`; what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0_u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "connection still open after {limit:?}; read so far: {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends one keep-alive request on `stream` and reads its whole answer (`Content-Length`).
pub(crate) async fn exchange(stream: &mut TcpStream, request: &str) -> Result<String, String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut buf = [0_u8; 4096];
    let answer = async {
        loop {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("closed after {:?}", String::from_utf8_lossy(&out)));
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return Ok(text);
                }
            }
        }
    };
    tokio::time::timeout(SLACK, answer)
        .await
        .map_err(|_| "no answer".to_owned())?
}

pub(crate) fn refusals(gw: &Gateway, reason: &str) -> u64 {
    gw.node
        .metrics()
        .listener_refusals_of(ListenerLabel::Public, reason)
}

pub(crate) const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n";

#[tokio::test]
async fn every_refusal_reason_has_its_series() {
    let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels, REFUSAL_REASONS);
}

#[tokio::test]
async fn a_slow_request_head_closes_the_connection() {
    let gw = Gateway::start(|c| c.public.header_read_timeout_ms = SHORT_MS).await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    // More than the 24 bytes of the HTTP/2 preface, so the connection is read as HTTP/1.1.
    closed_by_the_head_timer(
        &gw,
        &mut stream,
        b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ",
    )
    .await;
    gw.stop().await;
}

/// Sends `head`, an unfinished request head, and checks that the connection is closed, not
/// answered, no sooner than about the head timeout, and counted as `header_timeout`.
async fn closed_by_the_head_timer(gw: &Gateway, stream: &mut TcpStream, head: &[u8]) {
    stream.write_all(head).await.unwrap();
    let started = tokio::time::Instant::now();
    let answer = read_until_closed(stream, SLACK).await;
    assert!(
        started.elapsed() >= Duration::from_millis(SHORT_MS / 2),
        "closed before the timeout: {answer:?}"
    );
    assert!(!answer.contains("200 OK"), "{answer:?}");
    eventually(SLACK, || async { refusals(gw, "header_timeout") == 1 }).await;
}

/// A request head that never ends holds at most `public.header_bytes_max` plus 16 KiB: past
/// that the gateway answers 431 and closes, without waiting for the head timer.
#[tokio::test]
async fn a_request_head_past_the_read_buffer_is_answered_431() {
    let gw = Gateway::start(|c| {
        c.public.header_bytes_max = 16 * 1024;
        c.public.header_read_timeout_ms = 60_000;
    })
    .await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .unwrap();
    // 64 KiB of headers with no end: more than 16 + 16 KiB, far less than hyper's own cap.
    let line = format!("X-Filler: {}\r\n", "a".repeat(1_000));
    let mut sent = 0;
    while sent < 64 * 1024 {
        if stream.write_all(line.as_bytes()).await.is_err() {
            break; // the gateway closed first
        }
        sent += line.len();
    }
    let answer = read_until_closed(&mut stream, SLACK).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_request_body_is_answered_408() {
    let gw = Gateway::start(|c| c.public.body_read_timeout_ms = SHORT_MS).await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    stream
        .write_all(
            b"POST /orders/new HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n{\"part",
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(SLACK, async {
        let mut buf = vec![0_u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .expect("no answer to a body that stopped arriving");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert_eq!(refusals(&gw, "body_timeout"), 1);
    gw.stop().await;
}

/// Opens a connection that the gateway serves, retrying while earlier connections (the
/// harness's readiness checks) still hold their places.
pub(crate) async fn open_served(addr: SocketAddr) -> TcpStream {
    let deadline = tokio::time::Instant::now() + SLACK;
    loop {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        match exchange(&mut stream, HEALTHZ).await {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => return stream,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "no connection served: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_and_counted() {
    const CAP: u32 = 3;
    let gw = Gateway::start(|c| c.public.connections_max = CAP).await;
    let mut open = Vec::new();
    for _ in 0..CAP {
        open.push(open_served(gw.public_addr()).await);
    }
    let refused_before = refusals(&gw, "connections_max");
    let mut extra = TcpStream::connect(gw.public_addr()).await.unwrap();
    let _ = extra.write_all(HEALTHZ.as_bytes()).await;
    let answer = read_until_closed(&mut extra, SLACK).await;
    assert_eq!(answer, "", "a connection past the cap was served");
    assert_eq!(refusals(&gw, "connections_max"), refused_before + 1);
    for stream in &mut open {
        let answer = exchange(stream, HEALTHZ).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_draining_listener_refuses_new_connections_and_finishes_its_requests() {
    let gw = Gateway::start(|c| c.shutdown.drain_timeout_ms = 10_000).await;
    let inst = Instance::start("slow", "s-1").await;
    gw.register("slow", "s-1", &inst.addr, 10_000).await;
    let public = gw.public_addr();
    let url = format!("{}/slow/test/sleep/1500", gw.public_url());
    let request = tokio::spawn(async move { crate::harness::try_http("GET", &url).await });
    eventually(SLACK, || async { inst.requests_in_flight() == 1 }).await;
    let stopped = tokio::spawn(gw.stop());
    // The port closes when draining begins, while the request is still in flight.
    eventually(SLACK, || async {
        TcpStream::connect(public).await.is_err()
    })
    .await;
    assert_eq!(
        inst.requests_in_flight(),
        1,
        "the request ended before the port closed"
    );
    let (status, _, body) = request.await.unwrap().unwrap();
    assert_eq!(status, http::StatusCode::OK, "{body:?}");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the gateway did not stop after its request ended")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_is_answered() {
    let gw = Gateway::start(|_| {}).await;
    let inst = Instance::start("slow", "s-1").await;
    gw.register("slow", "s-1", &inst.addr, 10_000).await;
    for path in ["/healthz", "/slow/test/sleep/200"] {
        let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let answer = read_until_closed(&mut stream, SLACK).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn an_http_1_1_request_without_host_is_refused() {
    let gw = Gateway::start(|_| {}).await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    let answer = exchange(&mut stream, "GET /orders/1 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"code\":\"invalid_argument\""), "{answer}");
    assert!(answer.contains("invalid host"), "{answer}");
    // HTTP/1.0 may omit it.
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    let answer = exchange(&mut stream, "GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    gw.stop().await;
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let gw = Gateway::start(|_| {}).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let uri = format!("{}/healthz", gw.public_url());
    let response = client
        .get(uri.parse().unwrap())
        .await
        .expect("an HTTP/2 request");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), http::StatusCode::OK);
    let _ = response.into_body().collect().await.unwrap();
    gw.stop().await;
}

/// An HTTP/2 client may keep `http2_max_concurrent_streams` streams open on one connection,
/// and no more: the gateway says so in its SETTINGS, and a third stream past a limit of two
/// is held back until one ends.
#[tokio::test]
async fn http2_streams_past_the_limit_wait() {
    // The control listener's registrations read their whole body before answering, so a
    // stream whose body never ends stays open (a handler that answers without reading ends
    // the stream with a reset).
    let gw = Gateway::start(|c| c.control.http2_max_concurrent_streams = 2).await;
    let control = gw.control_url();
    let tcp = TcpStream::connect(control.trim_start_matches("http://"))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    // The gateway's SETTINGS state the limit.
    eventually(SLACK, || {
        let max = client.current_max_send_streams();
        async move { max != usize::MAX }
    })
    .await;
    assert_eq!(client.current_max_send_streams(), 2);
    let put = || {
        http::Request::put(format!("{control}/v1/services/s/instances/i"))
            .body(())
            .unwrap()
    };
    // Two registrations whose bodies never end hold the two streams open.
    let (_, mut first) = client.send_request(put(), false).unwrap();
    let mut client = client.ready().await.unwrap();
    let (_, _second) = client.send_request(put(), false).unwrap();
    let mut client = client.ready().await.unwrap();
    // A complete registration: held back by the client until the gateway allows a third
    // stream, so not answered while the two stay open.
    let (third, mut body) = client.send_request(put(), false).unwrap();
    body.send_data(Bytes::from_static(br#"{"addr":"127.0.0.1:9"}"#), true)
        .unwrap();
    tokio::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third stream was served beside two unfinished ones"
    );
    // Ending one stream makes room, and the third is answered.
    first.send_data(Bytes::new(), true).unwrap();
    let answer = tokio::time::timeout(SLACK, third)
        .await
        .expect("the third stream is served once one ended")
        .unwrap();
    assert_eq!(answer.status(), http::StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let gw = Gateway::start(|c| {
        c.public.idle_timeout_ms = SHORT_MS;
        c.public.header_read_timeout_ms = 60_000;
    })
    .await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    let answer = exchange(&mut stream, HEALTHZ).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let started = tokio::time::Instant::now();
    let after = read_until_closed(&mut stream, SLACK).await;
    assert_eq!(after, "");
    assert!(started.elapsed() >= Duration::from_millis(SHORT_MS / 2));
    gw.stop().await;
}

/// A kept-alive HTTP/1.1 connection waiting for its next request is the idle timeout's, not
/// the head timeout's (hyper's own head timer closed it at the head timeout): it outlives
/// several head timeouts, serves its next request, and is then closed idle, with no refusal.
#[tokio::test]
async fn a_kept_alive_connection_waits_for_the_idle_timeout_not_the_head_timeout() {
    let gw = Gateway::start(|c| {
        c.public.idle_timeout_ms = 8 * SHORT_MS;
        c.public.header_read_timeout_ms = SHORT_MS;
    })
    .await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    let answer = exchange(&mut stream, HEALTHZ).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Three head timeouts pass with the connection open.
    let mut buf = [0_u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(3 * SHORT_MS), stream.read(&mut buf));
    assert!(
        read.await.is_err(),
        "the connection ended or sent bytes while idle"
    );
    let answer = exchange(&mut stream, HEALTHZ).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let started = tokio::time::Instant::now();
    assert_eq!(read_until_closed(&mut stream, SLACK + SLACK).await, "");
    assert!(started.elapsed() >= Duration::from_millis(4 * SHORT_MS));
    assert_eq!(refusals(&gw, "header_timeout"), 0);
    gw.stop().await;
}

/// A second request head on a kept-alive connection gets the head timeout from its first
/// byte, as the first did.
#[tokio::test]
async fn a_slow_second_request_head_closes_the_connection() {
    let gw = Gateway::start(|c| {
        c.public.idle_timeout_ms = 60_000;
        c.public.header_read_timeout_ms = SHORT_MS;
    })
    .await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    let answer = exchange(&mut stream, HEALTHZ).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    closed_by_the_head_timer(&gw, &mut stream, b"GET /healthz HTTP/1.1\r\nHo").await;
    gw.stop().await;
}

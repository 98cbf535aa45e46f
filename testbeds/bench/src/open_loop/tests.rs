use super::*;

use axum::Router;
use axum::routing::get;

/// A server on loopback whose `GET /` answers at once, except that every request arriving
/// between `stall_from` and `stall_to` (from the server's start) is held until `stall_to`: a
/// pause of the whole server, as a garbage collection or a descheduled process makes.
async fn stalling_server(stall_from: Duration, stall_to: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Instant::now();
    let app = Router::new().route(
        "/",
        get(move || async move {
            let now = Instant::now();
            if now >= started + stall_from && now < started + stall_to {
                tokio::time::sleep_until(started + stall_to).await;
            }
            "ok"
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn plan(addr: SocketAddr, rate: Option<f64>, duration_ms: u64, drain_ms: u64) -> Plan {
    let mut plan = Plan::for_url(&format!("http://{addr}/")).unwrap();
    plan.rate = rate;
    plan.duration = Duration::from_millis(duration_ms);
    plan.drain = Duration::from_millis(drain_ms);
    plan
}

/// The point of the generator: a 300 ms stall of the server shows in the percentiles as the
/// waits of every request that fell due during it, not as one slow request. Measured from
/// the send instead (the uncorrected `service_ms`), only the request that met the stall is
/// slow, and the p90 hides it.
#[tokio::test(flavor = "current_thread")]
async fn a_stall_counts_for_every_request_due_during_it() {
    let addr = stalling_server(Duration::from_millis(300), Duration::from_millis(600)).await;
    // 200 requests a second on one connection for 1 s: about 60 fall due during the stall.
    let report = run(plan(addr, Some(200.0), 1000, 2000)).await.unwrap();
    assert_eq!(report.scheduled, 200);
    assert_eq!(
        (report.requests, report.errors, report.unanswered),
        (200, 0, 0),
        "{report:?}"
    );
    let corrected = report.latency_ms.unwrap();
    let service = report.service_ms.unwrap();
    // Of the ~60 requests due in the stall, the 20 longest waited more than 200 ms.
    assert!(corrected.p90 >= 100.0, "{report:?}");
    assert!(service.p90 * 4.0 < corrected.p90, "{report:?}");
    assert!(
        service.max >= 100.0,
        "the request that met the stall: {report:?}"
    );
}

/// The run stops at `duration + drain` whatever the server does: a server that holds every
/// request (here 30 s) does not hold the run, and what it never answered is counted.
#[tokio::test(flavor = "current_thread")]
async fn the_run_ends_at_duration_plus_drain() {
    let addr = stalling_server(Duration::ZERO, Duration::from_secs(30)).await;
    let mut p = plan(addr, Some(100.0), 300, 200);
    p.timeout = Duration::from_secs(20);
    p.connections = 2;
    let report = tokio::time::timeout(Duration::from_secs(10), run(p))
        .await
        .expect("the run outlived duration + drain by seconds")
        .unwrap();
    assert_eq!(report.scheduled, 30);
    assert_eq!((report.requests, report.unanswered), (0, 30), "{report:?}");
}

/// A request not answered within `timeout` is an error, and the connection goes on with the
/// next request on a new connection.
#[tokio::test(flavor = "current_thread")]
async fn a_request_past_its_timeout_is_an_error() {
    let addr = stalling_server(Duration::ZERO, Duration::from_millis(400)).await;
    let mut p = plan(addr, Some(20.0), 1000, 2000);
    p.timeout = Duration::from_millis(100);
    let report = tokio::time::timeout(Duration::from_secs(10), run(p))
        .await
        .unwrap()
        .unwrap();
    assert!(report.errors >= 1, "{report:?}");
    assert!(report.requests >= 10, "{report:?}");
    assert_eq!(
        report.requests + report.errors,
        report.scheduled,
        "{report:?}"
    );
    assert!(
        report
            .first_error
            .unwrap()
            .contains("no answer within 100 ms")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_closed_loop_sends_back_to_back() {
    let addr = stalling_server(Duration::ZERO, Duration::ZERO).await;
    let mut p = plan(addr, None, 300, 1000);
    p.connections = 4;
    let report = run(p).await.unwrap();
    assert_eq!(report.mode, "closed");
    assert!(report.requests > 50, "{report:?}");
    assert_eq!(report.requests, report.scheduled, "{report:?}");
}

#[test]
fn plans_out_of_bounds_are_refused() {
    let base = Plan::for_url("http://127.0.0.1:1/x").unwrap();
    assert_eq!(base.path, "/x");
    let mut p = base.clone();
    p.connections = 0;
    assert!(p.validate().unwrap_err().contains("connections"));
    let mut p = base.clone();
    p.connections = CONNECTIONS_MAX + 1;
    assert!(p.validate().is_err());
    let mut p = base.clone();
    p.rate = Some(1e9);
    p.duration = Duration::from_secs(3600);
    assert!(p.validate().unwrap_err().contains("more than"));
    let mut p = base.clone();
    p.rate = Some(f64::NAN);
    assert!(p.validate().is_err());
    let mut p = base.clone();
    p.timeout = Duration::ZERO;
    assert!(p.validate().unwrap_err().contains("timeout"));
    let mut p = base;
    p.duration = Duration::from_secs(3601);
    assert!(p.validate().is_err());
    for bad in ["https://127.0.0.1:1/", "http://localhost:80/", "not a url"] {
        assert!(Plan::for_url(bad).is_err(), "{bad}");
    }
    assert_eq!(scheduled(100.0, Duration::from_millis(305)), 31);
    assert_eq!(due(50, 100.0), Duration::from_millis(500));
}

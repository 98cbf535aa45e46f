//! `/metrics` and the trace context: what an operator sees of the requests a gateway served.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use http::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::harness::{Gateway, Instance, eventually, http, http_with};

/// The value of the sample whose line starts with `series` (name and labels, exactly).
pub(crate) fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

pub(crate) async fn scrape(gw: &Gateway) -> String {
    let (status, headers, body) = http("GET", &format!("{}/metrics", gw.control_url())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn metrics_count_requests_errors_and_the_registry() {
    let gw = Gateway::start(|c| c.upstream.attempts_max = 1).await;
    let inst = Instance::start("orders", "o-1").await;
    gw.register("orders", "o-1", &inst.addr, 10_000).await;
    gw.register("ghost", "g-1", "127.0.0.1:1", 10_000).await;

    for _ in 0..3 {
        let (status, _, _) = http("GET", &format!("{}/orders/hello", gw.public_url())).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = http(
        "POST",
        &format!("{}/orders/test/status/418", gw.public_url()),
    )
    .await;
    assert_eq!(status.as_u16(), 418);
    let (status, _, _) = http("GET", &format!("{}/ghost/x", gw.public_url())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    for path in ["/nosuch/a", "/other/b"] {
        let (status, _, _) = http("GET", &format!("{}{path}", gw.public_url())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    let m = scrape(&gw).await;
    let requests = |service: &str, method: &str, status: &str| {
        sample(
            &m,
            &format!(
                "switchyard_http_requests_total{{front=\"rest\",service=\"{service}\",method=\"{method}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(requests("orders", "GET", "200"), Some(3.0), "{m}");
    assert_eq!(requests("orders", "POST", "418"), Some(1.0), "{m}");
    assert_eq!(requests("ghost", "GET", "503"), Some(1.0), "{m}");
    // Unknown services are counted under one empty label, not one series per path.
    assert_eq!(requests("", "GET", "404"), Some(2.0), "{m}");
    assert!(!m.contains("nosuch"), "{m}");
    assert_eq!(
        sample(
            &m,
            "switchyard_http_request_duration_seconds_count{front=\"rest\",service=\"orders\"}"
        ),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "switchyard_upstream_errors_total{service=\"ghost\",kind=\"connect_failed\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "switchyard_registry_services"), Some(2.0), "{m}");
    assert_eq!(
        sample(&m, "switchyard_registry_instances"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(sample(&m, "switchyard_ready"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "switchyard_caught_up"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "switchyard_registry_changes_total{op=\"register\"}"),
        Some(2.0),
        "{m}"
    );
    // Both registrations went to the bus and came back: applied, from this node.
    assert_eq!(
        sample(&m, "switchyard_bus_events_applied_total{origin=\"local\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(sample(&m, "switchyard_bus_lag_events"), Some(0.0), "{m}");
    assert_eq!(
        sample(&m, "switchyard_http_requests_in_flight{front=\"rest\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(
        sample(&m, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6,
        "{m}"
    );
    // Every sample line belongs to a metric announced by a TYPE line.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        assert!(
            m.contains(&format!("# TYPE {name} "))
                || m.contains(&format!("# TYPE {family} histogram")),
            "{line}"
        );
    }
    gw.stop().await;
    inst.stop().await;
}

#[tokio::test]
async fn graphql_requests_are_counted_on_their_own_front() {
    let gw = Gateway::start(|_| {}).await;
    let body = serde_json::to_vec(&serde_json::json!({"query": "{ node { nodeId } }"})).unwrap();
    let (status, _, _) = http_with(
        "POST",
        &gw.graphql_url(),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let m = scrape(&gw).await;
    assert_eq!(
        sample(
            &m,
            "switchyard_http_requests_total{front=\"graphql\",service=\"\",method=\"POST\",status=\"200\"}"
        ),
        Some(1.0),
        "{m}"
    );
    gw.stop().await;
}

type Received = Arc<Mutex<Vec<Value>>>;

async fn collect(State(received): State<Received>, body: axum::body::Bytes) -> StatusCode {
    match serde_json::from_slice(&body) {
        Ok(v) => {
            received.lock().unwrap().push(v);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// Every span the collector received, flattened.
fn spans(received: &Received) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r["resourceSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn request_spans_are_exported_over_otlp_and_parent_the_services_span() {
    let received: Received = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let gw = Gateway::start(|c| {
        c.telemetry.otlp_traces_url = format!("http://{collector}/v1/traces");
        c.telemetry.export_interval_ms = 50;
    })
    .await;
    let inst = Instance::start("orders", "o-1").await;
    gw.register("orders", "o-1", &inst.addr, 10_000).await;

    let client_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (status, _, body) = http_with(
        "GET",
        &format!("{}/orders/echo", gw.public_url()),
        &[("traceparent", client_parent)],
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    let sent = echo["traceparent"].as_str().unwrap().to_owned();
    let gateway_span_id = sent.split('-').nth(2).unwrap().to_owned();
    // A request without a traceparent starts a trace of its own.
    let (status, _, body) = http("GET", &format!("{}/orders/echo", gw.public_url())).await;
    assert_eq!(status, StatusCode::OK);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    let fresh = echo["traceparent"].as_str().unwrap().to_owned();
    assert!(
        !fresh.contains("0af7651916cd43dd8448eb211c80319c"),
        "{fresh}"
    );

    eventually(Duration::from_secs(10), || async {
        spans(&received).len() >= 2
    })
    .await;
    let all = spans(&received);
    let child = all
        .iter()
        .find(|s| s["traceId"] == "0af7651916cd43dd8448eb211c80319c")
        .expect("the span of the traced request");
    assert_eq!(child["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(child["spanId"], gateway_span_id.as_str());
    assert_eq!(child["name"], "GET /orders");
    assert_eq!(child["kind"], 2);
    let start: u64 = child["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u64 = child["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end >= start && start > 1_600_000_000_000_000_000, "{child}");
    let root = all
        .iter()
        .find(|s| Some(s["traceId"].as_str().unwrap()) == fresh.split('-').nth(1))
        .expect("the span of the untraced request");
    assert!(root.get("parentSpanId").is_none(), "{root}");

    let m = scrape(&gw).await;
    assert!(
        sample(&m, "switchyard_trace_spans_total{outcome=\"exported\"}").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    gw.stop().await;
    inst.stop().await;
    server.abort();
}

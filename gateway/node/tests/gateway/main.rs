//! End-to-end tests of one or more gateway nodes with real gRPC services on loopback.

mod addresses;
mod architecture;
mod audit;
mod console;
mod control_auth;
mod graphql;
mod harness;
mod hostile;
mod listener;
mod outliers;
mod per_core;
mod policy;
mod public_jwt;
mod rate_limit;
mod shutdown;
mod telemetry;
mod tls;
mod tombstones;
mod upstream;

use std::time::Duration;

use harness::{Gateway, Instance, http, http_with};
use http::StatusCode;
use serde_json::Value;
use switchyard::bus::{GatedBus, MemoryBus};
use switchyard_proto::registry::registration_client::RegistrationClient;
use switchyard_proto::registry::{DeregisterRequest, ListRequest, RegisterRequest};

#[tokio::test]
async fn forwards_a_request_and_its_answer_unchanged() {
    let gw = Gateway::start(|_| {}).await;
    let inst = Instance::start("orders", "o-1").await;
    gw.register("orders", "o-1", &inst.addr, 10_000).await;

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (status, headers, body) = http_with(
        "POST",
        &format!("{}/orders/echo?x=1&y=%20", gw.public_url()),
        &[
            ("x-custom", "a"),
            ("x-custom", "b"),
            ("traceparent", traceparent),
            ("x-request-id", "req-42"),
            ("connection", "x-hop"),
            ("x-hop", "drop me"),
        ],
        b"payload".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-request-id"], "req-42");
    assert_eq!(headers["x-served-by"], "o-1");
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["query"], "x=1&y=%20");
    assert_eq!(echo["body"], "payload");
    assert_eq!(echo["service"], "orders");
    assert_eq!(echo["request_id"], "req-42");
    // The gateway takes part in the trace: same trace id, its own span as the service's parent.
    let sent = echo["traceparent"].as_str().unwrap();
    assert!(
        sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"), "{sent}");
    assert_ne!(sent, traceparent);
    assert_eq!(harness::echoed_header(&echo, "traceparent"), [sent]);
    assert_eq!(echo["gateway_node"], gw.node_id);
    assert!(echo["deadline_unix_ms"].as_u64().unwrap() > 0);
    let header_values = |name: &str| harness::echoed_header(&echo, name);
    assert_eq!(header_values("x-custom"), ["a", "b"]);
    assert_eq!(header_values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header_values("x-forwarded-proto"), ["http"]);
    assert!(header_values("x-hop").is_empty());
    assert!(header_values("connection").is_empty());

    // Statuses chosen by the service pass through as they are, errors included.
    let (status, _, _) = http(
        "GET",
        &format!("{}/orders/test/status/418", gw.public_url()),
    )
    .await;
    assert_eq!(status.as_u16(), 418);
    let (status, _, _) = http("GET", &format!("{}/orders/missing", gw.public_url())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn expect_error(url: &str, status: u16, code: &str) -> Value {
    expect_error_with("GET", url, &[], Vec::new(), status, code).await
}

async fn expect_error_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    status: u16,
    code: &str,
) -> Value {
    let (got, headers, body) = http_with(method, url, headers, body).await;
    let json: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{url}: body is not JSON ({e}): {body:?}"));
    assert_eq!(got.as_u16(), status, "{url}: {json}");
    assert_eq!(json["error"]["code"], code, "{url}: {json}");
    assert_eq!(json["error"]["status"], status);
    assert_eq!(headers["content-type"], "application/json");
    if let Some(id) = headers.get("x-request-id") {
        assert_eq!(json["error"]["request_id"], id.to_str().unwrap());
    }
    json
}

#[tokio::test]
async fn every_gateway_error_has_its_status_and_code() {
    let gw = Gateway::start(|c| {
        c.public.body_bytes_max = 16;
        c.public.header_bytes_max = 512;
        c.upstream.timeout_ms = 300;
    })
    .await;
    let inst = Instance::start("svc", "s-1").await;
    gw.register("svc", "s-1", &inst.addr, 10_000).await;
    let base = gw.public_url();

    expect_error(&format!("{base}/"), 404, "route_not_found").await;
    expect_error(&format!("{base}/nosuch/x"), 404, "service_not_found").await;
    expect_error(&format!("{base}/%2e%2e/x"), 404, "service_not_found").await;
    expect_error(
        &format!("{base}/svc/test/sleep/5000"),
        504,
        "upstream_timeout",
    )
    .await;
    expect_error(
        &format!("{base}/svc/test/status/99"),
        502,
        "bad_upstream_response",
    )
    .await;
    expect_error(
        &format!("{base}/svc/test/status/600"),
        502,
        "bad_upstream_response",
    )
    .await;
    expect_error(
        &format!("{base}/svc/test/bad-header"),
        502,
        "bad_upstream_response",
    )
    .await;
    let big = "x".repeat(600);
    expect_error_with(
        "GET",
        &format!("{base}/svc/hello"),
        &[("x-big", &big)],
        Vec::new(),
        431,
        "headers_too_large",
    )
    .await;
    // Announced too large: refused before the body is read. Exactly at the limit: accepted.
    expect_error_with(
        "POST",
        &format!("{base}/svc/echo"),
        &[],
        vec![b'a'; 17],
        413,
        "body_too_large",
    )
    .await;
    let (status, _, _) = http_with("POST", &format!("{base}/svc/echo"), &[], vec![b'a'; 16]).await;
    assert_eq!(status, StatusCode::OK);

    // Failed rpcs map like Envoy and grpc-gateway.
    for (grpc, http_status, code) in [
        (1, 499, "upstream_cancelled"),
        (3, 400, "upstream_invalid_argument"),
        (4, 504, "upstream_deadline_exceeded"),
        (5, 404, "upstream_not_found"),
        (7, 403, "upstream_permission_denied"),
        (8, 429, "upstream_resource_exhausted"),
        (12, 501, "upstream_unimplemented"),
        (13, 500, "upstream_internal"),
        (14, 503, "upstream_unavailable"),
        (16, 401, "upstream_unauthenticated"),
    ] {
        expect_error(
            &format!("{base}/svc/test/grpc-error/{grpc}"),
            http_status,
            code,
        )
        .await;
    }

    // A service whose every instance is gone: 503, and the request was tried, not dropped.
    let dead = Instance::start("gone", "g-1").await;
    gw.register("gone", "g-1", &dead.addr, 10_000).await;
    let _dead = dead.stop_refusing().await;
    expect_error(
        &format!("{base}/gone/hello"),
        503,
        "upstream_connect_failed",
    )
    .await;
}

#[tokio::test]
async fn an_expired_lease_means_no_live_instance() {
    let gw = Gateway::start(|c| c.registry.lease_min_ms = 100).await;
    let inst = Instance::start("brief", "b-1").await;
    gw.register("brief", "b-1", &inst.addr, 300).await;
    let url = format!("{}/brief/hello", gw.public_url());
    let (status, _, _) = http("GET", &url).await;
    assert_eq!(status, StatusCode::OK);
    harness::eventually(Duration::from_secs(5), || async {
        http("GET", &url).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    expect_error(&url, 503, "no_live_instance").await;
    // A renewal brings it back.
    gw.register("brief", "b-1", &inst.addr, 60_000).await;
    assert_eq!(http("GET", &url).await.0, StatusCode::OK);
}

#[tokio::test]
async fn killing_one_instance_leaves_the_other_serving() {
    let gw = Gateway::start(|_| {}).await;
    let a = Instance::start("pair", "a").await;
    let b = Instance::start("pair", "b").await;
    gw.register("pair", "a", &a.addr, 10_000).await;
    gw.register("pair", "b", &b.addr, 10_000).await;
    let url = format!("{}/pair/hello", gw.public_url());
    let served = served_by(&url, 50).await;
    assert_eq!(served.len(), 2, "both instances take traffic: {served:?}");

    a.stop().await;
    for i in 0..50 {
        let (status, headers, body) = http("GET", &url).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i} after the kill: {body:?}"
        );
        assert_eq!(headers["x-served-by"], "b");
    }
    // The dead instance is ejected for a while, and the control view says so.
    let (_, _, body) = http("GET", &format!("{}/v1/services/pair", gw.control_url())).await;
    let view: Value = serde_json::from_slice(&body).unwrap();
    let a_view = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance_id"] == "a")
        .unwrap();
    assert!(a_view.get("ejected_until_unix_ms").is_some(), "{view}");
}

#[tokio::test]
async fn registration_by_rest_is_idempotent_and_validated() {
    let gw = Gateway::start(|_| {}).await;
    let control = gw.control_url();
    let put = |id: &str, body: &str| {
        let url = format!("{control}/v1/services/cart/instances/{id}");
        let body = body.as_bytes().to_vec();
        async move { http_with("PUT", &url, &[("content-type", "application/json")], body).await }
    };
    let (status, _, body) = put(
        "c-1",
        r#"{"addr":"127.0.0.1:7001","metadata":{"zone":"a"},"lease_ms":5000}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let reg: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reg["addr"], "http://127.0.0.1:7001");
    assert_eq!(reg["renew_after_ms"], 1666);
    assert_eq!(reg["state"], "live");
    put(
        "c-1",
        r#"{"addr":"127.0.0.1:7001","metadata":{"zone":"a"},"lease_ms":5000}"#,
    )
    .await;
    put("c-2", r#"{"addr":"127.0.0.1:7002"}"#).await;
    let (_, _, body) = http("GET", &format!("{control}/v1/services/cart")).await;
    let view: Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<_> = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["c-1", "c-2"],
        "re-registering kept one entry; a second id joined"
    );
    assert_eq!(view["instances"][1]["lease_ms"], 30_000, "default lease");

    for (body, field) in [
        (r#"{"addr":"nope"}"#, "addr"),
        (r#"{"addr":"127.0.0.1:1","lease_ms":1}"#, "lease_ms"),
        (r#"{"addr":"127.0.0.1:1","color":"red"}"#, "body"),
        (r#"not json"#, "body"),
        (r#"{"addr":"127.0.0.1:1","kind":"evict"}"#, "kind"),
    ] {
        let json = expect_error_with(
            "PUT",
            &format!("{control}/v1/services/cart/instances/c-3"),
            &[],
            body.as_bytes().to_vec(),
            400,
            "invalid_argument",
        )
        .await;
        assert!(
            json["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {json}"
        );
    }
    expect_error_with(
        "PUT",
        &format!("{control}/v1/services/bad%20name/instances/x"),
        &[],
        br#"{"addr":"127.0.0.1:1"}"#.to_vec(),
        400,
        "invalid_argument",
    )
    .await;

    let delete = |id: &str| {
        let url = format!("{control}/v1/services/cart/instances/{id}");
        async move { http("DELETE", &url).await }
    };
    let (_, _, body) = delete("c-1").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["existed"],
        true
    );
    let (_, _, body) = delete("c-1").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["existed"],
        false
    );
    delete("c-2").await;
    expect_error(
        &format!("{control}/v1/services/cart"),
        404,
        "service_not_found",
    )
    .await;
    expect_error(
        &format!("{}/cart/x", gw.public_url()),
        404,
        "service_not_found",
    )
    .await;
    expect_error(&format!("{control}/v2/nothing"), 404, "route_not_found").await;
}

#[tokio::test]
async fn registration_by_grpc() {
    let gw = Gateway::start(|_| {}).await;
    let inst = Instance::start("grpc-svc", "g-1").await;
    let channel = tonic::transport::Endpoint::from_shared(gw.control_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RegistrationClient::new(channel);
    let request = RegisterRequest {
        service: "grpc-svc".into(),
        instance_id: "g-1".into(),
        addr: inst.addr.clone(),
        metadata: Default::default(),
        lease_ms: 9_000,
    };
    let resp = client.register(request.clone()).await.unwrap().into_inner();
    assert_eq!(resp.renew_after_ms, 3_000);
    client.renew(request.clone()).await.unwrap();
    let listed = client
        .list(ListRequest {
            service: "grpc-svc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.instances.len(), 1);
    assert_eq!(
        http("GET", &format!("{}/grpc-svc/hello", gw.public_url()))
            .await
            .0,
        StatusCode::OK
    );

    let bad = client
        .register(RegisterRequest {
            addr: "ftp://x:1".into(),
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("addr"), "{}", bad.message());

    let gone = client
        .deregister(DeregisterRequest {
            service: "grpc-svc".into(),
            instance_id: "g-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.existed);
    let listed = client
        .list(ListRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.instances.is_empty());
}

/// Sends `requests` GETs to `url`, each answered 200, and names the instances that served
/// them (`x-served-by`).
async fn served_by(url: &str, requests: usize) -> std::collections::BTreeSet<String> {
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..requests {
        let (status, headers, _) = http("GET", url).await;
        assert_eq!(status, StatusCode::OK);
        served.insert(headers["x-served-by"].to_str().unwrap().to_owned());
    }
    served
}

/// More live instances than the balancer weighs without allocating the candidates' vector
/// (16): each request still goes to one of them, not always the same, and the instances past
/// the 16th are among them.
#[tokio::test]
async fn a_service_of_more_instances_than_are_weighed_on_the_stack_is_balanced() {
    let gw = Gateway::start(|_| {}).await;
    let mut instances = Vec::new();
    for i in 0..20 {
        let id = format!("m-{i:02}");
        let inst = Instance::start("many", &id).await;
        gw.register("many", &id, &inst.addr, 10_000).await;
        instances.push(inst);
    }
    let served = served_by(&format!("{}/many/hello", gw.public_url()), 60).await;
    assert!(served.len() > 1, "every request went to {served:?}");
    assert!(served.iter().all(|id| id.starts_with("m-")), "{served:?}");
    // Equal instances are picked at random: all 60 requests miss these four with a
    // probability of (16/20)^60, about 2e-6.
    assert!(
        ["m-16", "m-17", "m-18", "m-19"]
            .iter()
            .any(|id| served.contains(*id)),
        "none of the last four instances was served: {served:?}"
    );
}

#[tokio::test]
async fn gateways_sharing_a_bus_share_the_registry_and_a_new_one_catches_up() {
    let bus = MemoryBus::new();
    let a = Gateway::start_on(bus.clone(), |c| c.node_id = "gw-a".into()).await;
    let c = Gateway::start_on(bus.clone(), |c| c.node_id = "gw-c".into()).await;
    let inst = Instance::start("shared", "s-1").await;
    a.register("shared", "s-1", &inst.addr, 10_000).await;
    for i in 0..20 {
        a.register("filler", &format!("f-{i}"), "127.0.0.1:9", 10_000)
            .await;
    }
    // Registered through A, called through C.
    let url = format!("{}/shared/hello", c.public_url());
    harness::eventually(Duration::from_secs(5), || async {
        http("GET", &url).await.0 == StatusCode::OK
    })
    .await;

    // A gateway that joins late reads the bus from the beginning and is ready only after.
    let late = Gateway::start_on(bus.clone(), |c| c.node_id = "gw-late".into()).await;
    let status = late.wait_ready().await;
    assert_eq!(status["catch_up_target"], 21);
    assert!(status["bus_position"].as_u64().unwrap() >= 21);
    let digests = [a.status().await, c.status().await, late.status().await]
        .map(|s| s["registry_digest"].as_str().unwrap().to_owned());
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
    assert_eq!(
        http("GET", &format!("{}/shared/hello", late.public_url()))
            .await
            .0,
        StatusCode::OK
    );

    // A deregistration through C removes the instance at A.
    http(
        "DELETE",
        &format!("{}/v1/services/shared/instances/s-1", c.control_url()),
    )
    .await;
    let url = format!("{}/shared/hello", a.public_url());
    harness::eventually(Duration::from_secs(5), || async {
        http("GET", &url).await.0 == StatusCode::NOT_FOUND
    })
    .await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let gw = Gateway::start(|_| {}).await;
    let inst = Instance::start("slow", "s-1").await;
    gw.register("slow", "s-1", &inst.addr, 10_000).await;
    let url = format!("{}/slow/test/sleep/400", gw.public_url());
    let in_flight = tokio::spawn(async move { http("GET", &url).await });
    // Wait until the request is inside the service, then shut the gateway down.
    harness::eventually(Duration::from_secs(5), || async {
        inst.requests_in_flight() > 0
    })
    .await;
    let ready_url = format!("{}/readyz", gw.public_url());
    let stopped = gw.stop();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    stopped.await;
    // Once stopped, the gateway accepts nothing.
    assert!(harness::try_http("GET", &ready_url).await.is_err());
}

#[tokio::test]
async fn a_registration_made_while_the_bus_is_down_is_held_and_delivered() {
    let bus = MemoryBus::new();
    let gated = GatedBus::new(bus.clone());
    let a = Gateway::start_on(gated.clone(), |c| {
        c.node_id = "gw-a".into();
        c.bus.publish_wait_ms = 100;
        c.bus.outbox_events_max = 1;
    })
    .await;
    let b = Gateway::start_on(bus.clone(), |c| c.node_id = "gw-b".into()).await;
    let inst = Instance::start("held", "h-1").await;

    gated.set_closed(true);
    let url = format!("{}/v1/services/held/instances/h-1", a.control_url());
    let body = serde_json::json!({ "addr": inst.addr, "lease_ms": 30_000 });
    let (status, _, reply) = http_with("PUT", &url, &[], serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&reply).unwrap()["published"],
        false
    );
    assert_eq!(a.status().await["outbox_pending"], 1);
    // Applied at A at once; not on the bus, so B does not know it yet.
    assert_eq!(
        http("GET", &format!("{}/held/hello", a.public_url()))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        http("GET", &format!("{}/held/hello", b.public_url()))
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    gated.set_closed(false);
    let b_url = format!("{}/held/hello", b.public_url());
    harness::eventually(Duration::from_secs(10), || async {
        http("GET", &b_url).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(a.status().await["outbox_pending"], 0);
}

#[tokio::test]
async fn a_service_unreachable_everywhere_is_evicted_cluster_wide_and_renewal_brings_it_back() {
    let bus = MemoryBus::new();
    let a = Gateway::start_on(bus.clone(), |c| {
        c.node_id = "gw-a".into();
        c.upstream.evict_after_ms = 200;
    })
    .await;
    let b = Gateway::start_on(bus.clone(), |c| c.node_id = "gw-b".into()).await;
    let inst = Instance::start("fragile", "f-1").await;
    let addr = inst.addr.clone();
    a.register("fragile", "f-1", &addr, 30_000).await;
    let _gone = inst.stop_refusing().await;

    // Requests through A fail to connect; once the instance has been unreachable for the
    // eviction wait, A evicts it, and B learns it from the bus.
    let state_at_b = || async {
        let (_, _, body) = http("GET", &format!("{}/v1/services/fragile", b.control_url())).await;
        serde_json::from_slice::<Value>(&body).unwrap()["instances"][0]["state"].clone()
    };
    let url = format!("{}/fragile/hello", a.public_url());
    harness::eventually(Duration::from_secs(10), || async {
        let (status, _, _) = http("GET", &url).await;
        assert!(matches!(status.as_u16(), 503), "{status}");
        state_at_b().await == "evicted"
    })
    .await;
    expect_error(
        &format!("{}/fragile/hello", b.public_url()),
        503,
        "no_live_instance",
    )
    .await;

    // The instance comes back and renews: live again everywhere.
    let back = Instance::start("fragile", "f-1").await;
    a.register("fragile", "f-1", &back.addr, 30_000).await;
    harness::eventually(Duration::from_secs(5), || async {
        state_at_b().await == "live"
    })
    .await;
    assert_eq!(
        http("GET", &format!("{}/fragile/hello", b.public_url()))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_instance_evicted_again_without_an_answer_waits_twice_as_long() {
    // Housekeeping runs every 100 ms, while the instance is gone from the registry between
    // its eviction and its renewal: the gateway must not forget that it evicted it.
    let gw = Gateway::start(|c| {
        c.upstream.evict_after_ms = 1_000;
        c.registry.housekeeping_interval_ms = 100;
    })
    .await;
    let inst = Instance::start("fragile", "f-1").await;
    let addr = inst.addr.clone();
    gw.register("fragile", "f-1", &addr, 30_000).await;
    let _gone = inst.stop_refusing().await;
    let url = format!("{}/fragile/hello", gw.public_url());
    let state = || async {
        let (_, _, body) = http("GET", &format!("{}/v1/services/fragile", gw.control_url())).await;
        serde_json::from_slice::<Value>(&body).unwrap()["instances"][0]["state"].clone()
    };
    // Each poll's own call is what fails and sets the eviction off, so the first eviction
    // came after the start of the poll that saw it: the gap is measured from there, which a
    // slow observation of the first eviction cannot shorten.
    let poll_started = std::cell::Cell::new(tokio::time::Instant::now());
    let evicted = || async {
        poll_started.set(tokio::time::Instant::now());
        http("GET", &url).await;
        state().await == "evicted"
    };
    harness::eventually(Duration::from_secs(10), evicted).await;
    let first = poll_started.get();
    // The instance stays out of the registry for a few housekeeping rounds (part of the
    // scenario, not a wait for a condition), then renews, still unreachable.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.register("fragile", "f-1", &addr, 30_000).await;
    assert_eq!(state().await, "live");
    harness::eventually(Duration::from_secs(10), evicted).await;
    let gap = first.elapsed();
    assert!(
        gap >= Duration::from_millis(2_000),
        "evicted again {gap:?} after the first eviction, with no answer between: the wait must have doubled to 2 s"
    );
}

#[tokio::test]
async fn one_reachable_instance_prevents_eviction() {
    // Ejections end at once, so the dead instance keeps being tried (and failing) well past
    // the eviction wait.
    let gw = Gateway::start(|c| {
        c.upstream.evict_after_ms = 50;
        c.upstream.ejection_base_ms = 1;
        c.upstream.ejection_max_ms = 1;
    })
    .await;
    let alive = Instance::start("half", "alive").await;
    let dead = Instance::start("half", "dead").await;
    gw.register("half", "alive", &alive.addr, 30_000).await;
    gw.register("half", "dead", &dead.addr, 30_000).await;
    let _dead = dead.stop_refusing().await;
    let url = format!("{}/half/hello", gw.public_url());
    let started = tokio::time::Instant::now();
    let mut requests = 0;
    while started.elapsed() < Duration::from_millis(300) && requests < 5_000 {
        assert_eq!(http("GET", &url).await.0, StatusCode::OK);
        requests += 1;
    }
    let (_, _, body) = http("GET", &format!("{}/v1/services/half", gw.control_url())).await;
    let view: Value = serde_json::from_slice(&body).unwrap();
    let states: Vec<_> = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["state"].clone())
        .collect();
    assert_eq!(
        states,
        ["live", "live"],
        "a dead instance beside a live one is ejected, not evicted: {view}"
    );
}

#[tokio::test]
async fn a_response_past_the_limit_is_a_bad_upstream_response() {
    let gw = Gateway::start(|c| c.upstream.response_body_bytes_max = 64 * 1024).await;
    let inst = Instance::start("orders", "o-1").await;
    gw.register("orders", "o-1", &inst.addr, 10_000).await;
    // The echo carries the body back, so the response is past the limit and its slack.
    let (status, _, body) = http_with(
        "POST",
        &format!("{}/orders/echo", gw.public_url()),
        &[],
        vec![b'x'; 200 * 1024],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "bad_upstream_response");
    // Which limit it broke is the log's to say; a public client learns only the code.
    assert_eq!(
        error["error"]["message"], "service \"orders\" sent an invalid response",
        "{error}"
    );
    // A small one still passes.
    let (status, _, _) = http_with(
        "POST",
        &format!("{}/orders/echo", gw.public_url()),
        &[],
        vec![b'x'; 1024],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The bound is the body's, exact: the decoding limit's room for headers is not room for
    // a longer body. The raw echo answers with the request's body as its own.
    let echo_body = format!("{}/orders/test/echo-body", gw.public_url());
    let (status, _, body) = http_with("POST", &echo_body, &[], vec![b'y'; 64 * 1024]).await;
    assert_eq!(status, StatusCode::OK, "a body of exactly the limit passes");
    assert_eq!(body.len(), 64 * 1024);
    let (status, _, body) = http_with("POST", &echo_body, &[], vec![b'y'; 64 * 1024 + 1]).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "one byte past the limit: {} bytes answered",
        body.len()
    );
    gw.stop().await;
    inst.stop().await;
}

/// A "service" that accepts a connection, reads the start of the call, and drops the
/// connection: an instance dying with the request on it.
async fn dying_instance() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            // The preface, SETTINGS, then the call's HEADERS and DATA: over 100 bytes.
            let mut read = 0;
            while read < 100 {
                match tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => read += n,
                    _ => break,
                }
            }
            drop(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_connection_broken_during_the_call_is_502_upstream_reset_and_not_retried() {
    let gw = Gateway::start(|_| {}).await;
    let (addr, dying) = dying_instance().await;
    gw.register("orders", "dies", &addr, 10_000).await;
    let (status, _, body) = http_with(
        "POST",
        &format!("{}/orders/charge", gw.public_url()),
        &[],
        b"once".to_vec(),
    )
    .await;
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{error}");
    assert_eq!(error["error"]["code"], "upstream_reset", "{error}");
    let (_, _, metrics) = http("GET", &format!("{}/metrics", gw.control_url())).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains("switchyard_upstream_errors_total{service=\"orders\",kind=\"reset\"} 1\n"),
        "{metrics}"
    );
    // Not retried: one attempt, so no retry was counted.
    assert!(
        !metrics.contains("switchyard_upstream_retries_total{service=\"orders\"}"),
        "{metrics}"
    );
    dying.abort();
    gw.stop().await;
}

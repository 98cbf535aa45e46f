//! The request pipeline's policy slot: a policy added in one place applies to REST requests
//! and to each GraphQL `call` alike, runs after the request context exists (its refusals are
//! answered with their codes, counted, and carry the request id), and keeps a refused request
//! from reaching the service.

mod refuse_header;
mod refuse_service;

use std::sync::Arc;

use http::StatusCode;
use serde_json::{Value, json};
use switchyard::bus::MemoryBus;

use crate::graphql::post;
use crate::harness::{Gateway, Instance, http, http_with};
use crate::telemetry::{sample, scrape};
use refuse_header::{HEADER, RefuseHeader};
use refuse_service::{LOCKED, RefuseService};
use switchyard::registrar::Via;
use switchyard_proto::registry::RegisterRequest;
use switchyard_proto::registry::registration_client::RegistrationClient;

async fn gateway_with_policy() -> (Gateway, Instance) {
    let gw = Gateway::start_built(
        MemoryBus::new(),
        |_| {},
        |node| node.policy(Arc::new(RefuseHeader)),
    )
    .await;
    let inst = Instance::start("sample", "i-1").await;
    gw.register("sample", "i-1", &inst.addr, 30_000).await;
    (gw, inst)
}

/// The value of the sample whose line starts with `series`, or 0.
async fn metric(gw: &Gateway, series: &str) -> f64 {
    sample(&scrape(gw).await, series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_policy_refuses_rest_requests_with_the_codes_and_headers_of_the_pipeline() {
    let (gw, inst) = gateway_with_policy().await;
    let url = format!("{}/sample/hello", gw.public_url());

    let (status, _, _) = http("GET", &url).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "no header: the policy lets it through"
    );
    assert_eq!(inst.requests_received(), 1);

    let cases = [
        ("forbidden", StatusCode::FORBIDDEN, "forbidden", None),
        (
            "unauthenticated",
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            Some(("www-authenticate", r#"Bearer realm="switchyard-test""#)),
        ),
        (
            "rate-limited",
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            Some(("retry-after", "7")),
        ),
    ];
    for (value, want_status, want_code, want_header) in cases {
        let (status, headers, body) = http_with(
            "GET",
            &url,
            &[(HEADER, value), ("x-request-id", "req-policy-1")],
            Vec::new(),
        )
        .await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, want_status, "{value}: {body}");
        assert_eq!(body["error"]["code"], want_code, "{body}");
        assert_eq!(body["error"]["request_id"], "req-policy-1", "{body}");
        assert_eq!(headers["x-request-id"], "req-policy-1");
        if let Some((name, want)) = want_header {
            assert_eq!(headers[name], want, "{value}");
        }
    }
    assert_eq!(
        inst.requests_received(),
        1,
        "a refused request never reaches the service"
    );
    let (status, _, body) = http_with("GET", &url, &[(HEADER, "reroute")], Vec::new()).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        body["error"]["code"], "internal",
        "a policy may not reroute: {body}"
    );
    assert_eq!(inst.requests_received(), 1);
    let rest =
        r#"switchyard_http_requests_total{front="rest",service="sample",method="GET",status="#;
    assert_eq!(metric(&gw, &format!(r#"{rest}"200"}}"#)).await, 1.0);
    for status in ["403", "401", "429"] {
        assert_eq!(
            metric(&gw, &format!(r#"{rest}"{status}"}}"#)).await,
            1.0,
            "refusals are counted like any answer ({status})"
        );
    }
}

#[tokio::test]
async fn the_same_policy_refuses_each_graphql_call_and_leaves_its_siblings_alone() {
    let (gw, inst) = gateway_with_policy().await;
    let query = r#"query($refuse: [HeaderInput!]!) {
        ok: call(service: "sample", path: "/hello") { status }
        refused: call(service: "sample", path: "/hello", headers: $refuse) { status }
        limited: call(service: "sample", path: "/hello", headers: [{name: "x-refuse", value: "rate-limited"}]) { status }
    }"#;
    let variables = json!({ "refuse": [{ "name": HEADER, "value": "forbidden" }] });
    let (status, body) = post(&gw.graphql_url(), query, variables).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["ok"]["status"], 200, "{body}");
    assert_eq!(body["data"]["refused"], Value::Null, "{body}");
    assert_eq!(body["data"]["limited"], Value::Null, "{body}");
    let errors = body["errors"].as_array().expect("errors");
    let at = |alias: &str| {
        errors
            .iter()
            .find(|e| e["path"][0] == alias)
            .unwrap_or_else(|| panic!("no error at {alias}: {body}"))
    };
    assert_eq!(at("refused")["extensions"]["code"], "forbidden");
    assert_eq!(at("refused")["extensions"]["status"], 403);
    assert!(at("refused")["extensions"]["requestId"].is_string());
    assert_eq!(at("limited")["extensions"]["code"], "rate_limited");
    assert_eq!(at("limited")["extensions"]["retryAfter"], 7);
    assert_eq!(
        inst.requests_received(),
        1,
        "only the sibling reached the service"
    );

    let call = r#"switchyard_http_requests_total{front="graphql_call",service="sample",method="GET",status="#;
    assert_eq!(metric(&gw, &format!(r#"{call}"200"}}"#)).await, 1.0);
    assert_eq!(metric(&gw, &format!(r#"{call}"403"}}"#)).await, 1.0);
    assert_eq!(metric(&gw, &format!(r#"{call}"429"}}"#)).await, 1.0);
    let graphql =
        r#"switchyard_http_requests_total{front="graphql",service="",method="POST",status="200"}"#;
    assert_eq!(
        metric(&gw, graphql).await,
        1.0,
        "the carrying HTTP request is counted once, under its own front"
    );
}

#[tokio::test]
async fn without_the_policy_the_header_is_just_a_header() {
    let gw = Gateway::start(|_| {}).await;
    let inst = Instance::start("sample", "i-1").await;
    gw.register("sample", "i-1", &inst.addr, 30_000).await;
    let url = format!("{}/sample/hello", gw.public_url());
    let (status, _, _) = http_with("GET", &url, &[(HEADER, "forbidden")], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inst.requests_received(), 1);
}

/// One registration path with one policy slot: REST, gRPC and GraphQL registrations all meet
/// the registration policy, with the caller's front and peer address, and are refused alike.
#[tokio::test]
async fn a_registration_policy_sees_every_front_and_refuses_alike() {
    let policy = Arc::new(RefuseService::default());
    let gw = Gateway::start_built(
        MemoryBus::new(),
        |_| {},
        |node| node.registration_policy(policy.clone()),
    )
    .await;
    let locked = format!("{LOCKED}orders");

    let url = format!("{}/v1/services/{locked}/instances/i-1", gw.control_url());
    let body = br#"{"addr": "127.0.0.1:9"}"#.to_vec();
    let (status, _, answer) = http_with("PUT", &url, &[], body).await;
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["code"], "forbidden");
    let (status, _, _) = http("DELETE", &url).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let channel = tonic::transport::Endpoint::from_shared(gw.control_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RegistrationClient::new(channel);
    let refused = client
        .register(RegisterRequest {
            service: locked.clone(),
            instance_id: "i-2".into(),
            addr: "127.0.0.1:9".into(),
            ..RegisterRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let mutation = r#"mutation($s: String!) {
        register(input: {service: $s, instanceId: "i-3", addr: "127.0.0.1:9"}) { published }
    }"#;
    let (_, answer) = post(&gw.control_graphql_url(), mutation, json!({ "s": locked })).await;
    assert_eq!(answer["data"]["register"], Value::Null, "{answer}");
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "forbidden",
        "{answer}"
    );

    // An unlocked service passes the same slot.
    gw.register("open", "i-1", "127.0.0.1:9", 30_000).await;

    let (_, _, body) = http("GET", &format!("{}/v1/services", gw.control_url())).await;
    let listing: Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = listing["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["open"], "nothing refused was applied: {listing}");

    let seen = policy.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (Via::Rest, true),
            (Via::Rest, true),
            (Via::Grpc, true),
            (Via::Graphql, true),
            (Via::Rest, true),
        ],
        "every front reaches the slot, with the caller's peer address"
    );
}

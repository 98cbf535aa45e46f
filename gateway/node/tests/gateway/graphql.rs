//! The GraphQL front over HTTP: calls through the REST path, fan-out, errors, registration,
//! and the committed schema. Limits and switches are in `limits`, subscriptions in
//! `subscriptions`, the bounds on WebSockets in `websockets`.

mod limits;
mod subscriptions;
mod websockets;

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Gateway, Instance, http, http_with};

/// Posts one operation; returns the HTTP status and the JSON body.
pub async fn post(url: &str, query: &str, variables: Value) -> (StatusCode, Value) {
    let body = serde_json::to_vec(&json!({ "query": query, "variables": variables })).unwrap();
    post_raw(url, &[("content-type", "application/json")], body).await
}

pub async fn post_raw(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, Value) {
    let (status, _, body) = http_with("POST", url, headers, body).await;
    let json =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body:?}"));
    (status, json)
}

/// The error whose path starts at the field `alias`.
fn error_at<'a>(body: &'a Value, alias: &str) -> &'a Value {
    body["errors"]
        .as_array()
        .and_then(|errors| errors.iter().find(|e| e["path"][0] == alias))
        .unwrap_or_else(|| panic!("no error at {alias}: {body}"))
}

/// The one error of a refused operation, with its code.
pub fn refused(body: &Value, code: &str) -> String {
    assert_eq!(body["data"], Value::Null, "{body}");
    let errors = body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["extensions"]["code"], code, "{body}");
    errors[0]["message"].as_str().unwrap().to_owned()
}

const SLEEP_MS: u64 = 500;

#[tokio::test]
async fn aliased_calls_fan_out_concurrently_to_several_services() {
    let gw = Gateway::start(|_| {}).await;
    let a = Instance::start("slow-a", "a-1").await;
    let b = Instance::start("slow-b", "b-1").await;
    gw.register("slow-a", "a-1", &a.addr, 10_000).await;
    gw.register("slow-b", "b-1", &b.addr, 10_000).await;
    let path = format!("/test/sleep/{SLEEP_MS}");
    let vars = json!({ "path": path });

    let started = tokio::time::Instant::now();
    let (status, one) = post(
        &gw.graphql_url(),
        "query($path: String!) { a: call(service: \"slow-a\", path: $path) { status json } }",
        vars.clone(),
    )
    .await;
    let single = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["data"]["a"]["json"]["slept_ms"], SLEEP_MS, "{one}");

    let started = tokio::time::Instant::now();
    let (_, both) = post(
        &gw.graphql_url(),
        "query($path: String!) {
           a: call(service: \"slow-a\", path: $path) { status headers { name value } }
           b: call(service: \"slow-b\", path: $path) { status headers { name value } }
         }",
        vars,
    )
    .await;
    let fan_out = started.elapsed();
    assert!(both.get("errors").is_none(), "{both}");
    let served_by = |alias: &str| -> String {
        let headers = both["data"][alias]["headers"].as_array().unwrap();
        let h = headers.iter().find(|h| h["name"] == "x-served-by").unwrap();
        h["value"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        (served_by("a"), served_by("b")),
        ("a-1".into(), "b-1".into())
    );

    let ratio = fan_out.as_secs_f64() / single.as_secs_f64();
    println!(
        "fan-out of 2 calls of {SLEEP_MS} ms: {fan_out:?}; 1 call: {single:?}; ratio {ratio:.2}"
    );
    assert!(fan_out >= Duration::from_millis(SLEEP_MS));
    assert!(
        ratio < 1.5,
        "two sibling calls took {ratio:.2}x one call: they did not run concurrently"
    );
}

#[tokio::test]
async fn a_call_is_translated_by_the_rest_rules() {
    let gw = Gateway::start(|_| {}).await;
    let inst = Instance::start("orders", "o-1").await;
    gw.register("orders", "o-1", &inst.addr, 10_000).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let query = r#"query($headers: [HeaderInput!]!) {
        echo: call(service: "orders", method: "POST", path: "/echo", query: "x=1&y=%20",
                   headers: $headers, body: "payload") { status body json requestId }
    }"#;
    let body = json!({
        "query": query,
        "variables": { "headers": [
            { "name": "X-Custom", "value": "a" },
            { "name": "x-custom", "value": "b" },
            { "name": "x-request-id", "value": "call-1" },
            { "name": "connection", "value": "x-hop" },
            { "name": "x-hop", "value": "drop me" },
        ]},
    });
    let (_, answer) = post_raw(
        &gw.graphql_url(),
        &[
            ("content-type", "application/json"),
            ("traceparent", traceparent),
            ("authorization", "Bearer for-the-gateway"),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    let result = &answer["data"]["echo"];
    assert_eq!(result["status"], 200, "{answer}");
    assert_eq!(result["requestId"], "call-1");
    let echo = &result["json"];
    assert_eq!(
        serde_json::from_str::<Value>(result["body"].as_str().unwrap()).unwrap(),
        *echo
    );
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["query"], "x=1&y=%20");
    assert_eq!(echo["body"], "payload");
    assert_eq!(echo["service"], "orders");
    assert_eq!(echo["request_id"], "call-1");
    assert_eq!(echo["gateway_node"], gw.node_id);
    // The carrier's trace, inherited, with the call's span as the service's parent.
    let sent = echo["traceparent"].as_str().unwrap();
    assert!(
        sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{sent}"
    );
    assert_ne!(sent, traceparent);
    let values = |name: &str| crate::harness::echoed_header(echo, name);
    assert_eq!(values("x-custom"), ["a", "b"]);
    assert_eq!(values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values("x-forwarded-proto"), ["http"]);
    assert_eq!(values("x-request-id"), ["call-1"]);
    assert!(values("x-hop").is_empty() && values("connection").is_empty());
    assert!(
        values("authorization").is_empty(),
        "credentials are not inherited"
    );
}

#[tokio::test]
async fn errors_carry_the_rest_code_and_a_failed_call_leaves_its_siblings() {
    let gw = Gateway::start(|_| {}).await;
    let inst = Instance::start("svc", "s-1").await;
    gw.register("svc", "s-1", &inst.addr, 10_000).await;
    let (status, body) = post(
        &gw.graphql_url(),
        r#"{
            ok: call(service: "svc", path: "/hello") { status json }
            teapot: call(service: "svc", path: "/test/status/418") { status }
            unknown: call(service: "nosuch") { status }
            down: call(service: "svc", path: "/test/grpc-error/14") { status }
            bad: call(service: "svc", path: "/test/status/99") { status }
            method: call(service: "svc", method: "GE T") { status }
            node { nodeId ready }
        }"#,
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let data = &body["data"];
    assert_eq!(data["ok"]["status"], 200, "{body}");
    assert_eq!(data["ok"]["json"]["instance"], "s-1");
    assert_eq!(
        data["teapot"]["status"], 418,
        "a service's own status is an answer"
    );
    assert_eq!(data["node"]["nodeId"], gw.node_id);
    for (alias, code, http_status) in [
        ("unknown", "service_not_found", 404),
        ("down", "upstream_unavailable", 503),
        ("bad", "bad_upstream_response", 502),
        ("method", "invalid_argument", 400),
    ] {
        assert!(data[alias].is_null(), "{alias} is null: {body}");
        let error = error_at(&body, alias);
        assert_eq!(error["extensions"]["code"], code, "{error}");
        assert_eq!(error["extensions"]["status"], http_status, "{error}");
        assert_eq!(error["extensions"]["requestId"].as_str().unwrap().len(), 32);
    }
    assert_eq!(body["errors"].as_array().unwrap().len(), 4);
}

const REGISTER: &str = r#"mutation($id: String!, $addr: String!) {
    register(input: { service: "mut", instanceId: $id, addr: $addr, leaseMs: 9000,
                      metadata: [{ key: "zone", value: "a" }] }) {
        instance { instanceId state addr leaseMs metadata { key value } }
        renewAfterMs published
    }
}"#;

#[tokio::test]
async fn mutations_run_on_the_control_listener_and_not_on_the_public_one() {
    let gw = Gateway::start(|_| {}).await;
    let vars = json!({ "id": "m-1", "addr": "127.0.0.1:7001" });
    let (_, body) = post(&gw.graphql_url(), REGISTER, vars.clone()).await;
    assert!(
        refused(&body, "not_allowed").contains("control listener"),
        "{body}"
    );
    let (_, body) = post(
        &gw.graphql_url(),
        "{ service(name: \"mut\") { name } }",
        Value::Null,
    )
    .await;
    assert!(
        body["data"]["service"].is_null(),
        "nothing was registered: {body}"
    );

    let (_, body) = post(&gw.control_graphql_url(), REGISTER, vars).await;
    let registered = &body["data"]["register"];
    assert_eq!(registered["instance"]["state"], "LIVE", "{body}");
    assert_eq!(registered["instance"]["addr"], "http://127.0.0.1:7001");
    assert_eq!(
        registered["instance"]["metadata"],
        json!([{ "key": "zone", "value": "a" }])
    );
    assert_eq!(registered["renewAfterMs"], 3_000);
    assert_eq!(registered["published"], true);
    // The REST view agrees.
    let (_, _, rest) = http("GET", &format!("{}/v1/services/mut", gw.control_url())).await;
    let rest: Value = serde_json::from_slice(&rest).unwrap();
    assert_eq!(rest["instances"][0]["instance_id"], "m-1");

    let (_, body) = post(
        &gw.control_graphql_url(),
        r#"mutation { bad: register(input: { service: "mut", instanceId: "m-2", addr: "nope" }) { published }
                      gone: deregister(service: "mut", instanceId: "m-1") { existed published } }"#,
        Value::Null,
    )
    .await;
    assert!(body["data"]["bad"].is_null());
    assert_eq!(
        error_at(&body, "bad")["extensions"]["code"],
        "invalid_argument"
    );
    assert_eq!(body["data"]["gone"]["existed"], true, "{body}");
    let (_, body) = post(&gw.graphql_url(), "{ services { name } }", Value::Null).await;
    assert_eq!(body["data"]["services"], json!([]), "{body}");

    let open = Gateway::start(|c| c.graphql.mutations_on_public = true).await;
    let vars = json!({ "id": "m-3", "addr": "127.0.0.1:7003" });
    let (_, body) = post(&open.graphql_url(), REGISTER, vars).await;
    assert_eq!(
        body["data"]["register"]["instance"]["instanceId"], "m-3",
        "{body}"
    );
}

#[test]
fn the_committed_schema_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/schema.graphql");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == switchyard::graphql::sdl(),
        "docs/schema.graphql differs from the schema in the code; regenerate it with\n  \
         cargo run -q -p switchyard -- graphql-schema > docs/schema.graphql"
    );
}

#[tokio::test]
async fn the_public_listener_shows_no_instance_address_or_metadata_unless_enabled() {
    let query = "{ services { name instances { instanceId state addr metadata { key value } } } }";
    for details in [false, true] {
        let gw = Gateway::start(|c| c.graphql.registry_details_on_public = details).await;
        let url = format!("{}/v1/services/hidden/instances/h-1", gw.control_url());
        let body = br#"{"addr":"127.0.0.1:9","metadata":{"zone":"a"}}"#.to_vec();
        assert_eq!(http_with("PUT", &url, &[], body).await.0, StatusCode::OK);
        let (_, public) = post(&gw.graphql_url(), query, json!({})).await;
        let instance = &public["data"]["services"][0]["instances"][0];
        assert_eq!(instance["instanceId"], "h-1", "{public}");
        assert_eq!(instance["state"], "LIVE");
        if details {
            assert_eq!(instance["addr"], "http://127.0.0.1:9", "{public}");
            assert_eq!(instance["metadata"][0]["value"], "a");
        } else {
            assert!(instance["addr"].is_null(), "{public}");
            assert_eq!(instance["metadata"], json!([]));
        }
        let (_, control) = post(&gw.control_graphql_url(), query, json!({})).await;
        let instance = &control["data"]["services"][0]["instances"][0];
        assert_eq!(
            instance["addr"], "http://127.0.0.1:9",
            "the control listener shows all: {control}"
        );
    }
}

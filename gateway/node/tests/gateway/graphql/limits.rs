//! What the GraphQL front refuses and what configuration turns on or off: the limits, deep
//! nesting, introspection, the GraphiQL page, and each front of the public listener.

use http::StatusCode;
use serde_json::{Value, json};

use super::{post, post_raw, refused};
use crate::harness::{Gateway, Instance, http};

#[tokio::test]
async fn limits_refuse_an_operation_before_any_call_is_made() {
    let gw = Gateway::start(|c| {
        c.graphql.calls_max = 2;
        c.graphql.depth_max = 3;
        c.graphql.complexity_max = 20;
        c.graphql.body_bytes_max = 2_000;
    })
    .await;
    let inst = Instance::start("counted", "c-1").await;
    gw.register("counted", "c-1", &inst.addr, 10_000).await;
    let url = gw.graphql_url();

    // Two calls are allowed; three (one of them through a fragment) are not, and none runs.
    let (_, body) = post(
        &url,
        r#"{ a: call(service: "counted") { status } b: call(service: "counted") { status } }"#,
        Value::Null,
    )
    .await;
    assert_eq!(body["data"]["b"]["status"], 404, "{body}");
    assert_eq!(inst.requests_received(), 2);
    let (_, body) = post(
        &url,
        r#"query { a: call(service: "counted") { status } ...more }
           fragment more on Query { b: call(service: "counted") { status }
                                    c: call(service: "counted") { status } }"#,
        Value::Null,
    )
    .await;
    let message = refused(&body, "invalid_argument");
    assert!(
        message.contains("3 call fields") && message.contains("calls_max"),
        "{message}"
    );
    assert_eq!(
        inst.requests_received(),
        2,
        "no call of a refused operation ran"
    );

    let (_, body) = post(
        &url,
        "{ services { instances { stamp { nodeId } } } }",
        Value::Null,
    )
    .await;
    assert!(
        refused(&body, "invalid_argument").contains("nested too deep"),
        "{body}"
    );
    let wide: String = (0..25)
        .map(|i| format!("n{i}: node {{ ready }} "))
        .collect();
    let (_, body) = post(&url, &format!("{{ {wide} }}"), Value::Null).await;
    assert!(
        refused(&body, "invalid_argument").contains("too complex"),
        "{body}"
    );

    // Refused before parsing: too large, not JSON, not declared JSON, a batch.
    let big = json!({ "query": format!("{{ node {{ ready }} }} #{}", "x".repeat(3_000)) });
    for (headers, body, status, code) in [
        (
            &[("content-type", "application/json")][..],
            serde_json::to_vec(&big).unwrap(),
            413,
            "body_too_large",
        ),
        (
            &[("content-type", "application/json")],
            b"{".to_vec(),
            400,
            "invalid_argument",
        ),
        (
            &[],
            br#"{"query":"{ node { ready } }"}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            &[("content-type", "application/json")],
            br#"[{"query":"{ node { ready } }"}]"#.to_vec(),
            400,
            "invalid_argument",
        ),
    ] {
        let (got, answer) = post_raw(&url, headers, body).await;
        assert_eq!(got.as_u16(), status, "{answer}");
        assert_eq!(answer["errors"][0]["extensions"]["code"], code, "{answer}");
        assert_eq!(answer["errors"][0]["extensions"]["status"], status);
    }
}

#[tokio::test]
async fn deeply_nested_operations_are_refused_without_overflowing_the_stack() {
    let gw = Gateway::start(|_| {}).await;
    // About 400 KB, within the default body limit: nesting far beyond any stack.
    let deep = format!("{}{}", "{ a ".repeat(80_000), "}".repeat(80_000));
    for query in [
        deep,
        format!(
            "{{ services(name: {}\"x\"{}) {{ name }} }}",
            "[".repeat(80_000),
            "]".repeat(80_000)
        ),
    ] {
        let (status, body) = post(&gw.graphql_url(), &query, Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        refused(&body, "invalid_argument");
    }
    let (_, body) = post(&gw.graphql_url(), "{ node { ready } }", Value::Null).await;
    assert_eq!(
        body["data"]["node"]["ready"], true,
        "the gateway still serves"
    );
}

#[tokio::test]
async fn introspection_is_answered_only_when_on() {
    let off = Gateway::start(|_| {}).await;
    let on = Gateway::start(|c| c.graphql.introspection = true).await;
    let query = "{ __schema { queryType { name } } }";
    let (_, body) = post(&off.graphql_url(), query, Value::Null).await;
    assert!(refused(&body, "not_allowed").contains("graphql.introspection"));
    let (_, body) = post(
        &off.graphql_url(),
        "{ __type(name: \"Query\") { name } }",
        Value::Null,
    )
    .await;
    refused(&body, "not_allowed");
    let (_, body) = post(&on.graphql_url(), query, Value::Null).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );
    // __typename is not introspection of the schema.
    let (_, body) = post(&off.graphql_url(), "{ __typename }", Value::Null).await;
    assert_eq!(body["data"]["__typename"], "Query", "{body}");
}

#[tokio::test]
async fn each_front_can_be_turned_off() {
    let inst = Instance::start("svc", "s-1").await;
    let graphql_only = Gateway::start(|c| c.public.rest = false).await;
    graphql_only
        .register("svc", "s-1", &inst.addr, 10_000)
        .await;
    let (status, _, body) = http("GET", &format!("{}/svc/hello", graphql_only.public_url())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "route_not_found"
    );
    let (_, body) = post(
        &graphql_only.graphql_url(),
        "{ call(service: \"svc\", path: \"/hello\") { status } }",
        Value::Null,
    )
    .await;
    assert_eq!(body["data"]["call"]["status"], 200, "{body}");

    // Without the GraphQL front, /graphql is a REST path like any other.
    let rest_only = Gateway::start(|c| c.public.graphql = false).await;
    let (status, _) = post(&rest_only.graphql_url(), "{ node { ready } }", Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = post(
        &rest_only.control_graphql_url(),
        "{ node { ready } }",
        Value::Null,
    )
    .await;
    assert_eq!(
        body["data"]["node"]["ready"], true,
        "the control listener keeps it"
    );
}

#[tokio::test]
async fn the_graphiql_page_is_served_only_when_on() {
    let off = Gateway::start(|_| {}).await;
    let (status, _, body) = http("GET", &off.graphql_url()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "not_allowed");
    let on = Gateway::start(|c| c.graphql.graphiql = true).await;
    let (status, headers, body) = http("GET", &on.graphql_url()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(String::from_utf8_lossy(&body).contains("graphiql"));
}

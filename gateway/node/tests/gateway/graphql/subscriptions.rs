//! GraphQL over WebSocket (`graphql-transport-ws`), driven by the `graphql-ws-client` crate:
//! the registry subscription across gateways that share a bus, the rules for operations sent
//! over a socket, the bound on sockets, shutdown, and a subscriber that lags.

use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use graphql_ws_client::Client;
use graphql_ws_client::graphql::GraphqlOperation;
use serde_json::{Value, json};
use switchyard::bus::MemoryBus;
use switchyard::graphql::{self, Front};
use switchyard::registrar::{Caller, Via};
use switchyard_core::event::EventKind;
use switchyard_core::registration::Registration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::harness::{Gateway, http};

/// An operation as `graphql-ws-client` sends it; responses are left as JSON.
#[derive(Debug, serde::Serialize)]
struct Op {
    query: &'static str,
    variables: Value,
}

impl GraphqlOperation for Op {
    type Response = Value;
    type Error = serde_json::Error;

    fn decode(&self, data: Value) -> Result<Value, serde_json::Error> {
        Ok(data)
    }
}

type Responses = graphql_ws_client::Subscription<Op>;

async fn connect(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

async fn subscribe(url: &str, query: &'static str, variables: Value) -> Responses {
    let socket = connect(url).await.unwrap();
    Client::build(socket)
        .subscribe(Op { query, variables })
        .await
        .unwrap()
}

/// The next response, within a bound; `None` once the stream ended.
async fn next(
    stream: &mut (impl Stream<Item = Result<Value, graphql_ws_client::Error>> + Unpin),
) -> Option<Value> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no response within 10 s")
        .map(|r| r.expect("a response that decodes"))
}

const WATCH: &str = "subscription($service: String) {
    registryChanges(service: $service, snapshot: true) {
        kind snapshot originNode instance { service instanceId state addr }
    }
}";

#[tokio::test]
async fn a_subscriber_sees_a_registration_made_through_another_gateway() {
    let bus = MemoryBus::new();
    let a = Gateway::start_on(bus.clone(), |c| {
        c.node_id = "gw-a".into();
        // Addresses are shown on the public listener only when asked for.
        c.graphql.registry_details_on_public = true;
    })
    .await;
    let b = Gateway::start_on(bus.clone(), |c| c.node_id = "gw-b".into()).await;
    a.register("watched", "w-0", "127.0.0.1:9", 60_000).await;
    let mut changes = subscribe(&a.graphql_ws_url(), WATCH, json!({ "service": "watched" })).await;
    // The snapshot comes first, so the subscription is known to be live from here on.
    let first = next(&mut changes).await.unwrap();
    let change = &first["data"]["registryChanges"];
    assert_eq!(change["snapshot"], true, "{first}");
    assert_eq!(change["instance"]["instanceId"], "w-0");
    assert_eq!(change["originNode"], "gw-a");

    b.register("other", "o-1", "127.0.0.1:11", 60_000).await;
    b.register("watched", "w-1", "127.0.0.1:10", 60_000).await;
    let second = next(&mut changes).await.unwrap();
    let change = &second["data"]["registryChanges"];
    assert_eq!(change["kind"], "REGISTER", "{second}");
    assert_eq!(change["snapshot"], false);
    assert_eq!(
        change["originNode"], "gw-b",
        "made through the other gateway"
    );
    assert_eq!(
        change["instance"]["instanceId"], "w-1",
        "the other service is filtered out"
    );
    assert_eq!(change["instance"]["state"], "LIVE");
    assert_eq!(change["instance"]["addr"], "http://127.0.0.1:10");

    http(
        "DELETE",
        &format!("{}/v1/services/watched/instances/w-1", b.control_url()),
    )
    .await;
    let third = next(&mut changes).await.unwrap();
    let change = &third["data"]["registryChanges"];
    assert_eq!(change["kind"], "DEREGISTER", "{third}");
    assert_eq!(change["instance"]["state"], "DEREGISTERED");
    assert!(change["instance"]["addr"].is_null());
}

#[tokio::test]
async fn a_local_change_is_announced_once_though_it_also_comes_back_from_the_bus() {
    let gw = Gateway::start(|_| {}).await;
    gw.register("s", "marker", "127.0.0.1:9", 60_000).await;
    let mut changes = subscribe(&gw.graphql_ws_url(), WATCH, Value::Null).await;
    let first = next(&mut changes).await.unwrap();
    assert_eq!(
        first["data"]["registryChanges"]["snapshot"], true,
        "{first}"
    );
    // The bus echoes each change back to this node, which finds it already applied: the echo
    // changes nothing and is not announced again.
    gw.register("s", "first", "127.0.0.1:9", 60_000).await;
    gw.register("s", "second", "127.0.0.1:9", 60_000).await;
    let changes = [next(&mut changes).await, next(&mut changes).await]
        .map(|r| r.unwrap()["data"]["registryChanges"].clone());
    let ids = changes.clone().map(|c| c["instance"]["instanceId"].clone());
    assert_eq!(ids, [json!("first"), json!("second")], "{changes:?}");
    assert!(changes.iter().all(|c| c["snapshot"] == false));
}

#[tokio::test]
async fn operations_over_a_socket_follow_the_same_rules() {
    let gw = Gateway::start(|_| {}).await;
    let mut answer = subscribe(&gw.graphql_ws_url(), "{ node { nodeId } }", Value::Null).await;
    let first = next(&mut answer).await.unwrap();
    assert_eq!(first["data"]["node"]["nodeId"], gw.node_id, "{first}");
    assert!(next(&mut answer).await.is_none(), "a query answers once");

    let mut refused = subscribe(
        &gw.graphql_ws_url(),
        "mutation { deregister(service: \"s\", instanceId: \"i\") { existed } }",
        Value::Null,
    )
    .await;
    let first = next(&mut refused).await.unwrap();
    assert_eq!(
        first["errors"][0]["extensions"]["code"], "not_allowed",
        "{first}"
    );
}

#[tokio::test]
async fn sockets_are_bounded_and_closed_on_shutdown() {
    let gw = Gateway::start(|c| c.graphql.websockets_max = 1).await;
    let mut changes = subscribe(&gw.graphql_ws_url(), WATCH, Value::Null).await;
    match connect(&gw.graphql_ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
        }
        other => panic!("a second socket is refused with 503, not {other:?}"),
    }
    let counted = gw.node.metrics().websocket_refusals_of(
        switchyard::telemetry::ListenerLabel::Public,
        switchyard::telemetry::WebSocketRefusal::WebsocketsMax,
    );
    assert_eq!(counted, 1);
    gw.stop().await;
    assert!(
        next(&mut changes).await.is_none(),
        "the stream ends at shutdown"
    );
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_and_the_stream_ends() {
    // Served, so that it catches up with its (empty) bus: a node that has not refuses changes.
    let gw = Gateway::start(|c| {
        c.bus.publish_wait_ms = 1;
        // More instances of one service than the default quota.
        c.registry.instances_per_service_max = 2 * switchyard::store::CHANGES_BUFFERED_MAX;
    })
    .await;
    let node = gw.node.clone();
    let schema = graphql::schema(node.graphql_backend(), Front::Control);
    let mut stream = schema.execute_stream("subscription { registryChanges { kind } }");
    // The first poll runs the resolver, which subscribes; nothing has changed yet.
    assert!(stream.next().now_or_never().is_none());
    let changes = switchyard::store::CHANGES_BUFFERED_MAX + 10;
    for i in 0..changes {
        let registration = Registration {
            service: "flood".into(),
            instance_id: format!("f-{i}"),
            addr: "127.0.0.1:9".into(),
            ..Registration::default()
        };
        node.registrar()
            .register(
                &mut Caller::new(Via::Graphql, None, Default::default()),
                registration,
                EventKind::Register,
            )
            .await
            .unwrap();
    }
    let response = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the lag is reported at once")
        .unwrap();
    let errors = &response.errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let code = errors[0]
        .extensions
        .as_ref()
        .and_then(|e| e.get("code"))
        .cloned();
    assert_eq!(code, Some(async_graphql_value("subscription_lagged")));
    assert!(errors[0].message.contains("re-read the registry"));
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    assert!(matches!(end, Ok(None)), "the stream ends after the lag");
}

fn async_graphql_value(s: &str) -> async_graphql::Value {
    async_graphql::Value::String(s.to_owned())
}

/// Cross-site WebSocket hijacking: a browser page from another origin must not open a socket
/// to the control listener (where mutations run); the gateway's own origin and configured
/// origins may, and clients that send no Origin are not browsers.
#[tokio::test]
async fn websocket_upgrades_from_foreign_origins_are_refused() {
    let gw = Gateway::start(|c| {
        c.graphql.websocket_origins = vec!["https://console.example.com".into()];
    })
    .await;
    let url = format!("{}/graphql", gw.control_url());
    let host = gw.control_url().trim_start_matches("http://").to_owned();
    let own_origin = format!("http://{host}");
    let upgrade = |origin: Option<String>| {
        let url = url.clone();
        async move {
            let mut headers = vec![
                ("connection", "upgrade".to_owned()),
                ("upgrade", "websocket".to_owned()),
                ("sec-websocket-version", "13".to_owned()),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
                ("sec-websocket-protocol", "graphql-transport-ws".to_owned()),
            ];
            if let Some(origin) = origin {
                headers.push(("origin", origin));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            crate::harness::try_http_with("GET", &url, &headers, Vec::new())
                .await
                .map(|(status, _, body)| (status.as_u16(), body))
        }
    };
    let (status, body) = upgrade(Some("http://evil.example".into())).await.unwrap();
    assert_eq!(status, 403, "{body:?}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json["errors"][0]["extensions"]["code"], "not_allowed",
        "{json}"
    );
    for allowed in [
        None,
        Some(own_origin),
        Some("https://console.example.com".to_owned()),
    ] {
        let (status, body) = upgrade(allowed.clone()).await.unwrap();
        assert_eq!(status, 101, "{allowed:?}: {body:?}");
    }
}

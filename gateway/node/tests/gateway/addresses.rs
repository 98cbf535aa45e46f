//! The address policy on real sockets (registrations refused on every front, host names
//! checked at each connection), forwarding loops through one and two gateways, and error
//! bodies that tell a public client nothing of the inside.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use switchyard::bus::MemoryBus;
use switchyard::seams::{BoxFuture, Connector, Io};
use switchyard::telemetry::AddressStage;
use switchyard_proto::registry::RegisterRequest;
use switchyard_proto::registry::registration_client::RegistrationClient;

use crate::graphql::post;
use crate::harness::{Gateway, Instance, http, http_with};

/// Addresses every refused class holds, as registrations send them.
const REFUSED: [&str; 8] = [
    "127.0.0.1:7001",
    "[::1]:7001",
    "169.254.169.254:80",
    "[fe80::1]:80",
    "0.0.0.0:7001",
    "224.0.0.1:7001",
    "255.255.255.255:7001",
    "[::ffff:127.0.0.1]:7001",
];

async fn register_rest(gw: &Gateway, id: &str, addr: &str) -> (StatusCode, Value) {
    let url = format!("{}/v1/services/svc/instances/{id}", gw.control_url());
    let body = serde_json::to_vec(&json!({ "addr": addr })).unwrap();
    let (status, _, body) = http_with("PUT", &url, &[], body).await;
    (status, serde_json::from_slice(&body).unwrap())
}

async fn instances(gw: &Gateway) -> usize {
    let (_, body) = post(
        &gw.control_graphql_url(),
        "{ services { instances { instanceId } } }",
        Value::Null,
    )
    .await;
    body["data"]["services"].as_array().map_or(0, |s| {
        s.iter()
            .map(|s| s["instances"].as_array().unwrap().len())
            .sum()
    })
}

#[tokio::test]
async fn refused_addresses_are_refused_on_every_front_and_change_nothing() {
    let gw = Gateway::start(|c| c.upstream.allow_addresses.clear()).await;
    let channel = tonic::transport::Endpoint::from_shared(gw.control_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = RegistrationClient::new(channel);
    for (i, addr) in REFUSED.iter().enumerate() {
        let (status, body) = register_rest(&gw, &format!("r-{i}"), addr).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{addr}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("address policy"), "{message}");

        let refused = grpc
            .register(RegisterRequest {
                service: "svc".into(),
                instance_id: format!("g-{i}"),
                addr: (*addr).to_owned(),
                metadata: Default::default(),
                lease_ms: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{addr}");

        let (_, body) = post(
            &gw.control_graphql_url(),
            r#"mutation($id: String!, $addr: String!) {
                register(input: { service: "svc", instanceId: $id, addr: $addr }) { published } }"#,
            json!({ "id": format!("q-{i}"), "addr": addr }),
        )
        .await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "invalid_argument",
            "{body}"
        );
    }
    assert!(body_says(
        &register_rest(&gw, "m", "169.254.169.254:80").await.1,
        "link-local"
    ));
    assert_eq!(instances(&gw).await, 0, "nothing was registered");
    let counted = gw
        .node
        .metrics()
        .address_refusals_at(AddressStage::Register);
    assert_eq!(counted, 3 * REFUSED.len() as u64 + 1);

    // An ordinary private address is registered.
    let (status, body) = register_rest(&gw, "ok", "10.0.0.1:7001").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn body_says(body: &Value, text: &str) -> bool {
    body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(text))
}

#[tokio::test]
async fn the_allow_list_admits_loopback_but_not_the_gateways_own_listeners() {
    let gw = Gateway::start(|_| {}).await;
    let inst = Instance::start("svc", "s-1").await;
    gw.register("svc", "s-1", &inst.addr, 10_000).await;
    let (status, _, _) = http("GET", &format!("{}/svc/x", gw.public_url())).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the sample answers 404 itself"
    );
    assert_eq!(inst.requests_received(), 1);
    for (id, own) in [("pub", gw.public_url()), ("ctl", gw.control_url())] {
        let (status, body) = register_rest(&gw, id, &own).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{own}: {body}");
        assert!(body_says(&body, "own listeners"), "{body}");
    }
    assert_eq!(instances(&gw).await, 1);
}

/// Resolves names from a table and records every address it dials.
#[derive(Clone, Default)]
struct TableConnector {
    table: Arc<Mutex<BTreeMap<String, Vec<SocketAddr>>>>,
    dialed: Arc<Mutex<Vec<String>>>,
}

impl Connector for TableConnector {
    fn connect(&self, authority: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        self.dialed.lock().unwrap().push(authority.to_owned());
        let authority = authority.to_owned();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(authority).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }

    fn resolve(&self, host: &str, _port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let found = self.table.lock().unwrap().get(host).cloned();
        Box::pin(async move { found.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)) })
    }
}

#[tokio::test]
async fn host_names_are_resolved_and_checked_at_every_connection() {
    let inst = Instance::start("named", "n-1").await;
    let inst_addr: SocketAddr = inst.addr.trim_start_matches("http://").parse().unwrap();
    let port = inst_addr.port();
    let connector = TableConnector::default();
    let metadata: SocketAddr = format!("169.254.169.254:{port}").parse().unwrap();
    {
        let mut table = connector.table.lock().unwrap();
        table.insert("metadata.test".into(), vec![metadata]);
        table.insert("mixed.test".into(), vec![metadata, inst_addr]);
        // The admitted address comes after more refused ones than are considered.
        let mut far = vec![metadata; switchyard::seams::RESOLVED_ADDRESSES_MAX];
        far.push(inst_addr);
        table.insert("far.test".into(), far);
    }
    let allow = format!("127.0.0.1:{port}");
    let gw = Gateway::start_with_connector(
        Arc::new(connector.clone()),
        MemoryBus::new(),
        |c| {
            c.upstream.allow_addresses = vec![allow];
            c.upstream.evict_after_ms = 0;
        },
        |b| b,
    )
    .await;
    // Names are accepted at registration: what they resolve to is known only when dialled.
    gw.register("meta", "m-1", &format!("metadata.test:{port}"), 10_000)
        .await;
    gw.register("mixed", "x-1", &format!("mixed.test:{port}"), 10_000)
        .await;
    gw.register("far", "f-1", &format!("far.test:{port}"), 10_000)
        .await;

    let (status, _, body) = http("GET", &format!("{}/meta/x", gw.public_url())).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "upstream_connect_failed");
    let (status, _, _) = http("GET", &format!("{}/mixed/x", gw.public_url())).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the admitted address answered"
    );
    let (status, _, _) = http("GET", &format!("{}/far/x", gw.public_url())).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "past the bound of addresses"
    );

    let dialed = connector.dialed.lock().unwrap().clone();
    assert_eq!(
        dialed,
        [inst_addr.to_string()],
        "only the admitted address was dialled"
    );
    assert_eq!(inst.requests_received(), 1);
    let refusals = gw.node.metrics().address_refusals_at(AddressStage::Connect);
    assert!(refusals >= 1 + 1 + 16, "{refusals}");
}

/// The service name under which a gateway's own `Send` calls arrive at a public listener.
const SEND_SERVICE: &str = "switchyard.forwarding.v1.ForwardingService";

#[tokio::test]
async fn a_loop_through_one_gateway_ends_at_once_with_508() {
    let gw = Gateway::start_knowing_addrs(MemoryBus::new(), |c, public, _| {
        c.upstream.allow_addresses.push(public.to_string());
    })
    .await;
    gw.register(SEND_SERVICE, "me", &gw.public_url(), 10_000)
        .await;
    let url = format!("{}/{SEND_SERVICE}/anything", gw.public_url());
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(20), http("GET", &url))
        .await
        .expect("the loop ends");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status.as_u16(), 508, "{body}");
    assert_eq!(body["error"]["code"], "loop_detected");
    // The client's request and its one echo: no recursion.
    let m = gw.node.metrics();
    let front = switchyard::telemetry::Front::Rest;
    assert_eq!(m.requests_of(front, SEND_SERVICE, 508), 2);
}

#[tokio::test]
async fn a_loop_through_two_gateways_ends_at_once_with_508() {
    let a = Gateway::start(|c| c.node_id = "gw-a".into()).await;
    let b = Gateway::start(|c| c.node_id = "gw-b".into()).await;
    a.register(SEND_SERVICE, "to-b", &b.public_url(), 10_000)
        .await;
    b.register(SEND_SERVICE, "to-a", &a.public_url(), 10_000)
        .await;
    let url = format!("{}/{SEND_SERVICE}/anything", a.public_url());
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(20), http("GET", &url))
        .await
        .expect("the loop ends");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status.as_u16(), 508, "{body}");
    assert_eq!(body["error"]["code"], "loop_detected");
    let front = switchyard::telemetry::Front::Rest;
    assert_eq!(a.node.metrics().requests_of(front, SEND_SERVICE, 508), 2);
    assert_eq!(b.node.metrics().requests_of(front, SEND_SERVICE, 508), 1);
}

#[tokio::test]
async fn more_hops_than_the_bound_are_refused_on_rest_and_graphql() {
    let gw = Gateway::start(|c| c.upstream.hops_max = 3).await;
    let inst = Instance::start("svc", "s-1").await;
    gw.register("svc", "s-1", &inst.addr, 10_000).await;
    let url = format!("{}/svc/x", gw.public_url());
    let three = "1.1 p1, 1.1 p2, 1.1 p3";
    let (status, _, _) = http_with("GET", &url, &[("via", three)], Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "passed to the sample");
    let four = "1.1 p1, 1.1 p2, 1.1 p3, 1.1 p4";
    let (status, _, _) = http_with("GET", &url, &[("via", four)], Vec::new()).await;
    assert_eq!(status.as_u16(), 508);
    assert_eq!(inst.requests_received(), 1);

    let call = r#"query($via: String!) { call(service: "svc", headers: [{ name: "via", value: $via }]) { status } }"#;
    let (_, body) = post(&gw.graphql_url(), call, json!({ "via": four })).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "loop_detected",
        "{body}"
    );
    let own = format!("1.1 {}", gw.node_id);
    let (_, body) = post(&gw.graphql_url(), call, json!({ "via": own })).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "loop_detected",
        "{body}"
    );
    let (_, body) = post(&gw.graphql_url(), call, json!({ "via": three })).await;
    assert_eq!(body["data"]["call"]["status"], 404, "{body}");
    assert_eq!(inst.requests_received(), 2);
}

#[tokio::test]
async fn public_errors_name_no_address_os_error_or_upstream_message() {
    let gw = Gateway::start(|c| c.upstream.evict_after_ms = 0).await;
    // A port that was open a moment ago and is closed now.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    gw.register("gone", "g-1", &format!("127.0.0.1:{closed}"), 10_000)
        .await;
    let inst = Instance::start("failing", "f-1").await;
    gw.register("failing", "f-1", &inst.addr, 10_000).await;
    let port = closed.to_string();
    let inst_port = inst.addr.rsplit(':').next().unwrap().to_owned();
    let leaks = [
        port.as_str(),
        "127.0.0.1",
        "efused",
        "os error",
        "requested by the caller",
        &inst_port,
    ];

    let (status, _, body) = http("GET", &format!("{}/gone/x", gw.public_url())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (_, _, failed) = http(
        "GET",
        &format!("{}/failing/test/grpc-error/13", gw.public_url()),
    )
    .await;
    let call = r#"{ a: call(service: "gone") { status } b: call(service: "failing", path: "/test/grpc-error/13") { status } }"#;
    let (_, graphql) = post(&gw.graphql_url(), call, Value::Null).await;
    let codes: Vec<&Value> = graphql["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["extensions"]["code"])
        .collect();
    assert_eq!(codes.len(), 2, "{graphql}");
    for text in [
        String::from_utf8_lossy(&body).into_owned(),
        String::from_utf8_lossy(&failed).into_owned(),
        graphql.to_string(),
    ] {
        assert!(text.contains("upstream_"), "{text}");
        for leak in leaks {
            assert!(!text.contains(leak), "a public body shows {leak:?}: {text}");
        }
    }
}

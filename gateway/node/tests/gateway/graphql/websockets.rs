//! The bounds on GraphQL WebSockets, spoken frame by frame over raw sockets: the
//! `connection_init` timeout, operations at once on one socket, and sockets per client address.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard::telemetry::{ListenerLabel, WebSocketRefusal};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};

use super::post;
use crate::harness::{Gateway, eventually};

type Socket = WebSocketStream<TcpStream>;

/// How long any one frame may take to arrive before the test fails.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Opens a WebSocket to the gateway's public `/graphql` from the local address `from`.
async fn open_from(gw: &Gateway, from: IpAddr, protocol: &'static str) -> Result<Socket, Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(gw.public_addr()).await.unwrap();
    // The client sends at once, so what delays an answer is the gateway's.
    stream.set_nodelay(true).unwrap();
    let mut request = gw.graphql_ws_url().into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    let (socket, _) =
        tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("no handshake answer")?;
    Ok(socket)
}

async fn open(gw: &Gateway, protocol: &'static str) -> Socket {
    open_from(gw, [127, 0, 0, 1].into(), protocol)
        .await
        .unwrap()
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next frame that is not a WebSocket ping or pong; `None` once the stream ended.
async fn frame(socket: &mut Socket) -> Option<Message> {
    loop {
        let next = tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .expect("no frame in time");
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return Some(message),
            Some(Err(_)) | None => return None,
        }
    }
}

/// The next protocol message, as JSON.
async fn message(socket: &mut Socket) -> Value {
    match frame(socket).await {
        Some(Message::Text(text)) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected a protocol message, got {other:?}"),
    }
}

async fn init(socket: &mut Socket) {
    send(socket, json!({ "type": "connection_init" })).await;
    assert_eq!(message(socket).await["type"], "connection_ack");
}

fn refusals(gw: &Gateway, reason: WebSocketRefusal) -> u64 {
    gw.node
        .metrics()
        .websocket_refusals_of(ListenerLabel::Public, reason)
}

const WATCH: &str = "subscription {
    registryChanges(service: \"watched\", snapshot: true) { instance { instanceId } }
}";

fn subscribe(id: &str) -> Value {
    json!({ "type": "subscribe", "id": id, "payload": { "query": WATCH } })
}

#[tokio::test]
async fn a_socket_without_connection_init_is_closed_with_4408() {
    let gw = Gateway::start(|c| c.graphql.websocket_init_timeout_ms = 300).await;
    // Opened and initialised first, so its deadline passes before the silent ones' do.
    let mut prompt = open(&gw, "graphql-transport-ws").await;
    init(&mut prompt).await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut silent = open(&gw, protocol).await;
        match frame(&mut silent).await {
            Some(Message::Close(Some(CloseFrame { code, reason }))) => {
                assert_eq!(u16::from(code), 4408, "{protocol}");
                assert_eq!(reason.as_str(), "Connection initialisation timeout");
            }
            other => panic!("{protocol}: expected a close with 4408, got {other:?}"),
        }
    }
    assert_eq!(refusals(&gw, WebSocketRefusal::InitTimeout), 2);
    // The socket that said hello in time outlived its deadline and still answers.
    send(
        &mut prompt,
        json!({ "type": "subscribe", "id": "q", "payload": { "query": "{ node { nodeId } }" } }),
    )
    .await;
    let answer = message(&mut prompt).await;
    assert_eq!(answer["type"], "next", "{answer}");
    assert_eq!(answer["payload"]["data"]["node"]["nodeId"], gw.node_id);
}

/// The `next` messages of one round, one per id, whatever their order.
async fn nexts(socket: &mut Socket, ids: &[&str]) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    for _ in ids {
        let m = message(socket).await;
        assert_eq!(m["type"], "next", "{m}");
        let instance = &m["payload"]["data"]["registryChanges"]["instance"]["instanceId"];
        seen.insert((
            m["id"].as_str().unwrap().to_owned(),
            instance.as_str().unwrap().to_owned(),
        ));
    }
    seen
}

fn expected(ids: &[&str], instance: &str) -> BTreeSet<(String, String)> {
    ids.iter()
        .map(|id| ((*id).to_owned(), instance.to_owned()))
        .collect()
}

#[tokio::test]
async fn one_operation_past_the_bound_is_refused_and_the_others_go_on() {
    let gw = Gateway::start(|c| c.graphql.websocket_operations_max = 3).await;
    gw.register("watched", "w-0", "127.0.0.1:9", 60_000).await;
    let mut socket = open(&gw, "graphql-transport-ws").await;
    init(&mut socket).await;
    // At the bound: each subscription runs, as its snapshot shows.
    let running = ["1", "2", "3"];
    for id in running {
        send(&mut socket, subscribe(id)).await;
    }
    assert_eq!(
        nexts(&mut socket, &running).await,
        expected(&running, "w-0")
    );

    send(&mut socket, subscribe("4")).await;
    let refused = message(&mut socket).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "4");
    let error = &refused["payload"][0];
    assert_eq!(error["extensions"]["code"], "rate_limited", "{refused}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("graphql.websocket_operations_max"),
        "{refused}"
    );
    assert_eq!(refusals(&gw, WebSocketRefusal::OperationsMax), 1);

    // The running ones go on: each sees the next change, and nothing comes for the refused.
    gw.register("watched", "w-1", "127.0.0.1:9", 60_000).await;
    assert_eq!(
        nexts(&mut socket, &running).await,
        expected(&running, "w-1")
    );

    // Completing one makes room for another.
    send(&mut socket, json!({ "type": "complete", "id": "1" })).await;
    let done = message(&mut socket).await;
    assert_eq!(
        (&done["type"], &done["id"]),
        (&json!("complete"), &json!("1"))
    );
    send(&mut socket, subscribe("5")).await;
    let fresh = nexts(&mut socket, &["5"]).await;
    assert_eq!(fresh.len(), 1);
    assert!(fresh.iter().all(|(id, _)| id == "5"), "{fresh:?}");
    assert_eq!(refusals(&gw, WebSocketRefusal::OperationsMax), 1);
}

#[tokio::test]
async fn a_client_address_holds_at_most_its_share_of_sockets() {
    let gw = Gateway::start(|c| c.graphql.websockets_per_client_max = 2).await;
    let here: IpAddr = [127, 0, 0, 1].into();
    let elsewhere: IpAddr = [127, 0, 0, 2].into();
    let first = open_from(&gw, here, "graphql-transport-ws").await.unwrap();
    let _second = open_from(&gw, here, "graphql-ws").await.unwrap();
    match open_from(&gw, here, "graphql-transport-ws").await {
        Err(Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(
                body["errors"][0]["extensions"]["code"], "rate_limited",
                "{body}"
            );
        }
        other => panic!("a third socket from one address is refused with 429, not {other:?}"),
    }
    assert_eq!(refusals(&gw, WebSocketRefusal::PerClientMax), 1);
    // Another address is not held to the first one's count.
    let _other = open_from(&gw, elsewhere, "graphql-transport-ws")
        .await
        .expect("a socket from another address");
    assert_eq!(refusals(&gw, WebSocketRefusal::WebsocketsMax), 0);

    // A socket closed gives its slot back.
    drop(first);
    eventually(Duration::from_secs(10), || async {
        open_from(&gw, here, "graphql-transport-ws").await.is_ok()
    })
    .await;
}

/// A query over a socket is answered with `next` and `complete`, written together: flushed one
/// by one, the second waits for the client's delayed ACK (the gateway's sockets do not set
/// `TCP_NODELAY`), some 40 ms a query on Linux. Measured against the same queries by `POST`,
/// each on a new connection, in the same run.
#[tokio::test]
async fn queries_over_a_socket_are_not_slower_than_over_http() {
    const QUERIES: usize = 30;
    const QUERY: &str = "{ node { nodeId } }";
    let gw = Gateway::start(|_| {}).await;
    let started = tokio::time::Instant::now();
    for _ in 0..QUERIES {
        let (_, body) = post(&gw.graphql_url(), QUERY, Value::Null).await;
        assert_eq!(body["data"]["node"]["nodeId"], gw.node_id, "{body}");
    }
    let over_http = started.elapsed();

    let mut socket = open(&gw, "graphql-transport-ws").await;
    init(&mut socket).await;
    let started = tokio::time::Instant::now();
    for i in 0..QUERIES {
        let id = i.to_string();
        send(
            &mut socket,
            json!({ "type": "subscribe", "id": id, "payload": { "query": QUERY } }),
        )
        .await;
        assert_eq!(message(&mut socket).await["type"], "next");
        assert_eq!(message(&mut socket).await["type"], "complete");
    }
    let over_socket = started.elapsed();
    println!(
        "{QUERIES} queries: {:?} each over one socket, {:?} each by POST",
        over_socket / QUERIES as u32,
        over_http / QUERIES as u32
    );
    assert!(
        over_socket < over_http * 2,
        "{QUERIES} queries: {over_socket:?} over one socket, {over_http:?} by POST"
    );
}

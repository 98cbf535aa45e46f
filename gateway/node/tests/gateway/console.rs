//! The web console on real sockets: its files on the control listener only, with their
//! content types, validators and security headers, and no credential asked for them; and the
//! console's way of authenticating its subscription, a credential in `connection_init`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use switchyard::auth::{self, AUDIENCE, Authenticator, Claims, KeySet, SigningKey};
use switchyard::bus::MemoryBus;
use switchyard::config::{ControlAuth, ControlReads};
use switchyard::console::CONTENT_SECURITY_POLICY;
use switchyard::seams::{Clock as _, SystemClock};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::harness::{Gateway, http, http_with};

/// How long any one WebSocket frame may take before the test fails.
const FRAME_WAIT: Duration = Duration::from_secs(10);

fn read_token(key: &SigningKey) -> String {
    let now_s = SystemClock.now_ms() / 1_000;
    let claims = Claims {
        aud: AUDIENCE.to_owned(),
        sub: "console".to_owned(),
        jti: "console-1".to_owned(),
        iat: now_s,
        exp: now_s + 3_600,
        nbf: None,
        services: Vec::new(),
        read: true,
    };
    auth::issue(key, &claims).unwrap()
}

/// A gateway whose control listener requires credentials for reads too.
async fn guarded() -> (Gateway, SigningKey) {
    let (private, _) = auth::generate_key().unwrap();
    let key = SigningKey::from_pem(&private).unwrap();
    let keys = KeySet::from_pem(key.public_pem()).unwrap();
    let authenticator = Authenticator::new(auth::Mode::Required, keys, 30_000);
    let gw = Gateway::start_built(
        MemoryBus::new(),
        |c| {
            c.control.auth = ControlAuth::Required;
            c.control.reads = ControlReads::Credential;
        },
        |b| b.authenticator(Arc::new(authenticator)),
    )
    .await;
    (gw, key)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn the_console_is_served_on_the_control_listener_without_a_credential_and_hardened() {
    let (gw, _key) = guarded().await;
    let control = gw.control_url();

    // The page, with no credential, while reads need one.
    let (status, headers, page) = http("GET", &format!("{control}/console/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    assert_eq!(
        header(&headers, "content-security-policy"),
        CONTENT_SECURITY_POLICY
    );
    for directive in ["script-src 'self'", "frame-ancestors 'none'"] {
        assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
    }
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(&headers, "cache-control"), "no-cache");
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert!(page.contains("./assets/console.js"), "{page}");
    let (status, _, _) = http("GET", &format!("{control}/v1/cluster")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "reads still need one");

    // Script and style with their types; a validator that matches answers 304, empty.
    for (path, content_type) in [
        ("assets/console.js", "text/javascript; charset=utf-8"),
        ("assets/console.css", "text/css; charset=utf-8"),
    ] {
        let url = format!("{control}/console/{path}");
        let (status, headers, body) = http("GET", &url).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&headers, "content-type"), content_type);
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert!(!body.is_empty());
        let etag = header(&headers, "etag").to_owned();
        let (status, headers, body) =
            http_with("GET", &url, &[("if-none-match", etag.as_str())], Vec::new()).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(body.is_empty());
        assert_eq!(header(&headers, "etag"), etag);
        let (status, _, _) =
            http_with("GET", &url, &[("if-none-match", "\"other\"")], Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
    }

    // `/console` leads to `/console/`; an unknown file is 404 with the same headers; only
    // GET and HEAD.
    let (status, headers, _) = http("GET", &format!("{control}/console")).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header(&headers, "location"), "/console/");
    let (status, headers, _) = http("GET", &format!("{control}/console/peers.json")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(&headers, "content-security-policy"),
        CONTENT_SECURITY_POLICY
    );
    let (status, _, body) = http("HEAD", &format!("{control}/console/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    let (status, _, _) = http("POST", &format!("{control}/console/")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Not on the public listener: that one is for clients and their services.
    let (status, _, _) = http("GET", &format!("{}/console/", gw.public_url())).await;
    assert_ne!(status, StatusCode::OK);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(gw: &Gateway, authorization: Option<&str>) -> Socket {
    let url = format!("ws://{}/graphql", gw.control_addr());
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    if let Some(value) = authorization {
        headers.insert("authorization", HeaderValue::from_str(value).unwrap());
    }
    let (socket, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("no handshake answer")
        .unwrap();
    socket
}

/// The next frame that is not a ping or pong, as JSON for text, `None` once closed.
async fn next(socket: &mut Socket) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .expect("no frame in time");
        match frame {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                return Some(
                    json!({ "type": "close", "reason": frame.map(|f| f.reason.to_string()) }),
                );
            }
            _ => return None,
        }
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// Starts a `node` subscription-less query over the socket after `connection_init` with
/// `payload`; returns the first answer to it.
async fn node_over_socket(gw: &Gateway, upgrade: Option<&str>, payload: Value) -> Value {
    let mut socket = open(gw, upgrade).await;
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": payload }),
    )
    .await;
    let ack = next(&mut socket).await.unwrap();
    if ack["type"] != "connection_ack" {
        return ack;
    }
    let watch = "subscription { registryChanges(snapshot: true) { instance { instanceId } } }";
    send(
        &mut socket,
        json!({ "type": "subscribe", "id": "1", "payload": { "query": watch } }),
    )
    .await;
    let query = "{ node { nodeId } }";
    send(
        &mut socket,
        json!({ "type": "subscribe", "id": "2", "payload": { "query": query } }),
    )
    .await;
    // The node query answers at once; the subscription, with an empty registry, only on
    // refusal. Read until the query's answer.
    loop {
        let message = next(&mut socket).await.expect("socket closed");
        if message["id"] == "2" {
            return message;
        }
        if message["id"] == "1" && message["type"] == "error" {
            return message;
        }
    }
}

#[tokio::test]
async fn a_browser_authenticates_its_websocket_with_the_credential_in_connection_init() {
    let (gw, key) = guarded().await;
    let bearer = format!("Bearer {}", read_token(&key));

    // In the payload, as the console sends it: the read is allowed.
    let answer = node_over_socket(&gw, None, json!({ "authorization": bearer })).await;
    assert_eq!(answer["type"], "next", "{answer}");
    assert_eq!(
        answer["payload"]["data"]["node"]["nodeId"], gw.node_id,
        "{answer}"
    );

    // None at all, or a bad one: refused as a read without a credential is, with its code.
    for payload in [json!({}), json!({ "authorization": "Bearer not-a-token" })] {
        let answer = node_over_socket(&gw, None, payload.clone()).await;
        let code = if answer["type"] == "error" {
            answer["payload"][0]["extensions"]["code"].clone()
        } else {
            answer["payload"]["errors"][0]["extensions"]["code"].clone()
        };
        assert_eq!(code, "unauthenticated", "{payload}: {answer}");
    }

    // In the upgrade request too: refused, since which one counts is not the gateway's guess.
    let answer = node_over_socket(&gw, Some(&bearer), json!({ "authorization": bearer })).await;
    assert_eq!(answer["type"], "close", "{answer}");
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("authorization"), "{answer}");
    // The upgrade's header alone still works, as before.
    let answer = node_over_socket(&gw, Some(&bearer), json!({})).await;
    assert_eq!(
        answer["payload"]["data"]["node"]["nodeId"], gw.node_id,
        "{answer}"
    );
}

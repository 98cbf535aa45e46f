//! GraphQL over WebSocket within bounds: sockets per client address, the `connection_init`
//! timeout, and operations per socket.
//!
//! async-graphql speaks the protocols (`graphql-transport-ws`, and the older `graphql-ws`) but
//! bounds nothing: it keeps every operation a client starts, waits for `connection_init` as
//! long as the socket stays open, and its only timer (`keepalive_timeout`) is an inactivity
//! timer of the newer protocol, reset by any message. So [`serve`] drives the library's
//! message stream itself, between the socket and the library:
//!
//! * on the way in, `Inbound` reads each client message's `type` and `id`: it notes
//!   `connection_init`, and admits a new operation (`subscribe`, or `start` in the older
//!   protocol) only while fewer than `graphql.websocket_operations_max` are running; past that
//!   the message never reaches the library and the client gets an `error` message for that id.
//! * on the way out, each `complete` the library sends ends an operation. The library sends
//!   one for every operation it drops (finished, or stopped by the client), so the count here
//!   is the library's own count of streams.
//! * a timer closes the socket with 4408 ("Connection initialisation timeout", the code
//!   `graphql-transport-ws` prescribes) if no `connection_init` came within
//!   `graphql.websocket_init_timeout_ms`. The older protocol prescribes nothing; it gets the
//!   same close.
//!
//! A browser cannot set headers on a WebSocket, so the credential of the control listener
//! may also come in `connection_init`'s payload, `{"authorization": "Bearer …"}`
//! ([`with_init_credential`]): it is then the socket's `authorization` header, checked as one
//! by every field that needs it, exactly as if the upgrade request had carried it.
//!
//! Why an `error` message, not a close, for one operation too many: neither protocol has a
//! close code for it (4429 is for repeated `connection_init`), and closing would end the
//! client's other operations for a fault of the newest one. `error` ends exactly that
//! operation (both protocols define it as the answer to an operation that cannot run), it
//! carries the same `extensions.code` as every other error, and the client may start it again
//! once another completes — as HTTP/2 refuses one stream past `MAX_CONCURRENT_STREAMS` and
//! keeps the connection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{WebSocket as ProtocolStream, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use switchyard_core::GatewayError;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, PollSender};

use super::{Carrier, SwitchyardSchema, server_error};
use crate::sync::lock;
use crate::telemetry::{ListenerLabel, Telemetry, WebSocketRefusal};

#[cfg(test)]
mod tests;

/// The close code `graphql-transport-ws` prescribes for a missing `connection_init`.
pub const INIT_TIMEOUT_CLOSE_CODE: u16 = 4408;
const INIT_TIMEOUT_REASON: &str = "Connection initialisation timeout";

/// Written messages are flushed together once nothing more is ready, or once this many bytes
/// wait. Flushing each on its own sends a query's `next` and `complete` as two small segments,
/// and on a connection without `TCP_NODELAY` the second waits for the client's delayed ACK
/// (about 40 ms a query on Linux).
const UNFLUSHED_BYTES_MAX: usize = 64 * 1024;

/// Refusals waiting to be written. A client that starts operations faster than it reads their
/// refusals is not read from until this drains.
const REFUSALS_QUEUED_MAX: usize = 8;

/// What one socket is held to.
#[derive(Debug, Clone)]
pub struct SocketLimits {
    pub init_timeout: Duration,
    pub operations_max: usize,
}

/// Where a socket's refusals are counted.
#[derive(Debug, Clone)]
pub struct Counted {
    pub telemetry: Arc<Telemetry>,
    pub listener: ListenerLabel,
}

impl Counted {
    fn refusal(&self, reason: WebSocketRefusal) {
        self.telemetry
            .metrics()
            .websocket_refusal(self.listener, reason);
    }
}

/// Serves one upgraded socket until the client or the library ends it, a bound closes it, or
/// `shutdown` is cancelled.
pub async fn serve(
    socket: WebSocket,
    schema: SwitchyardSchema,
    protocol: WebSocketProtocols,
    carrier: Carrier,
    limits: SocketLimits,
    counted: Counted,
    shutdown: CancellationToken,
) {
    let (mut sink, source) = socket.split();
    let state = Arc::new(Mutex::new(SocketState::default()));
    let (refusals_tx, mut refusals_rx) = mpsc::channel::<String>(REFUSALS_QUEUED_MAX);
    // The library reads text and binary messages; a read error or a close ends its input.
    let source = source
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Text(text)) => Some(Bytes::from(text)),
                Ok(Message::Binary(bytes)) => Some(bytes),
                _ => None,
            })
        });
    let inbound = Inbound {
        source: Box::pin(source),
        state: state.clone(),
        refusals: PollSender::new(refusals_tx),
        pending: None,
        protocol,
        operations_max: limits.operations_max,
        counted: counted.clone(),
    };
    let mut data = Data::default();
    data.insert(carrier.clone());
    let mut messages = ProtocolStream::new(schema, inbound, protocol)
        .connection_data(data)
        .on_connection_init(move |payload| async move {
            let carrier = with_init_credential(carrier, &payload).map_err(|error| {
                tracing::debug!(%error, "graphql websocket: connection_init refused");
                async_graphql::Error::new(error.public_message())
            })?;
            let mut data = Data::default();
            data.insert(carrier);
            Ok(data)
        });
    let init_deadline = tokio::time::sleep(limits.init_timeout);
    tokio::pin!(init_deadline);
    let mut unflushed = 0usize;
    loop {
        let initialised = lock(&state).initialised;
        let message = tokio::select! {
            // Refusals before the library's messages, so a busy subscription cannot hold them
            // back (there are at most `REFUSALS_QUEUED_MAX`, and each needs a client message);
            // the library before the timer, so a `connection_init` that came in time counts.
            biased;
            () = shutdown.cancelled() => break,
            Some(refusal) = refusals_rx.recv() => Message::Text(refusal.into()),
            out = messages.next() => match out {
                None => break,
                Some(WsMessage::Text(text)) => {
                    note_completion(&state, &text);
                    Message::Text(text.into())
                }
                Some(WsMessage::Close(code, reason)) => Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })),
            },
            () = &mut init_deadline, if !initialised => {
                counted.refusal(WebSocketRefusal::InitTimeout);
                tracing::debug!("graphql websocket closed: no connection_init in time (graphql.websocket_init_timeout_ms)");
                Message::Close(Some(CloseFrame {
                    code: INIT_TIMEOUT_CLOSE_CODE,
                    reason: INIT_TIMEOUT_REASON.into(),
                }))
            }
            // Nothing else is ready: what was written goes out together.
            () = std::future::ready(()), if unflushed > 0 => {
                if sink.flush().await.is_err() {
                    break;
                }
                unflushed = 0;
                continue;
            }
        };
        let closing = matches!(message, Message::Close(_));
        unflushed += match &message {
            Message::Text(text) => text.len().max(1),
            _ => 1,
        };
        if sink.feed(message).await.is_err() {
            break;
        }
        if closing || unflushed >= UNFLUSHED_BYTES_MAX {
            if sink.flush().await.is_err() || closing {
                break;
            }
            unflushed = 0;
        }
    }
}

/// The key of `connection_init`'s payload that carries a credential.
pub const INIT_AUTHORIZATION: &str = "authorization";

/// The socket's carrier with the credential `connection_init`'s payload carries, if any, as
/// its `authorization` header. A payload that is not an object, or has no such key, leaves
/// the carrier as it is. Refused: a value that is not a string or not a valid header value,
/// and a credential in both the upgrade request and the payload (which one would count is
/// not for the gateway to guess).
pub fn with_init_credential(
    mut carrier: Carrier,
    payload: &serde_json::Value,
) -> Result<Carrier, GatewayError> {
    let Some(object) = payload.as_object() else {
        return Ok(carrier);
    };
    let mut found = object
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(INIT_AUTHORIZATION));
    let Some((_, value)) = found.next() else {
        return Ok(carrier);
    };
    let invalid = |reason: &str| GatewayError::InvalidArgument {
        field: "connection_init.payload.authorization",
        reason: reason.to_owned(),
    };
    if found.next().is_some() {
        return Err(invalid("given more than once"));
    }
    let Some(text) = value.as_str() else {
        return Err(invalid("expected a string, \"Bearer <token>\""));
    };
    let value =
        http::HeaderValue::from_str(text).map_err(|_| invalid("not a valid header value"))?;
    if carrier.headers.contains_key(http::header::AUTHORIZATION) {
        return Err(invalid(
            "the upgrade request carried an authorization header already",
        ));
    }
    carrier.headers.insert(http::header::AUTHORIZATION, value);
    Ok(carrier)
}

/// What the two directions of one socket share.
#[derive(Debug, Default)]
struct SocketState {
    initialised: bool,
    /// The ids of the operations the library is running, at most `operations_max`.
    running: BTreeSet<String>,
}

/// The fields of a protocol message this layer reads; the rest (the operation) is skipped.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

/// The library's `complete` messages begin with their tag (it serialises an internally tagged
/// enum), so the messages that carry results need not be parsed here.
const COMPLETE_PREFIX: &str = r#"{"type":"complete""#;

fn note_completion(state: &Mutex<SocketState>, text: &str) {
    if !text.starts_with(COMPLETE_PREFIX) {
        return;
    }
    if let Ok(Envelope { id: Some(id), .. }) = serde_json::from_str::<Envelope>(text) {
        lock(state).running.remove(&id);
    }
}

/// The client's messages on their way to the library, with the operations past the bound
/// taken out and answered.
struct Inbound {
    source: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
    state: Arc<Mutex<SocketState>>,
    refusals: PollSender<String>,
    /// A refusal waiting for room in the queue; nothing more is read until it has some.
    pending: Option<String>,
    protocol: WebSocketProtocols,
    operations_max: usize,
    counted: Counted,
}

enum Admission {
    Pass,
    Refuse(String),
}

impl Inbound {
    fn admit(&self, message: &[u8]) -> Admission {
        // Anything that is not a protocol message goes to the library, which closes the
        // socket for it as the protocol says.
        let Ok(envelope) = serde_json::from_slice::<Envelope>(message) else {
            return Admission::Pass;
        };
        let mut state = lock(&self.state);
        match (envelope.kind.as_str(), envelope.id) {
            ("connection_init", _) => state.initialised = true,
            ("subscribe" | "start", Some(id)) => {
                // An id already running replaces its operation in the library: no new one.
                if state.running.contains(&id) {
                    return Admission::Pass;
                }
                if state.running.len() >= self.operations_max {
                    drop(state);
                    self.counted.refusal(WebSocketRefusal::OperationsMax);
                    tracing::debug!(
                        operations_max = self.operations_max,
                        "graphql websocket operation refused (graphql.websocket_operations_max)"
                    );
                    return Admission::Refuse(self.refusal(&id));
                }
                state.running.insert(id);
            }
            _ => {}
        }
        Admission::Pass
    }

    /// The `error` message that ends operation `id` before it starts.
    fn refusal(&self, id: &str) -> String {
        let mut error = server_error(&GatewayError::RateLimited { retry_after_s: 1 }, None);
        error.message = format!(
            "{} operations are running on this WebSocket, the most it may run at once \
             (graphql.websocket_operations_max); complete one, or wait for one to finish",
            self.operations_max
        );
        // `graphql-transport-ws` sends a list of GraphQL errors; the older protocol one error.
        let payload = match self.protocol {
            WebSocketProtocols::GraphQLWS => serde_json::json!([error]),
            WebSocketProtocols::SubscriptionsTransportWS => serde_json::json!(error),
        };
        serde_json::json!({ "type": "error", "id": id, "payload": payload }).to_string()
    }
}

impl Stream for Inbound {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        loop {
            if let Some(refusal) = this.pending.take() {
                match this.refusals.poll_reserve(cx) {
                    Poll::Pending => {
                        this.pending = Some(refusal);
                        return Poll::Pending;
                    }
                    // The writer is gone: the socket is ending.
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(())) => {
                        if this.refusals.send_item(refusal).is_err() {
                            return Poll::Ready(None);
                        }
                    }
                }
            }
            let Some(message) = ready!(this.source.poll_next_unpin(cx)) else {
                return Poll::Ready(None);
            };
            match this.admit(&message) {
                Admission::Pass => return Poll::Ready(Some(message)),
                Admission::Refuse(refusal) => this.pending = Some(refusal),
            }
        }
    }
}

/// The open sockets of each client address on one listener. An address has an entry only
/// while it has a socket open, so there are never more entries than open sockets, which
/// `graphql.websockets_max` bounds.
#[derive(Debug)]
pub struct ClientSockets {
    open: Mutex<BTreeMap<IpAddr, usize>>,
    max: usize,
}

/// One open socket of a client address; dropping it gives the slot back.
#[derive(Debug)]
pub struct ClientSlot {
    sockets: Arc<ClientSockets>,
    key: IpAddr,
}

impl ClientSockets {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(BTreeMap::new()),
            max,
        })
    }

    /// A slot for one more socket from `client`, or `None` if it has `max` open.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let key = client_key(client);
        let mut open = lock(&self.open);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            sockets: self.clone(),
            key,
        })
    }

    /// How many client addresses have a socket open.
    pub fn addresses(&self) -> usize {
        lock(&self.open).len()
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.sockets.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The key a client address is counted under: an IPv4 address (also when it arrives mapped
/// into IPv6), or the /64 prefix of an IPv6 address, because one client usually holds a whole
/// /64 and could otherwise open sockets from as many addresses as it likes.
pub fn client_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

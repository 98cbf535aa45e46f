//! The client of `ForwardingService.Send`: unary gRPC over one HTTP/2 connection per instance
//! address, on the gateway's own HTTP/2 client ([`switchyard_core::http2::client`], decision
//! 0033).
//!
//! A call queues its HEADERS and its one DATA frame (with END_STREAM) before the connection's
//! task next writes, so the request leaves in one write, together with those of the calls
//! that arrived meanwhile. The header fields every call to an address shares are encoded
//! once, when its client is made; a call adds only its `grpc-timeout` and `Via`. Of the
//! answer, only what a gRPC client reads is kept: the HTTP status, `grpc-status`,
//! `grpc-message` and the message.
//!
//! The connection is opened on first use through a [`Dialer`] (the connector seam, the
//! address policy, the connect timeout and the shared failure), with TLS when the address is
//! `https://`, and opened again by the first call after it ended. While calls are open it is
//! pinged ([`KeepAlive`](super::channel::KeepAlive)) so that a half-open connection fails
//! its calls instead of holding them to their deadline.
//!
//! In the per-core layout (`runtime.layout = "per_core"`) each thread that serves the public
//! front has a connection of its own to each address, opened and driven on that thread
//! ([`set_connection_slot`]), so that a call and its connection never wake another thread.

mod driver;

use std::cell::Cell;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, Uri};
use prost::Message;
use switchyard_core::GatewayError;
use switchyard_core::http2::client::{self, Answer, GrpcFields};
use switchyard_core::http2::hpack;
use switchyard_core::status::code;
use switchyard_core::translate::{self, ForwardContext, RequestHead};
use switchyard_proto::forwarding::{ForwardingReq, ForwardingResp};

use super::channel::{ConnectFailed, Dialer, Http2};
use crate::seams::Io;
use driver::{Driver, Shared};

/// The path of `ForwardingService.Send`.
pub const SEND_PATH: &str = "/switchyard.forwarding.v1.ForwardingService/Send";

/// The most bytes of HTTP/2 header fields an instance's answer may carry
/// (`SETTINGS_MAX_HEADER_LIST_SIZE`).
pub const RESPONSE_HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;

/// The flow-control window of each stream and of the connection: how much of an answer the
/// instance may send before this side gives window back.
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;

/// The most calls open or waiting for a stream on one connection; past it a call fails at
/// once. `upstream.in_flight_per_instance_max`, which the forwarder enforces first, is at
/// most this.
const CALLS_PER_CONNECTION_MAX: usize = crate::config::IN_FLIGHT_PER_INSTANCE_MAX as usize;

/// The `grpc-timeout` header's largest value: eight digits (gRPC over HTTP/2).
const GRPC_TIMEOUT_DIGITS_MAX: u64 = 99_999_999;

/// A gRPC message's prefix: the compressed flag and the length (big-endian u32).
const MESSAGE_PREFIX_BYTES: usize = 5;

const USER_AGENT: &str = concat!("switchyard/", env!("CARGO_PKG_VERSION"));

/// How a call failed.
#[derive(Debug)]
pub enum CallError {
    /// No connection could be opened (dial, TLS or the HTTP/2 handshake): the request was
    /// not sent.
    Connect(ConnectFailed),
    /// The connection failed, or the stream was reset, once the request may have been sent.
    Transport(String),
    /// The answer's message is larger than the call's bound.
    TooLarge,
    /// A gRPC status other than OK: the service's, or one this side gives an answer that
    /// breaks the protocol (`INTERNAL`, as gRPC's own clients do).
    Status { code: i32, message: String },
    /// The connection holds as many calls as it may: the gateway's own limit, not the
    /// instance's fault. Nothing was sent.
    Full(String),
    /// The deadline passed before the answer came (or before a connection could be opened).
    TimedOut,
}

impl CallError {
    fn internal(message: impl Into<String>) -> Self {
        Self::Status {
            code: code::INTERNAL,
            message: message.into(),
        }
    }
}

impl From<client::CallError> for CallError {
    fn from(error: client::CallError) -> Self {
        match error {
            client::CallError::TooLarge => Self::TooLarge,
            client::CallError::Expired => Self::TimedOut,
            client::CallError::Refused(why) | client::CallError::Transport(why) => {
                Self::Transport(why)
            }
        }
    }
}

/// The most connection slots an address may have: one per thread of the per-core layout
/// (`runtime.worker_threads`), and slot 0 for every other thread.
pub const CONNECTION_SLOTS_MAX: usize = crate::config::WORKER_THREADS_MAX + 1;

thread_local! {
    /// Which of an address's connections this thread's calls use; see [`set_connection_slot`].
    static CONNECTION_SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread's calls use connection slot `slot` of each address (at most
/// [`CONNECTION_SLOTS_MAX`] - 1): its own connections, opened by its first call to each
/// address and driven by a task spawned on the runtime that call runs on. A thread that never
/// sets it uses slot 0, shared with every other such thread (the multi-threaded runtime's
/// workers). Called once by each thread of the per-core layout, before its runtime starts.
pub fn set_connection_slot(slot: usize) {
    CONNECTION_SLOT.with(|s| s.set(slot.min(CONNECTION_SLOTS_MAX - 1)));
}

fn connection_slot() -> usize {
    CONNECTION_SLOT.with(Cell::get)
}

/// The open connection, and its number, so that a call that finds it broken clears only
/// that one.
#[derive(Clone)]
struct Open {
    shared: Arc<Shared>,
    generation: u64,
}

/// The open connection of each slot that has one; numbers are never reused across slots.
#[derive(Default)]
struct State {
    /// Indexed by slot, grown to the highest slot that has called (at most
    /// [`CONNECTION_SLOTS_MAX`]).
    open: Vec<Option<Open>>,
    /// Held by the call that opens a slot's connection: the slot's other calls wait for it
    /// and share its outcome rather than dial too. Grown as `open` is.
    opening: Vec<Arc<tokio::sync::Mutex<()>>>,
    generation: u64,
}

impl State {
    fn opening(&mut self, slot: usize) -> Arc<tokio::sync::Mutex<()>> {
        if self.opening.len() <= slot {
            self.opening.resize_with(slot + 1, Arc::default);
        }
        self.opening[slot].clone()
    }

    fn open(&self, slot: usize) -> Option<Open> {
        self.open.get(slot).and_then(Clone::clone)
    }

    fn set(&mut self, slot: usize, open: Open) {
        if self.open.len() <= slot {
            self.open.resize(slot + 1, None);
        }
        self.open[slot] = Some(open);
    }

    /// Forgets slot `slot`'s open connection if it is the one numbered `generation` (a newer
    /// one stays).
    fn forget(&mut self, slot: usize, generation: u64) {
        if let Some(open) = self.open.get_mut(slot)
            && open.as_ref().is_some_and(|o| o.generation == generation)
        {
            *open = None;
        }
    }
}

/// The client of one instance address.
pub struct Upstream {
    /// `scheme://authority` (for the logs).
    uri: Uri,
    /// `host:port`, as dialed.
    authority: String,
    /// The header fields every call to this address sends, encoded once: the method, scheme,
    /// path and authority, and gRPC's content type, `te` and user agent.
    fixed_fields: Bytes,
    /// The name the TLS certificate must carry, for an `https://` address.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    dialer: Dialer,
    http2: Http2,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// What one call may send and receive.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// The largest answer message accepted, in bytes.
    pub response_message_bytes_max: usize,
}

impl Upstream {
    /// The client of `addr` (`http://host:port` or `https://host:port`). `tls` is required
    /// for an `https://` address.
    pub fn new(
        addr: &str,
        dialer: Dialer,
        http2: Http2,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, String> {
        let base: Uri = addr
            .parse()
            .map_err(|e| format!("instance address {addr:?}: {e}"))?;
        let authority = base
            .authority()
            .ok_or_else(|| format!("instance address {addr:?} has no host"))?
            .clone();
        let https = match base.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "instance address {addr:?}: not http:// or https://"
                ));
            }
        };
        let tls = if https {
            let config = tls
                .ok_or_else(|| format!("instance address {addr:?}: https without upstream.tls"))?;
            // An IPv6 host is checked without its brackets.
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("instance address {addr:?}: host {e}"))?;
            Some((config, name))
        } else {
            None
        };
        let uri = Uri::builder()
            .scheme(if https { "https" } else { "http" })
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("instance address {addr:?}: {e}"))?;
        Ok(Self {
            uri,
            fixed_fields: fixed_fields(https, authority.as_str()),
            authority: authority.as_str().to_owned(),
            tls,
            dialer,
            http2,
            state: Arc::default(),
        })
    }

    /// Calls `Send` with `call`, telling the service the time it has until `deadline`
    /// (`grpc-timeout`), and ends it with [`CallError::TimedOut`] at `deadline`: opening a
    /// connection, when one must be, and the call on it.
    pub async fn send(
        &self,
        call: &Outgoing,
        deadline: tokio::time::Instant,
        limits: CallLimits,
    ) -> Result<ForwardingResp, CallError> {
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut own =
            BytesMut::with_capacity(OWN_FIELDS_BYTES + call.via.as_ref().map_or(0, |v| v.len()));
        own_fields(timeout, call.via.as_ref(), &mut own);
        let block: [&[u8]; 2] = [&self.fixed_fields, &own];
        let limits = client::CallLimits {
            message_bytes_max: limits.response_message_bytes_max,
        };
        // A call the connection did not take, or that the instance did not process (a
        // refused stream, a stream past its GOAWAY, a connection that ended before the call
        // left), goes once more, on a new connection if the old one takes no new call: the
        // instance never saw it.
        let slot = connection_slot();
        let mut again = true;
        loop {
            let open = match self.current(slot) {
                Some(open) => open,
                None => tokio::time::timeout_at(deadline, self.connection(slot))
                    .await
                    .map_err(|_| CallError::TimedOut)??,
            };
            let answer = match open
                .shared
                .call(&block, call.message.clone(), limits, deadline)
            {
                Ok(answering) => answering.await,
                Err(client::OpenError::Closed(why)) => Err(client::CallError::Refused(why)),
                Err(client::OpenError::Full(calls)) => {
                    return Err(CallError::Full(format!(
                        "{calls} calls open or waiting on the connection to {}",
                        self.authority
                    )));
                }
            };
            if answer.is_err() && open.shared.takes_no_new_call() {
                self.clear(slot, &open);
            }
            match answer {
                Err(client::CallError::Refused(why)) if std::mem::take(&mut again) => {
                    tracing::debug!(addr = %self.uri, %why, "the call was not processed; sending it again");
                }
                answer => return read_answer(answer?),
            }
        }
    }

    fn clear(&self, slot: usize, open: &Open) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget(slot, open.generation);
    }

    fn current(&self, slot: usize) -> Option<Open> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open(slot)
    }

    /// Slot `slot`'s open connection, or a new one. The slot's calls that arrive while one is
    /// being opened wait for it and share its outcome; slots open theirs side by side (a
    /// failure to dial is shared between them by the dialer).
    async fn connection(&self, slot: usize) -> Result<Open, CallError> {
        if let Some(open) = self.current(slot) {
            return Ok(open);
        }
        let opening = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .opening(slot);
        let _opening = opening.lock().await;
        if let Some(open) = self.current(slot) {
            return Ok(open);
        }
        let tls = self.tls.clone();
        let io = self
            .dialer
            .open(&self.authority, |io| secure(io, tls))
            .await
            .map_err(CallError::Connect)?;
        let shared = Shared::new(CLIENT);
        let driver = Driver::new(&shared, io, self.http2.keep_alive);
        let open = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.generation += 1;
            let open = Open {
                shared,
                generation: state.generation,
            };
            state.set(slot, open.clone());
            open
        };
        let (state, generation) = (Arc::downgrade(&self.state), open.generation);
        let addr = self.uri.clone();
        tokio::spawn(async move {
            if let Err(why) = driver.await {
                tracing::debug!(%addr, %why, "connection to instance ended");
            }
            if let Some(state) = state.upgrade() {
                state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget(slot, generation);
            }
        });
        Ok(open)
    }
}

/// This side's HTTP/2 settings and bounds.
const CLIENT: client::Config = client::Config {
    stream_window_bytes: STREAM_WINDOW_BYTES,
    connection_window_bytes: CONNECTION_WINDOW_BYTES,
    header_list_bytes_max: RESPONSE_HEADER_LIST_BYTES_MAX,
    calls_max: CALLS_PER_CONNECTION_MAX,
};
const _: () = assert!(CLIENT.is_valid());

/// The header fields every call to one address sends (HPACK, never indexed by this side).
fn fixed_fields(https: bool, authority: &str) -> Bytes {
    let mut block = BytesMut::with_capacity(128 + authority.len());
    hpack::encode_indexed(hpack::METHOD_POST, &mut block);
    hpack::encode_indexed(
        if https {
            hpack::SCHEME_HTTPS
        } else {
            hpack::SCHEME_HTTP
        },
        &mut block,
    );
    hpack::encode_literal_with_name_index(hpack::PATH, SEND_PATH.as_bytes(), &mut block);
    hpack::encode_literal_with_name_index(hpack::AUTHORITY, authority.as_bytes(), &mut block);
    hpack::encode_literal_with_name_index(hpack::CONTENT_TYPE, b"application/grpc", &mut block);
    hpack::encode_literal_new_name(b"te", b"trailers", &mut block);
    hpack::encode_literal_with_name_index(hpack::USER_AGENT, USER_AGENT.as_bytes(), &mut block);
    block.freeze()
}

/// Room for a call's own fields but `Via`'s value: `grpc-timeout` and `Via`'s index and
/// length.
const OWN_FIELDS_BYTES: usize = 40;

/// The header fields of one call: the time the service has, and the request's `Via` mark.
fn own_fields(timeout: Duration, via: Option<&HeaderValue>, block: &mut BytesMut) {
    let (digits, len) = grpc_timeout(timeout);
    hpack::encode_literal_new_name(b"grpc-timeout", &digits[..len], block);
    if let Some(via) = via {
        hpack::encode_literal_with_name_index(hpack::VIA, via.as_bytes(), block);
    }
}

/// TLS, when the address is `https://`, over a new connection.
async fn secure(
    io: Box<dyn Io>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
) -> std::io::Result<Box<dyn Io>> {
    let Some((config, name)) = tls else {
        return Ok(io);
    };
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, io)
        .await?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the instance's TLS did not agree on HTTP/2 (ALPN h2)",
        ));
    }
    Ok(Box::new(stream))
}

/// A request ready for the wire: its gRPC message (the uncompressed flag, the length, the
/// protobuf of its `ForwardingReq`) and its `Via` mark for the call's own headers. Encoded
/// once, it is sent as it is by every attempt.
#[derive(Debug, Clone)]
pub struct Outgoing {
    message: Bytes,
    via: Option<HeaderValue>,
}

impl Outgoing {
    /// Encodes `req`.
    pub fn of(req: &ForwardingReq) -> Result<Self, GatewayError> {
        let len = req.encoded_len();
        let mut buf = BytesMut::with_capacity(MESSAGE_PREFIX_BYTES + len);
        buf.put_u8(0);
        buf.put_u32(0);
        req.encode(&mut buf).map_err(|e| GatewayError::Internal {
            detail: format!("encoding the request: {e}"),
        })?;
        let via = req
            .headers
            .iter()
            .rev()
            .find(|h| h.name == switchyard_core::hops::VIA_HEADER)
            .and_then(|h| via_value(&h.value));
        Ok(Self {
            message: framed(buf)?,
            via,
        })
    }

    /// The request of a client's HTTP head and body, translated straight into its message
    /// ([`translate::encode_forwarding_req`]) with `traceparent` as its trace context. Returns
    /// the service it names too.
    pub fn from_head<'h>(
        head: &RequestHead<'h>,
        body: &Bytes,
        ctx: &ForwardContext<'_>,
        traceparent: &str,
    ) -> Result<(Self, &'h str), GatewayError> {
        let mut buf = BytesMut::with_capacity(
            MESSAGE_PREFIX_BYTES + body.len() + translate::header_bytes(head.headers) + 1024,
        );
        buf.put_u8(0);
        buf.put_u32(0);
        let encoded = translate::encode_forwarding_req(head, body, ctx, traceparent, &mut buf)?;
        let call = Self {
            message: framed(buf)?,
            via: via_value(&encoded.via),
        };
        Ok((call, encoded.service))
    }
}

/// Writes the message's length into the prefix `buf` starts with.
fn framed(mut buf: BytesMut) -> Result<Bytes, GatewayError> {
    let len = buf.len() - MESSAGE_PREFIX_BYTES;
    let prefix = u32::try_from(len).map_err(|_| GatewayError::Internal {
        detail: format!("request message of {len} bytes"),
    })?;
    buf[1..MESSAGE_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(buf.freeze())
}

/// The request's `Via` value as a header of the call itself too: an instance that is a
/// gateway's public listener reads the call's headers, not the `ForwardingReq`'s.
fn via_value(value: &[u8]) -> Option<HeaderValue> {
    // gRPC metadata values are printable ASCII (`ASCII-Value` of the gRPC HTTP/2 protocol);
    // HTTP also admits obs-text bytes, which a strict peer refuses. When a client sent such
    // bytes, the gateway's own entry, the last, still goes.
    let printable = |v: &[u8]| v.iter().all(|b| (0x20..=0x7e).contains(b));
    let value = if printable(value) {
        value
    } else {
        value.rsplit(|b| *b == b',').next()?.trim_ascii()
    };
    if !printable(value) {
        return None;
    }
    HeaderValue::from_bytes(value).ok()
}

/// `grpc-timeout` for `timeout`, in milliseconds, or seconds past eight digits of them: the
/// text and its length.
fn grpc_timeout(timeout: Duration) -> ([u8; GRPC_TIMEOUT_BYTES_MAX], usize) {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let (value, unit) = if ms <= GRPC_TIMEOUT_DIGITS_MAX {
        (ms, b'm')
    } else {
        ((ms / 1000).min(GRPC_TIMEOUT_DIGITS_MAX), b'S')
    };
    // Digit by digit: the formatting machinery cost a visible share per call.
    let mut buf = [0u8; translate::DECIMAL_DIGITS_MAX];
    let digits = translate::decimal(value, &mut buf);
    let mut text = [0u8; GRPC_TIMEOUT_BYTES_MAX];
    text[..digits.len()].copy_from_slice(digits);
    text[digits.len()] = unit;
    (text, digits.len() + 1)
}

/// Eight digits and the unit, with room to spare.
const GRPC_TIMEOUT_BYTES_MAX: usize = translate::DECIMAL_DIGITS_MAX + 1;

/// The service's answer: its status (from the headers of a trailers-only answer, else from
/// the trailers), and its one message.
fn read_answer(answer: Answer) -> Result<ForwardingResp, CallError> {
    if let Some(status) = grpc_status(&answer.head) {
        return match status {
            Ok(()) => Err(CallError::internal(
                "a trailers-only answer with status OK and no message",
            )),
            Err(error) => Err(error),
        };
    }
    if answer.status != 200 {
        return Err(CallError::Status {
            code: http_status_code(answer.status),
            message: format!("the instance answered HTTP {}", answer.status),
        });
    }
    match answer.trailers.as_ref().and_then(grpc_status) {
        Some(Ok(())) => decode(answer.body),
        Some(Err(error)) => Err(error),
        None => Err(CallError::internal("the answer ended without grpc-status")),
    }
}

/// The answer's one message: gRPC's prefix, then the protobuf.
fn decode(mut bytes: Bytes) -> Result<ForwardingResp, CallError> {
    if bytes.len() < MESSAGE_PREFIX_BYTES {
        return Err(CallError::internal(format!(
            "an answer of {} bytes holds no gRPC message",
            bytes.len()
        )));
    }
    let compressed = bytes.get_u8();
    let declared = bytes.get_u32() as usize;
    if compressed != 0 {
        return Err(CallError::internal(
            "a compressed answer, though no compression was offered",
        ));
    }
    if declared != bytes.len() {
        return Err(CallError::internal(format!(
            "the answer's message declares {declared} bytes and {} follow",
            bytes.len()
        )));
    }
    ForwardingResp::decode(bytes)
        .map_err(|e| CallError::internal(format!("failed to decode the answer: {e}")))
}

/// The gRPC status in `fields`: `None` without `grpc-status`, `Ok` for OK.
fn grpc_status(fields: &GrpcFields) -> Option<Result<(), CallError>> {
    let code = match fields.status.as_ref()? {
        Ok(code) => *code,
        Err(value) => {
            return Some(Err(CallError::internal(format!(
                "grpc-status {:?} is not a number",
                String::from_utf8_lossy(value)
            ))));
        }
    };
    if code == code::OK {
        return Some(Ok(()));
    }
    let message = fields
        .message
        .as_deref()
        .map(percent_decode)
        .unwrap_or_default();
    // Codes past the last gRPC defines are UNKNOWN (as gRPC's clients read them).
    let code = if (code::OK..=code::UNAUTHENTICATED).contains(&code) {
        code
    } else {
        code::UNKNOWN
    };
    Some(Err(CallError::Status { code, message }))
}

/// `grpc-message`'s percent-encoding undone; a bad escape is kept as it is.
fn percent_decode(bytes: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC code for an answer whose HTTP status is not 200 (gRPC's "HTTP to gRPC status
/// code mapping").
fn http_status_code(status: u16) -> i32 {
    match status {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_keeps_and_forgets_its_own_connection() {
        let open = |generation| Open {
            shared: Shared::new(CLIENT),
            generation,
        };
        let mut state = State::default();
        assert!(state.open(0).is_none() && state.open(3).is_none());
        state.set(3, open(1));
        state.set(0, open(2));
        assert_eq!(state.open.len(), 4, "grown to the highest slot only");
        assert_eq!(state.open(3).map(|o| o.generation), Some(1));
        assert!(state.open(1).is_none());
        // A number that is not the slot's forgets nothing; the slot's own forgets only it.
        state.forget(3, 2);
        assert_eq!(state.open(3).map(|o| o.generation), Some(1));
        state.forget(3, 1);
        assert!(state.open(3).is_none());
        assert_eq!(state.open(0).map(|o| o.generation), Some(2));
        state.forget(9, 2);
        assert_eq!(state.open(0).map(|o| o.generation), Some(2));
    }

    #[test]
    fn a_thread_uses_slot_0_until_told_otherwise_and_never_past_the_last() {
        let slots = std::thread::spawn(|| {
            let before = connection_slot();
            set_connection_slot(2);
            let set = connection_slot();
            set_connection_slot(usize::MAX);
            (before, set, connection_slot())
        })
        .join()
        .unwrap();
        assert_eq!(slots, (0, 2, CONNECTION_SLOTS_MAX - 1));
        // Another thread's setting is not this one's.
        assert_eq!(connection_slot(), 0);
    }

    fn framed(message: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_u32(message.len() as u32);
        b.extend_from_slice(message);
        b.freeze()
    }

    fn fields(status: &str, message: Option<&str>) -> GrpcFields {
        GrpcFields {
            status: Some(
                status
                    .parse::<i32>()
                    .map_err(|_| status.as_bytes().to_vec()),
            ),
            message: message.map(|m| m.as_bytes().to_vec()),
        }
    }

    fn answer(status: u16, head: GrpcFields, trailers: Option<GrpcFields>, body: Bytes) -> Answer {
        Answer {
            status,
            head,
            trailers,
            body,
        }
    }

    #[test]
    fn an_answer_with_status_ok_in_its_trailers_is_its_message() {
        let resp = ForwardingResp {
            status: 201,
            body: Bytes::from_static(b"hello"),
            ..Default::default()
        };
        let body = framed(&resp.encode_to_vec());
        let ok = answer(
            200,
            GrpcFields::default(),
            Some(fields("0", None)),
            body.clone(),
        );
        assert_eq!(read_answer(ok).unwrap(), resp);
        // No trailers, or trailers without grpc-status: the answer is incomplete.
        for trailers in [None, Some(GrpcFields::default())] {
            let cut = answer(200, GrpcFields::default(), trailers, body.clone());
            assert!(matches!(
                read_answer(cut),
                Err(CallError::Status {
                    code: code::INTERNAL,
                    ..
                })
            ));
        }
        // An HTTP status other than 200 maps to gRPC's code for it.
        let unavailable = answer(503, GrpcFields::default(), None, Bytes::new());
        assert!(matches!(
            read_answer(unavailable),
            Err(CallError::Status {
                code: code::UNAVAILABLE,
                ..
            })
        ));
    }

    #[test]
    fn a_trailers_only_answer_carries_the_status_in_its_headers() {
        let denied = answer(200, fields("7", Some("no%20way")), None, Bytes::new());
        match read_answer(denied) {
            Err(CallError::Status { code, message }) => {
                assert_eq!(code, code::PERMISSION_DENIED);
                assert_eq!(message, "no way");
            }
            other => panic!("{other:?}"),
        }
        let ok_without_message = answer(200, fields("0", None), None, Bytes::new());
        assert!(matches!(
            read_answer(ok_without_message),
            Err(CallError::Status {
                code: code::INTERNAL,
                ..
            })
        ));
    }

    #[test]
    fn truncated_compressed_or_trailing_bytes_are_refused() {
        let whole = framed(&ForwardingResp::default().encode_to_vec());
        assert!(decode(whole.clone()).is_ok());
        let mut compressed = BytesMut::from(&whole[..]);
        compressed[0] = 1;
        let mut two = BytesMut::from(&whole[..]);
        two.extend_from_slice(&whole);
        for bad in [whole.slice(..3), compressed.freeze(), two.freeze()] {
            assert!(matches!(
                decode(bad),
                Err(CallError::Status {
                    code: code::INTERNAL,
                    ..
                })
            ));
        }
    }

    #[test]
    fn status_and_message_are_read_from_the_fields() {
        assert!(grpc_status(&GrpcFields::default()).is_none());
        assert!(matches!(grpc_status(&fields("0", None)), Some(Ok(()))));
        let looped = fields("9", Some("switchyard: forwarding loop%20detected %zz%"));
        match grpc_status(&looped) {
            Some(Err(CallError::Status { code, message })) => {
                assert_eq!(code, 9);
                assert_eq!(message, "switchyard: forwarding loop detected %zz%");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            grpc_status(&fields("99", None)),
            Some(Err(CallError::Status {
                code: code::UNKNOWN,
                ..
            }))
        ));
        assert!(matches!(
            grpc_status(&fields("x", None)),
            Some(Err(CallError::Status {
                code: code::INTERNAL,
                ..
            }))
        ));
    }

    #[test]
    fn grpc_timeout_stays_within_eight_digits() {
        let text = |d| {
            let (t, n) = grpc_timeout(d);
            String::from_utf8(t[..n].to_vec()).unwrap()
        };
        assert_eq!(text(Duration::from_millis(1500)), "1500m");
        assert_eq!(text(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(text(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(text(Duration::MAX), "99999999S");
    }

    #[test]
    fn a_call_sends_the_fields_of_a_grpc_request() {
        let mut block = BytesMut::from(&fixed_fields(false, "10.0.0.7:50051")[..]);
        own_fields(
            Duration::from_millis(250),
            Some(&HeaderValue::from_static("1.1 gw-a")),
            &mut block,
        );
        let mut got = Vec::new();
        hpack::Decoder::new(4096)
            .decode(&block, 16 * 1024, |n, v| {
                got.push((
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                ));
            })
            .unwrap();
        let want: Vec<(String, String)> = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", SEND_PATH),
            (":authority", "10.0.0.7:50051"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", USER_AGENT),
            ("grpc-timeout", "250m"),
            ("via", "1.1 gw-a"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_request_is_one_uncompressed_message() {
        let req = ForwardingReq {
            service: "s".into(),
            body: Bytes::from_static(b"{}"),
            ..Default::default()
        };
        let mut bytes = Outgoing::of(&req).unwrap().message;
        assert_eq!(bytes.get_u8(), 0);
        assert_eq!(bytes.get_u32() as usize, bytes.len());
        assert_eq!(ForwardingReq::decode(bytes).unwrap(), req);
    }
}

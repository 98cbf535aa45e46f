//! The client of `ForwardingService.Send`: unary gRPC over one HTTP/2 connection per instance
//! address, on h2 directly.
//!
//! A call queues its HEADERS and its one DATA frame (with END_STREAM) before the connection's
//! task next writes, so the request leaves in one write. Through tonic's channel (hyper's
//! HTTP/2 client under a buffer) the same call took three: the HEADERS, then the DATA once
//! the stream had flow-control capacity, then an empty END_STREAM frame, each a system call
//! and a loopback segment, and each request passed through three more tasks (the buffer's
//! worker, hyper's response task and its body pipe). docs/decisions/0031 has the figures.
//!
//! The connection is opened on first use through a [`Dialer`] (the connector seam, the
//! address policy, the connect timeout and the shared failure), with TLS when the address is
//! `https://`, and opened again by the first call after it ended. While calls are open it is
//! pinged ([`KeepAlive`]) so that a half-open connection fails its calls instead of holding
//! them to their deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use prost::Message;
use switchyard_core::GatewayError;
use switchyard_core::status::code;
use switchyard_core::translate::{self, ForwardContext, RequestHead};
use switchyard_proto::forwarding::{ForwardingReq, ForwardingResp};

use super::channel::{ConnectFailed, Dialer, Http2, KeepAlive};
use crate::seams::Io;

/// The path of `ForwardingService.Send`.
pub const SEND_PATH: &str = "/switchyard.forwarding.v1.ForwardingService/Send";

/// The most bytes of HTTP/2 header fields an instance's answer may carry (h2's
/// `SETTINGS_MAX_HEADER_LIST_SIZE`, as hyper's client sets it).
pub const RESPONSE_HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;

/// The flow-control window of each stream and of the connection: how much of an answer the
/// connection buffers before the call reads it (hyper's client's defaults).
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;

/// Resets of this side remembered per connection (h2's default, as tonic's channel had it).
const RESET_STREAMS_MAX: usize = 50;

/// The `grpc-timeout` header's largest value: eight digits (gRPC over HTTP/2).
const GRPC_TIMEOUT_DIGITS_MAX: u64 = 99_999_999;

/// A gRPC message's prefix: the compressed flag and the length (big-endian u32).
const MESSAGE_PREFIX_BYTES: usize = 5;

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

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
}

impl CallError {
    fn internal(message: impl Into<String>) -> Self {
        Self::Status {
            code: code::INTERNAL,
            message: message.into(),
        }
    }
}

/// The open connection: the handle calls clone, and its number, so that a call that finds it
/// broken clears only that one.
#[derive(Clone)]
struct Open {
    send: SendRequest<Bytes>,
    generation: u64,
}

#[derive(Default)]
struct State {
    open: Option<Open>,
    generation: u64,
}

impl State {
    /// Forgets the open connection if it is the one numbered `generation` (a newer one
    /// stays).
    fn forget(&mut self, generation: u64) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.generation == generation)
        {
            self.open = None;
        }
    }
}

/// The client of one instance address.
pub struct Upstream {
    /// `scheme://authority` and the method's path.
    uri: Uri,
    /// `host:port`, as dialed.
    authority: String,
    /// The name the TLS certificate must carry, for an `https://` address.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    dialer: Dialer,
    http2: Http2,
    state: Arc<Mutex<State>>,
    /// Held by the call that opens the connection: the others wait for it and share its
    /// outcome rather than dial too.
    opening: tokio::sync::Mutex<()>,
    /// Calls open now: pings are sent only while there are some (servers on grpc-go and
    /// grpc-java close a connection pinged with no call on it, `too_many_pings`).
    calls_open: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// Counts a call as open until it ends, however it ends.
struct CallOpen<'a>(&'a AtomicUsize);

impl Drop for CallOpen<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
            .path_and_query(SEND_PATH)
            .build()
            .map_err(|e| format!("instance address {addr:?}: {e}"))?;
        Ok(Self {
            uri,
            authority: authority.as_str().to_owned(),
            tls,
            dialer,
            http2,
            state: Arc::default(),
            opening: tokio::sync::Mutex::new(()),
            calls_open: Arc::default(),
        })
    }

    /// Calls `Send` with `call`, telling the service it has `timeout` (`grpc-timeout`). The
    /// caller bounds the call's time.
    pub async fn send(
        &self,
        call: &Outgoing,
        timeout: Duration,
        limits: CallLimits,
    ) -> Result<ForwardingResp, CallError> {
        let request = || self.request(call.via.as_ref(), timeout);
        self.calls_open.fetch_add(1, Ordering::Relaxed);
        let _open = CallOpen(&self.calls_open);
        let (response, open) = self.start(request, call.message.clone()).await?;
        let answer = read_answer(response, limits).await;
        if let Err(CallError::Transport(_)) = &answer {
            self.clear_if_broken(&open);
        }
        answer
    }

    /// The call's head: the method's path and gRPC's headers, the time the service has, and
    /// the request's `Via` mark.
    fn request(&self, via: Option<&HeaderValue>, timeout: Duration) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        headers.insert(GRPC_TIMEOUT, grpc_timeout(timeout));
        if let Some(via) = via {
            headers.insert(http::header::VIA, via.clone());
        }
        request
    }

    /// Sends the request's HEADERS and DATA on the open connection, opening one when there
    /// is none. When the connection takes no new stream (it has closed, or the instance sent
    /// GOAWAY), nothing was sent: it is forgotten and the request goes once on a new one.
    async fn start(
        &self,
        request: impl Fn() -> Request<()>,
        body: Bytes,
    ) -> Result<(h2::client::ResponseFuture, Open), CallError> {
        let mut replaced = false;
        loop {
            let open = self.connection().await?;
            let sent = match open.send.clone().ready().await {
                Ok(mut ready) => ready.send_request(request(), false),
                Err(error) => Err(error),
            };
            let (response, mut stream) = match sent {
                Ok(sent) => sent,
                Err(error) if !replaced => {
                    tracing::debug!(addr = %self.uri, %error, "the connection takes no new call; opening another");
                    self.clear(&open);
                    replaced = true;
                    continue;
                }
                Err(error) => return Err(CallError::Transport(error.to_string())),
            };
            // Queued behind the HEADERS of a stream not yet open: both leave in the
            // connection task's next write.
            stream
                .send_data(body, true)
                .map_err(|e| self.transport(&open, &e))?;
            return Ok((response, open));
        }
    }

    fn transport(&self, open: &Open, error: &h2::Error) -> CallError {
        self.clear_if_broken(open);
        CallError::Transport(error.to_string())
    }

    /// Forgets `open` if its connection has ended, so the next call opens another.
    fn clear_if_broken(&self, open: &Open) {
        let mut send = open.send.clone();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        if let std::task::Poll::Ready(Err(_)) = send.poll_ready(&mut cx) {
            self.clear(open);
        }
    }

    fn clear(&self, open: &Open) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget(open.generation);
    }

    fn current(&self) -> Option<Open> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .clone()
    }

    /// The open connection, or a new one. Calls that arrive while one is being opened wait
    /// for it and share its outcome.
    async fn connection(&self) -> Result<Open, CallError> {
        if let Some(open) = self.current() {
            return Ok(open);
        }
        let _opening = self.opening.lock().await;
        if let Some(open) = self.current() {
            return Ok(open);
        }
        let tls = self.tls.clone();
        let http2 = self.http2;
        let (send, connection) = self
            .dialer
            .open(&self.authority, |io| handshake(io, tls, http2))
            .await
            .map_err(CallError::Connect)?;
        let open = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.generation += 1;
            let open = Open {
                send,
                generation: state.generation,
            };
            state.open = Some(open.clone());
            open
        };
        let (state, generation) = (Arc::downgrade(&self.state), open.generation);
        let calls_open = self.calls_open.clone();
        let keep_alive = self.http2.keep_alive;
        let addr = self.uri.clone();
        tokio::spawn(async move {
            drive(connection, keep_alive, &calls_open, &addr).await;
            if let Some(state) = state.upgrade() {
                state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget(generation);
            }
        });
        Ok(open)
    }
}

/// The connection's task: runs it until it ends, or until a keep-alive ping goes unanswered
/// (then dropping it fails its calls). Pings go only while calls are open.
async fn drive(
    mut connection: h2::client::Connection<Box<dyn Io>, Bytes>,
    keep_alive: Option<KeepAlive>,
    calls_open: &AtomicUsize,
    addr: &Uri,
) {
    let pings = keep_alive.and_then(|k| connection.ping_pong().map(|p| (k, p)));
    let pinging = async move {
        let Some((keep_alive, mut ping_pong)) = pings else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(keep_alive.interval).await;
            if calls_open.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let pong = ping_pong.ping(h2::Ping::opaque());
            match tokio::time::timeout(keep_alive.timeout, pong).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%addr, %error, "keep-alive ping failed; closing the connection");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, timeout_ms = keep_alive.timeout.as_millis(), "no answer to the keep-alive ping; closing the connection");
                    return;
                }
            }
        }
    };
    tokio::select! {
        ended = connection => {
            if let Err(error) = ended {
                tracing::debug!(%addr, %error, "connection to instance ended");
            }
        }
        () = pinging => {}
    }
}

/// TLS (when the address is `https://`) and the HTTP/2 handshake over a new connection.
async fn handshake(
    io: Box<dyn Io>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    http2: Http2,
) -> std::io::Result<(
    SendRequest<Bytes>,
    h2::client::Connection<Box<dyn Io>, Bytes>,
)> {
    let io: Box<dyn Io> = match tls {
        None => io,
        Some((config, name)) => {
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, io)
                .await?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the instance's TLS did not agree on HTTP/2 (ALPN h2)",
                ));
            }
            Box::new(stream)
        }
    };
    h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_header_list_size(RESPONSE_HEADER_LIST_BYTES_MAX)
        .max_concurrent_reset_streams(RESET_STREAMS_MAX)
        .reset_stream_duration(http2.reset_stream_hold)
        .enable_push(false)
        .handshake(io)
        .await
        .map_err(|e| std::io::Error::other(format!("HTTP/2 handshake: {e}")))
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

/// `grpc-timeout` for `timeout`, in milliseconds, or seconds past eight digits of them.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let (value, unit) = if ms <= GRPC_TIMEOUT_DIGITS_MAX {
        (ms, b'm')
    } else {
        ((ms / 1000).min(GRPC_TIMEOUT_DIGITS_MAX), b'S')
    };
    // Digit by digit: the formatting machinery cost a visible share per call.
    let mut buf = [0u8; translate::DECIMAL_DIGITS_MAX];
    let digits = translate::decimal(value, &mut buf);
    let mut text = [0u8; translate::DECIMAL_DIGITS_MAX + 1];
    text[..digits.len()].copy_from_slice(digits);
    text[digits.len()] = unit;
    HeaderValue::from_bytes(&text[..=digits.len()])
        .unwrap_or_else(|_| HeaderValue::from_static("1m"))
}

/// Reads the answer: its status (from the headers of a trailers-only answer, else from the
/// trailers), and its one message, within `limits`.
async fn read_answer(
    response: h2::client::ResponseFuture,
    limits: CallLimits,
) -> Result<ForwardingResp, CallError> {
    let response = response
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let (head, mut body) = response.into_parts();
    if let Some(status) = grpc_status(&head.headers) {
        return match status {
            Ok(()) => Err(CallError::internal(
                "a trailers-only answer with status OK and no message",
            )),
            Err(error) => Err(error),
        };
    }
    if head.status != StatusCode::OK {
        return Err(CallError::Status {
            code: http_status_code(head.status),
            message: format!("the instance answered HTTP {}", head.status),
        });
    }
    let mut message = Collected::default();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| CallError::Transport(e.to_string()))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        message.push(chunk, limits)?;
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?;
    match trailers.as_ref().and_then(grpc_status) {
        Some(Ok(())) => message.decode(),
        Some(Err(error)) => Err(error),
        None => Err(CallError::internal("the answer ended without grpc-status")),
    }
}

/// The bytes of an answer's one message as they arrive: the first chunk kept as it came
/// (an answer of one DATA frame is not copied), later ones appended.
#[derive(Default)]
enum Collected {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Collected {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Empty => &[],
            Self::One(bytes) => bytes,
            Self::Many(bytes) => bytes,
        }
    }

    fn push(&mut self, chunk: Bytes, limits: CallLimits) -> Result<(), CallError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let bound = limits
            .response_message_bytes_max
            .saturating_add(MESSAGE_PREFIX_BYTES);
        if self.bytes().len().saturating_add(chunk.len()) > bound {
            return Err(CallError::TooLarge);
        }
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(chunk),
            Self::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + chunk.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&chunk);
                Self::Many(many)
            }
            Self::Many(mut many) => {
                many.extend_from_slice(&chunk);
                Self::Many(many)
            }
        };
        // Refuse as soon as the length prefix says too much.
        if let Some(&[a, b, c, d]) = self.bytes().get(1..MESSAGE_PREFIX_BYTES) {
            let declared = u32::from_be_bytes([a, b, c, d]) as usize;
            if declared > limits.response_message_bytes_max {
                return Err(CallError::TooLarge);
            }
        }
        Ok(())
    }

    fn decode(self) -> Result<ForwardingResp, CallError> {
        let mut bytes = match self {
            Self::Empty => Bytes::new(),
            Self::One(bytes) => bytes,
            Self::Many(bytes) => bytes.freeze(),
        };
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
}

/// The gRPC status in `headers`: `None` without `grpc-status`, `Ok` for OK.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), CallError>> {
    let value = headers.get(GRPC_STATUS)?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let Some(code) = code else {
        return Some(Err(CallError::internal(format!(
            "grpc-status {:?} is not a number",
            String::from_utf8_lossy(value.as_bytes())
        ))));
    };
    if code == code::OK {
        return Some(Ok(()));
    }
    let message = headers
        .get(GRPC_MESSAGE)
        .map(|m| percent_decode(m.as_bytes()))
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
fn http_status_code(status: StatusCode) -> i32 {
    match status.as_u16() {
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

    fn limits(max: usize) -> CallLimits {
        CallLimits {
            response_message_bytes_max: max,
        }
    }

    fn framed(message: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_u32(message.len() as u32);
        b.extend_from_slice(message);
        b.freeze()
    }

    #[test]
    fn a_message_in_any_cut_of_chunks_decodes_the_same() {
        let resp = ForwardingResp {
            status: 201,
            body: Bytes::from_static(b"hello"),
            ..Default::default()
        };
        let whole = framed(&resp.encode_to_vec());
        for cut in 0..=whole.len() {
            let mut c = Collected::default();
            c.push(whole.slice(..cut), limits(1024)).unwrap();
            c.push(whole.slice(cut..), limits(1024)).unwrap();
            assert_eq!(c.decode().unwrap(), resp, "cut at {cut}");
        }
    }

    #[test]
    fn a_message_past_the_bound_is_refused_from_its_prefix() {
        let whole = framed(&[7u8; 100]);
        let mut c = Collected::default();
        // The prefix alone already declares 100 bytes against a bound of 99.
        assert!(matches!(
            c.push(whole.slice(..5), limits(99)),
            Err(CallError::TooLarge)
        ));
        let mut c = Collected::default();
        c.push(whole.clone(), limits(100)).unwrap();
        let mut c = Collected::default();
        c.push(whole.slice(..50), limits(100)).unwrap();
        assert!(matches!(
            c.push(whole.slice(..60), limits(100)),
            Err(CallError::TooLarge)
        ));
    }

    #[test]
    fn truncated_compressed_or_trailing_bytes_are_refused() {
        let resp = ForwardingResp::default().encode_to_vec();
        let whole = framed(&resp);
        let mut short = Collected::default();
        short.push(whole.slice(..3), limits(64)).unwrap();
        assert!(matches!(
            short.decode(),
            Err(CallError::Status {
                code: code::INTERNAL,
                ..
            })
        ));
        let mut compressed = BytesMut::from(&whole[..]);
        compressed[0] = 1;
        let mut c = Collected::default();
        c.push(compressed.freeze(), limits(64)).unwrap();
        assert!(matches!(
            c.decode(),
            Err(CallError::Status {
                code: code::INTERNAL,
                ..
            })
        ));
        let mut two = BytesMut::from(&whole[..]);
        two.extend_from_slice(&whole);
        let mut c = Collected::default();
        c.push(two.freeze(), limits(64)).unwrap();
        assert!(matches!(
            c.decode(),
            Err(CallError::Status {
                code: code::INTERNAL,
                ..
            })
        ));
    }

    #[test]
    fn status_and_message_are_read_from_headers() {
        let mut h = HeaderMap::new();
        assert!(grpc_status(&h).is_none());
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(matches!(grpc_status(&h), Some(Ok(()))));
        h.insert("grpc-status", HeaderValue::from_static("9"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("switchyard: forwarding loop%20detected %zz%"),
        );
        match grpc_status(&h) {
            Some(Err(CallError::Status { code, message })) => {
                assert_eq!(code, 9);
                assert_eq!(message, "switchyard: forwarding loop detected %zz%");
            }
            other => panic!("{other:?}"),
        }
        h.insert("grpc-status", HeaderValue::from_static("99"));
        assert!(matches!(
            grpc_status(&h),
            Some(Err(CallError::Status {
                code: code::UNKNOWN,
                ..
            }))
        ));
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert!(matches!(
            grpc_status(&h),
            Some(Err(CallError::Status {
                code: code::INTERNAL,
                ..
            }))
        ));
    }

    #[test]
    fn grpc_timeout_stays_within_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(grpc_timeout(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(grpc_timeout(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(grpc_timeout(Duration::MAX), "99999999S");
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

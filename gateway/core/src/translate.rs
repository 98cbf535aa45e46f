//! The translator between HTTP and the forwarding contract.
//!
//! Inbound: the first path segment names the service; the rest of the request becomes a
//! `ForwardingReq` with the hop-by-hop headers removed and the forwarding headers added.
//! Outbound: a `ForwardingResp` becomes an HTTP response if, and only if, its status and every
//! header are valid HTTP; otherwise the caller answers 502. `docs/protocol.md` lists the rules.
//!
//! [`call`] states a request as data (a GraphQL `call` field) and turns it into the HTTP head a
//! REST client would have sent, so both fronts go through [`to_forwarding_req`] alike.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};
use switchyard_proto::forwarding::{ForwardingReq, ForwardingResp, Header};

use crate::{GatewayError, hops, names};

pub mod call;
#[cfg(test)]
mod tests;

pub use call::{Call, body_json, call_request_id, call_to_forwarding_req};

/// Bounds on what the gateway accepts from a client and from a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub body_bytes_max: usize,
    pub header_bytes_max: usize,
}

/// Bounds on a service's response headers (the body is bounded by the gRPC message limit).
pub const RESPONSE_HEADERS_MAX: usize = 256;
pub const RESPONSE_HEADER_BYTES_MAX: usize = 64 * 1024;
/// Longest client-supplied request id the gateway keeps; a longer or odd one is replaced.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

pub const X_REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";
/// The same names as `HeaderName`s, made at compile time: a map looked up or filled with a
/// `&str` parses the name each time.
pub const X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);
pub const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);

/// The parts of an HTTP request head the translator reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
}

/// What the gateway knows about a request beyond its head and body.
#[derive(Debug, Clone)]
pub struct ForwardContext<'a> {
    /// The scheme the client used to reach the gateway.
    pub scheme: &'a str,
    pub client_addr: Option<SocketAddr>,
    pub gateway_node: &'a str,
    /// The request id to use: the client's (see [`client_request_id`]) or a fresh one.
    pub request_id: &'a str,
    pub deadline_unix_ms: u64,
    /// This gateway's name in `Via` ([`crate::hops::pseudonym`] of its node id).
    pub via_name: &'a str,
    /// The most proxies a request may have passed before it arrives (`upstream.hops_max`).
    pub hops_max: usize,
}

/// Splits `/{service}/{rest}` into the service name and the path below it (which always
/// starts with `/`). The service segment is taken as sent, without percent-decoding: a name
/// that needs escaping cannot be a registered service.
pub fn route(path: &str) -> Result<(&str, &str), GatewayError> {
    let no_route = || GatewayError::RouteNotFound {
        path: path.chars().take(256).collect(),
    };
    let rest = path.strip_prefix('/').ok_or_else(no_route)?;
    let (service, below) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if service.is_empty() {
        return Err(no_route());
    }
    if names::validate_service(service).is_err() {
        return Err(GatewayError::ServiceNotFound {
            service: service.chars().take(256).collect(),
        });
    }
    Ok((service, below))
}

/// The size of a header block as the limit counts it: name, value and 4 bytes of framing
/// (`: ` and CRLF) per field.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// Checks the request head against the limits before the body is read: a request whose
/// headers are too large gets 431, and one that announces a too-large body gets 413 at once.
pub fn check_head(head: &RequestHead<'_>, limits: &Limits) -> Result<(), GatewayError> {
    if header_bytes(head.headers) > limits.header_bytes_max {
        return Err(GatewayError::HeadersTooLarge {
            limit_bytes: limits.header_bytes_max,
        });
    }
    let announced = head.headers.get(header::CONTENT_LENGTH);
    if announced.is_some_and(|v| announces_more_than(v, limits.body_bytes_max)) {
        return Err(GatewayError::BodyTooLarge {
            limit_bytes: limits.body_bytes_max,
        });
    }
    Ok(())
}

/// Whether a `Content-Length` value announces more than `limit` bytes. A run of digits too
/// long for a u64 announces more than any limit; a value that is not a number announces
/// nothing here, and the HTTP server refuses it.
fn announces_more_than(value: &HeaderValue, limit: usize) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    match text.parse::<u64>() {
        Ok(n) => n > limit as u64,
        Err(e) => *e.kind() == std::num::IntErrorKind::PosOverflow,
    }
}

/// The client's `X-Request-Id` if it is a plausible id (1 to 128 visible ASCII characters),
/// otherwise `None`, and the caller makes one.
pub fn client_request_id(headers: &HeaderMap) -> Option<&str> {
    let id = headers.get(X_REQUEST_ID_NAME)?.to_str().ok()?;
    plausible_request_id(id).then_some(id)
}

/// Whether a client-supplied request id is kept: 1 to 128 visible ASCII characters.
pub fn plausible_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= REQUEST_ID_BYTES_MAX && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `name` is a hop-by-hop header, which a proxy must not forward.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// The header names listed in `Connection`, which are hop-by-hop for this message. The value
/// is split as bytes: a token that is not ASCII names no field, but it must not hide the
/// other tokens of the same value (a whole-value `to_str` would).
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    list_tokens(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// The comma-separated tokens of some field values, trimmed, lowercased, empty ones and those
/// that are not UTF-8 left out.
fn list_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .filter_map(|t| std::str::from_utf8(t).ok())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// [`connection_tokens`] of a service's response fields, before they are checked: the tokens
/// of every `Connection` field (any case), lowercased.
fn connection_tokens_of(headers: &[Header]) -> Vec<String> {
    list_tokens(
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| &h.value[..]),
    )
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Only a well-formed W3C traceparent ([`crate::trace::parse`]) is copied into the forwarding
/// metadata (the header itself passes through untouched either way).
fn valid_traceparent(v: &str) -> bool {
    crate::trace::parse(v).is_some()
}

/// Where a routed request goes, read from its head before its headers are walked.
struct Target<'h> {
    service: &'h str,
    path: &'h str,
    authority: &'h str,
}

/// Routes the request and checks its hops; the authority is the URI's, else `Host`'s.
fn target<'h>(
    head: &RequestHead<'h>,
    ctx: &ForwardContext<'_>,
) -> Result<Target<'h>, GatewayError> {
    let uri: &'h Uri = head.uri;
    let (service, path) = route(uri.path())?;
    hops::check(head.headers, ctx.via_name, ctx.hops_max)?;
    let authority = uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            let headers: &'h HeaderMap = head.headers;
            headers.get(header::HOST).and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default();
    Ok(Target {
        service,
        path,
        authority,
    })
}

/// What [`each_header`] finds on its way.
struct Walked<'h> {
    /// The client's first `traceparent`, if well-formed, else `""`.
    traceparent: &'h str,
    /// The `Via` value the service is sent: the client's entries and this gateway's.
    via: Vec<u8>,
}

/// Passes every header the service is sent to `emit`, in order: the client's own, less the
/// hop-by-hop ones and those the gateway replaces, then `X-Forwarded-For` (the client's
/// entries and its address), `X-Forwarded-Proto` and `X-Forwarded-Host` unless the client
/// sent them, `X-Request-Id` and `Via`.
fn each_header<'h>(
    head: &RequestHead<'h>,
    ctx: &ForwardContext<'_>,
    authority: &str,
    mut emit: impl FnMut(&str, &[u8]),
) -> Walked<'h> {
    let headers: &'h HeaderMap = head.headers;
    let named = connection_tokens(headers);
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    let (mut has_proto, mut has_host) = (false, false);
    let mut traceparent = "";
    for (name, value) in headers {
        let name = name.as_str();
        if is_hop_by_hop(name) || named.iter().any(|t| t == name) {
            continue;
        }
        match name {
            // Combined into one field below, with the client address appended.
            "x-forwarded-for" => {
                forwarded_for.push(value.as_bytes());
                continue;
            }
            // Replaced by the id this request is known by.
            X_REQUEST_ID => continue,
            // Combined into one field below, with this gateway's entry appended.
            hops::VIA_HEADER => continue,
            "x-forwarded-proto" => has_proto = true,
            "x-forwarded-host" => has_host = true,
            TRACEPARENT if traceparent.is_empty() => {
                if let Ok(v) = value.to_str()
                    && valid_traceparent(v)
                {
                    traceparent = v;
                }
            }
            _ => {}
        }
        emit(name, value.as_bytes());
    }

    match (ctx.client_addr, forwarded_for.is_empty()) {
        // The common case, a client that sent none: its address alone, without a copy.
        (Some(client), true) => emit("x-forwarded-for", AddrText::ip(client.ip()).as_bytes()),
        (None, true) => {}
        (client, false) => {
            let mut value = forwarded_for.join(&b", "[..]);
            if let Some(client) = client {
                if !value.is_empty() {
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(AddrText::ip(client.ip()).as_bytes());
            }
            emit("x-forwarded-for", &value);
        }
    }
    if !has_proto {
        emit("x-forwarded-proto", ctx.scheme.as_bytes());
    }
    if !has_host && !authority.is_empty() {
        emit("x-forwarded-host", authority.as_bytes());
    }
    emit(X_REQUEST_ID, ctx.request_id.as_bytes());
    let via = hops::forwarded_via(headers, head.version, ctx.via_name);
    emit(hops::VIA_HEADER, &via);
    Walked { traceparent, via }
}

/// Builds the `ForwardingReq` for a routed request. `body` must already be bounded by the
/// caller (it is read from the network, which the core does not do).
pub fn to_forwarding_req(
    head: &RequestHead<'_>,
    body: Bytes,
    ctx: &ForwardContext<'_>,
) -> Result<ForwardingReq, GatewayError> {
    let Target {
        service,
        path,
        authority,
    } = target(head, ctx)?;
    let mut headers = Vec::with_capacity(head.headers.len() + 5);
    let walked = each_header(head, ctx, authority, |name, value| {
        headers.push(Header {
            name: name.to_owned(),
            value: Bytes::copy_from_slice(value),
        });
    });
    Ok(ForwardingReq {
        method: head.method.as_str().to_owned(),
        scheme: ctx.scheme.to_owned(),
        authority: authority.to_owned(),
        path: path.to_owned(),
        raw_query: head.uri.query().unwrap_or_default().to_owned(),
        headers,
        body,
        http_version: version_str(head.version).to_owned(),
        client_addr: ctx
            .client_addr
            .map(|a| AddrText::socket(a).as_str().to_owned())
            .unwrap_or_default(),
        request_id: ctx.request_id.to_owned(),
        deadline_unix_ms: ctx.deadline_unix_ms,
        service: service.to_owned(),
        gateway_node: ctx.gateway_node.to_owned(),
        traceparent: walked.traceparent.to_owned(),
    })
}

/// What [`encode_forwarding_req`] tells beside the bytes it wrote.
#[derive(Debug)]
pub struct Encoded<'h> {
    /// The service the request names.
    pub service: &'h str,
    /// The `Via` value the service is sent (the last `via` header of the request).
    pub via: Vec<u8>,
}

/// Writes the request of [`to_forwarding_req`], its trace context set to `traceparent` as
/// [`crate::trace::set_traceparent`] sets it, into `out` as the protobuf encoding of a
/// `ForwardingReq`, byte for byte the one prost writes of that message, without building the
/// message: no owned string or buffer per field and header. The gateway uses it for requests
/// that no policy or audit reads.
pub fn encode_forwarding_req<'h>(
    head: &RequestHead<'h>,
    body: &Bytes,
    ctx: &ForwardContext<'_>,
    traceparent: &str,
    out: &mut BytesMut,
) -> Result<Encoded<'h>, GatewayError> {
    let Target {
        service,
        path,
        authority,
    } = target(head, ctx)?;
    out.reserve(
        body.len() + header_bytes(head.headers) + 8 * head.headers.len() + ENCODED_EXTRA_BYTES,
    );
    // Fields in the order of their numbers, an empty one left out, as prost writes them.
    wire::string(out, 1, head.method.as_str());
    wire::string(out, 2, ctx.scheme);
    wire::string(out, 3, authority);
    wire::string(out, 4, path);
    wire::string(out, 5, head.uri.query().unwrap_or_default());
    let mut traceparent_sent = false;
    let walked = each_header(head, ctx, authority, |name, value| {
        if name == TRACEPARENT {
            // The first takes the gateway's value; any later one is dropped.
            if traceparent_sent {
                return;
            }
            traceparent_sent = true;
            wire::header(out, name, traceparent.as_bytes());
        } else {
            wire::header(out, name, value);
        }
    });
    if !traceparent_sent {
        wire::header(out, TRACEPARENT, traceparent.as_bytes());
    }
    wire::bytes(out, 7, body);
    wire::string(out, 8, version_str(head.version));
    if let Some(client) = ctx.client_addr {
        wire::string(out, 9, AddrText::socket(client).as_str());
    }
    wire::string(out, 10, ctx.request_id);
    wire::uint64(out, 11, ctx.deadline_unix_ms);
    wire::string(out, 12, service);
    wire::string(out, 13, ctx.gateway_node);
    wire::string(out, 14, traceparent);
    Ok(Encoded {
        service,
        via: walked.via,
    })
}

/// Room reserved beyond the body and the client's headers: the fixed fields, the forwarding
/// headers and the trace context.
const ENCODED_EXTRA_BYTES: usize = 512;

/// The protobuf wire format, as far as a `ForwardingReq` needs it.
mod wire {
    use bytes::BytesMut;
    use prost::encoding::encoded_len_varint;

    const VARINT: u8 = 0;
    const LENGTH_DELIMITED: u8 = 2;

    /// A field's key (its number, below 16, and wire type) and a varint, written at once:
    /// the bytes go in one copy rather than one buffer call each.
    fn key_and_varint(out: &mut BytesMut, field: u8, wire_type: u8, value: u64) {
        let key = (field << 3) | wire_type;
        if value < 0x80 {
            // Nearly every field: two bytes, a copy of fixed length (no call to memcpy).
            out.extend_from_slice(&[key, value as u8]);
            return;
        }
        let mut head = [0u8; 11];
        head[0] = key;
        let mut len = 1;
        let mut rest = value;
        while rest >= 0x80 {
            head[len] = (rest as u8) | 0x80;
            rest >>= 7;
            len += 1;
        }
        head[len] = rest as u8;
        out.extend_from_slice(&head[..=len]);
    }

    /// A `bytes` or `string` field; an empty one is left out.
    pub fn bytes(out: &mut BytesMut, field: u8, value: &[u8]) {
        if value.is_empty() {
            return;
        }
        key_and_varint(out, field, LENGTH_DELIMITED, value.len() as u64);
        out.extend_from_slice(value);
    }

    pub fn string(out: &mut BytesMut, field: u8, value: &str) {
        bytes(out, field, value.as_bytes());
    }

    /// A `uint64` field; zero is left out.
    pub fn uint64(out: &mut BytesMut, field: u8, value: u64) {
        if value != 0 {
            key_and_varint(out, field, VARINT, value);
        }
    }

    fn field_len(value: &[u8]) -> usize {
        if value.is_empty() {
            0
        } else {
            1 + encoded_len_varint(value.len() as u64) + value.len()
        }
    }

    /// One element of `headers` (field 6): a `Header { name = 1, value = 2 }`.
    pub fn header(out: &mut BytesMut, name: &str, value: &[u8]) {
        let name = name.as_bytes();
        let len = field_len(name) + field_len(value);
        if len < 0x80 && !name.is_empty() {
            // Nearly every field: each length is below the whole's, so each is one byte, and
            // the keys and lengths go in two copies of fixed length.
            out.extend_from_slice(&[
                (6 << 3) | LENGTH_DELIMITED,
                len as u8,
                (1 << 3) | LENGTH_DELIMITED,
                name.len() as u8,
            ]);
            out.extend_from_slice(name);
            if !value.is_empty() {
                out.extend_from_slice(&[(2 << 3) | LENGTH_DELIMITED, value.len() as u8]);
                out.extend_from_slice(value);
            }
            return;
        }
        key_and_varint(out, 6, LENGTH_DELIMITED, len as u64);
        bytes(out, 1, name);
        bytes(out, 2, value);
    }
}

/// The digits of the largest `u64`.
pub const DECIMAL_DIGITS_MAX: usize = 20;

/// `n` in decimal, written into `buf` without the formatting machinery (it runs for every
/// request); returns the digits, the end of `buf`.
pub fn decimal(n: u64, buf: &mut [u8; DECIMAL_DIGITS_MAX]) -> &[u8] {
    let mut at = buf.len();
    let mut rest = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &buf[at..]
}

/// An address as text without the formatting machinery (it runs for every request): IPv4
/// from a table of the octets' digits; IPv6 through `Display`, into the same fixed buffer.
pub struct AddrText {
    buf: [u8; ADDR_TEXT_BYTES_MAX],
    len: usize,
}

/// Each octet's decimal digits, then how many there are: `[b'1', b'2', b'7', 3]`.
const OCTET_TEXT: [[u8; 4]; 256] = {
    let mut table = [[0u8; 4]; 256];
    let mut n = 0;
    while n < 256 {
        let (hundreds, tens, ones) = (
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        );
        table[n] = match n {
            100.. => [hundreds, tens, ones, 3],
            10.. => [tens, ones, 0, 2],
            _ => [ones, 0, 0, 1],
        };
        n += 1;
    }
    table
};

/// The longest address text: `[` an IPv6 address of 45 characters `%` a scope id of 10
/// digits `]:` a port of 5.
const ADDR_TEXT_BYTES_MAX: usize = 64;

impl AddrText {
    /// `a.b.c.d:port`, or `[v6]:port` (with its scope id, if any).
    pub fn socket(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(v4) => {
                let mut text = Self::empty();
                text.push_v4(*v4.ip());
                text.push(b':');
                text.push_decimal(u32::from(v4.port()));
                text
            }
            SocketAddr::V6(v6) => Self::display(&v6),
        }
    }

    /// The address without its port.
    pub fn ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let mut text = Self::empty();
                text.push_v4(v4);
                text
            }
            IpAddr::V6(v6) => Self::display(&v6),
        }
    }

    fn empty() -> Self {
        Self {
            buf: [0; ADDR_TEXT_BYTES_MAX],
            len: 0,
        }
    }

    fn display(value: &impl std::fmt::Display) -> Self {
        use std::fmt::Write;
        let mut text = Self::empty();
        // The buffer holds the longest address; a failed write leaves what fit.
        let _ = write!(text, "{value}");
        text
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn push_decimal(&mut self, n: u32) {
        let mut buf = [0u8; DECIMAL_DIGITS_MAX];
        self.push_slice(decimal(u64::from(n), &mut buf));
    }

    /// `a.b.c.d`: each octet's digits in one copy, without a division loop (this runs for
    /// every request, twice: `x-forwarded-for` and the message's `client_addr`).
    fn push_v4(&mut self, ip: Ipv4Addr) {
        let [a, b, c, d] = ip.octets();
        self.push_octet(a);
        for octet in [b, c, d] {
            self.push(b'.');
            self.push_octet(octet);
        }
    }

    /// An octet's digits from [`OCTET_TEXT`]: one fixed copy of four bytes, of which the
    /// first `len` count.
    fn push_octet(&mut self, n: u8) {
        let [d0, d1, d2, len] = OCTET_TEXT[usize::from(n)];
        match self.buf.get_mut(self.len..self.len + 4) {
            Some(slot) => {
                slot.copy_from_slice(&[d0, d1, d2, 0]);
                self.len += usize::from(len);
            }
            None => self.push_slice(&[d0, d1, d2][..usize::from(len)]),
        }
    }

    /// Appends what fits of `bytes`.
    fn push_slice(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(ADDR_TEXT_BYTES_MAX);
        let fit = end - self.len;
        self.buf[self.len..end].copy_from_slice(&bytes[..fit]);
        self.len = end;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is written: digits and dots, or what `Display` writes of an address.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Debug for AddrText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AddrText").field(&self.as_str()).finish()
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Fields the gateway may add to a service's answer, reserved for in [`to_http_response`].
const RESPONSE_HEADERS_ADDED: usize = 4;

/// Turns a service's `ForwardingResp` into an HTTP response. `Err` carries the reason the
/// response is not valid HTTP; the caller answers 502 with it.
pub fn to_http_response(resp: ForwardingResp) -> Result<http::Response<Bytes>, String> {
    let status = u16::try_from(resp.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("status {} is outside 200..=599", resp.status))?;
    if resp.headers.len() > RESPONSE_HEADERS_MAX {
        return Err(format!(
            "{} headers; at most {RESPONSE_HEADERS_MAX}",
            resp.headers.len()
        ));
    }
    let total: usize = resp
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    if total > RESPONSE_HEADER_BYTES_MAX {
        return Err(format!(
            "headers of {total} bytes; at most {RESPONSE_HEADER_BYTES_MAX}"
        ));
    }

    // One pass into the response's map: every field is checked, and the hop-by-hop ones, those
    // the service's `Connection` names, and its Content-Length (recomputed from the body: a
    // service's own could be wrong) are left out.
    let named = connection_tokens_of(&resp.headers);
    // Room for the fields the gateway adds (`x-request-id`, a policy's): a map that grows
    // on insert rehashes, which cost about 1 % of a forwarded request's instructions.
    let mut out = HeaderMap::with_capacity(resp.headers.len() + RESPONSE_HEADERS_ADDED);
    for h in resp.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("header name {:?} is not a valid HTTP field name", h.name))?;
        // The value's bytes are shared with the decoded message, not copied.
        let value = HeaderValue::from_maybe_shared(h.value).map_err(|_| {
            format!("header {name} has a value that is not a valid HTTP field value")
        })?;
        let s = name.as_str();
        if is_hop_by_hop(s) || named.iter().any(|t| t == s) || name == header::CONTENT_LENGTH {
            continue;
        }
        out.append(name, value);
    }

    // These statuses have no body by definition; whatever the service sent is dropped.
    let body = if status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_MODIFIED
    {
        Bytes::new()
    } else {
        resp.body
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = out;
    Ok(response)
}

//! The `request` target: a request as a client could send it, through the steps the node
//! takes (`client_request_id`, `check_head`, `route`, the body limit, `to_forwarding_req`).
//!
//! The input is structured: methods, request targets, header names and values are drawn
//! mostly from small vocabularies that hit the interesting rules (hop-by-hop fields,
//! `Connection` lists, the forwarding headers, `Content-Length` near the limit), with a raw
//! escape hatch in each place. An input the `http` crate refuses is skipped: hyper and h2
//! build requests with that crate, so such a request can never reach the gateway.
//!
//! This file is the input model; `request/properties.rs` runs the steps and checks them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};
use switchyard_core::translate::Limits;

mod properties;

pub use properties::check_case;

/// The id the node makes when the client sent no plausible one.
const MADE_REQUEST_ID: &str = "gw-made-0001";
const GATEWAY_NODE: &str = "gw-fuzz";
const DEADLINE_UNIX_MS: u64 = 1_700_000_000_000;
/// Largest body the harness builds; bodies only pass through, so size matters little.
const BODY_BYTES_MAX: usize = 4096;

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];
const SERVICES: &[&str] = &[
    "orders",
    "a",
    "svc-1.v2_beta",
    "9lives",
    "Orders",
    "-x",
    ".hidden",
    "_x",
];
const HOSTS: &[&str] = &["api.example", "api.example:8080", "[::1]:80", "u@h", "h:0"];
const HEADER_NAMES: &[&str] = &[
    "connection",
    "Connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "host",
    "content-length",
    "Content-Length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "X-Request-Id",
    "traceparent",
    "accept",
    "cookie",
    "authorization",
    "x-secret",
    "X-Secret",
];
const VALUES: &[&str] = &[
    "",
    "close",
    "keep-alive",
    "chunked",
    "trailers",
    "h2c",
    "1.1.1.1",
    "2.2.2.2, 3.3.3.3",
    "https",
    "api.example",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "client-id-1",
    "has space",
    "0",
    "+5",
    " 7 ",
    "18446744073709551616",
    "text/plain",
];
/// Tokens for `Connection`-style lists, raw bytes so that non-ASCII ones can appear.
const TOKENS: &[&[u8]] = &[
    b"close",
    b"keep-alive",
    b"X-Secret",
    b"x-secret",
    b"te",
    b"upgrade",
    b"x-forwarded-for",
    b"X-Forwarded-Proto",
    b"x-forwarded-host",
    b"x-request-id",
    b"content-length",
    b"host",
    b"traceparent",
    b"accept",
    b"",
    b"caf\xc3\xa9",
    b"\xff",
];

fn pick<'a, T: ?Sized>(list: &[&'a T], i: u8) -> &'a T {
    list[usize::from(i) % list.len()]
}

#[derive(Debug, Arbitrary)]
enum MethodIn {
    Known(u8),
    Token(String),
}

#[derive(Debug, Arbitrary)]
enum SegmentIn {
    Service(u8),
    Text(String),
    Empty,
    Dot,
    DotDot,
    /// `%XX` for this byte.
    Pct(u8),
    Bytes(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum TargetIn {
    /// `/seg/seg?query`
    Origin {
        segments: Vec<SegmentIn>,
        query: Option<String>,
    },
    /// `http://host/seg/seg?query`
    Absolute {
        host: u8,
        segments: Vec<SegmentIn>,
        query: Option<String>,
    },
    Asterisk,
    /// `host:port`, as for CONNECT.
    Authority(u8),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum NameIn {
    Known(u8),
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum Separator {
    Comma,
    CommaSpace,
    SpaceCommaTab,
    DoubleComma,
}

impl Separator {
    fn bytes(&self) -> &'static [u8] {
        match self {
            Self::Comma => b",",
            Self::CommaSpace => b", ",
            Self::SpaceCommaTab => b" ,\t",
            Self::DoubleComma => b",,",
        }
    }
}

#[derive(Debug, Arbitrary)]
enum ValueIn {
    Known(u8),
    /// A `Connection`-style token list.
    List(Vec<(u8, Separator)>),
    Raw(Vec<u8>),
    /// A long run of one byte, to cross the header limit.
    Long(u16, u8),
    /// A decimal number this far from the body limit (for `Content-Length`).
    NearBodyLimit(i8),
    Number(u64),
}

#[derive(Debug, Arbitrary)]
struct HeaderIn {
    name: NameIn,
    value: ValueIn,
}

#[derive(Debug, Arbitrary)]
enum BodyIn {
    Empty,
    NearLimit(i8),
    Len(u16),
}

#[derive(Debug, Arbitrary)]
enum ClientIn {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

/// One fuzz input: a request, the peer it came from and the node's limits.
#[derive(Debug, Arbitrary)]
pub struct Input {
    method: MethodIn,
    target: TargetIn,
    version: u8,
    headers: Vec<HeaderIn>,
    body: BodyIn,
    client: Option<ClientIn>,
    https: bool,
    header_bytes_max: u16,
    body_bytes_max: u16,
}

/// A request the `http` crate accepted, with everything the node would pass alongside it.
#[derive(Debug)]
pub struct Case {
    pub request: Request<()>,
    pub body: Bytes,
    pub limits: Limits,
    pub client: Option<SocketAddr>,
    pub scheme: &'static str,
}

fn near(limit: usize, delta: i8) -> usize {
    limit.saturating_add_signed(isize::from(delta))
}

impl Input {
    /// The request this input describes, or `None` if the `http` crate refuses it.
    pub fn build(&self) -> Option<Case> {
        let limits = Limits {
            header_bytes_max: usize::from(self.header_bytes_max),
            body_bytes_max: usize::from(self.body_bytes_max) % (BODY_BYTES_MAX + 1),
        };
        let method = match &self.method {
            MethodIn::Known(i) => Method::from_bytes(pick(METHODS, *i).as_bytes()),
            MethodIn::Token(t) => Method::from_bytes(t.as_bytes()),
        }
        .ok()?;
        let uri = Uri::from_maybe_shared(self.target.bytes()).ok()?;
        let version = match self.version % 5 {
            0 => Version::HTTP_09,
            1 => Version::HTTP_10,
            2 => Version::HTTP_11,
            3 => Version::HTTP_2,
            _ => Version::HTTP_3,
        };
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        for h in &self.headers {
            // A field the `http` crate refuses is one no client can deliver; drop just it.
            let Ok(name) = HeaderName::from_bytes(h.name.bytes().as_bytes()) else {
                continue;
            };
            let Ok(value) = HeaderValue::from_bytes(&h.value.bytes(&limits)) else {
                continue;
            };
            request.headers_mut().append(name, value);
        }
        let body_len = match self.body {
            BodyIn::Empty => 0,
            BodyIn::NearLimit(d) => near(limits.body_bytes_max, d),
            BodyIn::Len(n) => usize::from(n),
        }
        .min(BODY_BYTES_MAX + 1);
        let client = self.client.as_ref().map(|c| match c {
            ClientIn::V4(ip, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(*ip)), *port),
            ClientIn::V6(ip, port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(*ip)), *port),
        });
        Some(Case {
            request,
            body: Bytes::from(vec![b'b'; body_len]),
            limits,
            client,
            scheme: if self.https { "https" } else { "http" },
        })
    }
}

impl SegmentIn {
    fn push_to(&self, out: &mut Vec<u8>) {
        match self {
            Self::Service(i) => out.extend_from_slice(pick(SERVICES, *i).as_bytes()),
            Self::Text(s) => out.extend_from_slice(s.as_bytes()),
            Self::Empty => {}
            Self::Dot => out.push(b'.'),
            Self::DotDot => out.extend_from_slice(b".."),
            Self::Pct(b) => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
            Self::Bytes(b) => out.extend_from_slice(b),
        }
    }
}

fn push_path(out: &mut Vec<u8>, segments: &[SegmentIn], query: Option<&String>) {
    for s in segments {
        out.push(b'/');
        s.push_to(out);
    }
    if segments.is_empty() {
        out.push(b'/');
    }
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
}

impl TargetIn {
    fn bytes(&self) -> Bytes {
        let mut out = Vec::new();
        match self {
            Self::Origin { segments, query } => push_path(&mut out, segments, query.as_ref()),
            Self::Absolute {
                host,
                segments,
                query,
            } => {
                out.extend_from_slice(b"http://");
                out.extend_from_slice(pick(HOSTS, *host).as_bytes());
                push_path(&mut out, segments, query.as_ref());
            }
            Self::Asterisk => out.push(b'*'),
            Self::Authority(host) => out.extend_from_slice(pick(HOSTS, *host).as_bytes()),
            Self::Raw(b) => out.extend_from_slice(b),
        }
        Bytes::from(out)
    }
}

impl NameIn {
    fn bytes(&self) -> &str {
        match self {
            Self::Known(i) => pick(HEADER_NAMES, *i),
            Self::Raw(s) => s,
        }
    }
}

impl ValueIn {
    fn bytes(&self, limits: &Limits) -> Vec<u8> {
        match self {
            Self::Known(i) => pick(VALUES, *i).as_bytes().to_vec(),
            Self::List(items) => {
                let mut out = Vec::new();
                for (i, (token, sep)) in items.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(sep.bytes());
                    }
                    out.extend_from_slice(pick(TOKENS, *token));
                }
                out
            }
            Self::Raw(b) => b.clone(),
            Self::Long(n, b) => vec![*b; usize::from(*n)],
            Self::NearBodyLimit(d) => near(limits.body_bytes_max, *d).to_string().into_bytes(),
            Self::Number(n) => n.to_string().into_bytes(),
        }
    }
}

/// The fuzz entry point: decode a structured input and check every property.
pub fn check(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    if let Some(case) = input.build() {
        check_case(&case);
    }
}

/// What `data` decodes to, for triage.
pub fn describe(data: &[u8]) -> String {
    match Input::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => format!("{input:#?}\n=> {:#?}", input.build()),
        Err(e) => format!("not an input: {e}"),
    }
}

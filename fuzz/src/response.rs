//! The `response` target: a service's `ForwardingResp` through `to_http_response`.
//!
//! The first input byte picks the mode. Even: the rest is raw protobuf, decoded with prost as
//! the node's tonic client would. Odd: the rest is a structured response whose statuses, names
//! and values are drawn from vocabularies that hit the rules (out-of-range statuses, names and
//! values with CR, LF, NUL, spaces or upper case, hop-by-hop fields, `Content-Length`).
//!
//! The properties: the translator refuses exactly the responses that are not valid HTTP or
//! exceed the bounds, and an accepted one has a status in 200..=599, no hop-by-hop,
//! `Connection`-named or `Content-Length` field, no value with CR, LF or NUL, every other field
//! the service sent with its values in order, and no body for 204 and 304.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use switchyard_core::translate::{self, RESPONSE_HEADER_BYTES_MAX, RESPONSE_HEADERS_MAX};
use switchyard_proto::forwarding::{ForwardingResp, Header};

use crate::http_rules::{connection_names, has_line_break_or_nul, must_drop, values};

const STATUSES: &[u32] = &[
    0,
    99,
    100,
    101,
    199,
    200,
    201,
    204,
    205,
    206,
    299,
    300,
    304,
    399,
    400,
    404,
    499,
    500,
    502,
    599,
    600,
    999,
    65_535,
    65_536,
    // 65_536 + 200: a status truncated to u16 would read as 200.
    65_736,
    u32::MAX,
];
const NAMES: &[&str] = &[
    "connection",
    "Connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "content-length",
    "Content-Length",
    "set-cookie",
    "x-private",
    "X-Private",
    "content-type",
    "location",
    "bad name",
    "",
];
const VALUES: &[&[u8]] = &[
    b"",
    b"close",
    b"close, x-private",
    b"chunked",
    b"999",
    b"a=1",
    b"text/plain",
    b"/next",
    b"caf\xc3\xa9",
    b"\t tabbed \t",
];
const TOKENS: &[&[u8]] = &[
    b"close",
    b"keep-alive",
    b"x-private",
    b"X-Private",
    b"set-cookie",
    b"content-type",
    b"",
    b"caf\xc3\xa9",
    b"\xff",
];

fn pick<'a, T: ?Sized>(list: &[&'a T], i: u8) -> &'a T {
    list[usize::from(i) % list.len()]
}

#[derive(Debug, Arbitrary)]
enum Splice {
    Cr,
    Lf,
    CrLf,
    Nul,
    Space,
    Colon,
    Tab,
    Upper,
    NonAscii,
}

impl Splice {
    fn bytes(&self) -> &'static [u8] {
        match self {
            Self::Cr => b"\r",
            Self::Lf => b"\n",
            Self::CrLf => b"\r\nset-cookie: evil=1",
            Self::Nul => b"\0",
            Self::Space => b" ",
            Self::Colon => b":",
            Self::Tab => b"\t",
            Self::Upper => b"X",
            Self::NonAscii => "é".as_bytes(),
        }
    }
}

/// `base` with `splice` inserted at `at` (modulo the length, on a character boundary).
fn spliced(base: &[u8], splice: &Splice, at: u8) -> Vec<u8> {
    let mut at = usize::from(at) % (base.len() + 1);
    while at < base.len() && (base[at] & 0xc0) == 0x80 {
        at += 1;
    }
    [&base[..at], splice.bytes(), &base[at..]].concat()
}

#[derive(Debug, Arbitrary)]
enum StatusIn {
    Known(u8),
    Any(u32),
}

#[derive(Debug, Arbitrary)]
enum NameIn {
    Known(u8),
    Spliced { base: u8, splice: Splice, at: u8 },
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum ValueIn {
    Known(u8),
    List(Vec<(u8, bool)>),
    Spliced { base: u8, splice: Splice, at: u8 },
    Raw(Vec<u8>),
    Long(u16, u8),
}

/// One structured response.
#[derive(Debug, Arbitrary)]
pub struct Input {
    status: StatusIn,
    headers: Vec<(NameIn, ValueIn)>,
    /// Adds this many `x-pad-N: v` fields, to cross the field-count bound.
    padding: Option<u16>,
    body: Vec<u8>,
}

impl NameIn {
    fn build(&self) -> String {
        match self {
            Self::Known(i) => pick(NAMES, *i).to_owned(),
            Self::Spliced { base, splice, at } => {
                let bytes = spliced(pick(NAMES, *base).as_bytes(), splice, *at);
                // Every splice is valid UTF-8 and lands on a character boundary.
                String::from_utf8(bytes).unwrap_or_default()
            }
            Self::Raw(s) => s.clone(),
        }
    }
}

impl ValueIn {
    fn build(&self) -> Vec<u8> {
        match self {
            Self::Known(i) => pick(VALUES, *i).to_vec(),
            Self::List(items) => {
                let tokens: Vec<&[u8]> = items.iter().map(|(t, _)| pick(TOKENS, *t)).collect();
                let spaced = items.first().is_some_and(|(_, s)| *s);
                tokens.join(if spaced { &b", "[..] } else { &b","[..] })
            }
            Self::Spliced { base, splice, at } => spliced(pick(VALUES, *base), splice, *at),
            Self::Raw(b) => b.clone(),
            Self::Long(n, b) => vec![*b; usize::from(*n)],
        }
    }
}

impl Input {
    pub fn build(&self) -> ForwardingResp {
        let status = match self.status {
            StatusIn::Known(i) => STATUSES[usize::from(i) % STATUSES.len()],
            StatusIn::Any(s) => s,
        };
        let mut headers: Vec<Header> = self
            .headers
            .iter()
            .map(|(n, v)| Header {
                name: n.build(),
                value: Bytes::from(v.build()),
            })
            .collect();
        let padding = self.padding.map_or(0, |n| usize::from(n) % 400);
        headers.extend((0..padding).map(|i| Header {
            name: format!("x-pad-{i}"),
            value: Bytes::from_static(b"v"),
        }));
        ForwardingResp {
            status,
            headers,
            body: Bytes::from(self.body.clone()),
        }
    }
}

/// The fuzz entry point.
pub fn check(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let resp = if mode & 1 == 0 {
        match ForwardingResp::decode(rest) {
            Ok(resp) => resp,
            Err(_) => return,
        }
    } else {
        match Input::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(input) => input.build(),
            Err(_) => return,
        }
    };
    check_response(resp);
}

/// What `data` decodes to, for triage.
pub fn describe(data: &[u8]) -> String {
    let Some((mode, rest)) = data.split_first() else {
        return "empty input".into();
    };
    if mode & 1 == 0 {
        format!("raw protobuf => {:#?}", ForwardingResp::decode(rest))
    } else {
        match Input::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(input) => format!("{input:#?}\n=> {:#?}", input.build()),
            Err(e) => format!("not an input: {e}"),
        }
    }
}

/// Whether `resp` is valid HTTP within the documented bounds, judged without the core.
fn acceptable(resp: &ForwardingResp) -> bool {
    let bytes: usize = resp
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    (200..=599).contains(&resp.status)
        && resp.headers.len() <= RESPONSE_HEADERS_MAX
        && bytes <= RESPONSE_HEADER_BYTES_MAX
        && resp.headers.iter().all(|h| {
            HeaderName::from_bytes(h.name.as_bytes()).is_ok()
                && HeaderValue::from_bytes(&h.value).is_ok()
        })
}

/// Checks one response through the translator.
pub fn check_response(resp: ForwardingResp) {
    let valid = acceptable(&resp);
    let sent = resp.clone();
    match translate::to_http_response(resp) {
        Err(reason) => {
            assert!(!valid, "a valid response was refused: {reason}");
            assert!(!reason.is_empty(), "a refusal without a reason");
        }
        Ok(out) => {
            assert!(valid, "an invalid response was accepted: {sent:?}");
            check_accepted(&sent, &out);
        }
    }
}

fn check_accepted(sent: &ForwardingResp, out: &http::Response<Bytes>) {
    let status = out.status().as_u16();
    assert!((200..=599).contains(&status), "status {status}");
    assert_eq!(u32::from(status), sent.status, "status changed");

    // The service's fields as HTTP sees them (names lower-cased), to judge Connection by.
    let mut fields = HeaderMap::new();
    for h in &sent.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(&h.value),
        ) {
            fields.append(n, v);
        }
    }
    let connection = connection_names(&fields);
    let dropped = |name: &str| must_drop(name.as_bytes(), &connection) || name == "content-length";

    for (name, value) in out.headers() {
        assert!(
            !dropped(name.as_str()),
            "{name} passed, but it is hop-by-hop, Content-Length or named in Connection {connection:?}"
        );
        assert!(
            !has_line_break_or_nul(value.as_bytes()),
            "{name} carries CR, LF or NUL"
        );
    }
    for name in fields.keys() {
        let expected = if dropped(name.as_str()) {
            Vec::new()
        } else {
            values(&fields, name.as_str())
        };
        assert_eq!(
            values(out.headers(), name.as_str()),
            expected,
            "values of {name}"
        );
    }
    assert_eq!(
        out.headers().len(),
        fields
            .keys()
            .filter(|n| !dropped(n.as_str()))
            .map(|n| fields.get_all(n).iter().count())
            .sum::<usize>(),
        "fields appeared from nowhere"
    );

    if status == 204 || status == 304 {
        assert!(out.body().is_empty(), "{status} with a body");
    } else {
        assert_eq!(out.body(), &sent.body, "body changed");
    }
}

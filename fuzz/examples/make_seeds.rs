//! Writes the raw seeds of the `response`, `registry` and `http2` targets into `seeds/`:
//! `cargo run --example make_seeds` from `fuzz/`. A mutator rarely builds a valid message from
//! nothing, so these start it from messages the codecs accept (and a few they refuse). Each
//! file is the mode byte 0 (raw) and then the encoded message (for `http2`, the harness's
//! header and then the instance's frames, written with the client's own frame writers).
//! Structured-mode seeds are not made here: they are picked from a fuzzing run's minimised
//! corpus (see docs/fuzzing.md).

use std::path::Path;

use bytes::{Bytes, BytesMut};
use prost::Message;
use switchyard_core::event::{Event, EventKind};
use switchyard_core::http2::frame::{self, Reason, flag, kind, setting};
use switchyard_core::http2::hpack;
use switchyard_core::{InstanceKey, Stamp};
use switchyard_proto::forwarding::{ForwardingResp, Header};
use switchyard_proto::registry as pb;

fn header(name: &str, value: &[u8]) -> Header {
    Header {
        name: name.into(),
        value: Bytes::copy_from_slice(value),
    }
}

fn write(dir: &Path, name: &str, message: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), [&[0u8][..], message].concat())
}

fn responses(dir: &Path) -> std::io::Result<()> {
    let seeds = [
        (
            "raw-200-headers",
            200,
            vec![
                header("content-type", b"text/plain"),
                header("set-cookie", b"a=1"),
                header("set-cookie", b"b=2"),
                header("connection", b"close, x-private"),
                header("x-private", b"p"),
                header("content-length", b"999"),
            ],
            &b"hello"[..],
        ),
        (
            "raw-204-body",
            204,
            vec![header("etag", b"\"1\"")],
            b"dropped",
        ),
        ("raw-502", 502, vec![], b""),
        (
            "raw-connection-non-ascii",
            200,
            vec![
                header("connection", b"x-private,\xff"),
                header("x-private", b"p"),
            ],
            b"",
        ),
        ("raw-status-100", 100, vec![], b""),
        (
            "raw-crlf-value",
            200,
            vec![header("x-inject", b"a\r\nset-cookie: evil=1")],
            b"",
        ),
    ];
    for (name, status, headers, body) in seeds {
        let resp = ForwardingResp {
            status,
            headers,
            body: Bytes::copy_from_slice(body),
        };
        write(dir, name, &resp.encode_to_vec())?;
    }
    Ok(())
}

fn events(dir: &Path) -> std::io::Result<()> {
    let register = Event {
        kind: EventKind::Register,
        key: InstanceKey::new("orders", "i-1"),
        addr: "http://127.0.0.1:7001".into(),
        metadata: [("zone".into(), "a".into())].into(),
        lease_ms: 30_000,
        stamp: Stamp::new(1_000, 2, "gw-1"),
        origin_node: "gw-1".into(),
    };
    let renew = Event {
        kind: EventKind::Renew,
        addr: "http://[::1]:7002".into(),
        metadata: Default::default(),
        stamp: Stamp::new(2_000, 0, "gw-2"),
        ..register.clone()
    };
    let tombstone = |kind| Event {
        kind,
        addr: String::new(),
        metadata: Default::default(),
        lease_ms: 0,
        stamp: Stamp::new(3_000, 1, "gw-3"),
        ..register.clone()
    };
    write(dir, "raw-register", &register.encode())?;
    write(dir, "raw-renew", &renew.encode())?;
    write(
        dir,
        "raw-deregister",
        &tombstone(EventKind::Deregister).encode(),
    )?;
    write(dir, "raw-evict", &tombstone(EventKind::Evict).encode())?;
    // Refused: an address that is not normalised, and an event without a stamp.
    let mut raw = pb::RegistryEvent::decode(register.encode().as_slice())?;
    raw.addr = "127.0.0.1:7001".into();
    write(dir, "raw-addr-not-normalised", &raw.encode_to_vec())?;
    raw.addr = register.addr.clone();
    raw.stamp = None;
    write(dir, "raw-no-stamp", &raw.encode_to_vec())?;
    Ok(())
}

/// The instance's frames, written with the client's frame writers.
#[derive(Default)]
struct Wire(BytesMut);

impl Wire {
    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> &mut Self {
        frame::write_head(&mut self.0, payload.len(), kind, flags, stream);
        self.0.extend_from_slice(payload);
        self
    }

    fn settings(&mut self, pairs: &[(u16, u32)]) -> &mut Self {
        frame::write_settings(&mut self.0, pairs);
        self
    }

    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) -> &mut Self {
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        self.frame(kind::HEADERS, flags, stream, &block(fields))
    }

    fn message(&mut self, stream: u32, body: &[u8], end_stream: bool) -> &mut Self {
        let flags = if end_stream { flag::END_STREAM } else { 0 };
        self.frame(kind::DATA, flags, stream, &grpc(body))
    }

    /// A whole answer: status 200, the message, trailers with grpc-status 0.
    fn answer(&mut self, stream: u32, body: &[u8]) -> &mut Self {
        self.headers(
            stream,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        )
        .message(stream, body, false)
        .headers(stream, &[("grpc-status", "0")], true)
    }
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (name, value) in fields {
        hpack::encode_literal_new_name(name.as_bytes(), value.as_bytes(), &mut out);
    }
    out.to_vec()
}

fn grpc(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The raw mode's header: a config, the calls (size index in the low nibble, bound index in
/// the high one, as `http2::input` reads them) and the cuts (a length, then what follows it:
/// 1 polls, 2 cancels, 4 pings, 8 opens).
fn raw_http2(
    dir: &Path,
    name: &str,
    config: u8,
    calls: &[u8],
    cuts: &[(u8, u8)],
    wire: &Wire,
) -> std::io::Result<()> {
    let mut data = vec![config, (calls.len() - 1) as u8];
    data.extend_from_slice(calls);
    data.push(cuts.len() as u8);
    for (len, action) in cuts {
        data.extend_from_slice(&[*len, *action]);
    }
    data.extend_from_slice(&wire.0);
    write(dir, name, &data)
}

/// A small call: 5 bytes, a bound of 1,024.
const SMALL: u8 = 0x42;
/// 70,000 bytes (past the default window), a bound of 100,000.
const LARGE: u8 = 0x77;

fn http2(dir: &Path) -> std::io::Result<()> {
    let mut w = Wire::default();
    w.settings(&[]).answer(1, b"pong");
    raw_http2(dir, "raw-answer", 0, &[SMALL], &[(30, 1)], &w)?;

    let mut w = Wire::default();
    w.settings(&[
        (setting::INITIAL_WINDOW_SIZE, 100_000),
        (setting::MAX_FRAME_SIZE, 32_768),
    ])
    .frame(kind::WINDOW_UPDATE, 0, 0, &300_000u32.to_be_bytes())
    .frame(kind::WINDOW_UPDATE, 0, 1, &50_000u32.to_be_bytes())
    .frame(kind::WINDOW_UPDATE, 0, 3, &(1u32 << 20).to_be_bytes())
    .answer(1, &[7; 300])
    .frame(kind::RST_STREAM, 0, 3, &Reason::CANCEL.0.to_be_bytes());
    raw_http2(
        dir,
        "raw-flow-control",
        0,
        &[LARGE, 0x48],
        &[(40, 0), (30, 1)],
        &w,
    )?;

    // An informational answer, then HEADERS padded and with priority, CONTINUATION, padded
    // DATA; on the small config, whose windows make the client answer with WINDOW_UPDATE.
    let head = block(&[(":status", "200"), ("x-long", &"v".repeat(200))]);
    let mut first = vec![3];
    first.extend_from_slice(&[0, 0, 0, 0, 16]);
    first.extend_from_slice(&head[..100]);
    first.extend_from_slice(&[0; 3]);
    let mut data = vec![2];
    data.extend(grpc(&[9; 40]));
    data.extend_from_slice(&[0; 2]);
    let mut w = Wire::default();
    w.settings(&[])
        .headers(1, &[(":status", "103")], false)
        .frame(kind::HEADERS, flag::PADDED | flag::PRIORITY, 1, &first)
        .frame(kind::CONTINUATION, flag::END_HEADERS, 1, &head[100..])
        .frame(kind::DATA, flag::PADDED, 1, &data)
        .headers(1, &[("grpc-status", "0"), ("grpc-message", "fine")], true);
    raw_http2(dir, "raw-continuation-padded", 1, &[SMALL], &[(60, 0)], &w)?;

    // One stream at a time, pings both ways, a GOAWAY that keeps both streams open, and a
    // second one that leaves the second call out.
    let goaway = |last: u32| [last.to_be_bytes(), Reason::NO_ERROR.0.to_be_bytes()].concat();
    let mut w = Wire::default();
    w.settings(&[(setting::MAX_CONCURRENT_STREAMS, 1)])
        .frame(kind::PING, 0, 0, b"instance")
        .frame(kind::PING, flag::ACK, 0, &[0x04; 8])
        .frame(kind::GOAWAY, 0, 0, &goaway(3))
        .frame(kind::GOAWAY, 0, 0, &goaway(1))
        .answer(1, b"kept");
    // After the SETTINGS, two more calls (of 200,000 bytes) wait for a stream, one of them
    // polled, and the GOAWAY refuses them.
    let cuts = [(15, 0x48), (0, 0x49), (51, 0x05)];
    raw_http2(dir, "raw-goaway-ping", 0, &[SMALL, SMALL], &cuts, &w)?;

    // A prefix declaring 17 bytes against a bound of 16; an HTTP error; a reset.
    let mut w = Wire::default();
    w.settings(&[])
        .headers(1, &[(":status", "200")], false)
        .frame(kind::DATA, 0, 1, &[0, 0, 0, 0, 17])
        .headers(3, &[(":status", "508")], false)
        .frame(kind::RST_STREAM, 0, 5, &7u32.to_be_bytes());
    raw_http2(dir, "raw-too-large", 0, &[0x22, SMALL, SMALL], &[], &w)?;

    // Malformed answers, each failing its call: upper case, no :status, trailers without
    // END_STREAM; and a WINDOW_UPDATE of 0 on a stream.
    let mut w = Wire::default();
    w.settings(&[])
        .headers(1, &[(":status", "200"), ("X-Up", "1")], true)
        .headers(3, &[("content-type", "application/grpc")], true)
        .headers(5, &[(":status", "200")], false)
        .headers(5, &[("grpc-status", "0")], false)
        .frame(kind::WINDOW_UPDATE, 0, 7, &0u32.to_be_bytes());
    raw_http2(
        dir,
        "raw-malformed",
        2,
        &[SMALL, SMALL, SMALL, SMALL],
        &[],
        &w,
    )?;

    // HPACK beyond literals: an indexed :status, a Huffman value ("200"), a field added to
    // the dynamic table and then referred to (index 62), a table size update.
    let mut first = vec![0x88];
    first.extend_from_slice(&[0x40, 11]);
    first.extend_from_slice(b"grpc-status");
    first.extend_from_slice(&[1, b'0']);
    let mut second = vec![0x3f, 0xe1, 0x1f, 0x08, 0x82, 0x10, 0x01];
    second.push(0x80 | 62);
    let mut w = Wire::default();
    w.settings(&[(setting::HEADER_TABLE_SIZE, 0)])
        .frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &first,
        )
        .frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            3,
            &second,
        );
    raw_http2(dir, "raw-hpack", 0, &[SMALL, SMALL], &[], &w)?;

    // An entry exactly the table's size (1 + 4,063 + 32 = 4,096 bytes) is added, evicting
    // the rest (RFC 7541 §4.4), and the next block refers to it.
    let mut first = vec![0x88, 0x40, 1, b'x', 0x7f];
    let mut rest = 4063 - 127;
    while rest >= 0x80 {
        first.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    first.push(rest as u8);
    first.extend(std::iter::repeat_n(b'w', 4063));
    let mut w = Wire::default();
    w.settings(&[])
        .frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &first,
        )
        .frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            3,
            &[0x88, 0x80 | 62],
        );
    raw_http2(dir, "raw-hpack-table-boundary", 0, &[SMALL, SMALL], &[], &w)?;

    // RFC 9113 §6.9.2: an initial window that takes a stream's window past 2^31-1 is a
    // connection error. A call with no message keeps its stream (half closed) and its window
    // of 65,535, which the WINDOW_UPDATE takes to 2^31-1; INITIAL_WINDOW_SIZE 65,536 then
    // takes it one past. The client lets it pass (`model::tolerated::INITIAL_WINDOW_OVERFLOW`).
    let mut w = Wire::default();
    w.settings(&[])
        .frame(
            kind::WINDOW_UPDATE,
            0,
            1,
            &((1u32 << 31) - 1 - 65_535).to_be_bytes(),
        )
        .settings(&[(setting::INITIAL_WINDOW_SIZE, 65_536)]);
    raw_http2(dir, "regress-initial-window-overflow", 0, &[0x40], &[], &w)?;

    // A header block on stream 1 continued on stream 3 (RFC 9113 §6.10: a connection error).
    let b = block(&[(":status", "200")]);
    let mut w = Wire::default();
    w.settings(&[]).frame(kind::HEADERS, 0, 1, &b[..4]).frame(
        kind::CONTINUATION,
        flag::END_HEADERS,
        3,
        &b[4..],
    );
    raw_http2(
        dir,
        "raw-continuation-other-stream",
        0,
        &[SMALL, SMALL],
        &[],
        &w,
    )?;

    // Frames that end the connection: a MAX_FRAME_SIZE out of range, after a PING.
    let mut w = Wire::default();
    w.settings(&[])
        .frame(kind::PING, 0, 0, b"12345678")
        .settings(&[(setting::MAX_FRAME_SIZE, 100)])
        .answer(1, b"never read");
    raw_http2(dir, "raw-connection-error", 0, &[LARGE], &[(9, 0x02)], &w)?;
    Ok(())
}

fn main() -> std::io::Result<()> {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    responses(&seeds.join("response"))?;
    events(&seeds.join("registry"))?;
    http2(&seeds.join("http2"))?;
    Ok(())
}

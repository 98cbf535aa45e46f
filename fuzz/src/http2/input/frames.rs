//! The structured mode's frames: vocabularies that hit the rules of RFC 9113 and RFC 7541,
//! and the frames built from them, aimed at the calls' streams as the exact run knows them.

use arbitrary::Arbitrary;
use bytes::BytesMut;
use switchyard_core::http2::hpack as core_hpack;

use super::super::hpack::{encode_integer, encode_string, static_name};
use super::super::model::{Model, flag, kind};
use super::pick;

const STATUSES: &[&str] = &[
    "200", "200", "200", "103", "100", "101", "204", "508", "404", "2000", "20", "099", "abc", "",
    "600",
];
const GRPC_STATUSES: &[&str] = &[
    "0",
    "0",
    "7",
    "13",
    "99",
    "-1",
    "+3",
    "2147483648",
    "abc",
    "",
    " 0",
];
const GRPC_MESSAGES: &[&[u8]] = &[
    b"",
    b"ok",
    b"no%20way",
    "café".as_bytes(),
    b"a\r\nb",
    b" pad ",
];
const NAMES: &[&[u8]] = &[
    b"content-type",
    b"grpc-encoding",
    b"x-up",
    b"X-Up",
    b"Content-Type",
    b":path",
    b":Status",
    b":status",
    b"grpc-status",
    b"grpc-message",
    b"connection",
    b"transfer-encoding",
    b"te",
    b"bad name",
    b"",
    b"x-nul\0",
    b"grpc-status-details-bin",
    b"content-length",
];
const VALUES: &[&[u8]] = &[
    b"application/grpc",
    b"",
    b"trailers",
    b"1",
    b"x",
    b" lead",
    b"trail ",
    b"a\r\nb",
    b"\0",
    "café".as_bytes(),
    b"200",
    b"0",
    // Five zeros are 25 bits in Huffman's code: 7 bits of padding, the most allowed.
    b"00000",
    b"www.example.com",
    b"5",
];
/// Long values: around the node's 16 KiB header list bound and past one frame.
const LONG_BYTES: &[usize] = &[100, 1000, 4000, 16_300, 16_400, 17_000, 40_000];
const TABLE_SIZES: &[u32] = &[0, 1, 100, 4096, 8192, u32::MAX];
const STREAMS: &[u32] = &[0, 1, 2, 3, 100, u32::MAX];
const WINDOWS: &[u32] = &[
    0,
    1,
    1000,
    16_384,
    65_535,
    65_536,
    1 << 20,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX,
];
const FRAME_SIZES: &[u32] = &[
    0,
    16_383,
    16_384,
    16_385,
    32_768,
    65_536,
    (1 << 24) - 1,
    1 << 24,
    u32::MAX,
];
const INCREMENTS: &[u32] = &[
    0,
    1,
    1000,
    16_384,
    65_535,
    100_000,
    1 << 20,
    // From the default window to 2^31-1 exactly.
    (1 << 31) - 1 - 65_535,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX,
];
const CODES: &[u32] = &[0x0, 0x1, 0x2, 0x3, 0x7, 0x8, 0xb, 0xff];
/// The harness's frames carry at most this much payload each (the client's frame size).
const FRAME_BYTES: usize = 16_384;

/// Where a frame goes.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub(in crate::http2) enum To {
    /// The stream of the call with this number (or the client's last stream).
    Call(u8),
    Zero,
    Even(u8),
    /// An odd stream the client has not opened.
    Unopened(u8),
    Id(u32),
}

impl To {
    fn id(self, model: &Model) -> u32 {
        match self {
            Self::Call(i) => {
                let calls = model.calls.len().max(1);
                model.stream_for(usize::from(i) % calls)
            }
            Self::Zero => 0,
            Self::Even(n) => 2 * (u32::from(n) + 1),
            Self::Unopened(n) => model.highest.max(1) + 2 * (u32::from(n) + 1),
            Self::Id(id) => id,
        }
    }

    fn call(self, model: &Model) -> Option<usize> {
        match self {
            Self::Call(i) => Some(usize::from(i) % model.calls.len().max(1)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub(in crate::http2) enum Repr {
    Plain,
    NeverIndexed,
    Indexing,
    Huffman,
    HuffmanIndexing,
    /// The name by its static index, when the static table has it.
    NameIndex,
}

/// One field of a header block, or raw HPACK.
#[derive(Debug, Arbitrary)]
pub(in crate::http2) enum FieldIn {
    Status(u8, Repr),
    GrpcStatus(u8, Repr),
    GrpcMessage(u8, Repr),
    Field(u8, u8, Repr),
    Long(u8, u8),
    /// A field whose table entry is the table's size (4,096) plus `delta`: evicts everything
    /// else, or empties the table (RFC 7541 §4.4).
    TableSized(u8, i8, Repr),
    /// Indexed Header Field: static entries, the dynamic table's first ones, and 0.
    Indexed(u8),
    SizeUpdate(u16),
    Raw(Vec<u8>),
}

fn encode_field(name: &[u8], value: &[u8], repr: Repr, out: &mut Vec<u8>) {
    let (flags, prefix, huffman) = match repr {
        Repr::Plain => {
            let mut b = BytesMut::new();
            core_hpack::encode_literal_new_name(name, value, &mut b);
            out.extend_from_slice(&b);
            return;
        }
        Repr::NeverIndexed => (0x10, 4, false),
        Repr::Indexing => (0x40, 6, false),
        Repr::Huffman => (0x00, 4, true),
        Repr::HuffmanIndexing => (0x40, 6, true),
        Repr::NameIndex => match static_name(name) {
            Some(index) => {
                encode_integer(index, 4, 0x00, out);
                encode_string(value, false, out);
                return;
            }
            None => (0x00, 4, false),
        },
    };
    encode_integer(0, prefix, flags, out);
    encode_string(name, huffman, out);
    encode_string(value, huffman, out);
}

impl FieldIn {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Status(v, r) => encode_field(b":status", pick(STATUSES, *v).as_bytes(), *r, out),
            Self::GrpcStatus(v, r) => {
                encode_field(b"grpc-status", pick(GRPC_STATUSES, *v).as_bytes(), *r, out);
            }
            Self::GrpcMessage(v, r) => {
                encode_field(b"grpc-message", pick(GRPC_MESSAGES, *v), *r, out)
            }
            Self::Field(n, v, r) => encode_field(pick(NAMES, *n), pick(VALUES, *v), *r, out),
            Self::Long(n, len) => {
                encode_field(
                    pick(NAMES, *n),
                    &vec![b'v'; pick(LONG_BYTES, *len)],
                    Repr::Plain,
                    out,
                );
            }
            Self::TableSized(n, delta, r) => {
                let name = pick(NAMES, *n);
                let len = offset(4096 - 32 - name.len(), *delta);
                encode_field(name, &vec![b'w'; len], *r, out);
            }
            Self::Indexed(i) => encode_integer(usize::from(*i % 72), 7, 0x80, out),
            Self::SizeUpdate(size) => encode_integer(usize::from(*size % 5000), 5, 0x20, out),
            Self::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
}

fn block(fields: &[FieldIn]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields.iter().take(24) {
        f.encode(&mut out);
    }
    out
}

#[derive(Debug, Arbitrary)]
pub(in crate::http2) enum SettingIn {
    TableSize(u8),
    EnablePush(u8),
    Streams(u8),
    Window(u8),
    FrameSize(u8),
    ListSize(u32),
    Other(u16, u32),
}

impl SettingIn {
    fn pair(&self) -> (u16, u32) {
        match self {
            Self::TableSize(i) => (0x1, pick(TABLE_SIZES, *i)),
            Self::EnablePush(v) => (0x2, pick(&[0, 0, 0, 1, 2], *v)),
            Self::Streams(i) => (0x3, pick(STREAMS, *i)),
            Self::Window(i) => (0x4, pick(WINDOWS, *i)),
            Self::FrameSize(i) => (0x5, pick(FRAME_SIZES, *i)),
            Self::ListSize(v) => (0x6, *v),
            Self::Other(id, v) => (*id, *v),
        }
    }
}

/// A DATA payload.
#[derive(Debug, Arbitrary)]
pub(in crate::http2) enum BodyIn {
    /// gRPC's prefix and a message: `len` bytes follow, the prefix declares `declared`.
    Message {
        len: Len,
        declared: Declared,
        compressed: bool,
    },
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub(in crate::http2) enum Len {
    Small(u8),
    /// The target call's bound, plus this.
    Bound(i8),
    Window,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub(in crate::http2) enum Declared {
    Exact,
    Plus(i8),
    Bound(i8),
    Max,
}

fn offset(base: usize, by: i8) -> usize {
    base.saturating_add_signed(isize::from(by))
}

impl BodyIn {
    fn bytes(&self, bound: usize) -> Vec<u8> {
        match self {
            Self::Bytes(b) => b.clone(),
            Self::Message {
                len,
                declared,
                compressed,
            } => {
                let len = match len {
                    Len::Small(n) => usize::from(*n),
                    Len::Bound(by) => offset(bound, *by).min(200_000),
                    Len::Window => 65_535,
                };
                let declared = match declared {
                    Declared::Exact => len as u32,
                    Declared::Plus(by) => offset(len, *by) as u32,
                    Declared::Bound(by) => offset(bound, *by) as u32,
                    Declared::Max => u32::MAX,
                };
                let mut out = vec![u8::from(*compressed)];
                out.extend_from_slice(&declared.to_be_bytes());
                let pattern: Vec<u8> = (0..251u8).collect();
                while out.len() < 5 + len {
                    out.extend_from_slice(&pattern);
                }
                out.truncate(5 + len);
                out
            }
        }
    }
}

/// A whole answer, valid or nearly.
#[derive(Debug, Arbitrary)]
pub(in crate::http2) struct AnswerIn {
    call: u8,
    informational: bool,
    status: u8,
    status_repr: Repr,
    head: Vec<FieldIn>,
    body: Option<BodyIn>,
    chunks: u8,
    trailers: Trailers,
    pieces: u8,
    pad: Option<u8>,
}

#[derive(Debug, Arbitrary)]
pub(in crate::http2) enum Trailers {
    Status(u8),
    StatusMessage(u8, u8),
    /// Trailers without END_STREAM.
    NoEnd(u8),
    Fields(Vec<FieldIn>),
    /// No trailers: the last DATA ends the stream.
    EndOnData,
    /// Nothing more: the answer stays incomplete.
    Open,
}

/// One frame from the instance, or several, or raw bytes.
#[derive(Debug, Arbitrary)]
pub(in crate::http2) enum FrameIn {
    Answer(Box<AnswerIn>),
    Headers {
        to: To,
        block: Vec<FieldIn>,
        end_stream: bool,
        pieces: u8,
        pad: Option<u8>,
        priority: bool,
    },
    Data {
        to: To,
        body: BodyIn,
        end_stream: bool,
        pad: Option<u8>,
    },
    Continuation {
        to: To,
        block: Vec<FieldIn>,
        end_headers: bool,
    },
    Settings {
        ack: bool,
        pairs: Vec<SettingIn>,
    },
    Ping {
        ack: bool,
        fill: u8,
        on_stream: bool,
        short: bool,
    },
    WindowUpdate {
        to: To,
        increment: u8,
    },
    RstStream {
        to: To,
        code: u8,
    },
    Goaway {
        last: To,
        code: u8,
        short: bool,
    },
    Priority {
        to: To,
        short: bool,
    },
    PushPromise {
        to: To,
    },
    Unknown {
        kind: u8,
        to: To,
        len: u8,
    },
    Frame {
        kind: u8,
        flags: u8,
        to: To,
        payload: Vec<u8>,
    },
    Raw(Vec<u8>),
}

/// Writes one frame.
pub(in crate::http2) fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// `payload` with padding of `pad` bytes (and its length octet), if any.
fn padded(payload: &[u8], pad: Option<u8>) -> (u8, Vec<u8>) {
    match pad {
        None => (0, payload.to_vec()),
        Some(p) => {
            let mut out = vec![p];
            out.extend_from_slice(payload);
            out.extend(std::iter::repeat_n(0, usize::from(p)));
            (flag::PADDED, out)
        }
    }
}

/// A header block as HEADERS and `pieces` CONTINUATION frames at most (more when the block
/// is longer than a frame).
fn header_frames(out: &mut Vec<u8>, stream: u32, block: &[u8], end_stream: bool, shape: Shape) {
    let parts = usize::from(shape.pieces % 4) + 1;
    let size = block.len().div_ceil(parts).clamp(1, FRAME_BYTES - 300);
    let mut chunks: Vec<&[u8]> = block.chunks(size).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let end_headers = if i == last { flag::END_HEADERS } else { 0 };
        if i > 0 {
            frame(out, kind::CONTINUATION, end_headers, stream, chunk);
            continue;
        }
        let mut payload = chunk.to_vec();
        let mut flags = end_headers | if end_stream { flag::END_STREAM } else { 0 };
        if shape.priority {
            let mut p = vec![0, 0, 0, 0, 15];
            p.extend_from_slice(&payload);
            payload = p;
            flags |= flag::PRIORITY;
        }
        let (pad_flag, payload) = padded(&payload, shape.pad);
        frame(out, kind::HEADERS, flags | pad_flag, stream, &payload);
    }
}

#[derive(Clone, Copy, Default)]
struct Shape {
    pieces: u8,
    pad: Option<u8>,
    priority: bool,
}

/// A body as DATA frames of at most a frame each, at least `chunks` of them when it is long
/// enough.
fn data_frames(
    out: &mut Vec<u8>,
    stream: u32,
    body: &[u8],
    end_stream: bool,
    chunks: u8,
    pad: Option<u8>,
) {
    let parts = usize::from(chunks % 4) + 1;
    let size = body.len().div_ceil(parts).clamp(1, FRAME_BYTES - 300);
    let mut pieces: Vec<&[u8]> = body.chunks(size).collect();
    if pieces.is_empty() {
        pieces.push(&[]);
    }
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        let end = if end_stream && i == last {
            flag::END_STREAM
        } else {
            0
        };
        let (pad_flag, payload) = padded(piece, pad);
        frame(out, kind::DATA, end | pad_flag, stream, &payload);
    }
}

/// The bytes of `frames`, aimed by the model's view of the calls and streams so far.
pub(in crate::http2) fn build(frames: &[FrameIn], model: &Model) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.build(model, &mut out);
    }
    out
}

impl FrameIn {
    fn build(&self, model: &Model, out: &mut Vec<u8>) {
        let bound = |to: &To| {
            to.call(model)
                .and_then(|c| model.calls.get(c))
                .map_or(100, |c| c.limits.message_bytes_max)
        };
        match self {
            Self::Answer(a) => a.build(model, out),
            Self::Headers {
                to,
                block: fields,
                end_stream,
                pieces,
                pad,
                priority,
            } => {
                let shape = Shape {
                    pieces: *pieces,
                    pad: *pad,
                    priority: *priority,
                };
                header_frames(out, to.id(model), &block(fields), *end_stream, shape);
            }
            Self::Data {
                to,
                body,
                end_stream,
                pad,
            } => data_frames(
                out,
                to.id(model),
                &body.bytes(bound(to)),
                *end_stream,
                0,
                *pad,
            ),
            Self::Continuation {
                to,
                block: fields,
                end_headers,
            } => {
                let flags = if *end_headers { flag::END_HEADERS } else { 0 };
                let b = block(fields);
                frame(
                    out,
                    kind::CONTINUATION,
                    flags,
                    to.id(model),
                    &b[..b.len().min(FRAME_BYTES)],
                );
            }
            Self::Settings { ack, pairs } => {
                let mut payload = Vec::new();
                for p in pairs.iter().take(8) {
                    let (id, value) = p.pair();
                    payload.extend_from_slice(&id.to_be_bytes());
                    payload.extend_from_slice(&value.to_be_bytes());
                }
                let flags = if *ack { flag::ACK } else { 0 };
                frame(out, kind::SETTINGS, flags, 0, &payload);
            }
            Self::Ping {
                ack,
                fill,
                on_stream,
                short,
            } => {
                let len = if *short { 7 } else { 8 };
                let flags = if *ack { flag::ACK } else { 0 };
                frame(
                    out,
                    kind::PING,
                    flags,
                    u32::from(*on_stream),
                    &vec![*fill; len],
                );
            }
            Self::WindowUpdate { to, increment } => {
                let inc = pick(INCREMENTS, *increment);
                frame(
                    out,
                    kind::WINDOW_UPDATE,
                    0,
                    to.id(model),
                    &inc.to_be_bytes(),
                );
            }
            Self::RstStream { to, code } => {
                frame(
                    out,
                    kind::RST_STREAM,
                    0,
                    to.id(model),
                    &pick(CODES, *code).to_be_bytes(),
                );
            }
            Self::Goaway { last, code, short } => {
                let mut payload = last.id(model).to_be_bytes().to_vec();
                payload.extend_from_slice(&pick(CODES, *code).to_be_bytes());
                payload.extend_from_slice(b"debug");
                if *short {
                    payload.truncate(7);
                }
                frame(out, kind::GOAWAY, 0, 0, &payload);
            }
            Self::Priority { to, short } => {
                let payload: &[u8] = if *short {
                    &[0, 0, 0, 0]
                } else {
                    &[0, 0, 0, 0, 16]
                };
                frame(out, kind::PRIORITY, 0, to.id(model), payload);
            }
            Self::PushPromise { to } => {
                let mut payload = vec![0, 0, 0, 2];
                payload.push(0x88);
                frame(
                    out,
                    kind::PUSH_PROMISE,
                    flag::END_HEADERS,
                    to.id(model),
                    &payload,
                );
            }
            Self::Unknown { kind: k, to, len } => {
                let k = 10u8.saturating_add(*k % 246);
                frame(out, k, 0xff, to.id(model), &vec![0xa5; usize::from(*len)]);
            }
            Self::Frame {
                kind: k,
                flags,
                to,
                payload,
            } => frame(
                out,
                *k,
                *flags,
                to.id(model),
                &payload[..payload.len().min(FRAME_BYTES)],
            ),
            Self::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
}

impl AnswerIn {
    fn build(&self, model: &Model, out: &mut Vec<u8>) {
        let to = To::Call(self.call);
        let stream = to.id(model);
        let bound = to
            .call(model)
            .and_then(|c| model.calls.get(c))
            .map_or(100, |c| c.limits.message_bytes_max);
        let shape = Shape {
            pieces: self.pieces,
            pad: self.pad,
            priority: false,
        };
        if self.informational {
            let mut b = Vec::new();
            encode_field(b":status", b"103", Repr::Plain, &mut b);
            header_frames(out, stream, &b, false, Shape::default());
        }
        let mut head = Vec::new();
        encode_field(
            b":status",
            pick(STATUSES, self.status).as_bytes(),
            self.status_repr,
            &mut head,
        );
        for f in self.head.iter().take(8) {
            f.encode(&mut head);
        }
        let ends_at_head = self.body.is_none() && matches!(self.trailers, Trailers::EndOnData);
        header_frames(out, stream, &head, ends_at_head, shape);
        if let Some(body) = &self.body {
            let end = matches!(self.trailers, Trailers::EndOnData);
            data_frames(out, stream, &body.bytes(bound), end, self.chunks, self.pad);
        }
        let mut trailers = Vec::new();
        let mut end = true;
        match &self.trailers {
            Trailers::Status(s) => {
                encode_field(
                    b"grpc-status",
                    pick(GRPC_STATUSES, *s).as_bytes(),
                    Repr::Plain,
                    &mut trailers,
                );
            }
            Trailers::StatusMessage(s, m) => {
                encode_field(
                    b"grpc-status",
                    pick(GRPC_STATUSES, *s).as_bytes(),
                    Repr::Huffman,
                    &mut trailers,
                );
                encode_field(
                    b"grpc-message",
                    pick(GRPC_MESSAGES, *m),
                    Repr::Indexing,
                    &mut trailers,
                );
            }
            Trailers::NoEnd(s) => {
                encode_field(
                    b"grpc-status",
                    pick(GRPC_STATUSES, *s).as_bytes(),
                    Repr::Plain,
                    &mut trailers,
                );
                end = false;
            }
            Trailers::Fields(fields) => trailers = block(fields),
            Trailers::EndOnData | Trailers::Open => return,
        }
        header_frames(out, stream, &trailers, end, Shape::default());
    }
}

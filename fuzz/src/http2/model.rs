//! The oracle's state: what the instance sent and what the client wrote, kept by the rules of
//! RFC 9113 rather than by the client's code, and what each call's outcome must be.
//!
//! `peer.rs` reads the instance's frames into it (and says which ones must end the
//! connection), `wire.rs` reads the client's output against it. The exact run feeds the
//! client one frame at a time and takes its output after each, so every frame the client
//! writes is attributed to the one frame (or operation) that caused it.

use std::collections::BTreeMap;

use bytes::Bytes;
use switchyard_core::http2::client::{
    Answer, CallError, CallLimits, Config, Connection, GrpcFields,
};
use switchyard_core::http2::frame::Reason;

use super::hpack;

/// Rules of RFC 9113 the client did not follow when the target was written. `true`: the
/// oracle accepts what the client does, so that fuzzing goes on past it. `false`: the client
/// follows the rule since, and the oracle checks it. Each has a reproducer in `seeds/http2/`
/// (docs/fuzzing.md), which becomes its regression test once the flag is `false`.
pub(super) mod tolerated {
    /// §6.9.2: "An endpoint MUST treat a change to SETTINGS_INITIAL_WINDOW_SIZE that causes
    /// any flow-control window to exceed the maximum size as a connection error of type
    /// FLOW_CONTROL_ERROR." The client's `initial_window` leaves such a window to the next
    /// WINDOW_UPDATE on the stream.
    pub const INITIAL_WINDOW_OVERFLOW: bool = true;
    /// §6.3: a PRIORITY frame of other than 5 octets is "a stream error of type
    /// FRAME_SIZE_ERROR". The client reset the stream with PROTOCOL_ERROR.
    pub const PRIORITY_SIZE_CODE: bool = false;
    /// §8.2.1: a field name with a character the section names (space and below, upper case,
    /// DEL and above, a colon inside), or a value with NUL, CR or LF or with whitespace at
    /// either end, makes the answer malformed. The client checked names for upper case only,
    /// and values not at all.
    pub const FIELD_CHARACTERS: bool = false;
    /// §8.1.1: an answer whose `content-length` is not the sum of its DATA payloads is
    /// malformed; the client does not read `content-length`.
    pub const CONTENT_LENGTH: bool = true;
}

/// Frame types, flags and error codes (RFC 9113 §6, §7), written out here so that the oracle
/// does not borrow the client's.
pub(super) mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

pub(super) mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

pub(super) const PROTOCOL_ERROR: Reason = Reason(0x1);
pub(super) const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
pub(super) const FRAME_SIZE_ERROR: Reason = Reason(0x6);
pub(super) const REFUSED_STREAM: u32 = 0x7;
pub(super) const CANCEL: Reason = Reason(0x8);
pub(super) const COMPRESSION_ERROR: Reason = Reason(0x9);
pub(super) const ENHANCE_YOUR_CALM: Reason = Reason(0xb);

/// The client preface (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(super) const HEAD_BYTES: usize = 9;
/// The protocol's initial window and frame size, and the largest window (RFC 9113 §6.5.2,
/// §6.9.1).
pub(super) const WINDOW_DEFAULT: i64 = 65_535;
pub(super) const FRAME_BYTES_DEFAULT: u32 = 16_384;
pub(super) const FRAME_BYTES_LIMIT: u32 = (1 << 24) - 1;
pub(super) const WINDOW_MAX: i64 = (1 << 31) - 1;
pub(super) const TABLE_BYTES_DEFAULT: u32 = 4096;

/// A frame's head (RFC 9113 §4.1); the reserved bit of the stream is ignored on receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    /// The reserved bit was set.
    pub reserved: bool,
}

impl Head {
    pub(super) fn read(bytes: &[u8]) -> Option<Self> {
        let h = bytes.get(..HEAD_BYTES)?;
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        Some(Self {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: stream & 0x7fff_ffff,
            reserved: stream & 0x8000_0000 != 0,
        })
    }

    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

pub(super) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The instance's settings as this side must honour them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Theirs {
    pub frame_bytes_max: u32,
    pub initial_window: i64,
    pub streams_max: u32,
    pub table_bytes: u32,
}

impl Theirs {
    /// The protocol's values until the instance's SETTINGS (RFC 9113 §6.5.2).
    fn initial() -> Self {
        Self {
            frame_bytes_max: FRAME_BYTES_DEFAULT,
            initial_window: WINDOW_DEFAULT,
            streams_max: u32::MAX,
            table_bytes: TABLE_BYTES_DEFAULT,
        }
    }

    /// The most permissive of two: what may be in force while a SETTINGS frame is applied.
    pub(super) fn widen(&mut self, other: &Self) {
        self.frame_bytes_max = self.frame_bytes_max.max(other.frame_bytes_max);
        self.initial_window = self.initial_window.max(other.initial_window);
        self.streams_max = self.streams_max.max(other.streams_max);
        self.table_bytes = self.table_bytes.max(other.table_bytes);
    }
}

/// The settings the client announced, read from its own first SETTINGS frame.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ours {
    pub enable_push: u32,
    pub initial_window: i64,
    pub header_list_bytes_max: Option<u32>,
    pub frame_bytes_max: u32,
    pub table_bytes: u32,
}

/// One stream as both sides' frames left it (RFC 9113 §5.1).
#[derive(Debug, Clone, Default)]
pub(super) struct Stream {
    pub call: Option<usize>,
    /// The client's header block is complete (END_HEADERS written).
    pub headers_done: bool,
    pub end_sent: bool,
    pub rst_sent: bool,
    pub end_received: bool,
    pub rst_received: bool,
    /// Left out by the instance's GOAWAY.
    pub refused: bool,
    /// Send side: DATA written, and WINDOW_UPDATE increments received.
    pub data_sent: i64,
    pub credit: i64,
    /// Receive side: DATA received, and WINDOW_UPDATE increments written.
    pub received: i64,
    pub given: i64,
}

impl Stream {
    /// Open or half-closed: counts against MAX_CONCURRENT_STREAMS (§5.1.2), and is the set of
    /// streams the client keeps state for (its `open`).
    pub(super) fn active(&self) -> bool {
        !(self.rst_sent
            || self.rst_received
            || self.refused
            || (self.end_sent && self.end_received))
    }
}

/// What the oracle knows a call's outcome must be.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expect {
    /// In flight, and the oracle follows its answer.
    Pending,
    /// In flight, but the answer took a turn the oracle does not judge: it broke a rule the
    /// client does not check (see [`tolerated`]).
    Unknown,
    /// Ended, with an outcome the oracle does not judge.
    Any,
    Answer(Answer),
    TooLarge,
    Refused,
    Transport,
    /// Cancelled by the harness.
    Gone,
}

impl Expect {
    pub(super) fn in_flight(&self) -> bool {
        matches!(self, Self::Pending | Self::Unknown)
    }

    /// Whether `outcome` is what this expectation allows.
    pub(super) fn allows(&self, outcome: &Result<Answer, CallError>) -> bool {
        match (self, outcome) {
            (Self::Unknown | Self::Any, _) => true,
            (Self::Answer(a), Ok(b)) => a == b,
            (Self::TooLarge, Err(CallError::TooLarge)) => true,
            (Self::Refused, Err(CallError::Refused(_))) => true,
            (Self::Transport, Err(CallError::Transport(_))) => true,
            _ => false,
        }
    }
}

/// Where an answer the oracle follows stands.
#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    /// The final headers came.
    pub body_phase: bool,
    pub status: u16,
    pub head: GrpcFields,
    pub body: Vec<u8>,
    /// The headers' `content-length` values, if any.
    pub content_length: Vec<Vec<u8>>,
}

impl Progress {
    /// Whether a body of `len` bytes is what `content-length` said (§8.1.1).
    pub(super) fn length_agrees(&self, len: usize) -> bool {
        self.content_length
            .iter()
            .all(|v| *v == len.to_string().as_bytes())
    }
}

#[derive(Debug, Clone)]
pub(super) struct CallModel {
    pub message: Bytes,
    pub limits: CallLimits,
    pub block: Vec<u8>,
    pub stream: Option<u32>,
    /// The harness let go of its handle (polled to Ready, or cancelled).
    pub released: bool,
    /// Cancelled before it had a stream: it must never be sent.
    pub cancelled_unsent: bool,
    /// DATA bytes written for it.
    pub sent: usize,
    /// The wakes of its waker when `poll_answer` last returned `Pending` with it.
    pub wakes_at_poll: Option<usize>,
    pub expect: Expect,
    pub progress: Progress,
}

/// Why the connection ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// `receive` returned this error: a GOAWAY with its code is owed.
    Error(Reason),
    /// The harness called `fail`: nothing more is written.
    Failed,
}

/// A header block the instance is sending over HEADERS and CONTINUATION.
#[derive(Debug, Clone)]
pub(super) struct Continuation {
    pub stream: u32,
    pub end_stream: bool,
    /// The stream is 0 or idle: the block must end the connection.
    pub bad_stream: bool,
    pub block: Vec<u8>,
}

/// What caused a batch of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    Start,
    /// A frame from the instance, and the error `receive` returned for it.
    Frame(Option<Reason>),
    Open,
    Cancel,
    Ping([u8; 8]),
    Poll,
    Fail,
}

#[derive(Debug)]
pub(super) struct Model {
    pub calls_max: usize,
    pub ours: Option<Ours>,
    pub theirs: Theirs,
    /// The most permissive settings that may have been in force during the current batch.
    pub window: Theirs,
    /// Valid SETTINGS and PING frames (non-ACK) the client must acknowledge, by payload.
    pub settings_received: u64,
    pub settings_acked: u64,
    pub pings_received: BTreeMap<[u8; 8], u64>,
    pub pings_acked: BTreeMap<[u8; 8], u64>,
    pub pongs: u64,
    /// The instance acknowledged this side's SETTINGS.
    pub our_settings_acked: bool,
    /// The instance's preface (a SETTINGS frame, RFC 9113 §3.4) came.
    pub settled: bool,
    /// The payload of the harness's last PING, until an acknowledgement carries it.
    pub own_ping: Option<[u8; 8]>,
    pub frames_received: u64,
    /// Control frames (PING, SETTINGS) the client took in during the current feed.
    pub control_in_feed: usize,
    pub conn_credit: i64,
    pub conn_sent: i64,
    pub conn_received: i64,
    pub conn_given: i64,
    pub streams: BTreeMap<u32, Stream>,
    /// The highest stream the client opened.
    pub highest: u32,
    pub goaway: Option<u32>,
    pub continuation: Option<Continuation>,
    pub hpack: hpack::Decoder,
    pub ended: Option<Ended>,
    pub goaway_sent: bool,
    pub calls: Vec<CallModel>,
    /// Streams whose reset the client owes in this batch, with the code if the RFC names it.
    pub owed_resets: BTreeMap<u32, Option<Reason>>,
    /// The client's output not yet read as frames.
    pub out: Vec<u8>,
    pub preface_read: bool,
    pub first_frame_read: bool,
    /// The client's header block in progress: its stream and bytes so far.
    pub out_block: Option<(u32, Vec<u8>)>,
    /// The client's HPACK encoder table size, and a smaller size the instance set since
    /// the last header block (with the batch it came in), which the next block must signal.
    pub encoder_table_bytes: u32,
    pub owed_update: Option<(u32, u64)>,
    pub batch: u64,
}

impl Model {
    pub(super) fn new(config: &Config) -> Self {
        Self {
            calls_max: config.calls_max,
            ours: None,
            theirs: Theirs::initial(),
            window: Theirs::initial(),
            settings_received: 0,
            settings_acked: 0,
            pings_received: BTreeMap::new(),
            pings_acked: BTreeMap::new(),
            pongs: 0,
            our_settings_acked: false,
            settled: false,
            own_ping: None,
            frames_received: 0,
            control_in_feed: 0,
            conn_credit: WINDOW_DEFAULT,
            conn_sent: 0,
            conn_received: 0,
            conn_given: 0,
            streams: BTreeMap::new(),
            highest: 0,
            goaway: None,
            continuation: None,
            hpack: hpack::Decoder::new(TABLE_BYTES_DEFAULT as usize),
            ended: None,
            goaway_sent: false,
            calls: Vec::new(),
            owed_resets: BTreeMap::new(),
            out: Vec::new(),
            preface_read: false,
            first_frame_read: false,
            out_block: None,
            encoder_table_bytes: TABLE_BYTES_DEFAULT,
            owed_update: None,
            batch: 0,
        }
    }

    /// The streams the client has not opened: 0, even ones, and odd ones past its last.
    pub(super) fn idle(&self, stream: u32) -> bool {
        stream == 0 || stream.is_multiple_of(2) || stream > self.highest
    }

    pub(super) fn active(&self, stream: u32) -> bool {
        self.streams.get(&stream).is_some_and(Stream::active)
    }

    pub(super) fn active_count(&self) -> usize {
        self.streams.values().filter(|s| s.active()).count()
    }

    /// The send window the client has on `stream` (§6.9.2: the current initial window, plus
    /// the stream's WINDOW_UPDATEs, less its DATA).
    pub(super) fn send_window(&self, stream: u32, initial: i64) -> i64 {
        self.streams
            .get(&stream)
            .map_or(0, |s| initial + s.credit - s.data_sent)
    }

    pub(super) fn call_on(&self, stream: u32) -> Option<usize> {
        self.streams.get(&stream).and_then(|s| s.call)
    }

    /// The call's stream if it has one, else the client's last stream (or 1): where a
    /// structured frame aimed at the call goes.
    pub(super) fn stream_for(&self, call: usize) -> u32 {
        self.calls
            .get(call)
            .and_then(|c| c.stream)
            .unwrap_or(self.highest.max(1))
    }

    /// Sets the outcome of the call on `stream`, if the oracle still has it in flight.
    pub(super) fn settle(&mut self, stream: u32, expect: Expect) {
        if let Some(c) = self.call_on(stream) {
            let call = &mut self.calls[c];
            if call.expect.in_flight() {
                call.expect = expect;
            }
        }
    }

    /// The connection ended: every call in flight fails, refused if it was never sent
    /// (the doc of `CallError::Refused`: "or the connection ended before its HEADERS were
    /// handed to the writer"; the harness takes the output after every operation and every
    /// frame, so a call with a stream here is one whose HEADERS were taken).
    pub(super) fn end(&mut self, how: Ended) {
        if self.ended.is_none() {
            self.ended = Some(how);
        }
        for call in &mut self.calls {
            if call.expect.in_flight() && !call.released {
                call.expect = if call.stream.is_some() {
                    Expect::Transport
                } else {
                    Expect::Refused
                };
            }
        }
    }

    /// Checks a call's outcome as `poll_answer` gave it.
    pub(super) fn polled(&mut self, call: usize, outcome: Option<&Result<Answer, CallError>>) {
        let c = &mut self.calls[call];
        match outcome {
            Some(outcome) => {
                assert!(
                    c.expect != Expect::Pending,
                    "call {call} ended with {outcome:?}, but nothing the instance sent ends it"
                );
                assert!(
                    c.expect.allows(outcome),
                    "call {call} ended with {outcome:?}; expected {:?}",
                    c.expect
                );
                c.released = true;
            }
            None => assert!(
                c.expect.in_flight(),
                "call {call} is still pending, but its outcome is due: {:?}",
                c.expect
            ),
        }
    }

    /// The harness cancels a call: an active stream must be reset ("Abandons a call: its
    /// stream, if open, is reset").
    pub(super) fn cancelled(&mut self, call: usize) {
        let c = &mut self.calls[call];
        c.released = true;
        c.expect = Expect::Gone;
        match c.stream {
            None => c.cancelled_unsent = true,
            Some(s) => {
                if self.active(s) {
                    self.owed_resets.insert(s, Some(CANCEL));
                }
            }
        }
    }

    /// What the client's getters say, against their docs.
    pub(super) fn bookkeeping(&self, conn: &Connection) {
        // "Whether new calls go elsewhere"; `OpenError::Closed`: "it ended, the instance sent
        // GOAWAY, or its stream identifiers ran out".
        let closed = self.ended.is_some() || self.goaway.is_some();
        assert_eq!(conn.takes_no_new_call(), closed, "takes_no_new_call()");
        // "Whether the connection has failed, or takes no new stream (GOAWAY, or its stream
        // identifiers used up) and has none left open".
        let done = self.ended.is_some() || (self.goaway.is_some() && self.active_count() == 0);
        assert_eq!(conn.is_done(), done, "is_done()");
        // "How many keep-alive pings have been acknowledged" (`ping`: "only an
        // acknowledgement carrying `payload` counts as its answer").
        assert_eq!(conn.pongs(), self.pongs, "pongs()");
    }

    /// At the end: whole frames, and every PING and SETTINGS acknowledged (RFC 9113 §6.7,
    /// §6.5.3).
    pub(super) fn finish(&self) {
        assert!(self.out.is_empty(), "the output ends inside a frame");
        assert!(
            self.out_block.is_none(),
            "the output ends inside a header block"
        );
        for (data, received) in &self.pings_received {
            let acked = self.pings_acked.get(data).copied().unwrap_or(0);
            assert_eq!(acked, *received, "PINGs with bytes {data:?} answered");
        }
        assert_eq!(
            self.settings_acked, self.settings_received,
            "SETTINGS acknowledged"
        );
    }

    /// `poll_answer`'s doc: "otherwise `waker` is woken when it does" (have an answer).
    pub(super) fn check_wakes(&self, wakes: &[usize]) {
        for (n, c) in self.calls.iter().enumerate() {
            let due = !c.released && !c.expect.in_flight() && c.expect != Expect::Any;
            if let (true, Some(at)) = (due, c.wakes_at_poll) {
                assert!(
                    wakes[n] > at,
                    "call {n} has its outcome ({:?}), and the waker of its last poll was not woken",
                    c.expect
                );
            }
        }
    }

    /// The calls waiting for a stream.
    pub(super) fn waiting(&self) -> impl Iterator<Item = usize> + '_ {
        self.calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.stream.is_none() && !c.cancelled_unsent && c.expect.in_flight())
            .map(|(i, _)| i)
    }
}

/// The gRPC fields of a field list, as the `GrpcFields` doc describes them (`grpc-status`:
/// its number, or the value when it is not one), the first of each counting (the client's
/// `Fields::add`: "The first of each is what gRPC's clients read").
pub(super) fn grpc_fields(fields: &[hpack::Field]) -> GrpcFields {
    let mut out = GrpcFields::default();
    for (name, value) in fields {
        if name == b"grpc-status" && out.status.is_none() {
            let number = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<i32>().ok());
            out.status = Some(number.ok_or_else(|| value.clone()));
        } else if name == b"grpc-message" && out.message.is_none() {
            out.message = Some(value.clone());
        }
    }
    out
}

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Wake;

use proptest::prelude::*;

use super::*;
use crate::http2::frame::Head;

const CONFIG: Config = Config {
    stream_window_bytes: 1 << 20,
    connection_window_bytes: 4 << 20,
    header_list_bytes_max: 16 * 1024,
    calls_max: 8,
};

const LIMITS: CallLimits = CallLimits {
    message_bytes_max: 1024,
};

/// A waker that counts its wakes.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn waker() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count::default());
    (count.clone(), Waker::from(count))
}

/// A frame as the connection wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Out {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Everything the connection queued, as frames (the preface skipped when `preface`).
fn output(conn: &mut Connection) -> Vec<Out> {
    let mut chunks = VecDeque::new();
    conn.take_output(&mut chunks);
    let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut rest = bytes.strip_prefix(frame::PREFACE).unwrap_or(&bytes[..]);
    let mut frames = Vec::new();
    while let Some(head) = Head::read(rest) {
        let end = frame::HEAD_BYTES + head.len as usize;
        frames.push(Out {
            kind: head.kind,
            flags: head.flags,
            stream: head.stream,
            payload: rest[frame::HEAD_BYTES..end].to_vec(),
        });
        rest = &rest[end..];
    }
    assert!(rest.is_empty(), "a partial frame in the output");
    frames
}

/// A connection past its preface, with the instance's settings received.
fn connected() -> Connection {
    let mut conn = Connection::new(CONFIG);
    feed(&mut conn, &settings(&[])).unwrap();
    output(&mut conn);
    conn
}

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::write_head(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out.to_vec()
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::write_settings(&mut out, pairs);
    out.to_vec()
}

fn feed(conn: &mut Connection, bytes: &[u8]) -> Result<(), ConnectionError> {
    let mut input = BytesMut::from(bytes);
    let result = conn.receive(&mut input);
    if result.is_ok() {
        assert!(input.is_empty(), "a whole frame left unread");
    }
    result
}

/// A header block of literal fields.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (name, value) in fields {
        hpack::encode_literal_new_name(name.as_bytes(), value.as_bytes(), &mut out);
    }
    out.to_vec()
}

fn headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
    raw(kind::HEADERS, flags, stream, &block(fields))
}

fn message(bytes: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    m.extend_from_slice(bytes);
    m
}

/// A whole successful answer on `stream`: headers, the message, trailers.
fn answer_bytes(stream: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = headers(
        stream,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    bytes.extend(raw(kind::DATA, 0, stream, &message(body)));
    bytes.extend(headers(stream, &[("grpc-status", "0")], true));
    bytes
}

/// A connection whose instance allows one stream at a time.
fn one_stream_at_a_time() -> Connection {
    let mut conn = Connection::new(CONFIG);
    feed(
        &mut conn,
        &settings(&[(setting::MAX_CONCURRENT_STREAMS, 1)]),
    )
    .unwrap();
    conn
}

/// GOAWAY with `last` as the last stream processed, without error.
fn goaway(last: u32) -> Vec<u8> {
    let mut payload = last.to_be_bytes().to_vec();
    payload.extend_from_slice(&0u32.to_be_bytes());
    raw(kind::GOAWAY, 0, 0, &payload)
}

fn open(conn: &mut Connection, body: &[u8]) -> Call {
    conn.open(
        &[b"\x83\x86", b"\x84"],
        Bytes::copy_from_slice(body),
        LIMITS,
    )
    .unwrap()
}

fn poll(conn: &mut Connection, call: Call) -> Poll<Result<Answer, CallError>> {
    conn.poll_answer(call, &waker().1)
}

fn ready(conn: &mut Connection, call: Call) -> Result<Answer, CallError> {
    match poll(conn, call) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("the call has no answer"),
    }
}

fn goaway_reason(frames: &[Out]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == kind::GOAWAY)
        .map(|f| u32::from_be_bytes(f.payload[4..8].try_into().unwrap()))
}

fn rst(frames: &[Out], stream: u32) -> Option<Reason> {
    frames
        .iter()
        .find(|f| f.kind == kind::RST_STREAM && f.stream == stream)
        .map(|f| Reason(u32::from_be_bytes(f.payload[..4].try_into().unwrap())))
}

#[test]
fn the_preface_settings_and_window_go_first() {
    let mut conn = Connection::new(CONFIG);
    let mut chunks = VecDeque::new();
    conn.take_output(&mut chunks);
    assert!(chunks[0].starts_with(frame::PREFACE));
    let mut conn = Connection::new(CONFIG);
    let frames = output(&mut conn);
    assert_eq!(frames[0].kind, kind::SETTINGS);
    assert_eq!(
        frames[0].payload,
        [
            &[0, 2, 0, 0, 0, 0][..],
            &[0, 4, 0, 0x10, 0, 0],
            &[0, 6, 0, 0, 0x40, 0]
        ]
        .concat()
    );
    assert_eq!(frames[1].kind, kind::WINDOW_UPDATE);
    assert_eq!(
        u32::from_be_bytes(frames[1].payload[..].try_into().unwrap()),
        (4 << 20) - 65_535
    );
    // The instance's settings are acknowledged.
    feed(
        &mut conn,
        &settings(&[(setting::MAX_CONCURRENT_STREAMS, 100)]),
    )
    .unwrap();
    let frames = output(&mut conn);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].kind, frames[0].flags),
        (kind::SETTINGS, flag::ACK)
    );
}

#[test]
fn a_call_is_its_headers_and_its_message_and_the_answer_is_read_whole() {
    let mut conn = connected();
    let (wakes, w) = waker();
    let call = open(&mut conn, b"ping");
    let frames = output(&mut conn);
    assert_eq!(frames.len(), 2);
    assert_eq!(
        (frames[0].kind, frames[0].flags, frames[0].stream),
        (kind::HEADERS, flag::END_HEADERS, 1)
    );
    assert_eq!(frames[0].payload, b"\x83\x86\x84");
    assert_eq!(
        (frames[1].kind, frames[1].flags, &frames[1].payload[..]),
        (kind::DATA, flag::END_STREAM, &b"ping"[..])
    );
    assert!(conn.poll_answer(call, &w).is_pending());
    feed(&mut conn, &answer_bytes(1, b"pong")).unwrap();
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    let answer = ready(&mut conn, call).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.head, GrpcFields::default());
    assert_eq!(
        answer.trailers,
        Some(GrpcFields {
            status: Some(Ok(0)),
            message: None
        })
    );
    assert_eq!(&answer.body[..], &message(b"pong")[..]);
    assert_eq!(conn.calls(), 0);
    // The stream ended on both sides: nothing to reset.
    assert!(output(&mut conn).is_empty());
}

#[test]
fn an_answer_cut_anywhere_reads_the_same() {
    let whole = answer_bytes(1, b"a message of some length");
    for cut in 0..=whole.len() {
        let mut conn = connected();
        let call = open(&mut conn, b"x");
        let mut input = BytesMut::from(&whole[..cut]);
        conn.receive(&mut input).unwrap();
        input.extend_from_slice(&whole[cut..]);
        conn.receive(&mut input).unwrap();
        let answer = ready(&mut conn, call).unwrap();
        assert_eq!(
            &answer.body[..],
            &message(b"a message of some length")[..],
            "cut {cut}"
        );
    }
}

#[test]
fn a_trailers_only_answer_and_an_http_error_are_whole_at_their_headers() {
    let mut conn = connected();
    let call = open(&mut conn, b"x");
    output(&mut conn);
    let fields = [
        (":status", "200"),
        ("grpc-status", "7"),
        ("grpc-message", "no"),
    ];
    feed(&mut conn, &headers(1, &fields, true)).unwrap();
    let answer = ready(&mut conn, call).unwrap();
    assert_eq!(
        answer.head,
        GrpcFields {
            status: Some(Ok(7)),
            message: Some(b"no".to_vec())
        }
    );
    assert!(output(&mut conn).is_empty());
    // An HTTP error with a body that is not gRPC's: whole at the headers, the stream reset.
    let call = open(&mut conn, b"x");
    output(&mut conn);
    feed(&mut conn, &headers(3, &[(":status", "508")], false)).unwrap();
    assert_eq!(ready(&mut conn, call).unwrap().status, 508);
    assert_eq!(rst(&output(&mut conn), 3), Some(Reason::CANCEL));
    // Its late DATA is dropped; the connection goes on.
    feed(
        &mut conn,
        &raw(kind::DATA, flag::END_STREAM, 3, b"{\"error\":1}"),
    )
    .unwrap();
    let call = open(&mut conn, b"x");
    feed(&mut conn, &answer_bytes(5, b"ok")).unwrap();
    assert!(ready(&mut conn, call).is_ok());
}

#[test]
fn a_message_past_the_bound_fails_the_call_from_its_prefix_alone() {
    let mut conn = connected();
    let call = open(&mut conn, b"x");
    output(&mut conn);
    feed(&mut conn, &headers(1, &[(":status", "200")], false)).unwrap();
    // Five bytes declaring 1025 against a bound of 1024.
    let prefix = [0, 0, 0, 4, 1];
    feed(&mut conn, &raw(kind::DATA, 0, 1, &prefix)).unwrap();
    assert_eq!(ready(&mut conn, call), Err(CallError::TooLarge));
    assert_eq!(rst(&output(&mut conn), 1), Some(Reason::CANCEL));
    // At the bound exactly, the answer is read.
    let call = open(&mut conn, b"x");
    feed(&mut conn, &answer_bytes(3, &[7; 1024])).unwrap();
    assert_eq!(ready(&mut conn, call).unwrap().body.len(), 1029);
}

#[test]
fn header_blocks_span_continuation_frames_and_padding_and_priority_are_skipped() {
    let mut conn = connected();
    let call = open(&mut conn, b"x");
    let b = block(&[(":status", "200"), ("x-long", &"v".repeat(300))]);
    // HEADERS padded and with priority, then two CONTINUATION frames.
    let mut first = vec![3u8];
    first.extend_from_slice(&[0, 0, 0, 0, 16]);
    first.extend_from_slice(&b[..100]);
    first.extend_from_slice(&[0, 0, 0]);
    let mut bytes = raw(kind::HEADERS, flag::PADDED | flag::PRIORITY, 1, &first);
    bytes.extend(raw(kind::CONTINUATION, 0, 1, &b[100..200]));
    bytes.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 1, &b[200..]));
    let mut data = vec![2u8];
    data.extend(message(b"hi"));
    data.extend_from_slice(&[0, 0]);
    bytes.extend(raw(kind::DATA, flag::PADDED, 1, &data));
    bytes.extend(headers(1, &[("grpc-status", "0")], true));
    feed(&mut conn, &bytes).unwrap();
    assert_eq!(
        &ready(&mut conn, call).unwrap().body[..],
        &message(b"hi")[..]
    );
}

#[test]
fn a_header_block_interrupted_ends_the_connection_and_fails_every_call() {
    let mut conn = connected();
    let first = open(&mut conn, b"x");
    let second = open(&mut conn, b"y");
    output(&mut conn);
    let mut bytes = raw(kind::HEADERS, 0, 1, &block(&[(":status", "200")]));
    bytes.extend(raw(kind::PING, 0, 0, &[0; 8]));
    let error = feed(&mut conn, &bytes).unwrap_err();
    assert_eq!(error.reason, Reason::PROTOCOL_ERROR);
    assert_eq!(goaway_reason(&output(&mut conn)), Some(1));
    assert!(matches!(
        ready(&mut conn, first),
        Err(CallError::Transport(_))
    ));
    assert!(matches!(
        ready(&mut conn, second),
        Err(CallError::Transport(_))
    ));
    assert!(matches!(
        conn.open(&[], Bytes::new(), LIMITS),
        Err(OpenError::Closed(_))
    ));
    assert!(conn.is_done());
}

#[test]
fn a_message_waits_for_window_and_respects_the_frame_size() {
    let mut conn = connected();
    let body = vec![1u8; 100_000];
    let call = open(&mut conn, &body);
    let frames = output(&mut conn);
    let data: Vec<&Out> = frames.iter().filter(|f| f.kind == kind::DATA).collect();
    // The default windows let 65,535 bytes go, in frames of at most 16,384.
    assert!(data.iter().all(|f| f.payload.len() <= 16_384));
    assert_eq!(data.iter().map(|f| f.payload.len()).sum::<usize>(), 65_535);
    assert!(data.iter().all(|f| f.flags & flag::END_STREAM == 0));
    // The stream's window alone does not free it; the connection's too does.
    feed(
        &mut conn,
        &raw(kind::WINDOW_UPDATE, 0, 1, &100_000u32.to_be_bytes()),
    )
    .unwrap();
    assert!(output(&mut conn).is_empty());
    feed(
        &mut conn,
        &raw(kind::WINDOW_UPDATE, 0, 0, &100_000u32.to_be_bytes()),
    )
    .unwrap();
    let frames = output(&mut conn);
    let sent: usize = frames.iter().map(|f| f.payload.len()).sum();
    assert_eq!(sent, 100_000 - 65_535);
    assert_eq!(frames.last().unwrap().flags, flag::END_STREAM);
    feed(&mut conn, &answer_bytes(1, b"ok")).unwrap();
    assert!(ready(&mut conn, call).is_ok());
}

#[test]
fn a_larger_initial_window_and_frame_size_let_more_go() {
    let mut conn = Connection::new(CONFIG);
    output(&mut conn);
    let call = open(&mut conn, &vec![1u8; 70_000]);
    output(&mut conn);
    feed(
        &mut conn,
        &[
            settings(&[
                (setting::INITIAL_WINDOW_SIZE, 200_000),
                (setting::MAX_FRAME_SIZE, 32_768),
            ]),
            raw(kind::WINDOW_UPDATE, 0, 0, &100_000u32.to_be_bytes()),
        ]
        .concat(),
    )
    .unwrap();
    let frames = output(&mut conn);
    let data: Vec<&Out> = frames.iter().filter(|f| f.kind == kind::DATA).collect();
    assert_eq!(
        data.iter().map(|f| f.payload.len()).sum::<usize>(),
        70_000 - 65_535
    );
    // A frame size out of range, or a window past 2^31-1, ends the connection.
    for bad in [
        settings(&[(setting::MAX_FRAME_SIZE, 100)]),
        settings(&[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]),
        raw(kind::WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
    ] {
        let mut conn = connected();
        let error = feed(&mut conn, &bad).unwrap_err();
        assert!(
            [Reason::PROTOCOL_ERROR, Reason::FLOW_CONTROL_ERROR].contains(&error.reason),
            "{error}"
        );
    }
    assert!(poll(&mut conn, call).is_pending());
}

#[test]
fn calls_past_the_streams_allowed_wait_for_one_to_end() {
    let mut conn = one_stream_at_a_time();
    output(&mut conn);
    let first = open(&mut conn, b"1");
    let second = open(&mut conn, b"2");
    let frames = output(&mut conn);
    assert!(frames.iter().all(|f| f.stream == 1), "{frames:?}");
    feed(&mut conn, &answer_bytes(1, b"a")).unwrap();
    assert!(ready(&mut conn, first).is_ok());
    let frames = output(&mut conn);
    assert_eq!(frames[0].stream, 3);
    assert_eq!(frames[1].payload, b"2");
    feed(&mut conn, &answer_bytes(3, b"b")).unwrap();
    assert!(ready(&mut conn, second).is_ok());
    // At the connection's own bound, a call is refused at once.
    let mut conn = Connection::new(CONFIG);
    feed(
        &mut conn,
        &settings(&[(setting::MAX_CONCURRENT_STREAMS, 0)]),
    )
    .unwrap();
    for _ in 0..CONFIG.calls_max {
        open(&mut conn, b"w");
    }
    assert_eq!(
        conn.open(&[], Bytes::from_static(b"w"), LIMITS),
        Err(OpenError::Full(CONFIG.calls_max))
    );
}

#[test]
fn a_cancelled_call_resets_its_stream_and_its_late_frames_keep_the_table_in_step() {
    let mut conn = connected();
    let call = open(&mut conn, b"x");
    output(&mut conn);
    conn.cancel(call);
    assert_eq!(rst(&output(&mut conn), 1), Some(Reason::CANCEL));
    assert_eq!(conn.calls(), 0);
    // The instance's answer on the cancelled stream adds a field to its table (literal with
    // incremental indexing); the next answer refers to it by index 62.
    let mut indexed = vec![0x40, 7];
    indexed.extend_from_slice(b":status");
    indexed.extend_from_slice(&[3]);
    indexed.extend_from_slice(b"200");
    let mut bytes = raw(kind::HEADERS, flag::END_HEADERS, 1, &indexed);
    bytes.extend(raw(kind::DATA, flag::END_STREAM, 1, &message(b"late")));
    let call = open(&mut conn, b"y");
    bytes.extend(raw(kind::HEADERS, flag::END_HEADERS, 3, &[0x80 | 62]));
    bytes.extend(raw(kind::DATA, 0, 3, &message(b"on time")));
    bytes.extend(headers(3, &[("grpc-status", "0")], true));
    feed(&mut conn, &bytes).unwrap();
    let answer = ready(&mut conn, call).unwrap();
    assert_eq!((answer.status, &answer.body[5..]), (200, &b"on time"[..]));
}

/// An expired call is answered `Expired`, its stream reset, and the stream it held goes to
/// the call waiting for one; expiring it again, or a call already answered, does nothing.
#[test]
fn an_expired_call_is_answered_expired_and_frees_its_stream_for_a_waiting_call() {
    let mut conn = one_stream_at_a_time();
    output(&mut conn);
    let first = open(&mut conn, b"1");
    let waiting = open(&mut conn, b"2");
    let frames = output(&mut conn);
    assert!(frames.iter().all(|f| f.stream == 1), "{frames:?}");
    conn.expire(first);
    conn.expire(first);
    let frames = output(&mut conn);
    assert_eq!(rst(&frames, 1), Some(Reason::CANCEL));
    assert!(
        frames
            .iter()
            .any(|f| f.stream == 3 && f.kind == kind::HEADERS),
        "the waiting call takes the freed stream: {frames:?}"
    );
    assert!(matches!(ready(&mut conn, first), Err(CallError::Expired)));
    // Its late answer is ignored; the waiting call's is its own.
    feed(&mut conn, &answer_bytes(1, b"late")).unwrap();
    feed(&mut conn, &answer_bytes(3, b"on time")).unwrap();
    let answer = ready(&mut conn, waiting).unwrap();
    assert_eq!(&answer.body[5..], b"on time");
    conn.expire(waiting);
    assert_eq!(conn.calls(), 0);
    assert!(output(&mut conn).is_empty());
}

/// A call expired while it waits for a stream never gets one.
#[test]
fn a_call_expired_while_waiting_is_never_sent() {
    let mut conn = one_stream_at_a_time();
    output(&mut conn);
    let first = open(&mut conn, b"1");
    let waiting = open(&mut conn, b"2");
    output(&mut conn);
    conn.expire(waiting);
    assert!(
        output(&mut conn).is_empty(),
        "nothing is reset: it had no stream"
    );
    assert!(matches!(ready(&mut conn, waiting), Err(CallError::Expired)));
    feed(&mut conn, &answer_bytes(1, b"one")).unwrap();
    assert!(ready(&mut conn, first).is_ok());
    let frames = output(&mut conn);
    assert!(frames.iter().all(|f| f.stream != 3), "{frames:?}");
    assert_eq!(conn.calls(), 0);
}

#[test]
fn goaway_refuses_the_streams_it_leaves_out_and_new_calls() {
    let mut conn = connected();
    let kept = open(&mut conn, b"1");
    let dropped = open(&mut conn, b"2");
    feed(&mut conn, &goaway(1)).unwrap();
    assert!(matches!(
        ready(&mut conn, dropped),
        Err(CallError::Refused(_))
    ));
    assert!(matches!(
        conn.open(&[], Bytes::new(), LIMITS),
        Err(OpenError::Closed(_))
    ));
    assert!(conn.takes_no_new_call() && !conn.is_done());
    feed(&mut conn, &answer_bytes(1, b"a")).unwrap();
    assert!(ready(&mut conn, kept).is_ok());
    assert!(conn.is_done());
}

#[test]
fn a_reset_stream_fails_its_call_refused_or_not() {
    let mut conn = connected();
    let refused = open(&mut conn, b"1");
    let reset = open(&mut conn, b"2");
    feed(&mut conn, &raw(kind::RST_STREAM, 0, 1, &7u32.to_be_bytes())).unwrap();
    feed(&mut conn, &raw(kind::RST_STREAM, 0, 3, &2u32.to_be_bytes())).unwrap();
    assert!(matches!(
        ready(&mut conn, refused),
        Err(CallError::Refused(_))
    ));
    match ready(&mut conn, reset) {
        Err(CallError::Transport(why)) => assert!(why.contains("INTERNAL_ERROR"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stream_refused_after_its_headers_is_a_reset_not_a_refusal() {
    // The headers show the instance processed the call: sending it again could run it twice.
    let mut conn = connected();
    let call = open(&mut conn, b"1");
    feed(&mut conn, &headers(1, &[(":status", "200")], false)).unwrap();
    feed(&mut conn, &raw(kind::RST_STREAM, 0, 1, &7u32.to_be_bytes())).unwrap();
    match ready(&mut conn, call) {
        Err(CallError::Transport(why)) => assert!(why.contains("REFUSED_STREAM"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pings_are_answered_and_a_flood_of_them_ends_the_connection() {
    let mut conn = connected();
    feed(&mut conn, &raw(kind::PING, 0, 0, b"12345678")).unwrap();
    let frames = output(&mut conn);
    assert_eq!(
        frames,
        [Out {
            kind: kind::PING,
            flags: flag::ACK,
            stream: 0,
            payload: b"12345678".to_vec()
        }]
    );
    conn.ping(*b"abcdefgh");
    assert_eq!(output(&mut conn)[0].flags, 0);
    feed(&mut conn, &raw(kind::PING, flag::ACK, 0, b"abcdefgh")).unwrap();
    assert_eq!(conn.pongs(), 1);
    let flood: Vec<u8> = (0..=CONTROL_QUEUED_MAX)
        .flat_map(|_| raw(kind::PING, 0, 0, b"12345678"))
        .collect();
    let error = feed(&mut conn, &flood).unwrap_err();
    assert_eq!(error.reason, Reason::ENHANCE_YOUR_CALM);
}

#[test]
fn frames_that_break_the_protocol_end_the_connection() {
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "too large",
            raw(0xfa, 0, 0, &[0; 16_385]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "never opened",
            headers(5, &[(":status", "200")], true),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "even stream",
            raw(kind::DATA, 0, 2, b""),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "push",
            raw(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &[0, 0, 0, 2]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "lone continuation",
            raw(kind::CONTINUATION, flag::END_HEADERS, 1, b""),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "padding too long",
            raw(kind::DATA, flag::PADDED, 1, &[9, 1]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "bad hpack",
            raw(kind::HEADERS, flag::END_HEADERS, 1, &[0x80]),
            Reason::COMPRESSION_ERROR,
        ),
        (
            "settings on a stream",
            raw(kind::SETTINGS, 0, 1, b""),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "short ping",
            raw(kind::PING, 0, 0, b"1234"),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "zero window",
            raw(kind::WINDOW_UPDATE, 0, 0, &[0; 4]),
            Reason::PROTOCOL_ERROR,
        ),
    ];
    for (what, bytes, reason) in cases {
        let mut conn = connected();
        let call = open(&mut conn, b"x");
        output(&mut conn);
        let error = feed(&mut conn, &bytes).unwrap_err();
        assert_eq!(error.reason, reason, "{what}: {error}");
        assert_eq!(goaway_reason(&output(&mut conn)), Some(reason.0), "{what}");
        assert!(ready(&mut conn, call).is_err(), "{what}");
        // Whatever comes after is not read.
        assert!(
            conn.receive(&mut BytesMut::from(&answer_bytes(1, b"")[..]))
                .is_err()
        );
    }
}

#[test]
fn malformed_answers_fail_their_call_and_not_the_connection() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "no status",
            headers(1, &[("content-type", "application/grpc")], true),
        ),
        ("bad status", headers(1, &[(":status", "2000")], true)),
        (
            "upper case",
            headers(1, &[(":status", "200"), ("X-Up", "1")], true),
        ),
        ("data first", raw(kind::DATA, flag::END_STREAM, 1, b"x")),
        ("informational end", headers(1, &[(":status", "100")], true)),
        (
            "trailers without end",
            [
                headers(1, &[(":status", "200")], false),
                headers(1, &[("grpc-status", "0")], false),
            ]
            .concat(),
        ),
        ("oversize", {
            let b = block(&[(":status", "200"), ("x-big", &"v".repeat(17_000))]);
            let mut bytes = raw(kind::HEADERS, flag::END_STREAM, 1, &b[..16_000]);
            bytes.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 1, &b[16_000..]));
            bytes
        }),
    ];
    for (what, bytes) in cases {
        let mut conn = connected();
        let call = open(&mut conn, b"x");
        output(&mut conn);
        feed(&mut conn, &bytes).unwrap();
        assert!(
            matches!(ready(&mut conn, call), Err(CallError::Transport(_))),
            "{what}"
        );
        assert!(rst(&output(&mut conn), 1).is_some(), "{what}");
        let call = open(&mut conn, b"y");
        feed(&mut conn, &answer_bytes(3, b"fine")).unwrap();
        assert!(ready(&mut conn, call).is_ok(), "{what}");
    }
}

#[test]
fn an_informational_answer_is_skipped() {
    let mut conn = connected();
    let call = open(&mut conn, b"x");
    let mut bytes = headers(1, &[(":status", "103")], false);
    bytes.extend(answer_bytes(1, b"after"));
    feed(&mut conn, &bytes).unwrap();
    assert_eq!(&ready(&mut conn, call).unwrap().body[5..], b"after");
}

#[test]
fn a_smaller_header_table_is_acknowledged_in_the_next_block() {
    let mut conn = connected();
    feed(&mut conn, &settings(&[(setting::HEADER_TABLE_SIZE, 0)])).unwrap();
    output(&mut conn);
    open(&mut conn, b"x");
    let frames = output(&mut conn);
    assert_eq!(frames[0].payload, b"\x20\x83\x86\x84");
    open(&mut conn, b"y");
    assert_eq!(output(&mut conn)[0].payload, b"\x83\x86\x84");
}

#[test]
fn received_data_is_given_back_as_window() {
    let mut conn = connected();
    let body = vec![5u8; 1000];
    let limits = CallLimits {
        message_bytes_max: 4 << 20,
    };
    let call = conn
        .open(&[b"\x83"], Bytes::from_static(b"x"), limits)
        .unwrap();
    output(&mut conn);
    feed(&mut conn, &headers(1, &[(":status", "200")], false)).unwrap();
    // Half the stream's window (512 KiB) in frames of 1,000 bytes.
    let frames = (CONFIG.stream_window_bytes / 2).div_ceil(1000);
    let mut first = body.clone();
    first[..5].copy_from_slice(&[0, 0, 0x10, 0, 0]);
    feed(&mut conn, &raw(kind::DATA, 0, 1, &first)).unwrap();
    for _ in 1..frames {
        feed(&mut conn, &raw(kind::DATA, 0, 1, &body)).unwrap();
    }
    let updates: Vec<Out> = output(&mut conn)
        .into_iter()
        .filter(|f| f.kind == kind::WINDOW_UPDATE)
        .collect();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].stream, 1);
    assert_eq!(
        u32::from_be_bytes(updates[0].payload[..].try_into().unwrap()),
        frames * 1000
    );
    assert!(poll(&mut conn, call).is_pending());
}

#[test]
fn stream_identifiers_run_out_into_a_closed_connection() {
    let mut conn = connected();
    conn.next_id = frame::STREAM_ID_MAX;
    let last = open(&mut conn, b"x");
    assert_eq!(output(&mut conn)[0].stream, frame::STREAM_ID_MAX);
    assert!(matches!(
        conn.open(&[], Bytes::new(), LIMITS),
        Err(OpenError::Closed(_))
    ));
    feed(&mut conn, &answer_bytes(frame::STREAM_ID_MAX, b"z")).unwrap();
    assert!(ready(&mut conn, last).is_ok());
}

#[test]
fn a_failed_connection_fails_sent_calls_and_refuses_waiting_ones() {
    let mut conn = one_stream_at_a_time();
    let sent = open(&mut conn, b"1");
    let waiting = open(&mut conn, b"2");
    output(&mut conn);
    conn.fail("reading: connection reset");
    assert!(matches!(
        ready(&mut conn, sent),
        Err(CallError::Transport(_))
    ));
    assert!(matches!(
        ready(&mut conn, waiting),
        Err(CallError::Refused(_))
    ));
    assert!(conn.is_done());
}

/// A call opened while the connection's end was still unread (the driver reads before it
/// writes) never reached the instance: it is refused, so that it goes again, even though it
/// had a stream; one opened and written before is not.
#[test]
fn a_call_whose_headers_were_never_written_is_refused_when_the_connection_ends() {
    let mut conn = connected();
    let written = open(&mut conn, b"1");
    output(&mut conn);
    let unwritten = open(&mut conn, b"2");
    feed(&mut conn, &raw(kind::PING, 0, 0, b"12345678")).unwrap();
    conn.fail("the instance closed the connection");
    assert!(matches!(
        ready(&mut conn, written),
        Err(CallError::Transport(_))
    ));
    assert!(matches!(
        ready(&mut conn, unwritten),
        Err(CallError::Refused(_))
    ));
    // Its frames are withdrawn; what else was queued (here the acknowledgement of a PING
    // read before the end) stays.
    let after = output(&mut conn);
    assert!(after.iter().all(|f| f.stream != 3), "{after:?}");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].kind, kind::PING);
}

/// The same when the connection fails before its first output was taken: the preface and
/// settings stay, the call's frames go.
#[test]
fn a_connection_failing_before_its_first_write_keeps_its_preface_and_refuses_the_call() {
    let mut conn = Connection::new(CONFIG);
    let call = open(&mut conn, &[7; 100_000]);
    conn.fail("connecting: reset");
    assert!(matches!(ready(&mut conn, call), Err(CallError::Refused(_))));
    let mut chunks = VecDeque::new();
    conn.take_output(&mut chunks);
    let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert!(bytes.starts_with(frame::PREFACE));
    let mut rest = &bytes[frame::PREFACE.len()..];
    let mut kinds = Vec::new();
    while let Some(head) = Head::read(rest) {
        assert_eq!(head.stream, 0, "{head:?}");
        kinds.push(head.kind);
        rest = &rest[frame::HEAD_BYTES + head.len as usize..];
    }
    assert!(rest.is_empty());
    assert_eq!(kinds, [kind::SETTINGS, kind::WINDOW_UPDATE]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever an instance sends, nothing panics, every call ends or waits, and the
    /// connection's bookkeeping holds.
    #[test]
    fn any_bytes_from_an_instance_are_survived(
        frames in proptest::collection::vec(
            (0u8..11, any::<u8>(), 0u32..8, proptest::collection::vec(any::<u8>(), 0..64)),
            0..24,
        ),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut conn = connected();
        let calls: Vec<Call> = (0..3).map(|_| open(&mut conn, b"x")).collect();
        let mut bytes = Vec::new();
        for (k, flags, stream, payload) in &frames {
            bytes.extend(raw(*k, *flags, *stream, payload));
        }
        bytes.extend(&garbage);
        let _ = feed_any(&mut conn, &bytes);
        output(&mut conn);
        for call in calls {
            if poll(&mut conn, call).is_pending() {
                conn.cancel(call);
            }
        }
        prop_assert_eq!(conn.calls(), 0);
        prop_assert!(conn.open.is_empty());
    }
}

/// Like [`feed`], without requiring the input to be read whole.
fn feed_any(conn: &mut Connection, bytes: &[u8]) -> Result<(), ConnectionError> {
    conn.receive(&mut BytesMut::from(bytes))
}

#[test]
fn only_the_acknowledgement_of_the_ping_in_flight_counts() {
    let mut conn = connected();
    feed(&mut conn, &raw(kind::PING, flag::ACK, 0, b"unasked!")).unwrap();
    assert_eq!(conn.pongs(), 0);
    conn.ping(*b"keepaliv");
    feed(&mut conn, &raw(kind::PING, flag::ACK, 0, b"unasked!")).unwrap();
    assert_eq!(conn.pongs(), 0);
    feed(&mut conn, &raw(kind::PING, flag::ACK, 0, b"keepaliv")).unwrap();
    assert_eq!(conn.pongs(), 1);
    // Answered once: a repeat does not count again.
    feed(&mut conn, &raw(kind::PING, flag::ACK, 0, b"keepaliv")).unwrap();
    assert_eq!(conn.pongs(), 1);
}

#[test]
fn the_instance_must_open_with_settings_and_may_not_enable_push() {
    let mut conn = Connection::new(CONFIG);
    let error = feed(&mut conn, &raw(kind::PING, 0, 0, b"12345678")).unwrap_err();
    assert_eq!(error.reason, Reason::PROTOCOL_ERROR);
    let mut conn = Connection::new(CONFIG);
    let error = feed(&mut conn, &settings(&[(setting::ENABLE_PUSH, 1)])).unwrap_err();
    assert_eq!(error.reason, Reason::PROTOCOL_ERROR);
}

#[test]
fn waiting_calls_are_refused_when_no_stream_can_open() {
    // Identifiers used up: the call waiting behind the last stream is refused, and the
    // connection is done once that stream ends.
    let mut conn = one_stream_at_a_time();
    conn.next_id = frame::STREAM_ID_MAX - 2;
    let before_last = open(&mut conn, b"1");
    let last = open(&mut conn, b"2");
    let waiting = open(&mut conn, b"3");
    feed(&mut conn, &answer_bytes(frame::STREAM_ID_MAX - 2, b"a")).unwrap();
    assert!(ready(&mut conn, before_last).is_ok());
    assert!(matches!(
        ready(&mut conn, waiting),
        Err(CallError::Refused(_))
    ));
    assert!(!conn.is_done());
    feed(&mut conn, &answer_bytes(frame::STREAM_ID_MAX, b"b")).unwrap();
    assert!(ready(&mut conn, last).is_ok());
    assert!(conn.is_done());
    // GOAWAY: the waiting calls are refused at once.
    let mut conn = one_stream_at_a_time();
    let sent = open(&mut conn, b"1");
    let waiting = open(&mut conn, b"2");
    feed(&mut conn, &goaway(1)).unwrap();
    assert!(matches!(
        ready(&mut conn, waiting),
        Err(CallError::Refused(_))
    ));
    assert!(poll(&mut conn, sent).is_pending());
}

#[test]
fn a_cancelled_waiting_call_is_skipped_and_its_handle_never_takes_another_calls_answer() {
    let mut conn = one_stream_at_a_time();
    output(&mut conn);
    let first = open(&mut conn, b"1");
    let cancelled = open(&mut conn, b"2");
    conn.cancel(cancelled);
    // The cancelled call's slot is reused by the next call.
    let third = open(&mut conn, b"3");
    output(&mut conn);
    assert!(matches!(
        poll(&mut conn, cancelled),
        Poll::Ready(Err(CallError::Transport(_)))
    ));
    feed(&mut conn, &answer_bytes(1, b"a")).unwrap();
    assert!(ready(&mut conn, first).is_ok());
    // The next stream is the third call's: the cancelled one never went.
    let frames = output(&mut conn);
    assert_eq!((frames[0].stream, &frames[1].payload[..]), (3, &b"3"[..]));
    feed(&mut conn, &answer_bytes(3, b"c")).unwrap();
    assert_eq!(&ready(&mut conn, third).unwrap().body[5..], b"c");
    assert_eq!(conn.calls(), 0);
}

#[test]
fn a_stream_stalled_on_its_own_window_waits_for_its_own_update() {
    let mut conn = Connection::new(CONFIG);
    feed(
        &mut conn,
        &[
            settings(&[(setting::INITIAL_WINDOW_SIZE, 10)]),
            raw(kind::WINDOW_UPDATE, 0, 0, &1_000_000u32.to_be_bytes()),
        ]
        .concat(),
    )
    .unwrap();
    output(&mut conn);
    let call = open(&mut conn, &[9u8; 30]);
    let sent = |frames: &[Out]| -> usize {
        frames
            .iter()
            .filter(|f| f.kind == kind::DATA)
            .map(|f| f.payload.len())
            .sum()
    };
    assert_eq!(sent(&output(&mut conn)), 10);
    // The connection's window grows: the stream stays stalled on its own.
    feed(
        &mut conn,
        &raw(kind::WINDOW_UPDATE, 0, 0, &5u32.to_be_bytes()),
    )
    .unwrap();
    assert_eq!(sent(&output(&mut conn)), 0);
    feed(
        &mut conn,
        &raw(kind::WINDOW_UPDATE, 0, 1, &5u32.to_be_bytes()),
    )
    .unwrap();
    assert_eq!(sent(&output(&mut conn)), 5);
    // A larger initial window, repeated in one frame, applies once, its last value.
    feed(
        &mut conn,
        &settings(&[
            (setting::INITIAL_WINDOW_SIZE, 1_000),
            (setting::INITIAL_WINDOW_SIZE, 0),
            (setting::INITIAL_WINDOW_SIZE, 20),
        ]),
    )
    .unwrap();
    // 20 - 15 sent + 5 given: 10 more may go.
    assert_eq!(sent(&output(&mut conn)), 10);
    feed(
        &mut conn,
        &raw(kind::WINDOW_UPDATE, 0, 1, &5u32.to_be_bytes()),
    )
    .unwrap();
    let frames = output(&mut conn);
    assert_eq!(sent(&frames), 5);
    assert_eq!(frames.last().unwrap().flags, flag::END_STREAM);
    feed(&mut conn, &answer_bytes(1, b"ok")).unwrap();
    assert!(ready(&mut conn, call).is_ok());
}

#[test]
fn streams_blocked_on_the_connection_window_go_in_the_order_they_blocked() {
    let mut conn = connected();
    let first = open(&mut conn, &[1u8; 65_535]);
    let second = open(&mut conn, &[2u8; 100]);
    let third = open(&mut conn, &[3u8; 100]);
    output(&mut conn);
    // The second call is cancelled while blocked: its entry is skipped.
    conn.cancel(second);
    output(&mut conn);
    feed(
        &mut conn,
        &raw(kind::WINDOW_UPDATE, 0, 0, &1_000u32.to_be_bytes()),
    )
    .unwrap();
    let data: Vec<(u32, usize)> = output(&mut conn)
        .iter()
        .filter(|f| f.kind == kind::DATA)
        .map(|f| (f.stream, f.payload.len()))
        .collect();
    assert_eq!(data, [(5, 100)]);
    assert!(poll(&mut conn, first).is_pending() && poll(&mut conn, third).is_pending());
}

#[test]
fn answers_that_break_the_rules_of_a_response_are_malformed() {
    for (what, fields) in [
        ("101", &[(":status", "101")][..]),
        (
            "connection field",
            &[(":status", "200"), ("connection", "close")],
        ),
        ("te", &[(":status", "200"), ("te", "trailers")]),
        ("request pseudo", &[(":status", "200"), (":path", "/")]),
        ("pseudo after regular", &[("x-a", "1"), (":status", "200")]),
        (
            "cr lf in a value",
            &[(":status", "200"), ("grpc-message", "a\r\nb")],
        ),
        ("nul", &[(":status", "200"), ("x-a", "a\0b")]),
        ("leading space", &[(":status", "200"), ("x-a", " a")]),
        ("space in a name", &[(":status", "200"), ("x a", "1")]),
        ("non-ascii name", &[(":status", "200"), ("x-é", "1")]),
        ("upper-case name", &[(":status", "200"), ("x-A", "1")]),
        ("empty name", &[(":status", "200"), ("", "1")]),
        ("lone lf", &[(":status", "200"), ("x-a", "a\nb")]),
        ("trailing tab", &[(":status", "200"), ("x-a", "a\t")]),
    ] {
        let mut conn = connected();
        let call = open(&mut conn, b"x");
        feed(&mut conn, &headers(1, fields, true)).unwrap();
        assert!(
            matches!(ready(&mut conn, call), Err(CallError::Transport(_))),
            "{what}"
        );
    }
    // Every token byte may name a field, and a value may hold any other byte.
    let mut conn = connected();
    let call = open(&mut conn, b"x");
    let fields = [(":status", "200"), ("x-09az!#$%&'*+-.^_`|~", "a \t\u{7f}é")];
    feed(&mut conn, &headers(1, &fields, true)).unwrap();
    assert!(ready(&mut conn, call).is_ok());
    // The first grpc-status is the one read.
    let mut conn = connected();
    let call = open(&mut conn, b"x");
    let fields = [
        (":status", "200"),
        ("grpc-status", "5"),
        ("grpc-status", "0"),
    ];
    feed(&mut conn, &headers(1, &fields, true)).unwrap();
    assert_eq!(ready(&mut conn, call).unwrap().head.status, Some(Ok(5)));
}

//! The instance's frames, read by the oracle: which ones must end the connection and with
//! which error code (RFC 9113 §4–§6), what they change, and what they settle about a call
//! (§8.1 for the answer's shape, the client's docs for what it keeps).

use switchyard_core::http2::client::{Answer, ConnectionError};
use switchyard_core::http2::frame::Reason;

use super::hpack::{self, ENTRY_OVERHEAD_BYTES};
use super::model::{
    COMPRESSION_ERROR, Continuation, ENHANCE_YOUR_CALM, Expect, FLOW_CONTROL_ERROR,
    FRAME_BYTES_DEFAULT, FRAME_BYTES_LIMIT, FRAME_SIZE_ERROR, Head, Model, PROTOCOL_ERROR,
    REFUSED_STREAM, WINDOW_DEFAULT, WINDOW_MAX, flag, grpc_fields, kind, tolerated, u32_at,
};

/// Whether a frame must, may or must not end the connection, and with which codes.
#[derive(Debug, Default)]
pub(super) struct Verdict {
    pub must: Vec<Reason>,
    pub may: Vec<Reason>,
}

impl Verdict {
    fn must(&mut self, reason: Reason) {
        self.must.push(reason);
    }

    fn may(&mut self, reason: Reason) {
        self.may.push(reason);
    }

    fn fatal(&self) -> bool {
        !self.must.is_empty()
    }

    /// Refused exactly when it must be, and then with a code the rules name.
    pub(super) fn check(&self, head: &Head, result: &Result<(), ConnectionError>) {
        match result {
            Ok(()) => assert!(
                self.must.is_empty(),
                "the client took {head:?}, which must end the connection with one of {:?}",
                self.must
            ),
            Err(e) => assert!(
                self.must.contains(&e.reason) || self.may.contains(&e.reason),
                "the client ended the connection on {head:?} with {e}; allowed: {:?} {:?}",
                self.must,
                self.may
            ),
        }
    }
}

/// What a field block says, by RFC 9113 §8.2 and §8.3.
struct Judged {
    status: Option<u16>,
    /// Malformed (§8.1.1: the call fails, the stream is reset).
    checked: Option<&'static str>,
    /// Malformed or not depending on the reading, or in a way the client is let off
    /// ([`tolerated`]): the oracle makes no claim about the call from there on. A name with
    /// a character outside a token's (RFC 9110 §5.1) that §8.2.1 does not name is one: the
    /// RFC's note lets a client validate by either rule.
    lenient: Option<&'static str>,
}

/// RFC 9113 §8.2.2: connection-specific fields; TE is allowed in requests only.
const CONNECTION_SPECIFIC: &[&[u8]] = &[
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"transfer-encoding",
    b"upgrade",
    b"te",
];

/// The punctuation of a token (RFC 9110 §5.6.2).
const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~";

fn judge(fields: &[hpack::Field]) -> Judged {
    let mut j = Judged {
        status: None,
        checked: None,
        lenient: None,
    };
    let mut characters = None;
    let mut regular = false;
    let mut statuses = 0;
    for (name, value) in fields {
        if name.first() == Some(&b':') {
            if regular {
                j.checked = Some("a pseudo-header after a regular field (§8.3)");
            }
            if name == b":status" {
                statuses += 1;
                if statuses > 1 {
                    j.checked = Some("a second :status (§8.3)");
                }
                j.status = match value[..] {
                    [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => Some(
                        u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
                    ),
                    _ => {
                        j.checked = Some("a :status that is not three digits");
                        None
                    }
                };
            } else {
                j.checked = Some("an undefined pseudo-header (§8.3)");
            }
        } else {
            regular = true;
            if name.iter().any(u8::is_ascii_uppercase) {
                j.checked = Some("upper case in a field name (§8.2.1)");
            }
            if CONNECTION_SPECIFIC.contains(&&name[..]) {
                j.checked = Some("a connection-specific field (§8.2.2)");
            }
            if name.is_empty() || name.iter().any(|&b| b <= 0x20 || b >= 0x7f || b == b':') {
                characters = Some("a forbidden character in a field name (§8.2.1)");
            } else if !name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || TCHAR.contains(&b))
            {
                // Not a token (RFC 9110 §5.1), though §8.2.1 does not name the character:
                // the oracle makes no claim.
                j.lenient = Some("a field name that is not a token");
            }
        }
        if value.iter().any(|&b| matches!(b, 0 | b'\r' | b'\n'))
            || value.first().is_some_and(|&b| b == b' ' || b == b'\t')
            || value.last().is_some_and(|&b| b == b' ' || b == b'\t')
        {
            characters = Some("a forbidden character in a field value (§8.2.1)");
        }
    }
    if j.status == Some(101) {
        j.checked = Some("101 in HTTP/2 (§8.6)");
    }
    if tolerated::FIELD_CHARACTERS {
        j.lenient = j.lenient.or(characters);
    } else if characters.is_some() {
        j.checked = characters;
    }
    j
}

/// The payload without padding and (for HEADERS) priority fields (§6.1, §6.2).
fn unpadded<'p>(head: &Head, payload: &'p [u8], v: &mut Verdict) -> Option<&'p [u8]> {
    let mut rest = payload;
    let mut pad = 0;
    if head.has(flag::PADDED) {
        let Some((&p, tail)) = rest.split_first() else {
            // Too short for its mandatory Pad Length (§4.2).
            v.must(FRAME_SIZE_ERROR);
            v.may(PROTOCOL_ERROR);
            return None;
        };
        pad = usize::from(p);
        rest = tail;
    }
    if head.kind == kind::HEADERS && head.has(flag::PRIORITY) {
        if rest.len() < 5 {
            v.must(FRAME_SIZE_ERROR);
            v.may(PROTOCOL_ERROR);
            return None;
        }
        rest = &rest[5..];
    }
    if pad > rest.len() {
        // §6.1, §6.2: padding as long as the payload or longer.
        v.must(PROTOCOL_ERROR);
        return None;
    }
    Some(&rest[..rest.len() - pad])
}

impl Model {
    /// Reads one frame from the instance into the model, before the client sees it.
    pub(super) fn peer_frame(&mut self, head: &Head, payload: &[u8]) -> Verdict {
        let mut v = Verdict::default();
        self.frames_received += 1;
        let ours = self
            .ours
            .unwrap_or_else(|| panic!("no SETTINGS from the client yet"));
        if head.len > ours.frame_bytes_max {
            // §4.2. A frame that alters no connection state could be a stream error; this
            // client reads the length from the head and ends the connection for any frame,
            // and the harness splits the input the same way.
            v.must(FRAME_SIZE_ERROR);
            return v;
        }
        if !self.settled {
            // §3.4: the server's preface is a SETTINGS frame, and an invalid preface MUST be
            // a connection error. (A SETTINGS acknowledgement is a SETTINGS frame, but not
            // the instance's settings: either reading holds.)
            if head.kind != kind::SETTINGS {
                v.must(PROTOCOL_ERROR);
                return v;
            }
            if head.has(flag::ACK) {
                v.may(PROTOCOL_ERROR);
            }
        }
        if self.continuation.is_some() && head.kind != kind::CONTINUATION {
            // §6.10: a header block interrupted.
            v.must(PROTOCOL_ERROR);
            return v;
        }
        match head.kind {
            kind::DATA => self.data(head, payload, &mut v),
            kind::HEADERS => self.headers(head, payload, &mut v),
            kind::PRIORITY => {
                if head.stream == 0 {
                    v.must(PROTOCOL_ERROR);
                } else if head.len != 5 && self.active(head.stream) {
                    // §6.3: a stream error (on a stream not open there is nothing to reset).
                    let code = (!tolerated::PRIORITY_SIZE_CODE).then_some(FRAME_SIZE_ERROR);
                    self.stream_error(head.stream, code);
                }
            }
            kind::RST_STREAM => self.rst_stream(head, payload, &mut v),
            kind::SETTINGS => self.settings(head, payload, &mut v),
            kind::PUSH_PROMISE => {
                // §6.6: MUST once the instance acknowledged ENABLE_PUSH = 0.
                if ours.enable_push == 0 && self.our_settings_acked {
                    v.must(PROTOCOL_ERROR);
                } else {
                    v.may(PROTOCOL_ERROR);
                }
            }
            kind::PING => self.ping(head, payload, &mut v),
            kind::GOAWAY => self.goaway_frame(head, payload, &mut v),
            kind::WINDOW_UPDATE => self.window_update(head, payload, &mut v),
            kind::CONTINUATION => self.continuation_frame(head, payload, &mut v),
            // §4.1: frames of unknown types are ignored.
            _ => {}
        }
        v
    }

    fn data(&mut self, head: &Head, payload: &[u8], v: &mut Verdict) {
        if self.idle(head.stream) {
            // §5.1 (idle), §6.1 (stream 0).
            v.must(PROTOCOL_ERROR);
        }
        let body = unpadded(head, payload, v);
        let len = i64::from(head.len);
        if self.conn_received + len > WINDOW_DEFAULT + self.conn_given {
            // §6.9.1; the client checks the connection's window ("DATA past the
            // connection's window").
            v.must(FLOW_CONTROL_ERROR);
        }
        let Some(body) = body.filter(|_| !v.fatal()) else {
            return;
        };
        self.conn_received += len;
        let stream = head.stream;
        let end = head.has(flag::END_STREAM);
        if let Some(s) = self.streams.get_mut(&stream) {
            s.received += len;
        }
        if self.active(stream) {
            self.answer_data(stream, body, end);
        }
        self.ended_by_instance(stream, end);
    }

    fn headers(&mut self, head: &Head, payload: &[u8], v: &mut Verdict) {
        let bad_stream = self.idle(head.stream);
        let Some(fragment) = unpadded(head, payload, v) else {
            return;
        };
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            self.block_end(head.stream, end_stream, bad_stream, fragment, v);
            return;
        }
        if bad_stream {
            // Due by the block's end (the client looks at the stream then).
            v.may(PROTOCOL_ERROR);
        }
        self.check_block_bytes(fragment.len(), v);
        self.continuation = Some(Continuation {
            stream: head.stream,
            end_stream,
            bad_stream,
            block: fragment.to_vec(),
        });
    }

    /// The client's bound on a header block in progress, which its `check_block_bytes`
    /// explains: "The encoded block of a list within the bound is at most about as long as
    /// the list: past twice that, the instance is flooding."
    fn check_block_bytes(&self, len: usize, v: &mut Verdict) {
        let list = self
            .ours
            .and_then(|o| o.header_list_bytes_max)
            .unwrap_or(u32::MAX) as usize;
        if len > 2 * list + usize::from(u16::MAX) {
            v.must(ENHANCE_YOUR_CALM);
        }
    }

    fn continuation_frame(&mut self, head: &Head, payload: &[u8], v: &mut Verdict) {
        // §6.10: only after a HEADERS without END_HEADERS, on its stream.
        let Some(mut c) = self.continuation.take() else {
            v.must(PROTOCOL_ERROR);
            return;
        };
        if c.stream != head.stream {
            v.must(PROTOCOL_ERROR);
            return;
        }
        self.check_block_bytes(c.block.len() + payload.len(), v);
        if v.fatal() {
            return;
        }
        c.block.extend_from_slice(payload);
        if head.has(flag::END_HEADERS) {
            self.block_end(c.stream, c.end_stream, c.bad_stream, &c.block, v);
        } else {
            if c.bad_stream {
                v.may(PROTOCOL_ERROR);
            }
            self.continuation = Some(c);
        }
    }

    /// A whole header block: decoded always, so that the table stays in step (RFC 7541
    /// §2.2), then applied to its stream.
    fn block_end(
        &mut self,
        stream: u32,
        end_stream: bool,
        bad_stream: bool,
        block: &[u8],
        v: &mut Verdict,
    ) {
        let decoded = self.hpack.decode(block);
        if bad_stream {
            v.must(PROTOCOL_ERROR);
            if decoded.is_err() {
                v.may(COMPRESSION_ERROR);
            }
            return;
        }
        let Ok(fields) = decoded else {
            // RFC 9113 §4.3: a decoding error is a connection error.
            v.must(COMPRESSION_ERROR);
            return;
        };
        if self.active(stream) {
            self.answer_block(stream, end_stream, &fields);
        }
        self.ended_by_instance(stream, end_stream);
    }

    /// The instance ended its side of `stream`. A reset owed for a stream error is then
    /// optional when the stream closes (§5.1: nothing but PRIORITY on a closed stream).
    fn ended_by_instance(&mut self, stream: u32, end: bool) {
        if !end {
            return;
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            s.end_received = true;
        }
        if !self.active(stream) {
            self.owed_resets.remove(&stream);
        }
    }

    /// A stream error (§5.4.2): the call fails and the stream is reset, with `code` where
    /// the RFC names one.
    fn stream_error(&mut self, stream: u32, code: Option<Reason>) {
        let in_flight = self
            .call_on(stream)
            .is_some_and(|c| self.calls[c].expect.in_flight());
        if in_flight {
            self.owed_resets.insert(stream, code);
            self.settle(stream, Expect::Transport);
        }
    }

    fn answer_block(&mut self, stream: u32, end_stream: bool, fields: &[hpack::Field]) {
        let Some(c) = self.call_on(stream) else {
            return;
        };
        let list_bytes: usize = fields
            .iter()
            .map(|(n, v)| n.len() + v.len() + ENTRY_OVERHEAD_BYTES)
            .sum();
        let list_max = self.ours.and_then(|o| o.header_list_bytes_max);
        if list_max.is_some_and(|max| list_bytes > max as usize) {
            // The client's doc: what an instance sends is "bounded: the header list".
            self.stream_error(stream, None);
            return;
        }
        let j = judge(fields);
        if j.checked.is_some() {
            self.stream_error(stream, Some(PROTOCOL_ERROR));
            return;
        }
        if self.calls[c].expect != Expect::Pending {
            // Unknown: which phase the answer is in is not known, so nothing more is.
            return;
        }
        let progress = &self.calls[c].progress;
        if progress.body_phase {
            // §8.1: trailers carry no pseudo-header and end the stream.
            if j.status.is_some() || !end_stream {
                self.stream_error(stream, Some(PROTOCOL_ERROR));
            } else if j.lenient.is_some() {
                self.calls[c].expect = Expect::Unknown;
            } else {
                let answer = Answer {
                    status: progress.status,
                    head: progress.head.clone(),
                    trailers: Some(grpc_fields(fields)),
                    body: progress.body.clone().into(),
                };
                self.settle_answer(stream, c, answer);
            }
            return;
        }
        match j.status {
            // §8.3.2: a response has a :status.
            None => self.stream_error(stream, Some(PROTOCOL_ERROR)),
            // §8.1: an informational response does not end the stream.
            Some(100..=199) if end_stream => self.stream_error(stream, Some(PROTOCOL_ERROR)),
            _ if j.lenient.is_some() => self.calls[c].expect = Expect::Unknown,
            Some(100..=199) => {}
            Some(status) => {
                let grpc = grpc_fields(fields);
                // The client's `header_block`: "An answer that carries no message (an HTTP
                // error, or a status in its headers) is whole at its headers".
                let p = &mut self.calls[c].progress;
                p.content_length = fields
                    .iter()
                    .filter(|(n, _)| n == b"content-length")
                    .map(|(_, v)| v.clone())
                    .collect();
                if end_stream || status != 200 || grpc.status.is_some() {
                    let answer = Answer {
                        status,
                        head: grpc,
                        trailers: None,
                        body: Default::default(),
                    };
                    if end_stream {
                        self.settle_answer(stream, c, answer);
                    } else {
                        self.settle(stream, Expect::Answer(answer));
                    }
                } else {
                    p.body_phase = true;
                    p.status = status;
                    p.head = grpc;
                }
            }
        }
    }

    fn answer_data(&mut self, stream: u32, body: &[u8], end_stream: bool) {
        let Some(c) = self.call_on(stream) else {
            return;
        };
        if self.calls[c].expect != Expect::Pending {
            return;
        }
        if !self.calls[c].progress.body_phase {
            // §8.1: DATA before the response's headers.
            self.stream_error(stream, Some(PROTOCOL_ERROR));
            return;
        }
        let call = &mut self.calls[c];
        call.progress.body.extend_from_slice(body);
        let max = call.limits.message_bytes_max;
        let got = &call.progress.body;
        // `Collected::push`: counted "from the bytes received, and from the length its prefix
        // declares as soon as that has arrived".
        let declared = got.get(1..5).map(|d| u32_at(d, 0) as usize);
        if got.len() > max.saturating_add(5) || declared.is_some_and(|d| d > max) {
            self.settle(stream, Expect::TooLarge);
        } else if end_stream {
            let answer = Answer {
                status: call.progress.status,
                head: call.progress.head.clone(),
                trailers: None,
                body: call.progress.body.clone().into(),
            };
            self.settle_answer(stream, c, answer);
        }
    }

    /// An answer the instance ended: valid only if its body is as long as its headers said.
    fn settle_answer(&mut self, stream: u32, c: usize, answer: Answer) {
        if self.calls[c].progress.length_agrees(answer.body.len()) {
            self.settle(stream, Expect::Answer(answer));
        } else if tolerated::CONTENT_LENGTH {
            self.calls[c].expect = Expect::Unknown;
        } else {
            self.stream_error(stream, Some(PROTOCOL_ERROR));
        }
    }

    fn rst_stream(&mut self, head: &Head, payload: &[u8], v: &mut Verdict) {
        if payload.len() != 4 {
            v.must(FRAME_SIZE_ERROR);
        }
        if self.idle(head.stream) {
            // §6.4: stream 0, or an idle stream.
            v.must(PROTOCOL_ERROR);
        }
        if v.fatal() {
            return;
        }
        let stream = head.stream;
        if self.active(stream) {
            // The doc of `CallError::Refused`: "The instance did not process the request
            // (REFUSED_STREAM before any response header block ...)"; §8.7.
            let answered = self
                .call_on(stream)
                .is_some_and(|c| self.calls[c].progress.body_phase);
            let expect = if u32_at(payload, 0) == REFUSED_STREAM && !answered {
                Expect::Refused
            } else {
                Expect::Transport
            };
            self.settle(stream, expect);
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            s.rst_received = true;
        }
    }

    fn settings(&mut self, head: &Head, payload: &[u8], v: &mut Verdict) {
        if head.stream != 0 {
            v.must(PROTOCOL_ERROR);
        }
        if head.has(flag::ACK) {
            if !payload.is_empty() {
                v.must(FRAME_SIZE_ERROR);
            } else if !v.fatal() {
                self.our_settings_acked = true;
            }
            return;
        }
        if !payload.len().is_multiple_of(6) {
            v.must(FRAME_SIZE_ERROR);
        }
        if v.fatal() {
            return;
        }
        // §6.5.3: in order, each applied before the next.
        for pair in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([pair[0], pair[1]]);
            let value = u32_at(pair, 2);
            match id {
                0x1 => {
                    self.theirs.table_bytes = value;
                    if value < self.encoder_table_bytes {
                        let owed = self.owed_update.map_or(value, |(o, _)| o.min(value));
                        self.owed_update = Some((owed, self.batch + 1));
                    }
                }
                0x2 if value != 0 => {
                    // §6.5.2: other than 0 or 1 is an error, and "A client MUST treat receipt
                    // of a SETTINGS frame with SETTINGS_ENABLE_PUSH set to 1 as a connection
                    // error".
                    v.must(PROTOCOL_ERROR);
                    return;
                }
                0x3 => self.theirs.streams_max = value,
                0x4 => {
                    let value = i64::from(value);
                    if value > WINDOW_MAX {
                        v.must(FLOW_CONTROL_ERROR);
                        return;
                    }
                    // §6.9.2: every window the client keeps moves; past 2^31-1 is a
                    // connection error.
                    let over = self
                        .streams
                        .iter()
                        .any(|(_, s)| s.active() && value + s.credit - s.data_sent > WINDOW_MAX);
                    if over && tolerated::INITIAL_WINDOW_OVERFLOW {
                        v.may(FLOW_CONTROL_ERROR);
                    } else if over {
                        v.must(FLOW_CONTROL_ERROR);
                        return;
                    }
                    self.theirs.initial_window = value;
                }
                0x5 => {
                    if !(FRAME_BYTES_DEFAULT..=FRAME_BYTES_LIMIT).contains(&value) {
                        v.must(PROTOCOL_ERROR);
                        return;
                    }
                    self.theirs.frame_bytes_max = value;
                }
                _ => {}
            }
            let theirs = self.theirs;
            self.window.widen(&theirs);
        }
        self.settings_received += 1;
        self.control_in_feed += 1;
        self.settled = true;
    }

    fn ping(&mut self, head: &Head, payload: &[u8], v: &mut Verdict) {
        if head.stream != 0 {
            v.must(PROTOCOL_ERROR);
        }
        let Ok(data) = <[u8; 8]>::try_from(payload) else {
            v.must(FRAME_SIZE_ERROR);
            return;
        };
        if v.fatal() {
            return;
        }
        if head.has(flag::ACK) {
            if self.own_ping == Some(data) {
                self.own_ping = None;
                self.pongs += 1;
            }
        } else {
            *self.pings_received.entry(data).or_default() += 1;
            self.control_in_feed += 1;
        }
    }

    fn goaway_frame(&mut self, head: &Head, payload: &[u8], v: &mut Verdict) {
        if head.stream != 0 {
            v.must(PROTOCOL_ERROR);
        }
        if payload.len() < 8 {
            v.must(FRAME_SIZE_ERROR);
        }
        if v.fatal() {
            return;
        }
        let last = u32_at(payload, 0) & 0x7fff_ffff;
        let last = self.goaway.map_or(last, |before| before.min(last));
        self.goaway = Some(last);
        // §6.8: streams above the last were not processed; the doc of `CallError::Refused`
        // ("a GOAWAY that left the stream out"), and calls not yet sent are refused too.
        let above: Vec<u32> = self
            .streams
            .range(last.saturating_add(1)..)
            .filter(|(_, s)| s.active())
            .map(|(id, _)| *id)
            .collect();
        for stream in above {
            self.settle(stream, Expect::Refused);
            if let Some(s) = self.streams.get_mut(&stream) {
                s.refused = true;
            }
        }
        let waiting: Vec<usize> = self.waiting().collect();
        for c in waiting {
            self.calls[c].expect = Expect::Refused;
        }
    }

    fn window_update(&mut self, head: &Head, payload: &[u8], v: &mut Verdict) {
        if payload.len() != 4 {
            // §6.9.
            v.must(FRAME_SIZE_ERROR);
            return;
        }
        let increment = i64::from(u32_at(payload, 0) & 0x7fff_ffff);
        let stream = head.stream;
        if stream == 0 {
            if increment == 0 {
                v.must(PROTOCOL_ERROR);
            } else if self.conn_credit - self.conn_sent + increment > WINDOW_MAX {
                // §6.9.1: the connection's window past 2^31-1.
                v.must(FLOW_CONTROL_ERROR);
            } else {
                self.conn_credit += increment;
            }
            return;
        }
        if self.idle(stream) {
            v.must(PROTOCOL_ERROR);
            return;
        }
        if self.active(stream) {
            if increment == 0 {
                self.stream_error(stream, Some(PROTOCOL_ERROR));
                return;
            }
            if self.send_window(stream, self.theirs.initial_window) + increment > WINDOW_MAX {
                self.stream_error(stream, Some(FLOW_CONTROL_ERROR));
                return;
            }
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            s.credit += increment;
        }
    }
}

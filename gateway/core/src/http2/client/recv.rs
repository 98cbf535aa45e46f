//! What the instance sends: frames read and checked one by one, and applied to the
//! connection and its streams.

use bytes::{Buf, BytesMut};

use super::{
    Answer, CONTROL_QUEUED_MAX, CallError, Connection, ConnectionError, Continuation, GrpcFields,
    HEADER_TABLE_BYTES, Recv, conn_err,
};
use crate::http2::frame::{self, Head, Reason, flag, kind, setting};

impl Connection {
    /// Reads the frames complete in `input`, leaving a partial one there. On a connection
    /// error, a GOAWAY is queued, every call fails and the error is returned.
    pub fn receive(&mut self, input: &mut BytesMut) -> Result<(), ConnectionError> {
        if let Some(why) = &self.failed {
            input.clear();
            return Err(conn_err(Reason::NO_ERROR, why.clone()));
        }
        while let Some(head) = Head::read(input) {
            if head.len > frame::FRAME_BYTES_DEFAULT {
                return Err(self.connection_error(conn_err(
                    Reason::FRAME_SIZE_ERROR,
                    format!(
                        "a frame of {} bytes; at most {}",
                        head.len,
                        frame::FRAME_BYTES_DEFAULT
                    ),
                )));
            }
            let total = frame::HEAD_BYTES + head.len as usize;
            if input.len() < total {
                input.reserve(total - input.len());
                return Ok(());
            }
            let mut bytes = input.split_to(total);
            bytes.advance(frame::HEAD_BYTES);
            if let Err(error) = self.frame(head, bytes) {
                input.clear();
                return Err(self.connection_error(error));
            }
        }
        Ok(())
    }

    fn connection_error(&mut self, error: ConnectionError) -> ConnectionError {
        if self.failed.is_none() {
            // The connection ends as it stands: a call with a stream goes out before the
            // GOAWAY (it may be processed, so it is not refused), whether or not it was
            // handed to the writer yet, so that how the instance's bytes were cut into reads
            // changes no outcome.
            frame::write_goaway(&mut self.out, 0, error.reason);
            self.end(&format!("this side ended it: {error}"), self.next_id);
        }
        error
    }

    fn frame(&mut self, head: Head, payload: BytesMut) -> Result<(), ConnectionError> {
        if !self.settled && head.kind != kind::SETTINGS {
            // The server's preface is a SETTINGS frame (RFC 9113 §3.4).
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                "the instance's first frame is not SETTINGS",
            ));
        }
        if self.continuation.is_some() && head.kind != kind::CONTINUATION {
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                "a header block interrupted by another frame",
            ));
        }
        match head.kind {
            kind::DATA => self.data(head, payload),
            kind::HEADERS => self.headers(head, &payload),
            kind::CONTINUATION => self.continuation(head, &payload),
            kind::RST_STREAM => self.rst_stream(head, &payload),
            kind::SETTINGS => self.settings(head, &payload),
            kind::PING => self.ping_frame(head, &payload),
            kind::GOAWAY => self.goaway_frame(head, &payload),
            kind::WINDOW_UPDATE => self.window_update(head, &payload),
            kind::PUSH_PROMISE => Err(conn_err(
                Reason::PROTOCOL_ERROR,
                "PUSH_PROMISE, though push is disabled",
            )),
            // Priorities are ignored (RFC 9113 §5.3.2), their frame's size is not.
            kind::PRIORITY => match self.stream_of(head.stream, "PRIORITY") {
                Ok(Some(slot)) if payload.len() != 5 => {
                    self.finish(
                        slot,
                        Err(CallError::Transport(
                            "a PRIORITY frame of other than 5 bytes".to_owned(),
                        )),
                        Some(Reason::FRAME_SIZE_ERROR),
                    );
                    Ok(())
                }
                Err(e) if head.stream == 0 => Err(e),
                _ => Ok(()),
            },
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    /// The slot of the open stream `id`; `None` for a stream that was open once (its late
    /// frames are dropped). A stream never opened by this side is a protocol error.
    fn stream_of(&self, id: u32, what: &str) -> Result<Option<usize>, ConnectionError> {
        if id == 0 {
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                format!("{what} on stream 0"),
            ));
        }
        if id.is_multiple_of(2) || id >= self.next_id {
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                format!("{what} on stream {id}, which this side never opened"),
            ));
        }
        Ok(self.open.get(&id).copied())
    }

    /// The payload without its padding (and, for HEADERS, its priority fields).
    fn unpadded(
        head: Head,
        mut payload: BytesMut,
        priority: bool,
    ) -> Result<BytesMut, ConnectionError> {
        let mut pad = 0usize;
        if head.has(flag::PADDED) {
            if payload.is_empty() {
                return Err(conn_err(
                    Reason::FRAME_SIZE_ERROR,
                    "a padded frame with no pad length",
                ));
            }
            pad = usize::from(payload[0]);
            payload.advance(1);
        }
        if priority && head.has(flag::PRIORITY) {
            if payload.len() < 5 {
                return Err(conn_err(
                    Reason::FRAME_SIZE_ERROR,
                    "HEADERS too short for its priority",
                ));
            }
            payload.advance(5);
        }
        if pad > payload.len() {
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                "padding longer than the frame",
            ));
        }
        payload.truncate(payload.len() - pad);
        Ok(payload)
    }

    fn data(&mut self, head: Head, payload: BytesMut) -> Result<(), ConnectionError> {
        let slot = self.stream_of(head.stream, "DATA")?;
        // The whole frame counts against the windows, padding included.
        let len = head.len;
        if i64::from(len) > self.recv_window {
            return Err(conn_err(
                Reason::FLOW_CONTROL_ERROR,
                "DATA past the connection's window",
            ));
        }
        self.recv_window -= i64::from(len);
        self.recv_unacked += len;
        if self.recv_unacked >= self.config.connection_window_bytes / 2 {
            frame::write_window_update(&mut self.out, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
        let data = Self::unpadded(head, payload, false)?.freeze();
        let Some(slot) = slot else {
            return Ok(());
        };
        let Some(s) = self.slots[slot].as_mut() else {
            return Ok(());
        };
        if matches!(s.recv, Recv::Head) {
            self.finish(
                slot,
                Err(CallError::Transport(
                    "DATA before the answer's headers".to_owned(),
                )),
                Some(Reason::PROTOCOL_ERROR),
            );
            return Ok(());
        }
        if !s.body.push(data, s.limits) {
            self.finish(slot, Err(CallError::TooLarge), Some(Reason::CANCEL));
            return Ok(());
        }
        if head.has(flag::END_STREAM) {
            self.complete(slot, None, true);
            return Ok(());
        }
        // The stream's window is not checked: window goes back as soon as half of it came, so
        // the instance always has more than half of it left, and with a window of 32 KiB or
        // more (the gateway announces 2 MiB) no frame (16 KiB at most, this side's
        // SETTINGS_MAX_FRAME_SIZE) can overrun it. With a smaller window an instance could;
        // what bounds memory either way is the message bound, checked above.
        s.recv_unacked += len;
        if s.recv_unacked >= self.config.stream_window_bytes / 2 {
            frame::write_window_update(&mut self.out, s.id, s.recv_unacked);
            s.recv_unacked = 0;
        }
        Ok(())
    }

    fn headers(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        let payload = Self::unpadded(head, BytesMut::from(payload), true)?;
        if head.has(flag::END_HEADERS) {
            return self.header_block(head.stream, head.has(flag::END_STREAM), &payload);
        }
        self.check_block_bytes(payload.len())?;
        self.continuation = Some(Continuation {
            stream: head.stream,
            end_stream: head.has(flag::END_STREAM),
            block: payload,
        });
        Ok(())
    }

    fn check_block_bytes(&self, len: usize) -> Result<(), ConnectionError> {
        // The encoded block of a list within the bound is at most about as long as the list:
        // past twice that, the instance is flooding.
        let max = 2 * self.config.header_list_bytes_max as usize + usize::from(u16::MAX);
        if len > max {
            return Err(conn_err(
                Reason::ENHANCE_YOUR_CALM,
                format!("a header block of more than {max} bytes"),
            ));
        }
        Ok(())
    }

    fn continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        let Some(mut c) = self.continuation.take() else {
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION without a header block",
            ));
        };
        if c.stream != head.stream {
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION on another stream than its header block's",
            ));
        }
        self.check_block_bytes(c.block.len() + payload.len())?;
        c.block.extend_from_slice(payload);
        if head.has(flag::END_HEADERS) {
            return self.header_block(c.stream, c.end_stream, &c.block);
        }
        self.continuation = Some(c);
        Ok(())
    }

    /// A whole header block on `stream`: decoded always (the table must stay in step), then
    /// applied to the stream if it is still open.
    fn header_block(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), ConnectionError> {
        let slot = self.stream_of(stream, "HEADERS")?;
        let mut fields = Fields::default();
        let decoded = self
            .decoder
            .decode(
                block,
                self.config.header_list_bytes_max as usize,
                |name, value| fields.add(name, value),
            )
            .map_err(|e| conn_err(Reason::COMPRESSION_ERROR, e.to_string()))?;
        let Some(slot) = slot else {
            return Ok(());
        };
        if decoded.oversize {
            self.finish(
                slot,
                Err(CallError::Transport(format!(
                    "the answer's header fields pass {} bytes",
                    self.config.header_list_bytes_max
                ))),
                Some(Reason::CANCEL),
            );
            return Ok(());
        }
        if let Some(why) = fields.malformed {
            self.finish(
                slot,
                Err(CallError::Transport(why.to_owned())),
                Some(Reason::PROTOCOL_ERROR),
            );
            return Ok(());
        }
        let Some(s) = self.slots[slot].as_mut() else {
            return Ok(());
        };
        match s.recv {
            Recv::Head => {
                let Some(status) = fields.status else {
                    return self.malformed(slot, "an answer without :status");
                };
                if status == 101 {
                    // Switching protocols has no meaning in HTTP/2 (RFC 9113 §8.6).
                    return self.malformed(slot, "status 101");
                }
                if (100..200).contains(&status) {
                    if end_stream {
                        return self
                            .malformed(slot, "an informational answer that ends the stream");
                    }
                    return Ok(());
                }
                s.status = status;
                // An answer that carries no message (an HTTP error, or a status in its
                // headers) is whole at its headers: its body, if any, is not read.
                let no_message = status != 200 || fields.grpc.status.is_some();
                s.head = fields.grpc;
                s.recv = Recv::Body;
                if end_stream || no_message {
                    self.complete(slot, None, end_stream);
                }
            }
            Recv::Body => {
                if fields.status.is_some() || fields.pseudo {
                    return self.malformed(slot, "trailers with a pseudo-header");
                }
                if !end_stream {
                    return self.malformed(slot, "trailers that do not end the stream");
                }
                self.complete(slot, Some(fields.grpc), true);
            }
        }
        Ok(())
    }

    fn malformed(&mut self, slot: usize, why: &str) -> Result<(), ConnectionError> {
        self.finish(
            slot,
            Err(CallError::Transport(format!("a malformed answer: {why}"))),
            Some(Reason::PROTOCOL_ERROR),
        );
        Ok(())
    }

    /// The answer is whole; `ended` when the instance ended the stream with it.
    fn complete(&mut self, slot: usize, trailers: Option<GrpcFields>, ended: bool) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        let answer = Answer {
            status: s.status,
            head: std::mem::take(&mut s.head),
            trailers,
            body: std::mem::take(&mut s.body).into_bytes(),
        };
        // An instance may answer before the request is all sent, or the answer may be whole
        // before its stream ends; the rest is not wanted.
        let reset = (!ended || !s.pending.is_empty()).then_some(Reason::CANCEL);
        self.finish(slot, Ok(answer), reset);
    }

    fn rst_stream(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        let &[a, b, c, d] = payload else {
            return Err(conn_err(
                Reason::FRAME_SIZE_ERROR,
                "RST_STREAM of other than 4 bytes",
            ));
        };
        let Some(slot) = self.stream_of(head.stream, "RST_STREAM")? else {
            return Ok(());
        };
        let reason = Reason(u32::from_be_bytes([a, b, c, d]));
        // REFUSED_STREAM says the instance did no work on the stream (RFC 9113 §8.7), so the
        // call may go again; once its headers came, the instance did, and a second send could
        // run it twice: then it is a reset like any other.
        let answered = self.slots[slot]
            .as_ref()
            .is_some_and(|s| matches!(s.recv, Recv::Body));
        let error = if reason == Reason::REFUSED_STREAM && !answered {
            CallError::Refused(format!("the instance refused the stream: {reason}"))
        } else {
            CallError::Transport(format!("the instance reset the stream: {reason}"))
        };
        self.finish(slot, Err(error), None);
        Ok(())
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(conn_err(Reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            if !payload.is_empty() {
                return Err(conn_err(
                    Reason::FRAME_SIZE_ERROR,
                    "a SETTINGS acknowledgement with a payload",
                ));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(conn_err(
                Reason::FRAME_SIZE_ERROR,
                "SETTINGS not a multiple of 6 bytes",
            ));
        }
        // A new initial window is applied once per frame, its last value, however many
        // times the frame repeats it: each application touches the stalled streams.
        let mut initial_window = None;
        for pair in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([pair[0], pair[1]]);
            let value = u32::from_be_bytes([pair[2], pair[3], pair[4], pair[5]]);
            match id {
                setting::HEADER_TABLE_SIZE if (value as usize) < HEADER_TABLE_BYTES => {
                    self.table_update = true;
                }
                // A server may not enable push (RFC 9113 §6.5.2).
                setting::ENABLE_PUSH if value != 0 => {
                    return Err(conn_err(
                        Reason::PROTOCOL_ERROR,
                        format!("ENABLE_PUSH {value} from a server"),
                    ));
                }
                setting::MAX_CONCURRENT_STREAMS => self.peer.streams_max = value,
                setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > frame::WINDOW_MAX {
                        return Err(conn_err(
                            Reason::FLOW_CONTROL_ERROR,
                            format!("INITIAL_WINDOW_SIZE {value}"),
                        ));
                    }
                    initial_window = Some(value);
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::FRAME_BYTES_DEFAULT..=frame::FRAME_BYTES_LIMIT).contains(&value) {
                        return Err(conn_err(
                            Reason::PROTOCOL_ERROR,
                            format!("MAX_FRAME_SIZE {value}"),
                        ));
                    }
                    self.peer.frame_bytes_max = value;
                }
                // MAX_HEADER_LIST_SIZE is advisory; a call's header block is small. Unknown
                // settings are ignored (RFC 9113 §6.5.2).
                _ => {}
            }
        }
        self.settled = true;
        frame::write_settings_ack(&mut self.out);
        self.control()?;
        if let Some(value) = initial_window {
            self.initial_window(value);
        }
        self.start_waiting();
        Ok(())
    }

    /// A new initial window: every open stream's window moves by the difference at once
    /// (each stream keeps its window as an offset from it). A stream window past 2^31-1 is
    /// caught when a WINDOW_UPDATE would grow it further.
    fn initial_window(&mut self, value: u32) {
        let grew = value > self.peer.initial_window;
        self.peer.initial_window = value;
        if grew {
            self.unstall();
            self.unblock();
        }
    }

    /// Counts a control frame queued in answer to the instance.
    fn control(&mut self) -> Result<(), ConnectionError> {
        self.control_queued += 1;
        if self.control_queued > CONTROL_QUEUED_MAX {
            return Err(conn_err(
                Reason::ENHANCE_YOUR_CALM,
                format!("more than {CONTROL_QUEUED_MAX} control frames to answer unread"),
            ));
        }
        Ok(())
    }

    fn ping_frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(conn_err(Reason::PROTOCOL_ERROR, "PING on a stream"));
        }
        let Ok(data) = <[u8; 8]>::try_from(payload) else {
            return Err(conn_err(
                Reason::FRAME_SIZE_ERROR,
                "PING of other than 8 bytes",
            ));
        };
        if head.has(flag::ACK) {
            // Only the acknowledgement of the ping in flight counts: an unsolicited one must
            // not keep a dead connection alive.
            if self.ping == Some(data) {
                self.ping = None;
                self.pongs += 1;
            }
            return Ok(());
        }
        frame::write_ping(&mut self.out, data, true);
        self.control()
    }

    fn goaway_frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(conn_err(Reason::PROTOCOL_ERROR, "GOAWAY on a stream"));
        }
        if payload.len() < 8 {
            return Err(conn_err(
                Reason::FRAME_SIZE_ERROR,
                "GOAWAY shorter than 8 bytes",
            ));
        }
        let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
            & frame::STREAM_ID_MAX;
        let reason = Reason(u32::from_be_bytes([
            payload[4], payload[5], payload[6], payload[7],
        ]));
        // A later GOAWAY may only lower the last stream.
        let last = self.goaway.map_or(last, |before| before.min(last));
        self.goaway = Some(last);
        let above: Vec<usize> = self
            .open
            .range(last.saturating_add(1)..)
            .map(|(_, s)| *s)
            .collect();
        for slot in above {
            self.finish(
                slot,
                Err(CallError::Refused(format!(
                    "the instance went away ({reason}) before it processed the stream"
                ))),
                None,
            );
        }
        // The calls waiting for a stream are refused: none will open.
        self.start_waiting();
        Ok(())
    }

    fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        let &[a, b, c, d] = payload else {
            return Err(conn_err(
                Reason::FRAME_SIZE_ERROR,
                "WINDOW_UPDATE of other than 4 bytes",
            ));
        };
        let increment = i64::from(u32::from_be_bytes([a, b, c, d]) & frame::STREAM_ID_MAX);
        if head.stream == 0 {
            if increment == 0 {
                return Err(conn_err(
                    Reason::PROTOCOL_ERROR,
                    "a connection WINDOW_UPDATE of 0",
                ));
            }
            self.send_window += increment;
            if self.send_window > frame::WINDOW_MAX {
                return Err(conn_err(
                    Reason::FLOW_CONTROL_ERROR,
                    "the connection's window past 2^31-1",
                ));
            }
            self.unblock();
            return Ok(());
        }
        let Some(slot) = self.stream_of(head.stream, "WINDOW_UPDATE")? else {
            return Ok(());
        };
        let Some(s) = self.slots[slot].as_mut() else {
            return Ok(());
        };
        if increment == 0 {
            return self.malformed(slot, "a stream WINDOW_UPDATE of 0");
        }
        s.send_adjust += increment;
        if i64::from(self.peer.initial_window) + s.send_adjust > frame::WINDOW_MAX {
            self.finish(
                slot,
                Err(CallError::Transport(
                    "the stream's window past 2^31-1".to_owned(),
                )),
                Some(Reason::FLOW_CONTROL_ERROR),
            );
            return Ok(());
        }
        if std::mem::take(&mut s.stalled) {
            self.stalled -= 1;
            self.send_data(slot);
        }
        Ok(())
    }
}

/// What a header block says that a gRPC client reads, and whether it is malformed (RFC 9113
/// §8.2 and §8.3): a pseudo-header other than `:status`, or after a regular field, a second
/// `:status`, upper-case letters in a name, or a connection-specific field.
#[derive(Default)]
struct Fields {
    status: Option<u16>,
    /// Any pseudo-header (trailers may have none).
    pseudo: bool,
    regular: bool,
    grpc: GrpcFields,
    malformed: Option<&'static str>,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8]) {
        // RFC 9113 §8.2.1: a name is a token (a pseudo-header's after its colon); a value
        // holds no NUL, CR or LF and no whitespace at either end. What the node reads
        // (`grpc-message` into errors and logs) never carries a line break. One pass over
        // each, by table: a response carries a dozen fields, each checked on every call.
        let token = name.strip_prefix(b":").unwrap_or(name);
        let (mut every, mut any) = (NAME_TOKEN, 0);
        for &b in token {
            let class = NAME_BYTES[usize::from(b)];
            every &= class;
            any |= class;
        }
        if token.is_empty() || every & NAME_TOKEN == 0 {
            self.malformed = Some("a header name that is not a token");
        }
        let upper_case = any & NAME_UPPER != 0;
        if value
            .iter()
            .fold(false, |bad, &b| bad | VALUE_BREAKS[usize::from(b)])
            || value.first().is_some_and(|b| matches!(b, b' ' | b'\t'))
            || value.last().is_some_and(|b| matches!(b, b' ' | b'\t'))
        {
            self.malformed = Some("a header value with NUL, CR, LF or whitespace at an end");
        }
        if let [b':', ..] = name {
            self.pseudo = true;
            if self.regular {
                self.malformed = Some("a pseudo-header after a regular field");
            }
        } else {
            self.regular = true;
        }
        match name {
            b":status" => {
                if self.status.is_some() {
                    self.malformed = Some("a second :status");
                }
                match value {
                    [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
                        self.status = Some(
                            u16::from(a - b'0') * 100
                                + u16::from(b - b'0') * 10
                                + u16::from(c - b'0'),
                        );
                    }
                    _ => self.malformed = Some("a :status that is not three digits"),
                }
            }
            [b':', ..] => self.malformed = Some("a pseudo-header a response may not carry"),
            // The first of each is what gRPC's clients read.
            b"grpc-status" if self.grpc.status.is_none() => {
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                self.grpc.status = Some(parsed.ok_or_else(|| value.to_vec()));
            }
            b"grpc-message" if self.grpc.message.is_none() => {
                self.grpc.message = Some(value.to_vec());
            }
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" | b"te" => {
                self.malformed = Some("a connection-specific header field");
            }
            _ if upper_case => {
                self.malformed = Some("a header name with upper-case letters");
            }
            _ => {}
        }
    }
}

/// [`NAME_BYTES`]: a byte of an HTTP token (RFC 9110 §5.6.2).
const NAME_TOKEN: u8 = 1;
/// [`NAME_BYTES`]: an upper-case letter (a token byte too).
const NAME_UPPER: u8 = 2;

/// Each byte's class in a header name.
const NAME_BYTES: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if byte.is_ascii_alphanumeric() {
            table[b] = NAME_TOKEN;
        }
        if byte.is_ascii_uppercase() {
            table[b] |= NAME_UPPER;
        }
        b += 1;
    }
    let punctuation = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = NAME_TOKEN;
        i += 1;
    }
    table
};

/// The bytes a header value may not hold anywhere: NUL, CR and LF.
const VALUE_BREAKS: [bool; 256] = {
    let mut table = [false; 256];
    table[0] = true;
    table[b'\r' as usize] = true;
    table[b'\n' as usize] = true;
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_classify_every_byte_as_the_rfcs_do() {
        for b in 0..=u8::MAX {
            let token = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            let class = NAME_BYTES[usize::from(b)];
            assert_eq!(class & NAME_TOKEN != 0, token, "{b:#04x}");
            assert_eq!(class & NAME_UPPER != 0, b.is_ascii_uppercase(), "{b:#04x}");
            assert_eq!(
                VALUE_BREAKS[usize::from(b)],
                matches!(b, 0 | b'\r' | b'\n'),
                "{b:#04x}"
            );
        }
    }
}

//! The client's output, read by the oracle: a well-formed sequence of frames after the
//! preface (RFC 9113 §3.4, §4), within the instance's settings and windows (§6.5.2, §6.9),
//! on streams the client opened in order (§5.1.1) and within MAX_CONCURRENT_STREAMS
//! (§5.1.2), carrying each call's header block and message as the caller gave them (the
//! doc of `client`: "A call is one stream: its HEADERS (the header block the caller
//! encoded) and its message as DATA"), answering every PING and SETTINGS, and ending with
//! one GOAWAY exactly when `receive` failed.

use super::hpack;
use super::model::{
    Cause, Ended, Expect, FRAME_BYTES_DEFAULT, FRAME_BYTES_LIMIT, HEAD_BYTES, Head, Model, Ours,
    PREFACE, Stream, TABLE_BYTES_DEFAULT, WINDOW_DEFAULT, WINDOW_MAX, flag, kind, u32_at,
};

/// What one batch still owes at its end.
struct Batch {
    cause: Cause,
    own_ping: Option<[u8; 8]>,
    goaway: bool,
}

impl Model {
    /// Reads one batch of the client's output (what one `take_output` gave), caused by
    /// `cause`.
    pub(super) fn output(&mut self, bytes: &[u8], cause: Cause) {
        self.batch += 1;
        self.out.extend_from_slice(bytes);
        if !self.preface_read {
            assert!(
                self.out.starts_with(PREFACE),
                "the output does not start with the client preface (§3.4)"
            );
            self.out.drain(..PREFACE.len());
            self.preface_read = true;
        }
        let mut batch = Batch {
            cause,
            own_ping: match cause {
                Cause::Ping(p) => Some(p),
                _ => None,
            },
            goaway: false,
        };
        let mut at = 0;
        while let Some(head) = Head::read(&self.out[at..]) {
            let end = at + HEAD_BYTES + head.len as usize;
            if self.out.len() < end {
                break;
            }
            let payload = self.out[at + HEAD_BYTES..end].to_vec();
            self.out_frame(&head, &payload, &mut batch);
            at = end;
        }
        self.out.drain(..at);
        self.batch_end(&batch);
    }

    fn batch_end(&mut self, batch: &Batch) {
        if let Cause::Frame(Some(reason)) = batch.cause {
            assert!(
                batch.goaway,
                "receive failed with {reason:?}, but no GOAWAY was queued"
            );
            self.owed_resets.clear();
        }
        assert!(batch.own_ping.is_none(), "ping() queued no PING");
        if let Some((stream, code)) = self.owed_resets.pop_first() {
            panic!("stream {stream} was owed RST_STREAM ({code:?}) and got none (§5.4.2)");
        }
        for c in 0..self.calls.len() {
            let Some(stream) = self.calls[c].stream else {
                continue;
            };
            if self.active(stream) {
                continue;
            }
            match self.calls[c].expect {
                // The client ended it by frames whose effect the oracle does not follow.
                Expect::Unknown => self.calls[c].expect = Expect::Any,
                Expect::Pending => panic!(
                    "stream {stream} of call {c} closed, but nothing the instance sent ends it"
                ),
                _ => {}
            }
        }
        if self.ended.is_none() {
            self.check_sending();
        }
        if self.ended.is_none() && self.goaway.is_none() {
            let free = self.active_count() < self.theirs.streams_max as usize;
            let waiting: Vec<usize> = self.waiting().collect();
            // The doc of `open`: "Queued now when a stream is free, else when one frees."
            assert!(
                !free || waiting.is_empty(),
                "calls {waiting:?} wait though only {} of {} streams are in use",
                self.active_count(),
                self.theirs.streams_max
            );
        }
        self.window = self.theirs;
    }

    /// `send_data`'s doc: it "Queues as much of the stream's message as the windows allow":
    /// a stream with more to send leaves one of its windows used up.
    fn check_sending(&self) {
        let conn_room = self.conn_credit - self.conn_sent;
        for (id, s) in &self.streams {
            let Some(c) = s.call else {
                continue;
            };
            let call = &self.calls[c];
            if !s.active() || s.end_sent {
                continue;
            }
            // "its message as DATA": once all of it is written, the stream is ended (§8.1).
            assert!(
                call.sent < call.message.len(),
                "call {c}'s whole message is on stream {id}, which it does not end"
            );
            let room = self.theirs.initial_window + s.credit - s.data_sent;
            assert!(
                room <= 0 || conn_room <= 0,
                "stream {id} has {} bytes to send and windows of {room} and {conn_room}",
                call.message.len() - call.sent
            );
        }
    }

    fn out_frame(&mut self, head: &Head, payload: &[u8], batch: &mut Batch) {
        assert!(!self.goaway_sent, "{head:?} after the GOAWAY");
        assert!(
            self.ended != Some(Ended::Failed),
            "{head:?} after the connection failed"
        );
        assert!(
            head.len <= self.window.frame_bytes_max,
            "a frame of {} bytes; the instance allows {} (§4.2): {head:?}",
            head.len,
            self.window.frame_bytes_max
        );
        assert!(!head.reserved, "the reserved bit set (§4.1): {head:?}");
        if !self.first_frame_read {
            assert!(
                head.kind == kind::SETTINGS && !head.has(flag::ACK),
                "the preface is not followed by SETTINGS (§3.4): {head:?}"
            );
            self.first_frame_read = true;
        }
        if let Some((stream, _)) = &self.out_block {
            // §6.10: a header block is contiguous.
            assert!(
                head.kind == kind::CONTINUATION && head.stream == *stream,
                "{head:?} inside the header block of stream {stream}"
            );
        }
        match head.kind {
            kind::SETTINGS => self.out_settings(head, payload),
            kind::PING => {
                assert!(head.stream == 0 && payload.len() == 8, "bad PING {head:?}");
                let data: [u8; 8] = payload.try_into().unwrap_or_default();
                if head.has(flag::ACK) {
                    let acked = self.pings_acked.entry(data).or_default();
                    *acked += 1;
                    let received = self.pings_received.get(&data).copied().unwrap_or(0);
                    assert!(
                        *acked <= received,
                        "a PING ACK with bytes {data:?} that no PING carried (§6.7)"
                    );
                } else {
                    assert_eq!(batch.own_ping.take(), Some(data), "a PING nobody asked for");
                }
            }
            kind::GOAWAY => {
                assert!(
                    head.stream == 0 && payload.len() >= 8,
                    "bad GOAWAY {head:?}"
                );
                let Cause::Frame(Some(reason)) = batch.cause else {
                    panic!("GOAWAY though receive did not fail: {:?}", batch.cause);
                };
                assert_eq!(u32_at(payload, 4), reason.0, "GOAWAY's code");
                // §6.8: the last stream the instance initiated and this side processed.
                assert_eq!(u32_at(payload, 0), 0, "GOAWAY's last stream");
                assert!(!batch.goaway, "a second GOAWAY");
                batch.goaway = true;
                self.goaway_sent = true;
            }
            kind::WINDOW_UPDATE => self.out_window_update(head, payload),
            kind::RST_STREAM => self.out_rst_stream(head, payload),
            kind::HEADERS => self.out_headers(head, payload),
            kind::CONTINUATION => {
                let Some((stream, mut block)) = self.out_block.take() else {
                    panic!("CONTINUATION without a header block: {head:?}");
                };
                block.extend_from_slice(payload);
                if head.has(flag::END_HEADERS) {
                    self.out_block_end(stream, &block);
                } else {
                    self.out_block = Some((stream, block));
                }
            }
            kind::DATA => self.out_data(head, payload),
            kind::PUSH_PROMISE => panic!("a client cannot push (§8.4)"),
            other => panic!("a frame of type {other:#x}, which this client never sends"),
        }
    }

    fn out_settings(&mut self, head: &Head, payload: &[u8]) {
        assert_eq!(head.stream, 0, "SETTINGS on a stream");
        if head.has(flag::ACK) {
            assert!(payload.is_empty(), "a SETTINGS ACK with a payload (§6.5)");
            self.settings_acked += 1;
            assert!(
                self.settings_acked <= self.settings_received,
                "more SETTINGS ACKs than SETTINGS received"
            );
            return;
        }
        assert!(
            payload.len().is_multiple_of(6),
            "SETTINGS of {} bytes",
            payload.len()
        );
        let mut ours = self.ours.unwrap_or(Ours {
            enable_push: 1,
            initial_window: WINDOW_DEFAULT,
            header_list_bytes_max: None,
            frame_bytes_max: FRAME_BYTES_DEFAULT,
            table_bytes: TABLE_BYTES_DEFAULT,
        });
        for pair in payload.chunks_exact(6) {
            let value = u32_at(pair, 2);
            match u16::from_be_bytes([pair[0], pair[1]]) {
                0x1 => ours.table_bytes = value,
                0x2 => {
                    assert!(value <= 1, "ENABLE_PUSH {value}");
                    ours.enable_push = value;
                }
                0x4 => {
                    assert!(
                        i64::from(value) <= WINDOW_MAX,
                        "INITIAL_WINDOW_SIZE {value}"
                    );
                    ours.initial_window = i64::from(value);
                }
                0x5 => {
                    assert!(
                        (FRAME_BYTES_DEFAULT..=FRAME_BYTES_LIMIT).contains(&value),
                        "MAX_FRAME_SIZE {value}"
                    );
                    ours.frame_bytes_max = value;
                }
                0x6 => ours.header_list_bytes_max = Some(value),
                _ => {}
            }
        }
        assert!(self.ours.is_none(), "a second SETTINGS from the client");
        if ours.table_bytes != TABLE_BYTES_DEFAULT {
            self.hpack = hpack::Decoder::new(ours.table_bytes as usize);
        }
        self.ours = Some(ours);
    }

    fn out_window_update(&mut self, head: &Head, payload: &[u8]) {
        assert_eq!(payload.len(), 4, "WINDOW_UPDATE of {} bytes", payload.len());
        let raw = u32_at(payload, 0);
        assert!(
            raw & 0x8000_0000 == 0,
            "WINDOW_UPDATE with the reserved bit"
        );
        let increment = i64::from(raw);
        assert!(increment > 0, "a WINDOW_UPDATE of 0 (§6.9): {head:?}");
        if head.stream == 0 {
            self.conn_given += increment;
            assert!(
                WINDOW_DEFAULT + self.conn_given - self.conn_received <= WINDOW_MAX,
                "the instance's connection window past 2^31-1 (§6.9.1)"
            );
            return;
        }
        let initial = self.ours.map_or(WINDOW_DEFAULT, |o| o.initial_window);
        let s = self.stream_out(head);
        assert!(
            s.active(),
            "WINDOW_UPDATE on a closed stream (§5.1): {head:?}"
        );
        s.given += increment;
        assert!(
            initial + s.given - s.received <= WINDOW_MAX,
            "the instance's window on stream {} past 2^31-1 (§6.9.1)",
            head.stream
        );
    }

    /// A stream the client opened, for a frame on it.
    fn stream_out(&mut self, head: &Head) -> &mut Stream {
        let stream = head.stream;
        assert!(!self.idle(stream), "{head:?} on an idle stream (§5.1)");
        self.streams
            .get_mut(&stream)
            .unwrap_or_else(|| panic!("{head:?} on a stream never opened"))
    }

    fn out_rst_stream(&mut self, head: &Head, payload: &[u8]) {
        assert_eq!(payload.len(), 4, "RST_STREAM of {} bytes", payload.len());
        let code = u32_at(payload, 0);
        let stream = head.stream;
        let s = self.stream_out(head);
        assert!(!s.rst_sent, "a second RST_STREAM on stream {stream}");
        // §5.4.2: never a RST_STREAM in answer to one.
        assert!(
            !s.rst_received,
            "RST_STREAM on stream {stream}, which the instance reset"
        );
        s.rst_sent = true;
        match self.owed_resets.remove(&stream) {
            Some(Some(owed)) => assert_eq!(code, owed.0, "RST_STREAM's code on stream {stream}"),
            Some(None) => {}
            None => {
                let call = self.call_on(stream);
                assert!(
                    call.is_none_or(|c| self.calls[c].expect != Expect::Pending),
                    "stream {stream} reset ({code:#x}) while its call is in flight and due \
                     nothing"
                );
            }
        }
    }

    fn out_headers(&mut self, head: &Head, payload: &[u8]) {
        let stream = head.stream;
        assert!(
            stream % 2 == 1,
            "HEADERS on stream {stream}, not a client stream (§5.1.1)"
        );
        assert!(
            !self.streams.contains_key(&stream),
            "a second HEADERS on stream {stream}: a call is one header block"
        );
        // §5.1.1: new streams in increasing order.
        assert!(
            stream > self.highest,
            "stream {stream} opened after {}",
            self.highest
        );
        assert!(
            self.goaway.is_none(),
            "stream {stream} opened after GOAWAY (§6.8)"
        );
        let active = self.active_count();
        assert!(
            active < self.window.streams_max as usize,
            "stream {stream} opened with {active} active; MAX_CONCURRENT_STREAMS is {} (§5.1.2)",
            self.window.streams_max
        );
        self.highest = stream;
        let s = self.streams.entry(stream).or_default();
        s.end_sent = head.has(flag::END_STREAM);
        let mut fragment = payload;
        if head.has(flag::PADDED) {
            let pad = usize::from(fragment[0]);
            fragment = &fragment[1..fragment.len() - pad];
        }
        if head.has(flag::PRIORITY) {
            fragment = &fragment[5..];
        }
        if head.has(flag::END_HEADERS) {
            self.out_block_end(stream, fragment);
        } else {
            self.out_block = Some((stream, fragment.to_vec()));
        }
    }

    /// A whole header block of the client's: table size updates the instance's settings
    /// call for (RFC 7541 §4.2, §6.3), then exactly one waiting call's block.
    fn out_block_end(&mut self, stream: u32, block: &[u8]) {
        let mut rest = block;
        let mut updates = Vec::new();
        while rest.first().is_some_and(|b| b & 0xe0 == 0x20) {
            let size = hpack::read_integer(&mut rest, 5)
                .unwrap_or_else(|e| panic!("a bad table size update: {e}"));
            updates.push(size);
        }
        for &size in &updates {
            assert!(
                size <= self.window.table_bytes as usize,
                "a table size update to {size}; the instance allows {} (RFC 7541 §6.3)",
                self.window.table_bytes
            );
        }
        let smallest = updates.iter().min().copied();
        if let Some((owed, since)) = self.owed_update {
            if since < self.batch {
                assert!(
                    smallest.is_some_and(|s| s <= owed as usize),
                    "the instance lowered HEADER_TABLE_SIZE to {owed}, and the next header \
                     block does not say so (RFC 7541 §4.2)"
                );
            }
            if smallest.is_some_and(|s| s <= owed as usize) {
                self.owed_update = None;
            }
        }
        if let Some(&last) = updates.last() {
            self.encoder_table_bytes = last as u32;
        }
        let call = self
            .calls
            .iter()
            .position(|c| c.block == rest && c.stream.is_none() && !c.released);
        let Some(c) = call else {
            panic!(
                "stream {stream} carries a header block of no waiting call: {} bytes, {:02x?}..",
                rest.len(),
                &rest[..rest.len().min(48)]
            );
        };
        let call = &mut self.calls[c];
        call.stream = Some(stream);
        let s = self.streams.entry(stream).or_default();
        s.call = Some(c);
        s.headers_done = true;
        if s.end_sent {
            assert!(
                call.message.is_empty(),
                "END_STREAM on the HEADERS of call {c}"
            );
        }
    }

    fn out_data(&mut self, head: &Head, payload: &[u8]) {
        let stream = head.stream;
        let initial = self.window.initial_window;
        let conn_room = self.conn_credit - self.conn_sent;
        let s = self.stream_out(head);
        assert!(s.headers_done, "DATA on stream {stream} before its headers");
        assert!(!s.end_sent, "DATA on stream {stream} after END_STREAM");
        assert!(!s.rst_sent, "DATA on stream {stream} after its reset");
        assert!(
            !s.rst_received,
            "DATA on stream {stream}, which the instance reset"
        );
        let len = i64::from(head.len);
        // §6.9: within both windows, the stream's counted from the initial window in force.
        assert!(
            s.data_sent + len <= initial + s.credit,
            "DATA past stream {stream}'s window: {} sent, {len} more, window {} + {}",
            s.data_sent,
            initial,
            s.credit
        );
        assert!(
            len <= conn_room,
            "DATA past the connection's window: {len} with {conn_room} left"
        );
        s.data_sent += len;
        s.end_sent = head.has(flag::END_STREAM);
        let end = s.end_sent;
        let c = s
            .call
            .unwrap_or_else(|| panic!("DATA on stream {stream} with no call"));
        self.conn_sent += len;
        let mut data = payload;
        if head.has(flag::PADDED) {
            let pad = usize::from(data[0]);
            data = &data[1..data.len() - pad];
        }
        let call = &mut self.calls[c];
        let expected = call.message.get(call.sent..call.sent + data.len());
        assert!(
            expected == Some(data),
            "DATA on stream {stream} is not the next part of call {c}'s message"
        );
        call.sent += data.len();
        if end {
            assert_eq!(
                call.sent,
                call.message.len(),
                "END_STREAM before the whole message"
            );
        }
    }
}

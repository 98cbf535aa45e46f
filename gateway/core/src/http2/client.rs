//! The client side of one HTTP/2 connection, for unary gRPC calls, as a state machine with no
//! I/O: the caller hands it the bytes read ([`Connection::receive`]), writes out what it queues
//! ([`Connection::take_output`]), and opens, polls and cancels calls.
//!
//! A call is one stream: its HEADERS (the header block the caller encoded) and its message
//! as DATA, then an answer of HEADERS, DATA and trailers, of which only what a gRPC client
//! reads is kept: the HTTP status, `grpc-status`, `grpc-message` and the message's bytes.
//! Everything an instance sends is checked against RFC 9113 and bounded: the header list, the
//! message, the frames and the control frames it makes this side answer.

use std::collections::{BTreeMap, VecDeque};
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};

use super::frame::{self, Reason, flag, kind, setting};
use super::hpack;

/// A payload of at least this many bytes is queued as its own buffer rather than copied
/// behind the frames before it.
const COPY_BYTES_MAX: usize = 1024;

/// Control frames (PING and SETTINGS acknowledgements) the instance may make this side queue
/// before the writer takes them: past it the instance is flooding, and the connection ends.
const CONTROL_QUEUED_MAX: usize = 1024;

/// The header table this side allows the instance's encoder (`SETTINGS_HEADER_TABLE_SIZE`,
/// the protocol's default).
const HEADER_TABLE_BYTES: usize = 4096;

/// This side's settings and bounds.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Each stream's receive window (`SETTINGS_INITIAL_WINDOW_SIZE`).
    pub stream_window_bytes: u32,
    /// The connection's receive window.
    pub connection_window_bytes: u32,
    /// The most bytes of header fields an answer may carry (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub header_list_bytes_max: u32,
    /// The most calls open or waiting for a stream on the connection.
    pub calls_max: usize,
}

impl Config {
    /// Whether the settings are ones the protocol allows and the connection can use: windows
    /// of at most 2^31-1 (RFC 9113 §6.9.1), a header list of at least one field's overhead,
    /// and room for at least one call.
    pub const fn is_valid(&self) -> bool {
        self.stream_window_bytes as i64 <= frame::WINDOW_MAX
            && self.connection_window_bytes as i64 <= frame::WINDOW_MAX
            && self.header_list_bytes_max >= 32
            && self.calls_max >= 1
    }
}

/// What one call accepts.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// The largest answer message, without gRPC's five-byte prefix.
    pub message_bytes_max: usize,
}

/// A call on the connection, as [`Connection::open`] returned it: its slot, and its serial
/// number, so that a slot reused by a later call is never taken for this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    slot: usize,
    serial: u64,
}

impl Call {
    /// The call's place on the connection: below the most calls held at once, and reused
    /// once the call is done (a caller's table of its calls can be indexed by it).
    pub fn index(&self) -> usize {
        self.slot
    }
}

/// Why a call could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The connection takes no new stream: it ended, the instance sent GOAWAY, or its stream
    /// identifiers ran out. Nothing was sent; another connection may take the call.
    #[error("the connection takes no new stream: {0}")]
    Closed(String),
    /// As many calls as the connection allows are open or waiting.
    #[error("{0} calls are open or waiting on the connection")]
    Full(usize),
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The instance did not process the request (REFUSED_STREAM before any response header
    /// block, or a GOAWAY that left the stream out, or the connection ended before its
    /// HEADERS were handed to the writer by [`Connection::take_output`]; but when this side
    /// ends the connection for an error in the instance's bytes, a call with a stream goes
    /// out before the GOAWAY and fails as [`CallError::Transport`]).
    #[error("not processed: {0}")]
    Refused(String),
    /// The connection failed or the stream was reset once the request may have been
    /// processed, or the answer broke the protocol.
    #[error("{0}")]
    Transport(String),
    /// The answer's message is larger than the call accepts.
    #[error("the answer's message is larger than the call accepts")]
    TooLarge,
    /// The caller's time for the call ran out ([`Connection::expire`]); its stream, if it had
    /// one, was reset.
    #[error("the call's time ran out")]
    Expired,
}

/// The gRPC fields of a header block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcFields {
    /// `grpc-status`: its number, or the value when it is not one.
    pub status: Option<Result<i32, Vec<u8>>>,
    /// `grpc-message`, as sent (percent-encoded).
    pub message: Option<Vec<u8>>,
}

/// A call's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status of the answer's headers.
    pub status: u16,
    /// The gRPC fields of the answer's headers (a trailers-only answer carries its status
    /// there).
    pub head: GrpcFields,
    /// The gRPC fields of the trailers, when the answer had trailers.
    pub trailers: Option<GrpcFields>,
    /// The bytes of the answer's DATA frames: gRPC's prefix and the message.
    pub body: Bytes,
}

/// Where a stream's answer stands.
#[derive(Debug)]
enum Recv {
    /// No final header block yet (informational ones are skipped).
    Head,
    /// The headers came; DATA and then the trailers follow.
    Body,
}

#[derive(Debug)]
struct Stream {
    /// The call's serial number on the connection.
    serial: u64,
    /// The stream's identifier; zero while the call waits for a stream.
    id: u32,
    limits: CallLimits,
    recv: Recv,
    status: u16,
    head: GrpcFields,
    body: Collected,
    /// Received and not yet given back as window.
    recv_unacked: u32,
    /// The stream's send window less the instance's initial window (so that a new initial
    /// window moves every stream's window at once), and what it has still to send.
    send_adjust: i64,
    pending: Bytes,
    /// Blocked on its own window (not the connection's): a WINDOW_UPDATE for it, or a larger
    /// initial window, sends it on.
    stalled: bool,
    /// The header block of a call that waits for a stream.
    block: Bytes,
    outcome: Option<Result<Answer, CallError>>,
    waker: Option<Waker>,
}

/// The instance's settings, as it last sent them.
#[derive(Debug, Clone, Copy)]
struct Peer {
    streams_max: u32,
    initial_window: u32,
    frame_bytes_max: u32,
}

/// A header block being received over HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Continuation {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

/// A connection error: the connection ends, and every call on it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError {
    pub reason: Reason,
    pub detail: String,
}

impl std::fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.name(), self.detail)
    }
}

fn conn_err(reason: Reason, detail: impl Into<String>) -> ConnectionError {
    ConnectionError {
        reason,
        detail: detail.into(),
    }
}

/// The connection.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    peer: Peer,
    decoder: hpack::Decoder,
    /// Queued output: frames are appended to `out`; a large payload is queued as its own
    /// buffer after `out`'s bytes so far.
    out: BytesMut,
    chunks: VecDeque<Bytes>,
    control_queued: usize,
    /// Calls, indexed by [`Call`]; freed slots are reused.
    slots: Vec<Option<Stream>>,
    free: Vec<usize>,
    calls: usize,
    /// Open streams by identifier.
    open: BTreeMap<u32, usize>,
    /// Calls waiting for a stream (by slot and serial; an entry whose call has gone is
    /// skipped), and streams waiting for the connection's window (by slot and stream).
    waiting: VecDeque<(usize, u64)>,
    blocked: VecDeque<(usize, u32)>,
    /// Streams blocked on their own window.
    stalled: usize,
    serial: u64,
    /// Whether the instance's first SETTINGS came (it must be its first frame).
    settled: bool,
    next_id: u32,
    /// Streams below this identifier had their HEADERS handed to the writer
    /// ([`Connection::take_output`]); the others never left this side.
    handed_below: u32,
    send_window: i64,
    recv_window: i64,
    recv_unacked: u32,
    continuation: Option<Continuation>,
    /// The instance's last GOAWAY: the last stream it processes.
    goaway: Option<u32>,
    failed: Option<String>,
    /// A dynamic table size update owed to the instance's decoder.
    table_update: bool,
    /// The payload of the keep-alive ping awaiting its acknowledgement, and the count of
    /// acknowledgements that matched one.
    ping: Option<[u8; 8]>,
    pongs: u64,
}

impl Connection {
    /// A connection whose preface, settings and window are queued as its first output.
    ///
    /// # Panics
    ///
    /// If `config` is not [valid](Config::is_valid): a programming error, since the
    /// gateway's settings are constants checked when it is compiled.
    pub fn new(config: Config) -> Self {
        assert!(
            config.is_valid(),
            "invalid HTTP/2 client settings: {config:?}"
        );
        let mut out = BytesMut::with_capacity(4096);
        out.extend_from_slice(frame::PREFACE);
        frame::write_settings(
            &mut out,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, config.stream_window_bytes),
                (setting::MAX_HEADER_LIST_SIZE, config.header_list_bytes_max),
            ],
        );
        let grow = config
            .connection_window_bytes
            .saturating_sub(frame::WINDOW_DEFAULT);
        if grow > 0 {
            frame::write_window_update(&mut out, 0, grow);
        }
        Self {
            config,
            peer: Peer {
                streams_max: u32::MAX,
                initial_window: frame::WINDOW_DEFAULT,
                frame_bytes_max: frame::FRAME_BYTES_DEFAULT,
            },
            decoder: hpack::Decoder::new(HEADER_TABLE_BYTES),
            out,
            chunks: VecDeque::new(),
            control_queued: 0,
            slots: Vec::new(),
            free: Vec::new(),
            calls: 0,
            open: BTreeMap::new(),
            waiting: VecDeque::new(),
            blocked: VecDeque::new(),
            stalled: 0,
            serial: 0,
            settled: false,
            next_id: 1,
            handed_below: 1,
            send_window: i64::from(frame::WINDOW_DEFAULT),
            recv_window: i64::from(frame::WINDOW_DEFAULT.max(config.connection_window_bytes)),
            recv_unacked: 0,
            continuation: None,
            goaway: None,
            failed: None,
            table_update: false,
            ping: None,
            pongs: 0,
        }
    }

    /// Opens a call: `block`'s parts joined are its header block (HPACK, by the caller),
    /// `message` its DATA. Queued now when a stream is free, else when one frees.
    pub fn open(
        &mut self,
        block: &[&[u8]],
        message: Bytes,
        limits: CallLimits,
    ) -> Result<Call, OpenError> {
        if let Some(why) = self.closed_for_new() {
            return Err(OpenError::Closed(why));
        }
        if self.calls >= self.config.calls_max {
            return Err(OpenError::Full(self.calls));
        }
        self.serial += 1;
        let serial = self.serial;
        let stream = Stream {
            serial,
            id: 0,
            limits,
            recv: Recv::Head,
            status: 0,
            head: GrpcFields::default(),
            body: Collected::Empty,
            recv_unacked: 0,
            send_adjust: 0,
            pending: message,
            stalled: false,
            block: Bytes::new(),
            outcome: None,
            waker: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(stream);
                slot
            }
            None => {
                self.slots.push(Some(stream));
                self.slots.len() - 1
            }
        };
        self.calls += 1;
        if self.open.len() < self.peer.streams_max as usize && self.waiting.is_empty() {
            self.start(slot, block);
        } else {
            let joined: Vec<u8> = block.concat();
            if let Some(s) = self.slots[slot].as_mut() {
                s.block = Bytes::from(joined);
            }
            self.waiting.push_back((slot, serial));
        }
        Ok(Call { slot, serial })
    }

    /// Why no new stream can be opened, if none can.
    fn closed_for_new(&self) -> Option<String> {
        if let Some(why) = &self.failed {
            return Some(why.clone());
        }
        if let Some(last) = self.goaway {
            return Some(format!("the instance sent GOAWAY (last stream {last})"));
        }
        if self.ids_used_up() {
            return Some("its stream identifiers are used up".to_owned());
        }
        None
    }

    fn ids_used_up(&self) -> bool {
        self.next_id > frame::STREAM_ID_MAX
    }

    /// Gives the call at `slot` a stream and queues its HEADERS and what the windows allow
    /// of its message.
    fn start(&mut self, slot: usize, block: &[&[u8]]) {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(2);
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        s.id = id;
        s.send_adjust = 0;
        let end_stream = s.pending.is_empty();
        self.open.insert(id, slot);
        let update: &[u8] = if std::mem::take(&mut self.table_update) {
            // A dynamic table size update to zero: this side never indexes.
            &[0x20]
        } else {
            &[]
        };
        let len: usize = update.len() + block.iter().map(|p| p.len()).sum::<usize>();
        let max = self.peer.frame_bytes_max as usize;
        if len <= max {
            let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
            frame::write_head(&mut self.out, len, kind::HEADERS, flags, id);
            self.out.extend_from_slice(update);
            for part in block {
                self.out.extend_from_slice(part);
            }
        } else {
            let mut joined = Vec::with_capacity(len);
            joined.extend_from_slice(update);
            for part in block {
                joined.extend_from_slice(part);
            }
            let mut first = true;
            let mut rest = &joined[..];
            while !rest.is_empty() || first {
                let (now, later) = rest.split_at(rest.len().min(max));
                let mut flags = if later.is_empty() {
                    flag::END_HEADERS
                } else {
                    0
                };
                let k = if first {
                    if end_stream {
                        flags |= flag::END_STREAM;
                    }
                    kind::HEADERS
                } else {
                    kind::CONTINUATION
                };
                frame::write_head(&mut self.out, now.len(), k, flags, id);
                self.out.extend_from_slice(now);
                rest = later;
                first = false;
            }
        }
        if !end_stream {
            self.send_data(slot);
        }
    }

    /// Queues as much of the stream's message as the windows allow. A stream that runs out
    /// of the connection's window waits in `blocked`; one that runs out of its own is
    /// `stalled` until its window grows.
    fn send_data(&mut self, slot: usize) {
        let max = self.peer.frame_bytes_max as usize;
        let initial = i64::from(self.peer.initial_window);
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        while !s.pending.is_empty() {
            let own = initial + s.send_adjust;
            if own <= 0 {
                if !s.stalled {
                    s.stalled = true;
                    self.stalled += 1;
                }
                return;
            }
            if self.send_window <= 0 {
                self.blocked.push_back((slot, s.id));
                return;
            }
            let n = s
                .pending
                .len()
                .min(max)
                .min(usize::try_from(own.min(self.send_window)).unwrap_or(usize::MAX));
            let chunk = s.pending.split_to(n);
            let flags = if s.pending.is_empty() {
                flag::END_STREAM
            } else {
                0
            };
            frame::write_head(&mut self.out, n, kind::DATA, flags, s.id);
            if n < COPY_BYTES_MAX {
                self.out.extend_from_slice(&chunk);
            } else {
                self.chunks.push_back(self.out.split().freeze());
                self.chunks.push_back(chunk);
            }
            s.send_adjust -= n as i64;
            self.send_window -= n as i64;
        }
    }

    /// Whether `slot` still holds the open stream `id` with something to send.
    fn sending(&self, slot: usize, id: u32) -> bool {
        self.slots
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.id == id && s.outcome.is_none() && !s.pending.is_empty())
    }

    /// Sends what the streams blocked on the connection's window may now send, in the order
    /// they blocked, while the window lasts. Entries of streams that have ended are skipped.
    fn unblock(&mut self) {
        while self.send_window > 0 {
            let Some((slot, id)) = self.blocked.pop_front() else {
                return;
            };
            if self.sending(slot, id) {
                self.send_data(slot);
            }
        }
    }

    /// A larger initial window: every stalled stream may send again (once per SETTINGS
    /// frame, whatever it holds).
    fn unstall(&mut self) {
        if self.stalled == 0 {
            return;
        }
        let slots: Vec<usize> = self.open.values().copied().collect();
        for slot in slots {
            if let Some(s) = self.slots[slot].as_mut()
                && s.stalled
            {
                s.stalled = false;
                self.stalled -= 1;
                self.send_data(slot);
            }
        }
    }

    /// Starts waiting calls while streams are free; when no stream can be opened any more,
    /// refuses them (they were never sent).
    fn start_waiting(&mut self) {
        while let Some(&(slot, serial)) = self.waiting.front() {
            let waits = self.slots[slot]
                .as_ref()
                .is_some_and(|s| s.serial == serial && s.id == 0 && s.outcome.is_none());
            if !waits {
                self.waiting.pop_front();
                continue;
            }
            if let Some(why) = self.closed_for_new() {
                self.waiting.pop_front();
                self.finish(
                    slot,
                    Err(CallError::Refused(format!(
                        "the connection takes no new stream: {why}"
                    ))),
                    None,
                );
                continue;
            }
            if self.open.len() >= self.peer.streams_max as usize {
                return;
            }
            self.waiting.pop_front();
            let block = self.slots[slot]
                .as_mut()
                .map(|s| std::mem::take(&mut s.block))
                .unwrap_or_default();
            self.start(slot, &[&block]);
        }
    }

    /// The call's stream, if `call` is still the call in its slot.
    fn stream_mut(&mut self, call: Call) -> Option<&mut Stream> {
        self.slots
            .get_mut(call.slot)
            .and_then(Option::as_mut)
            .filter(|s| s.serial == call.serial)
    }

    /// The call's answer once it has one; otherwise `waker` is woken when it does.
    pub fn poll_answer(&mut self, call: Call, waker: &Waker) -> Poll<Result<Answer, CallError>> {
        let Some(s) = self.stream_mut(call) else {
            return Poll::Ready(Err(CallError::Transport(
                "the call is no longer on the connection".to_owned(),
            )));
        };
        if let Some(outcome) = s.outcome.take() {
            self.free_slot(call.slot);
            return Poll::Ready(outcome);
        }
        match &s.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => s.waker = Some(waker.clone()),
        }
        Poll::Pending
    }

    /// Abandons a call: its stream, if open, is reset.
    pub fn cancel(&mut self, call: Call) {
        let Some(s) = self.stream_mut(call) else {
            return;
        };
        if s.outcome.is_none() && s.id != 0 {
            self.close_stream(call.slot, Some(Reason::CANCEL));
        }
        self.free_slot(call.slot);
    }

    /// Ends a call whose time ran out: its answer is [`CallError::Expired`], and its stream, if
    /// open, is reset (CANCEL), which frees the stream for a waiting call. Nothing when the
    /// call already has its outcome or is gone.
    pub fn expire(&mut self, call: Call) {
        let Some(s) = self.stream_mut(call) else {
            return;
        };
        if s.outcome.is_some() {
            return;
        }
        let reset = (s.id != 0).then_some(Reason::CANCEL);
        self.finish(call.slot, Err(CallError::Expired), reset);
    }

    /// Frees a call's slot. Its entries in `waiting` or `blocked`, if any, are skipped when
    /// they come up (the serial or stream no longer matches).
    fn free_slot(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::take) {
            if s.stalled {
                self.stalled -= 1;
            }
            self.calls -= 1;
            self.free.push(slot);
        }
    }

    /// Takes the stream at `slot` off the open ones, resetting it with `reset`; frees its
    /// place for a waiting call.
    fn close_stream(&mut self, slot: usize, reset: Option<Reason>) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        s.pending = Bytes::new();
        if std::mem::take(&mut s.stalled) {
            self.stalled -= 1;
        }
        let id = s.id;
        if id != 0 && self.open.remove(&id).is_some() {
            if let Some(reason) = reset {
                frame::write_rst_stream(&mut self.out, id, reason);
            }
            self.start_waiting();
        }
    }

    /// Ends the call at `slot` with `outcome` and wakes its caller.
    fn finish(&mut self, slot: usize, outcome: Result<Answer, CallError>, reset: Option<Reason>) {
        self.close_stream(slot, reset);
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            s.outcome = Some(outcome);
            if let Some(waker) = s.waker.take() {
                waker.wake();
            }
        }
    }

    /// Queues a keep-alive PING; only an acknowledgement carrying `payload` counts as its
    /// answer. Nothing is queued once the connection failed.
    pub fn ping(&mut self, payload: [u8; 8]) {
        if self.failed.is_some() {
            return;
        }
        self.ping = Some(payload);
        frame::write_ping(&mut self.out, payload, false);
    }

    /// How many keep-alive pings have been acknowledged.
    pub fn pongs(&self) -> u64 {
        self.pongs
    }

    /// Calls open or waiting.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Whether the connection has failed, or takes no new stream (GOAWAY, or its stream
    /// identifiers used up) and has none left open: its I/O may end.
    pub fn is_done(&self) -> bool {
        self.failed.is_some()
            || ((self.goaway.is_some() || self.ids_used_up()) && self.open.is_empty())
    }

    /// Whether new calls go elsewhere.
    pub fn takes_no_new_call(&self) -> bool {
        self.closed_for_new().is_some()
    }

    /// Whether output is queued.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || !self.chunks.is_empty()
    }

    /// Moves the queued output into `dst`, in order. The caller bounds what it holds
    /// unwritten by not reading while much is (the control frames one read can make this side
    /// queue are bounded here).
    pub fn take_output(&mut self, dst: &mut VecDeque<Bytes>) {
        self.handed_below = self.next_id;
        dst.append(&mut self.chunks);
        if !self.out.is_empty() {
            dst.push_back(self.out.split().freeze());
        }
        self.control_queued = 0;
    }

    /// The connection ended (the I/O failed or the instance closed it): every call fails.
    /// A call whose HEADERS were never handed to the writer (one opened while the end was
    /// still unread) is refused, and its queued frames are withdrawn, so that it may go
    /// elsewhere: the instance never sees it. The others fail with a transport error.
    pub fn fail(&mut self, why: &str) {
        if self.failed.is_some() {
            return;
        }
        self.withdraw_unhanded();
        self.end(why, self.handed_below);
    }

    /// Ends every call; those on a stream below `sent_below` with a transport error, the
    /// others refused.
    fn end(&mut self, why: &str, sent_below: u32) {
        self.failed = Some(why.to_owned());
        for slot in 0..self.slots.len() {
            let Some(s) = self.slots[slot].as_ref() else {
                continue;
            };
            if s.outcome.is_some() {
                continue;
            }
            let error = if s.id == 0 || s.id >= sent_below {
                CallError::Refused(format!(
                    "the connection ended before the call was sent: {why}"
                ))
            } else {
                CallError::Transport(format!("the connection ended: {why}"))
            };
            self.finish(slot, Err(error), None);
        }
        self.waiting.clear();
        self.blocked.clear();
        self.open.clear();
    }

    /// Removes from the queued output every frame of a stream not yet handed to the writer
    /// (the rest, in order, stays). Only on failure, and only when such a stream exists.
    fn withdraw_unhanded(&mut self) {
        if self.next_id <= self.handed_below {
            return;
        }
        let mut queued = BytesMut::with_capacity(
            self.out.len() + self.chunks.iter().map(Bytes::len).sum::<usize>(),
        );
        for chunk in self.chunks.drain(..) {
            queued.extend_from_slice(&chunk);
        }
        queued.extend_from_slice(&self.out);
        self.out.clear();
        // Only the first output starts with the preface; the rest is whole frames.
        if queued.starts_with(frame::PREFACE) {
            self.out
                .extend_from_slice(&queued.split_to(frame::PREFACE.len()));
        }
        while let Some(head) = frame::Head::read(&queued) {
            let frame = queued.split_to((frame::HEAD_BYTES + head.len as usize).min(queued.len()));
            if head.stream == 0 || head.stream < self.handed_below {
                self.out.extend_from_slice(&frame);
            }
        }
    }
}

mod answer;
mod recv;
#[cfg(test)]
mod tests;

use answer::Collected;

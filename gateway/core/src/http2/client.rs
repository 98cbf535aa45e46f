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

/// What one call accepts.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// The largest answer message, without gRPC's five-byte prefix.
    pub message_bytes_max: usize,
}

/// A call on the connection, as [`Connection::open`] returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call(usize);

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
    /// The instance did not process the request (REFUSED_STREAM, or a GOAWAY that left the
    /// stream out, or the connection ended before it was sent).
    #[error("not processed: {0}")]
    Refused(String),
    /// The connection failed or the stream was reset once the request may have been
    /// processed, or the answer broke the protocol.
    #[error("{0}")]
    Transport(String),
    /// The answer's message is larger than the call accepts.
    #[error("the answer's message is larger than the call accepts")]
    TooLarge,
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
    /// The stream's identifier; zero while the call waits for a stream.
    id: u32,
    limits: CallLimits,
    recv: Recv,
    status: u16,
    head: GrpcFields,
    body: Collected,
    /// Received and not yet given back as window.
    recv_unacked: u32,
    /// What the stream may still send, and what it has still to send.
    send_window: i64,
    pending: Bytes,
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
    /// Calls waiting for a stream, and streams waiting for window to send.
    waiting: VecDeque<usize>,
    blocked: VecDeque<usize>,
    next_id: u32,
    send_window: i64,
    recv_window: i64,
    recv_unacked: u32,
    continuation: Option<Continuation>,
    /// The instance's last GOAWAY: the last stream it processes.
    goaway: Option<u32>,
    failed: Option<String>,
    /// A dynamic table size update owed to the instance's decoder.
    table_update: bool,
    pongs: u64,
}

impl Connection {
    /// A connection whose preface, settings and window are queued.
    pub fn new(config: Config) -> Self {
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
            next_id: 1,
            send_window: i64::from(frame::WINDOW_DEFAULT),
            recv_window: i64::from(frame::WINDOW_DEFAULT.max(config.connection_window_bytes)),
            recv_unacked: 0,
            continuation: None,
            goaway: None,
            failed: None,
            table_update: false,
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
        let stream = Stream {
            id: 0,
            limits,
            recv: Recv::Head,
            status: 0,
            head: GrpcFields::default(),
            body: Collected::Empty,
            recv_unacked: 0,
            send_window: 0,
            pending: message,
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
            self.waiting.push_back(slot);
        }
        Ok(Call(slot))
    }

    /// Why no new stream can be opened, if none can.
    fn closed_for_new(&self) -> Option<String> {
        if let Some(why) = &self.failed {
            return Some(why.clone());
        }
        if let Some(last) = self.goaway {
            return Some(format!("the instance sent GOAWAY (last stream {last})"));
        }
        if self.next_id > frame::STREAM_ID_MAX {
            return Some("its stream identifiers are used up".to_owned());
        }
        None
    }

    /// Gives the call at `slot` a stream and queues its HEADERS and what the windows allow
    /// of its message.
    fn start(&mut self, slot: usize, block: &[&[u8]]) {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(2);
        let initial = i64::from(self.peer.initial_window);
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        s.id = id;
        s.send_window = initial;
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

    /// Queues as much of the stream's message as the windows allow; a stream with more to
    /// send waits in `blocked`. Returns whether all of it went.
    fn send_data(&mut self, slot: usize) -> bool {
        let max = self.peer.frame_bytes_max as usize;
        let Some(s) = self.slots[slot].as_mut() else {
            return true;
        };
        while !s.pending.is_empty() {
            let window = s.send_window.min(self.send_window);
            if window <= 0 {
                self.blocked.push_back(slot);
                return false;
            }
            let n = s
                .pending
                .len()
                .min(max)
                .min(usize::try_from(window).unwrap_or(usize::MAX));
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
            s.send_window -= n as i64;
            self.send_window -= n as i64;
        }
        true
    }

    /// Sends what the blocked streams may now send, in the order they blocked.
    fn unblock(&mut self) {
        for _ in 0..self.blocked.len() {
            let Some(slot) = self.blocked.pop_front() else {
                break;
            };
            if !self.send_data(slot) && self.send_window <= 0 {
                break;
            }
        }
    }

    /// Starts waiting calls while streams are free.
    fn start_waiting(&mut self) {
        while self.open.len() < self.peer.streams_max as usize && self.closed_for_new().is_none() {
            let Some(slot) = self.waiting.pop_front() else {
                return;
            };
            let block = self.slots[slot]
                .as_mut()
                .map(|s| std::mem::take(&mut s.block))
                .unwrap_or_default();
            self.start(slot, &[&block]);
        }
    }

    /// The call's answer once it has one; otherwise `waker` is woken when it does.
    pub fn poll_answer(&mut self, call: Call, waker: &Waker) -> Poll<Result<Answer, CallError>> {
        let Some(s) = self.slots.get_mut(call.0).and_then(Option::as_mut) else {
            return Poll::Ready(Err(CallError::Transport(
                "the call is no longer on the connection".to_owned(),
            )));
        };
        if let Some(outcome) = s.outcome.take() {
            self.free_slot(call.0);
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
        let Some(s) = self.slots.get(call.0).and_then(Option::as_ref) else {
            return;
        };
        if s.outcome.is_none() && s.id != 0 {
            let id = s.id;
            self.close_stream(call.0, Some(Reason::CANCEL));
            debug_assert!(!self.open.contains_key(&id));
        }
        self.free_slot(call.0);
    }

    fn free_slot(&mut self, slot: usize) {
        if self.slots.get_mut(slot).and_then(Option::take).is_some() {
            self.calls -= 1;
            self.free.push(slot);
            self.waiting.retain(|w| *w != slot);
        }
    }

    /// Takes the stream at `slot` off the open ones, resetting it with `reset`; frees its
    /// place for a waiting call.
    fn close_stream(&mut self, slot: usize, reset: Option<Reason>) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        s.pending = Bytes::new();
        let id = s.id;
        if self.open.remove(&id).is_some() {
            if let Some(reason) = reset {
                frame::write_rst_stream(&mut self.out, id, reason);
            }
            self.blocked.retain(|b| *b != slot);
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

    /// Queues a keep-alive PING.
    pub fn ping(&mut self, payload: [u8; 8]) {
        frame::write_ping(&mut self.out, payload, false);
    }

    /// How many PING acknowledgements have arrived.
    pub fn pongs(&self) -> u64 {
        self.pongs
    }

    /// Calls open or waiting.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Whether the connection has failed or been told to go away with nothing left open:
    /// its I/O may end.
    pub fn is_done(&self) -> bool {
        self.failed.is_some() || (self.goaway.is_some() && self.open.is_empty())
    }

    /// Whether new calls go elsewhere.
    pub fn takes_no_new_call(&self) -> bool {
        self.closed_for_new().is_some()
    }

    /// Whether output is queued.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || !self.chunks.is_empty()
    }

    /// Moves the queued output into `dst`, in order.
    pub fn take_output(&mut self, dst: &mut VecDeque<Bytes>) {
        dst.append(&mut self.chunks);
        if !self.out.is_empty() {
            dst.push_back(self.out.split().freeze());
        }
        self.control_queued = 0;
    }

    /// The connection ended (the I/O failed or the instance closed it): every call fails.
    pub fn fail(&mut self, why: &str) {
        if self.failed.is_some() {
            return;
        }
        self.failed = Some(why.to_owned());
        for slot in 0..self.slots.len() {
            let Some(s) = self.slots[slot].as_ref() else {
                continue;
            };
            if s.outcome.is_some() {
                continue;
            }
            let error = if s.id == 0 {
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
}

mod answer;
mod recv;
#[cfg(test)]
mod tests;

use answer::Collected;

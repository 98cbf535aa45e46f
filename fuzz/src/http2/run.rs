//! Runs a script three ways and compares them (property 5): the exact run feeds the client
//! one frame at a time and checks each step against the oracle; the whole run feeds each
//! piece at once; the cut run cuts each piece again, anywhere.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, Wake, Waker};

use bytes::{Bytes, BytesMut};
use switchyard_core::http2::client::{
    Answer, Call, CallError, CallLimits, Connection, ConnectionError, OpenError,
};

use super::input;
use super::model::{
    CallModel, Cause, ENHANCE_YOUR_CALM, Ended, Expect, FRAME_BYTES_DEFAULT, HEAD_BYTES, Head,
    Model, Progress, flag, kind,
};
use super::{CallSpec, Feed, Op, Script};

/// The client's bound on control frames to answer between two `take_output`s, from the doc
/// comment on its `CONTROL_QUEUED_MAX`: "past it the instance is flooding, and the
/// connection ends".
const CONTROL_QUEUED_MAX: usize = 1024;

/// A waker that counts its wakes, one per call.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Exact,
    Whole,
    Cut,
}

/// What a run did, to compare runs by.
#[derive(Debug, Default, PartialEq, Eq)]
struct Trace {
    output: Vec<u8>,
    /// The output's length before the first operation.
    start: usize,
    /// Per operation: the output's length after it, and what it returned.
    ops: Vec<(usize, String)>,
    /// Per call: how it ended for the harness.
    outcomes: Vec<String>,
}

struct Run<'s> {
    script: &'s Script,
    mode: Mode,
    conn: Connection,
    /// The client's read buffer.
    input: BytesMut,
    /// The exact run's bytes not yet split into frames.
    unparsed: Vec<u8>,
    handles: Vec<Option<Call>>,
    wakes: Vec<Arc<Wakes>>,
    failed: bool,
    failure_checked: bool,
    cut_turn: usize,
    /// The bytes of every feed: built by the exact run, replayed by the others.
    feeds: Vec<Vec<u8>>,
    feed_no: usize,
    model: Option<Model>,
    trace: Trace,
    /// The first operation where the whole run must hit the client's control-frame bound.
    flood_at: Option<usize>,
}

pub(super) fn check(script: &Script) {
    let mut exact = Run::new(script, Mode::Exact, Vec::new());
    exact.execute();
    let feeds = std::mem::take(&mut exact.feeds);
    let mut whole = Run::new(script, Mode::Whole, feeds.clone());
    whole.execute();
    let mut cut = Run::new(script, Mode::Cut, feeds);
    cut.execute();
    if let Some(d) = difference(&whole.trace, &cut.trace, usize::MAX) {
        panic!("cutting the pieces changed the outcome: {d}");
    }
    let upto = exact.flood_at.unwrap_or(usize::MAX);
    if let Some(d) = difference(&exact.trace, &whole.trace, upto) {
        panic!("feeding frame by frame and piece by piece differ: {d}");
    }
    if let Some(op) = exact.flood_at {
        let (end, result) = &whole.trace.ops[op];
        assert!(
            result.contains(&format!("{ENHANCE_YOUR_CALM:?}")),
            "operation {op} makes the client queue more than {CONTROL_QUEUED_MAX} control \
             frames, and receive returned {result}"
        );
        // The bound, then the acknowledgement of the frame that passed it at most.
        let start = op
            .checked_sub(1)
            .map_or(whole.trace.start, |i| whole.trace.ops[i].0);
        let acks = acknowledgements(&whole.trace.output[start..*end]);
        assert!(
            (CONTROL_QUEUED_MAX..=CONTROL_QUEUED_MAX + 1).contains(&acks),
            "{acks} acknowledgements queued before the flood ended the connection"
        );
    }
}

/// The PING and SETTINGS acknowledgements in `bytes`.
fn acknowledgements(mut bytes: &[u8]) -> usize {
    let mut n = 0;
    while let Some(head) = Head::read(bytes) {
        if matches!(head.kind, kind::PING | kind::SETTINGS) && head.has(flag::ACK) {
            n += 1;
        }
        bytes = &bytes[(HEAD_BYTES + head.len as usize).min(bytes.len())..];
    }
    n
}

/// The first difference between two traces, comparing operations before `upto` only when
/// `upto` is set (a flood ends the whole run early).
fn difference(a: &Trace, b: &Trace, upto: usize) -> Option<String> {
    let ops = a.ops.len().min(upto);
    if a.start != b.start {
        return Some(format!("the preface differs: {} and {}", a.start, b.start));
    }
    for i in 0..ops {
        if a.ops.get(i) != b.ops.get(i) {
            return Some(format!(
                "operation {i}: {:?} against {:?}",
                a.ops.get(i),
                b.ops.get(i)
            ));
        }
    }
    let end = if upto == usize::MAX {
        a.output.len().max(b.output.len())
    } else {
        ops.checked_sub(1).map_or(a.start, |i| a.ops[i].0)
    };
    if a.output.get(..end) != b.output.get(..end) {
        let at = a
            .output
            .iter()
            .zip(&b.output)
            .take_while(|(x, y)| x == y)
            .count();
        return Some(format!("the output differs from byte {at}"));
    }
    if upto == usize::MAX && a.outcomes != b.outcomes {
        return Some(format!(
            "outcomes {:?} against {:?}",
            a.outcomes, b.outcomes
        ));
    }
    None
}

impl<'s> Run<'s> {
    fn new(script: &'s Script, mode: Mode, feeds: Vec<Vec<u8>>) -> Self {
        let model = (mode == Mode::Exact).then(|| Model::new(&script.config));
        let mut run = Self {
            script,
            mode,
            conn: Connection::new(script.config),
            input: BytesMut::new(),
            unparsed: Vec::new(),
            handles: Vec::new(),
            wakes: Vec::new(),
            failed: false,
            failure_checked: false,
            cut_turn: 0,
            feeds,
            feed_no: 0,
            model,
            trace: Trace::default(),
            flood_at: None,
        };
        run.take(Cause::Start);
        run.trace.start = run.trace.output.len();
        run
    }

    fn execute(&mut self) {
        for i in 0..self.script.ops.len() {
            self.step(i);
        }
        self.finish();
    }

    fn step(&mut self, i: usize) {
        let record = self.op(i);
        self.after_op();
        self.trace.ops.push((self.trace.output.len(), record));
    }

    fn live(&self) -> usize {
        self.handles.iter().flatten().count()
    }

    fn op(&mut self, i: usize) -> String {
        match &self.script.ops[i] {
            Op::Open(spec) => self.open(spec),
            Op::Feed(feed) => {
                let bytes = if self.mode == Mode::Exact {
                    let model = self.model.as_ref().expect("the exact run has a model");
                    let bytes = match feed {
                        Feed::Bytes(b) => b.clone(),
                        Feed::Frames(frames) => input::build(frames, model),
                    };
                    self.feeds.push(bytes.clone());
                    bytes
                } else {
                    self.feeds[self.feed_no].clone()
                };
                self.feed_no += 1;
                let error = self.feed(&bytes);
                if self.mode != Mode::Exact {
                    self.take(Cause::Frame(None));
                }
                if let Some(m) = &self.model
                    && m.control_in_feed > CONTROL_QUEUED_MAX
                {
                    self.flood_at.get_or_insert(i);
                }
                format!("{error:?}")
            }
            Op::Poll(n) => self.poll(*n),
            Op::Cancel(n) => self.cancel(*n),
            Op::Ping(payload) => {
                // The node pings only while the connection is up; `ping` queues a PING
                // whatever the state (reported).
                if self.failed {
                    return "not pinged".into();
                }
                self.conn.ping(*payload);
                if let Some(m) = &mut self.model {
                    m.own_ping = Some(*payload);
                }
                self.take(Cause::Ping(*payload));
                "pinged".into()
            }
            Op::Fail => {
                self.conn.fail("the harness ended the connection");
                self.failed = true;
                if let Some(m) = &mut self.model {
                    m.end(Ended::Failed);
                }
                self.take(Cause::Fail);
                "failed".into()
            }
        }
    }

    fn open(&mut self, spec: &CallSpec) -> String {
        let number = self.handles.len();
        let [fixed, own] = spec.block(number);
        let message = spec.message(number);
        let live = self.live();
        let result = self
            .conn
            .open(&[&fixed, &own], message.clone(), spec.limits);
        if let Some(m) = &mut self.model {
            // The doc of `OpenError`: `Closed` once the connection ended or the instance sent
            // GOAWAY, `Full` at `calls_max` calls open or waiting.
            let expected = if m.ended.is_some() || m.goaway.is_some() {
                "Closed"
            } else if live >= m.calls_max {
                "Full"
            } else {
                "Ok"
            };
            let got = match &result {
                Ok(_) => "Ok",
                Err(OpenError::Closed(_)) => "Closed",
                Err(OpenError::Full(n)) => {
                    assert_eq!(*n, live, "Full counts the calls held");
                    "Full"
                }
            };
            assert_eq!(got, expected, "open returned {result:?}");
            let expect = if result.is_ok() {
                Expect::Pending
            } else {
                Expect::Gone
            };
            m.calls.push(CallModel {
                message,
                limits: spec.limits,
                block: [fixed, own].concat(),
                stream: None,
                released: result.is_err(),
                cancelled_unsent: false,
                sent: 0,
                wakes_at_poll: None,
                expect,
                progress: Progress::default(),
            });
        }
        self.handles.push(result.as_ref().ok().copied());
        self.wakes.push(Arc::default());
        self.trace.outcomes.push("held".into());
        self.take(Cause::Open);
        format!("{result:?}")
    }

    fn poll(&mut self, n: usize) -> String {
        if self.handles.is_empty() {
            return "no call".into();
        }
        let n = n % self.handles.len();
        let Some(call) = self.handles[n] else {
            return "released".into();
        };
        let record = match self.conn.poll_answer(call, &self.waker(n)) {
            Poll::Pending => {
                let wakes = self.wakes[n].0.load(Ordering::Relaxed);
                if let Some(m) = &mut self.model {
                    m.polled(n, None);
                    m.calls[n].wakes_at_poll = Some(wakes);
                }
                "pending".into()
            }
            Poll::Ready(outcome) => self.ended(n, outcome),
        };
        self.take(Cause::Poll);
        record
    }

    fn waker(&self, n: usize) -> Waker {
        Waker::from(self.wakes[n].clone())
    }

    /// Records a call's outcome as `poll_answer` gave it.
    fn ended(&mut self, n: usize, outcome: Result<Answer, CallError>) -> String {
        if let Some(m) = &mut self.model {
            m.polled(n, Some(&outcome));
        }
        self.handles[n] = None;
        let record = format!("{outcome:?}");
        self.trace.outcomes[n] = record.clone();
        record
    }

    fn cancel(&mut self, n: usize) -> String {
        if self.handles.is_empty() {
            return "no call".into();
        }
        let n = n % self.handles.len();
        let Some(call) = self.handles[n].take() else {
            return "released".into();
        };
        if let Some(m) = &mut self.model {
            m.cancelled(n);
        }
        self.conn.cancel(call);
        self.trace.outcomes[n] = "cancelled".into();
        self.take(Cause::Cancel);
        "cancelled".into()
    }

    /// Property 3, after every operation.
    fn after_op(&mut self) {
        if self.failed && !self.failure_checked {
            self.failure_checked = true;
            for n in 0..self.handles.len() {
                let Some(call) = self.handles[n] else {
                    continue;
                };
                match self.conn.poll_answer(call, Waker::noop()) {
                    Poll::Pending => panic!("call {n} is pending after the connection ended"),
                    Poll::Ready(outcome) => {
                        self.ended(n, outcome);
                    }
                }
            }
            let none = CallLimits {
                message_bytes_max: 0,
            };
            let result = self.conn.open(&[], Bytes::new(), none);
            assert!(
                matches!(result, Err(OpenError::Closed(_))),
                "open after the connection ended: {result:?}"
            );
            assert!(
                self.conn.takes_no_new_call(),
                "takes a new call after it ended"
            );
            self.take(Cause::Poll);
        }
        assert_eq!(
            self.conn.calls(),
            self.live(),
            "calls() is not the number of calls the harness holds"
        );
        if let Some(m) = &self.model {
            m.bookkeeping(&self.conn);
            let wakes: Vec<usize> = self
                .wakes
                .iter()
                .map(|w| w.0.load(Ordering::Relaxed))
                .collect();
            m.check_wakes(&wakes);
        }
    }

    fn finish(&mut self) {
        for n in 0..self.handles.len() {
            let Some(call) = self.handles[n] else {
                continue;
            };
            match self.conn.poll_answer(call, Waker::noop()) {
                Poll::Ready(outcome) => {
                    self.ended(n, outcome);
                }
                Poll::Pending => {
                    if let Some(m) = &mut self.model {
                        m.polled(n, None);
                        m.cancelled(n);
                    }
                    self.conn.cancel(call);
                    self.handles[n] = None;
                    self.trace.outcomes[n] = "pending, then cancelled".into();
                    // Before the next cancel, so that the oracle sees which calls a freed
                    // stream started.
                    self.take(Cause::Cancel);
                }
            }
        }
        assert_eq!(
            self.conn.calls(),
            0,
            "calls() once every call was polled or cancelled"
        );
        if let Some(m) = &self.model {
            m.finish();
        }
    }

    /// Takes the queued output, checks `wants_write` agreed, and shows it to the oracle.
    fn take(&mut self, cause: Cause) {
        let wants = self.conn.wants_write();
        let mut queue = VecDeque::new();
        self.conn.take_output(&mut queue);
        let mut bytes = Vec::with_capacity(queue.iter().map(|b| b.len()).sum());
        for chunk in &queue {
            bytes.extend_from_slice(chunk);
        }
        assert_eq!(
            wants,
            !bytes.is_empty(),
            "wants_write() is {wants} with {} bytes queued",
            bytes.len()
        );
        if cause == Cause::Poll {
            assert!(bytes.is_empty(), "polling queued output");
        }
        self.trace.output.extend_from_slice(&bytes);
        if let Some(m) = &mut self.model {
            m.output(&bytes, cause);
        }
    }

    /// Feeds one piece; returns the first error `receive` gave.
    fn feed(&mut self, bytes: &[u8]) -> Option<ConnectionError> {
        match self.mode {
            Mode::Exact => self.feed_frames(bytes),
            Mode::Whole => {
                self.input.extend_from_slice(bytes);
                self.receive()
            }
            Mode::Cut => {
                let mut first = None;
                let mut rest = bytes;
                loop {
                    let len = self.script.cuts[self.cut_turn % self.script.cuts.len()];
                    self.cut_turn += 1;
                    let (piece, tail) = rest.split_at(len.min(rest.len()));
                    self.input.extend_from_slice(piece);
                    let error = self.receive();
                    if first.is_none() {
                        first = error;
                    }
                    rest = tail;
                    if rest.is_empty() {
                        return first;
                    }
                }
            }
        }
    }

    /// `receive` on what the client has, which must read every whole frame (property 1).
    fn receive(&mut self) -> Option<ConnectionError> {
        match self.conn.receive(&mut self.input) {
            Ok(()) => {
                if let Some(head) = Head::read(&self.input) {
                    assert!(
                        head.len <= FRAME_BYTES_DEFAULT
                            && self.input.len() < HEAD_BYTES + head.len as usize,
                        "receive left a whole frame unread: {head:?}"
                    );
                }
                None
            }
            Err(e) => {
                self.failed = true;
                Some(e)
            }
        }
    }

    /// The exact run: one frame at a time, each judged by the oracle before the client sees
    /// it, and the output taken after each.
    fn feed_frames(&mut self, bytes: &[u8]) -> Option<ConnectionError> {
        self.unparsed.extend_from_slice(bytes);
        if let Some(m) = &mut self.model {
            m.control_in_feed = 0;
        }
        let mut first: Option<ConnectionError> = None;
        let mut at = 0;
        while !self.failed {
            let Some(head) = Head::read(&self.unparsed[at..]) else {
                break;
            };
            // The client reads a frame's length from its head and refuses one too long at
            // once, before its payload arrives.
            let len = if head.len > FRAME_BYTES_DEFAULT {
                HEAD_BYTES
            } else {
                HEAD_BYTES + head.len as usize
            };
            if self.unparsed.len() - at < len {
                break;
            }
            let frame = &self.unparsed[at..at + len];
            at += len;
            let model = self.model.as_mut().expect("the exact run has a model");
            let verdict = model.peer_frame(&head, &frame[HEAD_BYTES..]);
            self.input.extend_from_slice(frame);
            let result = self.conn.receive(&mut self.input);
            verdict.check(&head, &result);
            let cause = match &result {
                Ok(()) => {
                    assert!(self.input.is_empty(), "a whole frame left unread: {head:?}");
                    Cause::Frame(None)
                }
                Err(e) => {
                    self.failed = true;
                    model.end(Ended::Error(e.reason));
                    first.get_or_insert(e.clone());
                    Cause::Frame(Some(e.reason))
                }
            };
            self.take(cause);
            if self.failed {
                self.unparsed.clear();
                return first;
            }
        }
        self.unparsed.drain(..at);
        if self.failed {
            // Whatever comes after the end is refused, as the other runs see it.
            self.input.extend(self.unparsed.drain(..));
            let Err(e) = self.conn.receive(&mut self.input) else {
                panic!("receive took bytes after the connection ended");
            };
            first.get_or_insert(e);
            self.take(Cause::Frame(None));
        }
        first
    }
}

/// Runs the exact run step by step for triage, and shows what each step did, up to the
/// first property that fails.
pub(super) fn describe(script: &Script) -> String {
    let mut out = String::new();
    let mut run = Run::new(script, Mode::Exact, Vec::new());
    let _ = writeln!(
        out,
        "start: {}",
        frames(&run.trace.output[24.min(run.trace.output.len())..])
    );
    for i in 0..script.ops.len() {
        let before = run.trace.output.len();
        let feeds = run.feeds.len();
        let aligned = run.unparsed.is_empty();
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.step(i)));
        let _ = writeln!(out, "op {i}: {:?}", script.ops[i]);
        if let Some(bytes) = run.feeds.get(feeds) {
            if aligned {
                let _ = writeln!(out, "  in:  {}", frames(bytes));
            } else {
                let _ = writeln!(out, "  in:  {} bytes, continuing a frame", bytes.len());
            }
        }
        match stepped {
            Ok(()) => {
                let (_, record) = run.trace.ops.last().cloned().unwrap_or_default();
                let _ = writeln!(out, "  =>   {record}");
                let _ = writeln!(out, "  out: {}", frames(&run.trace.output[before..]));
            }
            Err(_) => {
                let _ = writeln!(out, "  a property failed here (the message is above)");
                return out;
            }
        }
    }
    let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.finish()));
    let _ = writeln!(out, "outcomes: {:#?}", run.trace.outcomes);
    if end.is_err() {
        let _ = writeln!(out, "a property failed at the end (the message is above)");
    }
    out
}

/// A short list of the frames in `bytes`.
fn frames(mut bytes: &[u8]) -> String {
    let mut out = Vec::new();
    while let Some(head) = Head::read(bytes) {
        let end = (HEAD_BYTES + head.len as usize).min(bytes.len());
        let payload = &bytes[HEAD_BYTES..end];
        let shown: Vec<u8> = payload.iter().copied().take(12).collect();
        out.push(format!(
            "[type {:#x} flags {:#x} stream {} len {} {:02x?}{}]",
            head.kind,
            head.flags,
            head.stream,
            head.len,
            shown,
            if payload.len() > 12 { ".." } else { "" }
        ));
        bytes = &bytes[end..];
    }
    if !bytes.is_empty() {
        out.push(format!("+{} bytes", bytes.len()));
    }
    out.join(" ")
}

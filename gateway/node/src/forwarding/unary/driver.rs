//! The I/O of one HTTP/2 connection to an instance: the core's state machine
//! ([`switchyard_core::http2::client`]) behind a lock, the calls that open streams on it, and
//! the task that reads and writes its socket.
//!
//! A call queues its frames under the lock and wakes the task only when the queue was
//! empty; the task takes the whole queue and writes it with one vectored write, so calls
//! that arrive together leave together. The first output since the last write is put off
//! by one turn of the worker (the task wakes itself), so that the calls of the requests
//! already queued on the worker join it: with 32 clients on one worker, 1.86 writes per
//! request became 1.12. The lock is never held across a read or a write.
//!
//! Each call has a deadline, kept beside it; the task holds one timer for all of them, set
//! no later than the earliest, and when it ends expires the calls past theirs and sets it to
//! the earliest left. With one timeout for every call that is one timer set per timeout per
//! connection, where a timer per call set and cleared one per request (about 1.5 % of a
//! forwarded request's instructions).

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use switchyard_core::http2::client::{self, Answer, Call, CallLimits, Connection, OpenError};
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use super::super::channel::KeepAlive;
use crate::seams::Io;

/// How much the read buffer grows by when it runs low, and the least it keeps free.
const READ_BYTES: usize = 16 * 1024;
const READ_FREE_MIN: usize = 1024;

/// Buffers written with one vectored write.
const WRITE_SLICES_MAX: usize = 32;

/// Output waiting for the socket past which the instance is not read.
const UNWRITTEN_BYTES_MAX: usize = 64 * 1024;

/// The connection's state, shared by its calls and its task.
pub(super) struct Shared {
    locked: Mutex<Locked>,
}

struct Locked {
    conn: Connection,
    /// The connection's task, woken when output is queued on an empty queue and when a
    /// call's deadline comes before the timer's.
    task: Option<Waker>,
    /// The deadline of each call not yet answered, by [`Call::index`].
    deadlines: Vec<Option<(Instant, Call)>>,
    /// When the task's timer ends, if it is set: no call's deadline is earlier.
    armed: Option<Instant>,
    /// `armed` moved earlier: the task sets its timer again.
    rearm: bool,
}

impl Locked {
    /// Notes `call`'s deadline; `true` when the task must set its timer again.
    fn add_deadline(&mut self, call: Call, deadline: Instant) -> bool {
        let i = call.index();
        if self.deadlines.len() <= i {
            self.deadlines.resize(i + 1, None);
        }
        self.deadlines[i] = Some((deadline, call));
        if self.armed.is_some_and(|armed| armed <= deadline) {
            return false;
        }
        self.armed = Some(deadline);
        self.rearm = true;
        true
    }

    fn remove_deadline(&mut self, call: Call) {
        if let Some(entry) = self.deadlines.get_mut(call.index())
            && entry.is_some_and(|(_, c)| c == call)
        {
            *entry = None;
        }
    }

    /// Expires the calls whose deadline is past `now`; returns the earliest deadline left.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for entry in &mut self.deadlines {
            let Some((deadline, call)) = *entry else {
                continue;
            };
            if deadline <= now {
                self.conn.expire(call);
                *entry = None;
            } else {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
            }
        }
        earliest
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: the task ends and closes the socket.
        let locked = self
            .locked
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = locked.task.take() {
            task.wake();
        }
    }
}

impl Shared {
    pub(super) fn new(config: client::Config) -> Arc<Self> {
        Arc::new(Self {
            locked: Mutex::new(Locked {
                conn: Connection::new(config),
                task: None,
                deadlines: Vec::new(),
                armed: None,
                rearm: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the connection, waking the task if `f` queued the first output.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let mut locked = self.lock();
        let idle = !locked.conn.wants_write();
        let out = f(&mut locked.conn);
        if idle
            && locked.conn.wants_write()
            && let Some(task) = &locked.task
        {
            task.wake_by_ref();
        }
        out
    }

    /// Whether the connection takes no new call (it ended, or the instance sent GOAWAY).
    pub(super) fn takes_no_new_call(&self) -> bool {
        self.lock().conn.takes_no_new_call()
    }

    /// Opens a call and waits for its answer, at most until `deadline` (then the answer is
    /// [`client::CallError::Expired`] and the stream is reset); dropping the future resets
    /// the stream.
    pub(super) fn call<'a>(
        self: &'a Arc<Self>,
        block: &[&[u8]],
        message: Bytes,
        limits: CallLimits,
        deadline: Instant,
    ) -> Result<Answering<'a>, OpenError> {
        let call = {
            let mut locked = self.lock();
            let idle = !locked.conn.wants_write();
            let call = locked.conn.open(block, message, limits)?;
            let rearm = locked.add_deadline(call, deadline);
            if (rearm || (idle && locked.conn.wants_write()))
                && let Some(task) = &locked.task
            {
                task.wake_by_ref();
            }
            call
        };
        Ok(Answering {
            shared: self,
            call,
            done: false,
        })
    }
}

/// A call's answer, to come.
pub(super) struct Answering<'a> {
    shared: &'a Arc<Shared>,
    call: Call,
    done: bool,
}

impl Future for Answering<'_> {
    type Output = Result<Answer, client::CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let call = self.call;
        let answer = {
            let mut locked = self.shared.lock();
            let answer = locked.conn.poll_answer(call, cx.waker());
            if answer.is_ready() {
                locked.remove_deadline(call);
            }
            answer
        };
        if answer.is_ready() {
            self.done = true;
        }
        answer
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if !self.done {
            let call = self.call;
            self.shared.lock().remove_deadline(call);
            self.shared.with(|conn| conn.cancel(call));
        }
    }
}

/// The task of one connection: reads into the state machine, writes what it queued, pings
/// while calls are open. Ends when the connection fails or is done, or when no handle to it
/// is left.
pub(super) struct Driver {
    shared: Weak<Shared>,
    io: Box<dyn Io>,
    input: BytesMut,
    output: VecDeque<Bytes>,
    /// Whether everything taken has been written and flushed.
    flushed: bool,
    /// Whether the write of the output now queued was put off once (see `poll`).
    write_put_off: bool,
    pinger: Option<Pinger>,
    /// The timer of the calls' deadlines (see the module's doc), set when `Locked::armed` is.
    /// It is polled with `deadline_waker`, and only when that woke the task or the timer
    /// was set again: polling it at each of a busy connection's wakes cost more than the
    /// timer per call it replaces.
    deadline: Pin<Box<Sleep>>,
    deadline_wake: Arc<DeadlineWake>,
    deadline_waker: Waker,
}

/// The waker of the deadlines' timer: notes that it ended, then wakes the connection's task
/// (registered when the timer is set; a task's waker does not change).
#[derive(Default)]
struct DeadlineWake {
    due: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for DeadlineWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake();
    }
}

struct Pinger {
    keep_alive: KeepAlive,
    sleep: Pin<Box<Sleep>>,
    /// The count of acknowledgements when the unanswered ping went.
    awaiting: Option<u64>,
}

impl Driver {
    pub(super) fn new(
        shared: &Arc<Shared>,
        io: Box<dyn Io>,
        keep_alive: Option<KeepAlive>,
    ) -> Self {
        let deadline_wake = Arc::new(DeadlineWake::default());
        Self {
            shared: Arc::downgrade(shared),
            io,
            input: BytesMut::with_capacity(READ_BYTES),
            output: VecDeque::new(),
            flushed: true,
            write_put_off: false,
            pinger: keep_alive.map(|keep_alive| Pinger {
                keep_alive,
                sleep: Box::pin(tokio::time::sleep(keep_alive.interval)),
                awaiting: None,
            }),
            deadline: Box::pin(tokio::time::sleep_until(Instant::now())),
            deadline_waker: Waker::from(deadline_wake.clone()),
            deadline_wake,
        }
    }

    /// Sets the deadlines' timer when a call's deadline came earlier than it; once it ends,
    /// expires the calls past their deadline and sets it to the earliest left.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>, locked: &mut Locked) {
        let due = self
            .deadline_wake
            .due
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        if !due && !locked.rearm {
            return;
        }
        self.deadline_wake.task.register(cx.waker());
        if std::mem::take(&mut locked.rearm)
            && let Some(at) = locked.armed
        {
            self.deadline.as_mut().reset(at);
        }
        let mut timer = Context::from_waker(&self.deadline_waker);
        while locked.armed.is_some() && self.deadline.as_mut().poll(&mut timer).is_ready() {
            locked.armed = locked.expire(Instant::now());
            if let Some(at) = locked.armed {
                self.deadline.as_mut().reset(at);
            }
        }
    }

    /// Bytes taken from the connection and not yet written.
    fn unwritten(&self) -> usize {
        self.output.iter().map(Bytes::len).sum()
    }

    /// Reads what has arrived; `Ready(false)` at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        if self.input.capacity() - self.input.len() < READ_FREE_MIN {
            self.input.reserve(READ_BYTES);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.input) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(true)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes the output; `Ready` once it is all written and flushed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.output.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES_MAX];
            let n = self.output.len().min(WRITE_SLICES_MAX);
            for (slice, chunk) in slices.iter_mut().zip(self.output.iter()) {
                *slice = IoSlice::new(chunk);
            }
            let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(written)) => written,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let mut left = written;
            while left > 0 {
                let Some(front) = self.output.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.output.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Keep-alive: a ping every interval while calls are open; an unanswered one fails the
    /// connection.
    fn poll_ping(&mut self, cx: &mut Context<'_>, conn: &mut Connection) -> Result<(), String> {
        let Some(p) = &mut self.pinger else {
            return Ok(());
        };
        if let Some(before) = p.awaiting
            && conn.pongs() > before
        {
            p.awaiting = None;
            p.sleep
                .as_mut()
                .reset(Instant::now() + p.keep_alive.interval);
        }
        while p.sleep.as_mut().poll(cx).is_ready() {
            if p.awaiting.is_some() {
                return Err(format!(
                    "no answer to the keep-alive ping within {} ms",
                    p.keep_alive.timeout.as_millis()
                ));
            }
            let next = if conn.calls() > 0 {
                conn.ping(*b"swyd-kap");
                p.awaiting = Some(conn.pongs());
                p.keep_alive.timeout
            } else {
                p.keep_alive.interval
            };
            p.sleep
                .as_mut()
                .reset(Instant::now() + next.max(Duration::from_millis(1)));
        }
        Ok(())
    }
}

impl Drop for Driver {
    /// However the task ends (a panic included), no call is left waiting for it: each one
    /// still open fails, and with it the deadlines it alone would have kept.
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().conn.fail("the connection's task ended");
        }
    }
}

impl Future for Driver {
    /// Why the connection ended, if it failed.
    type Output = Result<(), String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let Some(shared) = this.shared.upgrade() else {
                return Poll::Ready(Ok(()));
            };
            let took = std::mem::take(&mut this.write_put_off);
            if took {
                // The write put off at the last poll: what was queued since is taken before
                // a read adds to it, so that no more than one read's answers wait unwritten.
                shared.lock().conn.take_output(&mut this.output);
                this.flushed = false;
            }
            // Backpressure: while much output waits for the socket, the instance is not
            // read, so that what it sends cannot make this side queue without bound (each
            // PING and SETTINGS it sends is answered).
            let reading = this.unwritten() < UNWRITTEN_BYTES_MAX;
            let read = if reading {
                this.poll_read(cx)
            } else {
                Poll::Pending
            };
            let read_more = read.is_ready();
            {
                let mut locked = shared.lock();
                match &locked.task {
                    Some(task) if task.will_wake(cx.waker()) => {}
                    _ => locked.task = Some(cx.waker().clone()),
                }
                this.poll_deadlines(cx, &mut locked);
                let conn = &mut locked.conn;
                let ended = match read {
                    Poll::Ready(Ok(true)) => {
                        conn.receive(&mut this.input).err().map(|e| e.to_string())
                    }
                    Poll::Ready(Ok(false)) => Some("the instance closed the connection".to_owned()),
                    Poll::Ready(Err(e)) => Some(format!("reading: {e}")),
                    Poll::Pending => None,
                };
                if let Some(why) = ended.or_else(|| this.poll_ping(cx, conn).err()) {
                    conn.fail(&why);
                    conn.take_output(&mut this.output);
                    drop(locked);
                    // What is queued (a GOAWAY) goes if the socket takes it at once.
                    let _ = this.poll_write(cx);
                    return Poll::Ready(Err(why));
                }
                if conn.wants_write() {
                    if this.output.is_empty() && !took {
                        // The first output since the last write is put off once: the task
                        // wakes itself and so runs again after the tasks already queued on
                        // its worker, whose calls then leave in the same write. Without it a
                        // multi-threaded runtime runs the task just woken next (its LIFO
                        // slot), and each call cost a write of its own.
                        this.write_put_off = true;
                        drop(locked);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    conn.take_output(&mut this.output);
                    this.flushed = false;
                }
                if conn.is_done() && this.output.is_empty() && this.flushed {
                    return Poll::Ready(Ok(()));
                }
            }
            drop(shared);
            let had_output = !this.flushed;
            match this.poll_write(cx) {
                Poll::Ready(Ok(())) => this.flushed = true,
                Poll::Ready(Err(e)) => {
                    let why = format!("writing: {e}");
                    if let Some(shared) = this.shared.upgrade() {
                        shared.lock().conn.fail(&why);
                    }
                    return Poll::Ready(Err(why));
                }
                Poll::Pending => {}
            }
            // Again while the socket had more to read, or once the output that held reading
            // back (or the last of a finished connection's) is written; otherwise the
            // socket's readiness or a call wakes the task.
            let freed = this.flushed && (had_output || !reading);
            if !read_more && !freed {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::BufMut;
    use tokio::io::{AsyncRead, ReadBuf};

    use super::*;

    /// An instance that sends SETTINGS and then nothing but PINGs, and never reads.
    struct Flood {
        reads: Arc<AtomicUsize>,
    }

    const READS_MAX: usize = 10_000;

    impl AsyncRead for Flood {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let reads = self.reads.fetch_add(1, Ordering::Relaxed);
            if reads >= READS_MAX {
                return Poll::Pending;
            }
            let mut frames = BytesMut::new();
            if reads == 0 {
                frames.put_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
            }
            while frames.len() + 17 <= buf.remaining() {
                frames.put_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
                frames.put_slice(b"pingping");
            }
            buf.put_slice(&frames);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Flood {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn an_instance_that_never_reads_is_not_read_either() {
        let shared = Shared::new(CLIENT_FOR_TESTS);
        let reads = Arc::new(AtomicUsize::new(0));
        let flood = Flood {
            reads: reads.clone(),
        };
        let mut driver = Driver::new(&shared, Box::new(flood), None);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(settle(&mut driver, &mut cx).is_pending());
        // Reading stopped once the answers to its pings passed the bound, long before the
        // flood ran out; what waits is the bound and at most one read's answers.
        let unwritten = driver.unwritten();
        assert!(unwritten >= UNWRITTEN_BYTES_MAX, "{unwritten}");
        assert!(
            unwritten <= UNWRITTEN_BYTES_MAX + 2 * READ_BYTES,
            "{unwritten}"
        );
        let reads = reads.load(Ordering::Relaxed);
        assert!(reads < 100, "{reads} reads");
    }

    /// An instance that sends its SETTINGS, then nothing until `closed` is set, then ends
    /// the connection; what the driver writes is kept.
    struct Closing {
        reads: usize,
        closed: Arc<std::sync::atomic::AtomicBool>,
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
    }

    impl Closing {
        fn new(closed: Arc<std::sync::atomic::AtomicBool>, written: Arc<Mutex<Vec<u8>>>) -> Self {
            Self {
                reads: 0,
                closed,
                written,
                writes: Arc::default(),
            }
        }
    }

    impl AsyncRead for Closing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            if self.reads == 1 {
                buf.put_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                Poll::Ready(Ok(()))
            } else if self.closed.load(Ordering::Relaxed) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    impl AsyncWrite for Closing {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(bytes)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
            for slice in slices {
                written.extend_from_slice(slice);
            }
            Poll::Ready(Ok(slices.iter().map(|s| s.len()).sum()))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The instance closed an idle connection, and a call opened on it before its task read
    /// the end: the task reads before it writes, so the call never leaves, and it is refused
    /// (sent again elsewhere), not reported as a connection broken during the call.
    #[tokio::test]
    async fn a_call_opened_on_a_connection_whose_end_is_unread_is_refused_and_never_written() {
        let shared = Shared::new(CLIENT_FOR_TESTS);
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = Arc::new(Mutex::new(Vec::new()));
        let io = Closing::new(closed.clone(), written.clone());
        let mut driver = Driver::new(&shared, Box::new(io), None);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(settle(&mut driver, &mut cx).is_pending());
        let before = written.lock().unwrap().len();
        assert!(before > 0, "the preface and settings were written");

        closed.store(true, Ordering::Relaxed);
        let limits = CallLimits {
            message_bytes_max: 1024,
        };
        let mut answering = shared
            .call(
                &[b"\x83\x86", b"\x84"],
                Bytes::from_static(b"\0\0\0\0\0"),
                limits,
                Instant::now() + Duration::from_secs(60),
            )
            .expect("the connection takes the call");
        let ended = Pin::new(&mut driver).poll(&mut cx);
        assert_eq!(
            ended,
            Poll::Ready(Err("the instance closed the connection".to_owned()))
        );
        match Pin::new(&mut answering).poll(&mut cx) {
            Poll::Ready(Err(client::CallError::Refused(_))) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Nothing of the call went out: no HEADERS or DATA frame after the first write.
        let written = written.lock().unwrap();
        let mut rest = &written[before..];
        while let Some(head) = switchyard_core::http2::frame::Head::read(rest) {
            assert_eq!(head.stream, 0, "a frame of the call was written: {head:?}");
            rest = &rest[(9 + head.len as usize).min(rest.len())..];
        }
        assert!(rest.is_empty());
        assert!(shared.takes_no_new_call());
    }

    /// Polls `driver` twice: the first poll after output was queued may only put its write
    /// off (and wake the task, which a test's no-op waker does not).
    fn settle(driver: &mut Driver, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        match Pin::new(&mut *driver).poll(cx) {
            Poll::Pending => Pin::new(driver).poll(cx),
            ready => ready,
        }
    }

    /// A call opened after the task was woken for an earlier one, and before it ran again,
    /// leaves in the same write: the task puts off the first output since its last write.
    #[tokio::test]
    async fn calls_opened_before_the_task_runs_again_leave_in_one_write() {
        const HEADERS: u8 = 1;
        let shared = Shared::new(CLIENT_FOR_TESTS);
        let written = Arc::new(Mutex::new(Vec::new()));
        let io = Closing::new(Arc::default(), written.clone());
        let writes = io.writes.clone();
        let mut driver = Driver::new(&shared, Box::new(io), None);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(settle(&mut driver, &mut cx).is_pending());
        let (before, writes_before) = (
            written.lock().unwrap().len(),
            writes.load(Ordering::Relaxed),
        );
        assert_eq!(
            writes_before, 1,
            "the preface, settings and their ack in one write"
        );

        let limits = CallLimits {
            message_bytes_max: 1024,
        };
        let call = || {
            shared
                .call(
                    &[b"\x83\x86", b"\x84"],
                    Bytes::from_static(b"\0\0\0\0\0"),
                    limits,
                    Instant::now() + Duration::from_secs(60),
                )
                .expect("the connection takes the call")
        };
        let _first = call();
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        assert_eq!(
            writes.load(Ordering::Relaxed),
            writes_before,
            "the write is put off"
        );
        let _second = call();
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        assert_eq!(
            writes.load(Ordering::Relaxed),
            writes_before + 1,
            "one write for both"
        );
        let headers: Vec<u32> = frames(&written.lock().unwrap()[before..])
            .into_iter()
            .filter(|f| f.0 == HEADERS)
            .map(|f| f.1)
            .collect();
        assert_eq!(headers, [1, 3]);
    }

    /// The frames in `bytes` (after the preface, if there): kind and stream.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u32)> {
        if let Some(rest) = bytes.strip_prefix(switchyard_core::http2::frame::PREFACE) {
            bytes = rest;
        }
        let mut out = Vec::new();
        while let Some(head) = switchyard_core::http2::frame::Head::read(bytes) {
            out.push((head.kind, head.stream));
            bytes = &bytes[(9 + head.len as usize).min(bytes.len())..];
        }
        out
    }

    /// Calls past their deadline are answered `Expired` and their streams reset, by the
    /// connection's one timer; a later call keeps its stream until its own deadline; the
    /// timer is set again for it.
    #[tokio::test(start_paused = true)]
    async fn calls_past_their_deadline_expire_on_the_connections_one_timer() {
        const RST_STREAM: u8 = 3;
        let shared = Shared::new(CLIENT_FOR_TESTS);
        let written = Arc::new(Mutex::new(Vec::new()));
        let io = Closing::new(Arc::default(), written.clone());
        let driver = Driver::new(&shared, Box::new(io), None);
        let task = tokio::spawn(driver);
        let limits = CallLimits {
            message_bytes_max: 1024,
        };
        let start = Instant::now();
        let call = |deadline_ms| {
            shared
                .call(
                    &[b"\x83\x86", b"\x84"],
                    Bytes::from_static(b"\0\0\0\0\0"),
                    limits,
                    start + Duration::from_millis(deadline_ms),
                )
                .expect("the connection takes the call")
        };
        let (first, second, third) = (call(100), call(100), call(300));
        let (first, second) = tokio::join!(first, second);
        assert!(
            matches!(first, Err(client::CallError::Expired)),
            "{first:?}"
        );
        assert!(
            matches!(second, Err(client::CallError::Expired)),
            "{second:?}"
        );
        let at = start.elapsed();
        assert!(
            at >= Duration::from_millis(100) && at < Duration::from_millis(300),
            "{at:?}"
        );
        tokio::task::yield_now().await;
        let resets: Vec<u32> = frames(&written.lock().unwrap())
            .into_iter()
            .filter(|f| f.0 == RST_STREAM)
            .map(|f| f.1)
            .collect();
        assert_eq!(resets, [1, 3]);
        let third = third.await;
        assert!(
            matches!(third, Err(client::CallError::Expired)),
            "{third:?}"
        );
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(shared.lock().deadlines.iter().all(Option::is_none));
        assert!(shared.lock().armed.is_none());
        drop(shared);
        task.await.unwrap().unwrap();
    }

    const CLIENT_FOR_TESTS: client::Config = client::Config {
        stream_window_bytes: 1 << 20,
        connection_window_bytes: 1 << 20,
        header_list_bytes_max: 16 * 1024,
        calls_max: 16,
    };
}

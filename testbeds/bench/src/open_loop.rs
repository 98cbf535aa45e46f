//! An HTTP/1.1 load generator that holds a fixed request rate whatever the server does, and
//! measures latency from when each request was due, not from when it was sent: the
//! correction for coordinated omission. A closed-loop generator (or an open-loop one that
//! times from the send) waits for a stalled server and so sends nothing during the stall;
//! the requests a real client would have sent then are missing from its percentiles.
//!
//! Request *i* is due at `start + i / rate`. Connection *k* of *C* sends requests *k*, *k + C*,
//! *k + 2C*, … (each connection holds `rate / C`, as wrk2 does): when a request is late
//! because the connection still waits for the one before, it goes as soon as the connection
//! is free, and its latency still counts from when it was due. A pacing thread wakes each
//! connection at its due time with `nanosleep` precision (tokio's own timer has 1 ms
//! granularity, as long as the whole p50 of a fast proxy); the generator's own lateness (how
//! late a request went although its connection was free) is reported beside the latencies.
//!
//! Every run is bounded: `rate × duration` requests at most (and [`SCHEDULED_MAX`]), each with a
//! timeout, and the whole run stops at `duration + drain` whatever is still unanswered, counted
//! as such.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::histogram::{Histogram, Percentiles};

/// The most requests one run may schedule.
pub const SCHEDULED_MAX: u64 = 100_000_000;
/// The most connections one run may open.
pub const CONNECTIONS_MAX: u32 = 4096;
/// The longest `duration`, `drain` and `timeout` may be.
pub const SECONDS_MAX: f64 = 3600.0;

/// One run of the generator.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    /// The `Host` header.
    pub authority: String,
    pub path: String,
    pub method: Method,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Requests per second over all connections; `None`: closed loop, each connection sends
    /// its next request when the previous one is answered.
    pub rate: Option<f64>,
    pub connections: u32,
    pub duration: Duration,
    /// How long after `duration` requests still in flight are waited for.
    pub drain: Duration,
    /// How long one request (and one connect) may take; past it the request is an error.
    pub timeout: Duration,
}

impl Plan {
    /// A plan for `url` (plain `http://IP:port/path` only: no name lookup, no TLS).
    pub fn for_url(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url:?}: only http:// URLs are supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .to_string();
        let addr: SocketAddr = authority
            .parse()
            .map_err(|_| format!("{url:?}: the host must be IP:port"))?;
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.to_string());
        Ok(Self {
            addr,
            authority,
            path,
            method: Method::GET,
            body: Bytes::new(),
            headers: Vec::new(),
            rate: None,
            connections: 1,
            duration: Duration::from_secs(1),
            drain: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        })
    }

    /// Checks every bound; the run does not start otherwise.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return Err(format!("connections must lie in [1, {CONNECTIONS_MAX}]"));
        }
        for (name, d, min) in [
            ("duration", self.duration, f64::MIN_POSITIVE),
            ("drain", self.drain, 0.0),
            ("timeout", self.timeout, f64::MIN_POSITIVE),
        ] {
            if !(min..=SECONDS_MAX).contains(&d.as_secs_f64()) {
                return Err(format!("{name} must lie in (0, {SECONDS_MAX}] s"));
            }
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("the rate must be a positive number of requests per second".into());
            }
            let scheduled = scheduled(rate, self.duration);
            if scheduled > SCHEDULED_MAX {
                return Err(format!(
                    "rate × duration is {scheduled} requests, more than {SCHEDULED_MAX}"
                ));
            }
        }
        Ok(())
    }
}

/// How many requests a fixed rate schedules in `duration`: those due before it ends.
pub fn scheduled(rate: f64, duration: Duration) -> u64 {
    (rate * duration.as_secs_f64()).ceil().max(0.0) as u64
}

/// When request `i` is due, from the start of the run.
pub fn due(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// What a run measured. Latencies in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub connections: u32,
    pub duration_s: f64,
    /// Requests the schedule held (open loop), or requests sent (closed loop).
    pub scheduled: u64,
    /// Answered 200 with the whole body.
    pub requests: u64,
    /// Any other status, a connection that failed, or a timeout.
    pub errors: u64,
    /// Neither answered nor failed when the run stopped (`duration + drain`).
    pub unanswered: u64,
    pub first_error: Option<String>,
    /// From the start to the last answer.
    pub elapsed_s: f64,
    /// Answered requests per second of `elapsed_s`.
    pub rps: f64,
    /// From when each request was due to its answer (closed loop: from its send).
    pub latency_ms: Option<Percentiles>,
    /// From when each request was sent to its answer (what an uncorrected generator reports).
    pub service_ms: Option<Percentiles>,
    /// How late the generator sent requests whose connection was free when they were due.
    pub send_lag_ms: Option<Percentiles>,
    /// Latencies past the histogram's range, counted at its top.
    pub clamped: u64,
}

#[derive(Debug, Default)]
struct Totals {
    corrected: Histogram,
    service: Histogram,
    lag: Histogram,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    last_answer: Option<Instant>,
}

impl Totals {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `plan` on the current tokio runtime (a current-thread runtime pinned to a core of
/// its own is what the benchmark uses).
pub async fn run(plan: Plan) -> Result<Report, String> {
    plan.validate()?;
    let plan = Arc::new(plan);
    let totals = Arc::new(Mutex::new(Totals::default()));
    let connections = plan.connections as usize;
    let wakers: Arc<Vec<Notify>> = Arc::new((0..connections).map(|_| Notify::new()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    // A little ahead, so that every connection task is waiting when the first request is due.
    let start = Instant::now() + Duration::from_millis(20);
    let hard_stop = start + plan.duration + plan.drain;
    let scheduled_total = plan.rate.map(|rate| scheduled(rate, plan.duration));

    let pacer = match (plan.rate, scheduled_total) {
        (Some(rate), Some(total)) => {
            let (wakers, stop) = (wakers.clone(), stop.clone());
            Some(
                std::thread::Builder::new()
                    .name("pacer".into())
                    .spawn(move || pace(start, rate, total, &wakers, &stop))
                    .map_err(|e| format!("cannot start the pacing thread: {e}"))?,
            )
        }
        _ => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..connections {
        let (plan, totals, wakers) = (plan.clone(), totals.clone(), wakers.clone());
        tasks.spawn(
            async move { connection(k, &plan, start, hard_stop, &wakers[k], &totals).await },
        );
    }
    let mut sent_closed_loop = 0;
    while let Some(done) = tasks.join_next().await {
        sent_closed_loop += done.map_err(|e| format!("a connection task failed: {e}"))?;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(pacer) = pacer {
        let _ = pacer.join();
    }
    let t = std::mem::take(&mut *totals.lock().unwrap_or_else(PoisonError::into_inner));
    let scheduled = scheduled_total.unwrap_or(sent_closed_loop);
    let elapsed_s = t.last_answer.map_or(0.0, |last| {
        last.saturating_duration_since(start).as_secs_f64()
    });
    Ok(Report {
        mode: if plan.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: plan.rate,
        connections: plan.connections,
        duration_s: plan.duration.as_secs_f64(),
        scheduled,
        requests: t.ok,
        errors: t.errors,
        unanswered: scheduled.saturating_sub(t.ok + t.errors),
        first_error: t.first_error,
        elapsed_s,
        rps: if elapsed_s > 0.0 {
            t.ok as f64 / elapsed_s
        } else {
            0.0
        },
        latency_ms: t.corrected.percentiles(1e6),
        service_ms: t.service.percentiles(1e6),
        send_lag_ms: t.lag.percentiles(1e6),
        clamped: t.corrected.clamped(),
    })
}

/// The pacing thread: wakes the connection of request `i` when it is due. It sleeps at most
/// 10 ms at a time, so that `stop` ends it promptly.
fn pace(start: Instant, rate: f64, total: u64, wakers: &[Notify], stop: &AtomicBool) {
    let connections = wakers.len() as u64;
    for i in 0..total {
        let at = start + due(i, rate);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
        wakers[(i % connections) as usize].notify_one();
    }
}

/// One connection's share of the run; returns how many requests it sent (for the closed loop).
async fn connection(
    k: usize,
    plan: &Plan,
    start: Instant,
    hard_stop: Instant,
    waker: &Notify,
    totals: &Mutex<Totals>,
) -> u64 {
    let c = plan.connections as u64;
    let end = start + plan.duration;
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut free_since = start;
    let mut sent = 0;
    for j in 0.. {
        let due_at = match plan.rate {
            Some(rate) => {
                let i = k as u64 + j * c;
                let at = start + due(i, rate);
                if at >= end {
                    break;
                }
                // The pacer's wake-up is the precise one; tokio's timer is the fallback.
                while Instant::now() < at {
                    tokio::select! {
                        () = waker.notified() => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                at
            }
            None => {
                if j == 0 {
                    tokio::time::sleep_until(start).await;
                }
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        let sent_at = Instant::now();
        if sent_at >= hard_stop {
            break;
        }
        if plan.rate.is_some() && free_since <= due_at {
            let lag = nanos(sent_at.saturating_duration_since(due_at));
            totals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .lag
                .record(lag);
        }
        sent += 1;
        let budget = plan
            .timeout
            .min(hard_stop.saturating_duration_since(sent_at));
        let outcome = tokio::time::timeout(budget, exchange(plan, &mut sender)).await;
        let done = Instant::now();
        free_since = done;
        let mut t = totals.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(Ok(())) => {
                t.ok += 1;
                t.corrected
                    .record(nanos(done.saturating_duration_since(due_at)));
                t.service
                    .record(nanos(done.saturating_duration_since(sent_at)));
                t.last_answer = Some(t.last_answer.map_or(done, |last| last.max(done)));
            }
            Ok(Err(e)) => {
                sender = None;
                t.error(e);
            }
            Err(_) if done >= hard_stop => {
                // Still unanswered when the run stopped: neither an answer nor an error.
                break;
            }
            Err(_) => {
                sender = None;
                t.error(format!("no answer within {} ms", plan.timeout.as_millis()));
            }
        }
    }
    sent
}

/// Sends one request on the connection (opening it first if need be) and reads the whole
/// answer; an answer other than 200 is an error.
pub async fn exchange(
    plan: &Plan,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
) -> Result<(), String> {
    let s = match sender {
        Some(s) if !s.is_closed() => s,
        _ => sender.insert(connect(plan.addr).await?),
    };
    s.ready().await.map_err(|e| format!("connection: {e}"))?;
    let mut request = Request::builder()
        .method(plan.method.clone())
        .uri(plan.path.as_str())
        .header(header::HOST, plan.authority.as_str())
        .body(Full::new(plan.body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    for (name, value) in &plan.headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let response = s
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    if status != http::StatusCode::OK {
        return Err(format!("status {status}"));
    }
    Ok(())
}

/// Opens an HTTP/1.1 connection to `addr` (`TCP_NODELAY` on); it stays open while the
/// sender lives.
pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        // Ends when the connection closes; its error surfaces on the next request.
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests;

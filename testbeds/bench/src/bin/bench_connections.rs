//! Holds many connections to a proxy, for the memory benchmark (`testbeds/bench/tails.sh
//! --part memory`):
//!
//! * `idle`: opens `--count` connections, sends one request on each and reads its answer
//!   (so each is an established keep-alive connection), then holds them idle;
//! * `in-flight`: opens `--count` connections and writes one `GET` on each, without reading
//!   the answer (point it at a backend route that holds requests), then holds them.
//!
//! Prints `held N errors=E` (idle) or `sent N errors=E` (in flight) once every connection is
//! done, then holds until `--hold-s` has passed or stdin is closed, and exits printing
//! `answered A` (in flight: how many `200` status lines came back by then). A stdin already
//! at its end (`< /dev/null`) lets go at once: give it a pipe that stays open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{HeaderValue, Method};
use switchyard_bench::json_body;
use switchyard_bench::open_loop::{self, Plan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// The most connections one run may hold.
const COUNT_MAX: u32 = 60_000;
/// Connections being opened at once (a burst of more overflows a listener's backlog).
const OPENING_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    Idle,
    InFlight,
}

#[derive(Debug, Parser)]
#[command(about = "Holds many idle or in-flight connections to a proxy")]
struct Args {
    mode: Mode,
    /// `http://IP:port/path`.
    url: String,
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Idle mode: POST a JSON body of this many bytes; without it, GET.
    #[arg(long)]
    body_bytes: Option<usize>,
    /// How long to hold the connections at most, in seconds.
    #[arg(long, default_value_t = 60.0)]
    hold_s: f64,
    /// How long one connect and first request may take, in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=COUNT_MAX).contains(&args.count),
        "--count must lie in [1, {COUNT_MAX}]"
    );
    for (name, s) in [("hold-s", args.hold_s), ("timeout-s", args.timeout_s)] {
        anyhow::ensure!(
            s.is_finite() && s > 0.0 && s <= 3600.0,
            "--{name} must lie in (0, 3600]"
        );
    }
    let mut plan = Plan::for_url(&args.url).map_err(anyhow::Error::msg)?;
    plan.timeout = Duration::from_secs_f64(args.timeout_s);
    if let Some(bytes) = args.body_bytes {
        plan.method = Method::POST;
        plan.body = Bytes::from(json_body(bytes).map_err(anyhow::Error::msg)?);
        plan.headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(hold(args, plan))
}

async fn hold(args: Args, plan: Plan) -> anyhow::Result<()> {
    let plan = Arc::new(plan);
    let opening = Arc::new(Semaphore::new(OPENING_MAX));
    let errors = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(OPENING_MAX);
    let hold_for = Duration::from_secs_f64(args.hold_s);
    let deadline = tokio::time::Instant::now() + hold_for;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.count {
        let (plan, opening, errors, answered, done) = (
            plan.clone(),
            opening.clone(),
            errors.clone(),
            answered.clone(),
            done_tx.clone(),
        );
        let mode = args.mode;
        tasks.spawn(async move {
            let permit = opening.acquire_owned().await;
            let opened = tokio::time::timeout(plan.timeout, open(mode, &plan)).await;
            drop(permit);
            let held = match opened {
                Ok(Ok(held)) => Some(held),
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            let _ = done.send(()).await;
            match held {
                Some(Held::InFlight(mut tcp)) => {
                    let _ =
                        tokio::time::timeout_at(deadline, read_status(&mut tcp, &answered)).await;
                }
                Some(Held::Idle(sender)) => {
                    tokio::time::sleep_until(deadline).await;
                    drop(sender);
                }
                None => {}
            }
        });
    }
    drop(done_tx);
    let mut done = 0;
    while done < args.count && done_rx.recv().await.is_some() {
        done += 1;
    }
    let errors = errors.load(Ordering::Relaxed);
    let word = if args.mode == Mode::Idle {
        "held"
    } else {
        "sent"
    };
    println!("{word} {} errors={errors}", u64::from(args.count) - errors);
    // Hold until the deadline, or until whoever started us closes stdin.
    let mut stdin = tokio::io::stdin();
    let mut byte = [0u8; 1];
    tokio::select! {
        () = tokio::time::sleep_until(deadline) => {}
        _ = stdin.read(&mut byte) => {}
    }
    tasks.abort_all();
    println!("answered {}", answered.load(Ordering::Relaxed));
    Ok(())
}

enum Held {
    Idle(hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>),
    InFlight(tokio::net::TcpStream),
}

async fn open(mode: Mode, plan: &Plan) -> Result<Held, String> {
    match mode {
        Mode::Idle => {
            let mut sender = Some(open_loop::connect(plan.addr).await?);
            open_loop::exchange(plan, &mut sender).await?;
            sender
                .map(Held::Idle)
                .ok_or_else(|| "connection lost".to_owned())
        }
        Mode::InFlight => {
            let mut tcp = tokio::net::TcpStream::connect(plan.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let head = format!(
                "GET {} HTTP/1.1\r\nhost: {}\r\n\r\n",
                plan.path, plan.authority
            );
            tcp.write_all(head.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            Ok(Held::InFlight(tcp))
        }
    }
}

/// Reads the answer's status line (at most 64 bytes of it) and counts a `200`.
async fn read_status(tcp: &mut tokio::net::TcpStream, answered: &AtomicU64) {
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < buf.len() {
        match tcp.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    if buf[..len].starts_with(b"HTTP/1.1 200") {
        answered.fetch_add(1, Ordering::Relaxed);
    }
}

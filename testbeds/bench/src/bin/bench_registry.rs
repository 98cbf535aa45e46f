//! The registry at scale: how fast the core applies registry events, how much memory an
//! instance costs, how long a digest takes, and how long a new gateway takes to catch up from
//! a bus holding `--events` events (the in-memory bus; one event per instance, so compaction
//! keeps them all and the gateway reads every one).
//!
//!     cargo run --release -p switchyard-bench --bin bench-registry -- --events 1000000
//!
//! Prints one JSON object. Checks what it measures: the caught-up gateway must hold every
//! instance with the same digest as the core registry, or the run fails.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::Bytes;
use clap::Parser;
use switchyard::Node;
use switchyard::bus::{Bus, MemoryBus};
use switchyard::config::Config;
use switchyard::seams::{Clock, Seams, SystemClock, TokioConnector};
use switchyard_core::{Event, EventKind, Hlc, InstanceKey, Registry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The gateway binary's allocator (the `mimalloc` feature, on by default), so that catch-up and
/// the core's apply are measured as a gateway runs them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The most events one run may generate (about 1 GiB of registry and bus at this bound).
const EVENTS_MAX: usize = 5_000_000;
/// How long catch-up may take before the run gives up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Parser)]
#[command(about = "Registry-scale benchmark of the Switchyard core and catch-up")]
struct Args {
    /// Registry events on the bus, one per instance.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Services the instances are spread over.
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// Digest repetitions (the fastest is reported).
    #[arg(long, default_value_t = 3)]
    digests: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=EVENTS_MAX).contains(&args.events),
        "--events must lie in 1..={EVENTS_MAX}"
    );
    ensure!(
        (1..=args.events).contains(&args.services),
        "--services must lie in 1..=--events"
    );
    ensure!(
        (1..=100).contains(&args.digests),
        "--digests must lie in 1..=100"
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args))
}

/// The events: a registration of each instance, stamped by one gateway's clock.
fn make_events(args: &Args, now_ms: u64) -> Vec<Event> {
    let mut hlc = Hlc::new("gw-writer");
    (0..args.events)
        .map(|i| {
            let service = format!("svc-{:05}", i % args.services);
            let instance_id = format!("i-{i:08}");
            let addr = format!(
                "http://10.{}.{}.{}:{}",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff,
                50_000 + (i % 10_000)
            );
            Event {
                kind: EventKind::Register,
                key: InstanceKey::new(service, instance_id),
                addr,
                metadata: [("language".to_owned(), "rust".to_owned())].into(),
                lease_ms: 3_600_000,
                stamp: hlc.tick(now_ms),
                origin_node: "gw-writer".to_owned(),
            }
        })
        .collect()
}

/// Resident memory of this process in bytes, from /proc/self/status.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

fn progress(what: &str) {
    eprintln!("bench-registry: {what}");
    let _ = std::io::stderr().flush();
}

async fn run(args: Args) -> anyhow::Result<()> {
    let clock = SystemClock;
    let n = args.events;
    progress(&format!("generating {n} events"));
    let events = make_events(&args, clock.now_ms());

    // Encoding and decoding: the bus carries encoded events.
    let t = Instant::now();
    let payloads: Vec<Bytes> = events.iter().map(|e| Bytes::from(e.encode())).collect();
    let encode_s = t.elapsed().as_secs_f64();
    let payload_bytes: usize = payloads.iter().map(Bytes::len).sum();
    let t = Instant::now();
    for p in &payloads {
        Event::decode(p).context("an encoded event does not decode")?;
    }
    let decode_s = t.elapsed().as_secs_f64();

    // The core alone: apply every event to an empty registry, then the same again (duplicates,
    // as a redelivered topic would bring).
    progress("applying to the core registry");
    let rss_before = rss_bytes()?;
    let mut registry = Registry::new();
    let t = Instant::now();
    for e in &events {
        registry.apply_event(e);
    }
    let apply_s = t.elapsed().as_secs_f64();
    let rss_after = rss_bytes()?;
    ensure!(
        registry.len() == n,
        "the registry holds {} of {n} instances",
        registry.len()
    );
    let t = Instant::now();
    for e in &events {
        registry.apply_event(e);
    }
    let reapply_s = t.elapsed().as_secs_f64();

    // The same into another empty registry, each event moved in rather than copied (what
    // catch-up does when nothing watches the change feed); the copies are made untimed.
    let owned: Vec<Event> = events.clone();
    let mut moved_into = Registry::new();
    let t = Instant::now();
    for e in owned {
        moved_into.apply_owned(e);
    }
    let apply_owned_s = t.elapsed().as_secs_f64();
    ensure!(
        moved_into.digest() == registry.digest(),
        "moving events in gave another registry than copying them"
    );
    drop(moved_into);

    let mut digest_s = f64::MAX;
    let mut digest = String::new();
    for _ in 0..args.digests {
        let t = Instant::now();
        digest = registry.digest_hex();
        digest_s = digest_s.min(t.elapsed().as_secs_f64());
    }

    // A new gateway catching up from a bus that holds every event.
    progress("filling the in-memory bus");
    let bus = MemoryBus::new();
    for (e, p) in events.iter().zip(&payloads) {
        bus.publish(e.bus_key(), p.clone())
            .await
            .context("the in-memory bus refused a record")?;
    }
    ensure!(bus.len() == n, "the bus holds {} of {n} records", bus.len());
    drop(events);
    drop(payloads);
    progress("catching up a new gateway");
    let catch_up = catch_up(bus, n, digest).await?;

    let report = serde_json::json!({
        "events": n,
        "services": args.services,
        "event_bytes_mean": payload_bytes as f64 / n as f64,
        "encode_per_s": n as f64 / encode_s,
        "decode_per_s": n as f64 / decode_s,
        "apply_per_s": n as f64 / apply_s,
        "apply_s": apply_s,
        "apply_owned_per_s": n as f64 / apply_owned_s,
        "reapply_duplicates_per_s": n as f64 / reapply_s,
        "registry_bytes_per_instance": rss_after.saturating_sub(rss_before) as f64 / n as f64,
        "digest_ms": digest_s * 1000.0,
        "catch_up_s": catch_up,
        "catch_up_events_per_s": n as f64 / catch_up,
    });
    println!("{report}");
    Ok(())
}

/// Starts a gateway on `bus` and returns the seconds until it reports ready, after checking
/// that it holds all `n` instances with the expected digest.
async fn catch_up(bus: MemoryBus, n: usize, digest: String) -> anyhow::Result<f64> {
    let config = Config {
        node_id: "gw-new".to_owned(),
        ..Config::default()
    };
    let seams = Seams {
        connector: Arc::new(TokioConnector),
        clock: Arc::new(SystemClock),
        bus: Arc::new(bus),
        seed: 1,
    };
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = CancellationToken::new();
    let t = Instant::now();
    let node = Node::new(config, seams);
    let served = tokio::spawn(node.clone().serve(public, control, shutdown.clone()));
    let deadline = t + CATCH_UP_TIMEOUT;
    while !node.is_ready() {
        ensure!(
            Instant::now() < deadline,
            "not caught up within {CATCH_UP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let status = node.status();
    shutdown.cancel();
    served.await.context("the gateway task panicked")??;
    ensure!(
        status.registry_entries == n,
        "the new gateway holds {} of {n} instances",
        status.registry_entries
    );
    ensure!(
        status.registry_digest == digest,
        "the new gateway's digest {} differs from the core registry's {digest}",
        status.registry_digest
    );
    Ok(elapsed)
}

//! A load client for the direct call: `ForwardingService.Send` on a service instance, the
//! request the gateway would send for `POST /{service}{path}` with a JSON body. It measures
//! what the HTTP load generator measures for the proxies: request/response round trips at a
//! fixed concurrency, closed loop (as fast as answers come) or at a fixed total rate, with
//! latency taken from just before each call to its answer.
//!
//! Prints one JSON object: requests, errors, elapsed_s, rps and latency_ms percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::{Latencies, json_body};
use switchyard_proto::forwarding::forwarding_service_client::ForwardingServiceClient;
use switchyard_proto::forwarding::{ForwardingReq, Header};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Latency samples kept per run; beyond this only the count grows.
const SAMPLES_MAX: usize = 20_000_000;

#[derive(Debug, Parser)]
#[command(about = "gRPC load client for ForwardingService.Send (the direct call)")]
struct Args {
    /// The instance, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    target: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// HTTP/2 connections the requests are spread over (default: one per request in flight,
    /// as the HTTP load generator opens one per request in flight).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: Option<u32>,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// A fixed total rate in requests per second; closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Request body size in bytes (a JSON object).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    #[arg(long, default_value = "sample")]
    service: String,
    #[arg(long, default_value = "/test/echo-body")]
    path: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.duration_s > 0.0 && args.duration_s <= 3600.0) {
        anyhow::bail!("--duration-s must lie in (0, 3600]");
    }
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate <= 10_000_000.0)
    {
        anyhow::bail!("--rate must lie in (0, 10000000]");
    }
    let body = Bytes::from(json_body(args.body_bytes).map_err(anyhow::Error::msg)?);
    let template = ForwardingReq {
        method: "POST".to_owned(),
        scheme: "http".to_owned(),
        authority: "bench".to_owned(),
        path: args.path.clone(),
        headers: vec![Header {
            name: "content-type".to_owned(),
            value: Bytes::from_static(b"application/json"),
        }],
        body,
        http_version: "HTTP/1.1".to_owned(),
        service: args.service.clone(),
        ..Default::default()
    };
    let connections = args.connections.unwrap_or(args.concurrency);
    let mut channels = Vec::new();
    for _ in 0..connections {
        let channel = Endpoint::from_shared(args.target.clone())
            .context("invalid --target")?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.target))?;
        channels.push(channel);
    }
    let duration = Duration::from_secs_f64(args.duration_s);
    let start = Instant::now();
    let end = start + duration;
    let interval = args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let next_slot = Arc::new(AtomicU64::new(0));
    let per_worker = SAMPLES_MAX / args.concurrency as usize;
    let mut workers = Vec::new();
    for i in 0..args.concurrency as usize {
        let channel = channels[i % channels.len()].clone();
        let template = template.clone();
        let next_slot = next_slot.clone();
        workers.push(tokio::spawn(worker(
            channel,
            template,
            Schedule {
                start,
                end,
                interval,
                next_slot,
            },
            per_worker,
        )));
    }
    let mut latencies = Latencies::new(SAMPLES_MAX);
    let (mut requests, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    for w in workers {
        let outcome = w.await.context("a load worker panicked")?;
        requests += outcome.requests;
        errors += outcome.errors;
        first_error = first_error.or(outcome.first_error);
        latencies.merge(outcome.latencies);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "requests": requests,
        "errors": errors,
        "first_error": first_error,
        "elapsed_s": elapsed_s,
        "rps": requests as f64 / elapsed_s,
        "latency_ms": latencies.summary(),
        "samples_dropped": latencies.dropped(),
        "concurrency": args.concurrency,
        "connections": connections,
        "rate": args.rate,
        "body_bytes": args.body_bytes,
    });
    println!("{report}");
    Ok(())
}

struct Schedule {
    start: Instant,
    end: Instant,
    interval: Option<Duration>,
    next_slot: Arc<AtomicU64>,
}

struct Outcome {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Latencies,
}

async fn worker(
    channel: Channel,
    template: ForwardingReq,
    schedule: Schedule,
    samples_max: usize,
) -> Outcome {
    let mut client = ForwardingServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut out = Outcome {
        requests: 0,
        errors: 0,
        first_error: None,
        latencies: Latencies::new(samples_max),
    };
    loop {
        if let Some(interval) = schedule.interval {
            // Open loop: each request takes the next slot of the shared schedule.
            let slot = schedule.next_slot.fetch_add(1, Ordering::Relaxed);
            let at = schedule.start + interval.mul_f64(slot as f64);
            if at >= schedule.end {
                break;
            }
            tokio::time::sleep_until(at).await;
        } else if Instant::now() >= schedule.end {
            break;
        }
        let sent = Instant::now();
        let result = client.send(template.clone()).await;
        match result {
            Ok(resp) if resp.get_ref().status == 200 => {
                out.requests += 1;
                out.latencies.record(sent.elapsed().as_micros() as u64);
            }
            Ok(resp) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert_with(|| format!("status {}", resp.get_ref().status));
            }
            Err(status) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| status.to_string());
            }
        }
    }
    out
}

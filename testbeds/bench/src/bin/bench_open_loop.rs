//! The open-loop HTTP/1.1 load generator of the tail-latency benchmark
//! (`testbeds/bench/tails.sh`): a fixed rate, latency from when each request was due
//! (corrected for coordinated omission), or a closed loop without `--rate`. See
//! `switchyard_bench::open_loop`. Runs on one thread (pin it with taskset); prints one JSON
//! object (`open_loop::Report`).

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Method};
use switchyard_bench::json_body;
use switchyard_bench::open_loop::{self, Plan};

#[derive(Debug, Parser)]
#[command(about = "Open-loop HTTP/1.1 load generator, corrected for coordinated omission")]
struct Args {
    /// `http://IP:port/path`.
    url: String,
    /// Requests per second over all connections; without it, a closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Connections, each sending its share of the schedule one request at a time.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Seconds of schedule.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Seconds to wait after the schedule for answers still due.
    #[arg(long, default_value_t = 5.0)]
    drain_s: f64,
    /// Seconds one request (or connect) may take before it counts as an error.
    #[arg(long, default_value_t = 5.0)]
    timeout_s: f64,
    /// POST a JSON body of this many bytes (`{"message":"xxx…"}`); without it, GET.
    #[arg(long)]
    body_bytes: Option<usize>,
    /// `name: value`, sent with every request (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        s.is_finite() && (0.0..=open_loop::SECONDS_MAX).contains(&s),
        "--{name} must lie in [0, {}]",
        open_loop::SECONDS_MAX
    );
    Ok(Duration::from_secs_f64(s))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut plan = Plan::for_url(&args.url).map_err(anyhow::Error::msg)?;
    plan.rate = args.rate;
    plan.connections = args.connections;
    plan.duration = seconds("duration-s", args.duration_s)?;
    plan.drain = seconds("drain-s", args.drain_s)?;
    plan.timeout = seconds("timeout-s", args.timeout_s)?;
    if let Some(bytes) = args.body_bytes {
        plan.method = Method::POST;
        plan.body = Bytes::from(json_body(bytes).map_err(anyhow::Error::msg)?);
        plan.headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
    }
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?} is not `name: value`"))?;
        plan.headers.push((
            HeaderName::try_from(name.trim()).with_context(|| format!("header name in {h:?}"))?,
            HeaderValue::try_from(value.trim())
                .with_context(|| format!("header value in {h:?}"))?,
        ));
    }
    plan.validate().map_err(anyhow::Error::msg)?;
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(open_loop::run(plan))
        .map_err(anyhow::Error::msg)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

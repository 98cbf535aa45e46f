//! Per-request cost of the gateway's telemetry: hand-written (copied from the gateway) against
//! prometheus-client and the OpenTelemetry SDK.
//!
//!   telemetry-bench all [N]        wall clock, best of 5 per case, ns/op and ratio to hand
//!   telemetry-bench one CASE N     run CASE N times once (for callgrind; see bench.sh)
//!
//! Cases: metrics-hand metrics-prom metrics-prom-arc span-hand span-otel span-otel-parent
//!        encode-hand encode-prom encode-prom-om

mod hand;
mod otel;
mod prom;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;

use hand::Front;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Spans sent between two waits for the consumer, so no span is dropped however the
/// threads are scheduled (under valgrind they are serialised).
const BURST: usize = 512;
/// otlp's default `spans_queued_max`.
const QUEUED_MAX: usize = 4096;

struct Input {
    front: Front,
    service: &'static str,
    service_arc: Arc<str>,
    method: Method,
    status: u16,
    elapsed: Duration,
    path: String,
    request_id: String,
    span: hand::Span,
}

fn inputs(with_parent: bool) -> Vec<Input> {
    const SERVICES: [&str; 4] = ["inventory", "orders", "payments", "users"];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..64)
        .map(|i| {
            let r = next();
            let service = SERVICES[i % 4];
            let (method, status) = match i % 8 {
                0..=4 => (Method::GET, 200),
                5 | 6 => (Method::POST, 201),
                _ => (Method::GET, 404),
            };
            Input {
                front: if i % 16 == 15 { Front::Graphql } else { Front::Rest },
                service,
                service_arc: Arc::from(service),
                method,
                status,
                elapsed: Duration::from_micros(200 + (r % 40_000)),
                path: format!("/{service}/v1/items/{}", r % 10_000),
                request_id: format!("{:032x}", u128::from(r) * 0x1_0000_0001),
                span: hand::Span {
                    trace_id: u128::from(r) << 64 | u128::from(next()),
                    span_id: next() | 1,
                    parent_id: with_parent.then(|| next() | 1),
                    flags: 1,
                },
            }
        })
        .collect()
}

fn finished(i: &Input) -> hand::Finished<'_> {
    hand::Finished {
        span: i.span,
        method: i.method.as_str(),
        path: &i.path,
        service: i.service,
        status: i.status,
        request_id: &i.request_id,
        start_unix_ms: 1_760_000_000_000,
        elapsed: i.elapsed,
    }
}

// ---------- metrics ----------

#[inline(never)]
fn metrics_hand_op(m: &hand::Metrics, i: &Input) {
    let _g = m.in_flight(i.front);
    m.request(i.front, i.service, &i.method, i.status, i.elapsed);
}

#[inline(never)]
fn metrics_prom_op(m: &prom::PromMetrics, i: &Input) {
    let _g = m.in_flight(i.front);
    m.request(i.front, i.service, &i.method, i.status, i.elapsed);
}

#[inline(never)]
fn metrics_prom_arc_op(m: &prom::PromMetrics, i: &Input) {
    let _g = m.in_flight(i.front);
    m.request_arc(i.front, &i.service_arc, &i.method, i.status, i.elapsed);
}

/// Runs `op` n times over the inputs on `threads` threads sharing the state; returns the time.
fn run_metrics(case: &str, n: usize, threads: usize) -> Duration {
    let ins = inputs(false);
    macro_rules! go {
        ($m:expr, $op:ident) => {{
            let m = $m;
            for i in &ins {
                $op(&m, i); // warm: every series exists, as in a steady state
            }
            let start = Instant::now();
            if threads == 1 {
                // On the calling thread, so callgrind's thread 1 is the recording thread.
                for k in 0..n {
                    $op(black_box(&m), &ins[k % ins.len()]);
                }
            } else {
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (m, ins) = (&m, &ins);
                    s.spawn(move || {
                        for k in 0..n {
                            $op(black_box(m), &ins[(k + t * 7) % ins.len()]);
                        }
                    });
                }
            });
            }
            let d = start.elapsed();
            black_box(&m);
            d
        }};
    }
    match case {
        "metrics-hand" => go!(hand::Metrics::default(), metrics_hand_op),
        "metrics-prom" => go!(prom::PromMetrics::new(false), metrics_prom_op),
        "metrics-prom-arc" => go!(prom::PromMetrics::new(true), metrics_prom_arc_op),
        _ => unreachable!(),
    }
}

// ---------- spans ----------

fn run_spans(case: &str, n: usize) -> Duration {
    let ins = inputs(case == "span-otel-parent");
    let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel::<()>(1024);
    let n = n.div_ceil(BURST) * BURST;
    match case {
        "span-hand" => {
            let (exporter, mut rx) = hand::Exporter::new(QUEUED_MAX);
            // The drain stands for Exporter::run without encoding or sending: receive in
            // batches of ≤ 512 on a current-thread runtime of its own, drop them.
            let drain = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async move {
                    let mut batch = Vec::with_capacity(512);
                    let mut received = 0usize;
                    loop {
                        let got = rx.recv_many(&mut batch, 512).await;
                        if got == 0 {
                            return;
                        }
                        batch.clear();
                        let before = received;
                        received += got;
                        for _ in (before / BURST)..(received / BURST) {
                            let _ = ack_tx.send(());
                        }
                    }
                });
            });
            let exporter = Some(exporter);
            let start = Instant::now();
            for b in 0..n / BURST {
                for k in 0..BURST {
                    hand::export(black_box(exporter.as_ref()), finished(&ins[(b * BURST + k) % ins.len()]));
                }
                ack_rx.recv().unwrap();
            }
            let d = start.elapsed();
            let dropped = exporter.as_ref().unwrap().dropped.load(Ordering::Relaxed);
            assert_eq!(dropped, 0, "spans dropped");
            drop(exporter);
            drain.join().unwrap();
            d
        }
        "span-otel" | "span-otel-parent" => {
            let received = Arc::new(AtomicU64::new(0));
            let (provider, tracer) = otel::provider(
                otel::CountingExporter { received: received.clone(), ack: ack_tx, ack_every: BURST as u64 },
                QUEUED_MAX,
            );
            let start = Instant::now();
            for b in 0..n / BURST {
                for k in 0..BURST {
                    otel::export(black_box(&tracer), finished(&ins[(b * BURST + k) % ins.len()]));
                }
                ack_rx.recv().unwrap();
            }
            let d = start.elapsed();
            assert_eq!(received.load(Ordering::Relaxed), n as u64, "spans dropped");
            drop(tracer);
            let _ = provider.shutdown();
            d
        }
        _ => unreachable!(),
    }
}

// ---------- scrape ----------

fn populate(record: &mut dyn FnMut(Front, &str, &Arc<str>, &Method, u16, Duration)) {
    for s in 0..100 {
        let name = format!("service-{s:03}");
        let arc: Arc<str> = Arc::from(name.as_str());
        for (front, method, status) in [
            (Front::Rest, Method::GET, 200),
            (Front::Rest, Method::POST, 201),
            (Front::Rest, Method::GET, 404),
            (Front::Graphql, Method::POST, 200),
        ] {
            for k in 0..3 {
                record(front, &name, &arc, &method, status, Duration::from_micros(300 + k * 7000));
            }
        }
    }
}

fn run_encode(case: &str, n: usize) -> (Duration, usize) {
    let mut out = String::with_capacity(256 * 1024);
    match case {
        "encode-hand" => {
            let m = hand::Metrics::default();
            populate(&mut |f, s, _, me, st, e| m.request(f, s, me, st, e));
            let start = Instant::now();
            for _ in 0..n {
                out.clear();
                m.encode(&mut out);
                black_box(&out);
            }
            (start.elapsed(), out.len())
        }
        "encode-prom" | "encode-prom-om" => {
            let m = prom::PromMetrics::new(false);
            populate(&mut |f, s, _, me, st, e| m.request(f, s, me, st, e));
            let start = Instant::now();
            for _ in 0..n {
                out.clear();
                if case == "encode-prom" {
                    prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry).unwrap();
                } else {
                    prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
                }
                black_box(&out);
            }
            (start.elapsed(), out.len())
        }
        _ => unreachable!(),
    }
}

fn run(case: &str, n: usize) -> Duration {
    if let Some(base) = case.strip_suffix("-2t") {
        return run_metrics(base, n, 2);
    }
    match case {
        c if c.starts_with("metrics-") => run_metrics(c, n, 1),
        c if c.starts_with("span-") => run_spans(c, n),
        c if c.starts_with("encode-") => run_encode(c, n).0,
        _ => panic!("unknown case {case}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("one") => {
            let case = &args[2];
            let n: usize = args[3].parse().unwrap();
            let d = run(case, n);
            eprintln!("{case} n={n} {:.1} ns/op", d.as_nanos() as f64 / n as f64);
        }
        Some("dump") => {
            // The scrape outputs, to compare formats by eye.
            let m = hand::Metrics::default();
            let p = prom::PromMetrics::new(false);
            for i in inputs(false).iter().take(8) {
                m.request(i.front, i.service, &i.method, i.status, i.elapsed);
                p.request(i.front, i.service, &i.method, i.status, i.elapsed);
            }
            let mut out = String::new();
            m.encode(&mut out);
            println!("==== hand (text 0.0.4) ====\n{out}");
            out.clear();
            prometheus_client::encoding::prometheus_text::encode(&mut out, &p.registry).unwrap();
            println!("==== prometheus-client prometheus_text (0.0.4) ====\n{out}");
            out.clear();
            prometheus_client::encoding::text::encode(&mut out, &p.registry).unwrap();
            println!("==== prometheus-client text (OpenMetrics) ====\n{out}");
        }
        _ => {
            let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
            let groups: [(&str, &[&str], usize); 4] = [
                ("metrics, 1 thread", &["metrics-hand", "metrics-prom", "metrics-prom-arc"], n),
                ("metrics, 2 threads (ns per op over both)", &["metrics-hand-2t", "metrics-prom-2t", "metrics-prom-arc-2t"], n / 2),
                ("spans, sampled", &["span-hand", "span-otel", "span-otel-parent"], n),
                ("scrape, 100 services x 4 label sets", &["encode-hand", "encode-prom", "encode-prom-om"], (n / 5000).max(20)),
            ];
            for (title, cases, n) in groups {
                let mut best = vec![f64::MAX; cases.len()];
                for _ in 0..5 {
                    for (k, c) in cases.iter().enumerate() {
                        let ops = if c.ends_with("-2t") { 2 * n } else { n };
                        let ns = run(c, n).as_nanos() as f64 / ops as f64;
                        best[k] = best[k].min(ns);
                    }
                }
                println!("## {title} (n={n}, best of 5)");
                for (k, c) in cases.iter().enumerate() {
                    println!("{c:<22} {:>10.1} ns/op   {:.2}x", best[k], best[k] / best[0]);
                }
                if title.starts_with("scrape") {
                    for c in cases.iter() {
                        println!("{c:<22} {} bytes", run_encode(c, 1).1);
                    }
                }
            }
        }
    }
}

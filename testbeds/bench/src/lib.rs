//! Tools for the proxy benchmark (`testbeds/bench/proxies.sh`) and the registry-scale
//! benchmark (`bench-registry`).
//!
//! * [`echo`] and [`TypedEcho`]: a typed gRPC Echo service with `google.api.http` annotations,
//!   the peer of the sample service's `/test/echo-body` route behind Envoy's gRPC-JSON
//!   transcoder; [`ECHO_DESCRIPTOR_SET`] is the descriptor set Envoy loads.
//! * [`http_echo_router`]: the same echo over plain HTTP/1.1, behind nginx and Envoy as plain
//!   reverse proxies.
//! * [`json_body`], [`Latencies`]: the request body of a given size, and the latency summary
//!   the gRPC load client reports in the same shape as the HTTP load generator's.
//! * [`histogram`]: a fixed-size latency histogram (HdrHistogram's bucketing, 1/128 relative
//!   precision), and [`open_loop`]: the open-loop HTTP/1.1 load generator of the tail-latency
//!   benchmark, corrected for coordinated omission (`bench-open-loop`, `testbeds/bench/tails.sh`).
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde::Serialize;
use tonic::{Request, Status};

pub mod histogram;
pub mod open_loop;

/// `switchyard.bench.v1`: the typed Echo service.
pub mod echo {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("switchyard.bench.v1");
}

/// The encoded `FileDescriptorSet` of `echo.proto` with its imports and options, for Envoy's
/// `proto_descriptor`.
pub const ECHO_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));

/// The typed Echo service: answers with the message it was sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct TypedEcho;

#[tonic::async_trait]
impl echo::echo_server::Echo for TypedEcho {
    async fn echo(
        &self,
        request: Request<echo::EchoRequest>,
    ) -> Result<tonic::Response<echo::EchoReply>, Status> {
        Ok(tonic::Response::new(echo::EchoReply {
            message: request.into_inner().message,
        }))
    }
}

/// `POST /echo` answers with the request body and its content type; `GET /sleep/{ms}`
/// answers after `ms` milliseconds (at most [`SLEEP_MS_MAX`]), the requests in flight of the
/// memory benchmark.
pub fn http_echo_router() -> Router {
    Router::new()
        .route("/echo", post(http_echo))
        .route("/sleep/{ms}", axum::routing::get(http_sleep))
}

/// The longest `GET /sleep/{ms}` holds a request.
pub const SLEEP_MS_MAX: u64 = 60_000;

async fn http_sleep(axum::extract::Path(ms): axum::extract::Path<u64>) -> &'static str {
    tokio::time::sleep(std::time::Duration::from_millis(ms.min(SLEEP_MS_MAX))).await;
    "slept"
}

async fn http_echo(headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The smallest body [`json_body`] can make: `{"message":""}`.
pub const JSON_BODY_BYTES_MIN: usize = 14;

/// A JSON object `{"message":"xxx…"}` of exactly `bytes` bytes, the body every target of the
/// proxy benchmark is sent (the transcoder needs the field; the others echo it as it is).
pub fn json_body(bytes: usize) -> Result<String, String> {
    if bytes < JSON_BODY_BYTES_MIN {
        return Err(format!(
            "a body must be at least {JSON_BODY_BYTES_MIN} bytes, not {bytes}"
        ));
    }
    let mut body = String::with_capacity(bytes);
    body.push_str("{\"message\":\"");
    body.extend(std::iter::repeat_n('x', bytes - JSON_BODY_BYTES_MIN));
    body.push_str("\"}");
    Ok(body)
}

/// Latency percentiles in milliseconds, the shape the benchmark driver reads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

/// Recorded latencies in microseconds, bounded: past `samples_max` only the count grows.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples_us: Vec<u32>,
    samples_max: usize,
    dropped: u64,
}

impl Latencies {
    pub fn new(samples_max: usize) -> Self {
        Self {
            samples_us: Vec::with_capacity(samples_max.min(1 << 16)),
            samples_max,
            dropped: 0,
        }
    }

    pub fn record(&mut self, micros: u64) {
        if self.samples_us.len() < self.samples_max {
            self.samples_us
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        } else {
            self.dropped += 1;
        }
    }

    pub fn merge(&mut self, other: Latencies) {
        let room = self.samples_max.saturating_sub(self.samples_us.len());
        let take = room.min(other.samples_us.len());
        self.dropped += other.dropped + (other.samples_us.len() - take) as u64;
        self.samples_us.extend_from_slice(&other.samples_us[..take]);
    }

    /// Samples not kept because the bound was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Nearest-rank percentiles; `None` with no sample.
    pub fn summary(&mut self) -> Option<LatencySummary> {
        if self.samples_us.is_empty() {
            return None;
        }
        self.samples_us.sort_unstable();
        let n = self.samples_us.len();
        // `basis_points` of 10,000; integer arithmetic, so 99.9 % of 1,000 is rank 999.
        let at = |basis_points: usize| {
            let rank = (basis_points * n).div_ceil(10_000);
            f64::from(self.samples_us[rank.clamp(1, n) - 1]) / 1000.0
        };
        let sum: u64 = self.samples_us.iter().map(|&us| u64::from(us)).sum();
        Some(LatencySummary {
            p50: at(5_000),
            p90: at(9_000),
            p99: at(9_900),
            p99_9: at(9_990),
            max: at(10_000),
            mean: sum as f64 / n as f64 / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_has_the_exact_size_and_parses() {
        for size in [14, 15, 100, 16 * 1024] {
            let body = json_body(size).unwrap();
            assert_eq!(body.len(), size);
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(value["message"].as_str().unwrap().len(), size - 14);
        }
        assert!(json_body(13).is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank_and_bounded() {
        let mut l = Latencies::new(1000);
        for us in (1..=1000).rev() {
            l.record(us * 1000);
        }
        let s = l.summary().unwrap();
        assert_eq!(
            (s.p50, s.p99, s.p99_9, s.max),
            (500.0, 990.0, 999.0, 1000.0)
        );
        assert!((s.mean - 500.5).abs() < 1e-9);

        let mut small = Latencies::new(2);
        small.record(1);
        let mut other = Latencies::new(5);
        for us in 0..3 {
            other.record(us);
        }
        small.merge(other);
        assert_eq!(small.dropped(), 2);
        assert!(Latencies::new(4).summary().is_none());
    }
}

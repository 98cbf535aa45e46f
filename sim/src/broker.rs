//! The simulated Kafka: a broker host that serves a compacting log over the simulated network,
//! and [`SimBus`], the gateways' bus adapter that talks to it.
//!
//! The model keeps what the gateways rely on and nothing more: one ordered, keyed, compacting
//! log with offsets and a high-water mark; a write is acknowledged once it is in the log, and
//! acknowledged writes survive a broker crash (the log lives outside the host, like a disk). A
//! write the broker received but did not acknowledge before a crash may or may not be in the
//! log, which the client cannot tell from a lost one: it retries, and the registry's merge
//! absorbs the duplicate. Faults the broker injects on its own, per seed: response delays and
//! the redelivery of already-read records.
//!
//! Delete markers are modelled as Kafka's null-value records: compaction keeps a marker for the
//! log's delete retention, then drops its key altogether (see [`MemoryBus`]).
//!
//! Not modelled: partitions of the topic (Switchyard uses one), replication between brokers,
//! transactions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use switchyard::bus::{Bus, BusError, MemoryBus, Record};
use switchyard::seams::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::SimListener;

pub const BROKER_HOST: &str = "kafka";
pub const BROKER_PORT: u16 = 9092;

/// Faults the broker injects by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BrokerFaults {
    /// Each response waits a random time up to this long.
    pub delay_ms_max: u64,
    /// Probability that a fetch starts up to 5 records before the offset asked for.
    pub redeliver_probability: f64,
    /// The most records one fetch returns, whatever the reader asks for (as Kafka's fetch
    /// size limits do); 0: as many as asked (at most 1,024).
    pub fetch_records_max: usize,
    /// Probability that a write is appended to the log and its acknowledgement then lost (the
    /// writer sees an error, retries, and the log holds the record twice).
    pub lost_ack_probability: f64,
    /// Probability that a fetch starts again at the log's first offset.
    pub deep_redeliver_probability: f64,
}

#[derive(Clone)]
struct BrokerState {
    log: MemoryBus,
    faults: BrokerFaults,
    rng: Arc<Mutex<SmallRng>>,
}

#[derive(Debug, Deserialize)]
struct OffsetReply {
    offset: u64,
}

#[derive(Debug, Deserialize)]
struct HwmReply {
    hwm: u64,
}

#[derive(Debug, Deserialize)]
struct FetchQuery {
    from: u64,
    max: usize,
    wait_ms: u64,
}

/// The broker's wire for records, both ways: a publish's body is one record (its offset
/// ignored), a fetch's answer is the records one after the other. Each is framed as
/// `offset: u64`, `delete: u8` (0 or 1), `key length: u32`, the key in UTF-8,
/// `payload length: u32`, the payload; integers big-endian. Binary rather than JSON: records
/// crossed hex-encoded in JSON before, and encoding, escaping, copying and decoding them was
/// about a tenth of a seed's CPU (docs/simulation.md, "Speed").
pub mod wire {
    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use switchyard::bus::Record;

    /// The bytes of one record's frame besides its key and payload.
    const FRAME_FIXED: usize = 8 + 1 + 4 + 4;

    /// The length of `record`'s frame.
    pub fn framed_len(record: &Record) -> usize {
        FRAME_FIXED + record.key.len() + record.payload.len()
    }

    /// Appends `record`'s frame to `out`. A key or payload longer than `u32::MAX` bytes
    /// cannot be framed: an error, and `out` is left as it was.
    pub fn put(out: &mut BytesMut, record: &Record) -> Result<(), String> {
        let too_long = |what: &str| format!("a record's {what} is longer than the wire allows");
        let key_len = u32::try_from(record.key.len()).map_err(|_| too_long("key"))?;
        let payload_len = u32::try_from(record.payload.len()).map_err(|_| too_long("payload"))?;
        out.reserve(framed_len(record));
        out.put_u64(record.offset);
        out.put_u8(u8::from(record.delete));
        out.put_u32(key_len);
        out.put_slice(record.key.as_bytes());
        out.put_u32(payload_len);
        out.put_slice(&record.payload);
        Ok(())
    }

    /// The records framed in `body`, their payloads sharing its memory. At most `max`
    /// records; a frame cut short, a length past the body's end, a key that is not UTF-8, a
    /// delete flag other than 0 or 1 or more than `max` records is an error naming the
    /// first bad record, and nothing is returned.
    pub fn records(mut body: Bytes, max: usize) -> Result<Vec<Record>, String> {
        let mut records = Vec::new();
        while body.has_remaining() {
            let at = records.len();
            if at == max {
                return Err(format!("more than {max} records"));
            }
            let cut = || format!("record {at}: frame cut short");
            if body.remaining() < FRAME_FIXED - 4 {
                return Err(cut());
            }
            let offset = body.get_u64();
            let delete = match body.get_u8() {
                0 => false,
                1 => true,
                other => return Err(format!("record {at}: delete flag {other}")),
            };
            let key_len = body.get_u32() as usize;
            if body.remaining() < key_len.saturating_add(4) {
                return Err(cut());
            }
            let key = String::from_utf8(body.split_to(key_len).to_vec())
                .map_err(|_| format!("record {at}: the key is not UTF-8"))?;
            let payload_len = body.get_u32() as usize;
            if body.remaining() < payload_len {
                return Err(cut());
            }
            records.push(Record {
                offset,
                key,
                payload: body.split_to(payload_len),
                delete,
            });
        }
        Ok(records)
    }
}

impl BrokerState {
    fn roll<T>(&self, f: impl FnOnce(&mut SmallRng) -> T) -> T {
        f(&mut self.rng.lock().unwrap_or_else(|e| e.into_inner()))
    }

    async fn delay(&self) {
        if self.faults.delay_ms_max > 0 {
            let ms = self.roll(|r| r.random_range(0..=self.faults.delay_ms_max));
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// The body of the broker host. `log` is created once per simulation and outlives crashes.
pub async fn broker_host(
    log: MemoryBus,
    faults: BrokerFaults,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let state = BrokerState {
        log,
        faults,
        rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))),
    };
    let app = Router::new()
        .route("/publish", post(publish))
        .route("/hwm", get(hwm))
        .route("/fetch", get(fetch))
        .with_state(state);
    let listener = SimListener::bind(BROKER_PORT).await?;
    switchyard::serve::serve(listener, app, CancellationToken::new(), Duration::ZERO).await?;
    Ok(())
}

type Reply = Result<axum::Json<serde_json::Value>, (http::StatusCode, String)>;

fn bad(e: impl std::fmt::Display) -> (http::StatusCode, String) {
    (http::StatusCode::BAD_REQUEST, e.to_string())
}

async fn publish(State(state): State<BrokerState>, body: Bytes) -> Reply {
    state.delay().await;
    let record = wire::records(body, 1)
        .map_err(bad)?
        .pop()
        .ok_or_else(|| bad("a publish without a record"))?;
    let offset = if record.delete {
        state.log.delete(record.key, record.payload).await
    } else {
        state.log.publish(record.key, record.payload).await
    }
    .map_err(bad)?;
    let lost = state.faults.lost_ack_probability > 0.0
        && state.roll(|r| r.random_bool(state.faults.lost_ack_probability.min(1.0)));
    if lost {
        return Err((
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("appended at offset {offset}, acknowledgement lost"),
        ));
    }
    Ok(axum::Json(serde_json::json!({ "offset": offset })))
}

async fn hwm(State(state): State<BrokerState>) -> Reply {
    state.delay().await;
    let hwm = state.log.high_water_mark().await.map_err(bad)?;
    Ok(axum::Json(serde_json::json!({ "hwm": hwm })))
}

async fn fetch(
    State(state): State<BrokerState>,
    Query(q): Query<FetchQuery>,
) -> Result<Bytes, (http::StatusCode, String)> {
    state.delay().await;
    let redeliver = state.faults.redeliver_probability > 0.0
        && state.roll(|r| r.random_bool(state.faults.redeliver_probability.min(1.0)));
    let from = if redeliver {
        q.from.saturating_sub(state.roll(|r| r.random_range(1..=5)))
    } else {
        q.from
    };
    let deep = state.faults.deep_redeliver_probability > 0.0
        && state.roll(|r| r.random_bool(state.faults.deep_redeliver_probability.min(1.0)));
    let from = if deep { 0 } else { from };
    let max = match state.faults.fetch_records_max {
        0 => q.max,
        cap => q.max.min(cap),
    };
    let wait = Duration::from_millis(q.wait_ms.min(1_000));
    let records = state
        .log
        .fetch(from, max.min(ANSWER_RECORDS_MAX), wait)
        .await
        .map_err(bad)?;
    let mut answer = BytesMut::with_capacity(records.iter().map(wire::framed_len).sum());
    for record in &records {
        wire::put(&mut answer, record).map_err(bad)?;
    }
    Ok(answer.freeze())
}

/// The most records one fetch answers, whatever it asks for (a gateway catching up asks for
/// 2,048), as a Kafka broker's fetch size caps a fetch.
const ANSWER_RECORDS_MAX: usize = 1_024;

/// The gateways' bus adapter for the simulated broker: one HTTP/1.1 request per call over
/// the simulated network, each bounded by a timeout so a partition looks like an outage.
#[derive(Debug, Clone, Copy)]
pub struct SimBus {
    pub timeout: Duration,
}

impl Default for SimBus {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
        }
    }
}

impl SimBus {
    /// One request to the broker: the body of a 2xx answer, an error otherwise.
    async fn call_raw(&self, request: http::Request<Full<Bytes>>) -> Result<Bytes, BusError> {
        let exchange = crate::exchange(BROKER_HOST, BROKER_PORT, request);
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| BusError::Unavailable("the broker did not answer in time".into()))?
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(BusError::Rejected(
                String::from_utf8_lossy(&body).into_owned(),
            ));
        }
        Ok(body)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<T, BusError> {
        let body = self.call_raw(request).await?;
        serde_json::from_slice(&body).map_err(|e| BusError::Unavailable(e.to_string()))
    }

    fn get(path: &str) -> http::Request<Full<Bytes>> {
        http::Request::get(path)
            .header(http::header::HOST, BROKER_HOST)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()
    }

    async fn append(&self, key: String, payload: Bytes, delete: bool) -> Result<u64, BusError> {
        let record = Record {
            offset: 0,
            key,
            payload,
            delete,
        };
        let mut body = BytesMut::with_capacity(wire::framed_len(&record));
        wire::put(&mut body, &record).map_err(BusError::Rejected)?;
        let request = http::Request::post("/publish")
            .header(http::header::HOST, BROKER_HOST)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(body.freeze()))
            .map_err(|e| BusError::Rejected(e.to_string()))?;
        let reply: OffsetReply = self.call(request).await?;
        Ok(reply.offset)
    }
}

impl Bus for SimBus {
    fn publish(&self, key: String, payload: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(self.append(key, payload, false))
    }

    fn delete(&self, key: String, deletes: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(self.append(key, deletes, true))
    }

    fn high_water_mark(&self) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            let reply: HwmReply = self.call(Self::get("/hwm")).await?;
            Ok(reply.hwm)
        })
    }

    fn fetch(
        &self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BusError>> {
        Box::pin(async move {
            let path = format!("/fetch?from={from}&max={max}&wait_ms={}", wait.as_millis());
            let body = self.call_raw(Self::get(&path)).await?;
            wire::records(body, max).map_err(|e| BusError::Unavailable(format!("fetch: {e}")))
        })
    }
}

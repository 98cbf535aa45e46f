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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::Full;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
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
    /// Each record's payload in hex, by offset, as fetches sent it: a record never changes,
    /// and redeliveries send the same records again and again. At most [`HEX_CACHED_MAX`]
    /// records; emptied when full.
    hexes: Arc<Mutex<BTreeMap<u64, Arc<str>>>>,
}

/// The most records whose hex the broker keeps.
const HEX_CACHED_MAX: usize = 16_384;

#[derive(Debug, Deserialize)]
struct WireRecord {
    offset: u64,
    key: String,
    payload_hex: String,
    #[serde(default)]
    delete: bool,
}

/// The answer to a fetch, read straight into its type: no JSON tree is built on either side.
#[derive(Debug, Deserialize)]
struct FetchReply {
    records: Vec<WireRecord>,
}

/// [`FetchReply`] as the broker writes it: the same fields in the same order, the hex shared
/// with the broker's cache.
#[derive(Debug, Serialize)]
struct FetchAnswer {
    records: Vec<WireRecordOut>,
}

#[derive(Debug, Serialize)]
struct WireRecordOut {
    offset: u64,
    key: String,
    #[serde(serialize_with = "shared_str")]
    payload_hex: Arc<str>,
    delete: bool,
}

fn shared_str<S: serde::Serializer>(s: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(s)
}

#[derive(Debug, Deserialize)]
struct OffsetReply {
    offset: u64,
}

#[derive(Debug, Deserialize)]
struct HwmReply {
    hwm: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct PublishBody {
    key: String,
    payload_hex: String,
    /// A delete marker; `payload_hex` is then what it deletes.
    #[serde(default)]
    delete: bool,
}

#[derive(Debug, Deserialize)]
struct FetchQuery {
    from: u64,
    max: usize,
    wait_ms: u64,
}

/// Lower-case hex, one allocation: every record crosses the simulated broker hex-encoded, and
/// a `format!` per byte was a quarter of a short seed's CPU.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The bytes of hex digits (either case), or `None` for an odd length or a non-digit.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
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
        hexes: Arc::default(),
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
    let body: PublishBody = serde_json::from_slice(&body).map_err(bad)?;
    let payload = Bytes::from(unhex(&body.payload_hex).ok_or_else(|| bad("payload_hex"))?);
    let offset = if body.delete {
        state.log.delete(body.key, payload).await
    } else {
        state.log.publish(body.key, payload).await
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
) -> Result<axum::Json<FetchAnswer>, (http::StatusCode, String)> {
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
        .fetch(from, max.min(1_024), wait)
        .await
        .map_err(bad)?;
    let mut hexes = state.hexes.lock().unwrap_or_else(|e| e.into_inner());
    if hexes.len() + records.len() > HEX_CACHED_MAX {
        hexes.clear();
    }
    let records: Vec<WireRecordOut> = records
        .into_iter()
        .map(|r| WireRecordOut {
            offset: r.offset,
            payload_hex: hexes
                .entry(r.offset)
                .or_insert_with(|| hex(&r.payload).into())
                .clone(),
            key: r.key,
            delete: r.delete,
        })
        .collect();
    drop(hexes);
    Ok(axum::Json(FetchAnswer { records }))
}

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
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<T, BusError> {
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
        serde_json::from_slice(&body).map_err(|e| BusError::Unavailable(e.to_string()))
    }

    fn get(path: &str) -> http::Request<Full<Bytes>> {
        http::Request::get(path)
            .header(http::header::HOST, BROKER_HOST)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()
    }

    async fn append(&self, key: String, payload: Bytes, delete: bool) -> Result<u64, BusError> {
        let body = serde_json::to_vec(&PublishBody {
            key,
            payload_hex: hex(&payload),
            delete,
        })
        .map_err(|e| BusError::Rejected(e.to_string()))?;
        let request = http::Request::post("/publish")
            .header(http::header::HOST, BROKER_HOST)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
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
            let reply: FetchReply = self.call(Self::get(&path)).await?;
            reply
                .records
                .into_iter()
                .map(|r| {
                    let payload = unhex(&r.payload_hex)
                        .ok_or_else(|| BusError::Unavailable("bad payload".into()))?;
                    Ok(Record {
                        offset: r.offset,
                        key: r.key,
                        payload: Bytes::from(payload),
                        delete: r.delete,
                    })
                })
                .collect()
        })
    }
}

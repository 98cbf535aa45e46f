//! The Kafka adapter of the bus seam, over librdkafka (rdkafka). Thin by design: it maps
//! publish, high-water mark and fetch-from-offset onto one single-partition, compacted topic.
//! Catch-up, readiness, retries and merge stay above the `Bus` trait, where the simulation
//! exercises them.
//!
//! * One partition: the registry needs one total order of records per key, and its volume
//!   (registrations and renewals) is far below what one partition carries.
//! * The producer is idempotent with `acks=all`: a retried send is written once.
//! * The consumer is assigned the partition directly (no group, no committed offsets): every
//!   gateway reads the whole log from the offset it asks for.
//! * The topic is created on first use if missing, with `cleanup.policy=compact`, so a broker
//!   that is down when the gateway starts only delays readiness.
//! * A delete marker is a record with a null value, which the log cleaner keeps for the
//!   topic's `delete.retention.ms` and then drops with every older record of its key. What it
//!   deletes travels in its [`DELETES_HEADER`] header.
//! * The security keys of `[bus.kafka]` (TLS, SASL/SCRAM) become librdkafka's settings as they
//!   are; the SASL password is read from its file here, goes into the clients' settings and
//!   nowhere else (an error about a setting never shows its value). Global errors are logged
//!   with the keys that usually cause them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{Bus, BusError, Record};
use crate::config::KafkaConfig;

mod security;

use crate::sync::BoxFuture;
pub use security::BusContext;
// The audit sink and `switchyard audit tail` use the same security settings and reports.
use security::warn_if_exposed;
pub use security::{creation_error, security};

const PARTITION: i32 = 0;

/// The header of a delete marker that carries the encoded entry it deletes.
pub const DELETES_HEADER: &str = "switchyard-deletes";

pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer<BusContext>,
    consumer: Arc<StreamConsumer<BusContext>>,
    admin: AdminClient<BusContext>,
    topic_ready: AtomicBool,
    /// The offset the consumer is positioned at, so consecutive fetches do not seek.
    position: tokio::sync::Mutex<Option<u64>>,
    /// Fetches in a row that returned nothing (see [`STALLED_FETCHES`]).
    idle_fetches: AtomicU32,
}

/// After this many empty fetches in a row, the partition's high-water mark is asked for; if
/// the log holds records past the position, the partition is assigned again. librdkafka can
/// leave a partition's fetcher idle after the broker restarts (seen once in the cluster
/// testbed: one gateway of three read nothing more for four minutes while the others went
/// on); a new assignment restarts it.
const STALLED_FETCHES: u32 = 6;

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.config.brokers)
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: KafkaError) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl KafkaBus {
    /// Creates the clients. No connection is made yet: librdkafka connects on first use and
    /// reconnects by itself.
    pub fn new(config: &KafkaConfig, client_id: &str) -> Result<Self, BusError> {
        let mut common = ClientConfig::new();
        common
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", client_id)
            .set("socket.keepalive.enable", "true")
            // Small requests must not wait for Nagle's algorithm (it cost ~25 ms per hop).
            .set("socket.nagle.disable", "true")
            .set("reconnect.backoff.max.ms", "1000");
        security(config, &mut common)?;
        warn_if_exposed(config);
        let context = BusContext::new();
        let producer: FutureProducer<BusContext> = common
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger_ms.to_string())
            .set("message.timeout.ms", config.message_timeout_ms.to_string())
            .create_with_context(context.clone())
            .map_err(creation_error)?;
        let consumer: StreamConsumer<BusContext> = common
            .clone()
            // Required by librdkafka for a consumer; nothing is ever committed under it.
            .set("group.id", format!("{client_id}-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
            .set("fetch.min.bytes", "1")
            .create_with_context(context.clone())
            .map_err(creation_error)?;
        let admin = common
            .create_with_context(context)
            .map_err(creation_error)?;
        Ok(Self {
            config: config.clone(),
            producer,
            consumer: Arc::new(consumer),
            admin,
            topic_ready: AtomicBool::new(!config.create_topic),
            position: tokio::sync::Mutex::new(None),
            idle_fetches: AtomicU32::new(0),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Creates the topic if it does not exist (once per process).
    async fn ensure_topic(&self) -> Result<(), BusError> {
        if self.topic_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let retention = self.config.delete_retention_ms.to_string();
        let topic = NewTopic::new(
            &self.config.topic,
            1,
            TopicReplication::Fixed(self.config.replication_factor),
        )
        .set("cleanup.policy", "compact")
        .set("delete.retention.ms", &retention);
        let options = AdminOptions::new().operation_timeout(Some(self.timeout()));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(unavailable)?;
        for result in results {
            match result {
                Ok(_) => {
                    tracing::info!(topic = %self.config.topic, "created the registry topic (compacted)")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::Unavailable(format!(
                        "cannot create topic {topic}: {code}"
                    )));
                }
            }
        }
        self.topic_ready.store(true, Ordering::Release);
        Ok(())
    }
}

impl KafkaBus {
    /// Sends one record and waits for the broker's acknowledgement.
    async fn send(&self, record: FutureRecord<'_, [u8], [u8]>) -> Result<u64, BusError> {
        match self.producer.send(record, self.timeout()).await {
            Ok(delivery) => Ok(u64::try_from(delivery.offset).unwrap_or(0)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => Err(
                BusError::Rejected("record larger than the topic accepts".into()),
            ),
            Err((error, _)) => Err(unavailable(error)),
        }
    }
}

impl Bus for KafkaBus {
    fn publish(&self, key: String, payload: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            self.ensure_topic().await?;
            let record = FutureRecord::to(&self.config.topic)
                .partition(PARTITION)
                .key(key.as_bytes())
                .payload(payload.as_ref());
            self.send(record).await
        })
    }

    fn delete(&self, key: String, deletes: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            self.ensure_topic().await?;
            let headers = OwnedHeaders::new().insert(Header {
                key: DELETES_HEADER,
                value: Some(deletes.as_ref()),
            });
            // No payload: a null value, which is what the log cleaner treats as a delete.
            let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.config.topic)
                .partition(PARTITION)
                .key(key.as_bytes())
                .headers(headers);
            self.send(record).await
        })
    }

    fn high_water_mark(&self) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            self.ensure_topic().await?;
            let consumer = self.consumer.clone();
            let topic = self.config.topic.clone();
            let timeout = self.timeout();
            // fetch_watermarks blocks on a broker round trip.
            let (_, high) = tokio::task::spawn_blocking(move || {
                consumer.fetch_watermarks(&topic, PARTITION, timeout)
            })
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?
            .map_err(unavailable)?;
            Ok(u64::try_from(high).unwrap_or(0))
        })
    }

    fn fetch(
        &self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BusError>> {
        Box::pin(async move {
            self.ensure_topic().await?;
            let mut position = self.position.lock().await;
            if *position != Some(from) {
                let mut assignment = TopicPartitionList::new();
                let offset =
                    i64::try_from(from).map_err(|_| BusError::Rejected("offset".into()))?;
                assignment
                    .add_partition_offset(&self.config.topic, PARTITION, Offset::Offset(offset))
                    .map_err(unavailable)?;
                self.consumer.assign(&assignment).map_err(unavailable)?;
                *position = Some(from);
            }
            let mut records = Vec::new();
            let deadline = tokio::time::Instant::now() + wait;
            while records.len() < max {
                // The first record may take the whole wait; after it, take only what is
                // already fetched, so a busy log returns batches without added latency.
                let until = if records.is_empty() {
                    deadline
                } else {
                    tokio::time::Instant::now() + Duration::from_millis(1)
                };
                let message = match tokio::time::timeout_at(until, self.consumer.recv()).await {
                    Err(_) => break,
                    Ok(Ok(message)) => message,
                    // Transport errors are reports, not failures of this fetch: librdkafka
                    // reconnects by itself, and it queues one report per failed attempt while
                    // the broker is down. Returning on each would leave a backlog of stale
                    // reports to drain, one per fetch, after the broker is back.
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "Kafka consumer report");
                        continue;
                    }
                };
                let Ok(offset) = u64::try_from(message.offset()) else {
                    continue;
                };
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                let record = match message.payload() {
                    Some(payload) => Record {
                        offset,
                        key,
                        payload: Bytes::copy_from_slice(payload),
                        delete: false,
                    },
                    // A delete marker; without its header (not written by a gateway) it
                    // carries nothing, and replication quarantines it.
                    None => Record {
                        offset,
                        key,
                        payload: message
                            .headers()
                            .and_then(|h| h.iter().find(|h| h.key == DELETES_HEADER))
                            .and_then(|h| h.value)
                            .map(Bytes::copy_from_slice)
                            .unwrap_or_default(),
                        delete: true,
                    },
                };
                records.push(record);
            }
            if let Some(last) = records.last() {
                *position = Some(last.offset + 1);
                self.idle_fetches.store(0, Ordering::Relaxed);
            } else if self.idle_fetches.fetch_add(1, Ordering::Relaxed) + 1 >= STALLED_FETCHES {
                self.idle_fetches.store(0, Ordering::Relaxed);
                if let Ok(Ok(hwm)) =
                    tokio::time::timeout(self.timeout(), self.high_water_mark()).await
                    && hwm > from
                {
                    tracing::warn!(
                        from,
                        high_water = hwm,
                        "the Kafka consumer delivers nothing while the topic holds more; assigning the partition again"
                    );
                    *position = None;
                }
            }
            Ok(records)
        })
    }
}

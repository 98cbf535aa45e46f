//! The Kafka adapter of the audit sink seam: encoded audit records onto the requests and
//! registry topics, over librdkafka (rdkafka). Thin like the bus adapter: the queue, sampling,
//! redaction and drop counters stay in the auditor above [`AuditSink`].
//!
//! * One producer, idempotent with `acks=all` (a retried send is written once), the
//!   configured compression, a linger of [`LINGER_MS`], and `message.timeout.ms` = the
//!   delivery timeout: a record not acknowledged by then fails as `delivery_failed`.
//! * librdkafka's own queue is bounded: [`QUEUE_MESSAGES_MAX`] records and
//!   [`QUEUE_KBYTES_MAX`] KiB. A record it cannot take fails at once as `queue_full`; a
//!   record over [`MESSAGE_BYTES_MAX`] as `too_large`.
//! * The two topics are created on first use if missing (partitions from the settings,
//!   `bus.kafka.replication_factor`, `cleanup.policy=delete`), unless `bus.kafka.create_topic`
//!   is off; a topic that cannot be created or does not exist fails the batch as
//!   `unavailable`.
//! * The security settings and the logging of librdkafka's errors are the bus's
//!   (`bus::kafka`): the same TLS, the same SASL password file, the same rate-limited lines.
//! * [`AuditSink::available`] goes false when librdkafka reports every broker down, when a
//!   record fails delivery or a topic cannot be had; it comes back with a delivered record, or
//!   when [`AuditSink::run`]'s probe (every [`PROBE_INTERVAL`] while unavailable: the topics'
//!   metadata, on a blocking thread, within `bus.kafka.request_timeout_ms`) reaches a broker
//!   again. It starts false: nothing is known until the first probe, which `run` makes at once.
//!
//! During a broker outage librdkafka keeps the records it was given and retries them, and
//! reconnects by itself (backoff up to 1 s). A record acknowledged within the delivery timeout
//! is delivered once (the idempotent producer drops the duplicates of its retries); one not
//! acknowledged by then is reported `delivery_failed` and never sent again, so a record is
//! either delivered once or counted as dropped. A record the broker wrote but whose
//! acknowledgement was lost with the connection is the one case that can be both: librdkafka
//! cannot tell, and reports it failed.
//!
//! If librdkafka raises a fatal error (the idempotent producer's state can no longer be
//! trusted), the probe replaces the producer; the records of the old one fail as usual.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;

use super::sink::{AuditSink, DropReason, Outgoing, Stream};
use crate::bus::kafka::{BusContext, creation_error, security};
use crate::config::KafkaConfig;
use crate::sync::{BoxFuture, read, write};

/// librdkafka's `queue.buffering.max.messages` for the audit producer: records handed to it
/// and not yet acknowledged. Twenty batches of the auditor's default 500.
pub const QUEUE_MESSAGES_MAX: usize = 10_000;
/// librdkafka's `queue.buffering.max.kbytes`: 16 MiB, the auditor's own default bound.
pub const QUEUE_KBYTES_MAX: usize = 16 * 1024;
/// librdkafka's `message.max.bytes`: Kafka's own default for a record batch; larger records
/// are refused before they are queued.
pub const MESSAGE_BYTES_MAX: usize = 1_000_000;
/// librdkafka's `linger.ms`: how long a record waits to be batched with others. Audit records
/// are many and no request waits on them, so a few ms buy fuller, better compressed batches.
pub const LINGER_MS: u64 = 5;
/// How often `run` probes for a broker while the sink is unavailable.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long past the delivery timeout a batch waits for librdkafka's reports before it calls
/// the records still unreported failed (librdkafka reports every record by its
/// `message.timeout.ms`; this bounds the wait should it not).
pub const REPORT_GRACE: Duration = Duration::from_secs(5);
/// The partitions a topic created here may have.
pub const PARTITIONS_MAX: i32 = 1024;
/// The delivery timeout's bounds, ms: librdkafka takes 0 for "never", which is refused.
pub const DELIVERY_TIMEOUT_MS_MIN: u64 = 1;
pub const DELIVERY_TIMEOUT_MS_MAX: u64 = 900_000;
/// Kafka's limit on a topic name's length.
pub const TOPIC_CHARS_MAX: usize = 249;

/// What the audit sink needs beyond `[bus.kafka]`; the node maps `[audit]` onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkSettings {
    pub topic_requests: String,
    pub topic_registry: String,
    /// Partitions of a topic the sink creates.
    pub partitions: i32,
    /// librdkafka's `message.timeout.ms`.
    pub delivery_timeout: Duration,
    /// `"none"`, `"gzip"` or `"lz4"`.
    pub compression: String,
}

impl KafkaSinkSettings {
    /// Refuses what librdkafka or the broker would refuse later, or what would mix audit
    /// records into the registry topic.
    fn validate(&self, kafka: &KafkaConfig) -> Result<(), String> {
        for (key, topic) in [
            ("audit.topic_requests", &self.topic_requests),
            ("audit.topic_registry", &self.topic_registry),
        ] {
            check_topic(topic).map_err(|e| format!("{key}: {e}"))?;
            if *topic == kafka.topic {
                return Err(format!(
                    "{key}: \"{topic}\" is the registry topic (bus.kafka.topic); audit records need topics of their own"
                ));
            }
        }
        if self.topic_requests == self.topic_registry {
            return Err(
                "audit.topic_requests and audit.topic_registry must be different topics".into(),
            );
        }
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            return Err(format!(
                "audit.partitions: must be between 1 and {PARTITIONS_MAX}"
            ));
        }
        let ms = self.delivery_timeout.as_millis();
        if !(u128::from(DELIVERY_TIMEOUT_MS_MIN)..=u128::from(DELIVERY_TIMEOUT_MS_MAX))
            .contains(&ms)
        {
            return Err(format!(
                "audit.delivery_timeout_ms: must be between {DELIVERY_TIMEOUT_MS_MIN} and {DELIVERY_TIMEOUT_MS_MAX}"
            ));
        }
        compression_type(&self.compression)?;
        Ok(())
    }

    fn topic(&self, stream: Stream) -> &str {
        match stream {
            Stream::Requests => &self.topic_requests,
            Stream::Registry => &self.topic_registry,
        }
    }
}

/// A Kafka topic name: what the broker accepts.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > TOPIC_CHARS_MAX || topic == "." || topic == ".." {
        return Err(format!(
            "a topic name has 1 to {TOPIC_CHARS_MAX} characters and is not \".\" or \"..\""
        ));
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a topic name has only ASCII letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// librdkafka's `compression.type` for the configured compression.
fn compression_type(name: &str) -> Result<&'static str, String> {
    match name {
        "none" => Ok("none"),
        "gzip" => Ok("gzip"),
        "lz4" => Ok("lz4"),
        other => Err(format!(
            "audit.compression: \"{other}\" is not one of \"none\", \"gzip\", \"lz4\""
        )),
    }
}

/// The producer's settings: the bus's connection and security, then the audit producer's.
fn producer_config(
    kafka: &KafkaConfig,
    settings: &KafkaSinkSettings,
    queue_messages_max: usize,
) -> Result<ClientConfig, String> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", "switchyard-audit")
        .set("socket.keepalive.enable", "true")
        .set("socket.nagle.disable", "true")
        .set("reconnect.backoff.max.ms", "1000");
    security(kafka, &mut client).map_err(|e| e.to_string())?;
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", compression_type(&settings.compression)?)
        .set("linger.ms", LINGER_MS.to_string())
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            queue_messages_max.to_string(),
        )
        .set("queue.buffering.max.kbytes", QUEUE_KBYTES_MAX.to_string())
        .set("message.max.bytes", MESSAGE_BYTES_MAX.to_string());
    Ok(client)
}

/// What a record that librdkafka would not take gets.
fn enqueue_error(error: &KafkaError) -> DropReason {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => DropReason::QueueFull,
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => DropReason::TooLarge,
        _ => DropReason::Unavailable,
    }
}

/// What a record that librdkafka took and then reported failed gets.
fn delivery_error(error: &KafkaError) -> DropReason {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => DropReason::TooLarge,
        Some(
            RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownPartition,
        ) => DropReason::Unavailable,
        _ => DropReason::DeliveryFailed,
    }
}

/// Whether the sink is available after a batch with these results, given whether it was:
/// a failure to reach Kafka says no whatever else the batch did (the probe says yes again
/// once a broker answers); otherwise one delivered record says yes.
fn available_after(before: bool, results: &[Result<(), DropReason>]) -> bool {
    let failed = results
        .iter()
        .any(|r| matches!(r, Err(DropReason::DeliveryFailed | DropReason::Unavailable)));
    if failed {
        false
    } else {
        before || results.iter().any(Result::is_ok)
    }
}

/// Why a probe failed.
enum Probe {
    Unreachable(String),
    TopicMissing(String),
}

/// Whether the sink can deliver, as the producer's context and the sink both see it.
#[derive(Debug, Default)]
struct Health {
    available: AtomicBool,
    /// librdkafka raised a fatal error: the producer must be replaced.
    fatal: AtomicBool,
}

impl Health {
    /// Sets availability; logs each change once, so an outage is two lines, not one a batch.
    fn set(&self, available: bool, why: &str) {
        if self.available.swap(available, Ordering::AcqRel) != available {
            if available {
                tracing::info!("audit sink available: Kafka takes audit records again");
            } else {
                tracing::warn!(
                    reason = why,
                    "audit sink unavailable: audit records are dropped (or refused requests in required mode) until Kafka is back"
                );
            }
        }
    }
}

/// The producer's context: the bus's logging, plus what changes the sink's availability.
#[derive(Debug, Clone)]
struct AuditContext {
    log: BusContext,
    health: Arc<Health>,
}

impl ClientContext for AuditContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.health.set(false, "every Kafka broker is down")
            }
            Some(RDKafkaErrorCode::Fatal) => {
                self.health.fatal.store(true, Ordering::Release);
                self.health
                    .set(false, "the Kafka producer had a fatal error");
            }
            _ => {}
        }
        self.log.error(error, reason);
    }
}

pub struct KafkaSink {
    config: KafkaConfig,
    settings: KafkaSinkSettings,
    client: ClientConfig,
    producer: RwLock<FutureProducer<AuditContext>>,
    admin: AdminClient<AuditContext>,
    context: AuditContext,
    topics_ready: AtomicBool,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.config.brokers)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates the producer. No connection is made yet: librdkafka connects on first use
    /// and reconnects by itself; `run` probes at once.
    pub fn new(kafka: &KafkaConfig, settings: KafkaSinkSettings) -> Result<Self, String> {
        Self::with_queue(kafka, settings, QUEUE_MESSAGES_MAX)
    }

    fn with_queue(
        kafka: &KafkaConfig,
        settings: KafkaSinkSettings,
        queue_messages_max: usize,
    ) -> Result<Self, String> {
        settings.validate(kafka)?;
        let client = producer_config(kafka, &settings, queue_messages_max)?;
        let context = AuditContext {
            log: BusContext::new(),
            health: Arc::new(Health::default()),
        };
        let producer = client
            .create_with_context(context.clone())
            .map_err(|e| creation_error(e).to_string())?;
        // The admin client needs none of the producer's settings, only the connection's.
        let admin = client
            .create_with_context(context.clone())
            .map_err(|e| creation_error(e).to_string())?;
        Ok(Self {
            config: kafka.clone(),
            settings,
            client,
            producer: RwLock::new(producer),
            admin,
            context,
            topics_ready: AtomicBool::new(!kafka.create_topic),
        })
    }

    fn health(&self) -> &Health {
        &self.context.health
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Creates both topics if they do not exist (once per process, when it succeeds).
    async fn ensure_topics(&self) -> Result<(), String> {
        if self.topics_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let timeout = self.request_timeout();
        let replication = self.config.replication_factor;
        let topics = [&self.settings.topic_requests, &self.settings.topic_registry].map(|name| {
            NewTopic::new(
                name,
                self.settings.partitions,
                TopicReplication::Fixed(replication),
            )
            .set("cleanup.policy", "delete")
        });
        let options = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        // librdkafka bounds the request by the options; the outer bound is for the rest.
        let results = tokio::time::timeout(
            timeout + REPORT_GRACE,
            self.admin.create_topics(&topics, &options),
        )
        .await
        .map_err(|_| "creating the audit topics timed out".to_owned())?
        .map_err(|e| format!("cannot create the audit topics: {e}"))?;
        for result in results {
            match result {
                Ok(topic) => {
                    tracing::info!(%topic, partitions = self.settings.partitions, "created an audit topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(format!("cannot create topic {topic}: {code}")),
            }
        }
        self.topics_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether a broker answers for both topics now: their metadata, on a blocking thread.
    /// A topic found missing (deleted since it was made) is made again by the next probe.
    async fn probe(&self) -> Result<(), String> {
        self.ensure_topics().await?;
        let producer = read(&self.producer).clone();
        let topics = [
            self.settings.topic_requests.clone(),
            self.settings.topic_registry.clone(),
        ];
        let timeout = self.request_timeout();
        let probe = tokio::task::spawn_blocking(move || {
            for topic in &topics {
                let metadata = producer
                    .client()
                    .fetch_metadata(Some(topic), timeout)
                    .map_err(|e| Probe::Unreachable(format!("no Kafka broker answers: {e}")))?;
                if metadata.brokers().is_empty() {
                    return Err(Probe::Unreachable(
                        "the Kafka metadata names no broker".to_owned(),
                    ));
                }
                match metadata.topics().iter().find(|t| t.name() == topic) {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
                    _ => return Err(Probe::TopicMissing(topic.clone())),
                }
            }
            Ok(())
        });
        let result = tokio::time::timeout(timeout * 2 + REPORT_GRACE, probe)
            .await
            .map_err(|_| "the Kafka probe timed out".to_owned())?
            .map_err(|e| format!("the Kafka probe failed: {e}"))?;
        match result {
            Ok(()) => Ok(()),
            Err(Probe::Unreachable(why)) => Err(why),
            Err(Probe::TopicMissing(topic)) => {
                if self.config.create_topic {
                    self.topics_ready.store(false, Ordering::Release);
                }
                Err(format!("the audit topic {topic} does not exist"))
            }
        }
    }

    /// Replaces a producer that had a fatal error.
    fn replace_producer(&self) {
        if !self.health().fatal.swap(false, Ordering::AcqRel) {
            return;
        }
        let fatal = read(&self.producer).client().fatal_error();
        match self
            .client
            .create_with_context::<_, FutureProducer<AuditContext>>(self.context.clone())
        {
            Ok(producer) => {
                tracing::warn!(?fatal, "replaced the audit producer after a fatal error");
                *write(&self.producer) = producer;
            }
            Err(e) => {
                // Try again at the next probe.
                self.health().fatal.store(true, Ordering::Release);
                tracing::error!(error = %creation_error(e), "cannot replace the audit producer");
            }
        }
    }

    /// Hands one record to librdkafka.
    fn enqueue(
        &self,
        producer: &FutureProducer<AuditContext>,
        record: &Outgoing,
    ) -> Result<DeliveryFuture, DropReason> {
        let message = FutureRecord::to(self.settings.topic(record.stream))
            .key(record.key.as_bytes())
            .payload(record.payload.as_ref());
        producer
            .send_result(message)
            .map_err(|(error, _)| enqueue_error(&error))
    }
}

impl AuditSink for KafkaSink {
    fn deliver(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), DropReason>>> {
        Box::pin(async move {
            if let Err(why) = self.ensure_topics().await {
                self.health().set(false, &why);
                return vec![Err(DropReason::Unavailable); batch.len()];
            }
            let producer = read(&self.producer).clone();
            let pending: Vec<_> = batch
                .iter()
                .map(|record| self.enqueue(&producer, record))
                .collect();
            let deadline =
                tokio::time::Instant::now() + self.settings.delivery_timeout + REPORT_GRACE;
            let mut results = Vec::with_capacity(pending.len());
            for sent in pending {
                let result = match sent {
                    Err(reason) => Err(reason),
                    Ok(delivery) => match tokio::time::timeout_at(deadline, delivery).await {
                        Ok(Ok(Ok(_))) => Ok(()),
                        Ok(Ok(Err((error, _)))) => Err(delivery_error(&error)),
                        // The producer went away (replaced, or the sink dropped).
                        Ok(Err(_)) | Err(_) => Err(DropReason::DeliveryFailed),
                    },
                };
                results.push(result);
            }
            let before = self.health().available.load(Ordering::Acquire);
            let after = available_after(before, &results);
            if after != before {
                self.health()
                    .set(after, "an audit record could not be delivered");
            }
            results
        })
    }

    fn available(&self) -> bool {
        self.health().available.load(Ordering::Acquire)
    }

    fn run(&self, stop: CancellationToken) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                self.replace_producer();
                if self.available() {
                    continue;
                }
                let probe = tokio::select! {
                    () = stop.cancelled() => return,
                    probe = self.probe() => probe,
                };
                match probe {
                    Ok(()) => self.health().set(true, ""),
                    Err(why) => {
                        self.health().set(false, &why);
                        tracing::debug!(reason = %why, "audit sink probe failed");
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;

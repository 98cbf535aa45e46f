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
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{Bus, BusError, Record};
use crate::config::{KafkaConfig, read_sasl_password};
use crate::sync::BoxFuture;

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

/// An error from making a client. librdkafka's text for a refused setting holds the value,
/// which may be the password: only the key is kept.
fn creation_error(e: KafkaError) -> BusError {
    match e {
        KafkaError::ClientConfig(_, _, key, _) => {
            BusError::Unavailable(format!("librdkafka refused the setting {key}"))
        }
        other => unavailable(other),
    }
}

/// The clients' context: librdkafka's global errors go to the log, those about credentials
/// and TLS with the config keys to check. librdkafka reports a failing connection once per
/// attempt, so these lines come at most as often as `reconnect.backoff.max.ms` allows.
#[derive(Debug)]
pub struct BusContext;

impl ClientContext for BusContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication) => tracing::error!(
                %reason,
                "Kafka refused this gateway's SASL credentials: check bus.kafka.sasl_username, \
                 sasl_password_file and sasl_mechanism against the broker's users"
            ),
            Some(RDKafkaErrorCode::SSL) => tracing::error!(
                %reason,
                "TLS with a Kafka broker failed: check that bus.kafka.ssl_ca_file holds the CA \
                 that signed the broker's certificate, that the certificate names the host \
                 dialled, and any client certificate (ssl_certificate_file, ssl_key_file)"
            ),
            _ => tracing::error!(%error, %reason, "Kafka client error"),
        }
    }
}

impl ConsumerContext for BusContext {}

/// The security settings of all three clients, from `[bus.kafka]` (validated at load).
fn security(config: &KafkaConfig, client: &mut ClientConfig) -> Result<(), BusError> {
    let protocol = config.security_protocol;
    client.set("security.protocol", protocol.librdkafka());
    if protocol.tls() {
        let identification = if config.ssl_endpoint_identification {
            "https"
        } else {
            "none"
        };
        client.set("ssl.endpoint.identification.algorithm", identification);
        for (setting, path) in [
            ("ssl.ca.location", &config.ssl_ca_file),
            ("ssl.certificate.location", &config.ssl_certificate_file),
            ("ssl.key.location", &config.ssl_key_file),
        ] {
            if !path.as_os_str().is_empty() {
                client.set(setting, path.to_string_lossy());
            }
        }
    }
    if protocol.sasl() {
        let password = read_sasl_password(&config.sasl_password_file)
            .map_err(|e| BusError::Unavailable(format!("bus.kafka.sasl_password_file: {e}")))?;
        client
            .set("sasl.mechanisms", config.sasl_mechanism.librdkafka())
            .set("sasl.username", &config.sasl_username)
            .set("sasl.password", password);
    }
    Ok(())
}

/// Warnings, at every start, for settings that leave the bus open to the network.
fn warn_if_exposed(config: &KafkaConfig) {
    let remote: Vec<&str> = config
        .brokers
        .split(',')
        .map(str::trim)
        .filter(|b| !on_loopback(b))
        .collect();
    if !config.security_protocol.tls() && !remote.is_empty() {
        tracing::warn!(
            brokers = ?remote,
            protocol = config.security_protocol.librdkafka(),
            "the registry bus travels without TLS to brokers that are not on loopback: anyone on \
             the path can read and change registrations (set bus.kafka.security_protocol = \"sasl_ssl\")"
        );
    }
    if config.security_protocol.tls() && !config.ssl_endpoint_identification {
        tracing::warn!(
            "bus.kafka.ssl_endpoint_identification is off: any certificate the CA signed is taken for any broker"
        );
    }
}

/// Whether a `host:port` bootstrap address is on loopback.
fn on_loopback(broker: &str) -> bool {
    let host = broker
        .rsplit_once(':')
        .map_or(broker, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
        let producer: FutureProducer<BusContext> = common
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger_ms.to_string())
            .set("message.timeout.ms", config.message_timeout_ms.to_string())
            .create_with_context(BusContext)
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
            .create_with_context(BusContext)
            .map_err(creation_error)?;
        let admin = common
            .create_with_context(BusContext)
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

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaConfRes;

    use super::*;

    #[test]
    fn an_error_about_a_setting_never_shows_its_value() {
        let refused = KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for configuration property \"sasl.password\"".to_owned(),
            "sasl.password".to_owned(),
            "hunter2".to_owned(),
        );
        // What rdkafka itself would print.
        assert!(refused.to_string().contains("hunter2"));
        let error = creation_error(refused).to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("sasl.password"), "{error}");
    }

    #[test]
    fn loopback_brokers_are_told_from_remote_ones() {
        for local in [
            "127.0.0.1:9092",
            "localhost:9092",
            "[::1]:9092",
            "127.8.9.1:1",
        ] {
            assert!(on_loopback(local), "{local}");
        }
        for remote in [
            "10.0.0.5:9092",
            "kafka:9092",
            "[2001:db8::1]:9092",
            "localhost.evil:1",
        ] {
            assert!(!on_loopback(remote), "{remote}");
        }
    }

    #[test]
    fn sasl_and_tls_keys_become_librdkafka_settings() {
        let dir = std::env::temp_dir().join(format!("switchyard-kafka-bus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let config = KafkaConfig {
            brokers: "127.0.0.1:9093".to_owned(),
            security_protocol: crate::config::KafkaSecurityProtocol::SaslSsl,
            sasl_username: "gateway".to_owned(),
            sasl_password_file: password.clone(),
            ssl_ca_file: dir.join("ca.pem"),
            ..KafkaConfig::default()
        };
        let mut client = ClientConfig::new();
        security(&config, &mut client).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.username"), Some("gateway"));
        assert_eq!(client.get("sasl.password"), Some("s3cret"));
        assert_eq!(
            client.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        assert_eq!(
            client.get("ssl.ca.location"),
            Some(dir.join("ca.pem").to_str().unwrap())
        );
        assert_eq!(client.get("ssl.certificate.location"), None);
        // A password file gone since the config was loaded: an error naming the key.
        let error = security(&config, &mut ClientConfig::new()).unwrap_err();
        assert!(
            error.to_string().contains("bus.kafka.sasl_password_file"),
            "{error}"
        );
    }
}

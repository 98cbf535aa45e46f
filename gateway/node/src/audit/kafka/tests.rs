use std::time::Duration;

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio_util::sync::CancellationToken;

use super::*;

fn settings() -> KafkaSinkSettings {
    KafkaSinkSettings {
        topic_requests: "switchyard.audit.requests".into(),
        topic_registry: "switchyard.audit.registry".into(),
        partitions: 6,
        delivery_timeout: Duration::from_millis(300),
        compression: "lz4".into(),
    }
}

/// A loopback address where nothing listens: a port the system gave and took back.
fn nobody_listens() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    addr.to_string()
}

fn unreachable_kafka(create_topic: bool) -> KafkaConfig {
    KafkaConfig {
        brokers: nobody_listens(),
        create_topic,
        request_timeout_ms: 300,
        ..KafkaConfig::default()
    }
}

fn record(stream: Stream, key: &str, bytes: usize) -> Outgoing {
    Outgoing {
        stream,
        key: key.to_owned(),
        payload: Bytes::from(vec![b'x'; bytes]),
    }
}

#[test]
fn settings_that_kafka_or_the_registry_would_suffer_are_refused() {
    let kafka = KafkaConfig::default();
    assert_eq!(settings().validate(&kafka), Ok(()));
    type Change = fn(&mut KafkaSinkSettings);
    let cases: [(Change, &str); 9] = [
        (
            |s| s.topic_requests = "switchyard.registry".into(),
            "is the registry topic",
        ),
        (
            |s| s.topic_registry = s.topic_requests.clone(),
            "must be different topics",
        ),
        (|s| s.topic_requests = String::new(), "1 to 249 characters"),
        (|s| s.topic_registry = "a/b".into(), "only ASCII letters"),
        (|s| s.partitions = 0, "audit.partitions"),
        (|s| s.partitions = PARTITIONS_MAX + 1, "audit.partitions"),
        (
            |s| s.delivery_timeout = Duration::ZERO,
            "audit.delivery_timeout_ms",
        ),
        (
            |s| s.delivery_timeout = Duration::from_secs(3600),
            "audit.delivery_timeout_ms",
        ),
        (|s| s.compression = "zstd".into(), "audit.compression"),
    ];
    for (change, expected) in cases {
        let mut s = settings();
        change(&mut s);
        let error = s.validate(&kafka).expect_err(expected);
        assert!(
            error.contains(expected),
            "{error:?} should say {expected:?}"
        );
        assert!(KafkaSink::new(&kafka, s).is_err());
    }
    let long = "t".repeat(TOPIC_CHARS_MAX + 1);
    assert!(check_topic(&long).is_err());
    assert!(check_topic(&long[1..]).is_ok());
}

#[test]
fn the_producer_is_idempotent_bounded_and_compressed() {
    let config = producer_config(&KafkaConfig::default(), &settings(), 1234).expect("config");
    for (key, value) in [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("compression.type", "lz4"),
        ("message.timeout.ms", "300"),
        ("queue.buffering.max.messages", "1234"),
        ("queue.buffering.max.kbytes", "16384"),
        ("message.max.bytes", "1000000"),
        ("linger.ms", "5"),
        ("security.protocol", "plaintext"),
    ] {
        assert_eq!(config.get(key), Some(value), "{key}");
    }
    for (name, expected) in [("none", "none"), ("gzip", "gzip"), ("lz4", "lz4")] {
        assert_eq!(compression_type(name), Ok(expected));
    }
}

#[test]
fn librdkafka_errors_map_onto_the_drop_reasons() {
    let produce = KafkaError::MessageProduction;
    assert_eq!(
        enqueue_error(&produce(RDKafkaErrorCode::QueueFull)),
        DropReason::QueueFull
    );
    assert_eq!(
        enqueue_error(&produce(RDKafkaErrorCode::MessageSizeTooLarge)),
        DropReason::TooLarge
    );
    assert_eq!(
        enqueue_error(&produce(RDKafkaErrorCode::UnknownTopic)),
        DropReason::Unavailable
    );
    assert_eq!(
        delivery_error(&produce(RDKafkaErrorCode::MessageTimedOut)),
        DropReason::DeliveryFailed
    );
    assert_eq!(
        delivery_error(&produce(RDKafkaErrorCode::UnknownTopicOrPartition)),
        DropReason::Unavailable
    );
    assert_eq!(
        delivery_error(&produce(RDKafkaErrorCode::MessageSizeTooLarge)),
        DropReason::TooLarge
    );
    assert_eq!(
        delivery_error(&produce(RDKafkaErrorCode::BrokerTransportFailure)),
        DropReason::DeliveryFailed
    );
}

#[test]
fn availability_follows_the_last_batch() {
    use DropReason::*;
    assert!(available_after(false, &[Ok(())]));
    assert!(!available_after(false, &[]));
    assert!(available_after(true, &[]));
    // A full queue or a record too large says nothing about Kafka.
    assert!(available_after(true, &[Err(QueueFull), Err(TooLarge)]));
    assert!(!available_after(false, &[Err(QueueFull)]));
    // A failure to reach Kafka wins over the records that made it before it.
    assert!(!available_after(true, &[Ok(()), Err(DeliveryFailed)]));
    assert!(!available_after(true, &[Err(Unavailable)]));
}

#[tokio::test]
async fn librdkafkas_queue_is_bounded_and_records_fail_within_the_delivery_timeout() {
    // With topic creation off the records go straight to librdkafka's queue, which holds 3;
    // nothing listens, so those 3 time out after the delivery timeout (300 ms).
    let kafka = unreachable_kafka(false);
    let sink = KafkaSink::with_queue(&kafka, settings(), 3).expect("sink");
    assert!(!sink.available(), "nothing is known before a probe");
    let batch = (0..5)
        .map(|i| record(Stream::Requests, &format!("r{i}"), 10))
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(10), sink.deliver(batch))
        .await
        .expect("a batch resolves within the delivery timeout and its grace");
    use DropReason::*;
    assert_eq!(
        results,
        [
            Err(DeliveryFailed),
            Err(DeliveryFailed),
            Err(DeliveryFailed),
            Err(QueueFull),
            Err(QueueFull)
        ]
    );
    assert!(!sink.available());
}

#[tokio::test]
async fn a_record_over_the_message_bound_is_too_large_at_once() {
    let kafka = unreachable_kafka(false);
    let sink = KafkaSink::new(&kafka, settings()).expect("sink");
    let results = tokio::time::timeout(
        Duration::from_secs(10),
        sink.deliver(vec![record(Stream::Registry, "s/i", MESSAGE_BYTES_MAX + 1)]),
    )
    .await
    .expect("refused before it is queued");
    assert_eq!(results, [Err(DropReason::TooLarge)]);
}

#[tokio::test]
async fn topics_that_cannot_be_created_make_the_batch_unavailable() {
    let kafka = unreachable_kafka(true);
    let sink = KafkaSink::new(&kafka, settings()).expect("sink");
    let batch = vec![
        record(Stream::Requests, "a", 10),
        record(Stream::Registry, "s/i", 10),
    ];
    let results = tokio::time::timeout(Duration::from_secs(15), sink.deliver(batch))
        .await
        .expect("topic creation is bounded by bus.kafka.request_timeout_ms");
    assert_eq!(results, [Err(DropReason::Unavailable); 2]);
    assert!(!sink.available());
}

#[tokio::test]
async fn the_probe_keeps_an_unreachable_sink_unavailable_and_stops_when_told() {
    let kafka = unreachable_kafka(false);
    let sink = std::sync::Arc::new(KafkaSink::new(&kafka, settings()).expect("sink"));
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let sink = sink.clone();
        let stop = stop.clone();
        async move { sink.run(stop).await }
    });
    // The first probe starts at once; a failed one is bounded by the request timeout.
    let probed = tokio::time::timeout(Duration::from_secs(10), async {
        while sink.probe().await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(probed.is_ok(), "a probe of nobody fails within its bound");
    assert!(!sink.available());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("run ends on stop")
        .expect("run does not panic");
}

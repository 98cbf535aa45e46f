//! The Kafka side of `switchyard audit tail`: where each partition starts and ends, and the
//! loop that polls, decodes, filters and prints.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use switchyard::bus::kafka::{BusContext, creation_error, security};
use switchyard::config::{self, BusKind, Config, KafkaConfig};
use switchyard::seams::{Clock as _, SystemClock};
use switchyard_proto::audit::AuditRecord;

use super::format::{self, Position};
use super::{Filter, TailArgs};

/// The topics' names when no `--config` gives them: `[audit]`'s defaults.
pub const TOPIC_REQUESTS: &str = "switchyard.audit.requests";
pub const TOPIC_REGISTRY: &str = "switchyard.audit.registry";
/// librdkafka's `queued.max.messages.kbytes`: what the reader fetches ahead of printing.
pub const PREFETCH_KBYTES_MAX: usize = 16 * 1024;
/// librdkafka's `fetch.max.bytes`: the most one fetch response brings.
pub const FETCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// The most partitions read.
pub const PARTITIONS_MAX: usize = 1024;
/// How long one poll waits, ms.
pub const POLL_MS: u64 = 500;
/// Without `--follow`: empty polls in a row (of [`POLL_MS`]) after which the end is given up.
pub const IDLE_POLLS_MAX: u32 = 60;
/// Broker requests (metadata, offsets for times, watermarks), ms.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// The version of the record format this reader knows.
pub const VERSION: u32 = 1;

/// What one Kafka record comes to.
#[derive(Debug, PartialEq)]
pub enum Rendered {
    /// A line to print (without its line break).
    Print(String),
    /// Left out by the filter.
    Filtered,
    /// Not a record this reader can show: why, for stderr.
    Skipped(String),
}

/// Decodes, checks the version, filters and formats one record's value.
pub fn render(payload: Option<&[u8]>, at: Position<'_>, filter: &Filter, json: bool) -> Rendered {
    let where_ = format!("{}/{} offset {}", at.topic, at.partition, at.offset);
    let Some(payload) = payload else {
        return Rendered::Skipped(format!("{where_}: a record without a value"));
    };
    let record = match AuditRecord::decode(payload) {
        Ok(record) => record,
        Err(e) => return Rendered::Skipped(format!("{where_}: not an audit record ({e})")),
    };
    if record.version != VERSION {
        return Rendered::Skipped(format!(
            "{where_}: audit record version {} (this reader knows {VERSION})",
            record.version
        ));
    }
    if !filter.admits(&record) {
        return Rendered::Filtered;
    }
    if json {
        Rendered::Print(format::json(&record, at).to_string())
    } else {
        Rendered::Print(format::line(&record))
    }
}

/// The brokers and security settings, and the topic to read.
fn source(args: &TailArgs) -> anyhow::Result<(KafkaConfig, String)> {
    let Some(path) = &args.config else {
        let kafka = KafkaConfig {
            brokers: args.brokers.clone().unwrap_or_default(),
            ..KafkaConfig::default()
        };
        let topic = if args.registry {
            TOPIC_REGISTRY
        } else {
            TOPIC_REQUESTS
        };
        return Ok((kafka, topic.to_owned()));
    };
    let overrides = config::env_overrides(std::env::vars());
    let config = Config::load(Some(path), &overrides)?;
    if config.bus.kind != BusKind::Kafka {
        anyhow::bail!(
            "{}: bus.kind is not \"kafka\": the audit topics are on the brokers of [bus.kafka]",
            path.display()
        );
    }
    let (requests, registry) = topics(&config);
    let topic = if args.registry { registry } else { requests };
    Ok((config.bus.kafka, topic))
}

/// The audit topics a configuration names.
fn topics(config: &Config) -> (String, String) {
    (
        config.audit.topic_requests.clone(),
        config.audit.topic_registry.clone(),
    )
}

fn consumer(kafka: &KafkaConfig) -> anyhow::Result<BaseConsumer<BusContext>> {
    if kafka.brokers.trim().is_empty() {
        anyhow::bail!("no brokers: give --brokers or a --config with bus.kafka.brokers");
    }
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", "switchyard-audit-tail")
        // Required by librdkafka for a consumer; nothing is committed or joined under it:
        // partitions are assigned directly.
        .set("group.id", "switchyard-audit-tail")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "queued.max.messages.kbytes",
            PREFETCH_KBYTES_MAX.to_string(),
        )
        .set("fetch.max.bytes", FETCH_BYTES_MAX.to_string())
        // librdkafka wants room for a response's framing beyond its fetch bound.
        .set(
            "receive.message.max.bytes",
            (FETCH_BYTES_MAX + 1024 * 1024).to_string(),
        );
    security(kafka, &mut client)?;
    client
        .create_with_context(BusContext::new())
        .map_err(|e| anyhow::anyhow!(creation_error(e)))
}

/// Each partition's first offset to read (`None`: nothing since `since_ms`) and its
/// high-water mark now.
type Plan = BTreeMap<i32, (Option<i64>, i64)>;

fn plan(consumer: &BaseConsumer<BusContext>, topic: &str, since_ms: i64) -> anyhow::Result<Plan> {
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .context("cannot read the topic's metadata from Kafka")?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        anyhow::bail!("Kafka does not know the topic {topic}");
    };
    if let Some(error) = found.error() {
        anyhow::bail!(
            "topic {topic}: {:?} (no gateway with auditing on has written to it yet?)",
            rdkafka::types::RDKafkaErrorCode::from(error)
        );
    }
    let partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    if partitions.len() > PARTITIONS_MAX {
        anyhow::bail!(
            "topic {topic} has {} partitions; this reader reads at most {PARTITIONS_MAX}",
            partitions.len()
        );
    }
    let mut times = TopicPartitionList::new();
    for &p in &partitions {
        times.add_partition_offset(topic, p, Offset::Offset(since_ms))?;
    }
    let starts = consumer
        .offsets_for_times(times, timeout)
        .context("cannot find the offsets for --since")?;
    let mut plan = Plan::new();
    for element in starts.elements() {
        let start = match element.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        };
        let (_, high) = consumer
            .fetch_watermarks(topic, element.partition(), timeout)
            .context("cannot read the partitions' ends")?;
        plan.insert(element.partition(), (start, high));
    }
    Ok(plan)
}

pub fn tail(args: &TailArgs, filter: &Filter) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .try_init();
    let (kafka, topic) = source(args)?;
    let consumer = consumer(&kafka)?;
    let now_ms = SystemClock.now_ms();
    let since_ms = i64::try_from(now_ms.saturating_sub(args.since.saturating_mul(1000)))?;
    let plan = plan(&consumer, &topic, since_ms)?;

    let mut assignment = TopicPartitionList::new();
    // Without --follow: the partitions still to read, each up to its high-water mark.
    let mut remaining = BTreeMap::new();
    for (&partition, &(start, high)) in &plan {
        let offset = match start {
            Some(o) => {
                if o < high {
                    remaining.insert(partition, high);
                }
                Offset::Offset(o)
            }
            None => Offset::End,
        };
        assignment.add_partition_offset(&topic, partition, offset)?;
    }
    consumer.assign(&assignment)?;

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut idle_polls = 0u32;
    loop {
        if args.limit.is_some_and(|limit| printed >= limit)
            || (!args.follow && remaining.is_empty())
        {
            break;
        }
        let message = match consumer.poll(Duration::from_millis(POLL_MS)) {
            None => {
                idle_polls += 1;
                if !args.follow && idle_polls >= IDLE_POLLS_MAX {
                    anyhow::bail!(
                        "nothing read from Kafka for {} s before the end of {topic}",
                        u64::from(IDLE_POLLS_MAX) * POLL_MS / 1000
                    );
                }
                if args.follow && flush(&mut out).is_err() {
                    return Ok(());
                }
                continue;
            }
            // librdkafka reconnects by itself; its errors are reports.
            Some(Err(error)) => {
                eprintln!("switchyard audit tail: Kafka: {error}");
                continue;
            }
            Some(Ok(message)) => message,
        };
        idle_polls = 0;
        let (partition, offset) = (message.partition(), message.offset());
        if remaining
            .get(&partition)
            .is_some_and(|&end| offset + 1 >= end)
        {
            remaining.remove(&partition);
        }
        let at = Position {
            topic: &topic,
            partition,
            offset,
        };
        match render(message.payload(), at, filter, args.json) {
            Rendered::Print(line) => {
                printed += 1;
                if writeln!(out, "{line}").is_err() {
                    // The reader went away (`| head`): nothing more to do.
                    return Ok(());
                }
                if args.follow && flush(&mut out).is_err() {
                    return Ok(());
                }
            }
            Rendered::Filtered => {}
            Rendered::Skipped(why) => eprintln!("switchyard audit tail: skipped {why}"),
        }
    }
    let _ = flush(&mut out);
    Ok(())
}

fn flush(out: &mut impl std::io::Write) -> std::io::Result<()> {
    out.flush()
}

//! `switchyard audit tail`: reads an audit topic for people (one line per record) or for
//! programs (`--json`, one object per line). It reads every partition from the offsets of
//! `--since` ago, with no consumer group and no committed offsets, so it changes nothing on
//! the brokers; without `--follow` it stops at the end of what the topic held when it began.
//!
//! Bounded: records are printed as they come, one at a time; librdkafka's prefetch and each
//! fetch are capped (`read::PREFETCH_KBYTES_MAX`, `read::FETCH_BYTES_MAX`); a topic with more partitions than `read::PARTITIONS_MAX` is
//! refused; without `--follow`, `read::IDLE_POLLS_MAX` empty polls in a row before the end is
//! reached is an error rather than a wait forever. A record that does not decode, or whose
//! version is not 1, is reported on stderr and skipped.

use std::path::PathBuf;

use clap::{Args, Subcommand};

mod filter;
#[cfg(feature = "kafka")]
mod format;
#[cfg(feature = "kafka")]
mod read;
#[cfg(all(test, feature = "kafka"))]
mod tests;

#[cfg(feature = "kafka")]
pub use filter::Filter;
pub use filter::{StatusFilter, parse_since, parse_status};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print audit records from Kafka: by default the requests of the last 10 minutes.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Bootstrap brokers, comma-separated `host:port` (plaintext; use --config for TLS and SASL).
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    pub brokers: Option<String>,
    /// A gateway's TOML configuration: `[bus.kafka]` (brokers, TLS, SASL) and the topic names
    /// of `[audit]`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Read the registry topic instead of the requests topic.
    #[arg(long)]
    pub registry: bool,
    /// Only records of this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only requests answered with this status: a class (`5xx`) or a code (`404`).
    #[arg(long, value_parser = parse_status)]
    pub status: Option<StatusFilter>,
    /// From how long ago: `30s`, `10m`, `2h`, `1d`.
    #[arg(long, default_value = "10m", value_parser = parse_since)]
    pub since: u64,
    /// Keep reading records as they come (until interrupted).
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line, every field.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many records.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

impl TailArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.registry && self.status.is_some() {
            anyhow::bail!("--status applies to requests; registry records have no status");
        }
        Ok(())
    }
}

pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Tail(args) => tail(&args),
    }
}

#[cfg(feature = "kafka")]
fn tail(args: &TailArgs) -> anyhow::Result<()> {
    args.check()?;
    let filter = Filter {
        service: args.service.clone(),
        status: args.status,
    };
    read::tail(args, &filter)
}

#[cfg(not(feature = "kafka"))]
fn tail(args: &TailArgs) -> anyhow::Result<()> {
    args.check()?;
    anyhow::bail!(
        "switchyard audit tail reads Kafka: this binary was built without the kafka feature"
    )
}

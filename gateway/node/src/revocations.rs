//! Revoked public tokens, shared between the gateways through Redis: the
//! [`RevocationList`] a verified token is checked against, kept current in memory.
//!
//! A revocation is a [`Record`] under its own key in Redis, expiring with the token (`SET …
//! EXAT exp`; for a subject, the revocation time plus `revocation.token_lifetime_max_s`),
//! published on one channel when it is made. Every gateway keeps a local [`Copy`], fed by
//! its subscription to that channel and by a full resync (`SCAN` of the keys, `MGET` of
//! their values) at once after each new subscription and every `revocation.resync_interval_ms`,
//! so a message missed while the subscription was down is repaired. The copy only ever gains
//! entries (and drops the expired): a revocation cannot be undone before it expires.
//!
//! `check` answers from memory. The copy vouches for itself while it was confirmed current
//! within `revocation.stale_after_ms`: by a resync, or by a heartbeat `PING` answered on a
//! subscription that a resync followed. Past that, a token it does not list is
//! [`Revocation::Unknown`] and the token's provider fails open or closed. A token it lists is
//! [`Revocation::Revoked`] however old the copy.

pub mod copy;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use switchyard_core::GatewayError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::copy::{Added, Copy, Found, Kind, Position, Record};
use crate::config::RevocationConfig;
use crate::redis::{Redis, RedisError};
use crate::revocation::{Revocation, RevocationList, TokenFacts};
use crate::seams::Clock;
use crate::sync::{read, write};
use crate::telemetry::metrics::{gauge, header};

/// Longest record accepted from Redis or a message, in bytes.
pub const RECORD_BYTES_MAX: usize = 2 * 1024;
/// Keys asked for per `SCAN` call.
const SCAN_COUNT: usize = 1_000;
/// The first wait before subscribing again; it doubles up to [`RESUBSCRIBE_BACKOFF_MAX`].
const RESUBSCRIBE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Where an entry of the copy came from, the `source` label of
/// `switchyard_revocations_applied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A message on the channel.
    Pubsub = 0,
    /// A resync's scan.
    Resync = 1,
    /// A revocation made through this gateway.
    Local = 2,
}

const SOURCES: [&str; 3] = ["pubsub", "resync", "local"];
const OUTCOMES: [&str; 3] = ["clear", "revoked", "unknown"];

#[derive(Debug, Default)]
struct Counters {
    applied: [AtomicU64; 3],
    refused_full: AtomicU64,
    invalid: AtomicU64,
    checks: [AtomicU64; 3],
    resyncs_ok: AtomicU64,
    resyncs_failed: AtomicU64,
}

/// A revocation asked for on the control listener (`POST /v1/revocations`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub issuer: String,
    #[serde(default)]
    pub token_id: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    /// Unix seconds: the token's `exp` (required for a token id); for a subject, at most the
    /// default, the revocation time plus `revocation.token_lifetime_max_s`.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// A revocation made: the record and whether the other gateways were told at once (else they
/// read it at their next resync).
#[derive(Debug, Clone)]
pub struct Revoked {
    pub record: Record,
    pub published: bool,
}

/// The revocation list of one gateway (see the module docs).
pub struct Revocations {
    config: RevocationConfig,
    redis: Arc<Redis>,
    clock: Arc<dyn Clock>,
    copy: RwLock<Copy>,
    /// `confirmed_ms` counts from here.
    base: Instant,
    /// When the copy was last confirmed current, in ms after `base`, plus one; 0: never.
    confirmed_ms: AtomicU64,
    key_prefix: String,
    channel: String,
    counters: Counters,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("held", &read(&self.copy).len())
            .field("current", &self.is_current())
            .finish_non_exhaustive()
    }
}

impl RevocationList for Revocations {
    fn check(&self, token: &TokenFacts<'_>) -> Revocation {
        let found = read(&self.copy).check(token, self.now_s());
        let answer = match found {
            Found::Revoked => Revocation::Revoked,
            Found::Incomplete => Revocation::Unknown,
            Found::NotListed if self.is_current() => Revocation::Clear,
            Found::NotListed => Revocation::Unknown,
        };
        let outcome = match answer {
            Revocation::Clear => 0,
            Revocation::Revoked => 1,
            Revocation::Unknown => 2,
        };
        self.counters.checks[outcome].fetch_add(1, Ordering::Relaxed);
        answer
    }
}

impl Revocations {
    pub fn new(config: &RevocationConfig, redis: Arc<Redis>, clock: Arc<dyn Clock>) -> Self {
        let prefix = redis.key_prefix().to_owned();
        Self {
            config: config.clone(),
            redis,
            clock,
            copy: RwLock::new(Copy::new(config.entries_max)),
            base: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
            key_prefix: format!("{prefix}revoked:"),
            channel: format!("{prefix}revocations"),
            counters: Counters::default(),
        }
    }

    fn now_s(&self) -> u64 {
        self.clock.now_ms() / 1_000
    }

    /// How long ago the copy was last confirmed current; `None`: never.
    pub fn copy_age(&self) -> Option<Duration> {
        match self.confirmed_ms.load(Ordering::Acquire) {
            0 => None,
            at => {
                let confirmed = self.base + Duration::from_millis(at - 1);
                Some(Instant::now().saturating_duration_since(confirmed))
            }
        }
    }

    /// Whether the copy was confirmed current within `revocation.stale_after_ms`.
    pub fn is_current(&self) -> bool {
        self.copy_age()
            .is_some_and(|age| age <= Duration::from_millis(self.config.stale_after_ms))
    }

    /// Records that the copy held everything Redis held as of `at`.
    fn confirm(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.base).as_millis() as u64 + 1;
        self.confirmed_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Revocations held.
    pub fn held(&self) -> usize {
        read(&self.copy).len()
    }

    /// Offers one record to the copy, counting what became of it.
    pub fn apply(&self, record: &Record, source: Source) -> Added {
        let added = write(&self.copy).add(record, self.now_s());
        match added {
            Added::New => {
                self.counters.applied[source as usize].fetch_add(1, Ordering::Relaxed);
            }
            Added::Full => {
                self.counters.refused_full.fetch_add(1, Ordering::Relaxed);
            }
            Added::Invalid => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
            }
            Added::Known | Added::Expired => {}
        }
        added
    }

    /// A record from bytes read from Redis or a message; `None` (counted) if it is too long or
    /// not one.
    fn parse(&self, bytes: &[u8]) -> Option<Record> {
        let record = (bytes.len() <= RECORD_BYTES_MAX)
            .then(|| serde_json::from_slice::<Record>(bytes).ok())
            .flatten()
            .filter(|r| r.validate().is_ok());
        if record.is_none() {
            self.counters.invalid.fetch_add(1, Ordering::Relaxed);
        }
        record
    }

    /// The Redis key of a revocation: the prefix, the kind, and a hash of issuer and name (so
    /// that any issuer and name make a key of bounded length).
    pub fn key(&self, kind: Kind, issuer: &str, name: &str) -> String {
        let mut hash = Sha256::new();
        hash.update(issuer.as_bytes());
        hash.update([0]);
        hash.update(name.as_bytes());
        let digest: String = hash.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let kind = match kind {
            Kind::Token => 't',
            Kind::Subject => 's',
        };
        format!("{}{kind}:{digest}", self.key_prefix)
    }

    /// The channel revocations are published on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Makes a revocation: checks it, stores it in Redis to expire with what it covers,
    /// publishes it, and applies it here. Bad input or a Redis that does not take it changes
    /// nothing; a publication that fails leaves the other gateways to read it at their next
    /// resync (`published: false`).
    pub async fn revoke(&self, request: RevokeRequest) -> Result<Revoked, GatewayError> {
        let record = self.record_of(request)?;
        let (kind, name) = record
            .validate()
            .map_err(|reason| GatewayError::InvalidArgument {
                field: "body",
                reason,
            })?;
        let key = self.key(kind, &record.issuer, name);
        let value = serde_json::to_string(&record).unwrap_or_default();
        let unavailable = |e: RedisError| GatewayError::NotReady {
            detail: format!("the revocation was not stored: {e}"),
        };
        let mut set = ::redis::cmd("SET");
        set.arg(&key)
            .arg(&value)
            .arg("EXAT")
            .arg(record.expires_at_s);
        self.redis.query::<()>(&set).await.map_err(unavailable)?;
        self.apply(&record, Source::Local);
        let mut publish = ::redis::cmd("PUBLISH");
        publish.arg(&self.channel).arg(&value);
        let published = match self.redis.query::<u64>(&publish).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "revocation stored but not published: the other gateways read it at their next resync");
                false
            }
        };
        tracing::info!(issuer = %record.issuer, kind = kind.as_str(), expires_at_s = record.expires_at_s, published, "revocation made");
        Ok(Revoked { record, published })
    }

    /// The record a request asks for, its times checked against now and the lifetime bound.
    fn record_of(&self, request: RevokeRequest) -> Result<Record, GatewayError> {
        let now_s = self.now_s();
        let latest = now_s + self.config.token_lifetime_max_s;
        let invalid =
            |field: &'static str, reason: String| GatewayError::InvalidArgument { field, reason };
        let expires_at_s = match (&request.token_id, &request.subject, request.expires_at) {
            (Some(_), None, None) => {
                return Err(invalid(
                    "expires_at",
                    "a token id's revocation needs the token's exp (Unix seconds)".to_owned(),
                ));
            }
            (None, Some(_), None) => latest,
            (_, _, Some(at)) => at,
            _ => {
                return Err(invalid(
                    "body",
                    "exactly one of token_id and subject is required".to_owned(),
                ));
            }
        };
        if expires_at_s <= now_s || expires_at_s > latest {
            return Err(invalid(
                "expires_at",
                format!(
                    "must lie after now ({now_s}) and at most revocation.token_lifetime_max_s ({}) later",
                    self.config.token_lifetime_max_s
                ),
            ));
        }
        Ok(Record {
            issuer: request.issuer,
            token_id: request.token_id,
            subject: request.subject,
            revoked_at_s: now_s,
            expires_at_s,
        })
    }

    /// Up to `limit` (at most `revocation.list_max`) revocations of the copy after `after`.
    pub fn list(&self, after: Option<&Position>, limit: usize) -> (Vec<Record>, Option<Position>) {
        let limit = limit.clamp(1, self.config.list_max);
        read(&self.copy).list(after, limit)
    }

    /// The most a page lists.
    pub fn list_max(&self) -> usize {
        self.config.list_max
    }

    /// Reads every revocation key from Redis into the copy, then drops what expired. On
    /// success the copy is confirmed current as of the start of the scan.
    pub async fn resync(&self) -> Result<usize, RedisError> {
        let started = Instant::now();
        let pattern = format!("{}*", self.key_prefix);
        // Enough rounds for `entries_max` keys with room for SCAN's uneven pages; a keyspace
        // that needs more is not scanned to the end, and the copy is not confirmed.
        let rounds_max = self.config.entries_max / SCAN_COUNT * 4 + 64;
        let (mut cursor, mut rounds, mut read_records) = (0u64, 0usize, 0usize);
        let mut refused = false;
        loop {
            let mut scan = ::redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) =
                self.redis.query(&scan).await.inspect_err(|_| {
                    self.counters.resyncs_failed.fetch_add(1, Ordering::Relaxed);
                })?;
            if !keys.is_empty() {
                let mut mget = ::redis::cmd("MGET");
                mget.arg(&keys);
                let values: Vec<Option<Vec<u8>>> =
                    self.redis.query(&mget).await.inspect_err(|_| {
                        self.counters.resyncs_failed.fetch_add(1, Ordering::Relaxed);
                    })?;
                for value in values.into_iter().flatten() {
                    if let Some(record) = self.parse(&value) {
                        read_records += 1;
                        refused |= self.apply(&record, Source::Resync) == Added::Full;
                    }
                }
            }
            cursor = next;
            rounds += 1;
            if cursor == 0 {
                break;
            }
            if rounds >= rounds_max {
                self.counters.resyncs_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    rounds,
                    "revocation resync stopped: more keys than revocation.entries_max allows for"
                );
                return Err(RedisError::Response("too many revocation keys".to_owned()));
            }
        }
        {
            let mut copy = write(&self.copy);
            copy.purge(self.now_s());
            copy.settle(refused);
        }
        self.counters.resyncs_ok.fetch_add(1, Ordering::Relaxed);
        self.confirm(started);
        Ok(read_records)
    }

    /// Follows the channel until `stop`: subscribes, resyncs, applies every message, pings the
    /// subscription every `heartbeat_interval_ms` and resyncs every `resync_interval_ms`; after
    /// a lost subscription, subscribes again with a doubling back-off.
    pub async fn run(&self, stop: CancellationToken) {
        let mut backoff = RESUBSCRIBE_BACKOFF_MIN;
        loop {
            let lost = tokio::select! {
                () = stop.cancelled() => return,
                lost = self.follow() => lost,
            };
            if lost.synced {
                backoff = RESUBSCRIBE_BACKOFF_MIN;
            }
            tracing::warn!(
                reason = lost.reason,
                retry_ms = backoff.as_millis() as u64,
                "revocation subscription lost"
            );
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RESUBSCRIBE_BACKOFF_MAX);
        }
    }

    /// One subscription, until it is lost.
    async fn follow(&self) -> Lost {
        let heartbeat_every = Duration::from_millis(self.config.heartbeat_interval_ms);
        let lost = |reason: &'static str, synced: bool| Lost { reason, synced };
        let pubsub = match self.redis.pubsub().await {
            Ok(pubsub) => pubsub,
            Err(_) => return lost("cannot connect", false),
        };
        let (mut sink, mut stream) = pubsub.split();
        match tokio::time::timeout(heartbeat_every, sink.subscribe(&self.channel)).await {
            Ok(Ok(())) => {}
            _ => return lost("cannot subscribe", false),
        }
        // Subscribed first, then the scan: whatever was published before the subscription is
        // in Redis for the scan to read.
        let mut synced = self.resync().await.is_ok();
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let resync_every = Duration::from_millis(self.config.resync_interval_ms);
        let mut resync = tokio::time::interval_at(Instant::now() + resync_every, resync_every);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => {
                        if let Some(record) = self.parse(message.get_payload_bytes()) {
                            self.apply(&record, Source::Pubsub);
                        }
                    }
                    None => return lost("the subscription's connection closed", synced),
                },
                _ = heartbeat.tick() => {
                    let sent = Instant::now();
                    match tokio::time::timeout(heartbeat_every, sink.ping::<::redis::Value>()).await {
                        Ok(Ok(_)) if synced => self.confirm(sent),
                        Ok(Ok(_)) => synced = self.resync().await.is_ok(),
                        _ => return lost("heartbeat unanswered", synced),
                    }
                }
                _ = resync.tick() => {
                    // A failed periodic resync loses nothing while the subscription holds.
                    let ok = self.resync().await.is_ok();
                    synced |= ok;
                }
            }
        }
    }

    /// Writes the revocation metrics in the Prometheus text format.
    pub fn encode_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        gauge(
            out,
            "switchyard_revocations_held",
            "Revocations (token ids and subjects) in this gateway's copy.",
            self.held(),
        );
        gauge(
            out,
            "switchyard_revocation_copy_current",
            "1 while the copy of revocations was confirmed current within revocation.stale_after_ms.",
            u8::from(self.is_current()),
        );
        gauge(
            out,
            "switchyard_revocation_copy_age_ms",
            "Time since the copy of revocations was last confirmed current (since start if never).",
            self.copy_age()
                .unwrap_or_else(|| self.base.elapsed())
                .as_millis(),
        );
        let name = "switchyard_revocations_applied_total";
        header(
            out,
            name,
            "counter",
            "Revocations added to this gateway's copy, by source (pubsub, resync, local).",
        );
        for (source, count) in SOURCES.iter().zip(&self.counters.applied) {
            let _ = writeln!(
                out,
                "{name}{{source=\"{source}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let name = "switchyard_revocations_refused_total";
        header(
            out,
            name,
            "counter",
            "Revocations not added to the copy: full (revocation.entries_max) or invalid.",
        );
        let _ = writeln!(
            out,
            "{name}{{reason=\"full\"}} {}",
            self.counters.refused_full.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{reason=\"invalid\"}} {}",
            self.counters.invalid.load(Ordering::Relaxed)
        );
        let name = "switchyard_revocation_checks_total";
        header(out, name, "counter", "Revocation checks, by outcome.");
        for (outcome, count) in OUTCOMES.iter().zip(&self.counters.checks) {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{outcome}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let name = "switchyard_revocation_resyncs_total";
        header(
            out,
            name,
            "counter",
            "Full resyncs of the copy from Redis, by outcome.",
        );
        let _ = writeln!(
            out,
            "{name}{{outcome=\"failed\"}} {}",
            self.counters.resyncs_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{outcome=\"ok\"}} {}",
            self.counters.resyncs_ok.load(Ordering::Relaxed)
        );
    }
}

/// Why a subscription ended, and whether it had been followed by a resync.
#[derive(Debug)]
struct Lost {
    reason: &'static str,
    synced: bool,
}

//! The gateways' Redis client: one multiplexed connection kept open in the background, every
//! command bounded by `redis.command_timeout_ms`, and a [`Breaker`] in front, so that while
//! Redis is down or slow a caller fails at once instead of waiting out a timeout per request.
//!
//! A call never connects: it takes the connection in hand, or fails with
//! [`RedisError::NotConnected`] at once. The connection is made and remade by [`Redis::run`],
//! bounded by `redis.connect_timeout_ms`, after a broken connection or an opened breaker, with
//! a back-off that doubles from 100 ms up to the breaker's cool-down. So the longest a caller
//! ever waits on Redis is one command timeout, and while the breaker is open, nothing.
//!
//! Pub/sub needs a connection of its own ([`Redis::pubsub`]); its owner keeps it.
//!
//! Metrics (read at scrape time, [`Redis::encode_metrics`]): `switchyard_redis_up`,
//! `switchyard_redis_breaker_open`, `switchyard_redis_failures_total{kind}`,
//! `switchyard_redis_short_circuits_total` and `switchyard_redis_connects_total{outcome}`.

pub mod breaker;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSub};
use ::redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisResult};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::breaker::{Admit, Breaker};
use crate::config::RedisConfig;
use crate::sync::{lock, read, write};
use crate::telemetry::metrics::{gauge, header};

/// The first wait before connecting again after a failed attempt; it doubles per failure up
/// to the breaker's cool-down.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Why a Redis call failed. None carries a value sent to or read from Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// The breaker is open: Redis failed recently and is not asked until the cool-down ends.
    #[error("Redis is unavailable (breaker open)")]
    BreakerOpen,
    /// No connection is open at the moment (being made in the background).
    #[error("no connection to Redis")]
    NotConnected,
    /// No answer within `redis.command_timeout_ms` (or, connecting, `connect_timeout_ms`).
    #[error("Redis did not answer in time")]
    Timeout,
    /// The connection failed or broke.
    #[error("connection to Redis failed: {0}")]
    Io(String),
    /// Redis answered with an error, or an answer of an unexpected type.
    #[error("Redis refused the command: {0}")]
    Response(String),
}

/// The `kind` label of `switchyard_redis_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    NotConnected = 0,
    Timeout = 1,
    Io = 2,
    Response = 3,
}

const FAILURE_KINDS: [&str; 4] = ["not_connected", "timeout", "io", "response"];

impl RedisError {
    fn of(error: &::redis::RedisError) -> Self {
        if error.is_timeout() {
            RedisError::Timeout
        } else if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error()
        {
            RedisError::Io(format!("{:?}", error.kind()))
        } else {
            // The server's message may quote the command; the kind and code are enough.
            RedisError::Response(format!("{:?} {}", error.kind(), error.code().unwrap_or("")))
        }
    }

    fn kind(&self) -> Option<FailureKind> {
        match self {
            RedisError::BreakerOpen => None,
            RedisError::NotConnected => Some(FailureKind::NotConnected),
            RedisError::Timeout => Some(FailureKind::Timeout),
            RedisError::Io(_) => Some(FailureKind::Io),
            RedisError::Response(_) => Some(FailureKind::Response),
        }
    }

    /// Whether the connection should be dropped and made again.
    fn breaks_connection(&self) -> bool {
        matches!(self, RedisError::Io(_))
    }
}

#[derive(Debug, Default)]
struct Counters {
    failures: [AtomicU64; 4],
    short_circuits: AtomicU64,
    connects_ok: AtomicU64,
    connects_failed: AtomicU64,
}

/// The gateways' Redis client (see the module docs).
pub struct Redis {
    client: Client,
    connection: RwLock<Option<MultiplexedConnection>>,
    breaker: Mutex<Breaker>,
    command_timeout: Duration,
    connect_timeout: Duration,
    cooldown: Duration,
    key_prefix: String,
    /// Wakes [`Redis::run`] to connect again.
    reconnect: Notify,
    counters: Counters,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// The client `[redis]` describes, its password read from its file now; `Ok(None)` when
    /// no URL is set. Nothing is dialled until [`Redis::run`].
    pub fn from_config(config: &RedisConfig) -> Result<Option<Self>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        config
            .validate()
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("redis.url: cannot be read ({:?})", e.kind()))?;
        let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
        if !config.username.is_empty() {
            settings = settings.set_username(&config.username);
        }
        if let Some(password) = config
            .password()
            .map_err(|m| format!("redis.password_file: {m}"))?
        {
            settings = settings.set_password(password);
        }
        let client = Client::open(info.set_redis_settings(settings))
            .map_err(|e| format!("redis.url: {:?}", e.kind()))?;
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let cooldown = Duration::from_millis(config.breaker_cooldown_ms);
        Ok(Some(Self {
            client,
            connection: RwLock::new(None),
            breaker: Mutex::new(Breaker::new(
                config.breaker_failures,
                cooldown,
                command_timeout,
            )),
            command_timeout,
            connect_timeout,
            cooldown,
            key_prefix: config.key_prefix.clone(),
            reconnect: Notify::new(),
            counters: Counters::default(),
        }))
    }

    /// The prefix of every key and channel (`redis.key_prefix`).
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The bound on one command's wait.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Connected, and the breaker closed.
    pub fn is_up(&self) -> bool {
        read(&self.connection).is_some() && lock(&self.breaker).is_closed()
    }

    /// Runs one command.
    pub async fn query<T: ::redis::FromRedisValue + Send>(
        &self,
        cmd: &::redis::Cmd,
    ) -> Result<T, RedisError> {
        self.call(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs a pipeline (a `MULTI`/`EXEC` one when built with `atomic()`).
    pub async fn query_pipeline<T: ::redis::FromRedisValue + Send>(
        &self,
        pipeline: &::redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.call(|mut c| async move { pipeline.query_async(&mut c).await })
            .await
    }

    /// Runs a Lua script (`EVALSHA`, loading it once when the server does not know it).
    pub async fn invoke<T: ::redis::FromRedisValue + Send>(
        &self,
        invocation: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }

    /// Runs `op` on the connection, through the breaker, within the command timeout.
    pub async fn call<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let admitted = lock(&self.breaker).admit(Instant::now());
        if admitted == Admit::Refuse {
            self.counters.short_circuits.fetch_add(1, Ordering::Relaxed);
            return Err(RedisError::BreakerOpen);
        }
        let connection = read(&self.connection).clone();
        let result = match connection {
            None => Err(RedisError::NotConnected),
            Some(connection) => {
                match tokio::time::timeout(self.command_timeout, op(connection)).await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(error)) => Err(RedisError::of(&error)),
                    Err(_) => Err(RedisError::Timeout),
                }
            }
        };
        match &result {
            Ok(_) => lock(&self.breaker).success(),
            Err(error) => self.failed(error),
        }
        result
    }

    /// Counts a failed call; drops the connection when it broke or the breaker opened (a
    /// server that stopped answering keeps its socket open), and wakes the reconnection.
    fn failed(&self, error: &RedisError) {
        if let Some(kind) = error.kind() {
            self.counters.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        // A server-side refusal (a wrong type, a script error) says Redis is there.
        let opened = match error {
            RedisError::Response(_) => false,
            _ => lock(&self.breaker).failure(Instant::now()),
        };
        if opened {
            tracing::warn!(%error, cooldown_ms = self.cooldown.as_millis() as u64, "Redis breaker opened: calls fail at once until a probe succeeds");
        }
        if opened || error.breaks_connection() {
            self.drop_connection();
        }
    }

    fn drop_connection(&self) {
        if write(&self.connection).take().is_some() {
            self.reconnect.notify_one();
        }
    }

    /// A new pub/sub connection, within the connect timeout. Its failures are counted like a
    /// call's but do not move the breaker: the subscriber has its own back-off.
    pub async fn pubsub(&self) -> Result<PubSub, RedisError> {
        let result = match tokio::time::timeout(
            self.connect_timeout,
            self.client.get_async_pubsub(),
        )
        .await
        {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(error)) => Err(RedisError::of(&error)),
            Err(_) => Err(RedisError::Timeout),
        };
        if let Err(error) = &result
            && let Some(kind) = error.kind()
        {
            self.counters.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Keeps the connection open until `stop`: connects at once, and again whenever a call
    /// finds it broken or the breaker opens, with a doubling back-off between failed attempts.
    pub async fn run(&self, stop: CancellationToken) {
        let mut backoff = RECONNECT_BACKOFF_MIN;
        loop {
            if read(&self.connection).is_none() {
                match self.connect().await {
                    Ok(connection) => {
                        *write(&self.connection) = Some(connection);
                        lock(&self.breaker).success();
                        self.counters.connects_ok.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("connected to Redis");
                        backoff = RECONNECT_BACKOFF_MIN;
                    }
                    Err(error) => {
                        self.counters
                            .connects_failed
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, retry_ms = backoff.as_millis() as u64, "cannot connect to Redis");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(self.cooldown.max(RECONNECT_BACKOFF_MIN));
                        continue;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.reconnect.notified() => {}
            }
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let mut connection = match tokio::time::timeout(
            self.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err(RedisError::of(&error)),
            Err(_) => return Err(RedisError::Timeout),
        };
        // A hung server still accepts connections (the kernel does): only an answer proves it
        // there, and only then may the breaker close.
        let ping = ::redis::cmd("PING");
        match tokio::time::timeout(
            self.command_timeout,
            ping.query_async::<String>(&mut connection),
        )
        .await
        {
            Ok(Ok(_)) => Ok(connection),
            Ok(Err(error)) => Err(RedisError::of(&error)),
            Err(_) => Err(RedisError::Timeout),
        }
    }

    /// Writes the client's metrics in the Prometheus text format.
    pub fn encode_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        gauge(
            out,
            "switchyard_redis_up",
            "1 while a connection to Redis is open and its breaker closed.",
            u8::from(self.is_up()),
        );
        gauge(
            out,
            "switchyard_redis_breaker_open",
            "1 while the Redis breaker fails calls at once (open, or waiting for its probe).",
            u8::from(!lock(&self.breaker).is_closed()),
        );
        let name = "switchyard_redis_failures_total";
        header(
            out,
            name,
            "counter",
            "Redis calls that failed, by kind (not_connected, timeout, io, response).",
        );
        for (kind, count) in FAILURE_KINDS.iter().zip(&self.counters.failures) {
            let _ = writeln!(
                out,
                "{name}{{kind=\"{kind}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let name = "switchyard_redis_short_circuits_total";
        header(
            out,
            name,
            "counter",
            "Redis calls failed at once because the breaker was open.",
        );
        let _ = writeln!(
            out,
            "{name} {}",
            self.counters.short_circuits.load(Ordering::Relaxed)
        );
        let name = "switchyard_redis_connects_total";
        header(
            out,
            name,
            "counter",
            "Connections to Redis attempted, by outcome.",
        );
        let _ = writeln!(
            out,
            "{name}{{outcome=\"failed\"}} {}",
            self.counters.connects_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{outcome=\"ok\"}} {}",
            self.counters.connects_ok.load(Ordering::Relaxed)
        );
    }

    /// The failures counted so far of one kind label (for tests).
    pub fn failures_of(&self, kind: &str) -> u64 {
        FAILURE_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.counters.failures[i].load(Ordering::Relaxed))
    }

    /// Calls failed at once by the open breaker so far.
    pub fn short_circuits(&self) -> u64 {
        self.counters.short_circuits.load(Ordering::Relaxed)
    }
}

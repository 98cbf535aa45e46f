//! The cluster mode's store in Redis: the GCRA of `gcra.rs` as a Lua script run with
//! `EVALSHA` (one round trip; loaded once, and again if the server forgets it), on Redis's
//! clock, and the gateways' heartbeats in one sorted set. Every call goes through the shared
//! client, so it waits at most `redis.command_timeout_ms`, and nothing while its breaker is
//! open.
//!
//! Keys, under `redis.key_prefix` (`switchyard:`): `rl:<rule>:<key>` holds a bucket's TAT in
//! microseconds of Redis's clock and expires when the bucket would be full again;
//! `rl:gateways` holds one member per live gateway (its node id), scored by when its heartbeat
//! ends, and expires with the last heartbeat.

use std::sync::Arc;

use super::cluster::{CounterStore, StoreError};
use super::gcra::Shape;
use crate::redis::{Redis, RedisError};
use crate::sync::BoxFuture;

/// The GCRA check (see `gcra::decide`), in integer microseconds, which a Lua number holds
/// exactly (Redis's clock in microseconds is about 2^51). Returns `{admitted, ahead_us}`.
const CHECK_SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next = tat + interval
if next - now <= tolerance then
  redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000) + 1)
  return {1, next - now}
end
return {0, tat - now}
";

/// Renews one gateway's heartbeat, drops the ended ones, and counts the rest.
const HEARTBEAT_SCRIPT: &str = r"
local ttl = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
";

/// The cluster mode's store on the shared Redis client.
pub struct RedisStore {
    redis: Arc<Redis>,
    check: ::redis::Script,
    heartbeat: ::redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    pub fn new(redis: Arc<Redis>) -> Self {
        Self {
            redis,
            check: ::redis::Script::new(CHECK_SCRIPT),
            heartbeat: ::redis::Script::new(HEARTBEAT_SCRIPT),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}rl:{name}", self.redis.key_prefix())
    }
}

fn store_error(error: RedisError) -> StoreError {
    match error {
        RedisError::BreakerOpen => StoreError::BreakerOpen,
        RedisError::Response(message) => StoreError::BadReply(message),
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl CounterStore for RedisStore {
    fn check<'a>(
        &'a self,
        bucket: &'a str,
        shape: Shape,
    ) -> BoxFuture<'a, Result<(bool, u64), StoreError>> {
        Box::pin(async move {
            let key = self.key(bucket);
            let mut invocation = self.check.key(&key);
            invocation.arg(shape.interval_us).arg(shape.burst);
            let (admitted, ahead): (i64, i64) =
                self.redis.invoke(&invocation).await.map_err(store_error)?;
            let ahead = u64::try_from(ahead)
                .map_err(|_| StoreError::BadReply(format!("a negative wait ({ahead})")))?;
            Ok((admitted == 1, ahead))
        })
    }

    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let key = self.key("gateways");
            let mut invocation = self.heartbeat.key(&key);
            invocation.arg(node).arg(ttl_ms);
            let live: u64 = self.redis.invoke(&invocation).await.map_err(store_error)?;
            Ok(live)
        })
    }
}

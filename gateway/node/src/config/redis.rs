//! The `[redis]` section: the Redis server shared by the gateways (revocations, cluster-wide
//! rate limits), and the bounds on every call to it.

use std::path::PathBuf;

use serde::Deserialize;

use super::kafka::read_sasl_password;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`. Empty: no Redis (revocations are never current, so a
    /// provider's fail mode decides; cluster-wide limits fall back to local ones).
    pub url: String,
    /// The ACL user, if the server has users; empty: the default user.
    pub username: String,
    /// A file holding the password (one line); never the password itself in the config.
    pub password_file: PathBuf,
    /// Longest wait for a new connection (TCP, `AUTH`, `SELECT`), made in the background.
    pub connect_timeout_ms: u64,
    /// Longest wait for one command's answer; a request never waits longer on Redis.
    pub command_timeout_ms: u64,
    /// Consecutive failures or timeouts that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls at once before one probe call is let through.
    pub breaker_cooldown_ms: u64,
    /// The prefix of every key and channel the gateways use, so that clusters can share a
    /// server.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            connect_timeout_ms: 1_000,
            command_timeout_ms: 50,
            breaker_failures: 5,
            breaker_cooldown_ms: 1_000,
            key_prefix: "switchyard:".to_owned(),
        }
    }
}

/// Longest `redis.key_prefix`.
pub const KEY_PREFIX_BYTES_MAX: usize = 64;

impl RedisConfig {
    /// Whether a Redis server is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The password from `password_file`, if one is named.
    pub fn password(&self) -> Result<Option<String>, String> {
        if self.password_file.as_os_str().is_empty() {
            return Ok(None);
        }
        read_sasl_password(&self.password_file).map(Some)
    }

    /// Checks the section's values. Returns the key at fault. The password file is read only
    /// to check it; its content never appears in an error.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let ranges: [(&'static str, u64, u64, u64); 4] = [
            (
                "redis.connect_timeout_ms",
                self.connect_timeout_ms,
                1,
                60_000,
            ),
            (
                "redis.command_timeout_ms",
                self.command_timeout_ms,
                1,
                10_000,
            ),
            (
                "redis.breaker_failures",
                u64::from(self.breaker_failures),
                1,
                1_000,
            ),
            (
                "redis.breaker_cooldown_ms",
                self.breaker_cooldown_ms,
                10,
                600_000,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err((key, format!("must lie between {min} and {max}")));
            }
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > KEY_PREFIX_BYTES_MAX
            || self.key_prefix.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '*' | '?' | '[' | ']' | '\\')
            })
        {
            return Err((
                "redis.key_prefix",
                format!(
                    "must be 1 to {KEY_PREFIX_BYTES_MAX} bytes without spaces, control characters or the glob characters * ? [ ] \\"
                ),
            ));
        }
        if self.username.len() > 256 || self.username.chars().any(char::is_control) {
            return Err((
                "redis.username",
                "must be at most 256 bytes without control characters".to_owned(),
            ));
        }
        if !self.enabled() {
            return Ok(());
        }
        check_url(&self.url).map_err(|m| ("redis.url", m))?;
        self.password().map_err(|m| ("redis.password_file", m))?;
        Ok(())
    }
}

/// A `redis://` URL without credentials in it.
fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("rediss://") {
        return Err(
            "TLS to Redis is not built into this gateway: use redis:// on a private network (docs/security.md#redis)"
                .to_owned(),
        );
    }
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err("must start with redis://".to_owned());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "must not hold a user or password: set redis.username and redis.password_file"
                .to_owned(),
        );
    }
    if authority.is_empty() {
        return Err("names no host".to_owned());
    }
    ::redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| format!("cannot be read ({:?})", e.kind()))
}

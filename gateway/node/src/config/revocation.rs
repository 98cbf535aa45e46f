//! The `[revocation]` section: the local copy of revoked public tokens, how it is kept current
//! from Redis, and when it stops vouching for itself.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// Most revocations (token ids and subjects together) the local copy holds. One more is
    /// not added: it is counted, and until a resync fits the copy again every token it does
    /// not list as revoked is `Unknown` (the provider's fail mode decides), never `Clear`.
    pub entries_max: usize,
    /// How long after it was last confirmed current the copy still answers `Clear`. It is
    /// confirmed by a full resync, and by each answered heartbeat on a subscription that was
    /// followed by a resync.
    pub stale_after_ms: u64,
    /// How often the subscription is pinged to prove it alive.
    pub heartbeat_interval_ms: u64,
    /// How often every revocation key is read again from Redis (and at once after every
    /// new subscription), repairing any message missed.
    pub resync_interval_ms: u64,
    /// The longest lifetime a public token has. A subject's revocation lasts this long after
    /// it is made (every token issued before it has expired by then), and a token id's
    /// revocation may not be asked to last longer.
    pub token_lifetime_max_s: u64,
    /// Most revocations one `GET /v1/revocations` page lists (`limit` may ask for fewer).
    pub list_max: usize,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            entries_max: 100_000,
            stale_after_ms: 3_000,
            heartbeat_interval_ms: 1_000,
            resync_interval_ms: 10_000,
            token_lifetime_max_s: 86_400,
            list_max: 1_000,
        }
    }
}

/// Upper bound of `revocation.entries_max`.
pub const REVOCATION_ENTRIES_LIMIT: usize = 10_000_000;

impl RevocationConfig {
    /// Checks the section's values. Returns the key at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let ranges: [(&'static str, u64, u64, u64); 6] = [
            (
                "revocation.entries_max",
                self.entries_max as u64,
                1,
                REVOCATION_ENTRIES_LIMIT as u64,
            ),
            (
                "revocation.stale_after_ms",
                self.stale_after_ms,
                100,
                3_600_000,
            ),
            (
                "revocation.heartbeat_interval_ms",
                self.heartbeat_interval_ms,
                50,
                60_000,
            ),
            (
                "revocation.resync_interval_ms",
                self.resync_interval_ms,
                100,
                3_600_000,
            ),
            (
                "revocation.token_lifetime_max_s",
                self.token_lifetime_max_s,
                60,
                400 * 86_400,
            ),
            ("revocation.list_max", self.list_max as u64, 1, 10_000),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err((key, format!("must lie between {min} and {max}")));
            }
        }
        if self.stale_after_ms <= self.heartbeat_interval_ms {
            return Err((
                "revocation.stale_after_ms",
                "must be longer than revocation.heartbeat_interval_ms, or a live copy would go stale between two heartbeats".to_owned(),
            ));
        }
        Ok(())
    }
}

//! The keys of the public front's JWT providers (`[[jwt.providers]]`): fetched before the node
//! reports ready, refreshed ahead of expiry, refetched at most once per cooldown on an unknown
//! `kid`, and served stale for a bounded time when the provider cannot be reached.
//!
//! * [`fetch`]: one read of a JWKS document, from a file or by `GET` through the connector
//!   seam, bounded in bytes (the caller bounds it in time).
//! * [`parse`]: a JWKS document → the keys taken for the provider's pinned algorithms.
//!
//! Timeline of a provider's keys: fetched at `t`, fresh until `t + ttl` (the answer's
//! `max-age` within `[refresh_min_ms, refresh_max_ms]`, else `refresh_interval_ms`); the
//! background task refetches at `t + ttl * 3/4`; if that and its retries fail, the keys are
//! still used until `t + ttl + stale_max_ms`, then dropped. A provider without keys keeps
//! `/readyz` at 503 and its tokens are answered 503 `not_ready`.
//!
//! One fetch per provider runs at a time (a lock), and a fetch for an unknown `kid` starts only
//! if no fetch started within `refetch_cooldown_ms`: a flood of tokens with random `kid`s costs
//! the provider one request per cooldown at most.
//!
//! The counters of the JWT check live here too ([`JwtStats`]), written by the policy and read
//! at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{JwtConfig, JwtProvider};
use crate::seams::{Backoff, Connector};
use crate::sync::{lock, read, write};

pub mod fetch;
pub mod parse;

use fetch::{FetchError, Source};

/// One verifying key of a provider.
pub struct Key {
    pub kid: Option<String>,
    /// The algorithms it verifies: its type's, narrowed by its `alg` and the provider's pins.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The keys of one fetch.
#[derive(Debug)]
pub struct KeyRing {
    pub keys: Vec<Key>,
    /// Entries of the document that were not usable.
    pub skipped: usize,
}

impl KeyRing {
    /// The key named `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys that verify `alg`, for a token that names no key.
    pub fn for_algorithm(&self, alg: Algorithm) -> impl Iterator<Item = &Key> {
        self.keys
            .iter()
            .filter(move |k| k.algorithms.contains(&alg))
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }
}

struct Held {
    ring: Arc<KeyRing>,
    /// When the background task fetches again.
    refresh_at: Instant,
    /// Past this the keys are dropped.
    usable_until: Instant,
}

/// One provider: its pinned algorithms and the keys it currently has.
pub struct ProviderKeys {
    pub config: JwtProvider,
    pub index: usize,
    pub algorithms: Vec<Algorithm>,
    source: Source,
    held: RwLock<Option<Held>>,
    /// Held while a fetch runs: one at a time.
    fetching: tokio::sync::Mutex<()>,
    /// When the last fetch for an unknown `kid` started (its cooldown).
    last_refetch: Mutex<Option<Instant>>,
    /// When the last fetch of any kind ended.
    last_done: Mutex<Option<Instant>>,
    stats: Arc<JwtStats>,
}

impl std::fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKeys")
            .field("name", &self.config.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ProviderKeys {
    /// The keys in force, or `None` if the provider has none (never fetched, or dropped after
    /// `stale_max_ms` without a successful fetch).
    pub fn ring(&self) -> Option<Arc<KeyRing>> {
        let now = Instant::now();
        {
            let held = read(&self.held);
            match held.as_ref() {
                None => return None,
                Some(h) if now < h.usable_until => return Some(h.ring.clone()),
                Some(_) => {}
            }
        }
        let mut held = write(&self.held);
        if held.as_ref().is_some_and(|h| now >= h.usable_until) {
            *held = None;
            self.stats.set_keys(self.index, 0);
            tracing::error!(provider = %self.config.name, stale_max_ms = self.config.stale_max_ms, "JWT provider's keys dropped: no successful fetch within the stale bound; its tokens are refused with 503 until a fetch succeeds");
        }
        held.as_ref().map(|h| h.ring.clone())
    }

    /// Fetches again because a token names a `kid` the keys lack: waits for a fetch in flight
    /// (at most the fetch timeout) and is content with its result; else starts one, unless
    /// another unknown `kid` started one within the cooldown. Returns whether keys newer than
    /// the request were fetched.
    pub async fn refetch(&self) -> bool {
        let wait = Duration::from_millis(self.config.fetch_timeout_ms);
        let asked = Instant::now();
        let Ok(_guard) = tokio::time::timeout(wait, self.fetching.lock()).await else {
            return false;
        };
        if lock(&self.last_done).is_some_and(|t| t >= asked) {
            // A fetch ended while this request waited: its keys are the newest there are.
            return true;
        }
        let now = Instant::now();
        {
            let cooldown = Duration::from_millis(self.config.refetch_cooldown_ms);
            let mut last = lock(&self.last_refetch);
            if last.is_some_and(|t| now.duration_since(t) < cooldown) {
                return false;
            }
            *last = Some(now);
        }
        self.stats.refetch(self.index);
        self.fetch_now().await.is_ok()
    }

    /// One fetch, its outcome put in force and counted. The caller holds `fetching`.
    async fn fetch_now(&self) -> Result<(), FetchError> {
        let result = self.fetch_and_apply().await;
        *lock(&self.last_done) = Some(Instant::now());
        result
    }

    async fn fetch_and_apply(&self) -> Result<(), FetchError> {
        let started = Instant::now();
        let timeout = Duration::from_millis(self.config.fetch_timeout_ms);
        let result = match tokio::time::timeout(
            timeout,
            self.source.fetch(self.config.jwks_bytes_max),
        )
        .await
        {
            Err(_) => Err(FetchError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(doc)) => parse::key_ring(&doc.body, &self.algorithms, self.config.keys_max)
                .map(|ring| (ring, doc.max_age))
                .map_err(FetchError::Invalid),
        };
        match result {
            Ok((ring, max_age)) => {
                let ttl = self.ttl(max_age);
                let kids: Vec<String> = ring.kids().into_iter().map(str::to_owned).collect();
                let count = ring.keys.len();
                let skipped = ring.skipped;
                let changed = read(&self.held).as_ref().is_none_or(|h| {
                    h.ring.kids() != kids.iter().map(String::as_str).collect::<Vec<_>>()
                });
                *write(&self.held) = Some(Held {
                    ring: Arc::new(ring),
                    refresh_at: started + ttl * 3 / 4,
                    usable_until: started + ttl + Duration::from_millis(self.config.stale_max_ms),
                });
                self.stats.fetched(self.index, "ok");
                self.stats.set_keys(self.index, count);
                if changed {
                    tracing::info!(provider = %self.config.name, keys = ?kids, skipped, ttl_ms = ttl.as_millis() as u64, "JWT provider keys in force");
                }
                Ok(())
            }
            Err(error) => {
                self.stats.fetched(self.index, error.label());
                let held = read(&self.held).is_some();
                tracing::warn!(provider = %self.config.name, %error, keys_held = held, "JWT provider keys could not be fetched");
                Err(error)
            }
        }
    }

    /// How long fetched keys stay fresh: the provider's `max-age` within the bounds, else the
    /// configured interval.
    fn ttl(&self, max_age: Option<Duration>) -> Duration {
        let c = &self.config;
        match max_age {
            Some(age) => {
                let ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(ms.clamp(c.refresh_min_ms, c.refresh_max_ms))
            }
            None => Duration::from_millis(c.refresh_interval_ms),
        }
    }

    /// Fetches until stopped: at once, then ahead of each expiry; after a failure, again with
    /// a backoff from 1 s (or the refresh interval, if shorter) up to the refresh interval
    /// and at most 60 s.
    async fn run(&self, stop: CancellationToken) {
        let interval = Duration::from_millis(self.config.refresh_interval_ms);
        let base = interval.min(Duration::from_secs(1));
        let mut backoff = Backoff::new(base, interval.min(Duration::from_secs(60)));
        loop {
            let outcome = {
                let _guard = self.fetching.lock().await;
                self.fetch_now().await
            };
            let next = match outcome {
                Ok(()) => {
                    backoff.reset();
                    read(&self.held)
                        .as_ref()
                        .map_or(Instant::now() + interval, |h| h.refresh_at)
                }
                Err(_) => Instant::now() + backoff.next_delay(),
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

/// The keys of every provider.
pub struct Jwks {
    providers: Vec<Arc<ProviderKeys>>,
    stats: Arc<JwtStats>,
    /// Why `[jwt]` could not be put in force, if it could not: the node then stays unready.
    failed: Option<String>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.providers).finish()
    }
}

/// An algorithm name of the config as jsonwebtoken's.
pub fn algorithm(name: &str) -> Option<Algorithm> {
    if !crate::config::JWT_ALGORITHMS.contains(&name) {
        return None;
    }
    name.parse().ok()
}

impl Jwks {
    /// The providers `[jwt]` names; an `https://` source's CA file is read now. An error names
    /// the provider.
    pub fn new(config: &JwtConfig, connector: Arc<dyn Connector>) -> Result<Self, String> {
        let names: Vec<String> = config.providers.iter().map(|p| p.name.clone()).collect();
        let stats = Arc::new(JwtStats::new(names));
        let providers = config
            .providers
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let algorithms = p
                    .algorithms
                    .iter()
                    .map(|a| {
                        algorithm(a).ok_or_else(|| {
                            format!("provider {:?}: algorithm {a:?} is not taken", p.name)
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let source = Source::new(
                    &p.jwks_file,
                    &p.jwks_url,
                    &p.jwks_ca_file,
                    connector.clone(),
                )
                .map_err(|e| format!("provider {:?}: {e}", p.name))?;
                Ok(Arc::new(ProviderKeys {
                    config: p.clone(),
                    index,
                    algorithms,
                    source,
                    held: RwLock::new(None),
                    fetching: tokio::sync::Mutex::new(()),
                    last_refetch: Mutex::new(None),
                    last_done: Mutex::new(None),
                    stats: stats.clone(),
                }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            providers,
            stats,
            failed: None,
        })
    }

    /// No provider, because `[jwt]` could not be put in force: the node reports `error` as
    /// the reason it is not ready, and its routes refuse every token.
    pub fn failed(error: String) -> Self {
        Self {
            providers: Vec::new(),
            stats: Arc::new(JwtStats::new(Vec::new())),
            failed: Some(error),
        }
    }

    pub fn providers(&self) -> &[Arc<ProviderKeys>] {
        &self.providers
    }

    pub fn stats(&self) -> &Arc<JwtStats> {
        &self.stats
    }

    /// Why the node is not ready on account of its providers: one line per provider without
    /// keys. Empty when every provider has keys.
    pub fn not_ready(&self) -> Vec<String> {
        let failed = self
            .failed
            .iter()
            .map(|e| format!("[jwt] not in force: {e}"));
        let keyless = self
            .providers
            .iter()
            .filter(|p| p.ring().is_none())
            .map(|p| format!("JWT provider {:?} has no keys", p.config.name));
        failed.chain(keyless).collect()
    }

    /// Whether any provider is configured (the JWT metrics are written only then).
    pub fn configured(&self) -> bool {
        !self.providers.is_empty() || self.failed.is_some()
    }

    /// Fetches and refreshes every provider's keys until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let tasks = self.providers.iter().map(|p| p.run(stop.clone()));
        futures_util::future::join_all(tasks).await;
    }
}

/// Why the JWT check refused a request, as the metric's label says it.
pub const REFUSAL_REASONS: [&str; 16] = [
    "missing",
    "malformed",
    "too_large",
    "unknown_issuer",
    "algorithm",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "wrong_audience",
    "revoked",
    "keys_unavailable",
    "revocation_unavailable",
    "insufficient_scope",
    "claim_mismatch",
];

/// The outcomes of a JWKS fetch.
const FETCH_OUTCOMES: [&str; 5] = ["ok", "unreachable", "timeout", "http_status", "invalid"];

struct ProviderStats {
    name: String,
    fetches: [AtomicU64; FETCH_OUTCOMES.len()],
    refetches: AtomicU64,
    keys: AtomicU64,
    revocation_admitted: AtomicU64,
}

/// The JWT check's counters.
pub struct JwtStats {
    refusals: [AtomicU64; REFUSAL_REASONS.len()],
    providers: Vec<ProviderStats>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_entries: AtomicU64,
    cache_bytes: AtomicU64,
}

impl std::fmt::Debug for JwtStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtStats").finish_non_exhaustive()
    }
}

impl JwtStats {
    fn new(names: Vec<String>) -> Self {
        Self {
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            providers: names
                .into_iter()
                .map(|name| ProviderStats {
                    name,
                    fetches: std::array::from_fn(|_| AtomicU64::new(0)),
                    refetches: AtomicU64::new(0),
                    keys: AtomicU64::new(0),
                    revocation_admitted: AtomicU64::new(0),
                })
                .collect(),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cache_entries: AtomicU64::new(0),
            cache_bytes: AtomicU64::new(0),
        }
    }

    /// Counts a refusal; `reason` is one of [`REFUSAL_REASONS`] (others are not counted).
    pub fn refusal(&self, reason: &str) {
        if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == reason) {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn refusals_of(&self, reason: &str) -> u64 {
        REFUSAL_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.refusals[i].load(Ordering::Relaxed))
    }

    fn fetched(&self, provider: usize, outcome: &str) {
        if let (Some(p), Some(i)) = (
            self.providers.get(provider),
            FETCH_OUTCOMES.iter().position(|o| *o == outcome),
        ) {
            p.fetches[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn refetch(&self, provider: usize) {
        if let Some(p) = self.providers.get(provider) {
            p.refetches.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_keys(&self, provider: usize, keys: usize) {
        if let Some(p) = self.providers.get(provider) {
            p.keys.store(keys as u64, Ordering::Relaxed);
        }
    }

    /// Counts a token admitted although the revocation list could not vouch for it.
    pub fn revocation_admitted(&self, provider: usize) {
        if let Some(p) = self.providers.get(provider) {
            p.revocation_admitted.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn cache_lookup(&self, hit: bool) {
        let counter = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_cache_size(&self, entries: usize, bytes: usize) {
        self.cache_entries.store(entries as u64, Ordering::Relaxed);
        self.cache_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    /// Writes the counters in the Prometheus text format.
    pub fn encode(&self, out: &mut String) {
        use crate::telemetry::metrics::header;
        header(
            out,
            "switchyard_jwt_refusals_total",
            "counter",
            "Public requests the JWT check refused, by reason.",
        );
        for (reason, n) in REFUSAL_REASONS.iter().zip(&self.refusals) {
            let _ = writeln!(
                out,
                "switchyard_jwt_refusals_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        if self.providers.is_empty() {
            return;
        }
        header(
            out,
            "switchyard_jwks_fetches_total",
            "counter",
            "JWKS fetches of each JWT provider, by outcome.",
        );
        for p in &self.providers {
            for (outcome, n) in FETCH_OUTCOMES.iter().zip(&p.fetches) {
                let _ = writeln!(
                    out,
                    "switchyard_jwks_fetches_total{{provider=\"{}\",outcome=\"{outcome}\"}} {}",
                    p.name,
                    n.load(Ordering::Relaxed)
                );
            }
        }
        type Read = fn(&ProviderStats) -> &AtomicU64;
        let per_provider: [(&str, &str, &str, Read); 3] = [
            (
                "switchyard_jwks_refetches_total",
                "counter",
                "JWKS fetches a token with an unknown kid started (at most one per cooldown).",
                |p| &p.refetches,
            ),
            (
                "switchyard_jwks_keys",
                "gauge",
                "Keys each JWT provider holds in force.",
                |p| &p.keys,
            ),
            (
                "switchyard_jwt_revocation_unknown_admitted_total",
                "counter",
                "Tokens admitted by a fail_open provider while the revocation list could not vouch for them.",
                |p| &p.revocation_admitted,
            ),
        ];
        for (name, kind, help, value) in per_provider {
            header(out, name, kind, help);
            for p in &self.providers {
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{}\"}} {}",
                    p.name,
                    value(p).load(Ordering::Relaxed)
                );
            }
        }
        header(
            out,
            "switchyard_jwt_cache_lookups_total",
            "counter",
            "Lookups of the verified-token cache, by result.",
        );
        for (result, n) in [("hit", &self.cache_hits), ("miss", &self.cache_misses)] {
            let _ = writeln!(
                out,
                "switchyard_jwt_cache_lookups_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        crate::telemetry::metrics::gauge(
            out,
            "switchyard_jwt_cache_entries",
            "Verified tokens the cache holds.",
            self.cache_entries.load(Ordering::Relaxed),
        );
        crate::telemetry::metrics::gauge(
            out,
            "switchyard_jwt_cache_bytes",
            "Memory the verified-token cache accounts for.",
            self.cache_bytes.load(Ordering::Relaxed),
        );
    }
}

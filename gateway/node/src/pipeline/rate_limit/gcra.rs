//! The token bucket as the generic cell rate algorithm (GCRA), with no I/O: one number per
//! bucket, the theoretical arrival time (TAT) of the next request, in microseconds. A bucket
//! is full when its TAT is not after now; each admitted request moves the TAT one emission
//! interval later; a request is refused when that would put the TAT more than the burst's
//! worth of intervals ahead of now.
//!
//! The cluster mode runs the same arithmetic in a Lua script in Redis (`redis.rs`), on
//! Redis's clock, so that both modes answer the same numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A bucket's shape: one request per `interval_us`, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub interval_us: u64,
    pub burst: u64,
}

impl Shape {
    /// `rate` requests per `per_us` microseconds, `burst` at once. Both at least 1.
    pub fn new(rate: u64, per_us: u64, burst: u64) -> Self {
        let rate = rate.max(1);
        Self {
            interval_us: (per_us.saturating_add(rate / 2) / rate).max(1),
            burst: burst.max(1),
        }
    }

    /// This shape shared among `parts` gateways: the rate and the burst each divided (the
    /// burst at least 1).
    pub fn divided(self, parts: u32) -> Self {
        let parts = u64::from(parts.max(1));
        Self {
            interval_us: self.interval_us.saturating_mul(parts),
            burst: (self.burst / parts).max(1),
        }
    }

    /// How far ahead of now a TAT may be after an admitted request.
    pub fn tolerance_us(self) -> u64 {
        self.interval_us.saturating_mul(self.burst)
    }

    /// The quota of `RateLimit-Policy` (`q`): the burst.
    pub fn quota(self) -> u64 {
        self.burst
    }

    /// The window of `RateLimit-Policy` (`w`), in seconds: the time an empty bucket takes to
    /// fill again, rounded up.
    pub fn window_s(self) -> u64 {
        self.tolerance_us().div_ceil(1_000_000).max(1)
    }
}

/// What one request's check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub admitted: bool,
    /// Requests the bucket admits after this one, at once (`RateLimit` `r`).
    pub remaining: u64,
    /// Microseconds until the bucket is full again (`RateLimit` `t`, rounded up).
    pub reset_us: u64,
    /// For a refusal, microseconds until one request is admitted (`Retry-After`, rounded up).
    pub retry_after_us: u64,
}

impl Decision {
    /// The decision that `ahead_us` (how far the TAT is ahead of now after the check) means.
    pub fn from_ahead(shape: Shape, admitted: bool, ahead_us: u64) -> Self {
        let tolerance = shape.tolerance_us();
        if admitted {
            Self {
                admitted,
                remaining: tolerance.saturating_sub(ahead_us) / shape.interval_us,
                reset_us: ahead_us,
                retry_after_us: 0,
            }
        } else {
            Self {
                admitted,
                remaining: 0,
                reset_us: ahead_us,
                retry_after_us: ahead_us
                    .saturating_add(shape.interval_us)
                    .saturating_sub(tolerance),
            }
        }
    }

    /// `t` of `RateLimit`: whole seconds until the bucket is full, rounded up.
    pub fn reset_s(&self) -> u64 {
        self.reset_us.div_ceil(1_000_000)
    }

    /// `Retry-After`: whole seconds until one request is admitted, rounded up, at least 1.
    pub fn retry_after_s(&self) -> u64 {
        self.retry_after_us.div_ceil(1_000_000).max(1)
    }
}

/// Checks one request against a bucket whose TAT is `tat_us` (`None`: a bucket not kept, so
/// full). Returns the decision and the bucket's new TAT.
pub fn decide(shape: Shape, tat_us: Option<u64>, now_us: u64) -> (Decision, u64) {
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let next = tat.saturating_add(shape.interval_us);
    let ahead = next - now_us;
    if ahead <= shape.tolerance_us() {
        (Decision::from_ahead(shape, true, ahead), next)
    } else {
        (Decision::from_ahead(shape, false, tat - now_us), tat)
    }
}

/// The buckets of one rule on this gateway, at most `max` of them.
///
/// Past the bound the bucket nearest to full (the smallest TAT) is dropped: a full bucket
/// carries no information, and one nearly full carries the least. A client rotating keys
/// makes buckets that each took one request, so they are the nearest to full and push out
/// each other, never a bucket that has run dry: rotating keys neither grows memory nor
/// frees a limited key from its limit. Each check also drops up to two buckets that have
/// filled again, so idle buckets go without waiting for the bound.
#[derive(Debug)]
pub struct Buckets {
    max: usize,
    tats: BTreeMap<Arc<str>, u64>,
    /// The same buckets ordered by TAT, nearest to full first.
    by_tat: BTreeSet<(u64, Arc<str>)>,
}

/// Full buckets dropped per check, besides those the bound drops.
const SWEEP_PER_CHECK: usize = 2;

impl Buckets {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            tats: BTreeMap::new(),
            by_tat: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }

    /// Checks one request of `key` at `now_us`, and keeps the bucket's new state.
    pub fn check(&mut self, key: &str, shape: Shape, now_us: u64) -> Decision {
        self.sweep(now_us);
        let kept = self.tats.get_key_value(key).map(|(k, t)| (k.clone(), *t));
        let (decision, tat) = decide(shape, kept.as_ref().map(|(_, t)| *t), now_us);
        if !decision.admitted {
            return decision;
        }
        match kept {
            Some((key, old)) => {
                self.by_tat.remove(&(old, key.clone()));
                self.by_tat.insert((tat, key.clone()));
                self.tats.insert(key, tat);
            }
            None => {
                while self.tats.len() >= self.max {
                    let Some((_, evicted)) = self.by_tat.pop_first() else {
                        break;
                    };
                    self.tats.remove(&evicted);
                }
                let key: Arc<str> = Arc::from(key);
                self.by_tat.insert((tat, key.clone()));
                self.tats.insert(key, tat);
            }
        }
        decision
    }

    /// Drops up to [`SWEEP_PER_CHECK`] buckets that are full at `now_us`.
    fn sweep(&mut self, now_us: u64) {
        for _ in 0..SWEEP_PER_CHECK {
            match self.by_tat.first() {
                Some((tat, _)) if *tat <= now_us => {
                    if let Some((_, key)) = self.by_tat.pop_first() {
                        self.tats.remove(&key);
                    }
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_burst_then_one_interval_per_request() {
        // 1 per second, burst 3.
        let shape = Shape::new(1, S, 3);
        let mut b = Buckets::new(10);
        let seen: Vec<(bool, u64)> = (0..4)
            .map(|_| {
                let d = b.check("k", shape, 100 * S);
                (d.admitted, d.remaining)
            })
            .collect();
        assert_eq!(seen, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        let refused = b.check("k", shape, 100 * S);
        assert_eq!(refused.retry_after_s(), 1);
        assert_eq!(refused.reset_s(), 3);
        // Half an interval later: still refused; a whole one: one more, and no more.
        assert!(!b.check("k", shape, 100 * S + S / 2).admitted);
        let d = b.check("k", shape, 101 * S);
        assert!(d.admitted);
        assert_eq!(d.remaining, 0);
        assert!(!b.check("k", shape, 101 * S).admitted);
        // Long idle: full again.
        assert_eq!(b.check("k", shape, 200 * S).remaining, 2);
    }

    #[test]
    fn shapes_and_their_header_numbers() {
        let per_minute = Shape::new(100, 60 * S, 100);
        assert_eq!(per_minute.interval_us, 600_000);
        assert_eq!((per_minute.quota(), per_minute.window_s()), (100, 60));
        let shared = per_minute.divided(3);
        assert_eq!((shared.interval_us, shared.burst), (1_800_000, 33));
        assert_eq!(Shape::new(5, S, 1).divided(9).burst, 1);
        // The interval never reaches zero.
        assert_eq!(Shape::new(3_000_000, S, 1).interval_us, 1);
    }

    #[test]
    fn the_bound_drops_the_bucket_nearest_to_full() {
        let shape = Shape::new(1, 60 * S, 5);
        let mut b = Buckets::new(3);
        for _ in 0..5 {
            assert!(b.check("dry", shape, 0).admitted);
        }
        assert!(!b.check("dry", shape, 0).admitted);
        for i in 0..1_000 {
            b.check(&format!("rotating-{i}"), shape, 0);
            assert!(b.len() <= 3, "{}", b.len());
        }
        assert!(!b.check("dry", shape, 0).admitted, "still limited");
    }

    #[test]
    fn full_buckets_are_swept() {
        let shape = Shape::new(1, S, 1);
        let mut b = Buckets::new(100);
        for i in 0..10 {
            b.check(&format!("k{i}"), shape, 0);
        }
        assert_eq!(b.len(), 10);
        for _ in 0..10 {
            b.check("new", shape, 10 * S);
        }
        assert_eq!(b.len(), 1, "only the bucket in use is left");
    }
}

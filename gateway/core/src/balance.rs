//! Choosing an instance, remembering which instances failed, and deciding when to retry.
//!
//! * Load balancing is "power of two choices": two distinct random candidates, the one with
//!   fewer requests in flight wins. It spreads load like round-robin and steers away from a
//!   slow instance without a global lock.
//! * Passive health: consecutive connect failures eject an instance for a while, doubling up to
//!   a bound; ejection always ends, and a success clears the record. When every candidate is
//!   ejected the balancer picks among them anyway rather than fail without trying (an ejection
//!   must never turn into "unhealthy forever").
//! * Retries: only failures where the request never reached a service are retried, on an
//!   instance not yet tried, up to a bound.

use rand::Rng;

use crate::GatewayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive connect failures that eject an instance.
    pub failures_to_eject: u32,
    /// First ejection length; each further ejection in a row doubles it.
    pub ejection_base_ms: u64,
    pub ejection_max_ms: u64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            failures_to_eject: 1,
            ejection_base_ms: 1_000,
            ejection_max_ms: 30_000,
        }
    }
}

/// The passive-health record of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceHealth {
    pub consecutive_failures: u32,
    /// Ejections in a row without a success between them.
    pub ejections: u32,
    pub ejected_until_ms: u64,
}

impl InstanceHealth {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms
    }

    pub fn on_success(&mut self) {
        *self = Self::default();
    }

    /// Records a connect failure; returns `true` if it ejected the instance.
    pub fn on_failure(&mut self, now_ms: u64, policy: &HealthPolicy) -> bool {
        // Failures of requests sent while ejected (the balancer found no one else) neither
        // count nor extend the ejection: it must end when it said it would.
        if self.is_ejected(now_ms) {
            return false;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures < policy.failures_to_eject.max(1) {
            return false;
        }
        let shift = self.ejections.min(16);
        let length = policy
            .ejection_base_ms
            .saturating_mul(1 << shift)
            .min(policy.ejection_max_ms);
        self.ejections = self.ejections.saturating_add(1);
        self.ejected_until_ms = now_ms.saturating_add(length);
        self.consecutive_failures = 0;
        true
    }
}

/// One instance as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub in_flight: u32,
    pub ejected: bool,
    /// Already tried for this request.
    pub tried: bool,
}

/// Picks the index of the instance to send to, or `None` if every candidate was tried.
pub fn pick(candidates: &[Candidate], rng: &mut impl Rng) -> Option<usize> {
    let untried: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].tried)
        .collect();
    let healthy: Vec<usize> = untried
        .iter()
        .copied()
        .filter(|&i| !candidates[i].ejected)
        .collect();
    let pool = if healthy.is_empty() { untried } else { healthy };
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let (a, b) = (pool[a], pool[b]);
            Some(if candidates[b].in_flight < candidates[a].in_flight {
                b
            } else {
                a
            })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub attempts_max: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts_max: 3 }
    }
}

impl RetryPolicy {
    /// Whether to try another instance after `attempts` attempts ended in `error`.
    pub fn should_retry(&self, error: &GatewayError, attempts: u32) -> bool {
        error.retryable() && attempts < self.attempts_max
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn c(in_flight: u32, ejected: bool, tried: bool) -> Candidate {
        Candidate {
            in_flight,
            ejected,
            tried,
        }
    }

    #[test]
    fn prefers_fewer_in_flight_and_skips_ejected_and_tried() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..100 {
            // With two healthy candidates both are compared, so the idle one always wins.
            assert_eq!(
                pick(&[c(5, false, false), c(0, false, false)], &mut rng),
                Some(1)
            );
            assert_eq!(
                pick(
                    &[c(0, true, false), c(9, false, false), c(0, false, true)],
                    &mut rng
                ),
                Some(1)
            );
        }
        assert_eq!(pick(&[c(0, false, true)], &mut rng), None);
        assert_eq!(pick(&[], &mut rng), None);
    }

    #[test]
    fn spreads_load_over_equal_candidates() {
        let mut rng = SmallRng::seed_from_u64(1);
        let cands = [c(0, false, false); 4];
        let mut hits = [0u32; 4];
        for _ in 0..4_000 {
            hits[pick(&cands, &mut rng).unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| h > 700), "uneven: {hits:?}");
    }

    #[test]
    fn all_ejected_still_gets_a_try() {
        let mut rng = SmallRng::seed_from_u64(3);
        assert!(pick(&[c(0, true, false), c(0, true, false)], &mut rng).is_some());
    }

    #[test]
    fn ejection_grows_is_bounded_and_ends() {
        let policy = HealthPolicy {
            failures_to_eject: 2,
            ejection_base_ms: 100,
            ejection_max_ms: 250,
        };
        let mut h = InstanceHealth::default();
        assert!(!h.on_failure(0, &policy));
        assert!(h.on_failure(0, &policy));
        assert_eq!(h.ejected_until_ms, 100);
        assert!(h.is_ejected(99) && !h.is_ejected(100));
        // Failures while ejected do not extend the ejection.
        assert!(!h.on_failure(50, &policy) && !h.on_failure(60, &policy));
        assert_eq!(h.ejected_until_ms, 100);
        h.on_failure(100, &policy);
        assert!(h.on_failure(100, &policy));
        assert_eq!(h.ejected_until_ms, 300);
        h.on_failure(300, &policy);
        assert!(h.on_failure(300, &policy));
        assert_eq!(h.ejected_until_ms, 550, "capped at 250 ms");
        h.on_success();
        assert_eq!(h, InstanceHealth::default());
    }

    #[test]
    fn retries_only_connect_failures_within_the_bound() {
        let p = RetryPolicy { attempts_max: 2 };
        let connect = GatewayError::UpstreamConnect {
            service: "s".into(),
            detail: "refused".into(),
        };
        assert!(p.should_retry(&connect, 1));
        assert!(!p.should_retry(&connect, 2));
        let status = GatewayError::UpstreamStatus {
            service: "s".into(),
            grpc_code: 14,
            message: String::new(),
        };
        assert!(!p.should_retry(&status, 1));
    }
}

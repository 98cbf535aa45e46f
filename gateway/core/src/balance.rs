//! Choosing an instance, remembering which instances failed, and deciding when to retry.
//!
//! * Load balancing is "power of two choices": two distinct random candidates, the one with
//!   fewer requests in flight wins. It spreads load like round-robin and steers away from a
//!   slow instance without a global lock.
//! * Passive health: consecutive connect failures (or broken connections), and separately
//!   consecutive timeouts, eject an instance for a while, doubling up to a bound; ejection
//!   always ends, and an answer clears the record. When every candidate is ejected the
//!   balancer picks among them anyway rather than fail without trying (an ejection must never
//!   turn into "unhealthy forever").
//! * A circuit breaker: an instance with its bound of requests in flight is never picked, not
//!   even when every other instance is ejected; when all are full the request is refused.
//! * Retries: only failures where the request never reached a service are retried, on an
//!   instance not yet tried, up to a bound.
//! * Eviction: when every live instance of a service has been unreachable from this gateway
//!   for the eviction wait, the gateway evicts them cluster-wide. The wait doubles with each
//!   eviction in a row, up to a bound, so an instance that keeps coming back and failing is
//!   not evicted over and over at the base rate. [`Slot`] keeps, per instance, everything
//!   these decisions read.

use rand::Rng;

use crate::GatewayError;

#[cfg(test)]
mod tests;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive connect failures that eject an instance.
    pub failures_to_eject: u32,
    /// First ejection length; each further ejection in a row doubles it.
    pub ejection_base_ms: u64,
    pub ejection_max_ms: u64,
    /// Consecutive timeouts, with no answer between them, that eject an instance; 0: timeouts
    /// never eject. Timeouts never count towards eviction.
    pub timeouts_to_eject: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            failures_to_eject: 1,
            ejection_base_ms: 1_000,
            ejection_max_ms: 30_000,
            timeouts_to_eject: 3,
        }
    }
}

/// The passive-health record of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceHealth {
    pub consecutive_failures: u32,
    /// Timeouts since the last answer or ejection.
    pub consecutive_timeouts: u32,
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
        self.eject(now_ms, policy);
        self.consecutive_failures = 0;
        true
    }

    /// Records a timeout; returns `true` if it ejected the instance. As with failures, a
    /// timeout while ejected neither counts nor extends the ejection.
    pub fn on_timeout(&mut self, now_ms: u64, policy: &HealthPolicy) -> bool {
        if policy.timeouts_to_eject == 0 || self.is_ejected(now_ms) {
            return false;
        }
        self.consecutive_timeouts = self.consecutive_timeouts.saturating_add(1);
        if self.consecutive_timeouts < policy.timeouts_to_eject {
            return false;
        }
        self.eject(now_ms, policy);
        self.consecutive_timeouts = 0;
        true
    }

    /// Ejects from `now_ms` for the base length doubled per ejection in a row (the shift
    /// capped at 16), at most the maximum.
    fn eject(&mut self, now_ms: u64, policy: &HealthPolicy) {
        let shift = self.ejections.min(16);
        let length = policy
            .ejection_base_ms
            .saturating_mul(1 << shift)
            .min(policy.ejection_max_ms);
        self.ejections = self.ejections.saturating_add(1);
        self.ejected_until_ms = now_ms.saturating_add(length);
    }
}

/// One instance as the balancer sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Candidate {
    pub in_flight: u32,
    pub ejected: bool,
    /// Already tried for this request.
    pub tried: bool,
    /// At its bound of requests in flight: never picked.
    pub full: bool,
}

/// Picks the index of the instance to send to, or `None` if every candidate was tried or is
/// full. Ejected candidates are picked only when no other is left; full ones never.
pub fn pick(candidates: &[Candidate], rng: &mut impl Rng) -> Option<usize> {
    // The pool is the untried candidates with room, the healthy ones among them if any.
    // Counted and indexed in place: this runs on every request, and a vector of indices
    // would be an allocation or two each time.
    let open = |c: &Candidate| !c.tried && !c.full;
    let healthy = candidates.iter().filter(|c| open(c) && !c.ejected).count();
    let in_pool = |c: &Candidate| open(c) && (healthy == 0 || !c.ejected);
    let n = if healthy > 0 {
        healthy
    } else {
        candidates.iter().filter(|c| open(c)).count()
    };
    // The index of the pool's `k`th member.
    let nth = |k: usize| {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| in_pool(c))
            .nth(k)
            .map(|(i, _)| i)
    };
    match n {
        0 => None,
        1 => nth(0),
        n => {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let (a, b) = (nth(a)?, nth(b)?);
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

/// When this gateway evicts instances that it cannot reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionPolicy {
    /// How long every connect must have failed before the first eviction; 0: never evict.
    pub after_ms: u64,
    /// The longest wait, however many evictions came before.
    pub after_max_ms: u64,
}

impl EvictionPolicy {
    /// Whether this gateway evicts at all.
    pub fn enabled(&self) -> bool {
        self.after_ms != 0
    }

    /// The wait before the next eviction after `evictions` evictions in a row: `after_ms`
    /// doubled per eviction (the shift capped at 16), at most `after_max_ms`.
    pub fn wait_ms(&self, evictions: u32) -> u64 {
        self.after_ms
            .saturating_mul(1 << evictions.min(16))
            .min(self.after_max_ms)
    }
}

/// How one attempt on an instance ended, as passive health counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The service answered, even with an error status: it is reachable.
    Answered,
    /// No connection could be opened: the request never reached the service.
    ConnectFailed,
    /// The connection broke during the call.
    Reset,
    /// The deadline passed. Consecutive timeouts eject (a hung instance), but never evict:
    /// a slow instance is reachable.
    TimedOut,
    /// The gateway itself could not make the attempt (its own bound or resources, such as
    /// file descriptors): says nothing about the instance.
    Local,
    /// No connection was dialed for the attempt: one to the instance had failed just before,
    /// and the attempt, waiting on the same channel, shared that failure. It was already
    /// counted, so this says nothing new about the instance; the request never reached it
    /// and may be retried elsewhere.
    NotDialed,
}

impl AttemptOutcome {
    /// The outcome of an attempt that ended in `result`. Any error that is not about reaching
    /// the instance (a status the service sent, an invalid response) means it answered.
    pub fn of(result: Result<(), &GatewayError>) -> Self {
        match result {
            Err(GatewayError::UpstreamConnect { .. }) => Self::ConnectFailed,
            Err(GatewayError::UpstreamReset { .. }) => Self::Reset,
            Err(GatewayError::UpstreamTimeout { .. }) => Self::TimedOut,
            Err(GatewayError::Overloaded { .. }) => Self::Local,
            Ok(()) | Err(_) => Self::Answered,
        }
    }
}

/// The balancer's record of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub health: InstanceHealth,
    /// Requests sent to the instance and not yet ended.
    pub in_flight: u32,
    /// Since when every attempt to connect has failed; `None` after any answer.
    pub failing_since_ms: Option<u64>,
    /// Evictions by this gateway without an answer between them; each doubles the wait.
    pub evictions: u32,
}

impl Slot {
    /// Records an attempt's outcome; returns `true` if it ejected the instance.
    ///
    /// Connect failures and broken connections count towards ejection; any answer from the
    /// service (even an error status) proves it reachable and clears the record. Only connect
    /// failures count towards eviction: a broken connection is followed by a reconnect, which
    /// tells whether the instance is gone. Timeouts count towards their own ejection
    /// ([`HealthPolicy::timeouts_to_eject`]) and nothing else; a local failure, or a failure
    /// shared with a connect already counted ([`AttemptOutcome::NotDialed`]), changes nothing.
    pub fn record(&mut self, outcome: AttemptOutcome, now_ms: u64, policy: &HealthPolicy) -> bool {
        match outcome {
            AttemptOutcome::ConnectFailed => {
                self.failing_since_ms.get_or_insert(now_ms);
                self.health.on_failure(now_ms, policy)
            }
            AttemptOutcome::Reset => self.health.on_failure(now_ms, policy),
            AttemptOutcome::TimedOut => self.health.on_timeout(now_ms, policy),
            AttemptOutcome::Local | AttemptOutcome::NotDialed => false,
            AttemptOutcome::Answered => {
                self.health.on_success();
                self.failing_since_ms = None;
                self.evictions = 0;
                false
            }
        }
    }

    /// Whether this instance has been unreachable long enough to evict under `policy`: every
    /// connect has failed for at least [`EvictionPolicy::wait_ms`], and it is still ejected,
    /// so its latest failure is recent. An instance whose ejection ended with no attempt
    /// since has not been shown unreachable since then (it may have come back): it is tried
    /// again before it can be evicted. Never when eviction is off.
    pub fn evictable(&self, now_ms: u64, policy: &EvictionPolicy) -> bool {
        policy.enabled()
            && self.health.is_ejected(now_ms)
            && self
                .failing_since_ms
                .is_some_and(|since| now_ms.saturating_sub(since) >= policy.wait_ms(self.evictions))
    }

    /// Notes an eviction by this gateway: the next one waits twice as long, counted from now.
    pub fn on_evicted(&mut self, now_ms: u64) {
        self.evictions = self.evictions.saturating_add(1);
        self.failing_since_ms = Some(now_ms);
    }
}

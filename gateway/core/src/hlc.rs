//! Hybrid logical clocks. A stamp is `(physical_ms, logical, node_id)`, totally ordered in that
//! order. A node's stamps strictly increase, even if its wall clock steps back, and a node that
//! has seen a remote stamp only issues greater ones afterwards, so a change made after seeing
//! another always wins over it.
//!
//! A remote stamp is only observed if it is admissible: at most a drift bound ahead of the
//! local wall clock ([`admissible`], which replication checks before [`Hlc::observe`]; a
//! record that fails it is quarantined and moves no clock). Otherwise one record stamped
//! far in the future would move every clock that reads it, and with it every lease stamped
//! afterwards. The arithmetic is total whatever is observed: it saturates at the top of the
//! range instead of overflowing. A clock at `(u64::MAX, u32::MAX)` cannot issue a greater
//! stamp, so it issues that stamp again (stamps stop strictly increasing there, and nothing
//! panics or wraps). No wall clock gets there, and with the bound no bus record can take a
//! clock there either.

/// A hybrid-logical-clock stamp. The derived order compares `physical_ms`, then `logical`, then
/// `node_id`: two distinct nodes never issue equal stamps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Stamp {
    pub physical_ms: u64,
    pub logical: u32,
    pub node_id: String,
}

impl Stamp {
    pub fn new(physical_ms: u64, logical: u32, node_id: impl Into<String>) -> Self {
        Self {
            physical_ms,
            logical,
            node_id: node_id.into(),
        }
    }
}

impl From<&Stamp> for switchyard_proto::registry::HlcStamp {
    fn from(s: &Stamp) -> Self {
        Self {
            physical_ms: s.physical_ms,
            logical: s.logical,
            node_id: s.node_id.clone(),
        }
    }
}

impl From<switchyard_proto::registry::HlcStamp> for Stamp {
    fn from(s: switchyard_proto::registry::HlcStamp) -> Self {
        Self {
            physical_ms: s.physical_ms,
            logical: s.logical,
            node_id: s.node_id,
        }
    }
}

/// A remote stamp further ahead of the local wall clock than the drift bound allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stamp is {ahead_ms} ms ahead of the wall clock; at most {drift_max_ms} ms allowed")]
pub struct StampTooFarAhead {
    /// How far the stamp's physical time is ahead of the wall clock, in ms.
    pub ahead_ms: u64,
    pub drift_max_ms: u64,
}

/// Whether a remote stamp may be observed: its physical time is at most `drift_max_ms` ahead
/// of `wall_ms`. Stamps behind the wall clock are always admissible (they move no clock).
pub fn admissible(stamp: &Stamp, wall_ms: u64, drift_max_ms: u64) -> Result<(), StampTooFarAhead> {
    let ahead_ms = stamp.physical_ms.saturating_sub(wall_ms);
    if ahead_ms > drift_max_ms {
        Err(StampTooFarAhead {
            ahead_ms,
            drift_max_ms,
        })
    } else {
        Ok(())
    }
}

/// The clock of one node.
#[derive(Debug, Clone)]
pub struct Hlc {
    node_id: String,
    physical_ms: u64,
    logical: u32,
}

impl Hlc {
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            physical_ms: 0,
            logical: 0,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// How far this clock runs ahead of the wall clock, in ms: 0 unless it followed a remote
    /// stamp from a node whose clock is ahead. Leases are measured from stamps, so a clock far
    /// ahead makes every lease it stamps last longer by as much.
    pub fn ahead_of_ms(&self, wall_ms: u64) -> u64 {
        self.physical_ms.saturating_sub(wall_ms)
    }

    /// A new stamp for a local change, given the wall clock.
    pub fn tick(&mut self, wall_ms: u64) -> Stamp {
        if wall_ms > self.physical_ms {
            self.physical_ms = wall_ms;
            self.logical = 0;
        } else if !crate::planted::active(crate::planted::Bug::TickRepeats) {
            self.bump_logical();
        }
        self.stamp()
    }

    /// Takes a remote stamp into account, so later local stamps are greater than it.
    pub fn observe(&mut self, remote: &Stamp, wall_ms: u64) {
        if crate::planted::active(crate::planted::Bug::ObserveIgnored) {
            return;
        }
        let physical_ms = wall_ms.max(self.physical_ms).max(remote.physical_ms);
        let logical = match (
            physical_ms == self.physical_ms,
            physical_ms == remote.physical_ms,
        ) {
            (true, true) => self.logical.max(remote.logical),
            (true, false) => self.logical,
            (false, true) => remote.logical,
            (false, false) => 0,
        };
        self.physical_ms = physical_ms;
        self.logical = logical;
        // The next tick adds one; an observation alone issues no stamp.
    }

    fn bump_logical(&mut self) {
        match self.logical.checked_add(1) {
            Some(l) => self.logical = l,
            // 4 billion changes within one millisecond: borrow the next millisecond instead.
            // At the very top of the range there is no next millisecond: the clock stays at
            // its last stamp (see the module's documentation).
            None => {
                if let Some(ms) = self.physical_ms.checked_add(1) {
                    self.physical_ms = ms;
                    self.logical = 0;
                }
            }
        }
    }

    fn stamp(&self) -> Stamp {
        Stamp::new(self.physical_ms, self.logical, self.node_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What replication does with a stamp read from the bus: [`Hlc::observe`] if it is
    /// [`admissible`]; otherwise the clock is left as it was.
    fn observe_bounded(
        hlc: &mut Hlc,
        remote: &Stamp,
        wall_ms: u64,
        drift_max_ms: u64,
    ) -> Result<(), StampTooFarAhead> {
        admissible(remote, wall_ms, drift_max_ms)?;
        hlc.observe(remote, wall_ms);
        Ok(())
    }
    use proptest::prelude::*;

    #[test]
    fn ticks_increase_when_the_wall_clock_stands_still_or_steps_back() {
        let mut hlc = Hlc::new("a");
        let s1 = hlc.tick(1000);
        let s2 = hlc.tick(1000);
        let s3 = hlc.tick(400);
        assert!(s1 < s2 && s2 < s3);
        assert_eq!(s3.physical_ms, 1000);
    }

    #[test]
    fn following_a_stamp_from_the_future_puts_the_clock_ahead_of_the_wall() {
        let mut hlc = Hlc::new("a");
        hlc.tick(1000);
        assert_eq!(hlc.ahead_of_ms(1000), 0);
        hlc.observe(&Stamp::new(61_000, 0, "b"), 1000);
        assert_eq!(hlc.ahead_of_ms(1000), 60_000);
        assert_eq!(hlc.ahead_of_ms(70_000), 0);
    }

    #[test]
    fn a_tick_after_observing_a_remote_stamp_is_greater() {
        let mut hlc = Hlc::new("a");
        let remote = Stamp::new(5000, 7, "b");
        hlc.observe(&remote, 1000);
        let local = hlc.tick(1000);
        assert!(local > remote, "{local:?} must follow {remote:?}");
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut hlc = Hlc::new("a");
        hlc.observe(&Stamp::new(10, u32::MAX, "b"), 0);
        let s = hlc.tick(0);
        assert_eq!((s.physical_ms, s.logical), (11, 0));
    }

    #[test]
    fn a_clock_at_the_top_of_the_range_saturates_instead_of_overflowing() {
        let mut hlc = Hlc::new("a");
        let top = Stamp::new(u64::MAX, u32::MAX, "b");
        hlc.observe(&top, 0);
        let s1 = hlc.tick(0);
        let s2 = hlc.tick(u64::MAX);
        assert_eq!((s1.physical_ms, s1.logical), (u64::MAX, u32::MAX));
        assert_eq!(s1, s2, "the clock stays at its last stamp");
        assert_eq!(hlc.ahead_of_ms(0), u64::MAX);
        // One below the top: the borrowed millisecond is the last one.
        let mut hlc = Hlc::new("a");
        hlc.observe(&Stamp::new(u64::MAX - 1, u32::MAX, "b"), 0);
        let s = hlc.tick(0);
        assert_eq!((s.physical_ms, s.logical), (u64::MAX, 0));
    }

    #[test]
    fn a_stamp_beyond_the_drift_bound_is_not_observed() {
        let mut hlc = Hlc::new("a");
        hlc.tick(1_000);
        for remote in [
            Stamp::new(61_001, 0, "b"),
            Stamp::new(u64::MAX, u32::MAX, "b"),
        ] {
            let err = observe_bounded(&mut hlc, &remote, 1_000, 60_000).unwrap_err();
            assert_eq!(err.drift_max_ms, 60_000);
            assert_eq!(err.ahead_ms, remote.physical_ms - 1_000);
            assert_eq!(hlc.ahead_of_ms(1_000), 0, "the clock moved");
            let s = hlc.tick(1_000);
            assert!(s.physical_ms == 1_000, "{s:?}");
        }
        // The wall clock near the top of the range does not overflow the bound.
        assert!(admissible(&Stamp::new(u64::MAX, 0, "b"), u64::MAX - 5, 60_000).is_ok());
    }

    #[test]
    fn an_admissible_stamp_is_observed_as_before() {
        let remote = Stamp::new(61_000, 7, "b");
        let mut bounded = Hlc::new("a");
        let mut plain = Hlc::new("a");
        observe_bounded(&mut bounded, &remote, 1_000, 60_000).unwrap();
        plain.observe(&remote, 1_000);
        assert_eq!(bounded.ahead_of_ms(1_000), 60_000);
        assert_eq!(bounded.tick(1_000), plain.tick(1_000));
        // Stamps from the past are always admissible.
        assert!(admissible(&Stamp::new(0, u32::MAX, "b"), 1_000, 0).is_ok());
    }

    proptest! {
        /// Whatever stamps it is shown, the clock neither panics nor goes back, and it never
        /// follows a stamp beyond the bound.
        #[test]
        fn any_stamps_observed_bounded_keep_the_clock_total_and_near_the_wall(
            steps in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), any::<u32>(), 0u64..100_000), 1..64),
        ) {
            let mut hlc = Hlc::new("n");
            let mut last: Option<Stamp> = None;
            let mut wall_max = 0u64;
            for (wall, remote_ms, remote_logical, drift) in steps {
                wall_max = wall_max.max(wall);
                let remote = Stamp::new(remote_ms, remote_logical, "r");
                let admitted = observe_bounded(&mut hlc, &remote, wall, drift).is_ok();
                prop_assert_eq!(admitted, remote_ms.saturating_sub(wall) <= drift);
                let s = hlc.tick(wall);
                if let Some(prev) = &last {
                    prop_assert!(&s >= prev);
                }
                // Each step may borrow one millisecond beyond what it observed.
                prop_assert!(s.physical_ms <= wall_max.saturating_add(100_000 + 64));
                last = Some(s);
            }
        }

        #[test]
        fn observe_is_total_at_any_stamp(
            start_ms in any::<u64>(), start_logical in any::<u32>(),
            remote_ms in any::<u64>(), remote_logical in any::<u32>(), wall in any::<u64>(),
        ) {
            let mut hlc = Hlc::new("n");
            hlc.observe(&Stamp::new(start_ms, start_logical, "s"), 0);
            let remote = Stamp::new(remote_ms, remote_logical, "r");
            hlc.observe(&remote, wall);
            let s = hlc.tick(wall);
            prop_assert!(s >= remote || (remote_ms, remote_logical) == (u64::MAX, u32::MAX));
        }


        #[test]
        fn stamps_are_strictly_monotonic(
            steps in proptest::collection::vec((0u64..10_000, any::<bool>(), 0u64..10_000, 0u32..5), 1..64)
        ) {
            let mut hlc = Hlc::new("n");
            let mut last: Option<Stamp> = None;
            for (wall, observe, remote_ms, remote_logical) in steps {
                let remote = Stamp::new(remote_ms, remote_logical, "r");
                if observe {
                    hlc.observe(&remote, wall);
                }
                let s = hlc.tick(wall);
                if observe {
                    prop_assert!(s > remote);
                }
                if let Some(prev) = &last {
                    prop_assert!(&s > prev);
                }
                last = Some(s);
            }
        }
    }
}

//! Hybrid logical clocks. A stamp is `(physical_ms, logical, node_id)`, totally ordered in that
//! order. A node's stamps strictly increase, even if its wall clock steps back, and a node that
//! has seen a remote stamp only issues greater ones afterwards, so a change made after seeing
//! another always wins over it.

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
        } else {
            self.bump_logical();
        }
        self.stamp()
    }

    /// Takes a remote stamp into account, so later local stamps are greater than it.
    pub fn observe(&mut self, remote: &Stamp, wall_ms: u64) {
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
            None => {
                self.physical_ms += 1;
                self.logical = 0;
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

    proptest! {
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

//! One view of an instance, for every front: what REST renders as JSON, the registration
//! service as protobuf and GraphQL as an object. Deciding here what an instance looks like
//! (its state, which fields a removed entry lacks, when it shows as ejected) keeps the three
//! from drifting apart; each front only spells the view in its own format.

use std::collections::BTreeMap;

use crate::balance::InstanceHealth;
use crate::registry::{Entry, EntryState, Removal};
use crate::{InstanceKey, Stamp};

/// The state of a registry entry as a gateway sees it at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceState {
    /// Registered and within its lease: it receives requests.
    Live,
    /// Registered, but the lease ran out without a renewal.
    Expired,
    /// Removed by a gateway (unreachable); its next renewal brings it back.
    Evicted,
    /// Removed by the instance itself.
    Deregistered,
}

impl InstanceState {
    /// Every state, in declaration order.
    pub const ALL: [Self; 4] = [Self::Live, Self::Expired, Self::Evicted, Self::Deregistered];

    /// The state of `entry` at `now_ms`.
    pub fn of(entry: &Entry, now_ms: u64) -> Self {
        match &entry.state {
            EntryState::Alive { .. } if entry.is_live(now_ms) => Self::Live,
            EntryState::Alive { .. } => Self::Expired,
            EntryState::Removed(Removal::Evicted) => Self::Evicted,
            EntryState::Removed(Removal::Deregistered) => Self::Deregistered,
        }
    }

    /// The documented lower-case name: `live`, `expired`, `evicted` or `deregistered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Expired => "expired",
            Self::Evicted => "evicted",
            Self::Deregistered => "deregistered",
        }
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance as the fronts show it. The fields of a registration (`addr`, `metadata`,
/// `lease_ms`, `expires_unix_ms`) are absent once the instance was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub service: String,
    pub instance_id: String,
    pub state: InstanceState,
    /// `http://host:port`; `None` once removed.
    pub addr: Option<String>,
    /// Empty once removed.
    pub metadata: BTreeMap<String, String>,
    /// `None` once removed.
    pub lease_ms: Option<u64>,
    /// When the lease runs out, in Unix milliseconds; `None` once removed.
    pub expires_unix_ms: Option<u64>,
    pub stamp: Stamp,
    /// Until when passive health keeps the instance out of balancing, in Unix milliseconds;
    /// set only while it does, and only for an instance that is still registered.
    pub ejected_until_unix_ms: Option<u64>,
}

impl InstanceView {
    /// The view of the entry at `key`, with this gateway's passive-health record of it, at
    /// `now_ms`.
    pub fn new(key: &InstanceKey, entry: &Entry, health: &InstanceHealth, now_ms: u64) -> Self {
        let (addr, metadata, lease_ms, ejected_until_unix_ms) = match &entry.state {
            EntryState::Alive {
                addr,
                metadata,
                lease_ms,
            } => (
                Some(addr.clone()),
                metadata.to_map(),
                Some(*lease_ms),
                health.is_ejected(now_ms).then_some(health.ejected_until_ms),
            ),
            EntryState::Removed(_) => (None, BTreeMap::new(), None, None),
        };
        Self {
            service: key.service.clone(),
            instance_id: key.instance_id.clone(),
            state: InstanceState::of(entry, now_ms),
            addr,
            metadata,
            lease_ms,
            expires_unix_ms: entry.expires_ms(),
            stamp: entry.stamp.clone(),
            ejected_until_unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn stamp(physical_ms: u64) -> Stamp {
        Stamp {
            physical_ms,
            logical: 2,
            node_id: "gw-1".into(),
        }
    }

    fn alive(physical_ms: u64, lease_ms: u64) -> Entry {
        Entry {
            stamp: stamp(physical_ms),
            state: EntryState::Alive {
                addr: "http://10.0.0.1:80".into(),
                metadata: [("zone".to_owned(), "a".to_owned())].into(),
                lease_ms,
            },
        }
    }

    fn removed(removal: Removal) -> Entry {
        Entry {
            stamp: stamp(1_000),
            state: EntryState::Removed(removal),
        }
    }

    fn ejected_until(ejected_until_ms: u64) -> InstanceHealth {
        InstanceHealth {
            ejections: 1,
            ejected_until_ms,
            ..InstanceHealth::default()
        }
    }

    #[test]
    fn states_and_their_names() {
        let entry = alive(1_000, 500);
        assert_eq!(InstanceState::of(&entry, 1_499), InstanceState::Live);
        assert_eq!(InstanceState::of(&entry, 1_500), InstanceState::Expired);
        assert_eq!(
            InstanceState::of(&removed(Removal::Evicted), 0),
            InstanceState::Evicted
        );
        assert_eq!(
            InstanceState::of(&removed(Removal::Deregistered), 0),
            InstanceState::Deregistered
        );
        let names: Vec<&str> = InstanceState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["live", "expired", "evicted", "deregistered"]);
        assert_eq!(InstanceState::Evicted.to_string(), "evicted");
    }

    #[test]
    fn a_live_instance_shows_its_registration_and_its_ejection() {
        let key = InstanceKey::new("orders", "o-1");
        let view = InstanceView::new(&key, &alive(1_000, 500), &ejected_until(1_200), 1_100);
        assert_eq!(
            view,
            InstanceView {
                service: "orders".into(),
                instance_id: "o-1".into(),
                state: InstanceState::Live,
                addr: Some("http://10.0.0.1:80".into()),
                metadata: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
                lease_ms: Some(500),
                expires_unix_ms: Some(1_500),
                stamp: stamp(1_000),
                ejected_until_unix_ms: Some(1_200),
            }
        );
        let later = InstanceView::new(&key, &alive(1_000, 500), &ejected_until(1_200), 1_200);
        assert_eq!(later.ejected_until_unix_ms, None, "the ejection has ended");
    }

    #[test]
    fn a_removed_instance_shows_no_registration_and_no_ejection() {
        let key = InstanceKey::new("orders", "o-1");
        for (removal, state) in [
            (Removal::Evicted, InstanceState::Evicted),
            (Removal::Deregistered, InstanceState::Deregistered),
        ] {
            let view = InstanceView::new(&key, &removed(removal), &ejected_until(u64::MAX), 5);
            assert_eq!(view.state, state);
            assert_eq!(view.addr, None);
            assert!(view.metadata.is_empty());
            assert_eq!((view.lease_ms, view.expires_unix_ms), (None, None));
            assert_eq!(view.ejected_until_unix_ms, None);
            assert_eq!(view.stamp, stamp(1_000));
        }
    }

    proptest! {
        #[test]
        fn the_view_agrees_with_the_entry(
            physical_ms in 0u64..1_000_000,
            lease_ms in 0u64..1_000_000,
            now_ms in 0u64..3_000_000,
            until_ms in 0u64..3_000_000,
            removal in prop_oneof![Just(None), Just(Some(Removal::Evicted)), Just(Some(Removal::Deregistered))],
        ) {
            let entry = match removal {
                None => alive(physical_ms, lease_ms),
                Some(r) => Entry { stamp: stamp(physical_ms), state: EntryState::Removed(r) },
            };
            let health = ejected_until(until_ms);
            let view = InstanceView::new(&InstanceKey::new("s", "i"), &entry, &health, now_ms);
            prop_assert_eq!(view.state == InstanceState::Live, entry.is_live(now_ms));
            prop_assert_eq!(view.addr.is_some(), removal.is_none());
            prop_assert_eq!(view.lease_ms.is_some(), removal.is_none());
            prop_assert_eq!(view.expires_unix_ms, entry.expires_ms());
            prop_assert_eq!(
                view.ejected_until_unix_ms.is_some(),
                removal.is_none() && health.is_ejected(now_ms)
            );
        }
    }
}

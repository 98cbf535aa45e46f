//! Registry events: the unit of replication. Each event is one change to one instance, stamped
//! by the hybrid logical clock of the gateway that accepted it, and carries that gateway's id.
//! Decoding validates everything, so a malformed record on the bus is reported and skipped,
//! never applied and never a panic. A decoded event is then checked against the reader's
//! bounds ([`Event::admissible`]): a stamp too far ahead of the reader's wall clock, or a lease
//! longer than the longest it grants, is quarantined rather than applied.

use prost::Message;
use switchyard_proto::registry as pb;

use crate::Stamp;
use crate::hlc::{self, StampTooFarAhead};
use crate::metadata::Metadata;
use crate::names;
use crate::registry::{Entry, EntryState, InstanceKey, Removal};

/// Largest encoded event accepted from the bus.
pub const EVENT_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    Register,
    Renew,
    Deregister,
    Evict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: InstanceKey,
    /// `http://host:port`; empty for deregistrations and evictions.
    pub addr: String,
    pub metadata: Metadata,
    pub lease_ms: u64,
    pub stamp: Stamp,
    pub origin_node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("registry event is {0} bytes; at most {EVENT_BYTES_MAX}")]
    TooLarge(usize),
    #[error("registry event does not decode: {0}")]
    Decode(String),
    #[error("registry event is invalid: {0}")]
    Invalid(String),
}

/// What a reader accepts from the bus beyond a valid encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBounds {
    /// How far a stamp may run ahead of the reader's wall clock (`registry.clock_drift_max_ms`).
    pub clock_drift_max_ms: u64,
    /// The longest lease of a live instance (`registry.lease_max_ms`).
    pub lease_max_ms: u64,
}

/// Why a decoded event is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Inadmissible {
    #[error(transparent)]
    StampAhead(#[from] StampTooFarAhead),
    #[error("lease of {lease_ms} ms is outside 1..={lease_max_ms} ms")]
    LeaseOutOfBounds { lease_ms: u64, lease_max_ms: u64 },
}

impl Event {
    /// Whether this event may be observed and applied by a reader whose wall clock reads
    /// `wall_ms`: its stamp at most `clock_drift_max_ms` ahead, and, for a live instance, its
    /// lease within `1..=lease_max_ms`. Removals carry no lease; their stamp is checked all the
    /// same, since a removal stamped in the future would bar the instance until then.
    pub fn admissible(&self, wall_ms: u64, bounds: &EventBounds) -> Result<(), Inadmissible> {
        let alive = matches!(self.kind, EventKind::Register | EventKind::Renew);
        if alive && !(1..=bounds.lease_max_ms).contains(&self.lease_ms) {
            return Err(Inadmissible::LeaseOutOfBounds {
                lease_ms: self.lease_ms,
                lease_max_ms: bounds.lease_max_ms,
            });
        }
        hlc::admissible(&self.stamp, wall_ms, bounds.clock_drift_max_ms)?;
        Ok(())
    }

    /// The event that produces `entry` for `key` (what a delete marker carries to name the
    /// entry it deletes), as written by `origin_node`.
    pub fn of_entry(key: InstanceKey, entry: Entry, origin_node: String) -> Self {
        let (kind, addr, metadata, lease_ms) = match entry.state {
            EntryState::Alive {
                addr,
                metadata,
                lease_ms,
            } => (EventKind::Register, addr, metadata, lease_ms),
            EntryState::Removed(Removal::Deregistered) => {
                (EventKind::Deregister, String::new(), Metadata::new(), 0)
            }
            EntryState::Removed(Removal::Evicted) => {
                (EventKind::Evict, String::new(), Metadata::new(), 0)
            }
        };
        Self {
            kind,
            key,
            addr,
            metadata,
            lease_ms,
            stamp: entry.stamp,
            origin_node,
        }
    }

    /// The bus key: `service/instance_id`, so a compacted topic keeps the latest event of each
    /// instance.
    pub fn bus_key(&self) -> String {
        self.key.bus_key()
    }

    /// The registry entry this event produces.
    pub fn entry(&self) -> Entry {
        let state = match self.kind {
            EventKind::Register | EventKind::Renew => EntryState::Alive {
                addr: self.addr.clone(),
                metadata: self.metadata.clone(),
                lease_ms: self.lease_ms,
            },
            EventKind::Deregister => EntryState::Removed(Removal::Deregistered),
            EventKind::Evict => EntryState::Removed(Removal::Evicted),
        };
        Entry {
            stamp: self.stamp.clone(),
            state,
        }
    }

    /// The key and the entry this event produces, moved out of the event (what
    /// [`Event::entry`] copies).
    pub fn into_parts(self) -> (InstanceKey, Entry) {
        let state = match self.kind {
            EventKind::Register | EventKind::Renew => EntryState::Alive {
                addr: self.addr,
                metadata: self.metadata,
                lease_ms: self.lease_ms,
            },
            EventKind::Deregister => EntryState::Removed(Removal::Deregistered),
            EventKind::Evict => EntryState::Removed(Removal::Evicted),
        };
        let entry = Entry {
            stamp: self.stamp,
            state,
        };
        (self.key, entry)
    }

    pub fn encode(&self) -> Vec<u8> {
        let kind = match self.kind {
            EventKind::Register => pb::EventKind::Register,
            EventKind::Renew => pb::EventKind::Renew,
            EventKind::Deregister => pb::EventKind::Deregister,
            EventKind::Evict => pb::EventKind::Evict,
        };
        pb::RegistryEvent {
            kind: kind as i32,
            service: self.key.service.clone(),
            instance_id: self.key.instance_id.clone(),
            addr: self.addr.clone(),
            metadata: self.metadata.to_map(),
            lease_ms: self.lease_ms,
            stamp: Some((&self.stamp).into()),
            origin_node: self.origin_node.clone(),
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        if bytes.len() > EVENT_BYTES_MAX {
            return Err(EventError::TooLarge(bytes.len()));
        }
        let raw =
            pb::RegistryEvent::decode(bytes).map_err(|e| EventError::Decode(e.to_string()))?;
        Self::try_from(raw)
    }
}

impl TryFrom<pb::RegistryEvent> for Event {
    type Error = EventError;

    fn try_from(raw: pb::RegistryEvent) -> Result<Self, EventError> {
        let invalid = |e: crate::GatewayError| EventError::Invalid(e.to_string());
        let kind = match pb::EventKind::try_from(raw.kind) {
            Ok(pb::EventKind::Register) => EventKind::Register,
            Ok(pb::EventKind::Renew) => EventKind::Renew,
            Ok(pb::EventKind::Deregister) => EventKind::Deregister,
            Ok(pb::EventKind::Evict) => EventKind::Evict,
            Ok(pb::EventKind::Unspecified) | Err(_) => {
                return Err(EventError::Invalid(format!("unknown kind {}", raw.kind)));
            }
        };
        names::validate_service(&raw.service).map_err(invalid)?;
        names::validate_instance_id(&raw.instance_id).map_err(invalid)?;
        let stamp: Stamp = raw
            .stamp
            .ok_or_else(|| EventError::Invalid("no stamp".into()))?
            .into();
        if stamp.node_id.is_empty() {
            return Err(EventError::Invalid("stamp has no node id".into()));
        }
        let alive = matches!(kind, EventKind::Register | EventKind::Renew);
        let addr = if alive {
            names::validate_metadata(&raw.metadata).map_err(invalid)?;
            if raw.lease_ms == 0 {
                return Err(EventError::Invalid(
                    "live instance with a zero lease".into(),
                ));
            }
            let addr = names::normalize_addr(&raw.addr).map_err(invalid)?;
            if addr != raw.addr {
                return Err(EventError::Invalid(format!(
                    "addr {:?} is not normalised",
                    raw.addr
                )));
            }
            addr
        } else {
            String::new()
        };
        Ok(Self {
            kind,
            key: InstanceKey::new(raw.service, raw.instance_id),
            addr,
            metadata: if alive {
                Metadata::from(raw.metadata)
            } else {
                Metadata::new()
            },
            lease_ms: if alive { raw.lease_ms } else { 0 },
            stamp,
            origin_node: raw.origin_node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register() -> Event {
        Event {
            kind: EventKind::Register,
            key: InstanceKey::new("orders", "i-1"),
            addr: "http://127.0.0.1:7001".into(),
            metadata: [("zone".into(), "a".into())].into(),
            lease_ms: 30_000,
            stamp: Stamp::new(1_000, 2, "gw-1"),
            origin_node: "gw-1".into(),
        }
    }

    #[test]
    fn round_trips() {
        let ev = register();
        assert_eq!(Event::decode(&ev.encode()).unwrap(), ev);
        let dereg = Event {
            kind: EventKind::Deregister,
            addr: String::new(),
            metadata: Metadata::new(),
            lease_ms: 0,
            ..register()
        };
        assert_eq!(Event::decode(&dereg.encode()).unwrap(), dereg);
        assert_eq!(ev.bus_key(), "orders/i-1");
    }

    #[test]
    fn the_event_of_an_entry_produces_that_entry() {
        let live = register();
        for kind in [EventKind::Register, EventKind::Deregister, EventKind::Evict] {
            let ev = if kind == EventKind::Register {
                live.clone()
            } else {
                Event {
                    kind,
                    addr: String::new(),
                    metadata: Metadata::new(),
                    lease_ms: 0,
                    ..live.clone()
                }
            };
            assert_eq!(ev.clone().into_parts(), (ev.key.clone(), ev.entry()));
            let again = Event::of_entry(ev.key.clone(), ev.entry(), "gw-2".into());
            assert_eq!(again.entry(), ev.entry());
            assert_eq!(again.origin_node, "gw-2");
            assert_eq!(Event::decode(&again.encode()).unwrap(), again);
        }
    }

    const BOUNDS: EventBounds = EventBounds {
        clock_drift_max_ms: 60_000,
        lease_max_ms: 3_600_000,
    };

    #[test]
    fn an_event_within_its_bounds_is_admissible() {
        let ev = register();
        assert_eq!(ev.admissible(1_000, &BOUNDS), Ok(()));
        let at_the_bounds = Event {
            lease_ms: BOUNDS.lease_max_ms,
            stamp: Stamp::new(61_000, u32::MAX, "gw-1"),
            ..register()
        };
        assert_eq!(at_the_bounds.admissible(1_000, &BOUNDS), Ok(()));
    }

    #[test]
    fn a_stamp_too_far_ahead_is_inadmissible_whatever_the_kind() {
        for kind in [EventKind::Register, EventKind::Deregister] {
            for physical_ms in [61_001, u64::MAX] {
                let ev = Event {
                    kind,
                    stamp: Stamp::new(physical_ms, u32::MAX, "gw-1"),
                    ..register()
                };
                let err = ev.admissible(1_000, &BOUNDS).unwrap_err();
                assert!(
                    matches!(err, Inadmissible::StampAhead(_)),
                    "{kind:?} {physical_ms}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn a_lease_out_of_bounds_is_inadmissible() {
        for lease_ms in [0, BOUNDS.lease_max_ms + 1, u64::MAX] {
            let ev = Event {
                kind: EventKind::Renew,
                lease_ms,
                ..register()
            };
            let err = ev.admissible(1_000, &BOUNDS).unwrap_err();
            assert_eq!(
                err,
                Inadmissible::LeaseOutOfBounds {
                    lease_ms,
                    lease_max_ms: BOUNDS.lease_max_ms
                }
            );
        }
        // A removal carries no lease.
        let dereg = Event {
            kind: EventKind::Deregister,
            lease_ms: 0,
            ..register()
        };
        assert_eq!(dereg.admissible(1_000, &BOUNDS), Ok(()));
    }

    #[test]
    fn rejects_what_it_cannot_apply() {
        assert!(matches!(
            Event::decode(&[0xff, 0xff]),
            Err(EventError::Decode(_))
        ));
        assert!(matches!(
            Event::decode(&vec![0; EVENT_BYTES_MAX + 1]),
            Err(EventError::TooLarge(_))
        ));
        let mut raw = pb::RegistryEvent::decode(register().encode().as_slice()).unwrap();
        raw.stamp = None;
        assert!(Event::try_from(raw.clone()).is_err());
        raw.stamp = Some(pb::HlcStamp::default());
        assert!(Event::try_from(raw.clone()).is_err(), "empty node id");
        raw.stamp = Some((&Stamp::new(1, 0, "n")).into());
        raw.service = "bad/name".into();
        assert!(Event::try_from(raw.clone()).is_err());
        raw.service = "ok".into();
        raw.kind = 42;
        assert!(Event::try_from(raw.clone()).is_err());
        raw.kind = pb::EventKind::Register as i32;
        raw.lease_ms = 0;
        assert!(Event::try_from(raw).is_err());
    }
}

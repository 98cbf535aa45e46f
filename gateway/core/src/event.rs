//! Registry events: the unit of replication. Each event is one change to one instance, stamped
//! by the hybrid logical clock of the gateway that accepted it, and carries that gateway's id.
//! Decoding validates everything, so a malformed record on the bus is reported and skipped,
//! never applied and never a panic.

use std::collections::BTreeMap;

use prost::Message;
use switchyard_proto::registry as pb;

use crate::Stamp;
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
    pub metadata: BTreeMap<String, String>,
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

impl Event {
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
            metadata: self.metadata.clone(),
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
            metadata: if alive { raw.metadata } else { BTreeMap::new() },
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
            metadata: BTreeMap::from([("zone".into(), "a".into())]),
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
            metadata: BTreeMap::new(),
            lease_ms: 0,
            ..register()
        };
        assert_eq!(Event::decode(&dereg.encode()).unwrap(), dereg);
        assert_eq!(ev.bus_key(), "orders/i-1");
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

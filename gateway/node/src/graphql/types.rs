//! The GraphQL object types: views of the registry, of the node and of a call's answer, built
//! from the core's types. They hold plain data, so resolving them cannot fail.

use std::collections::BTreeMap;

use async_graphql::{ComplexObject, Context, Enum, InputObject, Json, SimpleObject};
use switchyard_core::event::{Event, EventKind};
use switchyard_core::registry::{Entry, EntryState, Removal};
use switchyard_core::view::{self, InstanceView};
use switchyard_core::{InstanceKey, Stamp};

use super::{Backend, Front};
use crate::status::Status;

/// One HTTP header field. Header lists keep their order and duplicates.
#[derive(Debug, Clone, SimpleObject, InputObject)]
#[graphql(input_name = "HeaderInput")]
pub struct Header {
    /// Lower-case in answers; any case in calls.
    pub name: String,
    pub value: String,
}

/// A service's answer to a `call`. A status the service chose (a 404 or a 500 of its own
/// included) is an answer, not an error.
#[derive(Debug, Clone, SimpleObject)]
pub struct CallResult {
    /// The HTTP status the service answered, 200..=599.
    pub status: u16,
    /// The response headers as REST would send them (hop-by-hop and `content-length` dropped).
    pub headers: Vec<Header>,
    /// The body as UTF-8 text; bytes that are not UTF-8 become U+FFFD (use REST for binary).
    pub body: String,
    /// The body parsed as JSON when the content type says JSON or the body is a JSON object
    /// or array; null otherwise.
    pub json: Option<Json<serde_json::Value>>,
    /// The request id the service saw (`x-request-id`).
    pub request_id: String,
}

/// A metadata key and value of an instance.
#[derive(Debug, Clone, SimpleObject, InputObject)]
#[graphql(input_name = "MetadataInput")]
pub struct MetadataEntry {
    pub key: String,
    pub value: String,
}

pub fn metadata_list(metadata: &BTreeMap<String, String>) -> Vec<MetadataEntry> {
    metadata
        .iter()
        .map(|(key, value)| MetadataEntry {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// A hybrid-logical-clock stamp: registry entries with greater stamps win.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(name = "Stamp")]
pub struct StampView {
    pub physical_ms: u64,
    pub logical: u32,
    pub node_id: String,
}

impl From<&Stamp> for StampView {
    fn from(s: &Stamp) -> Self {
        Self {
            physical_ms: s.physical_ms,
            logical: s.logical,
            node_id: s.node_id.clone(),
        }
    }
}

/// The state of a registry entry as this node sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum InstanceState {
    /// Registered and within its lease: it receives requests.
    Live,
    /// Registered, but the lease ran out without a renewal.
    Expired,
    /// Removed by the gateway (unreachable); its next renewal brings it back.
    Evicted,
    /// Removed by the instance itself.
    Deregistered,
}

impl From<view::InstanceState> for InstanceState {
    fn from(state: view::InstanceState) -> Self {
        match state {
            view::InstanceState::Live => Self::Live,
            view::InstanceState::Expired => Self::Expired,
            view::InstanceState::Evicted => Self::Evicted,
            view::InstanceState::Deregistered => Self::Deregistered,
        }
    }
}

/// One instance of a service, as this node's registry holds it.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(complex)]
pub struct Instance {
    pub service: String,
    pub instance_id: String,
    pub state: InstanceState,
    #[graphql(skip)]
    pub addr: Option<String>,
    #[graphql(skip)]
    pub metadata: Vec<MetadataEntry>,
    /// Null once removed.
    pub lease_ms: Option<u64>,
    /// When the lease runs out, Unix ms; null once removed.
    pub expires_unix_ms: Option<u64>,
    pub stamp: StampView,
    /// Set while passive health keeps the instance out of balancing, Unix ms.
    pub ejected_until_unix_ms: Option<u64>,
}

#[ComplexObject]
impl Instance {
    /// `http://host:port`; null once removed, and on the public listener unless
    /// `graphql.registry_details_on_public` (where it is the door to the service, past the
    /// gateway).
    async fn addr(&self, ctx: &Context<'_>) -> Option<&str> {
        shows_details(ctx).then_some(self.addr.as_deref()).flatten()
    }

    /// The instance's metadata; empty on the public listener unless
    /// `graphql.registry_details_on_public`.
    async fn metadata(&self, ctx: &Context<'_>) -> &[MetadataEntry] {
        if shows_details(ctx) {
            &self.metadata
        } else {
            &[]
        }
    }
}

/// Whether instances' addresses and metadata are shown: always on the control listener, on
/// the public one only with `graphql.registry_details_on_public`.
fn shows_details(ctx: &Context<'_>) -> bool {
    match ctx.data::<Front>() {
        Ok(Front::Public) => ctx
            .data::<std::sync::Arc<Backend>>()
            .is_ok_and(|b| b.config.registry_details_on_public),
        _ => true,
    }
}

impl From<InstanceView> for Instance {
    fn from(view: InstanceView) -> Self {
        Self {
            service: view.service,
            instance_id: view.instance_id,
            state: view.state.into(),
            addr: view.addr,
            metadata: metadata_list(&view.metadata),
            lease_ms: view.lease_ms,
            expires_unix_ms: view.expires_unix_ms,
            stamp: (&view.stamp).into(),
            ejected_until_unix_ms: view.ejected_until_unix_ms,
        }
    }
}

/// A service and its instances (deregistered ones left out).
#[derive(Debug, Clone, SimpleObject)]
pub struct Service {
    pub name: String,
    pub instances: Vec<Instance>,
}

/// What a registry change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum ChangeKind {
    Register,
    Renew,
    Deregister,
    Evict,
}

impl From<EventKind> for ChangeKind {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Register => Self::Register,
            EventKind::Renew => Self::Renew,
            EventKind::Deregister => Self::Deregister,
            EventKind::Evict => Self::Evict,
        }
    }
}

/// One change to the registry, as applied by this node.
#[derive(Debug, Clone, SimpleObject)]
pub struct RegistryChange {
    pub kind: ChangeKind,
    /// The entry the change produced.
    pub instance: Instance,
    /// The gateway that accepted the change.
    pub origin_node: String,
    /// True for the entries sent first when the subscription asked for a snapshot; false for
    /// changes applied after the subscription started.
    pub snapshot: bool,
}

impl RegistryChange {
    pub fn from_event(status: &Status, event: &Event, now_ms: u64) -> Self {
        Self {
            kind: event.kind.into(),
            instance: status.view(&event.key, &event.entry(), now_ms).into(),
            origin_node: event.origin_node.clone(),
            snapshot: false,
        }
    }

    /// A snapshot entry: the kind is the one that produced the entry's state.
    pub fn from_entry(status: &Status, key: &InstanceKey, entry: &Entry, now_ms: u64) -> Self {
        let kind = match &entry.state {
            EntryState::Alive { .. } => ChangeKind::Register,
            EntryState::Removed(Removal::Deregistered) => ChangeKind::Deregister,
            EntryState::Removed(Removal::Evicted) => ChangeKind::Evict,
        };
        Self {
            kind,
            instance: status.view(key, entry, now_ms).into(),
            origin_node: entry.stamp.node_id.clone(),
            snapshot: true,
        }
    }
}

//! The mutation root (registration, as `PUT` and `DELETE /v1/services/...` do it) and the
//! subscription root (the registry's changes as this node applies them).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_graphql::{Context, InputObject, Object, SimpleObject};
use futures_util::stream::{self, Stream, StreamExt};
use switchyard_core::GatewayError;
use switchyard_core::event::{Event, EventKind};
use switchyard_core::planted::{self, Bug};
use switchyard_core::registry::{EntryState, Removal};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use switchyard_core::registration::Registration;

use super::types::{Instance, MetadataEntry, RegistryChange};
use super::{Backend, Carrier, backend, field_error, null_with_error, reader};
use crate::outbox::Delivery;
use crate::registrar::{Caller, Via};

/// The mutation root. Served on the control listener; on the public one only with
/// `graphql.mutations_on_public`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mutation;

/// An instance to register, as the REST body of `PUT /v1/services/{service}/instances/{id}`.
#[derive(Debug, Clone, InputObject)]
pub struct RegisterInput {
    pub service: String,
    pub instance_id: String,
    /// `host:port` or `http://host:port`.
    pub addr: String,
    #[graphql(default)]
    pub metadata: Vec<MetadataEntry>,
    /// 0: the configured default (`registry.lease_default_ms`).
    #[graphql(default)]
    pub lease_ms: u64,
    /// Record the change as a renewal rather than a registration.
    #[graphql(default)]
    pub renew: bool,
}

/// The answer to `register`.
#[derive(Debug, Clone, SimpleObject)]
pub struct Registered {
    pub instance: Instance,
    /// When to renew: a third of the lease.
    pub renew_after_ms: u64,
    /// False while the change waits for the bus (REST answers 202 then): in force on this
    /// gateway, on the others once the bus takes it.
    pub published: bool,
}

/// The answer to `deregister`.
#[derive(Debug, Clone, SimpleObject)]
pub struct Deregistered {
    pub service: String,
    pub instance_id: String,
    /// Whether the instance was live.
    pub existed: bool,
    pub published: bool,
}

fn metadata_map(list: Vec<MetadataEntry>) -> Result<BTreeMap<String, String>, GatewayError> {
    let mut map = BTreeMap::new();
    for MetadataEntry { key, value } in list {
        if map.contains_key(&key) {
            return Err(GatewayError::InvalidArgument {
                field: "metadata",
                reason: format!("key {key:?} is given twice"),
            });
        }
        map.insert(key, value);
    }
    Ok(map)
}

/// Registration, as REST and gRPC do it. Served on the control listener; on the public one
/// only with `graphql.mutations_on_public`.
#[Object]
impl Mutation {
    /// Registers (or renews) an instance through this gateway: applied here at once and
    /// published to the bus, exactly as REST and gRPC registration.
    async fn register(
        &self,
        ctx: &Context<'_>,
        input: RegisterInput,
    ) -> async_graphql::Result<Option<Registered>> {
        let backend = backend(ctx)?;
        let kind = if input.renew {
            EventKind::Renew
        } else {
            EventKind::Register
        };
        let metadata = match metadata_map(input.metadata) {
            Ok(metadata) => metadata,
            Err(error) => return null_with_error(ctx, &error, None),
        };
        let registration = Registration {
            metadata,
            service: input.service,
            instance_id: input.instance_id,
            addr: input.addr,
            lease_ms: input.lease_ms,
        };
        let registered = match backend
            .registrar
            .register(&mut caller(ctx), registration, kind)
            .await
        {
            Ok(registered) => registered,
            Err(error) => return null_with_error(ctx, &error, None),
        };
        let status = &backend.status;
        let view = status.view(&registered.key, &registered.entry, status.now_ms());
        Ok(Some(Registered {
            renew_after_ms: registered.renew_after_ms,
            instance: Instance::from(view),
            published: registered.delivery == Delivery::Published,
        }))
    }

    /// Deregisters an instance; succeeds for unknown instances too.
    async fn deregister(
        &self,
        ctx: &Context<'_>,
        service: String,
        instance_id: String,
    ) -> async_graphql::Result<Option<Deregistered>> {
        let gone = match backend(ctx)?
            .registrar
            .deregister(&mut caller(ctx), &service, &instance_id)
            .await
        {
            Ok(gone) => gone,
            Err(error) => return null_with_error(ctx, &error, None),
        };
        Ok(Some(Deregistered {
            service,
            instance_id,
            existed: gone.existed,
            published: gone.delivery == Delivery::Published,
        }))
    }
}

/// The subscription root.
#[derive(Debug, Default, Clone, Copy)]
pub struct Subscription;

/// The registry, watched.
#[async_graphql::Subscription]
impl Subscription {
    /// The registry's changes as this node applies them, its own and those read from the bus
    /// (so registrations made through other gateways too), in the order applied; `service`
    /// narrows them to one service. With `snapshot: true` the current entries (deregistered
    /// ones left out) come first, marked `snapshot`, then the changes; an entry changed while
    /// the snapshot is taken may appear twice, and the stamps tell which is newer. A subscriber
    /// that falls too far behind gets one `subscription_lagged` error and the stream ends:
    /// subscribe again and re-read the registry.
    async fn registry_changes(
        &self,
        ctx: &Context<'_>,
        service: Option<String>,
        #[graphql(default)] snapshot: bool,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<RegistryChange>> + use<>>
    {
        let backend = reader(ctx)?.clone();
        // Subscribe before the snapshot is read, so no change falls between the two.
        let changes = backend.store.watch();
        let first = if snapshot {
            snapshot_of(&backend, service.as_deref())
        } else {
            Vec::new()
        };
        let feed = stream::unfold(Some((changes, backend, service)), next_change);
        Ok(stream::iter(first.into_iter().map(Ok)).chain(feed))
    }
}

type FeedState = Option<(Receiver<Event>, Arc<Backend>, Option<String>)>;

/// The next change for the subscriber, or its lag error, after which the feed ends.
async fn next_change(
    state: FeedState,
) -> Option<(async_graphql::Result<RegistryChange>, FeedState)> {
    let (mut changes, backend, service) = state?;
    loop {
        match changes.recv().await {
            Ok(event) if service.as_ref().is_some_and(|s| *s != event.key.service) => continue,
            Ok(event)
                if planted::active(Bug::SubscriptionGap) && event.kind == EventKind::Renew =>
            {
                continue;
            }
            Ok(event) => {
                let status = &backend.status;
                let change = RegistryChange::from_event(status, &event, status.now_ms());
                return Some((Ok(change), Some((changes, backend, service))));
            }
            Err(RecvError::Lagged(missed)) => {
                let error = GatewayError::SubscriptionLagged { missed };
                return Some((Err(field_error(&error, None)), None));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

fn snapshot_of(backend: &Backend, service: Option<&str>) -> Vec<RegistryChange> {
    let status = &backend.status;
    let now = status.now_ms();
    let registry = backend.store.registry();
    let entries: Box<dyn Iterator<Item = _>> = match service {
        Some(service) => Box::new(registry.service_entries(service)),
        None => Box::new(registry.entries()),
    };
    entries
        .filter(|(_, e)| e.state != EntryState::Removed(Removal::Deregistered))
        .map(|(key, entry)| RegistryChange::from_entry(status, key, entry, now))
        .collect()
}

/// The caller of a mutation: the client and the headers of the HTTP request (or WebSocket
/// upgrade) that carried it.
fn caller(ctx: &Context<'_>) -> Caller {
    match ctx.data::<Carrier>() {
        Ok(carrier) => Caller::new(Via::Graphql, Some(carrier.client), carrier.headers.clone())
            .with_peer(carrier.peer.clone()),
        Err(_) => Caller::new(Via::Graphql, None, Default::default()),
    }
}

//! The registrar: the one path by which the registry changes here, whichever front asked
//! (REST, gRPC or GraphQL on the control listener, or the gateway itself evicting an
//! unreachable service). A change is validated by the core's rules, checked by the
//! registration policies against the caller, applied at once, and queued for the bus.
//!
//! Every change a caller asks for needs a credential that covers the service (see
//! [`crate::auth`]), checked first, before anything of the change is read further; the
//! gateway's own evictions need none.
//!
//! No change is made before the node has caught up with the bus (see [`Store::caught_up`]):
//! until then its clock may not have seen the stamps already on the bus, and a change stamped
//! now could lose last-writer-wins to an older one while answered as a success. Such changes
//! are refused with `not_ready` (decision 0009).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use switchyard_core::event::{Event, EventKind};
use switchyard_core::identity::Identity;
use switchyard_core::planted::{self, Bug};
use switchyard_core::registration::{LeaseBounds, Registration, ValidRegistration};
use switchyard_core::registry::{Entry, EntryState};
use switchyard_core::{GatewayError, InstanceKey, Stamp, names};
use switchyard_proto::audit::RegistryAction;

use crate::address::Addresses;
use crate::audit::{Auditor, RegistryFacts};
use crate::auth::{Authenticator, Refusal};
use crate::config::{Config, ControlReads};
use crate::outbox::{Delivery, Outbox, Ticket};
use crate::store::Store;
use crate::telemetry::{AddressStage, ChangeOp, Telemetry};
use crate::tls::PeerCertificate;

/// Which front a registry change came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Rest,
    Grpc,
    Graphql,
    /// The gateway itself (an eviction).
    Gateway,
}

/// Who asks for a registry change.
#[derive(Debug, Clone)]
pub struct Caller {
    pub via: Via,
    /// The peer address of the connection, when the front knows it.
    pub client_addr: Option<SocketAddr>,
    /// What the caller presented with the change: the HTTP request's headers, the gRPC
    /// request's metadata, or the headers of the request that carried a GraphQL mutation.
    /// Where a credential (`authorization`) is found.
    pub headers: HeaderMap,
    /// The authenticated identity, once a registration policy has established one.
    pub identity: Option<Identity>,
    /// The client certificate the listener verified on the caller's connection, if any.
    pub peer: Option<Arc<PeerCertificate>>,
}

impl Via {
    /// The name an audit record gives it.
    pub fn label(self) -> &'static str {
        match self {
            Via::Rest => "rest",
            Via::Grpc => "grpc",
            Via::Graphql => "graphql",
            Via::Gateway => "gateway",
        }
    }
}

impl Caller {
    /// A caller on `via` from `client_addr` that presented `headers`, not (yet) authenticated.
    pub fn new(via: Via, client_addr: Option<SocketAddr>, headers: HeaderMap) -> Self {
        Self {
            via,
            client_addr,
            headers,
            identity: None,
            peer: None,
        }
    }

    /// The same caller, on a connection with client certificate `peer`.
    pub fn with_peer(mut self, peer: Option<Arc<PeerCertificate>>) -> Self {
        self.peer = peer;
        self
    }

    /// The gateway itself, for its own changes (evictions).
    pub fn gateway() -> Self {
        Self::new(Via::Gateway, None, HeaderMap::new())
    }
}

/// A change a caller asks for, as the registration policies see it.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A registration or renewal that passed the core's checks.
    Register {
        registration: &'a ValidRegistration,
        kind: EventKind,
    },
    Deregister {
        key: &'a InstanceKey,
    },
}

impl Change<'_> {
    /// The instance the change is about.
    pub fn key(&self) -> &InstanceKey {
        match self {
            Change::Register { registration, .. } => &registration.key,
            Change::Deregister { key } => key,
        }
    }
}

/// How many services, entries per service and entries in all the registry may hold before a
/// change that adds one more is refused (`registry.services_max`,
/// `registry.instances_per_service_max`, `registry.entries_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub services_max: usize,
    pub instances_per_service_max: usize,
    pub entries_max: usize,
}

/// A check on every registry change a caller asks for, before it is applied. Policies run in
/// order; the first refusal is the answer. A policy may record the caller's identity for the
/// policies after it.
pub trait RegistrationPolicy: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    fn check(&self, caller: &mut Caller, change: &Change<'_>) -> Result<(), GatewayError>;
}

impl std::fmt::Debug for dyn RegistrationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The answer to a registration or renewal.
#[derive(Debug, Clone)]
pub struct Registered {
    pub key: InstanceKey,
    pub entry: Entry,
    pub delivery: Delivery,
    /// When the instance should renew.
    pub renew_after_ms: u64,
}

/// The answer to a deregistration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deregistered {
    /// Whether the instance was live here before.
    pub existed: bool,
    pub delivery: Delivery,
    /// The tombstone's stamp.
    pub stamp: Stamp,
}

/// Registers, renews, deregisters and evicts.
pub struct Registrar {
    store: Arc<Store>,
    outbox: Arc<Outbox>,
    telemetry: Arc<Telemetry>,
    addresses: Arc<Addresses>,
    /// Whether this gateway can call `https://` instances (`upstream.tls.ca_file` is set).
    upstream_tls: bool,
    lease: LeaseBounds,
    publish_wait: Duration,
    quotas: Quotas,
    auth: Arc<Authenticator>,
    /// Whether reads on the control listener need a credential (`control.reads`).
    reads: ControlReads,
    policies: Vec<Arc<dyn RegistrationPolicy>>,
    /// The auditor, when `audit.enabled`: every change and refusal is handed to it.
    auditor: Option<Arc<Auditor>>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.policies.iter().map(|p| p.name()).collect();
        f.debug_struct("Registrar")
            .field("lease", &self.lease)
            .field("policies", &names)
            .finish_non_exhaustive()
    }
}

impl Registrar {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        outbox: Arc<Outbox>,
        telemetry: Arc<Telemetry>,
        addresses: Arc<Addresses>,
        auth: Arc<Authenticator>,
        policies: Vec<Arc<dyn RegistrationPolicy>>,
    ) -> Self {
        let r = &config.registry;
        Self {
            store,
            outbox,
            telemetry,
            addresses,
            upstream_tls: !config.upstream.tls.ca_file.as_os_str().is_empty(),
            lease: LeaseBounds {
                default_ms: r.lease_default_ms,
                min_ms: r.lease_min_ms,
                max_ms: r.lease_max_ms,
            },
            publish_wait: Duration::from_millis(config.bus.publish_wait_ms),
            quotas: Quotas {
                services_max: r.services_max,
                instances_per_service_max: r.instances_per_service_max,
                entries_max: r.entries_max,
            },
            auth,
            reads: config.control.reads,
            policies,
            auditor: None,
        }
    }

    /// The same registrar, handing every change and refusal to `auditor`.
    pub fn with_auditor(mut self, auditor: Option<Arc<Auditor>>) -> Self {
        self.auditor = auditor;
        self
    }

    /// Registry changes accepted here that the bus has not acknowledged yet.
    pub fn pending(&self) -> usize {
        self.outbox.len()
    }

    /// Refuses every change until the node has caught up with the bus (see the module doc).
    fn check_caught_up(&self) -> Result<(), GatewayError> {
        if self.store.caught_up() {
            Ok(())
        } else {
            Err(GatewayError::NotReady {
                detail: "it is still reading the registry bus, and a change stamped before it caught up could lose to an older one already there".into(),
            })
        }
    }

    /// Refuses an address the address policy does not admit (see [`crate::address`]), and
    /// counts it. A host name passes here and is checked at every connection.
    fn check_address(&self, addr: &str) -> Result<(), GatewayError> {
        if addr.starts_with("https://") && !self.upstream_tls {
            return Err(GatewayError::InvalidArgument {
                field: "addr",
                reason: format!(
                    "{addr:?} is an https instance, and this gateway has no CA to verify it with (upstream.tls.ca_file)"
                ),
            });
        }
        self.addresses
            .policy()
            .check_registration(addr)
            .map_err(|class| {
                self.telemetry
                    .metrics()
                    .address_refusal(AddressStage::Register, class);
                let error = switchyard_core::address::refusal(addr, class);
                tracing::info!(%addr, reason = class.label(), "registration refused by the address policy");
                error
            })
    }

    /// Checks that the caller's credential covers a change to `service`, and records who the
    /// caller is. A refusal is counted, logged with what the caller presented (never the
    /// token), and answered 401 or 403.
    fn authorize(&self, caller: &mut Caller, service: &str) -> Result<(), GatewayError> {
        if caller.via == Via::Gateway {
            return Ok(());
        }
        let refusal = match self.auth.authenticate(
            &caller.headers,
            caller.peer.as_deref(),
            self.store.now_ms(),
        ) {
            Ok(grant) if grant.may_change(service) || planted::active(Bug::ScopeIgnored) => {
                caller.identity = Some(grant.identity);
                return Ok(());
            }
            Ok(grant) => {
                // Who was refused, for the audit record.
                caller.identity = Some(grant.identity.clone());
                Refusal::NotPermitted {
                    identity: grant.identity,
                    what: format!("changing service {service:?}"),
                }
            }
            Err(refusal) => refusal,
        };
        self.telemetry
            .metrics()
            .control_auth_refusal(refusal.label());
        tracing::warn!(via = ?caller.via, client = ?caller.client_addr, %service, reason = refusal.label(), presented = %refusal.presented(), "registry change refused: credential");
        Err(refusal.to_error())
    }

    /// Checks that a caller on the control listener may read the registry and the metrics:
    /// anyone with `control.reads = "open"` or `control.auth = "none"`, else a credential
    /// with `read`. A refusal is counted and logged like a change's.
    pub fn authorize_read(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerCertificate>,
        client_addr: Option<SocketAddr>,
    ) -> Result<(), GatewayError> {
        if self.reads == ControlReads::Open {
            return Ok(());
        }
        let refusal = match self.auth.authenticate(headers, peer, self.store.now_ms()) {
            Ok(grant) if grant.may_read() => return Ok(()),
            Ok(grant) => Refusal::NotPermitted {
                identity: grant.identity,
                what: "reading the registry (it has no `read`)".to_owned(),
            },
            Err(refusal) => refusal,
        };
        self.telemetry
            .metrics()
            .control_auth_refusal(refusal.label());
        tracing::warn!(client = ?client_addr, reason = refusal.label(), presented = %refusal.presented(), "registry read refused: credential");
        Err(refusal.to_error())
    }

    /// Checks that a caller on the control listener may revoke public tokens: a credential
    /// for every service (`--services '*'`), or anyone with `control.auth = "none"`.
    /// `control.reads = "open"` does not open it. A refusal is counted and logged like a
    /// change's.
    pub fn authorize_revocation(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerCertificate>,
        client_addr: Option<SocketAddr>,
    ) -> Result<Identity, GatewayError> {
        let refusal = match self.auth.authenticate(headers, peer, self.store.now_ms()) {
            Ok(grant) if grant.may_revoke() => return Ok(grant.identity),
            Ok(grant) => Refusal::NotPermitted {
                identity: grant.identity,
                what: "revoking public tokens (it needs services `*`)".to_owned(),
            },
            Err(refusal) => refusal,
        };
        self.telemetry
            .metrics()
            .control_auth_refusal(refusal.label());
        tracing::warn!(client = ?client_addr, reason = refusal.label(), presented = %refusal.presented(), "revocation refused: credential");
        Err(refusal.to_error())
    }

    fn check(&self, caller: &mut Caller, change: &Change<'_>) -> Result<(), GatewayError> {
        self.check_caught_up()?;
        for policy in &self.policies {
            if let Err(error) = policy.check(caller, change) {
                tracing::info!(policy = policy.name(), via = ?caller.via, client = ?caller.client_addr, code = %error.code(), %error, "registry change refused by a policy");
                return Err(error);
            }
        }
        self.check_quota(change.key())
    }

    /// Refuses a change that would add a service past `registry.services_max`, or an entry
    /// to a service past `registry.instances_per_service_max`. Entries count whatever their
    /// state (a tombstone holds memory and a key on the bus as a live instance does, and a
    /// deregistration of a key never seen writes one), until their delete marker is read
    /// back. A change to a key already held is always accepted: renewals and removals never
    /// fail for want of room. Checked before the change is queued, without holding the lock
    /// to the end, so concurrent changes may overshoot by as many as are in flight.
    fn check_quota(&self, key: &InstanceKey) -> Result<(), GatewayError> {
        let registry = self.store.registry();
        if registry.get(key).is_some() {
            return Ok(());
        }
        let refusal = if registry.len() >= self.quotas.entries_max {
            Some(format!(
                "the registry holds {} entries (registry.entries_max)",
                registry.len()
            ))
        } else if !registry.knows_service(&key.service) {
            (registry.service_count() >= self.quotas.services_max).then(|| {
                format!(
                    "{} services are registered (registry.services_max); a new service can be added once one is removed for good",
                    registry.service_count()
                )
            })
        } else {
            let held = registry.entries_of(&key.service);
            (held >= self.quotas.instances_per_service_max).then(|| {
                format!(
                    "service {:?} holds {held} instances and tombstones (registry.instances_per_service_max); tombstones are removed for good after registry.lease_max_ms plus registry.clock_drift_max_ms",
                    key.service
                )
            })
        };
        match refusal {
            None => Ok(()),
            Some(what) => {
                drop(registry);
                tracing::warn!(key = %key.bus_key(), %what, "registry change refused: quota reached");
                self.telemetry.metrics().quota_refusal();
                Err(GatewayError::QuotaExceeded { what })
            }
        }
    }

    /// Registers (or renews) an instance: validates, applies locally at once, and queues the
    /// event for the bus; answers once the bus acknowledged it or `bus.publish_wait_ms` passed.
    /// The change, or its refusal, is audited.
    pub async fn register(
        &self,
        caller: &mut Caller,
        registration: Registration,
        kind: EventKind,
    ) -> Result<Registered, GatewayError> {
        let Some(auditor) = self.auditor.clone() else {
            return self.register_checked(caller, registration, kind).await;
        };
        let asked = (
            registration.service.clone(),
            registration.instance_id.clone(),
            registration.addr.clone(),
        );
        let result = self.register_checked(caller, registration, kind).await;
        let action = match kind {
            EventKind::Renew => RegistryAction::Renew,
            _ => RegistryAction::Register,
        };
        let (stamp, lease_ms) = match &result {
            Ok(done) => {
                let lease_ms = match &done.entry.state {
                    EntryState::Alive { lease_ms, .. } => *lease_ms,
                    EntryState::Removed(_) => 0,
                };
                (Some(&done.entry.stamp), lease_ms)
            }
            Err(_) => (None, 0),
        };
        auditor.registry(RegistryFacts {
            time_unix_ms: self.store.now_ms(),
            action,
            service: &asked.0,
            instance_id: &asked.1,
            addr: &asked.2,
            via: caller.via.label(),
            client_addr: caller.client_addr,
            identity: caller.identity.as_ref(),
            error_code: result.as_ref().err().map(GatewayError::code),
            stamp: stamp.map(stamp_text),
            lease_ms,
        });
        result
    }

    async fn register_checked(
        &self,
        caller: &mut Caller,
        registration: Registration,
        kind: EventKind,
    ) -> Result<Registered, GatewayError> {
        self.authorize(caller, &registration.service)?;
        let valid = registration.validate(&self.lease)?;
        self.check_address(&valid.addr)?;
        self.check(
            caller,
            &Change::Register {
                registration: &valid,
                kind,
            },
        )?;
        let ValidRegistration {
            key,
            addr,
            metadata,
            lease_ms,
        } = valid;
        let event = Event {
            kind,
            key,
            addr,
            metadata: metadata.into(),
            lease_ms,
            stamp: self.store.tick(),
            origin_node: self.store.node_id().to_owned(),
        };
        let delivery = if planted::active(Bug::FrontSkipsBus) && matches!(caller.via, Via::Graphql)
        {
            self.store.apply(&event);
            Delivery::Published
        } else {
            self.commit(&event).await?
        };
        self.telemetry.metrics().change(ChangeOp::Register);
        Ok(Registered {
            entry: event.entry(),
            key: event.key,
            delivery,
            renew_after_ms: switchyard_core::registration::renew_after_ms(lease_ms),
        })
    }

    /// Deregisters an instance. Succeeds for unknown instances too (the tombstone still
    /// guards against a late registration event); reports whether the instance was live.
    /// The change, or its refusal, is audited.
    pub async fn deregister(
        &self,
        caller: &mut Caller,
        service: &str,
        instance_id: &str,
    ) -> Result<Deregistered, GatewayError> {
        let result = self.deregister_checked(caller, service, instance_id).await;
        if let Some(auditor) = &self.auditor {
            auditor.registry(RegistryFacts {
                time_unix_ms: self.store.now_ms(),
                action: RegistryAction::Deregister,
                service,
                instance_id,
                addr: "",
                via: caller.via.label(),
                client_addr: caller.client_addr,
                identity: caller.identity.as_ref(),
                error_code: result.as_ref().err().map(GatewayError::code),
                stamp: result.as_ref().ok().map(|d| stamp_text(&d.stamp)),
                lease_ms: 0,
            });
        }
        result
    }

    async fn deregister_checked(
        &self,
        caller: &mut Caller,
        service: &str,
        instance_id: &str,
    ) -> Result<Deregistered, GatewayError> {
        self.authorize(caller, service)?;
        names::validate_service(service)?;
        names::validate_instance_id(instance_id)?;
        let key = InstanceKey::new(service, instance_id);
        self.check(caller, &Change::Deregister { key: &key })?;
        let now = self.store.now_ms();
        let existed = self
            .store
            .registry()
            .get(&key)
            .is_some_and(|e| e.is_live(now));
        let tombstone = self.tombstone(key, EventKind::Deregister);
        let delivery = self.commit(&tombstone).await?;
        self.telemetry.metrics().change(ChangeOp::Deregister);
        Ok(Deregistered {
            existed,
            delivery,
            stamp: tombstone.stamp,
        })
    }

    /// Publishes an eviction without waiting for the bus (the caller is a request in flight).
    /// Evictions are the gateway's own decision, so no registration policy applies; but like
    /// every change, none is made before the node caught up: a registry read only in part may
    /// lack the renewal that keeps the instance alive, and the tombstone's stamp could be older
    /// than records still unread.
    pub fn evict(&self, key: &InstanceKey) -> Result<(), GatewayError> {
        let result = self.evict_now(key);
        if let Some(auditor) = &self.auditor {
            auditor.registry(RegistryFacts {
                time_unix_ms: self.store.now_ms(),
                action: RegistryAction::Evict,
                service: &key.service,
                instance_id: &key.instance_id,
                addr: "",
                via: Via::Gateway.label(),
                client_addr: None,
                identity: None,
                error_code: result.as_ref().err().map(GatewayError::code),
                stamp: result.as_ref().ok().map(stamp_text),
                lease_ms: 0,
            });
        }
        result.map(|_| ())
    }

    fn evict_now(&self, key: &InstanceKey) -> Result<Stamp, GatewayError> {
        self.check_caught_up()?;
        let tombstone = self.tombstone(key.clone(), EventKind::Evict);
        self.enqueue_and_apply(&tombstone)?;
        self.telemetry.metrics().change(ChangeOp::Evict);
        Ok(tombstone.stamp)
    }

    fn tombstone(&self, key: InstanceKey, kind: EventKind) -> Event {
        Event {
            kind,
            key,
            addr: String::new(),
            metadata: Default::default(),
            lease_ms: 0,
            stamp: self.store.tick(),
            origin_node: self.store.node_id().to_owned(),
        }
    }

    /// Queues a change for the bus, then applies it here. A change the full queue refuses is
    /// not applied either, so this node never holds what the bus will not get.
    fn enqueue_and_apply(&self, event: &Event) -> Result<Ticket, GatewayError> {
        let ticket = self.outbox.enqueue(event.clone()).inspect_err(|error| {
            tracing::warn!(key = %event.bus_key(), %error, "registry change refused: the outbox is full");
        })?;
        self.store.apply(event);
        Ok(ticket)
    }

    /// Applies a change at once and waits up to `bus.publish_wait_ms` for the bus to take it.
    async fn commit(&self, event: &Event) -> Result<Delivery, GatewayError> {
        let ticket = self.enqueue_and_apply(event)?;
        let delivery = ticket.wait(self.publish_wait).await;
        tracing::info!(key = %event.bus_key(), kind = ?event.kind, addr = %event.addr, ?delivery, "registry change accepted");
        Ok(delivery)
    }
}

/// A stamp as audit records write it: `physical_ms.logical.node`.
fn stamp_text(stamp: &Stamp) -> String {
    format!("{}.{}.{}", stamp.physical_ms, stamp.logical, stamp.node_id)
}

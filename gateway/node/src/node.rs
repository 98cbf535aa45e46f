//! The composition root: builds one gateway node's owners from the config and the seams,
//! spawns its tasks, serves its two listeners, and on shutdown drains them and flushes the
//! outbox, both within the drain timeout. Nothing else in the crate imports this module; it
//! imports the rest.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use rand::Rng;
use switchyard_core::Registry;
use switchyard_core::event::Event;
use switchyard_core::translate::Limits;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::address::Addresses;
use crate::audit::{AuditSink, Auditor};
use crate::auth::{self, Authenticator, KeySet};
use crate::config::{BusKind, Config, ControlAuth, ListenerLimits, RateLimitMode, RuntimeLayout};
use crate::console;
use crate::control::{self, Control};
use crate::forwarding::Forwarder;
use crate::forwarding::unary::set_connection_slot;
use crate::graphql::{self, Backend, Front};
use crate::jwks::Jwks;
use crate::outbox::Outbox;
use crate::pipeline::rate_limit::{Cluster, CounterStore, RedisStore};
use crate::pipeline::{self, Pipeline, Policy};
use crate::public::{self, Rest};
use crate::redis::Redis;
use crate::registrar::{Registrar, RegistrationPolicy};
use crate::replication::Replication;
use crate::revocation::RevocationList;
use crate::revocations::Revocations;
use crate::seams::Seams;
use crate::status::{NodeStatus, Status};
use crate::store::Store;
use crate::sync::SharedRng;
use crate::telemetry::{ListenerLabel, Telemetry};
use crate::tls::{ServerTls, TlsError};
use crate::{probes, respond, serve};

/// One gateway node: its owners, wired.
pub struct Node {
    config: Config,
    seams: Seams,
    store: Arc<Store>,
    outbox: Arc<Outbox>,
    telemetry: Arc<Telemetry>,
    registrar: Arc<Registrar>,
    replication: Arc<Replication>,
    forwarder: Arc<Forwarder>,
    pipeline: Arc<Pipeline>,
    status: Arc<Status>,
    addresses: Arc<Addresses>,
    auth: Arc<Authenticator>,
    jwks: Arc<Jwks>,
    /// The Redis client, when `redis.url` names a server.
    redis: Option<Arc<Redis>>,
    /// The revoked public tokens, kept in Redis: with the Redis client only.
    revocations: Option<Arc<Revocations>>,
    public_tls: ListenerTls,
    control_tls: ListenerTls,
    rate_limit_cluster: Option<Arc<Cluster>>,
    /// The auditor when `audit.enabled`; `Err` when auditing is asked for and has no sink
    /// (the node then does not serve).
    audit: Result<Option<Arc<Auditor>>, String>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Node`], with request and registration policies beyond the built-in ones.
pub struct Builder {
    config: Config,
    seams: Seams,
    policies: Vec<Arc<dyn Policy>>,
    /// Policies run before the built-in ones.
    first_policies: Vec<Arc<dyn Policy>>,
    registration_policies: Vec<Arc<dyn RegistrationPolicy>>,
    authenticator: Option<Arc<Authenticator>>,
    revocations: Option<Arc<dyn RevocationList>>,
    rate_limit_store: Option<Arc<dyn CounterStore>>,
    /// Where audit records go, instead of the Kafka sink `[bus.kafka]` gives (tests, the
    /// simulation).
    audit_sink: Option<Arc<dyn AuditSink>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("policies", &self.policies)
            .field("first_policies", &self.first_policies)
            .field("revocations", &self.revocations.is_some())
            .field("rate_limit_store", &self.rate_limit_store.is_some())
            .field("audit_sink", &self.audit_sink.is_some())
            .finish_non_exhaustive()
    }
}

/// Where the public front listens.
#[derive(Debug)]
pub enum PublicListeners<P> {
    /// One listener, served on the runtime [`Node::serve_public`] runs on.
    Shared(P),
    /// Sockets sharing one port (`SO_REUSEPORT`, [`serve::bind_per_core`]), each served on a
    /// thread of its own ([`serve::serve_per_core`]): the per-core layout.
    PerCore(Vec<std::net::TcpListener>),
}

impl PublicListeners<tokio::net::TcpListener> {
    /// Binds `config.public.listen` as `config.runtime.layout` lays the front out: one
    /// listener, or in the per-core layout one socket per thread
    /// ([`per_core_threads`]).
    pub async fn bind(config: &Config) -> io::Result<Self> {
        match config.runtime.layout {
            RuntimeLayout::Shared => tokio::net::TcpListener::bind(config.public.listen)
                .await
                .map(PublicListeners::Shared),
            RuntimeLayout::PerCore => {
                serve::bind_per_core(config.public.listen, per_core_threads(config))
                    .map(PublicListeners::PerCore)
            }
        }
    }
}

/// How many threads serve the public front in the per-core layout: `runtime.worker_threads`,
/// or when it is 0 one per core the process may run on (its CPU affinity and the container's
/// CPU limit, as the shared runtime counts them).
pub fn per_core_threads(config: &Config) -> usize {
    match config.runtime.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
    .min(serve::PER_CORE_THREADS_MAX)
}

impl<P: Listener<Addr = SocketAddr>> PublicListeners<P> {
    /// A shared listener passed through `f` (a listener that sets socket options on what it
    /// accepts); the per-core layout's sockets as they are (its threads set `TCP_NODELAY` on
    /// what they accept, as [`serve::with_nodelay`] does).
    pub fn map<Q>(self, f: impl FnOnce(P) -> Q) -> PublicListeners<Q> {
        match self {
            PublicListeners::Shared(listener) => PublicListeners::Shared(f(listener)),
            PublicListeners::PerCore(listeners) => PublicListeners::PerCore(listeners),
        }
    }

    /// The address the front listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            PublicListeners::Shared(listener) => listener.local_addr(),
            PublicListeners::PerCore(listeners) => listeners
                .first()
                .ok_or_else(|| io::Error::other("the per-core layout has no listener"))?
                .local_addr(),
        }
    }

    /// How many threads of their own serve the front: 0 for the runtime's own workers.
    pub fn threads(&self) -> usize {
        match self {
            PublicListeners::Shared(_) => 0,
            PublicListeners::PerCore(listeners) => listeners.len(),
        }
    }
}

/// The TLS of the two listeners, as loaded from `public.tls` and `control.tls`: `Ok(None)` for
/// a cleartext listener, `Err` for files that could not be loaded (the node then does not
/// serve).
type ListenerTls = Result<Option<Arc<ServerTls>>, TlsError>;

impl Builder {
    /// The control listener's authenticator, its keys loaded ([`Authenticator::load`]).
    /// Without one, the node loads what `[control]` names; a key file it cannot read leaves
    /// it with no key, so with `auth = "required"` every credential is refused until the key
    /// file watcher reads a good file.
    pub fn authenticator(mut self, authenticator: Arc<Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// The list of revoked public credentials the JWT check consults after verifying a
    /// token. Without one, no token is revoked.
    pub fn revocations(mut self, revocations: Arc<dyn RevocationList>) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Adds a request policy, run after the built-in ones, on REST requests and GraphQL calls.
    pub fn policy(mut self, policy: Arc<dyn Policy>) -> Self {
        self.policies.push(policy);
        self
    }

    /// Adds a request policy run before the built-in ones: one that establishes who calls
    /// (`ctx.set_identity`), so that the built-in rate limits can key by its subject (a
    /// stand-in for an authentication policy, in tests; an embedder's own authentication).
    pub fn policy_before_builtin(mut self, policy: Arc<dyn Policy>) -> Self {
        self.first_policies.push(policy);
        self
    }

    /// The store of cluster-mode rate limits (`mode = "cluster"`), instead of the Redis that
    /// `[redis]` names. With neither, such rules count on each gateway alone, and the start-up
    /// log says so.
    pub fn rate_limit_store(mut self, store: Arc<dyn CounterStore>) -> Self {
        self.rate_limit_store = Some(store);
        self
    }

    /// The audit sink, used when `audit.enabled` (an embedder's, or a test's
    /// [`crate::audit::MemorySink`]). Without one, auditing needs `[bus.kafka]`.
    pub fn audit_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit_sink = Some(sink);
        self
    }

    /// Adds a registration policy, run on every registry change a caller asks for.
    pub fn registration_policy(mut self, policy: Arc<dyn RegistrationPolicy>) -> Self {
        self.registration_policies.push(policy);
        self
    }

    pub fn build(self) -> Arc<Node> {
        let Self {
            config,
            seams,
            policies,
            first_policies,
            registration_policies,
            authenticator,
            revocations: revocation_list,
            rate_limit_store,
            audit_sink,
        } = self;
        let auth = authenticator.unwrap_or_else(|| {
            // What `[control]` says, its key file read now; a file that cannot be read
            // leaves no key (every credential refused) until the watcher reads a good one.
            Arc::new(
                Authenticator::load(&config.control).unwrap_or_else(|error| {
                    tracing::error!(%error, "control keys not loaded");
                    let mode = match config.control.auth {
                        ControlAuth::Required => auth::Mode::Required,
                        ControlAuth::None => auth::Mode::None,
                    };
                    Authenticator::new(mode, KeySet::default(), config.control.jwt_leeway_ms)
                }),
            )
        });
        let rng = Arc::new(SharedRng::new(seams.seed));
        let id = if config.node_id.is_empty() {
            format!("gw-{:08x}", rng.with(|r| r.random::<u32>()))
        } else {
            config.node_id.clone()
        };
        let store = Arc::new(Store::new(id.clone(), seams.clock.clone()));
        let outbox = Arc::new(Outbox::new(config.bus.outbox_events_max));
        let telemetry = Arc::new(Telemetry::new(&config, &id));
        let redis = redis_client(&config, &telemetry);
        let revocations = redis.as_ref().map(|redis| {
            let revocations = Arc::new(Revocations::new(
                &config.revocation,
                redis.clone(),
                seams.clock.clone(),
            ));
            let scraped = revocations.clone();
            telemetry.add_scraped(Arc::new(move |out: &mut String| {
                scraped.encode_metrics(out)
            }));
            revocations
        });
        let audit = auditor(&config, audit_sink, &id);
        let auditor = audit.as_ref().ok().cloned().flatten();
        if let Some(auditor) = &auditor {
            let scraped = auditor.clone();
            telemetry.add_scraped(Arc::new(move |out: &mut String| {
                scraped.encode_metrics(out)
            }));
        }
        let addresses = Arc::new(Addresses::new(&config.upstream));
        let registrar = Arc::new(
            Registrar::new(
                &config,
                store.clone(),
                outbox.clone(),
                telemetry.clone(),
                addresses.clone(),
                auth.clone(),
                registration_policies,
            )
            .with_auditor(auditor.clone()),
        );
        let replication = Arc::new(Replication::new(
            &config.registry,
            store.clone(),
            seams.bus.clone(),
            telemetry.clone(),
        ));
        let forwarder = Arc::new(Forwarder::new(
            &config.upstream,
            store.clone(),
            registrar.clone(),
            telemetry.clone(),
            rng.clone(),
            seams.connector.clone(),
            addresses.clone(),
        ));
        let jwks = Arc::new(
            Jwks::new(&config.jwt, seams.connector.clone()).unwrap_or_else(|error| {
                tracing::error!(%error, "[jwt] not in force: the node stays unready");
                Jwks::failed(error)
            }),
        );
        // The list the builder was given, else the one kept in Redis, else none.
        let revocation_list = revocation_list.or_else(|| {
            revocations
                .clone()
                .map(|list| list as Arc<dyn RevocationList>)
        });
        let rate_limit_store = rate_limit_store.or_else(|| {
            let redis = redis.clone()?;
            Some(Arc::new(RedisStore::new(redis)) as Arc<dyn CounterStore>)
        });
        let rate_limit_cluster = rate_limit_cluster(&config, rate_limit_store, &id, &telemetry);
        let mut request_policies = first_policies;
        request_policies.extend(pipeline::policies::builtin(
            &config,
            pipeline::policies::Parts {
                telemetry: &telemetry,
                rate_limit_cluster: rate_limit_cluster.clone(),
                jwks: jwks.clone(),
                revocations: revocation_list,
                clock: seams.clock.clone(),
                auditor: auditor.clone(),
            },
        ));
        request_policies.extend(policies);
        let pipeline = Arc::new(Pipeline::new(
            store.clone(),
            forwarder.clone(),
            telemetry.clone(),
            rng,
            request_policies,
            auditor,
        ));
        let status = Arc::new(Status::new(
            store.clone(),
            replication.clone(),
            registrar.clone(),
            forwarder.clone(),
            telemetry.clone(),
            jwks.clone(),
        ));
        let public_tls = ServerTls::load(&config.public.tls);
        let control_tls = ServerTls::load(&config.control.tls);
        Arc::new(Node {
            config,
            seams,
            store,
            outbox,
            telemetry,
            registrar,
            replication,
            forwarder,
            pipeline,
            status,
            addresses,
            auth,
            jwks,
            redis,
            revocations,
            public_tls,
            control_tls,
            rate_limit_cluster,
            audit,
        })
    }
}

/// The auditor `[audit]` asks for, with the sink the embedder gave, else the Kafka sink of
/// `[bus.kafka]`; `Ok(None)` when auditing is off, `Err` when it has no sink.
fn auditor(
    config: &Config,
    given: Option<Arc<dyn AuditSink>>,
    node_id: &str,
) -> Result<Option<Arc<Auditor>>, String> {
    if !config.audit.enabled {
        return Ok(None);
    }
    let sink = match given {
        Some(sink) => sink,
        None => kafka_audit_sink(config)?,
    };
    Ok(Some(Arc::new(Auditor::new(&config.audit, node_id, sink))))
}

/// The Kafka audit sink (`audit/kafka.rs`), made from `[bus.kafka]` (brokers, security) and
/// `[audit]` (topics, partitions, delivery timeout, compression). Its probe (`run`) is
/// spawned by `serve` with the auditor's other tasks.
fn kafka_audit_sink(config: &Config) -> Result<Arc<dyn AuditSink>, String> {
    if config.bus.kind != BusKind::Kafka {
        return Err("auditing needs [bus.kafka]".to_owned());
    }
    #[cfg(feature = "kafka")]
    {
        use crate::audit::kafka::{KafkaSink, KafkaSinkSettings};
        let audit = &config.audit;
        let settings = KafkaSinkSettings {
            topic_requests: audit.topic_requests.clone(),
            topic_registry: audit.topic_registry.clone(),
            partitions: i32::try_from(audit.partitions)
                .map_err(|_| "audit.partitions: too large".to_owned())?,
            delivery_timeout: Duration::from_millis(audit.delivery_timeout_ms),
            compression: audit.compression.label().to_owned(),
        };
        let sink = KafkaSink::new(&config.bus.kafka, settings)?;
        tracing::info!(
            topic_requests = %audit.topic_requests,
            topic_registry = %audit.topic_registry,
            "audit sink: Kafka"
        );
        Ok(Arc::new(sink))
    }
    #[cfg(not(feature = "kafka"))]
    {
        Err("auditing on Kafka needs a build with the kafka feature".to_owned())
    }
}

/// The cluster mode of the rate limits: built when a rule asks for it and a store is set.
fn rate_limit_cluster(
    config: &Config,
    store: Option<Arc<dyn CounterStore>>,
    node_id: &str,
    telemetry: &Arc<Telemetry>,
) -> Option<Arc<Cluster>> {
    let wanted = config
        .rate_limits
        .iter()
        .any(|r| r.mode == RateLimitMode::Cluster);
    match (wanted, store) {
        (true, Some(store)) => Some(Arc::new(Cluster::new(
            store,
            config.rate_limit_cluster.clone(),
            node_id,
            telemetry.clone(),
        ))),
        (true, None) => {
            tracing::warn!(
                "rate limits with mode = \"cluster\" but no redis.url: each gateway counts them alone"
            );
            None
        }
        (false, _) => None,
    }
}

/// The Redis client `[redis]` names, its metrics added to the scrape; `None` without a URL,
/// or when the section cannot be used (logged: the config check refuses it before a start).
fn redis_client(config: &Config, telemetry: &Telemetry) -> Option<Arc<Redis>> {
    let redis = match Redis::from_config(&config.redis) {
        Ok(redis) => Arc::new(redis?),
        Err(error) => {
            tracing::error!(%error, "Redis client not made: revocations stay unknown, limits stay local");
            return None;
        }
    };
    let scraped = redis.clone();
    telemetry.add_scraped(Arc::new(move |out: &mut String| {
        scraped.encode_metrics(out)
    }));
    Some(redis)
}

impl Node {
    /// A node with the built-in policies only.
    pub fn new(config: Config, seams: Seams) -> Arc<Self> {
        Self::builder(config, seams).build()
    }

    pub fn builder(config: Config, seams: Seams) -> Builder {
        Builder {
            config,
            seams,
            policies: Vec::new(),
            first_policies: Vec::new(),
            registration_policies: Vec::new(),
            authenticator: None,
            revocations: None,
            rate_limit_store: None,
            audit_sink: None,
        }
    }

    pub fn id(&self) -> &str {
        self.store.node_id()
    }

    /// Wall time, Unix ms, from the clock seam.
    pub fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry, for reading.
    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.store.registry()
    }

    /// Every registry change this node applies from now on (see [`Store::watch`]).
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.store.watch()
    }

    /// Caught up with the bus, not shutting down, and every JWT provider has keys.
    pub fn is_ready(&self) -> bool {
        self.status.is_ready()
    }

    /// How far this node's hybrid logical clock runs ahead of `wall_ms`, in ms. The node's own
    /// wall clock gives `switchyard_hlc_ahead_ms`; this form is for a harness that reads the
    /// node from outside the context its clock seam reads time in (the simulation's checkers).
    pub fn hlc_ahead_of_ms(&self, wall_ms: u64) -> u64 {
        self.store.hlc_ahead_of_ms(wall_ms)
    }

    pub fn status(&self) -> NodeStatus {
        self.status.node()
    }

    /// What `/readyz` answers now (ready, bus position, catch-up target), without touching
    /// the registry: cheap enough for a harness to read after every step.
    pub fn readiness(&self) -> crate::status::Readiness {
        self.status.readiness()
    }

    /// The node's counters and histograms.
    pub fn metrics(&self) -> &crate::telemetry::Metrics {
        self.telemetry.metrics()
    }

    /// The Redis client, when `redis.url` names a server.
    pub fn redis(&self) -> Option<&Arc<Redis>> {
        self.redis.as_ref()
    }

    /// The list of revoked public tokens, when `redis.url` names a server: what the JWT policy
    /// checks every verified token against. `None` without Redis: nothing to check.
    pub fn revocations(&self) -> Option<&Arc<Revocations>> {
        self.revocations.as_ref()
    }

    /// The auditor, when `audit.enabled` and a sink was found for it.
    pub fn auditor(&self) -> Option<&Arc<Auditor>> {
        self.audit.as_ref().ok().and_then(Option::as_ref)
    }

    /// The registrar: how this node's registry changes.
    pub fn registrar(&self) -> &Arc<Registrar> {
        &self.registrar
    }

    /// What the GraphQL front works with, for a schema of its own.
    pub fn graphql_backend(&self) -> Arc<Backend> {
        Arc::new(Backend {
            pipeline: self.pipeline.clone(),
            registrar: self.registrar.clone(),
            status: self.status.clone(),
            store: self.store.clone(),
            telemetry: self.telemetry.clone(),
            config: self.config.graphql.clone(),
            call_limits: self.call_limits(),
        })
    }

    /// What a REST request, and each GraphQL call, is held to.
    fn call_limits(&self) -> Limits {
        Limits {
            body_bytes_max: self.config.public.body_bytes_max,
            header_bytes_max: self.config.public.header_bytes_max,
        }
    }

    /// The public listener: the probes, REST forwarding at `/{service}/{path}` and the
    /// GraphQL front at `/graphql`, each front switched by config; with the GraphQL front on,
    /// `/graphql` is its path, not a service's.
    fn public_router(&self, backend: &Arc<Backend>, rest: Option<Arc<Rest>>) -> Router {
        let fronts = &self.config.public;
        let probes = probes::router(self.status.clone());
        let base = if let Some(rest) = rest {
            probes.merge(public::router(rest))
        } else {
            probes.fallback(respond::route_not_found)
        };
        if fronts.graphql {
            base.merge(graphql::router(backend.clone(), Front::Public))
        } else {
            base
        }
    }

    /// The REST front, when it is on: one value, mounted on the public router (above) and called
    /// by the listener directly for every path but the router's own (`serve::Direct`).
    fn public_rest(&self) -> Option<Arc<Rest>> {
        let fronts = &self.config.public;
        let mut others = probes::PATHS.to_vec();
        if fronts.graphql {
            others.push(graphql::endpoint::GRAPHQL_PATH);
        }
        fronts.rest.then(|| {
            Arc::new(Rest {
                pipeline: self.pipeline.clone(),
                limits: self.call_limits(),
                others,
            })
        })
    }

    /// Counts a listener's refusals in `switchyard_listener_refusals_total`.
    fn refusal_counter(&self, listener: ListenerLabel) -> serve::OnRefusal {
        let telemetry = self.telemetry.clone();
        Arc::new(move |refusal: serve::Refusal| {
            telemetry
                .metrics()
                .listener_refusal(listener, refusal.label());
        })
    }

    /// The control listener: the probes, registration (REST, gRPC, GraphQL), registry views,
    /// `/metrics` and the web console.
    fn control_router(&self, backend: &Arc<Backend>) -> Router {
        let control = Arc::new(Control {
            registrar: self.registrar.clone(),
            status: self.status.clone(),
            revocations: self.revocations.clone(),
        });
        probes::router(self.status.clone())
            .merge(control::router(control))
            .merge(graphql::router(backend.clone(), Front::Control))
            .merge(console::router())
            .fallback(respond::route_not_found)
    }

    /// Serves this node; see [`run`].
    pub async fn serve<P, C>(
        self: Arc<Self>,
        public_listener: P,
        control_listener: C,
        shutdown: CancellationToken,
    ) -> io::Result<()>
    where
        P: Listener<Addr = SocketAddr>,
        C: Listener<Addr = SocketAddr>,
    {
        self.serve_public(
            PublicListeners::Shared(public_listener),
            control_listener,
            shutdown,
        )
        .await
    }

    /// Serves this node with its public front on `public`: [`serve`](Self::serve), or the
    /// per-core layout.
    pub async fn serve_public<P, C>(
        self: Arc<Self>,
        public: PublicListeners<P>,
        control_listener: C,
        shutdown: CancellationToken,
    ) -> io::Result<()>
    where
        P: Listener<Addr = SocketAddr>,
        C: Listener<Addr = SocketAddr>,
    {
        let node = self;
        let drain = Duration::from_millis(node.config.shutdown.drain_timeout_ms);
        let public_addr = public.local_addr();
        tracing::info!(
            node_id = %node.id(),
            public = ?public_addr.as_ref().ok(),
            public_threads = public.threads(),
            control = ?control_listener.local_addr().ok(),
            "gateway node starting"
        );
        let tls_of = |tls: &ListenerTls, key: &str| match tls {
            Ok(tls) => Ok(tls.clone()),
            Err(error) => Err(io::Error::other(format!("{key}: {error}"))),
        };
        let auditor = match &node.audit {
            Ok(auditor) => auditor.clone(),
            Err(error) => return Err(io::Error::other(format!("audit.enabled: {error}"))),
        };
        let public_tls = tls_of(&node.public_tls, "public.tls")?;
        let control_tls = tls_of(&node.control_tls, "control.tls")?;
        // The address policy refuses registrations at the node's own listeners.
        let own: Vec<SocketAddr> = [public_addr, control_listener.local_addr()]
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        node.addresses.set_own_listeners(&own);
        node.announce_auth();
        let tasks = CancellationToken::new();
        let key_watcher = {
            let (node, stop) = (node.clone(), tasks.clone());
            tokio::spawn(async move { node.watch_key_file(stop).await })
        };
        let tls_watchers = [
            (public_tls.clone(), ListenerLabel::Public),
            (control_tls.clone(), ListenerLabel::Control),
        ]
        .map(|(tls, listener)| {
            let (telemetry, stop) = (node.telemetry.clone(), tasks.clone());
            tokio::spawn(async move {
                if let Some(tls) = tls {
                    watch_tls_files(tls, listener, &telemetry, stop).await;
                }
            })
        });
        let replication = {
            let (replication, stop) = (node.replication.clone(), tasks.clone());
            tokio::spawn(async move { replication.run(stop).await })
        };
        let jwks = {
            let (jwks, stop) = (node.jwks.clone(), tasks.clone());
            tokio::spawn(async move { jwks.run(stop).await })
        };
        let upkeep = tokio::spawn(housekeeping_loop(node.clone(), tasks.clone()));
        let heartbeat = {
            let (cluster, stop) = (node.rate_limit_cluster.clone(), tasks.clone());
            tokio::spawn(async move {
                if let Some(cluster) = cluster {
                    cluster.run(stop).await;
                }
            })
        };
        let redis = {
            let (redis, stop) = (node.redis.clone(), tasks.clone());
            tokio::spawn(async move {
                if let Some(redis) = redis {
                    redis.run(stop).await;
                }
            })
        };
        let revocations = {
            let (revocations, stop) = (node.revocations.clone(), tasks.clone());
            tokio::spawn(async move {
                if let Some(revocations) = revocations {
                    revocations.run(stop).await;
                }
            })
        };
        // The publisher runs on while the listeners drain (a draining registration may still
        // be published in time for a 200), and stops only when they are done; then the flush.
        let publisher_stop = CancellationToken::new();
        let publisher = {
            let (outbox, bus) = (node.outbox.clone(), node.seams.bus.clone());
            let stop = publisher_stop.clone();
            tokio::spawn(async move { outbox.run(&*bus, stop).await })
        };
        // The auditor drains until the listeners are done (their last requests are audited
        // too), then flushes within its bound; its sink's own work stops after that.
        let audit_stop = CancellationToken::new();
        let sink_stop = CancellationToken::new();
        let audit_sink = {
            let (auditor, stop) = (auditor.clone(), sink_stop.clone());
            tokio::spawn(async move {
                if let Some(auditor) = auditor {
                    auditor.sink().run(stop).await;
                }
            })
        };
        let audit_drain = {
            let (auditor, stop) = (auditor.clone(), audit_stop.clone());
            tokio::spawn(async move {
                if let Some(auditor) = auditor {
                    auditor.run(stop).await;
                }
            })
        };
        let exporter = {
            let (telemetry, stop) = (node.telemetry.clone(), tasks.clone());
            tokio::spawn(async move { telemetry.run(stop).await })
        };
        let watcher = {
            let (replication, shutdown) = (node.replication.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                replication.mark_shutting_down();
                tracing::info!("shutdown requested: draining in-flight requests");
                tokio::time::Instant::now()
            })
        };
        let backend = node.graphql_backend();
        let rest = node.public_rest();
        let public_limits = serve_limits(
            node.config.public.limits(),
            node.config.public.header_bytes_max,
        );
        let public_router = node.public_router(&backend, rest.clone());
        let on_public_refusal = node.refusal_counter(ListenerLabel::Public);
        let public_front = async {
            match public {
                PublicListeners::Shared(listener) => {
                    serve::serve_direct(
                        listener,
                        public_router,
                        rest,
                        shutdown.clone(),
                        drain,
                        public_limits,
                        public_tls.clone(),
                        on_public_refusal,
                    )
                    .await
                }
                PublicListeners::PerCore(listeners) => {
                    serve::serve_per_core(
                        listeners,
                        public_router,
                        rest,
                        shutdown.clone(),
                        drain,
                        public_limits,
                        public_tls.clone(),
                        on_public_refusal,
                        // Slot 0 is every other thread's.
                        Arc::new(|index| set_connection_slot(index + 1)),
                    )
                    .await
                }
            }
        };
        let control_front = serve::serve_with(
            control_listener,
            node.control_router(&backend),
            shutdown.clone(),
            drain,
            serve_limits(node.config.control.limits(), CONTROL_HEADER_BYTES_MAX),
            control_tls.clone(),
            node.refusal_counter(ListenerLabel::Control),
        );
        // A listener that fails stops the node: the other drains as at any shutdown, rather
        // than being dropped with its requests, and the first error is the node's.
        let stop_on_error = |front: &'static str, result: std::io::Result<()>| {
            if let Err(error) = &result {
                tracing::error!(%error, "the {front} listener failed; stopping");
                shutdown.cancel();
            }
            result
        };
        let (public_served, control_served) = tokio::join!(
            async { stop_on_error("public", public_front.await) },
            async { stop_on_error("control", control_front.await) },
        );
        let result = public_served.and(control_served);
        shutdown.cancel();
        let asked = watcher
            .await
            .unwrap_or_else(|_| tokio::time::Instant::now());
        tasks.cancel();
        publisher_stop.cancel();
        audit_stop.cancel();
        let _ = publisher.await;
        // The drain timeout bounds the whole shutdown: the flush gets what draining left.
        // The audit flush runs beside it, within its own bound.
        let (_, _) = tokio::join!(
            node.outbox.flush(&*node.seams.bus, asked + drain),
            audit_drain
        );
        sink_stop.cancel();
        let _ = audit_sink.await;
        let [public_watcher, control_watcher] = tls_watchers;
        let _ = tokio::join!(
            replication,
            jwks,
            upkeep,
            heartbeat,
            redis,
            revocations,
            exporter,
            key_watcher,
            public_watcher,
            control_watcher
        );
        tracing::info!(node_id = %node.id(), "gateway node stopped");
        result
    }

    /// Logs how the control listener and the public front authenticate: a warning for each
    /// that does not.
    fn announce_auth(&self) {
        let jwt = &self.config.jwt;
        if jwt.providers.is_empty() {
            tracing::warn!(
                "no [[jwt.providers]]: the public front is open, every request reaches its service unauthenticated"
            );
        } else {
            let providers: Vec<&str> = jwt.providers.iter().map(|p| p.name.as_str()).collect();
            let services: std::collections::BTreeSet<&str> =
                jwt.routes.iter().map(|r| r.service.as_str()).collect();
            tracing::info!(
                ?providers,
                ?services,
                "the public front checks JWTs for these services; others are open"
            );
        }
        let keys = self.auth.keys();
        self.telemetry.metrics().set_control_keys(keys.len());
        match self.auth.mode() {
            auth::Mode::None => tracing::warn!(
                "control.auth = \"none\": anyone who reaches the control listener may register, deregister and read any service"
            ),
            auth::Mode::Required => {
                tracing::info!(keys = ?keys.ids(), reads = ?self.config.control.reads, "control listener requires credentials")
            }
        }
    }

    /// Re-reads `control.jwt_keys_file` every `control.keys_reload_interval_ms` and puts a
    /// changed file in force. A file that cannot be read or holds a bad key changes nothing:
    /// the keys in force stay, and the refusal is logged and counted until the file is fixed.
    async fn watch_key_file(&self, stop: CancellationToken) {
        let path = self.config.control.jwt_keys_file.clone();
        if path.as_os_str().is_empty() {
            return;
        }
        let interval = Duration::from_millis(self.config.control.keys_reload_interval_ms);
        let mut last: Option<Vec<u8>> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(&path)).await
            };
            let bytes = match read {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(error)) => {
                    if last.is_some() {
                        tracing::error!(path = %path.display(), %error, "control key file cannot be read; the keys in force stay");
                        self.telemetry.metrics().key_reload(None);
                        last = None;
                    }
                    continue;
                }
                Err(_) => continue,
            };
            let first = last.is_none();
            if last.as_ref() == Some(&bytes) {
                continue;
            }
            last = Some(bytes.clone());
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|_| auth::KeyError::from("the file is not UTF-8 text".to_owned()))
                .and_then(KeySet::from_pem);
            match parsed {
                Ok(keys) => {
                    let ids: Vec<String> = keys.ids().into_iter().map(str::to_owned).collect();
                    let (count, changed) = (keys.len(), ids != self.auth.keys().ids());
                    if changed {
                        self.auth.replace_keys(keys);
                        tracing::info!(path = %path.display(), keys = ?ids, "control key file changed: new keys in force");
                    }
                    if changed || !first {
                        self.telemetry.metrics().key_reload(Some(count));
                    }
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "control key file changed but is refused; the keys in force stay");
                    self.telemetry.metrics().key_reload(None);
                }
            }
        }
    }

    /// Periodic upkeep: delete markers for the registry entries no longer needed (which
    /// remove them here and everywhere once read back), the metric series of services the
    /// registry no longer holds, and the upstream channels and balancer slots of instances it
    /// no longer lists as live.
    async fn housekeeping(&self) {
        self.forwarder.housekeeping();
        let metrics = self.telemetry.metrics();
        let gone: Vec<_> = {
            let registry = self.store.registry();
            metrics
                .services_seen()
                .into_iter()
                .filter(|s| !registry.knows_service(s))
                .collect()
        };
        for service in gone {
            metrics.forget_service(&service);
        }
        self.replication.collect().await;
    }
}

/// Runs a node on the two listeners until `shutdown` is cancelled, then drains and returns.
/// The listeners, the connector, the clock, the bus and the seed all come from outside, so the
/// same code runs on tokio in production and on turmoil in the simulation.
pub async fn run<P, C>(
    config: Config,
    seams: Seams,
    public_listener: P,
    control_listener: C,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    P: Listener<Addr = SocketAddr>,
    C: Listener<Addr = SocketAddr>,
{
    Node::new(config, seams)
        .serve(public_listener, control_listener, shutdown)
        .await
}

/// Re-reads a listener's certificate, key and client CA files every `reload_interval_ms`; a
/// change that makes a valid configuration is in force for the connections accepted next, one
/// that does not is logged and counted and changes nothing.
async fn watch_tls_files(
    tls: Arc<ServerTls>,
    listener: ListenerLabel,
    telemetry: &Telemetry,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(tls.reload_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let reloaded = {
            let tls = tls.clone();
            tokio::task::spawn_blocking(move || tls.reload()).await
        };
        match reloaded {
            Ok(Ok(true)) => {
                tracing::info!(
                    ?listener,
                    "TLS files changed: the new certificate is in force"
                );
                telemetry.metrics().tls_reload(listener, true);
            }
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(error)) => {
                tracing::error!(?listener, %error, "TLS files changed but are refused; the certificate in force stays");
                telemetry.metrics().tls_reload(listener, false);
            }
        }
    }
}

async fn housekeeping_loop(node: Arc<Node>, stop: CancellationToken) {
    let interval = Duration::from_millis(node.config.registry.housekeeping_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = node.housekeeping() => {}
                }
            }
        }
    }
}

/// The largest request head the control listener reads (it has no `header_bytes_max` of its
/// own; registrations are small).
const CONTROL_HEADER_BYTES_MAX: usize = 64 * 1024;

/// A listener's configured bounds, as the server takes them.
fn serve_limits(l: ListenerLimits, header_bytes_max: usize) -> serve::ServeLimits {
    serve::ServeLimits {
        connections_max: l.connections_max,
        header_read_timeout: Duration::from_millis(l.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(l.body_read_timeout_ms),
        idle_timeout: Duration::from_millis(l.idle_timeout_ms),
        http2_max_concurrent_streams: l.http2_max_concurrent_streams,
        http2_stream_window_bytes: l.http2_stream_window_bytes,
        http2_connection_window_bytes: l.http2_connection_window_bytes,
        http2_send_buf_bytes: l.http2_send_buf_bytes,
        http1_read_buf_bytes: serve::http1_read_buf_for(header_bytes_max),
    }
}

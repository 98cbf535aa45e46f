//! The Switchyard gateway node: the I/O around the pure core in `switchyard-core`.
//!
//! Dependencies point one way, from the top of this list down (a test keeps it so:
//! `cargo test -p switchyard --test gateway architecture`):
//!
//! * [`node`]: the composition root. Builds the owners below from the config and the seams,
//!   spawns their tasks, serves the two listeners and drains. Nothing imports it.
//! * Fronts: [`public`] (REST forwarding), [`graphql`] (calls, registry queries, mutations,
//!   subscriptions), [`control`] (registration by REST and gRPC, registry views, `/metrics`),
//!   [`probes`] (`/healthz`, `/readyz`), [`console`] (the web console's embedded files at
//!   `/console/` on the control listener).
//! * [`pipeline`]: the one path of every forwarded request, REST or GraphQL `call`: request
//!   context, policies, forwarding, and the observers around it. [`status`]: what the node
//!   reports about itself. [`respond`]: HTTP answers shared by the fronts.
//! * Owners: [`forwarding`] (balancer, channel pool, attempts, retries, eviction trigger),
//!   [`registrar`] (register, renew, deregister, evict, and registration policies),
//!   [`replication`] (bus reader, position, readiness).
//! * [`auth`]: control credentials (JWT), their keys, and what each may do.
//! * [`jwks`]: the keys of the public front's JWT providers, fetched, refreshed and served
//!   stale within bounds; the JWT check's counters.
//! * [`redis`]: the Redis client shared by revocations and cluster-wide limits: one
//!   connection kept in the background, every command bounded, a breaker in front.
//! * [`revocation`]: the contract of the list of revoked public credentials.
//!   [`revocations`]: that list, kept in Redis and copied into every gateway's memory by
//!   pub/sub and a periodic resync; revoked through the control listener.
//! * [`store`] (registry, clock, change feed), [`address`] (the address policy and the
//!   connect path that applies it), [`outbox`] (changes waiting for the bus),
//!   [`telemetry`] (metrics, span export, access log), [`serve`] (an axum router on any
//!   listener with graceful shutdown).
//! * [`tls`]: TLS on the listeners, certificates re-read when they change, client
//!   certificates named by their SANs.
//! * [`seams`]: what differs between production and simulation (connector, clock, bus,
//!   seed). [`bus`]: the bus trait, the in-memory bus, and Kafka. [`config`]: the TOML file,
//!   environment and flag layers, validated. [`sync`]: locking and the seeded generator.
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod address;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod config;
pub mod console;
pub mod control;
pub mod forwarding;
pub mod graphql;
pub mod jwks;
pub mod node;
pub mod outbox;
pub mod pipeline;
pub mod probes;
pub mod public;
pub mod redis;
pub mod registrar;
pub mod replication;
pub mod respond;
pub mod revocation;
pub mod revocations;
pub mod seams;
pub mod serve;
pub mod status;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use node::{Node, PublicListeners, run};
pub use seams::Seams;

//! The Switchyard gateway node: the I/O around the pure core in `switchyard-core`.
//!
//! * [`config`]: the TOML file, environment and flag layers, validated.
//! * [`seams`]: what differs between production and simulation (connector, clock, bus, seed)
//!   and nothing else.
//! * [`bus`]: the bus trait and the in-memory bus.
//! * [`node`]: one gateway's state (registry, clock, balancer, upstream pool) and
//!   [`node::run`], which serves it on two listeners until shutdown.
//! * [`metrics`]: Prometheus counters, histograms and gauges, served at `/metrics`.
//! * [`otlp`]: the optional export of request spans over OTLP/HTTP.
//! * [`outbox`]: registry changes waiting for the bus, published in order with retries.
//! * [`replicate`]: reading the bus from the beginning, catch-up and readiness.
//! * [`upstream`]: choosing an instance and calling `ForwardingService.Send` on it.
//! * [`public`]: the public listener: REST forwarding, `/graphql`, `/healthz`, `/readyz`.
//! * [`control`]: the control listener: registration by REST, gRPC and GraphQL, registry
//!   views.
//! * [`graphql`]: the GraphQL front: calls, registry queries, mutations and subscriptions.
//! * [`serve`]: serving an axum router on any listener with graceful shutdown.
//! * [`demo`]: a gateway with two sample-service instances, for a newcomer's first minute.
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod bus;
pub mod config;
pub mod control;
pub mod demo;
pub mod graphql;
pub mod metrics;
pub mod node;
pub mod otlp;
pub mod outbox;
pub mod public;
pub mod replicate;
pub mod seams;
pub mod serve;
pub mod upstream;

pub use config::Config;
pub use node::{Node, run};
pub use seams::Seams;

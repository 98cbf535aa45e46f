//! Auditing: a record of every forwarded request and every registry change, published on
//! audit topics of their own, with no endpoint exposed (docs/operations.md, "Auditing").
//!
//! * [`sink`]: the audit sink seam — where encoded records go: Kafka in production, memory
//!   in tests and the simulation ([`sink::MemorySink`]).
//! * `kafka` (with the `kafka` feature): the sink in production, a producer onto the two
//!   audit topics (`kafka::KafkaSink`).

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod sink;

pub use sink::{AuditSink, DropReason, MemorySink, Outgoing, Stream};

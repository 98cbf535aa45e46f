//! Auditing: a record of every forwarded request and every registry change, published on
//! audit topics of their own, with no endpoint exposed (docs/operations.md, "Auditing").
//!
//! * [`sink`]: the audit sink seam — where encoded records go: Kafka in production, memory
//!   in tests and the simulation ([`sink::MemorySink`]).

pub mod sink;

pub use sink::{AuditSink, DropReason, MemorySink, Outgoing, Stream};

//! The pure core of a Switchyard gateway. Nothing here performs I/O: every decision is a
//! function of its inputs and of `now`, so production and the turmoil simulation run the same
//! code.
//!
//! * [`address`]: the address policy: which instance addresses are registered and dialled.
//! * [`hops`]: the `Via` mark on forwarded requests, and the refusal of forwarding loops.
//! * [`http2`]: a sans-I/O HTTP/2 client for unary gRPC calls (frames, HPACK, streams).
//! * [`identity`]: who a request or a registry change comes from, once established.
//! * [`hlc`]: hybrid logical clock stamps that order registry changes across gateways.
//! * [`metadata`]: an instance's metadata as the registry holds it, flat and in key order.
//! * [`registry`]: the last-writer-wins map of service instances, its merge, digest and views.
//! * [`event`]: registry events and their protobuf codec (what travels on the bus).
//! * [`names`]: validation of service names, instance ids and instance addresses.
//! * [`registration`]: a registration as a front receives it, its validation and its lease.
//! * [`view`]: one instance as every front shows it, and the state names they share.
//! * [`translate`]: HTTP request to `ForwardingReq`, `ForwardingResp` to HTTP response.
//! * [`status`]: the gRPC-to-HTTP status table.
//! * [`trace`]: W3C Trace Context: the client's `traceparent` and the gateway's span.
//! * [`balance`]: load balancing, passive health (temporary ejection), the retry policy and
//!   eviction of unreachable instances, with the balancer's per-instance record.
//! * [`error`]: the one error vocabulary, mapped once to HTTP status, JSON body and gRPC code.
//! * [`planted`]: known bugs behind a test-only switch, for proving the simulation's checkers.
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod address;
pub mod balance;
pub mod error;
pub mod event;
pub mod hlc;
pub mod hops;
pub mod http2;
pub mod identity;
pub mod metadata;
pub mod names;
pub mod planted;
pub mod registration;
pub mod registry;
pub mod status;
pub mod trace;
pub mod translate;
pub mod view;

pub use error::{Fault, GatewayError};
pub use event::{Event, EventKind};
pub use hlc::{Hlc, Stamp};
pub use registration::{LeaseBounds, Registration, ValidRegistration};
pub use registry::{InstanceKey, Registry};
pub use view::{InstanceState, InstanceView};

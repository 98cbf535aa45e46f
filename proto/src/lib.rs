//! The Switchyard wire contract, generated from the `.proto` files beside this crate.
//!
//! * [`forwarding`]: `ForwardingService.Send`, the one rpc every service implements, and its
//!   `ForwardingReq` / `ForwardingResp` messages.
//! * [`registry`]: the registry events replicated over the bus and the `Registration` service
//!   through which instances register, renew and deregister.
//! * [`audit`]: the audit records published on the audit topics.
//!
//! By default the modules hold only the prost message types. The `grpc` feature adds the
//! tonic clients and servers (`forwarding_service_client`, `forwarding_service_server`,
//! `registration_client`, `registration_server`) to the same modules; it is what brings in
//! tonic and its transport, so the pure core leaves it off.
//!
//! `docs/protocol.md` describes the contract for implementers in other languages.

/// `switchyard.forwarding.v1`: the forwarding contract.
pub mod forwarding {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/switchyard.forwarding.v1.rs"));
}

/// `switchyard.registry.v1`: registry events and the registration service.
pub mod registry {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/switchyard.registry.v1.rs"));
}

/// `switchyard.audit.v1`: the audit records.
pub mod audit {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/switchyard.audit.v1.rs"));
}

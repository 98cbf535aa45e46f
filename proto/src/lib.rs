//! The Switchyard wire contract, generated from the `.proto` files beside this crate.
//!
//! * [`forwarding`]: `ForwardingService.Send`, the one rpc every service implements, and its
//!   `ForwardingReq` / `ForwardingResp` messages.
//! * [`registry`]: the registry events replicated over the bus and the `Registration` service
//!   through which instances register, renew and deregister.
//!
//! `docs/protocol.md` describes the contract for implementers in other languages.

/// `switchyard.forwarding.v1`: the forwarding contract.
pub mod forwarding {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("switchyard.forwarding.v1");
}

/// `switchyard.registry.v1`: registry events and the registration service.
pub mod registry {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("switchyard.registry.v1");
}

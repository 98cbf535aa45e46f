//! Fuzz targets for `switchyard-core`. Each module holds one target's input type and the
//! properties it checks; `fuzz_targets/*.rs` only hand libFuzzer's bytes to `check`, and
//! `tests/seeds.rs` replays the committed seeds through the same function on plain stable.
//!
//! * [`request`]: an HTTP request head through `check_head`, `route` and `to_forwarding_req`.
//! * [`response`]: a `ForwardingResp`, raw protobuf or structured, through `to_http_response`.
//! * [`http2`]: the HTTP/2 client against an instance sending anything, raw or structured,
//!   checked by an oracle written from RFC 9113 and RFC 7541.
//! * [`registry`]: `Event::decode` on raw bytes, and replicas converging whatever the order.
//! * [`http_rules`]: the HTTP rules the properties check against, written out independently of
//!   the core so that a property does not just restate the code under test.
//!
//! A property that fails panics with a message naming the rule; libFuzzer records the input.
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod http2;
pub mod http_rules;
pub mod registry;
pub mod request;
pub mod response;

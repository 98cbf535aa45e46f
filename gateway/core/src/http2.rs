//! A sans-I/O HTTP/2 client for unary gRPC calls: what the forwarder needs and nothing more.
//!
//! * [`hpack`]: header compression (RFC 7541): the decoder of an instance's header blocks,
//!   with its dynamic table and Huffman strings, and the literal encoding of a call's fields.
//! * [`frame`]: the frames' head, types, flags, settings and error codes, and their writers.
//! * [`client`]: one connection's state machine: calls as streams, flow control, settings,
//!   GOAWAY, keep-alive pings, and every bound on what an instance may send.

pub mod client;
pub mod frame;
pub mod hpack;

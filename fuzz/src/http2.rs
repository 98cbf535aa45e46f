//! The `http2` target: the sans-I/O HTTP/2 client (`switchyard_core::http2::client`) against
//! an instance that sends anything. Every byte an instance sends is hostile input.
//!
//! The first input byte picks the mode. Even: raw. A few calls are opened (some with
//! messages past 65,535 bytes, so that flow control matters), and the rest of the input is
//! the instance's bytes, fed in pieces whose lengths, and the polls, cancels, pings and opens
//! between them, are drawn from the input too. Odd: structured. A script of frames built
//! from vocabularies that hit the rules (answers valid and not, header blocks in HPACK's
//! representations split over CONTINUATION, every control frame with values in and out of
//! range, raw frames), interleaved with the harness's calls.
//!
//! Each script runs three times. The exact run feeds the client one frame at a time and
//! checks everything against an oracle (`model`, `peer`, `wire`, `hpack`), written from
//! RFC 9113 and RFC 7541 and, where the client makes a choice, from its doc comments. The
//! whole run feeds each piece at once, and the cut run cuts each piece again; both must
//! give the same output, errors and answers as the exact run.
//!
//! The properties:
//! 1. Nothing panics; `receive` returns, reading every whole frame and leaving only a
//!    partial one.
//! 2. The output is the preface, SETTINGS, then well-formed frames: none longer than the
//!    instance's MAX_FRAME_SIZE; HEADERS and DATA only on odd streams the client opened, in
//!    increasing order, within MAX_CONCURRENT_STREAMS and never after GOAWAY; each call's
//!    header block and message exactly; no DATA after END_STREAM or a reset, nor past the
//!    stream's or the connection's send window; every PING and SETTINGS acknowledged (PING
//!    with its bytes); WINDOW_UPDATEs that are not 0 and never lift the instance's windows
//!    past 2^31-1; a RST_STREAM for every stream error and cancelled stream; a GOAWAY with
//!    the error's code exactly when `receive` failed, and nothing after it.
//! 3. `receive` fails exactly on the frames that must end the connection, with a code the
//!    RFC names; after that (or `fail`) no new call is taken, `open` is `Closed`, every call
//!    left is ready, and in the end `calls()` is 0. `calls`, `pongs`, `is_done`,
//!    `takes_no_new_call` and `wants_write` say what the docs promise.
//! 4. A call's outcome is the one the instance's frames make it: an answer with exactly the
//!    status, gRPC fields and bytes sent when they form a valid answer; `TooLarge` when the
//!    message passes the call's bound; `Refused` for REFUSED_STREAM and GOAWAY; `Transport`
//!    for a malformed answer (RFC 9113 §8.1.1) or another reset; pending while nothing ends it.
//! 5. Feeding the same bytes whole, one frame at a time, or cut anywhere gives the same
//!    output, errors and outcomes.

use bytes::{Bytes, BytesMut};
use switchyard_core::http2::client::{CallLimits, Config};
use switchyard_core::http2::hpack as core_hpack;

mod hpack;
mod input;
mod model;
mod peer;
mod run;
mod wire;

/// What the harness does, in order.
#[derive(Debug)]
enum Op {
    Open(CallSpec),
    /// Bytes from the instance: raw, or structured frames built when the exact run reaches
    /// them (they may aim at a call's stream).
    Feed(Feed),
    /// Polls the call with this number (modulo the calls opened), if the harness holds it.
    Poll(usize),
    Cancel(usize),
    Ping([u8; 8]),
    Fail,
}

enum Feed {
    Bytes(Vec<u8>),
    Frames(Vec<input::FrameIn>),
}

/// The bytes are shown as frames by `describe`, so only their length here.
impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Self::Frames(frames) => f.debug_tuple("Frames").field(frames).finish(),
        }
    }
}

/// A call the harness opens.
#[derive(Debug, Clone, Copy)]
struct CallSpec {
    message_bytes: usize,
    limits: CallLimits,
    /// Adds a field of 20,000 bytes, so that the header block needs CONTINUATION.
    big_block: bool,
}

impl CallSpec {
    /// The call's message: distinct bytes for each call, so that a mix-up shows.
    fn message(&self, number: usize) -> Bytes {
        let pattern: Vec<u8> = (0..251u8)
            .map(|i| i.wrapping_mul(31).wrapping_add(number as u8))
            .collect();
        let mut message = Vec::with_capacity(self.message_bytes + pattern.len());
        while message.len() < self.message_bytes {
            message.extend_from_slice(&pattern);
        }
        message.truncate(self.message_bytes);
        message.into()
    }

    /// The call's header block, in two parts as the node passes them: the same fixed fields
    /// for every call, then the call's own, which name it.
    fn block(&self, number: usize) -> [Vec<u8>; 2] {
        let mut fixed = BytesMut::new();
        core_hpack::encode_indexed(core_hpack::METHOD_POST, &mut fixed);
        core_hpack::encode_indexed(core_hpack::SCHEME_HTTP, &mut fixed);
        core_hpack::encode_literal_with_name_index(core_hpack::PATH, b"/svc/Call", &mut fixed);
        core_hpack::encode_literal_new_name(b"te", b"trailers", &mut fixed);
        let mut own = BytesMut::new();
        core_hpack::encode_literal_new_name(b"x-call", number.to_string().as_bytes(), &mut own);
        if self.big_block {
            core_hpack::encode_literal_new_name(b"x-pad", &[b'p'; 20_000], &mut own);
        }
        [fixed.to_vec(), own.to_vec()]
    }
}

/// One input, decoded.
#[derive(Debug)]
struct Script {
    config: Config,
    ops: Vec<Op>,
    /// The piece lengths of the cut run, used in turn; none is 0.
    cuts: Vec<usize>,
}

/// The fuzz entry point.
pub fn check(data: &[u8]) {
    if let Some(script) = input::script(data) {
        run::check(&script);
    }
}

/// What `data` decodes to, and what the client made of it, for triage.
pub fn describe(data: &[u8]) -> String {
    match input::script(data) {
        Some(script) => format!(
            "config: {:?}\ncuts: {:?}\n{}",
            script.config,
            script.cuts,
            run::describe(&script)
        ),
        None => "not an input".into(),
    }
}

//! W3C Trace Context: the `traceparent` a gateway receives, and the one it sends on.
//!
//! A gateway takes part in the trace: for each request it makes a span of its own, child of the
//! client's span when the client sent a valid `traceparent`, else the root of a new trace. The
//! service receives the gateway's span as its parent, so a trace shows the hop.

use bytes::Bytes;
use rand::Rng;
use switchyard_proto::forwarding::{ForwardingReq, Header};

use crate::translate::TRACEPARENT;

/// The `trace-flags` bit that says the caller records this trace.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A parsed `traceparent` (version `00`, or a later version read as `00`, Trace Context §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

/// Parses a `traceparent` value. Refuses what §3.2 refuses: version `ff`, ids of all zeros,
/// anything but lower-case hex in fields of the exact length, and extra fields after a
/// version-`00` value.
pub fn parse(value: &str) -> Option<TraceParent> {
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let version = hex_field(version, 2)?;
    if version == 0xff {
        return None;
    }
    let trace_id = hex_field(trace, 32)?;
    let parent_id = u64::try_from(hex_field(parent, 16)?).ok()?;
    let flags = u8::try_from(hex_field(flags, 2)?).ok()?;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

fn hex_field(s: &str, len: usize) -> Option<u128> {
    if s.len() != len || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// Length of a version-`00` `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// A trace id that displays as 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The gateway's span of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    /// The client's span, when the client sent a valid `traceparent`.
    pub parent_id: Option<u64>,
    pub flags: u8,
}

impl Span {
    /// A span for a request that arrived with `incoming` (the client's `traceparent`, if any):
    /// its child when valid, else the root of a new, sampled trace. Ids come from `rng`.
    pub fn start(incoming: Option<&str>, rng: &mut impl Rng) -> Self {
        let span_id = nonzero_u64(rng);
        match incoming.and_then(parse) {
            Some(parent) => Self {
                trace_id: parent.trace_id,
                span_id,
                parent_id: Some(parent.parent_id),
                flags: parent.flags,
            },
            None => Self {
                trace_id: nonzero_u128(rng),
                span_id,
                parent_id: None,
                flags: FLAG_SAMPLED,
            },
        }
    }

    /// The `traceparent` to send to the service: this span as its parent.
    pub fn traceparent(&self) -> String {
        self.traceparent_text().as_str().to_owned()
    }

    /// [`Span::traceparent`] without allocating: the text in a fixed buffer.
    pub fn traceparent_text(&self) -> TraceparentText {
        TraceparentText(self.traceparent_bytes())
    }

    /// `00-<trace id>-<span id>-<flags>` written two digits to a byte, from a table: this
    /// runs once per request, and the formatting machinery cost a visible share of the
    /// gateway's own time.
    fn traceparent_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&self.trace_id.to_be_bytes(), &mut out[3..35]);
        write_hex(&self.span_id.to_be_bytes(), &mut out[36..52]);
        write_hex(&[self.flags], &mut out[53..55]);
        out
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The trace id, formatted as hex only when displayed (a log line that is filtered out
    /// costs no formatting).
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// Each byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [DIGITS[b >> 4], DIGITS[b & 0xf]];
        b += 1;
    }
    pairs
};

/// Writes `bytes` as lower-case hex into `out`, two digits a byte, as far as `out` reaches
/// (`2 * bytes.len()` digits fill it).
pub fn write_hex(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * bytes.len(), "two digits a byte");
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// A `traceparent` value, as [`Span::traceparent_text`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct TraceparentText([u8; TRACEPARENT_LEN]);

impl TraceparentText {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and dashes are written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Makes `span` the parent the service sees: in `ForwardingReq.traceparent` and in the
/// forwarded `traceparent` header (replacing the client's in place, or added at the end).
pub fn set_parent(req: &mut ForwardingReq, span: &Span) {
    set_traceparent(req, span.traceparent());
}

/// Sets `value` as the trace context the service sees: `ForwardingReq.traceparent`, and the
/// first forwarded `traceparent` header (any later one is removed), or one added at the end.
pub fn set_traceparent(req: &mut ForwardingReq, value: String) {
    let header_value = Bytes::copy_from_slice(value.as_bytes());
    let mut replaced = false;
    req.headers.retain_mut(|h| {
        if h.name != TRACEPARENT {
            return true;
        }
        if replaced {
            return false;
        }
        replaced = true;
        h.value = header_value.clone();
        true
    });
    if !replaced {
        req.headers.push(Header {
            name: TRACEPARENT.to_owned(),
            value: header_value,
        });
    }
    req.traceparent = value;
}

fn nonzero_u64(rng: &mut impl Rng) -> u64 {
    rng.random::<u64>().max(1)
}

fn nonzero_u128(rng: &mut impl Rng) -> u128 {
    rng.random::<u128>().max(1)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_traceparent() {
        let p = parse(VALID).expect("valid");
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(p.flags, 1);
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_span_continues_the_clients_trace() {
        let mut rng = SmallRng::seed_from_u64(7);
        let span = Span::start(Some(VALID), &mut rng);
        assert_eq!(span.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.trace_id().to_string(), span.trace_id_hex());
        assert_eq!(span.parent_id, Some(0x00f067aa0ba902b7));
        assert_ne!(span.span_id, 0x00f067aa0ba902b7);
        let sent = parse(&span.traceparent()).expect("the gateway sends a valid traceparent");
        assert_eq!(sent.trace_id, span.trace_id);
        assert_eq!(sent.parent_id, span.span_id);
        assert_eq!(sent.flags, 1);
    }

    #[test]
    fn the_traceparent_is_written_as_the_specification_spells_it() {
        let span = Span {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            span_id: 0x00f067aa0ba902b7,
            parent_id: None,
            flags: 1,
        };
        assert_eq!(
            span.traceparent(),
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        );
        let max = Span {
            trace_id: u128::MAX,
            span_id: u64::MAX,
            parent_id: None,
            flags: 0xff,
        };
        assert_eq!(
            max.traceparent(),
            format!("00-{:032x}-{:016x}-ff", u128::MAX, u64::MAX)
        );
    }

    proptest::proptest! {
        #[test]
        fn a_traceparent_is_written_as_format_writes_it(
            trace_id in proptest::num::u128::ANY,
            span_id in proptest::num::u64::ANY,
            flags in proptest::num::u8::ANY,
        ) {
            let span = Span { trace_id, span_id, parent_id: None, flags };
            let text = span.traceparent_text();
            proptest::prop_assert_eq!(
                text.as_str(),
                format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}")
            );
        }
    }

    #[test]
    fn an_unsampled_client_trace_stays_unsampled() {
        let mut rng = SmallRng::seed_from_u64(7);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!Span::start(Some(unsampled), &mut rng).sampled());
    }

    #[test]
    fn the_service_sees_the_gateways_span_as_its_parent() {
        let mut rng = SmallRng::seed_from_u64(7);
        let span = Span::start(Some(VALID), &mut rng);
        let header = |name: &str, value: &str| Header {
            name: name.to_owned(),
            value: Bytes::from(value.to_owned()),
        };
        let mut req = ForwardingReq {
            headers: vec![
                header("a", "1"),
                header(TRACEPARENT, VALID),
                header("b", "2"),
                header(TRACEPARENT, "second"),
            ],
            traceparent: VALID.to_owned(),
            ..Default::default()
        };
        set_parent(&mut req, &span);
        let names: Vec<&str> = req.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a", TRACEPARENT, "b"]);
        assert_eq!(req.headers[1].value, span.traceparent().as_bytes());
        assert_eq!(req.traceparent, span.traceparent());

        let mut bare = ForwardingReq::default();
        set_parent(&mut bare, &span);
        assert_eq!(bare.headers.len(), 1);
        assert_eq!(bare.traceparent, span.traceparent());
    }

    #[test]
    fn without_a_valid_traceparent_a_new_sampled_trace_starts() {
        let mut rng = SmallRng::seed_from_u64(7);
        let a = Span::start(None, &mut rng);
        let b = Span::start(Some("garbage"), &mut rng);
        assert_eq!(a.parent_id, None);
        assert_eq!(b.parent_id, None);
        assert!(a.sampled() && b.sampled());
        assert_ne!(a.trace_id, b.trace_id);
        assert!(parse(&a.traceparent()).is_some());
    }
}

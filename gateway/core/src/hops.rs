//! Forwarding loops: the RFC 9110 `Via` mark a gateway adds to each request it forwards, and
//! the check of the mark on each request that arrives.
//!
//! A forwarded request carries `Via` with one entry per proxy it passed, this gateway's as
//! `<protocol> <node id>` (`1.1 gw-1`). A request that arrives with this gateway's own entry,
//! or with more entries than the configured bound, is refused with 508 `loop_detected`: an
//! instance registered at a gateway's own public address, or two gateways each listing the
//! other as an instance, end at once instead of recursing until a stream limit.

use http::HeaderMap;
use http::header::VIA;

use crate::GatewayError;

/// The `grpc-message` of a loop refusal. The refusal carries `grpc-status` and this message
/// as headers beside its 508, so a gateway whose `Send` call looped (its instance is another
/// gateway's public listener) reads a gRPC status at once and refuses with 508 in turn.
pub const LOOP_GRPC_MESSAGE: &str = "switchyard: forwarding loop detected";

/// The header's name, as the forwarded request carries it.
pub const VIA_HEADER: &str = "via";

/// The received-by name of a gateway in `Via`: its node id, with every byte that is not a
/// token character (RFC 9110 `tchar`) percent-encoded, so the entry always parses.
pub fn pseudonym(node_id: &str) -> String {
    let mut out = String::with_capacity(node_id.len());
    for b in node_id.bytes() {
        if is_tchar(b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `received-protocol` of an entry: the HTTP version the request arrived in.
pub fn protocol(http_version: http::Version) -> &'static str {
    match http_version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The `received-by` of each entry of every `Via` field, in order. Entries are separated by
/// commas outside comments; a comment (in parentheses, possibly nested) is skipped.
fn received_by(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(VIA)
        .iter()
        .flat_map(|v| split_entries(v.as_bytes()))
        .filter_map(|entry| {
            let mut words = entry
                .split(|b| *b == b' ' || *b == b'\t')
                .filter(|w| !w.is_empty());
            let _protocol = words.next()?;
            words.next()
        })
}

/// Splits a `Via` value at the commas that are not inside a comment.
fn split_entries(value: &[u8]) -> Vec<&[u8]> {
    let mut entries = Vec::new();
    let (mut depth, mut start, mut escaped) = (0usize, 0usize, false);
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if depth > 0 => escaped = true,
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                entries.push(value[start..i].trim_ascii());
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(value[start..].trim_ascii());
    entries.retain(|e| !e.is_empty());
    entries
}

/// Refuses a request that already passed this gateway (its `Via` names `own`, a
/// [`pseudonym`]) or passed more than `hops_max` proxies.
pub fn check(headers: &HeaderMap, own: &str, hops_max: usize) -> Result<(), GatewayError> {
    let mut hops = 0usize;
    for by in received_by(headers) {
        hops += 1;
        if by == own.as_bytes() {
            return Err(GatewayError::LoopDetected {
                reason: format!("the request already passed this gateway ({own})"),
            });
        }
        if hops > hops_max {
            return Err(GatewayError::LoopDetected {
                reason: format!(
                    "the request passed more than {hops_max} proxies (upstream.hops_max)"
                ),
            });
        }
    }
    Ok(())
}

/// The `Via` value the forwarded request carries: the arriving entries, then this
/// gateway's.
pub fn forwarded_via(headers: &HeaderMap, version: http::Version, own: &str) -> Vec<u8> {
    let protocol = protocol(version);
    let entries = headers.get_all(VIA);
    let earlier: usize = entries.iter().map(|v| v.len() + 2).sum();
    let mut value = Vec::with_capacity(earlier + protocol.len() + 1 + own.len());
    for v in entries {
        value.extend_from_slice(v.as_bytes().trim_ascii());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(protocol.as_bytes());
    value.push(b' ');
    value.extend_from_slice(own.as_bytes());
    value
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with_via(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(VIA, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_request_that_passed_this_gateway_is_refused() {
        let h = with_via(&["1.1 edge, 2 gw-1"]);
        let err = check(&h, "gw-1", 8).unwrap_err();
        assert_eq!(
            (err.code().as_str(), err.http_status()),
            ("loop_detected", 508)
        );
        assert!(check(&h, "gw-2", 8).is_ok());
        // Over several fields, and with comments that hold commas and parentheses.
        let h = with_via(&["1.1 a (x, (y) \\) z)", "HTTP/2 gw-1 (Switchyard)"]);
        assert!(check(&h, "gw-1", 8).is_err());
        assert!(check(&h, "x", 8).is_ok());
        // A comment naming the gateway is not an entry.
        assert!(check(&with_via(&["1.1 a (gw-1)"]), "gw-1", 8).is_ok());
    }

    #[test]
    fn more_hops_than_the_bound_are_refused() {
        let eight: Vec<String> = (0..8).map(|i| format!("1.1 p{i}")).collect();
        assert!(check(&with_via(&[&eight.join(", ")]), "gw", 8).is_ok());
        let nine: Vec<String> = (0..9).map(|i| format!("1.1 p{i}")).collect();
        let err = check(&with_via(&[&nine.join(",")]), "gw", 8).unwrap_err();
        assert!(err.to_string().contains("upstream.hops_max"), "{err}");
        assert!(check(&with_via(&[&nine.join(",")]), "gw", 9).is_ok());
        assert!(check(&with_via(&["1.1 p"]), "gw", 0).is_err());
        assert!(check(&HeaderMap::new(), "gw", 0).is_ok());
    }

    #[test]
    fn the_mark_is_appended_after_what_arrived() {
        let h = with_via(&["1.0 a", " 1.1 b "]);
        assert_eq!(
            forwarded_via(&h, http::Version::HTTP_2, "gw-1"),
            b"1.0 a, 1.1 b, 2 gw-1"
        );
        assert_eq!(
            forwarded_via(&HeaderMap::new(), http::Version::HTTP_11, "gw-1"),
            b"1.1 gw-1"
        );
        let marked =
            with_via(&[
                std::str::from_utf8(&forwarded_via(&h, http::Version::HTTP_11, "gw-1")).unwrap(),
            ]);
        assert!(check(&marked, "gw-1", 8).is_err());
    }

    #[test]
    fn node_ids_become_tokens() {
        assert_eq!(pseudonym("gw-1"), "gw-1");
        assert_eq!(pseudonym("a,b (c)"), "a%2Cb%20%28c%29");
        assert_eq!(pseudonym("100%"), "100%25");
        assert_eq!(pseudonym("ü"), "%C3%BC");
    }
}

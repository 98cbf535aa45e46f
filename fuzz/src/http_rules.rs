//! The HTTP rules the properties are checked against. They are written from RFC 9110 rather
//! than copied from `switchyard_core::translate`, so a property that holds is evidence, not a
//! tautology.

use http::HeaderMap;

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus the `Proxy-*` family and `Keep-Alive`), which a
/// proxy must not forward in either direction.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"te" | b"trailer" | b"transfer-encoding" | b"upgrade"
    ) || name.starts_with(b"proxy-")
}

/// The field names listed in every `Connection` field of `headers`, lower-cased. The value is
/// a comma-separated list of tokens with optional whitespace (RFC 9110 §5.6.1); a token that
/// is not a field name simply matches nothing, and it must not stop the other tokens of the
/// same field from counting.
pub fn connection_names(headers: &HeaderMap) -> Vec<Vec<u8>> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a proxy must drop the field `name` of a message whose head is `headers`.
pub fn must_drop(name: &[u8], connection: &[Vec<u8>]) -> bool {
    is_hop_by_hop(name) || connection.iter().any(|t| t == name)
}

/// The values of `name` in `headers`, in order, as bytes.
pub fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .map(http::HeaderValue::as_bytes)
        .collect()
}

/// A field value a response splitter could use: CR, LF or NUL anywhere in it.
pub fn has_line_break_or_nul(value: &[u8]) -> bool {
    value.iter().any(|b| matches!(b, b'\r' | b'\n' | b'\0'))
}

//! Redaction: what of a request's query, headers and bodies an audit record may keep.
//!
//! The rule throughout is that a value asked to be redacted never reaches a record: a query
//! parameter is matched whatever its case or percent-encoding, a header whatever its case, a
//! JSON field at any depth; a body that cannot be parsed for redaction is left out, not kept.

use std::collections::BTreeSet;

use switchyard_proto::audit::Captured;

use crate::config::{ALWAYS_REDACTED_HEADERS, AuditPolicy};

/// What replaces a redacted value.
pub const REDACTED: &str = "REDACTED";

/// The largest body parsed as JSON for field redaction; a larger one is left out
/// (`omitted = "too_large"`) when fields are to be redacted.
pub const JSON_PARSE_BYTES_MAX: usize = 1024 * 1024;

/// The most distinct header names one capture keeps; further names are left out.
pub const CAPTURED_HEADERS_MAX: usize = 100;

/// Characters of a query string a record keeps.
pub const QUERY_CHARS_MAX: usize = 2048;

/// One service's redaction rules, with the names normalised once.
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    /// Lower-case query parameter names.
    query_params: BTreeSet<String>,
    /// Lower-case header names, the always-redacted ones included.
    headers: BTreeSet<String>,
    json_fields: BTreeSet<String>,
    body_bytes_max: usize,
}

impl Redaction {
    pub fn new(policy: &AuditPolicy) -> Self {
        Self {
            query_params: policy
                .redact_query_params
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            headers: policy
                .redact_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .chain(ALWAYS_REDACTED_HEADERS.iter().map(|h| (*h).to_owned()))
                .collect(),
            json_fields: policy.redact_json_fields.iter().cloned().collect(),
            body_bytes_max: policy.body_bytes_max,
        }
    }

    /// The query string with the configured parameters' values replaced, cut at
    /// [`QUERY_CHARS_MAX`] characters (after redaction, so a cut never uncovers a value).
    pub fn query(&self, query: &str) -> String {
        let redacted = query
            .split('&')
            .map(|pair| {
                let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                if self.query_params.contains(&percent_decoded_lower(name)) {
                    format!("{name}={REDACTED}")
                } else {
                    pair.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("&");
        redacted.chars().take(QUERY_CHARS_MAX).collect()
    }

    /// Captures headers (name, value pairs in order) and a body.
    pub fn capture<'h>(
        &self,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        body: &[u8],
    ) -> Captured {
        let mut captured = self.body(body);
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            let value = if self.headers.contains(&name) {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value).into_owned()
            };
            let held = captured.headers.len();
            match captured.headers.entry(name) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let joined = e.get_mut();
                    joined.push_str(", ");
                    joined.push_str(&value);
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    if held < CAPTURED_HEADERS_MAX {
                        e.insert(value);
                    }
                }
            }
        }
        captured
    }

    /// The body, redacted and capped; its size always.
    fn body(&self, body: &[u8]) -> Captured {
        let mut captured = Captured {
            body_size: body.len() as u64,
            ..Captured::default()
        };
        if body.is_empty() {
            return captured;
        }
        let mut kept = if self.json_fields.is_empty() {
            captured.truncated = body.len() > self.body_bytes_max;
            captured.body = body.get(..self.body_bytes_max).unwrap_or(body).to_vec();
            return captured;
        } else if body.len() > JSON_PARSE_BYTES_MAX {
            captured.omitted = "too_large".to_owned();
            return captured;
        } else {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(mut value) => {
                    self.redact_json(&mut value);
                    serde_json::to_vec(&value).unwrap_or_default()
                }
                Err(_) => {
                    captured.omitted = "not_json".to_owned();
                    return captured;
                }
            }
        };
        captured.truncated = kept.len() > self.body_bytes_max;
        kept.truncate(self.body_bytes_max);
        captured.body = kept;
        captured
    }

    /// Replaces the configured fields' values at any depth. serde_json refuses documents
    /// nested deeper than 128 levels, so the walk is bounded by the same depth.
    fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    if self.json_fields.contains(key) {
                        *inner = serde_json::Value::String(REDACTED.to_owned());
                    } else {
                        self.redact_json(inner);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for inner in items {
                    self.redact_json(inner);
                }
            }
            _ => {}
        }
    }
}

/// A query parameter name as a server would read it: `+` as a space, `%XX` decoded, in lower
/// case; a bad escape is kept as it is.
fn percent_decoded_lower(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hex = |c: u8| (c as char).to_digit(16);
        match b {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b),
            },
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(f: impl FnOnce(&mut AuditPolicy)) -> Redaction {
        let mut p = AuditPolicy {
            bodies: true,
            ..AuditPolicy::default()
        };
        f(&mut p);
        Redaction::new(&p)
    }

    #[test]
    fn query_parameters_are_redacted_whatever_their_case_or_encoding() {
        let r = policy(|p| p.redact_query_params = vec!["token".into(), "api key".into()]);
        assert_eq!(
            r.query("a=1&token=s3cret&TOKEN=x&%74oken=y&api+key=z&api%20key=w&b&token"),
            "a=1&token=REDACTED&TOKEN=REDACTED&%74oken=REDACTED&api+key=REDACTED&api%20key=REDACTED&b&token=REDACTED"
        );
        assert_eq!(r.query("a=%zz&token%="), "a=%zz&token%=");
        let long = "x".repeat(QUERY_CHARS_MAX * 2);
        assert_eq!(r.query(&long).len(), QUERY_CHARS_MAX);
    }

    #[test]
    fn the_four_credential_headers_are_always_redacted_and_the_configured_ones_too() {
        let r = policy(|p| p.redact_headers = vec!["X-Api-Key".into()]);
        let headers: Vec<(&str, &[u8])> = vec![
            ("Authorization", b"Bearer t"),
            ("proxy-authorization", b"Basic x"),
            ("cookie", b"a=1"),
            ("set-cookie", b"b=2"),
            ("x-api-key", b"k"),
            ("accept", b"a"),
            ("Accept", b"b"),
        ];
        let c = r.capture(headers, b"");
        for name in [
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "x-api-key",
        ] {
            assert_eq!(c.headers[name], REDACTED, "{name}");
        }
        assert_eq!(c.headers["accept"], "a, b");
    }

    #[test]
    fn captured_header_names_are_bounded() {
        let r = policy(|_| {});
        let names: Vec<String> = (0..CAPTURED_HEADERS_MAX + 10)
            .map(|i| format!("x-{i}"))
            .collect();
        let c = r.capture(names.iter().map(|n| (n.as_str(), &b"v"[..])), b"");
        assert_eq!(c.headers.len(), CAPTURED_HEADERS_MAX);
    }

    #[test]
    fn json_fields_are_redacted_at_any_depth_before_the_cap() {
        let r = policy(|p| {
            p.redact_json_fields = vec!["password".into(), "card".into()];
            p.body_bytes_max = 4096;
        });
        let body = br#"{"user":"u","password":"p1","nested":{"list":[{"card":{"no":"4111"}},{"password":7}]}}"#;
        let c = r.capture([], body);
        let kept: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(kept["password"], REDACTED);
        assert_eq!(kept["nested"]["list"][0]["card"], REDACTED);
        assert_eq!(kept["nested"]["list"][1]["password"], REDACTED);
        assert_eq!(kept["user"], "u");
        assert!(!String::from_utf8_lossy(&c.body).contains("4111"));
        assert_eq!(c.body_size, body.len() as u64);
        assert!(!c.truncated);
        assert_eq!(c.omitted, "");
    }

    #[test]
    fn a_body_that_cannot_be_redacted_is_left_out() {
        let r = policy(|p| p.redact_json_fields = vec!["password".into()]);
        let c = r.capture([], b"password=p1");
        assert_eq!(c.omitted, "not_json");
        assert!(c.body.is_empty());
        assert_eq!(c.body_size, 11);
        let big = format!(r#"{{"password":"{}"}}"#, "p".repeat(JSON_PARSE_BYTES_MAX));
        let c = r.capture([], big.as_bytes());
        assert_eq!(c.omitted, "too_large");
        assert!(c.body.is_empty());
        // Without fields to redact, any body is kept up to the cap.
        let c = policy(|p| p.body_bytes_max = 4).capture([], b"password=p1");
        assert_eq!((c.body.as_slice(), c.truncated), (&b"pass"[..], true));
    }

    #[test]
    fn bodies_are_cut_at_the_cap() {
        let r = policy(|p| {
            p.redact_json_fields = vec!["x".into()];
            p.body_bytes_max = 10;
        });
        let body = format!(r#"{{"a":"{}"}}"#, "y".repeat(100));
        let c = r.capture([], body.as_bytes());
        assert_eq!(c.body.len(), 10);
        assert!(c.truncated);
        assert_eq!(c.body_size, body.len() as u64);
    }
}

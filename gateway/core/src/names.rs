//! What a service name, an instance id and an instance address may be. Everything that enters
//! the registry passes through here, so the registry never holds a name that cannot be routed.

use crate::GatewayError;

/// Longest service name or instance id, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Largest metadata map an instance may carry: entries, and bytes per key or value.
pub const METADATA_ENTRIES_MAX: usize = 32;
pub const METADATA_BYTES_MAX: usize = 512;

/// A service name is one URL path segment that needs no escaping: ASCII letters, digits, `-`,
/// `_` and `.`, starting with a letter or digit, at most [`NAME_BYTES_MAX`] bytes.
pub fn validate_service(service: &str) -> Result<(), GatewayError> {
    validate_name("service", service)
}

/// An instance id follows the same rules as a service name.
pub fn validate_instance_id(instance_id: &str) -> Result<(), GatewayError> {
    validate_name("instance_id", instance_id)
}

fn validate_name(field: &'static str, name: &str) -> Result<(), GatewayError> {
    let invalid = |reason: &str| GatewayError::InvalidArgument {
        field,
        reason: format!("{name:?} {reason}"),
    };
    if name.is_empty() {
        return Err(invalid("is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(invalid(&format!("is longer than {NAME_BYTES_MAX} bytes")));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid("must start with a letter or a digit"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            "may hold only ASCII letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

/// Normalises an instance address to `http://host:port` (gRPC over cleartext HTTP/2) or
/// `https://host:port` (over TLS). Accepts `host:port` (taken as http), `http://host:port`,
/// `https://host:port`, each with a trailing `/`; IPv6 hosts in brackets. Rejects anything
/// with a path, query, user info, another scheme, or no port.
pub fn normalize_addr(addr: &str) -> Result<String, GatewayError> {
    let invalid = |reason: &str| GatewayError::InvalidArgument {
        field: "addr",
        reason: format!("{addr:?} {reason}"),
    };
    let (scheme, rest) = match addr.split_once("://") {
        Some(("http", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "has scheme {scheme:?}; only http (cleartext HTTP/2) and https (TLS) are supported"
            )));
        }
        None => ("http", addr),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(invalid("has no host"));
    }
    if authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(invalid(
            "must be host:port with no path, query or user info",
        ));
    }
    let uri: http::uri::Authority = authority
        .parse()
        .map_err(|_| invalid("is not a valid host:port"))?;
    if uri.port_u16().is_none_or(|p| p == 0) {
        return Err(invalid("needs a port between 1 and 65535"));
    }
    if uri.host().is_empty() {
        return Err(invalid("has no host"));
    }
    Ok(format!("{scheme}://{uri}"))
}

/// Checks an instance's metadata against the documented bounds.
pub fn validate_metadata(
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<(), GatewayError> {
    if metadata.len() > METADATA_ENTRIES_MAX {
        return Err(GatewayError::InvalidArgument {
            field: "metadata",
            reason: format!(
                "has {} entries; at most {METADATA_ENTRIES_MAX}",
                metadata.len()
            ),
        });
    }
    if let Some((k, _)) = metadata
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > METADATA_BYTES_MAX || v.len() > METADATA_BYTES_MAX)
    {
        return Err(GatewayError::InvalidArgument {
            field: "metadata",
            reason: format!(
                "key {k:?}: keys must be non-empty and keys and values at most {METADATA_BYTES_MAX} bytes"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["orders", "a", "svc-1.v2_beta", "9lives"] {
            assert!(validate_service(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "ü",
            "..",
            &"x".repeat(129),
        ] {
            let err = validate_service(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_argument", "{bad}");
        }
    }

    #[test]
    fn addresses_normalise_or_fail_clearly() {
        assert_eq!(
            normalize_addr("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            normalize_addr("http://localhost:1/").unwrap(),
            "http://localhost:1"
        );
        assert_eq!(normalize_addr("[::1]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(
            normalize_addr("https://svc.internal:443/").unwrap(),
            "https://svc.internal:443"
        );
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "grpc://a:1",
            "https://a",
            "http://a:1/path",
            "http://u@a:1",
            "a:1?x",
            "http://",
        ] {
            let err = normalize_addr(bad).unwrap_err();
            assert!(err.to_string().contains("addr"), "{bad}: {err}");
        }
    }

    #[test]
    fn metadata_bounds() {
        let mut m = std::collections::BTreeMap::new();
        m.insert("zone".to_owned(), "a".to_owned());
        assert!(validate_metadata(&m).is_ok());
        m.insert(String::new(), "x".to_owned());
        assert!(validate_metadata(&m).is_err());
        let big: std::collections::BTreeMap<_, _> = (0..=METADATA_ENTRIES_MAX)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(validate_metadata(&big).is_err());
    }
}

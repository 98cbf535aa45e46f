//! A JWKS document → the keys a provider verifies tokens with.
//!
//! Each key is taken for the algorithms its type allows, narrowed to its own `alg` if it names
//! one and to the provider's pinned algorithms: RSA for `RS*`/`PS*` (at least 2048 bits), P-256
//! for `ES256`, P-384 for `ES384`, Ed25519 for `EdDSA`. Symmetric (`oct`) keys, encryption keys
//! (`use = "enc"`) and keys of any other type are skipped; a document with more entries than the
//! provider's `keys_max`, or with no usable key, is refused whole.

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use serde_json::Value;

use super::{Key, KeyRing};

/// Longest `kid` kept; a key with a longer one is skipped.
pub const KID_BYTES_MAX: usize = 256;
/// The smallest RSA modulus taken, in bytes (2048 bits).
const RSA_MODULUS_BYTES_MIN: usize = 256;

/// The usable keys of `body` for a provider pinning `pinned`, at most `keys_max` entries.
pub fn key_ring(body: &[u8], pinned: &[Algorithm], keys_max: usize) -> Result<KeyRing, String> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON document: {e}"))?;
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err("not a JWKS document (no `keys` array)".to_owned());
    };
    if entries.len() > keys_max {
        return Err(format!(
            "holds {} keys; at most {keys_max} are taken",
            entries.len()
        ));
    }
    let mut keys = Vec::with_capacity(entries.len());
    let mut skipped = 0usize;
    for entry in entries {
        match key(entry, pinned) {
            Some(k) => keys.push(k),
            None => skipped += 1,
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "holds no key usable with the pinned algorithms ({skipped} skipped)"
        ));
    }
    Ok(KeyRing { keys, skipped })
}

/// One entry as a key, or `None` if it is not usable here.
fn key(entry: &Value, pinned: &[Algorithm]) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).ok()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let kid = jwk.common.key_id.clone();
    if kid
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > KID_BYTES_MAX)
    {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            if modulus_bytes(&rsa.n) < RSA_MODULUS_BYTES_MIN {
                return None;
            }
            &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ]
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return None,
        },
        // A shared secret: never taken from a key set.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let own: Option<Algorithm> = match entry.get("alg") {
        None => None,
        Some(Value::String(name)) => Some(name.parse().ok()?),
        Some(_) => return None,
    };
    let algorithms: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| pinned.contains(a) && own.is_none_or(|o| o == *a))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid,
        algorithms,
        key,
    })
}

/// The length in bytes of a base64url-encoded big-endian integer, leading zeros not counted.
fn modulus_bytes(n: &str) -> usize {
    let digits = n.trim_end_matches('=');
    let bytes = digits.len() * 6 / 8;
    // Leading zero bytes are rare; count only what the first characters cannot hide.
    let zeros = digits.bytes().take_while(|&b| b == b'A').count() * 6 / 8;
    bytes.saturating_sub(zeros)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn ring(doc: Value, pinned: &[Algorithm]) -> Result<KeyRing, String> {
        key_ring(&serde_json::to_vec(&doc).unwrap(), pinned, 4)
    }

    #[test]
    fn takes_what_the_pins_allow_and_skips_the_rest() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "ed"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "secret"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "enc", "use": "enc"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny-rsa"},
        ]});
        let ring = ring(doc.clone(), &[Algorithm::EdDSA]).unwrap();
        assert_eq!(ring.keys.len(), 1);
        assert_eq!(ring.keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(ring.skipped, 3);
        // Pinned to RS256 only: nothing usable.
        assert!(
            super::key_ring(&serde_json::to_vec(&doc).unwrap(), &[Algorithm::RS256], 4)
                .unwrap_err()
                .contains("no key usable")
        );
    }

    #[test]
    fn a_key_naming_another_algorithm_is_skipped() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "ed", "alg": "ES256"},
        ]});
        assert!(ring(doc, &[Algorithm::EdDSA, Algorithm::ES256]).is_err());
    }

    #[test]
    fn too_many_keys_or_no_document_is_refused() {
        let one = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X});
        let doc = serde_json::json!({ "keys": vec![one; 5] });
        assert!(
            ring(doc, &[Algorithm::EdDSA])
                .unwrap_err()
                .contains("at most 4")
        );
        assert!(key_ring(b"[]", &[Algorithm::EdDSA], 4).is_err());
        assert!(key_ring(b"\xff", &[Algorithm::EdDSA], 4).is_err());
    }
}

//! Verifying one token: its size, its provider (by `iss`), the provider's pinned algorithm,
//! its key (by `kid`, refetched once per cooldown when unknown), its signature, then its
//! claims — `exp` required, `nbf` and `iat` sane, all within the leeway, on the node's clock
//! (the clock seam), never the library's — and its audience.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::jwks::{Jwks, Key, ProviderKeys};

/// Longest `sub`, `jti` or `iss` taken, in bytes.
pub const CLAIM_BYTES_MAX: usize = 256;

/// A verified token's facts and claims.
#[derive(Debug)]
pub struct Verified {
    pub provider: usize,
    pub kid: Option<String>,
    pub issuer: String,
    pub subject: String,
    pub token_id: Option<String>,
    pub issued_at_s: Option<u64>,
    pub not_before_s: Option<u64>,
    pub expires_at_s: u64,
    pub claims: Map<String, Value>,
    /// What it costs the cache, roughly, in bytes.
    pub bytes: usize,
}

/// Why a token was refused: a label of [`crate::jwks::REFUSAL_REASONS`] and a sentence for
/// the client (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: &'static str,
    pub message: &'static str,
}

const fn refused(reason: &'static str, message: &'static str) -> Refused {
    Refused { reason, message }
}

/// The time checks of a verified token at `now_s`, with `leeway_s`.
pub fn check_time(v: &Verified, now_s: u64, leeway_s: u64) -> Result<(), Refused> {
    if now_s >= v.expires_at_s.saturating_add(leeway_s) {
        return Err(refused("expired", "the token has expired"));
    }
    if v.not_before_s
        .is_some_and(|nbf| now_s.saturating_add(leeway_s) < nbf)
    {
        return Err(refused("not_yet_valid", "the token is not valid yet"));
    }
    if v.issued_at_s
        .is_some_and(|iat| now_s.saturating_add(leeway_s) < iat)
    {
        return Err(refused(
            "issued_in_future",
            "the token was issued in the future",
        ));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct Peek {
    iss: Option<String>,
}

/// Verifies `token` against the providers `allowed` (indexes; empty: every provider) at
/// Unix second `now_s`.
pub async fn verify(
    jwks: &Jwks,
    allowed: &[usize],
    token: &str,
    now_s: u64,
    leeway_s: u64,
) -> Result<Verified, Refused> {
    let malformed = refused("malformed", "the token is not a signed JWT");
    let header = jsonwebtoken::decode_header(token).map_err(|_| malformed.clone())?;
    let issuer = jsonwebtoken::dangerous::insecure_decode::<Peek>(token)
        .map_err(|_| malformed.clone())?
        .claims
        .iss
        .ok_or(refused("unknown_issuer", "the token names no issuer"))?;
    let provider = jwks
        .providers()
        .iter()
        .filter(|p| allowed.is_empty() || allowed.contains(&p.index))
        .find(|p| p.config.issuer == issuer)
        .ok_or(refused(
            "unknown_issuer",
            "the token's issuer is not accepted here",
        ))?;
    if !provider.algorithms.contains(&header.alg) {
        return Err(refused(
            "algorithm",
            "the token's algorithm is not accepted for its issuer",
        ));
    }
    let (kid, claims) = signed_claims(provider, &header, token).await?;
    let verified = facts(provider, kid, claims)?;
    check_time(&verified, now_s, leeway_s)?;
    Ok(verified)
}

/// Finds the key and checks the signature; returns the key's id and the claims.
async fn signed_claims(
    provider: &Arc<ProviderKeys>,
    header: &jsonwebtoken::Header,
    token: &str,
) -> Result<(Option<String>, Map<String, Value>), Refused> {
    let unavailable = refused(
        "keys_unavailable",
        "the issuer's keys are unavailable; try again later",
    );
    let mut ring = provider.ring().ok_or(unavailable.clone())?;
    if let Some(kid) = &header.kid {
        if ring.by_kid(kid).is_none() {
            // A key this gateway has not seen: the provider may have rotated. One fetch per
            // cooldown, shared by every request that asks meanwhile.
            provider.refetch().await;
            ring = provider.ring().ok_or(unavailable)?;
        }
        let key = ring.by_kid(kid).ok_or(refused(
            "unknown_key",
            "the token is signed with a key the issuer does not publish",
        ))?;
        return check_signature(key, header.alg, token).map(|c| (Some(kid.clone()), c));
    }
    let mut last = refused(
        "unknown_key",
        "the token names no key and no key of its algorithm verifies it",
    );
    for key in ring.for_algorithm(header.alg) {
        match check_signature(key, header.alg, token) {
            Ok(claims) => return Ok((None, claims)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn check_signature(key: &Key, alg: Algorithm, token: &str) -> Result<Map<String, Value>, Refused> {
    if !key.algorithms.contains(&alg) {
        return Err(refused(
            "algorithm",
            "the token's algorithm does not fit its key",
        ));
    }
    let mut validation = Validation::new(alg);
    // Time, audience and issuer are checked here, on the node's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature => {
                refused("bad_signature", "the token's signature does not verify")
            }
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                refused("algorithm", "the token's algorithm does not fit its key")
            }
            _ => refused("malformed", "the token is not a signed JWT"),
        }),
    }
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, Refused> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= CLAIM_BYTES_MAX => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(refused(
            "malformed",
            "a claim (sub, jti or iss) is not a string of 1 to 256 bytes",
        )),
    }
}

fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Refused> {
    match claims.get(name) {
        None => Ok(None),
        // Seconds may be fractional (RFC 7519 NumericDate); the whole second is enough here.
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or(refused(
                "malformed",
                "a time claim (exp, nbf, iat) is not a number of seconds",
            )),
        Some(_) => Err(refused(
            "malformed",
            "a time claim (exp, nbf, iat) is not a number of seconds",
        )),
    }
}

fn facts(
    provider: &ProviderKeys,
    kid: Option<String>,
    claims: Map<String, Value>,
) -> Result<Verified, Refused> {
    let issuer = string_claim(&claims, "iss")?.unwrap_or_default();
    let subject = string_claim(&claims, "sub")?
        .ok_or(refused("malformed", "the token has no subject (sub)"))?;
    let token_id = string_claim(&claims, "jti")?;
    let expires_at_s =
        time_claim(&claims, "exp")?.ok_or(refused("malformed", "the token has no expiry (exp)"))?;
    let not_before_s = time_claim(&claims, "nbf")?;
    let issued_at_s = time_claim(&claims, "iat")?;
    let audiences = &provider.config.audiences;
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    if !audience_ok {
        return Err(refused(
            "wrong_audience",
            "the token is not meant for this audience",
        ));
    }
    let bytes = 256 + 2 * serde_json::to_string(&claims).map_or(0, |s| s.len());
    Ok(Verified {
        provider: provider.index,
        kid,
        issuer,
        subject,
        token_id,
        issued_at_s,
        not_before_s,
        expires_at_s,
        claims,
        bytes,
    })
}

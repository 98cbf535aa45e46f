//! Credentials on the control listener: who may change which services, and who may read the
//! registry.
//!
//! A credential is a JWT signed by the operator ([`issue`], `switchyard token issue`). Its
//! claims name the services it may change (exact names, prefixes ending in `*`, or `*` for
//! all) and whether it may read the registry. The gateway verifies it against the public keys
//! of [`KeySet`] — Ed25519 (EdDSA), P-256 (ES256) or RSA of at least 2048 bits (RS256), one
//! algorithm per key, chosen by the key and never by the token — and checks the audience,
//! expiry and not-before against its own clock (the clock seam, so the simulation's time
//! rules there too). Several keys at once make rotation possible: add the new key, move the
//! callers to tokens it signed, remove the old one, and every token it signed is refused.
//!
//! Every bound is stated: [`KEYS_MAX`] keys, [`TOKEN_BYTES_MAX`] bytes of token,
//! [`PATTERNS_MAX`] service patterns, [`CLAIM_BYTES_MAX`] bytes of subject and id.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchyard_core::GatewayError;
use switchyard_core::identity::Identity;

use crate::config::{CertificateGrant, ControlAuth, ControlConfig};
use crate::tls::PeerCertificate;

/// The audience every control credential names, so a token minted for some other system
/// with the same key is not one.
pub const AUDIENCE: &str = "switchyard-control";
/// Public keys one key set may hold (a key being verified per token at most, a bad token
/// with no key id costs at most this many verifications).
pub const KEYS_MAX: usize = 16;
/// Longest token accepted, in bytes.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Service patterns one token may carry.
pub const PATTERNS_MAX: usize = 64;
/// Longest subject, token id or service pattern, in bytes.
pub const CLAIM_BYTES_MAX: usize = 256;
/// Smallest RSA modulus accepted, in bits.
pub const RSA_BITS_MIN: usize = 2048;
/// The `WWW-Authenticate` challenge of the control listener's 401s.
pub const CHALLENGE: &str = r#"Bearer realm="switchyard-control""#;

/// The signature algorithms a key may have; the key decides, never the token's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// Ed25519.
    EdDsa,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
}

impl KeyAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::EdDsa => Algorithm::EdDSA,
            KeyAlgorithm::Es256 => Algorithm::ES256,
            KeyAlgorithm::Rs256 => Algorithm::RS256,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EdDsa => "EdDSA",
            KeyAlgorithm::Es256 => "ES256",
            KeyAlgorithm::Rs256 => "RS256",
        }
    }
}

/// Why a key or a key file was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl From<String> for KeyError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl KeyError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The id of a public key: the first 16 bytes of the SHA-256 of its DER
/// `SubjectPublicKeyInfo`, in hex. Tokens name their key by it (`kid`), so it follows the key
/// wherever the key file goes.
pub fn key_id(spki_der: &[u8]) -> String {
    Sha256::digest(spki_der)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One public key that verifies credentials.
struct VerifyingKey {
    id: String,
    algorithm: KeyAlgorithm,
    key: DecodingKey,
}

/// The public keys credentials are verified against: at most [`KEYS_MAX`], each with its id
/// and algorithm.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|k| format!("{} ({})", k.id, k.algorithm.as_str())),
            )
            .finish()
    }
}

impl KeySet {
    /// The keys of a PEM text holding one or more `PUBLIC KEY` blocks (SubjectPublicKeyInfo,
    /// as `openssl pkey -pubout` writes). Anything else in it — a private key, a certificate,
    /// a PKCS#1 `RSA PUBLIC KEY`, a curve other than P-256, an RSA key under 2048 bits, the
    /// same key twice, more than [`KEYS_MAX`] keys, no key at all — is an error naming the
    /// block, and nothing of the text is taken.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let blocks =
            pem::parse_many(text).map_err(|e| KeyError::new(format!("not a PEM file: {e}")))?;
        if blocks.is_empty() {
            return Err(KeyError::new(
                "holds no PEM block (expected `-----BEGIN PUBLIC KEY-----`)",
            ));
        }
        if blocks.len() > KEYS_MAX {
            return Err(KeyError::new(format!(
                "holds {} PEM blocks; at most {KEYS_MAX} keys are verified at once",
                blocks.len()
            )));
        }
        let mut keys: Vec<VerifyingKey> = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.iter().enumerate() {
            let n = i + 1;
            if block.tag() != "PUBLIC KEY" {
                return Err(KeyError::new(format!(
                    "block {n} is `{}`; only `PUBLIC KEY` blocks (SubjectPublicKeyInfo) belong here — never a private key",
                    block.tag()
                )));
            }
            let der = block.contents();
            let algorithm =
                spki_algorithm(der).map_err(|e| KeyError::new(format!("block {n}: {e}")))?;
            let key = match algorithm {
                KeyAlgorithm::EdDsa => spki_key_bits(der).map(DecodingKey::from_ed_der),
                KeyAlgorithm::Es256 => spki_key_bits(der).map(DecodingKey::from_ec_der),
                KeyAlgorithm::Rs256 => spki_key_bits(der).map(DecodingKey::from_rsa_der),
            }
            .ok_or_else(|| KeyError::new(format!("block {n}: the key's bits cannot be read")))?;
            let id = key_id(der);
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyError::new(format!(
                    "block {n}: key {id} is in the file twice"
                )));
            }
            keys.push(VerifyingKey { id, algorithm, key });
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys' ids, in file order.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }
}

/// The key set of a key file.
pub fn read_key_file(path: &Path) -> Result<KeySet, KeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KeyError::new(format!("cannot read key file {}: {e}", path.display())))?;
    KeySet::from_pem(&text)
        .map_err(|e| KeyError::new(format!("key file {}: {}", path.display(), e.0)))
}

/// A DER element: its tag, its contents and what follows it. Definite lengths only (DER).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_INTEGER: u8 = 0x02;
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The algorithm identifier and the key bits of a SubjectPublicKeyInfo.
fn spki_parts(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (TAG_SEQUENCE, spki, []) = der_element(der)? else {
        return None;
    };
    let (TAG_SEQUENCE, algorithm, rest) = der_element(spki)? else {
        return None;
    };
    let (TAG_BIT_STRING, bits, []) = der_element(rest)? else {
        return None;
    };
    // A bit string's first byte counts the unused bits of its last byte; keys use none.
    let ([0], bits) = bits.split_at_checked(1)? else {
        return None;
    };
    Some((algorithm, bits))
}

/// The public key bits of a SubjectPublicKeyInfo (for RSA, the PKCS#1 `RSAPublicKey`).
fn spki_key_bits(der: &[u8]) -> Option<&[u8]> {
    spki_parts(der).map(|(_, bits)| bits)
}

/// Which of the accepted algorithms a SubjectPublicKeyInfo's key is for.
fn spki_algorithm(der: &[u8]) -> Result<KeyAlgorithm, String> {
    let (algorithm, bits) = spki_parts(der).ok_or("not a DER SubjectPublicKeyInfo".to_owned())?;
    let (TAG_OID, oid, params) =
        der_element(algorithm).ok_or("no algorithm identifier".to_owned())?
    else {
        return Err("no algorithm identifier".to_owned());
    };
    match oid {
        OID_ED25519 if bits.len() == 32 => Ok(KeyAlgorithm::EdDsa),
        OID_EC_PUBLIC_KEY => match der_element(params) {
            Some((TAG_OID, OID_P256, [])) if bits.len() == 65 && bits[0] == 0x04 => {
                Ok(KeyAlgorithm::Es256)
            }
            _ => Err("an elliptic-curve key on a curve other than P-256 (ES256 only)".to_owned()),
        },
        OID_RSA => {
            let bits_n =
                rsa_modulus_bits(bits).ok_or("an RSA key that cannot be read".to_owned())?;
            if bits_n < RSA_BITS_MIN {
                Err(format!(
                    "an RSA key of {bits_n} bits; at least {RSA_BITS_MIN} are required"
                ))
            } else {
                Ok(KeyAlgorithm::Rs256)
            }
        }
        _ => Err("a key of an algorithm not accepted (Ed25519, P-256 or RSA only)".to_owned()),
    }
}

/// The size of an `RSAPublicKey`'s modulus, in bits.
fn rsa_modulus_bits(pkcs1: &[u8]) -> Option<usize> {
    let (TAG_SEQUENCE, key, []) = der_element(pkcs1)? else {
        return None;
    };
    let (TAG_INTEGER, modulus, _) = der_element(key)? else {
        return None;
    };
    let modulus = match modulus {
        [0, rest @ ..] => rest,
        m => m,
    };
    let (&top, _) = modulus.split_first()?;
    Some(modulus.len() * 8 - top.leading_zeros() as usize)
}

/// The claims of a control credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// Whom the credential is for: a team, a service, an operator. Logged with every change.
    pub sub: String,
    /// The credential's own id; logged, never the token.
    pub jti: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Not valid from this Unix second on.
    pub exp: u64,
    /// Not valid before this Unix second, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The services it may register, renew and deregister: exact names, prefixes ending in
    /// `*` (`billing-*`), or `*` for every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Whether it may read the registry and the metrics on the control listener.
    #[serde(default)]
    pub read: bool,
}

/// One service pattern of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    All,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        let name_like = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        match text.strip_suffix('*') {
            Some("") => Ok(Pattern::All),
            Some(prefix) if name_like(prefix) => Ok(Pattern::Prefix(prefix.to_owned())),
            None if !text.is_empty() && name_like(text) => Ok(Pattern::Exact(text.to_owned())),
            _ => Err(format!(
                "service pattern {text:?} is neither a service name, a prefix ending in `*`, nor `*`"
            )),
        }
    }

    fn matches(&self, service: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(prefix) => service.starts_with(prefix.as_str()),
            Pattern::Exact(name) => service == name,
        }
    }
}

/// What a verified credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub identity: Identity,
    patterns: Vec<Pattern>,
    read: bool,
}

impl Grant {
    /// Everything: the grant of a listener whose `control.auth` is `"none"`.
    pub fn everything() -> Self {
        Self {
            identity: Identity {
                subject: "anonymous".to_owned(),
                credential_id: "none".to_owned(),
            },
            patterns: vec![Pattern::All],
            read: true,
        }
    }

    /// Whether it may register, renew or deregister instances of `service`.
    pub fn may_change(&self, service: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(service))
    }

    /// Whether it may read the registry and the metrics.
    pub fn may_read(&self) -> bool {
        self.read
    }

    /// Whether it may revoke public tokens: only an operator's credential, one for every
    /// service (`*`), may; a credential for some services may not.
    pub fn may_revoke(&self) -> bool {
        self.patterns.contains(&Pattern::All)
    }
}

/// Why a credential was refused. Each has a metric label; none carries the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization: Bearer …` at all.
    Missing,
    /// Not a JWT, too long, a header or claims that cannot be read, or claims out of bounds.
    Malformed(String),
    /// Signed with a key this gateway does not hold (never held, or removed at rotation).
    UnknownKey {
        kid: Option<String>,
    },
    /// The signature does not verify, or the header names an algorithm the key does not have.
    BadSignature {
        kid: String,
    },
    /// Not for [`AUDIENCE`].
    WrongAudience,
    Expired {
        subject: String,
        id: String,
    },
    NotYetValid {
        subject: String,
        id: String,
    },
    /// A valid credential that does not cover the change or the read.
    NotPermitted {
        identity: Identity,
        what: String,
    },
}

impl Refusal {
    /// All the metric labels.
    pub const LABELS: [&'static str; 8] = [
        "missing",
        "malformed",
        "unknown_key",
        "bad_signature",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "not_permitted",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownKey { .. } => "unknown_key",
            Refusal::BadSignature { .. } => "bad_signature",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::Expired { .. } => "expired",
            Refusal::NotYetValid { .. } => "not_yet_valid",
            Refusal::NotPermitted { .. } => "not_permitted",
        }
    }

    /// What the caller presented, for the log: the verified identity, or the key id of a
    /// token that did not verify. Never the token.
    pub fn presented(&self) -> String {
        match self {
            Refusal::Missing => "nothing".to_owned(),
            Refusal::Malformed(why) => format!("an unreadable credential ({why})"),
            Refusal::UnknownKey { kid } => format!("a credential of key {kid:?}"),
            Refusal::BadSignature { kid } => format!("a credential claiming key {kid:?}"),
            Refusal::WrongAudience => "a credential for another audience".to_owned(),
            Refusal::Expired { subject, id } | Refusal::NotYetValid { subject, id } => {
                format!("credential {id:?} of {subject:?}")
            }
            Refusal::NotPermitted { identity, .. } => format!(
                "credential {:?} of {:?}",
                identity.credential_id, identity.subject
            ),
        }
    }

    /// The answer: 403 `forbidden` for a valid credential that does not cover the request,
    /// 401 `unauthenticated` with the bearer challenge for everything else.
    pub fn to_error(&self) -> GatewayError {
        let unauthenticated = |reason: &str| GatewayError::Unauthenticated {
            reason: reason.to_owned(),
            challenge: format!(r#"{CHALLENGE}, error="invalid_token""#),
        };
        match self {
            Refusal::Missing => GatewayError::Unauthenticated {
                reason: "this control listener requires a credential: `authorization: Bearer <token>` (see `switchyard token issue`)".to_owned(),
                challenge: CHALLENGE.to_owned(),
            },
            Refusal::Malformed(why) => unauthenticated(&format!("the credential cannot be read: {why}")),
            Refusal::UnknownKey { .. } => unauthenticated("the credential is signed with a key this gateway does not hold"),
            Refusal::BadSignature { .. } => unauthenticated("the credential's signature does not verify"),
            Refusal::WrongAudience => unauthenticated(&format!("the credential is not for {AUDIENCE:?}")),
            Refusal::Expired { .. } => unauthenticated("the credential has expired"),
            Refusal::NotYetValid { .. } => unauthenticated("the credential is not valid yet"),
            Refusal::NotPermitted { identity, what } => GatewayError::Forbidden {
                reason: format!("credential {:?} of {:?} does not permit {what}", identity.credential_id, identity.subject),
            },
        }
    }
}

/// Whether the control listener asks for credentials (`control.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Required,
    /// Anyone who reaches the listener may do anything (logged as a warning at every start).
    None,
}

/// Verifies control credentials against the current key set, which a key file watcher may
/// replace at any time.
pub struct Authenticator {
    mode: Mode,
    keys: RwLock<Arc<KeySet>>,
    /// What a verified client certificate may do, by subject alternative name.
    certificates: Vec<(String, Vec<Pattern>, bool)>,
    /// How far past `exp` (and before `nbf`) a credential is still taken, for clock skew.
    leeway_ms: u64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(mode: Mode, keys: KeySet, leeway_ms: u64) -> Self {
        Self {
            mode,
            keys: RwLock::new(Arc::new(keys)),
            certificates: Vec::new(),
            leeway_ms,
        }
    }

    /// Takes client certificates as credentials too: a verified certificate with one of
    /// these subject alternative names may do what its grant says (the first grant that
    /// names one of its SANs).
    pub fn with_certificate_grants(
        mut self,
        grants: &[CertificateGrant],
    ) -> Result<Self, KeyError> {
        self.certificates = grants
            .iter()
            .map(|g| {
                let patterns = g
                    .services
                    .iter()
                    .map(|p| Pattern::parse(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        KeyError::new(format!("control.certificate_grants ({}): {e}", g.san))
                    })?;
                Ok((g.san.clone(), patterns, g.read))
            })
            .collect::<Result<_, KeyError>>()?;
        Ok(self)
    }

    /// The authenticator `[control]` describes, its key file read now. `auth = "required"`
    /// with neither a key file nor certificate grants is an error: no credential could ever
    /// be verified.
    pub fn load(control: &ControlConfig) -> Result<Self, KeyError> {
        let mode = match control.auth {
            ControlAuth::Required => Mode::Required,
            ControlAuth::None => Mode::None,
        };
        let keys = if control.jwt_keys_file.as_os_str().is_empty() {
            if mode == Mode::Required && control.certificate_grants.is_empty() {
                return Err(KeyError::new(
                    "control.auth is \"required\" but neither control.jwt_keys_file nor control.certificate_grants is set: give the operator's public keys (`switchyard token keygen` makes a pair) or map client certificates to services, or set control.auth = \"none\" to let anyone who reaches the control listener change the registry",
                ));
            }
            KeySet::default()
        } else {
            read_key_file(&control.jwt_keys_file)?
        };
        Self::new(mode, keys, control.jwt_leeway_ms)
            .with_certificate_grants(&control.certificate_grants)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The key set in force.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts a new key set in force: credentials signed by keys no longer in it are refused
    /// from now on.
    pub fn replace_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// Who presented `headers` on a connection with client certificate `peer` (verified by
    /// the listener, if any), and what they may do, at Unix time `now_ms`. A bearer
    /// credential, when present, is the one judged; else the certificate. With
    /// `control.auth = "none"`, everyone may do everything.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerCertificate>,
        now_ms: u64,
    ) -> Result<Grant, Refusal> {
        if self.mode == Mode::None {
            return Ok(Grant::everything());
        }
        match (bearer(headers), peer) {
            (Err(Refusal::Missing), Some(peer)) => self.certificate_grant(peer),
            (token, _) => self.verify(token?, now_ms),
        }
    }

    /// The grant of a verified client certificate: the first grant naming one of its SANs.
    fn certificate_grant(&self, peer: &PeerCertificate) -> Result<Grant, Refusal> {
        let identity = |subject: &str| Identity {
            subject: subject.to_owned(),
            credential_id: format!("certificate {}", peer.fingerprint),
        };
        for (san, patterns, read) in &self.certificates {
            if peer.sans.iter().any(|s| s == san) {
                return Ok(Grant {
                    identity: identity(san),
                    patterns: patterns.clone(),
                    read: *read,
                });
            }
        }
        Err(Refusal::NotPermitted {
            identity: identity(peer.sans.first().map_or("(no SAN)", String::as_str)),
            what:
                "anything: no control.certificate_grants entry names its subject alternative names"
                    .to_owned(),
        })
    }

    /// Verifies one token at Unix time `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Grant, Refusal> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(Refusal::Malformed(format!(
                "longer than {TOKEN_BYTES_MAX} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refusal::Malformed(format!("not a signed JWT ({e})")))?;
        let keys = self.keys();
        let candidates: Vec<&VerifyingKey> = match &header.kid {
            Some(kid) => keys.keys.iter().filter(|k| &k.id == kid).collect(),
            None => keys
                .keys
                .iter()
                .filter(|k| k.algorithm.jwt() == header.alg)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(Refusal::UnknownKey { kid: header.kid });
        }
        let mut refusal = Refusal::UnknownKey {
            kid: header.kid.clone(),
        };
        for key in candidates {
            let mut validation = Validation::new(key.algorithm.jwt());
            // Time is checked below, on this node's clock (the clock seam), not the library's.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return self.grant(data.claims, now_ms),
                Err(e) => refusal = refusal_of(&key.id, &e),
            }
        }
        Err(refusal)
    }

    /// The grant of verified claims, once their audience, time and bounds are checked.
    fn grant(&self, claims: Claims, now_ms: u64) -> Result<Grant, Refusal> {
        if claims.aud != AUDIENCE {
            return Err(Refusal::WrongAudience);
        }
        for (name, value) in [("sub", &claims.sub), ("jti", &claims.jti)] {
            if value.is_empty() || value.len() > CLAIM_BYTES_MAX {
                return Err(Refusal::Malformed(format!(
                    "claim `{name}` must have 1 to {CLAIM_BYTES_MAX} bytes"
                )));
            }
        }
        let now_s = now_ms / 1_000;
        let leeway_s = self.leeway_ms.div_ceil(1_000);
        if now_s >= claims.exp.saturating_add(leeway_s) {
            return Err(Refusal::Expired {
                subject: claims.sub,
                id: claims.jti,
            });
        }
        if claims
            .nbf
            .is_some_and(|nbf| now_s.saturating_add(leeway_s) < nbf)
        {
            return Err(Refusal::NotYetValid {
                subject: claims.sub,
                id: claims.jti,
            });
        }
        if claims.services.len() > PATTERNS_MAX {
            return Err(Refusal::Malformed(format!(
                "more than {PATTERNS_MAX} service patterns"
            )));
        }
        let patterns = claims
            .services
            .iter()
            .map(|p| {
                if p.len() > CLAIM_BYTES_MAX {
                    Err(format!(
                        "a service pattern longer than {CLAIM_BYTES_MAX} bytes"
                    ))
                } else {
                    Pattern::parse(p)
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(Refusal::Malformed)?;
        Ok(Grant {
            identity: Identity {
                subject: claims.sub,
                credential_id: claims.jti,
            },
            patterns,
            read: claims.read,
        })
    }
}

/// The refusal of a token that `kid` did not verify.
fn refusal_of(kid: &str, error: &jsonwebtoken::errors::Error) -> Refusal {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => Refusal::BadSignature {
            kid: kid.to_owned(),
        },
        ErrorKind::Json(e) => Refusal::Malformed(format!("claims: {e}")),
        other => Refusal::Malformed(format!("{other:?}")),
    }
}

/// The token of an `authorization: Bearer <token>` header (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Refusal::Missing);
    };
    if values.next().is_some() {
        return Err(Refusal::Malformed(
            "more than one authorization header".to_owned(),
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Refusal::Malformed("the authorization header is not ASCII".to_owned()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(Refusal::Malformed(
            "the authorization header is not `Bearer <token>`".to_owned(),
        )),
    }
}

/// A private key that signs credentials: Ed25519, P-256 or RSA, in PKCS#8 PEM (`openssl
/// genpkey` writes it; so does [`generate_key`]).
pub struct SigningKey {
    id: String,
    algorithm: KeyAlgorithm,
    key: EncodingKey,
    public_pem: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn from_pem(private_pem: &str) -> Result<Self, KeyError> {
        let pair = rcgen::KeyPair::from_pem(private_pem).map_err(|e| {
            KeyError::new(format!(
                "not a PKCS#8 private key of Ed25519, P-256 or RSA: {e}"
            ))
        })?;
        let public_pem = pair.public_key_pem();
        let public = pem::parse(&public_pem)
            .map_err(|e| KeyError::new(format!("its public key cannot be encoded: {e}")))?;
        let algorithm = spki_algorithm(public.contents()).map_err(KeyError::new)?;
        let bytes = private_pem.as_bytes();
        let key = match algorithm {
            KeyAlgorithm::EdDsa => EncodingKey::from_ed_pem(bytes),
            KeyAlgorithm::Es256 => EncodingKey::from_ec_pem(bytes),
            KeyAlgorithm::Rs256 => EncodingKey::from_rsa_pem(bytes),
        }
        .map_err(|e| KeyError::new(format!("the private key cannot be used to sign: {e}")))?;
        Ok(Self {
            id: key_id(public.contents()),
            algorithm,
            key,
            public_pem,
        })
    }

    /// The id tokens it signs carry (`kid`), as [`key_id`] computes it from the public key.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Its public key, as a `PUBLIC KEY` PEM block for a gateway's key file.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }
}

/// A new Ed25519 key pair, as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM).
pub fn generate_key() -> Result<(String, String), KeyError> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| KeyError::new(format!("cannot generate a key: {e}")))?;
    Ok((pair.serialize_pem(), pair.public_key_pem()))
}

/// Signs `claims` with `key`: a credential the gateways holding the key's public half take.
pub fn issue(key: &SigningKey, claims: &Claims) -> Result<String, KeyError> {
    let mut header = Header::new(key.algorithm.jwt());
    header.kid = Some(key.id.clone());
    jsonwebtoken::encode(&header, claims, &key.key)
        .map_err(|e| KeyError::new(format!("cannot sign: {e}")))
}

#[cfg(test)]
mod tests;

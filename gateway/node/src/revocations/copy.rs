//! The local copy of the revocations: what [`crate::revocation::RevocationList::check`]
//! answers from, with no I/O. Bounded by `revocation.entries_max`; entries leave it when they
//! expire (their token has expired too, so the answer is the same without them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::revocation::TokenFacts;

/// Longest issuer, token id or subject, in bytes.
pub const NAME_BYTES_MAX: usize = 256;

/// One revocation, as stored in Redis, published, listed and asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The `iss` of the tokens it covers.
    pub issuer: String,
    /// A token id (`jti`): that token is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// A subject (`sub`): its tokens issued at or before `revoked_at_s` are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it was made, Unix seconds.
    pub revoked_at_s: u64,
    /// When it ends, Unix seconds: the token's `exp`, or for a subject the revocation time
    /// plus the longest token lifetime.
    pub expires_at_s: u64,
}

/// What a record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Token,
    Subject,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Subject => "subject",
        }
    }
}

impl Record {
    /// Checks a record read from anywhere (a request body, Redis, a message): one issuer and
    /// exactly one of token id and subject, each 1 to [`NAME_BYTES_MAX`] bytes, and an end
    /// after its start.
    pub fn validate(&self) -> Result<(Kind, &str), String> {
        let name = |what: &str, value: &str| {
            if value.is_empty() || value.len() > NAME_BYTES_MAX {
                Err(format!("{what} must be 1 to {NAME_BYTES_MAX} bytes"))
            } else {
                Ok(())
            }
        };
        name("issuer", &self.issuer)?;
        let (kind, value) = match (&self.token_id, &self.subject) {
            (Some(id), None) => (Kind::Token, id.as_str()),
            (None, Some(subject)) => (Kind::Subject, subject.as_str()),
            _ => return Err("exactly one of token_id and subject is required".to_owned()),
        };
        name(
            match kind {
                Kind::Token => "token_id",
                Kind::Subject => "subject",
            },
            value,
        )?;
        if self.expires_at_s <= self.revoked_at_s {
            return Err("expires_at_s must come after revoked_at_s".to_owned());
        }
        Ok((kind, value))
    }
}

/// What happened to a record offered to the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// New in the copy.
    New,
    /// Already held (its times merged in).
    Known,
    /// Already expired: not kept.
    Expired,
    /// The copy is full: not kept, and the copy no longer vouches for what it lacks.
    Full,
    /// Not a valid record.
    Invalid,
}

/// The local copy: per issuer, token ids with their end, and subjects with their revocation
/// time and end.
#[derive(Debug, Clone)]
pub struct Copy {
    tokens: BTreeMap<String, BTreeMap<String, Times>>,
    subjects: BTreeMap<String, BTreeMap<String, Times>>,
    len: usize,
    entries_max: usize,
    full: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    revoked_at_s: u64,
    expires_at_s: u64,
}

/// A revocation check's answer from the copy alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Revoked,
    /// Not listed, and the copy holds everything it was given.
    NotListed,
    /// Not listed, but the copy refused entries for want of room.
    Incomplete,
}

impl Copy {
    pub fn new(entries_max: usize) -> Self {
        Self {
            tokens: BTreeMap::new(),
            subjects: BTreeMap::new(),
            len: 0,
            entries_max,
            full: false,
        }
    }

    /// Revocations held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether an entry was refused for want of room since the last [`Copy::settle`].
    pub fn is_incomplete(&self) -> bool {
        self.full
    }

    /// Adds a record at Unix second `now_s`.
    pub fn add(&mut self, record: &Record, now_s: u64) -> Added {
        let Ok((kind, name)) = record.validate() else {
            return Added::Invalid;
        };
        if record.expires_at_s <= now_s {
            return Added::Expired;
        }
        let times = Times {
            revoked_at_s: record.revoked_at_s,
            expires_at_s: record.expires_at_s,
        };
        let map = match kind {
            Kind::Token => &mut self.tokens,
            Kind::Subject => &mut self.subjects,
        };
        if let Some(held) = map.get_mut(&record.issuer).and_then(|m| m.get_mut(name)) {
            // A later revocation of a subject covers more tokens; a later end lasts longer.
            held.revoked_at_s = held.revoked_at_s.max(times.revoked_at_s);
            held.expires_at_s = held.expires_at_s.max(times.expires_at_s);
            return Added::Known;
        }
        if self.len >= self.entries_max {
            self.full = true;
            return Added::Full;
        }
        map.entry(record.issuer.clone())
            .or_default()
            .insert(name.to_owned(), times);
        self.len += 1;
        Added::New
    }

    /// Whether the copy lists `token` as revoked at Unix second `now_s`.
    pub fn check(&self, token: &TokenFacts<'_>, now_s: u64) -> Found {
        let live = |t: &Times| t.expires_at_s > now_s;
        if let Some(id) = token.token_id
            && self
                .tokens
                .get(token.issuer)
                .and_then(|m| m.get(id))
                .is_some_and(live)
        {
            return Found::Revoked;
        }
        if let Some(t) = self
            .subjects
            .get(token.issuer)
            .and_then(|m| m.get(token.subject))
            .filter(|t| live(t))
        {
            // Issued at or before the revocation, or with no `iat` to say otherwise.
            if token.issued_at_s.is_none_or(|iat| iat <= t.revoked_at_s) {
                return Found::Revoked;
            }
        }
        if self.full {
            Found::Incomplete
        } else {
            Found::NotListed
        }
    }

    /// Drops the entries expired at `now_s`; returns how many.
    pub fn purge(&mut self, now_s: u64) -> usize {
        let mut dropped = 0;
        for map in [&mut self.tokens, &mut self.subjects] {
            map.retain(|_, names| {
                let before = names.len();
                names.retain(|_, t| t.expires_at_s > now_s);
                dropped += before - names.len();
                !names.is_empty()
            });
        }
        self.len -= dropped;
        dropped
    }

    /// After a full resync in which nothing was refused: the copy is complete again.
    pub fn settle(&mut self, refused_during_resync: bool) {
        self.full = refused_during_resync;
    }

    /// Up to `limit` records in order (tokens, then subjects; by issuer, then name), starting
    /// after `after`; with the position to continue from, if more follow.
    pub fn list(&self, after: Option<&Position>, limit: usize) -> (Vec<Record>, Option<Position>) {
        let mut out = Vec::new();
        for (kind, map) in [(Kind::Token, &self.tokens), (Kind::Subject, &self.subjects)] {
            for (issuer, names) in map {
                for (name, t) in names {
                    let here = (kind, issuer.as_str(), name.as_str());
                    if after.is_some_and(|a| here <= (a.kind, a.issuer.as_str(), a.name.as_str())) {
                        continue;
                    }
                    if out.len() >= limit {
                        let next = out.last().map(Position::of);
                        return (out, next);
                    }
                    out.push(Record {
                        issuer: issuer.clone(),
                        token_id: (kind == Kind::Token).then(|| name.clone()),
                        subject: (kind == Kind::Subject).then(|| name.clone()),
                        revoked_at_s: t.revoked_at_s,
                        expires_at_s: t.expires_at_s,
                    });
                }
            }
        }
        (out, None)
    }
}

/// Where a listing stopped: the last record given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub kind: Kind,
    pub issuer: String,
    pub name: String,
}

impl Position {
    fn of(record: &Record) -> Self {
        let (kind, name) = match (&record.token_id, &record.subject) {
            (Some(id), _) => (Kind::Token, id.clone()),
            (None, subject) => (Kind::Subject, subject.clone().unwrap_or_default()),
        };
        Self {
            kind,
            issuer: record.issuer.clone(),
            name,
        }
    }

    /// The opaque cursor of `GET /v1/revocations?after=`: kind, issuer and name, each in hex.
    pub fn encode(&self) -> String {
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let kind = match self.kind {
            Kind::Token => "t",
            Kind::Subject => "s",
        };
        format!("{kind}.{}.{}", hex(&self.issuer), hex(&self.name))
    }

    /// A cursor [`Position::encode`] wrote; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let unhex = |s: &str| -> Option<String> {
            if !s.len().is_multiple_of(2) || s.len() > 2 * NAME_BYTES_MAX {
                return None;
            }
            let bytes: Option<Vec<u8>> = (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect();
            String::from_utf8(bytes?).ok()
        };
        let mut parts = text.split('.');
        let kind = match parts.next()? {
            "t" => Kind::Token,
            "s" => Kind::Subject,
            _ => return None,
        };
        let issuer = unhex(parts.next()?)?;
        let name = unhex(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self { kind, issuer, name })
    }
}

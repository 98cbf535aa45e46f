//! What a record holds: the facts the pipeline and the registrar hand the auditor, each
//! service's rules (sampling, query, bodies), and the `switchyard.audit.v1` records built
//! from them.

use switchyard_core::identity::Identity;
use switchyard_proto::audit::{
    AuditRecord, Captured, Front, Principal, RegistryAction, RegistryAudit, RequestAudit,
    audit_record,
};

use super::redact::Redaction;
use crate::config::{AuditMode, AuditPolicy};

/// The record format written here.
pub const RECORD_VERSION: u32 = 1;

/// One service's audit rules, resolved from the config once.
#[derive(Debug, Clone)]
pub struct ServiceRules {
    pub mode: AuditMode,
    pub sample_successes: f64,
    pub query: bool,
    pub bodies: bool,
    pub redaction: Redaction,
}

impl ServiceRules {
    pub fn new(policy: &AuditPolicy) -> Self {
        Self {
            mode: policy.mode,
            sample_successes: policy.sample_successes,
            query: policy.query,
            bodies: policy.bodies,
            redaction: Redaction::new(policy),
        }
    }

    /// Whether a successful request with this id is recorded: the same id always gets the
    /// same answer, on every gateway, so a sample can be reproduced.
    pub fn keeps_success(&self, request_id: &str) -> bool {
        if self.sample_successes >= 1.0 {
            return true;
        }
        if self.sample_successes <= 0.0 {
            return false;
        }
        unit_interval(request_id) < self.sample_successes
    }
}

/// Maps a request id to [0, 1) with FNV-1a: cheap, stable across builds and platforms.
pub fn unit_interval(request_id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in request_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short inputs; fold the high half in before taking the
    // top 53 bits as a fraction.
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 32;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// What the pipeline learned of a request besides its context: filled in as it goes, read
/// when it finishes. Empty and untouched while auditing is off.
#[derive(Debug, Clone, Default)]
pub struct RequestNotes {
    /// The query string as the client sent it (kept only while auditing is on).
    pub query: Option<String>,
    /// The instance that answered.
    pub instance_id: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_capture: Option<Captured>,
    pub response_capture: Option<Captured>,
}

/// A finished request, as the pipeline hands it to the auditor.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    pub time_unix_ms: u64,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub front: Front,
    pub client_addr: std::net::SocketAddr,
    pub identity: Option<&'a Identity>,
    pub method: &'a str,
    pub service: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// The gateway's error code, when the answer is the gateway's refusal.
    pub error_code: Option<String>,
    pub latency_us: u64,
    pub notes: RequestNotes,
}

impl RequestFacts<'_> {
    /// Whether this is an error, always recorded.
    pub fn is_error(&self) -> bool {
        self.status >= 400 || self.error_code.is_some()
    }

    pub fn into_record(self, node: &str, rules: &ServiceRules) -> AuditRecord {
        let sample_rate = if self.is_error() {
            1.0
        } else {
            rules.sample_successes
        };
        let query = match (&self.notes.query, rules.query) {
            (Some(q), true) if !q.is_empty() => rules.redaction.query(q),
            _ => String::new(),
        };
        AuditRecord {
            version: RECORD_VERSION,
            time_unix_ms: self.time_unix_ms,
            gateway_node: node.to_owned(),
            kind: Some(audit_record::Kind::Request(RequestAudit {
                request_id: self.request_id.to_owned(),
                trace_id: self.trace_id.to_owned(),
                front: self.front as i32,
                client_addr: self.client_addr.to_string(),
                principal: principal(self.identity),
                method: self.method.to_owned(),
                service: self.service.to_owned(),
                path: self.path.to_owned(),
                query,
                status: u32::from(self.status),
                error_code: self.error_code.unwrap_or_default(),
                latency_us: self.latency_us,
                instance_id: self.notes.instance_id,
                bytes_in: self.notes.bytes_in,
                bytes_out: self.notes.bytes_out,
                sample_rate,
                request_capture: self.notes.request_capture,
                response_capture: self.notes.response_capture,
            })),
        }
    }
}

/// A registry change asked of this gateway (or made by it), applied or refused.
#[derive(Debug)]
pub struct RegistryFacts<'a> {
    pub time_unix_ms: u64,
    pub action: RegistryAction,
    pub service: &'a str,
    pub instance_id: &'a str,
    pub addr: &'a str,
    /// "rest", "grpc", "graphql" or "gateway".
    pub via: &'static str,
    pub client_addr: Option<std::net::SocketAddr>,
    pub identity: Option<&'a Identity>,
    /// The gateway's error code of a refusal.
    pub error_code: Option<String>,
    /// The applied change's stamp, `physical_ms.logical.node`.
    pub stamp: Option<String>,
    pub lease_ms: u64,
}

impl RegistryFacts<'_> {
    /// The Kafka key: `service/instance_id`.
    pub fn key(&self) -> String {
        format!("{}/{}", bounded(self.service), bounded(self.instance_id))
    }

    pub fn into_record(self, node: &str) -> AuditRecord {
        AuditRecord {
            version: RECORD_VERSION,
            time_unix_ms: self.time_unix_ms,
            gateway_node: node.to_owned(),
            kind: Some(audit_record::Kind::Registry(RegistryAudit {
                action: self.action as i32,
                service: bounded(self.service),
                instance_id: bounded(self.instance_id),
                addr: bounded(self.addr),
                via: self.via.to_owned(),
                client_addr: self.client_addr.map(|a| a.to_string()).unwrap_or_default(),
                principal: principal(self.identity),
                error_code: self.error_code.unwrap_or_default(),
                stamp: self.stamp.unwrap_or_default(),
                lease_ms: self.lease_ms,
            })),
        }
    }
}

/// Characters of a name or address a registry record keeps: a refused change may carry
/// anything the caller sent.
pub const NAME_CHARS_MAX: usize = 256;

fn bounded(text: &str) -> String {
    text.chars().take(NAME_CHARS_MAX).collect()
}

fn principal(identity: Option<&Identity>) -> Option<Principal> {
    identity.map(|i| Principal {
        subject: i.subject.clone(),
        credential_id: i.credential_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sample: f64) -> ServiceRules {
        ServiceRules::new(&AuditPolicy {
            sample_successes: sample,
            ..AuditPolicy::default()
        })
    }

    #[test]
    fn sampling_is_reproducible_and_near_the_fraction() {
        let r = rules(0.25);
        let ids: Vec<String> = (0..20_000u32).map(|i| format!("{i:032x}")).collect();
        let kept = ids.iter().filter(|id| r.keeps_success(id)).count();
        let again = ids.iter().filter(|id| r.keeps_success(id)).count();
        assert_eq!(kept, again);
        assert!((4_500..=5_500).contains(&kept), "kept {kept} of 20000");
        assert_eq!(
            ids.iter().filter(|id| rules(0.0).keeps_success(id)).count(),
            0
        );
        assert!(ids.iter().all(|id| rules(1.0).keeps_success(id)));
    }
}

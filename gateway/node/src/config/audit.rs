//! The `[audit]` section: whether requests and registry changes are audited, the auditor's
//! bounds, the audit topics, and per service (`[audit.default]`, `[[audit.services]]`) what a
//! request record keeps.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Auditing is off unless asked for.
    pub enabled: bool,
    /// The auditor's in-memory queue, in records; a record that does not fit is dropped
    /// (`queue_full`).
    pub queue_records_max: usize,
    /// The same queue, in encoded bytes.
    pub queue_bytes_max: usize,
    /// A larger encoded record is dropped (`too_large`).
    pub record_bytes_max: usize,
    /// Records handed to the sink at once.
    pub batch_records_max: usize,
    pub topic_requests: String,
    pub topic_registry: String,
    /// Partitions of the audit topics, when the gateway creates them.
    pub partitions: u32,
    /// How long the sink tries to deliver a record before it counts it `delivery_failed`.
    pub delivery_timeout_ms: u64,
    pub compression: AuditCompression,
    /// Whether lease renewals are audited (they are frequent).
    pub registry_renewals: bool,
    /// What is recorded of a service's requests, unless `[[audit.services]]` says otherwise.
    pub default: AuditPolicy,
    /// Per-service settings; keys not given take `[audit.default]`'s values.
    pub services: Vec<AuditServiceConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            queue_records_max: 10_000,
            queue_bytes_max: 16 * 1024 * 1024,
            record_bytes_max: 64 * 1024,
            batch_records_max: 500,
            topic_requests: "switchyard.audit.requests".to_owned(),
            topic_registry: "switchyard.audit.registry".to_owned(),
            partitions: 6,
            delivery_timeout_ms: 10_000,
            compression: AuditCompression::Lz4,
            registry_renewals: false,
            default: AuditPolicy::default(),
            services: Vec::new(),
        }
    }
}

/// The compression of the audit topics' batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditCompression {
    None,
    Gzip,
    Lz4,
}

impl AuditCompression {
    /// The name librdkafka knows it by (`compression.codec`).
    pub fn label(self) -> &'static str {
        match self {
            AuditCompression::None => "none",
            AuditCompression::Gzip => "gzip",
            AuditCompression::Lz4 => "lz4",
        }
    }
}

/// Whether a service is served while its requests cannot be audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditMode {
    /// Served; records that cannot be delivered are dropped and counted.
    BestEffort,
    /// Refused with 503 `audit_unavailable` while records cannot be delivered.
    Required,
}

/// What is recorded of one service's requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditPolicy {
    pub mode: AuditMode,
    /// Fraction of successful (status < 400) requests recorded; errors always are.
    pub sample_successes: f64,
    /// Whether the query string is kept (with `redact_query_params`' values replaced).
    pub query: bool,
    pub redact_query_params: Vec<String>,
    /// Whether request and answer headers and bodies are captured.
    pub bodies: bool,
    /// The most bytes of a body captured.
    pub body_bytes_max: usize,
    /// Headers whose values are replaced, besides [`ALWAYS_REDACTED_HEADERS`].
    pub redact_headers: Vec<String>,
    /// JSON object fields, at any depth, whose values are replaced.
    pub redact_json_fields: Vec<String>,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        Self {
            mode: AuditMode::BestEffort,
            sample_successes: 1.0,
            query: false,
            redact_query_params: Vec::new(),
            bodies: false,
            body_bytes_max: 4096,
            redact_headers: Vec::new(),
            redact_json_fields: Vec::new(),
        }
    }
}

/// One `[[audit.services]]` entry: the keys given replace `[audit.default]`'s.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditServiceConfig {
    pub service: String,
    pub mode: Option<AuditMode>,
    pub sample_successes: Option<f64>,
    pub query: Option<bool>,
    pub redact_query_params: Option<Vec<String>>,
    pub bodies: Option<bool>,
    pub body_bytes_max: Option<usize>,
    pub redact_headers: Option<Vec<String>>,
    pub redact_json_fields: Option<Vec<String>>,
}

/// Headers whose values are never recorded, whatever the config says.
pub const ALWAYS_REDACTED_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Upper bound of `body_bytes_max`.
pub const AUDIT_BODY_BYTES_LIMIT: usize = 65_536;

/// Most entries of each redaction list, and of `[[audit.services]]`.
pub const AUDIT_REDACTIONS_MAX: usize = 64;
pub const AUDIT_SERVICES_MAX: usize = 1_000;

/// Longest name in a redaction list, bytes.
const REDACTION_NAME_BYTES_MAX: usize = 256;

impl AuditServiceConfig {
    /// This service's settings: its own keys over `default`'s.
    pub fn over(&self, default: &AuditPolicy) -> AuditPolicy {
        let d = default.clone();
        AuditPolicy {
            mode: self.mode.unwrap_or(d.mode),
            sample_successes: self.sample_successes.unwrap_or(d.sample_successes),
            query: self.query.unwrap_or(d.query),
            redact_query_params: self
                .redact_query_params
                .clone()
                .unwrap_or(d.redact_query_params),
            bodies: self.bodies.unwrap_or(d.bodies),
            body_bytes_max: self.body_bytes_max.unwrap_or(d.body_bytes_max),
            redact_headers: self.redact_headers.clone().unwrap_or(d.redact_headers),
            redact_json_fields: self
                .redact_json_fields
                .clone()
                .unwrap_or(d.redact_json_fields),
        }
    }
}

impl AuditConfig {
    /// Every `[[audit.services]]` entry resolved against `[audit.default]`, by service.
    pub fn service_policies(&self) -> BTreeMap<String, AuditPolicy> {
        self.services
            .iter()
            .map(|s| (s.service.clone(), s.over(&self.default)))
            .collect()
    }

    /// Whether some service's requests are refused while they cannot be audited.
    pub fn any_required(&self) -> bool {
        self.default.mode == AuditMode::Required
            || self
                .services
                .iter()
                .any(|s| s.over(&self.default).mode == AuditMode::Required)
    }

    /// Checks the section's values. Returns the key at fault; a service's own error names
    /// the service in the message.
    pub fn validate(&self, registry_topic: &str) -> Result<(), (&'static str, String)> {
        let ranges: [(&'static str, u64, u64, u64); 6] = [
            (
                "audit.queue_records_max",
                self.queue_records_max as u64,
                1,
                1_000_000,
            ),
            (
                "audit.queue_bytes_max",
                self.queue_bytes_max as u64,
                1_024,
                1 << 30,
            ),
            (
                "audit.record_bytes_max",
                self.record_bytes_max as u64,
                1_024,
                1_000_000,
            ),
            (
                "audit.batch_records_max",
                self.batch_records_max as u64,
                1,
                10_000,
            ),
            ("audit.partitions", u64::from(self.partitions), 1, 1_000),
            (
                "audit.delivery_timeout_ms",
                self.delivery_timeout_ms,
                100,
                300_000,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err((key, format!("must lie between {min} and {max}")));
            }
        }
        if self.record_bytes_max > self.queue_bytes_max {
            return Err((
                "audit.record_bytes_max",
                "must be at most audit.queue_bytes_max".to_owned(),
            ));
        }
        if self.batch_records_max > self.queue_records_max {
            return Err((
                "audit.batch_records_max",
                "must be at most audit.queue_records_max".to_owned(),
            ));
        }
        for (key, topic) in [
            ("audit.topic_requests", &self.topic_requests),
            ("audit.topic_registry", &self.topic_registry),
        ] {
            if !topic_name_ok(topic) {
                return Err((
                    key,
                    "must be 1 to 249 ASCII letters, digits, '.', '_' or '-'".to_owned(),
                ));
            }
            if topic == registry_topic {
                return Err((
                    key,
                    "must differ from bus.kafka.topic: audit records never go on the registry topic"
                        .to_owned(),
                ));
            }
        }
        if self.topic_requests == self.topic_registry {
            return Err((
                "audit.topic_registry",
                "must differ from audit.topic_requests".to_owned(),
            ));
        }
        self.default.validate(None)?;
        self.validate_services()
    }

    fn validate_services(&self) -> Result<(), (&'static str, String)> {
        if self.services.len() > AUDIT_SERVICES_MAX {
            return Err((
                "audit.services",
                format!("at most {AUDIT_SERVICES_MAX} entries"),
            ));
        }
        let mut seen = BTreeSet::new();
        for s in &self.services {
            switchyard_core::names::validate_service(&s.service)
                .map_err(|e| ("audit.services", format!("service {:?}: {e}", s.service)))?;
            if !seen.insert(s.service.as_str()) {
                return Err((
                    "audit.services",
                    format!("service {:?} is named twice", s.service),
                ));
            }
            s.over(&self.default).validate(Some(&s.service))?;
        }
        Ok(())
    }
}

impl AuditPolicy {
    /// Checks one service's settings: `[audit.default]`'s when `service` is `None` (the
    /// error names `audit.default.<key>`), else a `[[audit.services]]` entry's (the error
    /// names `audit.services`, and the message the service and the key).
    fn validate(&self, service: Option<&str>) -> Result<(), (&'static str, String)> {
        let fail = |default_key: &'static str, message: String| match service {
            None => (default_key, message),
            Some(name) => {
                let field = default_key.trim_start_matches("audit.default.");
                (
                    "audit.services",
                    format!("service {name:?}: {field} {message}"),
                )
            }
        };
        if !(0.0..=1.0).contains(&self.sample_successes) {
            return Err(fail(
                "audit.default.sample_successes",
                format!("must lie between 0 and 1, not {}", self.sample_successes),
            ));
        }
        if self.body_bytes_max > AUDIT_BODY_BYTES_LIMIT {
            return Err(fail(
                "audit.default.body_bytes_max",
                format!("must be at most {AUDIT_BODY_BYTES_LIMIT}"),
            ));
        }
        let lists = [
            (
                "audit.default.redact_query_params",
                &self.redact_query_params,
            ),
            ("audit.default.redact_headers", &self.redact_headers),
            ("audit.default.redact_json_fields", &self.redact_json_fields),
        ];
        for (key, list) in lists {
            if list.len() > AUDIT_REDACTIONS_MAX {
                return Err(fail(
                    key,
                    format!("holds at most {AUDIT_REDACTIONS_MAX} names"),
                ));
            }
            if let Some(bad) = list
                .iter()
                .find(|n| n.is_empty() || n.len() > REDACTION_NAME_BYTES_MAX)
            {
                return Err(fail(
                    key,
                    format!("{bad:?}: names are 1 to {REDACTION_NAME_BYTES_MAX} bytes"),
                ));
            }
        }
        if let Some(bad) = self
            .redact_headers
            .iter()
            .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(fail(
                "audit.default.redact_headers",
                format!("{bad:?} is not a valid header name"),
            ));
        }
        if let Some(bad) = self.redact_query_params.iter().find(|p| {
            p.bytes()
                .any(|b| matches!(b, b'&' | b'=' | b'#' | b'?') || !b.is_ascii_graphic())
        }) {
            return Err(fail(
                "audit.default.redact_query_params",
                format!("{bad:?} is not a query parameter name (visible ASCII, without & = # ?)"),
            ));
        }
        Ok(())
    }
}

fn topic_name_ok(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

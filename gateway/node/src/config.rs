//! Configuration: a TOML file, then environment variables, then command-line flags, each
//! overriding the one before. Unknown keys are errors, every value is checked after parsing,
//! and every error names the key and where its value came from.
//!
//! Environment: `SWITCHYARD_<KEY>` for a top-level key and `SWITCHYARD_<SECTION>__<KEY>` for a
//! key in a section (`SWITCHYARD_UPSTREAM__TIMEOUT_MS=500`). `SWITCHYARD_CONFIG` names the file
//! and `SWITCHYARD_LOG` the log filter. A variable whose first part names no top-level key or
//! section (`SWITCHYARD_BIN`, say, set for some other tool) is not for the gateway and is left
//! alone; one that names a section but a wrong key (`SWITCHYARD_UPSTREAM__TIMOUT_MS`) is an error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod audit;
mod graphql;
mod jwt;
mod kafka;
mod rate_limit;
mod redis;
mod revocation;
#[cfg(test)]
mod tests;

pub use audit::{
    ALWAYS_REDACTED_HEADERS, AUDIT_BODY_BYTES_LIMIT, AUDIT_REDACTIONS_MAX, AUDIT_SERVICES_MAX,
    AuditCompression, AuditConfig, AuditMode, AuditPolicy, AuditServiceConfig,
};
pub use graphql::{CALLS_MAX_LIMIT, GraphqlConfig};
pub use jwt::{ALGORITHMS as JWT_ALGORITHMS, JwtConfig, JwtProvider, JwtRoute, RevocationFailMode};
pub use kafka::{
    KafkaSecurityProtocol, SASL_PASSWORD_BYTES_MAX, SASL_USERNAME_BYTES_MAX, SaslMechanism,
    read_sasl_password,
};
pub use rate_limit::{RateLimitClusterConfig, RateLimitKey, RateLimitMode, RateLimitRule, RatePer};
pub use redis::{KEY_PREFIX_BYTES_MAX, RedisConfig};
pub use revocation::{REVOCATION_ENTRIES_LIMIT, RevocationConfig};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This gateway's id in HLC stamps and bus events. Empty: a random id at each start.
    pub node_id: String,
    /// Seed for request ids and load balancing. Absent (the default): from the operating
    /// system at each start. A fixed seed repeats the same ids at every start (logged as a
    /// warning): for tests only.
    pub seed: Option<u64>,
    pub public: PublicConfig,
    pub control: ControlConfig,
    pub graphql: GraphqlConfig,
    /// JWT authentication on the public front (`[jwt]`, `[[jwt.providers]]`, `[[jwt.routes]]`).
    pub jwt: JwtConfig,
    pub upstream: UpstreamConfig,
    pub registry: RegistryConfig,
    pub bus: BusConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub runtime: RuntimeConfig,
    /// Rate limits on the public front, in the order they apply (`[[rate_limits]]`).
    pub rate_limits: Vec<RateLimitRule>,
    /// How cluster-mode rate limits count live gateways (`[rate_limit_cluster]`).
    pub rate_limit_cluster: RateLimitClusterConfig,
    pub redis: RedisConfig,
    pub revocation: RevocationConfig,
    /// Auditing of requests and registry changes (`[audit]`, `[audit.default]`,
    /// `[[audit.services]]`).
    pub audit: AuditConfig,
}

/// The async runtime the `switchyard` binary runs on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads; 0 means one per core the process may run on. In the per-core layout,
    /// the threads that serve the public front.
    pub worker_threads: usize,
    /// How those threads share the work.
    pub layout: RuntimeLayout,
}

/// How the `switchyard` binary's threads share the work (decision 0034).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeLayout {
    /// One multi-threaded runtime of `worker_threads` workers runs everything; a request may
    /// move between workers (work stealing).
    #[default]
    Shared,
    /// The public front is served by `worker_threads` threads, each a single-threaded runtime
    /// with its own listening socket on `public.listen` (`SO_REUSEPORT`: the kernel spreads
    /// new connections over them) and its own connection to each instance, so a request stays
    /// on one thread from its first byte to its answer. The control listener and the
    /// background tasks (replication, the bus, telemetry) run on two more workers.
    PerCore,
}

/// The most worker threads `runtime.worker_threads` may ask for.
pub const WORKER_THREADS_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicConfig {
    /// Where clients send REST requests (`/{service}/{path}`), GraphQL operations
    /// (`/graphql`), `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    pub body_bytes_max: usize,
    pub header_bytes_max: usize,
    /// Whether REST forwarding (`/{service}/{path}`) is served.
    pub rest: bool,
    /// Whether the GraphQL front (`/graphql`) is served; see `[graphql]`.
    pub graphql: bool,
    /// Connections open at once; past it a new connection is closed at once.
    pub connections_max: u32,
    /// How long an HTTP/1.1 request head may take to arrive; past it the connection is closed.
    pub header_read_timeout_ms: u64,
    /// How long a request body may take to arrive, from its head; past it the answer is 408
    /// `request_timeout`.
    pub body_read_timeout_ms: u64,
    /// How long a connection may stay open with no request in progress. Also the HTTP/2
    /// keep-alive ping interval.
    pub idle_timeout_ms: u64,
    /// Requests in progress at once on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 flow-control windows: request body bytes a client may send before the gateway
    /// reads them, per stream and per connection.
    pub http2_stream_window_bytes: u32,
    pub http2_connection_window_bytes: u32,
    /// Response bytes buffered per HTTP/2 stream for a client that does not read them.
    pub http2_send_buf_bytes: usize,
    /// TLS on this listener (`cert_file` set: TLS only, HTTP/2 and HTTP/1.1 by ALPN).
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Where instances register (REST `/v1/...` and the gRPC `Registration` service).
    pub listen: SocketAddr,
    /// Connections open at once; past it a new connection is closed at once.
    pub connections_max: u32,
    /// How long an HTTP/1.1 request head may take to arrive; past it the connection is closed.
    pub header_read_timeout_ms: u64,
    /// How long a request body may take to arrive, from its head; past it the answer is 408
    /// `request_timeout`.
    pub body_read_timeout_ms: u64,
    /// How long a connection may stay open with no request in progress. Also the HTTP/2
    /// keep-alive ping interval.
    pub idle_timeout_ms: u64,
    /// Requests in progress at once on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 flow-control windows: request body bytes a client may send before the gateway
    /// reads them, per stream and per connection.
    pub http2_stream_window_bytes: u32,
    pub http2_connection_window_bytes: u32,
    /// Response bytes buffered per HTTP/2 stream for a client that does not read them.
    pub http2_send_buf_bytes: usize,
    /// TLS on this listener; client certificates, with `client_ca_file`, are a credential
    /// (see `certificate_grants`).
    pub tls: TlsConfig,
    /// What a verified client certificate may do, by one of its subject alternative names
    /// (DNS or URI): at most 1024 grants.
    pub certificate_grants: Vec<CertificateGrant>,
    /// `"required"` (the default): every registry change, and every read unless `reads` is
    /// `"open"`, needs a credential. `"none"`: anyone who reaches the listener may change
    /// and read anything; a warning is logged at every start.
    pub auth: ControlAuth,
    /// The public keys that verify credentials: a PEM file of one or more `PUBLIC KEY`
    /// blocks (Ed25519, P-256 or RSA). Read at start, and again whenever it changes.
    pub jwt_keys_file: PathBuf,
    /// How far past its expiry, or before its `nbf`, a credential is still taken: the clock
    /// skew allowed between the issuer and this gateway.
    pub jwt_leeway_ms: u64,
    /// How often the key file is checked for changes.
    pub keys_reload_interval_ms: u64,
    /// `"credential"` (the default): the registry views, `/metrics` and GraphQL queries on
    /// this listener need a credential with `read`. `"open"`: anyone who reaches it may read.
    pub reads: ControlReads,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlAuth {
    #[default]
    Required,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlReads {
    #[default]
    Credential,
    Open,
}

/// TLS on a listener: the certificate chain and key (PEM), re-read every
/// `reload_interval_ms`; with `client_ca_file`, client certificates signed by that CA are
/// verified (and asked for, not required).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: PathBuf,
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            reload_interval_ms: 5_000,
        }
    }
}

impl TlsConfig {
    fn validate(&self, listener: &'static str) -> Result<(), (&'static str, String)> {
        let (cert, key) = (
            self.cert_file.as_os_str().is_empty(),
            self.key_file.as_os_str().is_empty(),
        );
        let keys = |name: &str| -> &'static str {
            match (listener, name) {
                ("public", "cert") => "public.tls.cert_file",
                ("public", "ca") => "public.tls.client_ca_file",
                ("public", _) => "public.tls.reload_interval_ms",
                (_, "cert") => "control.tls.cert_file",
                (_, "ca") => "control.tls.client_ca_file",
                _ => "control.tls.reload_interval_ms",
            }
        };
        if cert != key {
            return Err((
                keys("cert"),
                "cert_file and key_file are set together or not at all".to_owned(),
            ));
        }
        if cert && !self.client_ca_file.as_os_str().is_empty() {
            return Err((
                keys("ca"),
                "client certificates need TLS: set cert_file and key_file too".to_owned(),
            ));
        }
        if !(100..=3_600_000).contains(&self.reload_interval_ms) {
            return Err((
                keys("reload"),
                "must lie between 100 and 3600000".to_owned(),
            ));
        }
        Ok(())
    }
}

/// What a client certificate may do on the control listener, by one of its subject
/// alternative names: as a bearer credential's `services` and `read` claims.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateGrant {
    /// A DNS name or URI (`spiffe://example.org/ns/orders/sa/orders`) of the certificate.
    pub san: String,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub read: bool,
}

/// Grants `control.certificate_grants` may hold.
pub const CERTIFICATE_GRANTS_MAX: usize = 1024;

/// The range `control.jwt_leeway_ms` may take: at most five minutes.
pub const JWT_LEEWAY_MS_MAX: u64 = 300_000;

/// The bounds on one listener's connections, as `[public]` and `[control]` state them (see
/// their fields for what each means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub connections_max: u32,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub http2_max_concurrent_streams: u32,
    pub http2_stream_window_bytes: u32,
    pub http2_connection_window_bytes: u32,
    pub http2_send_buf_bytes: usize,
}

/// The largest HTTP/2 flow-control window (RFC 9113 §6.9.1) and the smallest it may be set to
/// here (the protocol's initial window).
const HTTP2_WINDOW_BYTES_RANGE: std::ops::RangeInclusive<u32> = 65_535..=(1 << 31) - 1;

macro_rules! listener_limits {
    ($section:ident) => {
        impl $section {
            pub fn limits(&self) -> ListenerLimits {
                ListenerLimits {
                    connections_max: self.connections_max,
                    header_read_timeout_ms: self.header_read_timeout_ms,
                    body_read_timeout_ms: self.body_read_timeout_ms,
                    idle_timeout_ms: self.idle_timeout_ms,
                    http2_max_concurrent_streams: self.http2_max_concurrent_streams,
                    http2_stream_window_bytes: self.http2_stream_window_bytes,
                    http2_connection_window_bytes: self.http2_connection_window_bytes,
                    http2_send_buf_bytes: self.http2_send_buf_bytes,
                }
            }
        }
    };
}

listener_limits!(PublicConfig);
listener_limits!(ControlConfig);

macro_rules! validate_limits {
    ($limits:expr, $section:literal) => {{
        let l: ListenerLimits = $limits;
        let positive = [
            (
                concat!($section, ".connections_max"),
                u64::from(l.connections_max),
            ),
            (
                concat!($section, ".header_read_timeout_ms"),
                l.header_read_timeout_ms,
            ),
            (
                concat!($section, ".body_read_timeout_ms"),
                l.body_read_timeout_ms,
            ),
            (concat!($section, ".idle_timeout_ms"), l.idle_timeout_ms),
            (
                concat!($section, ".http2_max_concurrent_streams"),
                u64::from(l.http2_max_concurrent_streams),
            ),
            (
                concat!($section, ".http2_send_buf_bytes"),
                l.http2_send_buf_bytes as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key, "must be greater than 0".to_owned()));
            }
        }
        // The semaphore that counts connections holds at most this many permits.
        if l.connections_max > CONNECTIONS_MAX_LIMIT {
            return Err((
                concat!($section, ".connections_max"),
                format!("must be at most {CONNECTIONS_MAX_LIMIT}"),
            ));
        }
        for (key, value) in [
            (
                concat!($section, ".http2_stream_window_bytes"),
                l.http2_stream_window_bytes,
            ),
            (
                concat!($section, ".http2_connection_window_bytes"),
                l.http2_connection_window_bytes,
            ),
        ] {
            if !HTTP2_WINDOW_BYTES_RANGE.contains(&value) {
                return Err((
                    key,
                    format!(
                        "must lie between {} and {}",
                        HTTP2_WINDOW_BYTES_RANGE.start(),
                        HTTP2_WINDOW_BYTES_RANGE.end()
                    ),
                ));
            }
        }
    }};
}

/// The largest `upstream.in_flight_per_instance_max`: the calls one HTTP/2 connection to an
/// instance holds open or waiting, at most (`forwarding::unary`).
pub const IN_FLIGHT_PER_INSTANCE_MAX: u32 = 16 * 1024;

/// The longest `upstream.reset_stream_hold_ms`: an hour, longer than any simulated run takes
/// on the machine's clock.
pub const RESET_STREAM_HOLD_MS_MAX: u64 = 3_600_000;

/// The most connections one listener may be allowed.
pub const CONNECTIONS_MAX_LIMIT: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// How long the gateway waits for a service's answer, all attempts included.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Attempts per request, the first included; only connect failures are retried.
    pub attempts_max: u32,
    pub response_body_bytes_max: usize,
    /// Consecutive connect failures that eject an instance from balancing for a while.
    pub failures_to_eject: u32,
    pub ejection_base_ms: u64,
    pub ejection_max_ms: u64,
    /// When every live instance of a service has failed to connect, with no success, for this
    /// long, this gateway evicts them all cluster-wide. Each further eviction of an instance
    /// without a success between doubles the wait, up to `evict_after_max_ms`. 0 turns
    /// eviction off (leases still expire).
    pub evict_after_ms: u64,
    pub evict_after_max_ms: u64,
    /// Consecutive timeouts, with no answer between, that eject an instance from balancing
    /// (a hung instance); 0: timeouts never eject. Timeouts never count towards eviction.
    pub timeouts_to_eject: u32,
    /// Requests in flight from this gateway to one instance, at most: an instance at the
    /// bound is not chosen, and when every live instance is, the request is refused with
    /// 503 `overloaded`. At most 16,384 ([`IN_FLIGHT_PER_INSTANCE_MAX`]).
    pub in_flight_per_instance_max: u32,
    /// How often the gateway sends an HTTP/2 ping on a connection to an instance while calls
    /// are open on it; 0: no pings.
    pub keepalive_interval_ms: u64,
    /// How long to wait for the ping's acknowledgement before closing the connection (the
    /// calls on it fail as `upstream_reset`).
    pub keepalive_timeout_ms: u64,
    /// How long a stream that the gateway's own tonic clients (a demo's or a simulation's
    /// registrations to a control listener) cancelled stays remembered by h2, so the peer's
    /// late frames for it are dropped quietly; at most 50 per connection. h2 measures this on
    /// the machine's clock, which a simulation cannot move: the simulation sets the bound, an
    /// hour, so only the count decides (decision 0025). Calls to instances do not use it:
    /// their client drops late frames on any stream it closed, with nothing to remember
    /// (decision 0033).
    pub reset_stream_hold_ms: u64,
    /// Networks, each optionally with a port or port range, whose instance addresses the
    /// address policy admits although they are loopback, link-local, unspecified,
    /// multicast, broadcast or (with a port named) this gateway's own listeners:
    /// `"127.0.0.0/8"`, `"10.0.0.5:8080"`, `"[::1]:9000-9100"`. Empty: none admitted.
    pub allow_addresses: Vec<String>,
    /// The most proxies (entries in `Via`) a request may have passed before it arrives; a
    /// request past it, or one that passed this gateway already, is refused with 508.
    pub hops_max: u32,
    /// TLS to instances registered as `https://host:port` (plain h2c to `http://` ones).
    pub tls: UpstreamTlsConfig,
}

/// TLS to instances: the CA bundle that verifies their certificates, and a client certificate
/// for services that require one (mTLS). Read at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    /// PEM CA certificates trusted for instances; required before `https://` instances are
    /// taken.
    pub ca_file: PathBuf,
    /// The gateway's client certificate chain and key (PEM), presented to instances that
    /// ask for one.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The most entries `upstream.allow_addresses` may hold.
pub const ALLOW_ADDRESSES_MAX: usize = 256;
/// The largest `upstream.hops_max`.
pub const HOPS_MAX_LIMIT: u32 = 255;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Lease given to an instance that asks for none.
    pub lease_default_ms: u64,
    pub lease_min_ms: u64,
    pub lease_max_ms: u64,
    /// How long a tombstone or expired entry stamped by another gateway is kept before this
    /// one deletes it from the bus, in case the gateway that stamped it (which does so after
    /// `lease_max_ms + clock_drift_max_ms`) is gone for good. At least that horizon.
    pub tombstone_retention_ms: u64,
    /// How far ahead of this node's wall clock a bus record's stamp may be. A record further
    /// ahead is quarantined: not observed by the clock, not applied, counted and logged.
    pub clock_drift_max_ms: u64,
    /// Services the registry may hold; a change naming one more is refused (429
    /// `quota_exceeded`).
    pub services_max: usize,
    /// Entries (live, expired or removed) one service may hold; a change adding one more is
    /// refused (429 `quota_exceeded`). Changes to entries already held always pass.
    pub instances_per_service_max: usize,
    /// Entries the whole registry may hold, whatever their service.
    pub entries_max: usize,
    /// How often the node does its upkeep: delete markers for entries no longer needed, the
    /// metric series of removed services, idle upstream channels.
    pub housekeeping_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    pub kind: BusKind,
    /// Instances whose latest change may wait for the bus at once; past that, changes are
    /// refused with `bus_unavailable`.
    pub outbox_events_max: usize,
    /// How long a registration waits for the bus to acknowledge its event before it is
    /// answered as accepted but not yet published (HTTP 202, `published: false`).
    pub publish_wait_ms: u64,
    /// Used when `kind = "kafka"`.
    pub kafka: KafkaConfig,
}

/// The Kafka bus: one single-partition compacted topic. The client settings favour latency:
/// the registry's volume is small, and a registration should reach every gateway quickly.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port`.
    pub brokers: String,
    pub topic: String,
    /// Create the topic (compacted, one partition) if it does not exist.
    pub create_topic: bool,
    /// Replication factor for a topic this gateway creates; use 3 on a real cluster.
    pub replication_factor: i32,
    /// `delete.retention.ms` for a topic this gateway creates: how long the broker keeps
    /// records it compacted away from a reader that is behind.
    pub delete_retention_ms: u64,
    /// Producer `linger.ms`: how long a send waits to batch with others.
    pub linger_ms: u64,
    /// Consumer `fetch.wait.max.ms`: how long the broker holds a fetch that found nothing.
    pub fetch_wait_max_ms: u64,
    /// Producer `message.timeout.ms`: how long a send may take, retries included; after that
    /// the outbox retries it.
    pub message_timeout_ms: u64,
    /// Metadata and watermark requests, topic creation.
    pub request_timeout_ms: u64,
    /// `"plaintext"` (the default), `"ssl"`, `"sasl_plaintext"` or `"sasl_ssl"`; see
    /// [`KafkaSecurityProtocol`] and docs/security.md.
    pub security_protocol: KafkaSecurityProtocol,
    /// `"SCRAM-SHA-512"` (the default) or `"SCRAM-SHA-256"`, with a SASL protocol.
    pub sasl_mechanism: SaslMechanism,
    /// The SASL user, required with a SASL protocol.
    pub sasl_username: String,
    /// A file holding the SASL password (one line), required with a SASL protocol. Read when
    /// the clients are made; the password is never a config value.
    pub sasl_password_file: PathBuf,
    /// PEM certificates of the CAs that sign the brokers' certificates; empty: the system's
    /// trust store (OpenSSL's default paths).
    pub ssl_ca_file: PathBuf,
    /// PEM client certificate and its unencrypted private key, for brokers that authenticate
    /// clients by certificate (mutual TLS); both or neither.
    pub ssl_certificate_file: PathBuf,
    pub ssl_key_file: PathBuf,
    /// Whether a broker's certificate must name the host the client dialled (librdkafka's
    /// `ssl.endpoint.identification.algorithm=https`). Turning it off lets any certificate
    /// the CA signed stand for any broker, and is warned about at every start.
    pub ssl_endpoint_identification: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "switchyard.registry".to_owned(),
            create_topic: true,
            replication_factor: 1,
            delete_retention_ms: 24 * 3_600_000,
            linger_ms: 1,
            fetch_wait_max_ms: 10,
            message_timeout_ms: 5_000,
            request_timeout_ms: 5_000,
            security_protocol: KafkaSecurityProtocol::Plaintext,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: String::new(),
            sasl_password_file: PathBuf::new(),
            ssl_ca_file: PathBuf::new(),
            ssl_certificate_file: PathBuf::new(),
            ssl_key_file: PathBuf::new(),
            ssl_endpoint_identification: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process: one gateway, or several nodes inside one process (tests, simulation).
    Memory,
    /// Apache Kafka: a cluster of gateway processes (see `[bus.kafka]`).
    Kafka,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long the whole shutdown may take after the signal: in-flight requests finishing,
    /// then the outbox publishing what is still queued for the bus.
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `switchyard=debug,info`. `SWITCHYARD_LOG` overrides.
    pub level: String,
    /// One `info` line per request (method, path, status, time, request id, trace id). Off by
    /// default: errors are logged either way, and at high rates the lines cost more than the
    /// metrics that count the same requests.
    pub access: bool,
    /// Log lines held for the writer thread while stderr's reader falls behind; past this,
    /// lines are dropped and counted (`switchyard_log_lines_dropped_total`) rather than
    /// blocking the workers that log them.
    pub buffered_lines_max: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where to send request spans over OTLP/HTTP with JSON encoding, e.g.
    /// `http://127.0.0.1:4318/v1/traces`. Empty: no export.
    pub otlp_traces_url: String,
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
    /// Spans waiting for export; past it new spans are dropped and counted.
    pub spans_queued_max: usize,
    /// How long a batch may fill before it is sent.
    pub export_interval_ms: u64,
    /// Bound on one export request.
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_traces_url: String::new(),
            service_name: "switchyard".to_owned(),
            spans_queued_max: 4096,
            export_interval_ms: 1_000,
            export_timeout_ms: 5_000,
        }
    }
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("telemetry.spans_queued_max", self.spans_queued_max as u64),
            ("telemetry.export_interval_ms", self.export_interval_ms),
            ("telemetry.export_timeout_ms", self.export_timeout_ms),
        ] {
            if value == 0 {
                return Err((key, "must be greater than 0".to_owned()));
            }
        }
        if self.otlp_traces_url.is_empty() {
            return Ok(());
        }
        match self.otlp_traces_url.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => Ok(()),
            Ok(uri) if uri.scheme_str() == Some("https") => Err((
                "telemetry.otlp_traces_url",
                "https is not supported: send to a collector on the same host or network over http"
                    .to_owned(),
            )),
            _ => Err((
                "telemetry.otlp_traces_url",
                format!("{:?} is not an http:// URL", self.otlp_traces_url),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for PublicConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_bytes_max: 1024 * 1024,
            header_bytes_max: 64 * 1024,
            rest: true,
            graphql: true,
            connections_max: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            http2_max_concurrent_streams: 100,
            http2_stream_window_bytes: 256 * 1024,
            http2_connection_window_bytes: 1024 * 1024,
            http2_send_buf_bytes: 400 * 1024,
            tls: TlsConfig::default(),
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            // Instances and operators, not the public: fewer connections, tighter timeouts.
            connections_max: 1_000,
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            http2_max_concurrent_streams: 100,
            http2_stream_window_bytes: 64 * 1024,
            http2_connection_window_bytes: 256 * 1024,
            http2_send_buf_bytes: 64 * 1024,
            tls: TlsConfig::default(),
            certificate_grants: Vec::new(),
            auth: ControlAuth::Required,
            jwt_keys_file: PathBuf::new(),
            jwt_leeway_ms: 30_000,
            keys_reload_interval_ms: 5_000,
            reads: ControlReads::Credential,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 15_000,
            connect_timeout_ms: 1_000,
            attempts_max: 3,
            response_body_bytes_max: 8 * 1024 * 1024,
            failures_to_eject: 1,
            ejection_base_ms: 1_000,
            ejection_max_ms: 30_000,
            evict_after_ms: 5_000,
            evict_after_max_ms: 300_000,
            timeouts_to_eject: 3,
            in_flight_per_instance_max: 1_024,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 5_000,
            reset_stream_hold_ms: 1_000,
            allow_addresses: Vec::new(),
            hops_max: 8,
            tls: UpstreamTlsConfig::default(),
        }
    }
}

/// NTP keeps clocks within milliseconds; a minute leaves room for a badly synchronised host
/// while bounding how far one record can stretch every lease.
pub const CLOCK_DRIFT_MAX_MS_DEFAULT: u64 = 60_000;
/// The range `registry.clock_drift_max_ms` may take: at least a second, since the bound must
/// hold the skew between healthy gateways, and at most an hour.
pub const CLOCK_DRIFT_MAX_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            lease_default_ms: 30_000,
            lease_min_ms: 1_000,
            lease_max_ms: 3_600_000,
            tombstone_retention_ms: 24 * 3_600_000,
            clock_drift_max_ms: CLOCK_DRIFT_MAX_MS_DEFAULT,
            services_max: 1_000,
            instances_per_service_max: 1_000,
            entries_max: 100_000,
            housekeeping_interval_ms: 10_000,
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::Memory,
            outbox_events_max: 10_000,
            publish_wait_ms: 2_000,
            kafka: KafkaConfig::default(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 10_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
            access: false,
            buffered_lines_max: 16_384,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}` (from {origin}): {message}")]
    Key {
        key: String,
        origin: String,
        message: String,
    },
}

/// One override of a config key, with where it came from for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Dotted key, e.g. `upstream.timeout_ms`.
    pub key: String,
    pub value: String,
    /// E.g. `env SWITCHYARD_NODE_ID` or `flag --set`.
    pub origin: String,
}

/// Top-level keys and sections of [`Config`], for telling the gateway's environment variables
/// from other tools' that share the prefix.
const TOP_LEVEL_KEYS: [&str; 17] = [
    "node_id",
    "seed",
    "public",
    "control",
    "graphql",
    "upstream",
    "registry",
    "bus",
    "shutdown",
    "log",
    "telemetry",
    "runtime",
    "rate_limits",
    "rate_limit_cluster",
    "redis",
    "revocation",
    "audit",
];

/// The overrides found in the environment (see the module docs for the naming rule).
pub fn env_overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let mut out: Vec<Override> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix("SWITCHYARD_")?;
            if rest == "CONFIG" || rest == "LOG" || rest.is_empty() {
                return None;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let top = key.split('.').next().unwrap_or_default();
            if !TOP_LEVEL_KEYS.contains(&top) {
                return None;
            }
            Some(Override {
                key,
                value,
                origin: format!("env {name}"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Parses `key=value` as given to `--set`.
pub fn parse_set_flag(arg: &str) -> Result<Override, String> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("--set {arg:?}: expected key=value"))?;
    Ok(Override {
        key: key.trim().to_owned(),
        value: value.to_owned(),
        origin: "flag --set".to_owned(),
    })
}

impl Config {
    /// Loads the file (if any), applies the overrides in order, and validates.
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Self, ConfigError> {
        let (text, origin) = match file {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?,
                path.display().to_string(),
            ),
            None => (String::new(), "defaults".to_owned()),
        };
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: file.map(Path::to_owned).unwrap_or_default(),
                    message: e.message().to_owned(),
                })?;
        let mut origins = BTreeMap::new();
        for o in overrides {
            set_dotted(&mut table, o)?;
            origins.insert(o.key.clone(), o.origin.clone());
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let origin = origins.get(&key).cloned().unwrap_or_else(|| origin.clone());
                ConfigError::Key {
                    key,
                    origin,
                    message: e.into_inner().to_string(),
                }
            })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Key {
                origin: origins.get(key).cloned().unwrap_or_else(|| origin.clone()),
                key: key.to_owned(),
                message,
            })?;
        Ok(config)
    }

    /// Checks relations between values that types cannot express. Returns the key at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("public.body_bytes_max", self.public.body_bytes_max as u64),
            (
                "public.header_bytes_max",
                self.public.header_bytes_max as u64,
            ),
            ("upstream.timeout_ms", self.upstream.timeout_ms),
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            (
                "upstream.attempts_max",
                u64::from(self.upstream.attempts_max),
            ),
            (
                "upstream.response_body_bytes_max",
                self.upstream.response_body_bytes_max as u64,
            ),
            (
                "upstream.failures_to_eject",
                u64::from(self.upstream.failures_to_eject),
            ),
            ("upstream.ejection_base_ms", self.upstream.ejection_base_ms),
            (
                "upstream.in_flight_per_instance_max",
                u64::from(self.upstream.in_flight_per_instance_max),
            ),
            ("registry.lease_min_ms", self.registry.lease_min_ms),
            ("bus.outbox_events_max", self.bus.outbox_events_max as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key, "must be greater than 0".to_owned()));
            }
        }
        if self.runtime.worker_threads > WORKER_THREADS_MAX {
            return Err((
                "runtime.worker_threads",
                format!("must be at most {WORKER_THREADS_MAX}"),
            ));
        }
        if self.upstream.attempts_max > 10 {
            return Err(("upstream.attempts_max", "must be at most 10".to_owned()));
        }
        if self.upstream.keepalive_interval_ms != 0 && self.upstream.keepalive_timeout_ms == 0 {
            return Err((
                "upstream.keepalive_timeout_ms",
                "must be greater than 0 while upstream.keepalive_interval_ms is".to_owned(),
            ));
        }
        if self.upstream.in_flight_per_instance_max > IN_FLIGHT_PER_INSTANCE_MAX {
            return Err((
                "upstream.in_flight_per_instance_max",
                format!("must be at most {IN_FLIGHT_PER_INSTANCE_MAX}"),
            ));
        }
        if self.upstream.reset_stream_hold_ms > RESET_STREAM_HOLD_MS_MAX {
            return Err((
                "upstream.reset_stream_hold_ms",
                format!("must be at most {RESET_STREAM_HOLD_MS_MAX}"),
            ));
        }
        if self.upstream.evict_after_max_ms < self.upstream.evict_after_ms {
            return Err((
                "upstream.evict_after_max_ms",
                "must be at least upstream.evict_after_ms".to_owned(),
            ));
        }
        if self.upstream.ejection_max_ms < self.upstream.ejection_base_ms {
            return Err((
                "upstream.ejection_max_ms",
                "must be at least upstream.ejection_base_ms".to_owned(),
            ));
        }
        self.upstream.validate_address_policy()?;
        self.upstream.validate_tls()?;
        let r = &self.registry;
        if r.lease_max_ms < r.lease_min_ms {
            return Err((
                "registry.lease_max_ms",
                "must be at least registry.lease_min_ms".to_owned(),
            ));
        }
        if !(r.lease_min_ms..=r.lease_max_ms).contains(&r.lease_default_ms) {
            return Err((
                "registry.lease_default_ms",
                format!(
                    "must lie between lease_min_ms ({}) and lease_max_ms ({})",
                    r.lease_min_ms, r.lease_max_ms
                ),
            ));
        }
        if r.tombstone_retention_ms < r.lease_max_ms.saturating_add(r.clock_drift_max_ms) {
            return Err((
                "registry.tombstone_retention_ms",
                "must be at least registry.lease_max_ms plus registry.clock_drift_max_ms"
                    .to_owned(),
            ));
        }
        if self.log.buffered_lines_max == 0 {
            return Err(("log.buffered_lines_max", "must be at least 1".to_owned()));
        }
        for (key, value) in [
            ("registry.services_max", r.services_max),
            (
                "registry.instances_per_service_max",
                r.instances_per_service_max,
            ),
            ("registry.entries_max", r.entries_max),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".to_owned()));
            }
        }
        if !(100..=600_000).contains(&r.housekeeping_interval_ms) {
            return Err((
                "registry.housekeeping_interval_ms",
                "must lie between 100 and 600000".to_owned(),
            ));
        }
        if !CLOCK_DRIFT_MAX_MS_RANGE.contains(&r.clock_drift_max_ms) {
            return Err((
                "registry.clock_drift_max_ms",
                format!(
                    "must lie between {} and {}",
                    CLOCK_DRIFT_MAX_MS_RANGE.start(),
                    CLOCK_DRIFT_MAX_MS_RANGE.end()
                ),
            ));
        }
        if self.bus.kind == BusKind::Kafka {
            self.bus.kafka.validate()?;
        }
        if self.public.listen == self.control.listen && self.public.listen.port() != 0 {
            return Err((
                "control.listen",
                "must differ from public.listen".to_owned(),
            ));
        }
        validate_limits!(self.public.limits(), "public");
        validate_limits!(self.control.limits(), "control");
        self.public.tls.validate("public")?;
        if !self.public.tls.client_ca_file.as_os_str().is_empty() {
            return Err((
                "public.tls.client_ca_file",
                "client certificates are a credential of the control listener only".to_owned(),
            ));
        }
        self.control.tls.validate("control")?;
        if self.control.certificate_grants.len() > CERTIFICATE_GRANTS_MAX {
            return Err((
                "control.certificate_grants",
                format!("at most {CERTIFICATE_GRANTS_MAX} grants"),
            ));
        }
        if !self.control.certificate_grants.is_empty()
            && self.control.tls.client_ca_file.as_os_str().is_empty()
        {
            return Err((
                "control.certificate_grants",
                "grants need client certificates: set control.tls.client_ca_file".to_owned(),
            ));
        }
        if self.control.jwt_leeway_ms > JWT_LEEWAY_MS_MAX {
            return Err((
                "control.jwt_leeway_ms",
                format!("must be at most {JWT_LEEWAY_MS_MAX}"),
            ));
        }
        if !(100..=3_600_000).contains(&self.control.keys_reload_interval_ms) {
            return Err((
                "control.keys_reload_interval_ms",
                "must lie between 100 and 3600000".to_owned(),
            ));
        }
        self.graphql.validate()?;
        self.jwt.validate()?;
        // A token with an unknown kid may wait for a fetch in flight and then make its own:
        // both must fit in the request's deadline.
        if let Some(p) = self
            .jwt
            .providers
            .iter()
            .find(|p| p.fetch_timeout_ms.saturating_mul(2) >= self.upstream.timeout_ms)
        {
            return Err((
                "jwt.providers",
                format!(
                    "provider {:?}: twice fetch_timeout_ms ({} ms) must be less than upstream.timeout_ms ({} ms), the deadline a request's policies share",
                    p.name, p.fetch_timeout_ms, self.upstream.timeout_ms
                ),
            ));
        }
        self.telemetry.validate()?;
        rate_limit::validate(&self.rate_limits, &self.rate_limit_cluster)?;
        self.redis.validate()?;
        self.revocation.validate()?;
        self.audit.validate(&self.bus.kafka.topic)?;
        if self.node_id.len() > 64
            || self
                .node_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err((
                "node_id",
                "must be at most 64 characters, without spaces".to_owned(),
            ));
        }
        Ok(())
    }
}

impl UpstreamConfig {
    fn validate_tls(&self) -> Result<(), (&'static str, String)> {
        let t = &self.tls;
        if t.cert_file.as_os_str().is_empty() != t.key_file.as_os_str().is_empty() {
            return Err((
                "upstream.tls.cert_file",
                "cert_file and key_file are set together or not at all".to_owned(),
            ));
        }
        if !t.cert_file.as_os_str().is_empty() && t.ca_file.as_os_str().is_empty() {
            return Err((
                "upstream.tls.ca_file",
                "a client certificate is for TLS to instances, which needs ca_file".to_owned(),
            ));
        }
        Ok(())
    }

    fn validate_address_policy(&self) -> Result<(), (&'static str, String)> {
        if self.allow_addresses.len() > ALLOW_ADDRESSES_MAX {
            return Err((
                "upstream.allow_addresses",
                format!("may hold at most {ALLOW_ADDRESSES_MAX} entries"),
            ));
        }
        for rule in &self.allow_addresses {
            switchyard_core::address::AllowRule::parse(rule)
                .map_err(|e| ("upstream.allow_addresses", e))?;
        }
        if !(1..=HOPS_MAX_LIMIT).contains(&self.hops_max) {
            return Err((
                "upstream.hops_max",
                format!("must lie between 1 and {HOPS_MAX_LIMIT}"),
            ));
        }
        Ok(())
    }
}

impl KafkaConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.brokers.trim().is_empty() {
            return Err((
                "bus.kafka.brokers",
                "is required when bus.kind is \"kafka\" (e.g. \"127.0.0.1:9092\")".to_owned(),
            ));
        }
        let topic_ok = !self.topic.is_empty()
            && self.topic.len() <= 249
            && self
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !topic_ok {
            return Err((
                "bus.kafka.topic",
                "must be 1 to 249 ASCII letters, digits, '.', '_' or '-'".to_owned(),
            ));
        }
        if self.replication_factor < 1 {
            return Err((
                "bus.kafka.replication_factor",
                "must be at least 1".to_owned(),
            ));
        }
        if self.message_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err((
                "bus.kafka.message_timeout_ms",
                "timeouts must be greater than 0".to_owned(),
            ));
        }
        self.validate_security()
    }
}

/// Sets `key` (dotted) in the table. The value is read as a TOML value if it parses as one
/// (numbers, booleans), otherwise as a string.
fn set_dotted(table: &mut toml::Table, o: &Override) -> Result<(), ConfigError> {
    let bad = |message: String| ConfigError::Key {
        key: o.key.clone(),
        origin: o.origin.clone(),
        message,
    };
    let parts: Vec<&str> = o.key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("is not a valid key".to_owned()));
    }
    let value = format!("v = {}", o.value)
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(o.value.clone()));
    let (last, sections) = parts
        .split_last()
        .ok_or_else(|| bad("is empty".to_owned()))?;
    let mut cursor = table;
    for section in sections {
        cursor = cursor
            .entry((*section).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| bad(format!("`{section}` is not a section")))?;
    }
    cursor.insert((*last).to_owned(), value);
    Ok(())
}

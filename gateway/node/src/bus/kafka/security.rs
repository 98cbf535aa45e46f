//! The Kafka clients' security settings and what they report: `[bus.kafka]`'s TLS and
//! SASL/SCRAM keys become librdkafka's settings as they are; the SASL password is read from
//! its file here and goes into the settings and nowhere else (an error about a setting never
//! shows its value); librdkafka's errors and log lines are logged at most once per
//! [`REPEAT_LOG_INTERVAL`] for each kind, those about credentials and TLS with the keys to
//! check.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::time::Instant;

use super::unavailable;
use crate::bus::BusError;
use crate::config::{KafkaConfig, read_sasl_password};
use crate::sync::lock;

/// How often a line of one kind is logged while it repeats: librdkafka reports a failing
/// connection at every attempt, for each of the three clients, about once a second.
pub const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Kinds of line the limiter remembers; past it the one logged longest ago is forgotten.
pub const REPEAT_KINDS_MAX: usize = 64;

/// The security settings of all three clients, from `[bus.kafka]` (validated at load).
pub fn security(config: &KafkaConfig, client: &mut ClientConfig) -> Result<(), BusError> {
    let protocol = config.security_protocol;
    client.set("security.protocol", protocol.librdkafka());
    if protocol.tls() {
        let identification = if config.ssl_endpoint_identification {
            "https"
        } else {
            "none"
        };
        client.set("ssl.endpoint.identification.algorithm", identification);
        for (setting, path) in [
            ("ssl.ca.location", &config.ssl_ca_file),
            ("ssl.certificate.location", &config.ssl_certificate_file),
            ("ssl.key.location", &config.ssl_key_file),
        ] {
            if !path.as_os_str().is_empty() {
                client.set(setting, path.to_string_lossy());
            }
        }
    }
    if protocol.sasl() {
        let password = read_sasl_password(&config.sasl_password_file)
            .map_err(|e| BusError::Unavailable(format!("bus.kafka.sasl_password_file: {e}")))?;
        client
            .set("sasl.mechanisms", config.sasl_mechanism.librdkafka())
            .set("sasl.username", &config.sasl_username)
            .set("sasl.password", password);
    }
    Ok(())
}

/// An error from making a client. librdkafka's text for a refused setting holds the value,
/// which may be the password: only the key is kept.
pub fn creation_error(e: KafkaError) -> BusError {
    match e {
        KafkaError::ClientConfig(_, _, key, _) => {
            BusError::Unavailable(format!("librdkafka refused the setting {key}"))
        }
        other => unavailable(other),
    }
}

/// Warnings, at every start, for settings that leave the bus open to the network.
pub(super) fn warn_if_exposed(config: &KafkaConfig) {
    let remote: Vec<&str> = config
        .brokers
        .split(',')
        .map(str::trim)
        .filter(|b| !on_loopback(b))
        .collect();
    if !config.security_protocol.tls() && !remote.is_empty() {
        tracing::warn!(
            brokers = ?remote,
            protocol = config.security_protocol.librdkafka(),
            "the registry bus travels without TLS to brokers that are not on loopback: anyone on \
             the path can read and change registrations (set bus.kafka.security_protocol = \"sasl_ssl\")"
        );
    }
    if config.security_protocol.tls() && !config.ssl_endpoint_identification {
        tracing::warn!(
            "bus.kafka.ssl_endpoint_identification is off: any certificate the CA signed is taken for any broker"
        );
    }
}

/// Whether a `host:port` bootstrap address is on loopback.
fn on_loopback(broker: &str) -> bool {
    let host = broker
        .rsplit_once(':')
        .map_or(broker, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The three clients' context (one, shared): librdkafka's errors and log lines go to the
/// log, each kind at most once per `REPEAT_LOG_INTERVAL` (30 s) with the count held back.
#[derive(Debug, Clone, Default)]
pub struct BusContext {
    repeats: Arc<Repeats>,
}

impl BusContext {
    pub fn new() -> Self {
        Self::default()
    }
}

/// What a failed connection means, from librdkafka's error code and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Credentials,
    Tls,
    Other,
}

fn cause(code: Option<RDKafkaErrorCode>, reason: &str) -> Cause {
    match code {
        Some(RDKafkaErrorCode::Authentication) => Cause::Credentials,
        Some(RDKafkaErrorCode::SSL) => Cause::Tls,
        // A broker that refuses the client's certificate (or its absence) ends the handshake
        // with an alert, which librdkafka reports when it next reads: a transport failure.
        _ if reason.contains("SSL routines") => Cause::Tls,
        _ => Cause::Other,
    }
}

impl ClientContext for BusContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let kind = format!("error {code:?}");
        let Some(repeated) = self.repeats.admit(&kind, Instant::now()) else {
            return;
        };
        match cause(code, reason) {
            Cause::Credentials => tracing::error!(
                %reason,
                repeated,
                "Kafka refused this gateway's SASL credentials: check bus.kafka.sasl_username, \
                 sasl_password_file and sasl_mechanism against the broker's users"
            ),
            Cause::Tls => tracing::error!(
                %reason,
                repeated,
                "TLS with a Kafka broker failed: check that bus.kafka.ssl_ca_file holds the CA \
                 that signed the broker's certificate, that the certificate names the host \
                 dialled, and the client certificate if the broker asks for one \
                 (ssl_certificate_file, ssl_key_file)"
            ),
            Cause::Other => tracing::error!(%error, %reason, repeated, "Kafka client error"),
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if matches!(level, RDKafkaLogLevel::Debug) {
            tracing::debug!(target: "librdkafka", facility = fac, "{message}");
            return;
        }
        let Some(repeated) = self.repeats.admit(&format!("log {fac}"), Instant::now()) else {
            return;
        };
        match level {
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, repeated, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::info!(target: "librdkafka", facility = fac, repeated, "{message}")
            }
            _ => tracing::error!(target: "librdkafka", facility = fac, repeated, "{message}"),
        }
    }
}

impl ConsumerContext for BusContext {}

/// When each kind of line was last logged, and how many of it were held back since.
#[derive(Debug, Default)]
struct Repeats(Mutex<BTreeMap<String, (Instant, u64)>>);

impl Repeats {
    /// `Some(held back since the last one)` if a line of `kind` may be logged at `now`.
    fn admit(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut seen = lock(&self.0);
        if let Some((last, held)) = seen.get_mut(kind) {
            if now.saturating_duration_since(*last) < REPEAT_LOG_INTERVAL {
                *held = held.saturating_add(1);
                return None;
            }
            let repeated = *held;
            *last = now;
            *held = 0;
            return Some(repeated);
        }
        if seen.len() >= REPEAT_KINDS_MAX {
            let oldest = seen
                .iter()
                .min_by_key(|(_, (last, _))| *last)
                .map(|(kind, _)| kind.clone());
            if let Some(oldest) = oldest {
                seen.remove(&oldest);
            }
        }
        seen.insert(kind.to_owned(), (now, 0));
        Some(0)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

#[cfg(test)]
mod tests;

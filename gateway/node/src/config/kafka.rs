//! The security keys of `[bus.kafka]`: how the Kafka client proves who it is to the brokers
//! (SASL/SCRAM, a client certificate) and how it knows it talks to them (TLS with a CA). The
//! keys name files, never secrets: the SASL password is read from `sasl_password_file` when
//! the clients are made, so it is in no `Config`, no log line, no error and no output of
//! `switchyard check-config`.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::KafkaConfig;

/// `bus.kafka.security_protocol`: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurityProtocol {
    /// No TLS, no authentication: Kafka's own default, for a broker on loopback or on a
    /// network the operator trusts. A gateway warns at start if a broker is not on loopback.
    #[default]
    Plaintext,
    /// TLS; with `ssl_certificate_file` and `ssl_key_file`, the broker can authenticate the
    /// gateway by its certificate (mutual TLS).
    Ssl,
    /// SASL without TLS: SCRAM does not send the password, but the records travel in clear.
    SaslPlaintext,
    /// SASL over TLS: what a broker outside the gateway's host should ask for.
    SaslSsl,
}

impl KafkaSecurityProtocol {
    /// The value of librdkafka's `security.protocol`.
    pub fn librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// `bus.kafka.sasl_mechanism`. Only SCRAM: PLAIN sends the password itself to the broker, and
/// GSSAPI and OAUTHBEARER need more than a password file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// The default: the stronger hash, and the one managed Kafka services commonly require.
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The value of librdkafka's `sasl.mechanisms`.
    pub fn librdkafka(self) -> &'static str {
        match self {
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The longest SASL password file read; a longer file is refused (it is not a password).
pub const SASL_PASSWORD_BYTES_MAX: usize = 1024;
/// The longest `bus.kafka.sasl_username`.
pub const SASL_USERNAME_BYTES_MAX: usize = 256;

/// Reads the SASL password from `path`: the file's text without one trailing line break. The
/// errors say what is wrong with the file, never what it holds.
pub fn read_sasl_password(path: &Path) -> Result<String, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(SASL_PASSWORD_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > SASL_PASSWORD_BYTES_MAX {
        return Err(format!(
            "{} is longer than {SASL_PASSWORD_BYTES_MAX} bytes: it does not hold a password alone",
            path.display()
        ));
    }
    let mut text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{} holds a line break or another control character besides one final line break",
            path.display()
        ));
    }
    Ok(text)
}

/// Checks that `path` names a regular file this process can open.
fn readable(path: &Path) -> Result<(), String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    Ok(())
}

fn set(path: &Path) -> bool {
    !path.as_os_str().is_empty()
}

impl KafkaConfig {
    /// The security keys: each one the protocol uses is set, no key is set that the protocol
    /// would ignore (an operator who sets a password believes the gateway authenticates), and
    /// every file named can be read now.
    pub(super) fn validate_security(&self) -> Result<(), (&'static str, String)> {
        let protocol = self.security_protocol;
        let name = protocol.librdkafka();
        if !protocol.sasl() {
            for (key, is_set) in [
                ("bus.kafka.sasl_username", !self.sasl_username.is_empty()),
                (
                    "bus.kafka.sasl_password_file",
                    set(&self.sasl_password_file),
                ),
            ] {
                if is_set {
                    return Err((
                        key,
                        format!(
                            "is set, but bus.kafka.security_protocol \"{name}\" does not use SASL; use \"sasl_ssl\""
                        ),
                    ));
                }
            }
        }
        if !protocol.tls() {
            for (key, path) in [
                ("bus.kafka.ssl_ca_file", &self.ssl_ca_file),
                ("bus.kafka.ssl_certificate_file", &self.ssl_certificate_file),
                ("bus.kafka.ssl_key_file", &self.ssl_key_file),
            ] {
                if set(path) {
                    return Err((
                        key,
                        format!(
                            "is set, but bus.kafka.security_protocol \"{name}\" does not use TLS; use \"ssl\" or \"sasl_ssl\""
                        ),
                    ));
                }
            }
        }
        if protocol.sasl() {
            self.validate_sasl()?;
        }
        if protocol.tls() {
            self.validate_tls()?;
        }
        Ok(())
    }

    fn validate_sasl(&self) -> Result<(), (&'static str, String)> {
        let user = &self.sasl_username;
        if user.is_empty() {
            return Err((
                "bus.kafka.sasl_username",
                "is required when bus.kafka.security_protocol uses SASL".to_owned(),
            ));
        }
        if user.len() > SASL_USERNAME_BYTES_MAX || user.chars().any(char::is_control) {
            return Err((
                "bus.kafka.sasl_username",
                format!(
                    "must be at most {SASL_USERNAME_BYTES_MAX} bytes, without control characters"
                ),
            ));
        }
        if !set(&self.sasl_password_file) {
            return Err((
                "bus.kafka.sasl_password_file",
                "is required when bus.kafka.security_protocol uses SASL: a file holding the \
                 password (the password itself is never a config value)"
                    .to_owned(),
            ));
        }
        read_sasl_password(&self.sasl_password_file)
            .map(drop)
            .map_err(|e| ("bus.kafka.sasl_password_file", e))
    }

    fn validate_tls(&self) -> Result<(), (&'static str, String)> {
        match (set(&self.ssl_certificate_file), set(&self.ssl_key_file)) {
            (true, false) => {
                return Err((
                    "bus.kafka.ssl_key_file",
                    "is required with bus.kafka.ssl_certificate_file".to_owned(),
                ));
            }
            (false, true) => {
                return Err((
                    "bus.kafka.ssl_certificate_file",
                    "is required with bus.kafka.ssl_key_file".to_owned(),
                ));
            }
            _ => {}
        }
        for (key, path) in [
            ("bus.kafka.ssl_ca_file", &self.ssl_ca_file),
            ("bus.kafka.ssl_certificate_file", &self.ssl_certificate_file),
            ("bus.kafka.ssl_key_file", &self.ssl_key_file),
        ] {
            if set(path) {
                readable(path).map_err(|e| (key, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

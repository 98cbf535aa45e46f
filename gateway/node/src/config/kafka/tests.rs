use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::config::{Config, ConfigError, Override, parse_set_flag};

const PASSWORD: &str = "correct-horse-battery-staple";

/// A directory removed when dropped, for the files the keys name.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-kafka-config-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn flags(settings: &[String]) -> Vec<Override> {
    let mut all = vec![
        "bus.kind=kafka".to_owned(),
        "bus.kafka.brokers=127.0.0.1:9092".to_owned(),
    ];
    all.extend(settings.iter().cloned());
    all.iter().map(|s| parse_set_flag(s).unwrap()).collect()
}

fn load(settings: &[String]) -> Result<Config, ConfigError> {
    Config::load(None, &flags(settings))
}

fn err(settings: &[String]) -> String {
    load(settings).unwrap_err().to_string()
}

fn key(key: &str, value: impl AsRef<Path>) -> String {
    format!("bus.kafka.{key}={}", value.as_ref().display())
}

fn sasl(dir: &Dir) -> Vec<String> {
    vec![
        key("security_protocol", "sasl_ssl"),
        key("sasl_username", "gateway"),
        key(
            "sasl_password_file",
            dir.file("password", format!("{PASSWORD}\n").as_bytes()),
        ),
    ]
}

#[test]
fn the_defaults_are_plaintext_with_endpoint_identification_on() {
    let c = load(&[]).unwrap();
    let k = &c.bus.kafka;
    assert_eq!(k.security_protocol, KafkaSecurityProtocol::Plaintext);
    assert_eq!(k.sasl_mechanism, SaslMechanism::ScramSha512);
    assert!(k.ssl_endpoint_identification);
    assert!(k.sasl_username.is_empty() && k.sasl_password_file.as_os_str().is_empty());
}

#[test]
fn sasl_needs_a_username_and_a_password_file_and_says_which_is_missing() {
    let dir = Dir::new();
    let mut settings = sasl(&dir);
    let no_user: Vec<String> = settings
        .iter()
        .filter(|s| !s.contains("sasl_username"))
        .cloned()
        .collect();
    assert!(
        err(&no_user).contains("`bus.kafka.sasl_username`"),
        "{}",
        err(&no_user)
    );
    let no_file: Vec<String> = settings
        .iter()
        .filter(|s| !s.contains("sasl_password_file"))
        .cloned()
        .collect();
    let e = err(&no_file);
    assert!(e.contains("`bus.kafka.sasl_password_file`"), "{e}");
    let mut long_user = settings.clone();
    long_user.push(key(
        "sasl_username",
        "u".repeat(SASL_USERNAME_BYTES_MAX + 1),
    ));
    let e = err(&long_user);
    assert!(
        e.contains("`bus.kafka.sasl_username`") && e.contains("at most"),
        "{e}"
    );
    settings.push(key("sasl_username", "u".repeat(SASL_USERNAME_BYTES_MAX)));
    settings.push(key("sasl_mechanism", "SCRAM-SHA-256"));
    let c = load(&settings).unwrap();
    assert_eq!(c.bus.kafka.sasl_mechanism, SaslMechanism::ScramSha256);
    assert_eq!(c.bus.kafka.security_protocol.librdkafka(), "sasl_ssl");
}

#[test]
fn the_password_is_in_no_config_and_no_printout() {
    let dir = Dir::new();
    let c = load(&sasl(&dir)).unwrap();
    // What `switchyard check-config` prints.
    let printed = format!("{c:#?}");
    assert!(printed.contains("sasl_password_file"), "{printed}");
    assert!(!printed.contains(PASSWORD), "{printed}");
    assert_eq!(
        read_sasl_password(&c.bus.kafka.sasl_password_file).unwrap(),
        PASSWORD
    );
}

#[test]
fn a_bad_password_file_is_an_error_that_names_the_key_and_not_the_content() {
    let dir = Dir::new();
    let secret = "hunter2-secret";
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("empty", b"\n".to_vec(), "is empty"),
        (
            "two-lines",
            format!("{secret}\n{secret}\n").into_bytes(),
            "control character",
        ),
        ("binary", vec![0xff, 0xfe, b'h', b'u'], "not UTF-8"),
        (
            "long",
            secret.repeat(SASL_PASSWORD_BYTES_MAX).into_bytes(),
            "longer than",
        ),
    ];
    for (name, content, why) in cases {
        let mut settings = sasl(&dir);
        settings.push(key("sasl_password_file", dir.file(name, &content)));
        let e = err(&settings);
        assert!(e.contains("`bus.kafka.sasl_password_file`"), "{name}: {e}");
        assert!(e.contains(why), "{name}: {e}");
        assert!(!e.contains(secret) && !e.contains("hunter2"), "{name}: {e}");
    }
    let mut settings = sasl(&dir);
    settings.push(key("sasl_password_file", dir.0.join("absent")));
    let e = err(&settings);
    assert!(
        e.contains("`bus.kafka.sasl_password_file`") && e.contains("absent"),
        "{e}"
    );
}

#[test]
fn a_password_file_is_read_up_to_its_bound_and_not_past_it() {
    let dir = Dir::new();
    let at_bound = "p".repeat(SASL_PASSWORD_BYTES_MAX);
    let path = dir.file("at-bound", at_bound.as_bytes());
    assert_eq!(read_sasl_password(&path).unwrap(), at_bound);
    let past = dir.file("past", "p".repeat(SASL_PASSWORD_BYTES_MAX + 1).as_bytes());
    let e = read_sasl_password(&past).unwrap_err();
    assert!(e.contains("longer than 1024 bytes"), "{e}");
    // One final line break, Unix or Windows, is not part of the password.
    let crlf = dir.file("crlf", b"abc\r\n");
    assert_eq!(read_sasl_password(&crlf).unwrap(), "abc");
    let spaces = dir.file("spaces", b" a b ");
    assert_eq!(read_sasl_password(&spaces).unwrap(), " a b ");
}

#[test]
fn keys_the_protocol_would_ignore_are_errors() {
    let dir = Dir::new();
    let ca = dir.file("ca.pem", b"-----BEGIN CERTIFICATE-----\n");
    for (protocol, setting, named) in [
        (
            "plaintext",
            key("sasl_username", "gateway"),
            "sasl_username",
        ),
        ("ssl", key("sasl_password_file", &ca), "sasl_password_file"),
        ("plaintext", key("ssl_ca_file", &ca), "ssl_ca_file"),
        ("sasl_plaintext", key("ssl_ca_file", &ca), "ssl_ca_file"),
    ] {
        let mut settings = vec![key("security_protocol", protocol), setting];
        if protocol == "sasl_plaintext" {
            settings.extend(sasl(&dir).into_iter().skip(1));
        }
        let e = err(&settings);
        assert!(
            e.contains(&format!("`bus.kafka.{named}`")),
            "{protocol}: {e}"
        );
    }
}

#[test]
fn tls_files_must_be_readable_and_a_client_certificate_needs_its_key() {
    let dir = Dir::new();
    let pem = dir.file("any.pem", b"-----BEGIN CERTIFICATE-----\n");
    let ssl = key("security_protocol", "ssl");
    let e = err(&[
        ssl.clone(),
        key("ssl_ca_file", dir.0.join("missing-ca.pem")),
    ]);
    assert!(
        e.contains("`bus.kafka.ssl_ca_file`") && e.contains("missing-ca.pem"),
        "{e}"
    );
    let e = err(&[ssl.clone(), key("ssl_ca_file", &dir.0)]);
    assert!(e.contains("is not a file"), "{e}");
    let e = err(&[ssl.clone(), key("ssl_certificate_file", &pem)]);
    assert!(e.contains("`bus.kafka.ssl_key_file`"), "{e}");
    let e = err(&[ssl.clone(), key("ssl_key_file", &pem)]);
    assert!(e.contains("`bus.kafka.ssl_certificate_file`"), "{e}");
    let c = load(&[
        ssl,
        key("ssl_ca_file", &pem),
        key("ssl_certificate_file", &pem),
        key("ssl_key_file", &pem),
        key("ssl_endpoint_identification", "false"),
    ])
    .unwrap();
    assert!(c.bus.kafka.security_protocol.tls() && !c.bus.kafka.security_protocol.sasl());
    assert!(!c.bus.kafka.ssl_endpoint_identification);
}

#[test]
fn unknown_protocols_and_mechanisms_are_errors_that_name_the_key() {
    let e = err(&[key("security_protocol", "tls")]);
    assert!(e.contains("`bus.kafka.security_protocol`"), "{e}");
    let e = err(&[key("sasl_mechanism", "PLAIN")]);
    assert!(e.contains("`bus.kafka.sasl_mechanism`"), "{e}");
}

#[test]
fn the_memory_bus_ignores_the_kafka_keys() {
    // The keys are checked only when Kafka is the bus: a file missing on a host that does
    // not use Kafka stops nothing.
    let c = Config::load(
        None,
        &[parse_set_flag("bus.kafka.ssl_ca_file=/nonexistent/ca.pem").unwrap()],
    )
    .unwrap();
    assert_eq!(c.bus.kind, crate::config::BusKind::Memory);
}

use rdkafka::types::RDKafkaConfRes;

use super::*;

#[test]
fn an_error_about_a_setting_never_shows_its_value() {
    let refused = KafkaError::ClientConfig(
        RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
        "Invalid value \"hunter2\" for configuration property \"sasl.password\"".to_owned(),
        "sasl.password".to_owned(),
        "hunter2".to_owned(),
    );
    // What rdkafka itself would print.
    assert!(refused.to_string().contains("hunter2"));
    let error = creation_error(refused).to_string();
    assert!(!error.contains("hunter2"), "{error}");
    assert!(error.contains("sasl.password"), "{error}");
}

#[test]
fn loopback_brokers_are_told_from_remote_ones() {
    for local in [
        "127.0.0.1:9092",
        "localhost:9092",
        "[::1]:9092",
        "127.8.9.1:1",
    ] {
        assert!(on_loopback(local), "{local}");
    }
    for remote in [
        "10.0.0.5:9092",
        "kafka:9092",
        "[2001:db8::1]:9092",
        "localhost.evil:1",
    ] {
        assert!(!on_loopback(remote), "{remote}");
    }
}

#[test]
fn sasl_and_tls_keys_become_librdkafka_settings() {
    let dir = std::env::temp_dir().join(format!("switchyard-kafka-bus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let config = KafkaConfig {
        brokers: "127.0.0.1:9093".to_owned(),
        security_protocol: crate::config::KafkaSecurityProtocol::SaslSsl,
        sasl_username: "gateway".to_owned(),
        sasl_password_file: password.clone(),
        ssl_ca_file: dir.join("ca.pem"),
        ..KafkaConfig::default()
    };
    let mut client = ClientConfig::new();
    security(&config, &mut client).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
    assert_eq!(client.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
    assert_eq!(client.get("sasl.username"), Some("gateway"));
    assert_eq!(client.get("sasl.password"), Some("s3cret"));
    assert_eq!(
        client.get("ssl.endpoint.identification.algorithm"),
        Some("https")
    );
    assert_eq!(
        client.get("ssl.ca.location"),
        Some(dir.join("ca.pem").to_str().unwrap())
    );
    assert_eq!(client.get("ssl.certificate.location"), None);
    // A password file gone since the config was loaded: an error naming the key.
    let error = security(&config, &mut ClientConfig::new()).unwrap_err();
    assert!(
        error.to_string().contains("bus.kafka.sasl_password_file"),
        "{error}"
    );
}

#[test]
fn plaintext_sets_no_tls_or_sasl_setting() {
    let mut client = ClientConfig::new();
    security(&KafkaConfig::default(), &mut client).unwrap();
    assert_eq!(client.get("security.protocol"), Some("plaintext"));
    assert_eq!(client.get("ssl.endpoint.identification.algorithm"), None);
    assert_eq!(client.get("sasl.password"), None);
}

#[test]
fn failures_are_told_apart_by_code_and_by_the_handshake_alert() {
    assert_eq!(
        cause(Some(RDKafkaErrorCode::Authentication), ""),
        Cause::Credentials
    );
    assert_eq!(cause(Some(RDKafkaErrorCode::SSL), ""), Cause::Tls);
    let alert = "ssl://127.0.0.1:1/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate";
    assert_eq!(
        cause(Some(RDKafkaErrorCode::BrokerTransportFailure), alert),
        Cause::Tls
    );
    assert_eq!(
        cause(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "Connection refused"
        ),
        Cause::Other
    );
}

#[test]
fn a_repeated_line_is_logged_once_per_interval_with_the_count_held_back() {
    let repeats = Repeats::default();
    let start = Instant::now();
    assert_eq!(repeats.admit("error Authentication", start), Some(0));
    for i in 1..=5 {
        let now = start + Duration::from_secs(i);
        assert_eq!(repeats.admit("error Authentication", now), None);
    }
    // Another kind is not held back by the first.
    assert_eq!(repeats.admit("error SSL", start), Some(0));
    assert_eq!(
        repeats.admit("error Authentication", start + REPEAT_LOG_INTERVAL),
        Some(5)
    );
    assert_eq!(
        repeats.admit(
            "error Authentication",
            start + REPEAT_LOG_INTERVAL + Duration::from_secs(1)
        ),
        None
    );
}

#[test]
fn the_kinds_remembered_are_bounded() {
    let repeats = Repeats::default();
    let start = Instant::now();
    for i in 0..(REPEAT_KINDS_MAX as u64 * 3) {
        let now = start + Duration::from_millis(i);
        assert_eq!(repeats.admit(&format!("log FAC{i}"), now), Some(0));
        assert!(repeats.len() <= REPEAT_KINDS_MAX, "{} kinds", repeats.len());
    }
    // The oldest were forgotten, the newest kept.
    let last = REPEAT_KINDS_MAX as u64 * 3 - 1;
    let now = start + Duration::from_millis(last + 1);
    assert_eq!(repeats.admit(&format!("log FAC{last}"), now), None);
    assert_eq!(repeats.admit("log FAC0", now), Some(0));
}

use super::*;

const NOW_MS: u64 = 1_800_000_000_000;
const NOW_S: u64 = NOW_MS / 1_000;

fn claims(services: &[&str]) -> Claims {
    Claims {
        aud: AUDIENCE.to_owned(),
        sub: "orders-team".to_owned(),
        jti: "t-1".to_owned(),
        iat: NOW_S,
        exp: NOW_S + 3_600,
        nbf: None,
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        read: false,
    }
}

fn pair(algorithm: &'static rcgen::SignatureAlgorithm) -> (SigningKey, String) {
    let pair = rcgen::KeyPair::generate_for(algorithm).unwrap();
    let key = SigningKey::from_pem(&pair.serialize_pem()).unwrap();
    let public = key.public_pem().to_owned();
    (key, public)
}

fn ed25519() -> (SigningKey, String) {
    pair(&rcgen::PKCS_ED25519)
}

/// An RSA key of `bits`, from the openssl command (ring cannot generate RSA keys).
fn rsa(bits: u32) -> (String, String) {
    let private = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
        .arg(format!("rsa_keygen_bits:{bits}"))
        .output()
        .expect("the openssl command generates RSA keys for this test");
    let private = String::from_utf8(private.stdout).unwrap();
    let mut child = std::process::Command::new("openssl")
        .args(["pkey", "-pubout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let public = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    (private, public)
}

fn authenticator(public_pems: &[&str]) -> Authenticator {
    let keys = KeySet::from_pem(&public_pems.concat()).unwrap();
    Authenticator::new(Mode::Required, keys, 30_000)
}

fn bearer_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

#[test]
fn a_credential_of_each_algorithm_verifies_and_grants_its_services_only() {
    let (rsa_private, rsa_public) = rsa(2048);
    let rsa_key = SigningKey::from_pem(&rsa_private).unwrap();
    assert_eq!(rsa_key.algorithm(), KeyAlgorithm::Rs256);
    let (ed, ed_public) = ed25519();
    let (ec, ec_public) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    assert_eq!(ec.algorithm(), KeyAlgorithm::Es256);
    let auth = authenticator(&[&ed_public, &ec_public, &rsa_public]);
    assert_eq!(auth.keys().len(), 3);
    for key in [&ed, &ec, &rsa_key] {
        let token = issue(key, &claims(&["orders", "billing-*"])).unwrap();
        let grant = auth
            .authenticate(&bearer_headers(&token), None, NOW_MS)
            .unwrap();
        assert_eq!(grant.identity.subject, "orders-team");
        assert_eq!(grant.identity.credential_id, "t-1");
        assert!(grant.may_change("orders"));
        assert!(grant.may_change("billing-eu"));
        assert!(!grant.may_change("billing"), "a prefix is not the name");
        assert!(
            !grant.may_change("orders-eu"),
            "an exact name is not a prefix"
        );
        assert!(!grant.may_change("payments"));
        assert!(!grant.may_read());
    }
}

#[test]
fn the_operator_pattern_grants_everything() {
    let (key, public) = ed25519();
    let auth = authenticator(&[&public]);
    let mut c = claims(&["*"]);
    c.read = true;
    let grant = auth.verify(&issue(&key, &c).unwrap(), NOW_MS).unwrap();
    assert!(grant.may_change("anything"));
    assert!(grant.may_read());
}

#[test]
fn time_is_the_callers_clock_with_the_leeway() {
    let (key, public) = ed25519();
    let auth = authenticator(&[&public]);
    let token = issue(&key, &claims(&["orders"])).unwrap();
    let exp_ms = (NOW_S + 3_600) * 1_000;
    assert!(
        auth.verify(&token, exp_ms + 29_000).is_ok(),
        "within the 30 s leeway"
    );
    assert!(matches!(
        auth.verify(&token, exp_ms + 30_000),
        Err(Refusal::Expired { .. })
    ));
    let mut later = claims(&["orders"]);
    later.nbf = Some(NOW_S + 600);
    let token = issue(&key, &later).unwrap();
    assert!(matches!(
        auth.verify(&token, NOW_MS),
        Err(Refusal::NotYetValid { .. })
    ));
    assert!(auth.verify(&token, (NOW_S + 600) * 1_000).is_ok());
}

#[test]
fn every_bad_credential_is_refused_with_its_reason() {
    let (key, public) = ed25519();
    let (other, _) = ed25519();
    let auth = authenticator(&[&public]);
    let good = issue(&key, &claims(&["orders"])).unwrap();

    assert_eq!(
        auth.authenticate(&HeaderMap::new(), None, NOW_MS),
        Err(Refusal::Missing)
    );
    let mut basic = HeaderMap::new();
    basic.insert(
        http::header::AUTHORIZATION,
        "Basic dXNlcjpwYXNz".parse().unwrap(),
    );
    assert!(matches!(
        auth.authenticate(&basic, None, NOW_MS),
        Err(Refusal::Malformed(_))
    ));
    assert!(matches!(
        auth.verify("not-a-jwt", NOW_MS),
        Err(Refusal::Malformed(_))
    ));
    let long = "a".repeat(TOKEN_BYTES_MAX + 1);
    assert!(matches!(
        auth.verify(&long, NOW_MS),
        Err(Refusal::Malformed(_))
    ));

    // Signed by a key the gateway does not hold.
    let stranger = issue(&other, &claims(&["orders"])).unwrap();
    assert!(matches!(
        auth.verify(&stranger, NOW_MS),
        Err(Refusal::UnknownKey { .. })
    ));

    // The claims changed after signing.
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut forged_claims = claims(&["*"]);
    forged_claims.read = true;
    let forged = base64_url(&serde_json::to_vec(&forged_claims).unwrap());
    parts[1] = &forged;
    assert!(matches!(
        auth.verify(&parts.join("."), NOW_MS),
        Err(Refusal::BadSignature { .. })
    ));

    // The header names another algorithm for the same key: HMAC with the public key as its
    // secret, or no signature at all.
    let kid = key.id().to_owned();
    for alg in ["HS256", "none", "RS256"] {
        let header = base64_url(format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#).as_bytes());
        let token = format!(
            "{header}.{}.{}",
            good.split('.').nth(1).unwrap(),
            good.split('.').nth(2).unwrap()
        );
        let refusal = auth.verify(&token, NOW_MS).unwrap_err();
        assert!(
            matches!(
                refusal,
                Refusal::BadSignature { .. } | Refusal::Malformed(_)
            ),
            "{alg}: {refusal:?}"
        );
    }

    let mut wrong_audience = claims(&["orders"]);
    wrong_audience.aud = "someone-else".to_owned();
    let token = issue(&key, &wrong_audience).unwrap();
    assert_eq!(auth.verify(&token, NOW_MS), Err(Refusal::WrongAudience));

    for bad in ["bill*ing", "", "orders/x", "a b"] {
        let token = issue(&key, &claims(&[bad])).unwrap();
        assert!(
            matches!(auth.verify(&token, NOW_MS), Err(Refusal::Malformed(_))),
            "pattern {bad:?}"
        );
    }
    let many: Vec<String> = (0..=PATTERNS_MAX).map(|i| format!("s{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let token = issue(&key, &claims(&many)).unwrap();
    assert!(matches!(
        auth.verify(&token, NOW_MS),
        Err(Refusal::Malformed(_))
    ));
}

#[test]
fn a_key_removed_at_rotation_no_longer_verifies_its_tokens() {
    let (old, old_public) = ed25519();
    let (new, new_public) = ed25519();
    let auth = authenticator(&[&old_public, &new_public]);
    let old_token = issue(&old, &claims(&["orders"])).unwrap();
    let new_token = issue(&new, &claims(&["orders"])).unwrap();
    assert!(auth.verify(&old_token, NOW_MS).is_ok());
    assert!(auth.verify(&new_token, NOW_MS).is_ok());
    auth.replace_keys(KeySet::from_pem(&new_public).unwrap());
    assert!(matches!(
        auth.verify(&old_token, NOW_MS),
        Err(Refusal::UnknownKey { .. })
    ));
    assert!(auth.verify(&new_token, NOW_MS).is_ok());
}

#[test]
fn a_token_without_a_key_id_is_tried_against_the_keys_of_its_algorithm() {
    let (key, public) = ed25519();
    let auth = authenticator(&[&public]);
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = None;
    let token = jsonwebtoken::encode(&header, &claims(&["orders"]), &key.key).unwrap();
    assert!(auth.verify(&token, NOW_MS).is_ok());
}

#[test]
fn key_files_take_public_keys_only() {
    let (key, public) = ed25519();
    assert_eq!(KeySet::from_pem(&public).unwrap().ids(), vec![key.id()]);
    let (private, _) = generate_key().unwrap();
    let refusals = [
        (private.clone(), "only `PUBLIC KEY`"),
        (String::new(), "no PEM block"),
        (format!("{public}{public}"), "twice"),
        (public.repeat(KEYS_MAX + 1), "at most"),
        (rsa(1024).1, "at least 2048"),
        (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
                .unwrap()
                .public_key_pem(),
            "other than P-256",
        ),
    ];
    for (text, expected) in refusals {
        let error = KeySet::from_pem(&text).unwrap_err().to_string();
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
    }
}

#[test]
fn with_auth_off_everyone_may_do_everything() {
    let auth = Authenticator::new(Mode::None, KeySet::default(), 0);
    let grant = auth.authenticate(&HeaderMap::new(), None, NOW_MS).unwrap();
    assert!(grant.may_change("orders") && grant.may_read());
}

#[test]
fn refusals_answer_401_with_the_challenge_or_403() {
    let missing = Refusal::Missing.to_error();
    assert_eq!(missing.http_status(), 401);
    assert_eq!(
        missing.response_headers(),
        vec![("www-authenticate", CHALLENGE.to_owned())]
    );
    let denied = Refusal::NotPermitted {
        identity: Identity::default(),
        what: "changing billing".to_owned(),
    };
    assert_eq!(denied.to_error().http_status(), 403);
    for label in Refusal::LABELS {
        assert!(!label.is_empty());
    }
}

fn base64_url(bytes: &[u8]) -> String {
    super::base64url(bytes)
}

#[test]
fn base64url_matches_rfc_4648_without_padding() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_url(plain.as_bytes()), encoded);
    }
    assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
}

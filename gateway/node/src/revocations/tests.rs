//! The local copy and the list's answers, without a server (the real-Redis scenarios are in
//! testbeds/tests/test_revocation.py).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Added, Copy, Found, Kind, Position, Record, Revocations, RevokeRequest, Source};
use crate::config::{RedisConfig, RevocationConfig};
use crate::redis::Redis;
use crate::revocation::{Revocation, RevocationList, TokenFacts};
use crate::seams::Clock;

const NOW_S: u64 = 1_800_000_000;

fn token(
    issuer: &str,
    subject: &str,
    id: Option<&'static str>,
    iat: Option<u64>,
) -> TokenFacts<'static> {
    TokenFacts {
        provider: "p",
        issuer: Box::leak(issuer.to_owned().into_boxed_str()),
        subject: Box::leak(subject.to_owned().into_boxed_str()),
        token_id: id,
        issued_at_s: iat,
        expires_at_s: NOW_S + 600,
    }
}

fn revoked_id(issuer: &str, id: &str, expires_at_s: u64) -> Record {
    Record {
        issuer: issuer.to_owned(),
        token_id: Some(id.to_owned()),
        subject: None,
        revoked_at_s: NOW_S - 10,
        expires_at_s,
    }
}

fn revoked_subject(issuer: &str, subject: &str, revoked_at_s: u64) -> Record {
    Record {
        issuer: issuer.to_owned(),
        token_id: None,
        subject: Some(subject.to_owned()),
        revoked_at_s,
        expires_at_s: revoked_at_s + 3_600,
    }
}

#[test]
fn a_token_id_is_revoked_for_its_issuer_only_until_it_expires() {
    let mut copy = Copy::new(10);
    assert_eq!(
        copy.add(&revoked_id("iss-a", "j1", NOW_S + 60), NOW_S),
        Added::New
    );
    assert_eq!(
        copy.check(&token("iss-a", "u", Some("j1"), None), NOW_S),
        Found::Revoked
    );
    assert_eq!(
        copy.check(&token("iss-b", "u", Some("j1"), None), NOW_S),
        Found::NotListed
    );
    assert_eq!(
        copy.check(&token("iss-a", "u", Some("j2"), None), NOW_S),
        Found::NotListed
    );
    assert_eq!(
        copy.check(&token("iss-a", "u", Some("j1"), None), NOW_S + 60),
        Found::NotListed
    );
    assert_eq!(copy.purge(NOW_S + 60), 1);
    assert!(copy.is_empty());
}

#[test]
fn a_subject_covers_the_tokens_issued_at_or_before_its_revocation() {
    let mut copy = Copy::new(10);
    copy.add(&revoked_subject("iss", "alice", NOW_S), NOW_S);
    let check = |iat| copy.check(&token("iss", "alice", Some("any"), iat), NOW_S);
    assert_eq!(check(Some(NOW_S - 1)), Found::Revoked);
    assert_eq!(check(Some(NOW_S)), Found::Revoked);
    assert_eq!(check(None), Found::Revoked, "no iat: cannot be shown newer");
    assert_eq!(check(Some(NOW_S + 1)), Found::NotListed);
    assert_eq!(
        copy.check(&token("iss", "bob", None, None), NOW_S),
        Found::NotListed
    );
}

#[test]
fn a_later_revocation_of_a_subject_moves_its_time_forward() {
    let mut copy = Copy::new(10);
    copy.add(&revoked_subject("iss", "alice", NOW_S - 100), NOW_S);
    assert_eq!(
        copy.add(&revoked_subject("iss", "alice", NOW_S), NOW_S),
        Added::Known
    );
    assert_eq!(
        copy.add(&revoked_subject("iss", "alice", NOW_S - 500), NOW_S),
        Added::Known
    );
    assert_eq!(copy.len(), 1);
    assert_eq!(
        copy.check(&token("iss", "alice", None, Some(NOW_S - 50)), NOW_S),
        Found::Revoked
    );
}

#[test]
fn over_its_bound_the_copy_refuses_and_stops_vouching_until_a_resync_fits() {
    let mut copy = Copy::new(3);
    for i in 0..3 {
        let id = format!("j{i}");
        assert_eq!(
            copy.add(&revoked_id("iss", &id, NOW_S + 60), NOW_S),
            Added::New
        );
    }
    assert_eq!(
        copy.add(&revoked_id("iss", "j3", NOW_S + 60), NOW_S),
        Added::Full
    );
    assert_eq!(copy.len(), 3);
    // What it holds is still revoked; what it does not hold is not vouched for.
    assert_eq!(
        copy.check(&token("iss", "u", Some("j0"), None), NOW_S),
        Found::Revoked
    );
    assert_eq!(
        copy.check(&token("iss", "u", Some("j3"), None), NOW_S),
        Found::Incomplete
    );
    assert_eq!(
        copy.check(&token("iss", "u", Some("zz"), None), NOW_S),
        Found::Incomplete
    );
    copy.purge(NOW_S + 60);
    copy.settle(false);
    assert_eq!(
        copy.check(&token("iss", "u", Some("zz"), None), NOW_S),
        Found::NotListed
    );
    // A record already held is merged even when the copy is full.
    let mut full = Copy::new(1);
    full.add(&revoked_id("iss", "j0", NOW_S + 60), NOW_S);
    assert_eq!(
        full.add(&revoked_id("iss", "j0", NOW_S + 90), NOW_S),
        Added::Known
    );
}

#[test]
fn invalid_and_expired_records_are_not_kept() {
    let mut copy = Copy::new(10);
    let mut both = revoked_id("iss", "j", NOW_S + 60);
    both.subject = Some("alice".to_owned());
    assert_eq!(copy.add(&both, NOW_S), Added::Invalid);
    assert_eq!(
        copy.add(&revoked_id("", "j", NOW_S + 60), NOW_S),
        Added::Invalid
    );
    let long = "x".repeat(super::copy::NAME_BYTES_MAX + 1);
    assert_eq!(
        copy.add(&revoked_id("iss", &long, NOW_S + 60), NOW_S),
        Added::Invalid
    );
    assert_eq!(
        copy.add(&revoked_id("iss", "j", NOW_S), NOW_S),
        Added::Expired
    );
    assert!(copy.is_empty());
}

#[test]
fn listing_pages_through_everything_once() {
    let mut copy = Copy::new(100);
    for i in 0..7 {
        copy.add(&revoked_id("iss", &format!("j{i}"), NOW_S + 60), NOW_S);
    }
    copy.add(&revoked_subject("iss", "alice", NOW_S), NOW_S);
    let mut seen = Vec::new();
    let mut after: Option<Position> = None;
    for _ in 0..10 {
        let cursor = after
            .as_ref()
            .map(|p| Position::decode(&p.encode()).expect("round trip"));
        let (page, next) = copy.list(cursor.as_ref(), 3);
        assert!(page.len() <= 3);
        seen.extend(page);
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8);
    assert_eq!(
        seen.last().and_then(|r| r.subject.as_deref()),
        Some("alice")
    );
    assert!(Position::decode("t.zz.00").is_none());
    assert!(Position::decode("x.00.00").is_none());
}

/// A clock the test sets.
#[derive(Debug, Default)]
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn list(config: RevocationConfig) -> (Revocations, Arc<TestClock>) {
    let redis = Redis::from_config(&RedisConfig {
        url: "redis://127.0.0.1:1".to_owned(),
        ..RedisConfig::default()
    })
    .expect("config")
    .expect("client");
    let clock = Arc::new(TestClock(AtomicU64::new(NOW_S * 1_000)));
    (
        Revocations::new(&config, Arc::new(redis), clock.clone()),
        clock,
    )
}

#[tokio::test(start_paused = true)]
async fn the_list_answers_unknown_unless_confirmed_within_the_staleness_bound() {
    let config = RevocationConfig {
        stale_after_ms: 3_000,
        ..RevocationConfig::default()
    };
    let (list, _clock) = list(config);
    let facts = token("iss", "alice", Some("j1"), Some(NOW_S - 5));
    assert_eq!(list.check(&facts), Revocation::Unknown, "never confirmed");
    list.confirm(tokio::time::Instant::now());
    assert_eq!(list.check(&facts), Revocation::Clear);
    list.apply(&revoked_id("iss", "j1", NOW_S + 60), Source::Pubsub);
    assert_eq!(list.check(&facts), Revocation::Revoked);
    tokio::time::advance(Duration::from_millis(3_000)).await;
    assert_eq!(
        list.check(&token("iss", "bob", None, None)),
        Revocation::Clear
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        list.check(&token("iss", "bob", None, None)),
        Revocation::Unknown,
        "stale"
    );
    assert_eq!(
        list.check(&facts),
        Revocation::Revoked,
        "a listed token stays revoked"
    );
    let mut text = String::new();
    list.encode_metrics(&mut text);
    assert!(
        text.contains("switchyard_revocation_checks_total{outcome=\"unknown\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_revocations_applied_total{source=\"pubsub\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_revocation_copy_current 0"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_revocation_requests_are_refused_before_redis_is_asked() {
    let (list, _clock) = list(RevocationConfig::default());
    let ask =
        |token_id: Option<&str>, subject: Option<&str>, expires_at: Option<u64>| RevokeRequest {
            issuer: "iss".to_owned(),
            token_id: token_id.map(str::to_owned),
            subject: subject.map(str::to_owned),
            expires_at,
        };
    let lifetime = RevocationConfig::default().token_lifetime_max_s;
    for (request, field) in [
        (ask(Some("j"), None, None), "expires_at"),
        (ask(Some("j"), None, Some(NOW_S)), "expires_at"),
        (
            ask(Some("j"), None, Some(NOW_S + lifetime + 1)),
            "expires_at",
        ),
        (ask(None, None, Some(NOW_S + 60)), "body"),
        (ask(Some("j"), Some("alice"), Some(NOW_S + 60)), "body"),
        (ask(Some(""), None, Some(NOW_S + 60)), "body"),
    ] {
        match list.revoke(request).await {
            Err(switchyard_core::GatewayError::InvalidArgument { field: f, .. }) => {
                assert_eq!(f, field);
            }
            other => panic!("expected invalid_argument on {field}, got {other:?}"),
        }
    }
    // A valid request reaches Redis, which is not there: 503, and nothing is applied.
    let refused = list.revoke(ask(Some("j"), None, Some(NOW_S + 60))).await;
    assert!(
        matches!(refused, Err(switchyard_core::GatewayError::NotReady { .. })),
        "{refused:?}"
    );
    assert_eq!(list.held(), 0);
    // Keys have a bounded length whatever the names, and differ by kind.
    let long = "x".repeat(256);
    let key = list.key(Kind::Token, &long, &long);
    assert!(key.len() < 80, "{key}");
    assert_ne!(key, list.key(Kind::Subject, &long, &long));
}

#[test]
fn a_page_lists_at_most_list_max_and_oversized_records_are_skipped() {
    let (list, _clock) = list(RevocationConfig {
        list_max: 2,
        ..RevocationConfig::default()
    });
    for i in 0..5 {
        list.apply(
            &revoked_id("iss", &format!("j{i}"), NOW_S + 60),
            Source::Resync,
        );
    }
    let (page, next) = list.list(None, 10_000);
    assert_eq!(page.len(), 2);
    assert!(next.is_some());
    // A record within the name bounds but padded past RECORD_BYTES_MAX is not read.
    let padded = format!(
        "{{\"issuer\":\"iss\",\"token_id\":\"big\",\"revoked_at_s\":{},\"expires_at_s\":{}{}}}",
        NOW_S,
        NOW_S + 60,
        " ".repeat(super::RECORD_BYTES_MAX)
    );
    assert!(list.parse(padded.as_bytes()).is_none());
    let fits = padded.replace(&" ".repeat(super::RECORD_BYTES_MAX), "");
    assert!(list.parse(fits.as_bytes()).is_some());
    assert!(list.parse(b"{\"issuer\":\"iss\"}").is_none());
}

//! The client against servers that fail in the ways Redis does (none of them a real Redis:
//! those tests are in testbeds/tests/test_revocation.py): nothing listening, and a server
//! that takes the connection and never answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Redis, RedisError};
use crate::config::RedisConfig;

fn config(url: String, breaker_failures: u32) -> RedisConfig {
    RedisConfig {
        url,
        connect_timeout_ms: 200,
        command_timeout_ms: 50,
        breaker_failures,
        breaker_cooldown_ms: 60_000,
        ..RedisConfig::default()
    }
}

/// A server that accepts connections and answers the first command of each (the client's
/// `PING` when it connects) with `+PONG`, then reads what it is sent and never answers: a
/// server that hung after the connection was made. With `answer_first` off it never answers
/// at all.
async fn hung_server(answer_first: bool) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("redis://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            held.push(tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut answered = !answer_first;
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
                    if !answered {
                        answered = true;
                        let _ = socket.write_all(b"+PONG\r\n").await;
                    }
                }
            }));
        }
    });
    (url, task)
}

/// Waits (bounded) until `ready` holds.
async fn until(what: &str, ready: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(5), async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

#[test]
fn no_url_means_no_client_and_a_url_with_a_password_is_refused() {
    assert!(
        Redis::from_config(&RedisConfig::default())
            .expect("ok")
            .is_none()
    );
    let inline = RedisConfig {
        url: "redis://:secret@127.0.0.1:6379".to_owned(),
        ..RedisConfig::default()
    };
    let error = Redis::from_config(&inline).expect_err("inline password");
    assert!(error.contains("redis.url"), "{error}");
    assert!(
        !error.contains("secret"),
        "the error repeats the password: {error}"
    );
    let tls = RedisConfig {
        url: "rediss://127.0.0.1:6379".to_owned(),
        ..RedisConfig::default()
    };
    assert!(Redis::from_config(&tls).is_err());
}

#[tokio::test]
async fn without_a_connection_calls_fail_at_once_and_the_breaker_opens() {
    // A port nothing listens on: bound, then closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let redis = Redis::from_config(&config(format!("redis://{addr}"), 3))
        .expect("config")
        .expect("client");
    for _ in 0..3 {
        let error = redis.query::<String>(&::redis::cmd("PING")).await;
        assert_eq!(error, Err(RedisError::NotConnected));
    }
    for _ in 0..10 {
        let error = redis.query::<String>(&::redis::cmd("PING")).await;
        assert_eq!(error, Err(RedisError::BreakerOpen));
    }
    assert_eq!(redis.failures_of("not_connected"), 3);
    assert_eq!(redis.short_circuits(), 10);
    assert!(!redis.is_up());
}

#[tokio::test]
async fn a_server_that_never_answers_costs_breaker_failures_timeouts_then_nothing() {
    let (url, server) = hung_server(true).await;
    let redis = Arc::new(
        Redis::from_config(&config(url, 4))
            .expect("config")
            .expect("client"),
    );
    let stop = CancellationToken::new();
    let runner = {
        let (redis, stop) = (redis.clone(), stop.clone());
        tokio::spawn(async move { redis.run(stop).await })
    };
    // The connection opens: the server answers the client's first PING.
    until("the connection", || redis.is_up()).await;
    let calls = 40;
    let mut timeouts = 0;
    let mut short = 0;
    // Bounded, so that a call without its timeout fails the test instead of hanging it.
    let all = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..calls {
            match redis.query::<String>(&::redis::cmd("PING")).await {
                Err(RedisError::Timeout) => timeouts += 1,
                Err(RedisError::BreakerOpen) => short += 1,
                Err(RedisError::NotConnected) => {}
                other => panic!("unexpected answer {other:?}"),
            }
        }
    })
    .await;
    assert!(all.is_ok(), "calls waited on a server that never answers");
    // Only the failures that open the breaker waited out a timeout; every later call failed
    // at once (the cool-down is a minute, longer than the test).
    assert_eq!(timeouts, 4, "calls that waited out the command timeout");
    assert_eq!(short, calls - 4);
    assert_eq!(redis.failures_of("timeout"), 4);
    let mut text = String::new();
    redis.encode_metrics(&mut text);
    assert!(text.contains("switchyard_redis_breaker_open 1"), "{text}");
    assert!(
        text.contains("switchyard_redis_failures_total{kind=\"timeout\"} 4"),
        "{text}"
    );
    stop.cancel();
    runner.await.expect("runner");
    server.abort();
}

#[tokio::test]
async fn a_server_that_accepts_but_never_answers_is_not_taken_for_up() {
    let (url, server) = hung_server(false).await;
    let redis = Arc::new(
        Redis::from_config(&config(url, 2))
            .expect("config")
            .expect("client"),
    );
    let stop = CancellationToken::new();
    let runner = {
        let (redis, stop) = (redis.clone(), stop.clone());
        tokio::spawn(async move { redis.run(stop).await })
    };
    // Connecting takes the TCP connection and then waits for the PING's answer in vain.
    until("a failed connection attempt", || {
        let mut text = String::new();
        redis.encode_metrics(&mut text);
        text.contains("switchyard_redis_connects_total{outcome=\"failed\"} 1")
    })
    .await;
    assert!(!redis.is_up());
    for _ in 0..2 {
        let answer = redis.query::<String>(&::redis::cmd("PING")).await;
        assert_eq!(answer, Err(RedisError::NotConnected));
    }
    let answer = redis.query::<String>(&::redis::cmd("PING")).await;
    assert_eq!(answer, Err(RedisError::BreakerOpen));
    assert_eq!(redis.failures_of("timeout"), 0, "no call waited");
    stop.cancel();
    runner.await.expect("runner");
    server.abort();
}

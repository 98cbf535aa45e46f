use std::sync::atomic::AtomicUsize;

use super::*;
use crate::sync::BoxFuture;

fn config(f: impl FnOnce(&mut AuditConfig)) -> AuditConfig {
    let mut c = AuditConfig {
        enabled: true,
        ..AuditConfig::default()
    };
    f(&mut c);
    c
}

fn record(key: &str, bytes: usize) -> Outgoing {
    Outgoing {
        stream: Stream::Requests,
        key: key.to_owned(),
        payload: Bytes::from(vec![b'x'; bytes]),
    }
}

/// A sink whose deliveries never complete, counting the batches it was handed.
#[derive(Default)]
struct StuckSink {
    calls: AtomicUsize,
}

impl AuditSink for StuckSink {
    fn deliver(&self, _batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), DropReason>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }

    fn available(&self) -> bool {
        true
    }
}

/// A sink that keeps the size of every batch.
#[derive(Default)]
struct BatchSizes(Mutex<Vec<usize>>);

impl AuditSink for BatchSizes {
    fn deliver(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), DropReason>>> {
        lock(&self.0).push(batch.len());
        let n = batch.len();
        Box::pin(async move { vec![Ok(()); n] })
    }

    fn available(&self) -> bool {
        true
    }
}

#[test]
fn the_queue_is_bounded_in_records() {
    let auditor = Auditor::new(
        &config(|c| {
            c.queue_records_max = 3;
            c.batch_records_max = 3;
        }),
        "gw",
        Arc::new(MemorySink::new(10)),
    );
    let offered: Vec<bool> = (0..5)
        .map(|i| auditor.offer(record(&i.to_string(), 10)))
        .collect();
    assert_eq!(offered, [true, true, true, false, false]);
    assert_eq!(auditor.queued(), 3);
    assert_eq!(
        auditor.dropped_count(Stream::Requests, DropReason::QueueFull),
        2
    );
}

#[test]
fn the_queue_is_bounded_in_bytes_and_records_in_size() {
    let auditor = Auditor::new(
        &config(|c| {
            c.queue_bytes_max = 1_024;
            c.record_bytes_max = 1_024;
        }),
        "gw",
        Arc::new(MemorySink::new(10)),
    );
    for i in 0..4 {
        auditor.offer(record(&i.to_string(), 299));
    }
    assert_eq!(
        auditor.queued(),
        3,
        "three records of 300 bytes fit in 1024"
    );
    assert_eq!(
        auditor.dropped_count(Stream::Requests, DropReason::QueueFull),
        1
    );
    let auditor = Auditor::new(
        &config(|c| c.record_bytes_max = 1_024),
        "gw",
        Arc::new(MemorySink::new(10)),
    );
    assert!(!auditor.offer(record("k", 1_024)));
    assert!(auditor.offer(record("k", 1_023)));
    assert_eq!(
        auditor.dropped_count(Stream::Requests, DropReason::TooLarge),
        1
    );
}

#[test]
fn required_mode_refuses_from_three_quarters_full() {
    let sink = Arc::new(MemorySink::new(10));
    let auditor = Auditor::new(
        &config(|c| {
            c.queue_records_max = 8;
            c.batch_records_max = 8;
        }),
        "gw",
        sink.clone(),
    );
    for i in 0..6 {
        auditor.offer(record(&i.to_string(), 1));
    }
    assert!(auditor.can_audit(), "6 of 8 is three quarters");
    auditor.offer(record("7", 1));
    assert!(!auditor.can_audit(), "7 of 8 is more");
    let empty = Auditor::new(&config(|_| {}), "gw", sink.clone());
    assert!(empty.can_audit());
    sink.set_available(false);
    assert!(!empty.can_audit());
}

#[tokio::test]
async fn batches_are_bounded_and_every_record_is_counted() {
    let sink = Arc::new(BatchSizes::default());
    let auditor = Arc::new(Auditor::new(
        &config(|c| c.batch_records_max = 3),
        "gw",
        sink.clone(),
    ));
    for i in 0..7 {
        auditor.offer(record(&i.to_string(), 10));
    }
    let stop = CancellationToken::new();
    stop.cancel();
    auditor.run(stop).await;
    let sizes = lock(&sink.0).clone();
    assert!(sizes.iter().all(|n| *n <= 3), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 7);
    assert_eq!(auditor.delivered(Stream::Requests), 7);
    assert!(
        !auditor.offer(record("late", 10)),
        "no record queued after the stop"
    );
    assert_eq!(
        auditor.dropped_count(Stream::Requests, DropReason::Shutdown),
        1
    );
}

#[tokio::test]
async fn failed_deliveries_are_counted_by_the_sinks_reason() {
    let sink = Arc::new(MemorySink::new(10));
    sink.set_available(false);
    let auditor = Auditor::new(&config(|_| {}), "gw", sink.clone());
    for i in 0..4 {
        auditor.offer(record(&i.to_string(), 10));
    }
    let stop = CancellationToken::new();
    stop.cancel();
    auditor.run(stop).await;
    assert_eq!(
        auditor.dropped_count(Stream::Requests, DropReason::Unavailable),
        4
    );
    assert_eq!(auditor.delivered(Stream::Requests), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stop_flushes_within_its_bound_and_counts_the_rest_as_shutdown() {
    let sink = Arc::new(StuckSink::default());
    let auditor = Arc::new(Auditor::new(
        &config(|c| c.batch_records_max = 2),
        "gw",
        sink.clone(),
    ));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (auditor, stop) = (auditor.clone(), stop.clone());
        async move { auditor.run(stop).await }
    });
    for i in 0..5 {
        assert!(
            auditor.offer(record(&i.to_string(), 10)),
            "offer never waits"
        );
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while sink.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the drain task hands a batch to the sink");
    let stopped = Instant::now();
    stop.cancel();
    tokio::time::timeout(FLUSH_TIMEOUT * 2, task)
        .await
        .expect("the flush ends within its bound")
        .unwrap();
    assert!(
        stopped.elapsed() >= FLUSH_TIMEOUT,
        "the flush waits its bound for the sink"
    );
    assert_eq!(
        auditor.dropped_count(Stream::Requests, DropReason::Shutdown),
        5
    );
    assert_eq!(auditor.queued(), 0);
}

#[test]
fn the_metrics_name_every_stream_and_reason() {
    let auditor = Auditor::new(
        &config(|c| c.queue_records_max = 1),
        "gw",
        Arc::new(MemorySink::new(1)),
    );
    auditor.offer(record("a", 1));
    auditor.offer(record("b", 1));
    auditor.count_refused();
    let mut out = String::new();
    auditor.encode_metrics(&mut out);
    for line in [
        "switchyard_audit_records_total{stream=\"registry\"} 0",
        "switchyard_audit_dropped_total{stream=\"requests\",reason=\"queue_full\"} 1",
        "switchyard_audit_dropped_total{stream=\"registry\",reason=\"shutdown\"} 0",
        "switchyard_audit_sampled_out_total 0",
        "switchyard_audit_queue_records 1",
        "switchyard_audit_sink_available 1",
        "switchyard_audit_refused_total 1",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
    }
}

#[test]
fn applied_renewals_are_recorded_only_when_asked_for_and_refused_ones_always() {
    let facts = |action| RegistryFacts {
        time_unix_ms: 1,
        action,
        service: "s",
        instance_id: "i",
        addr: "10.0.0.1:80",
        via: "grpc",
        client_addr: None,
        identity: None,
        error_code: None,
        stamp: Some("1.0.gw".to_owned()),
        lease_ms: 10_000,
    };
    for (renewals, queued) in [(false, 2), (true, 3)] {
        let auditor = Auditor::new(
            &config(|c| c.registry_renewals = renewals),
            "gw",
            Arc::new(MemorySink::new(10)),
        );
        auditor.registry(facts(RegistryAction::Renew));
        auditor.registry(facts(RegistryAction::Register));
        auditor.registry(RegistryFacts {
            error_code: Some("forbidden".to_owned()),
            ..facts(RegistryAction::Renew)
        });
        assert_eq!(auditor.queued(), queued, "registry_renewals = {renewals}");
    }
}

"""A cluster of gateway processes sharing one registry through a real Kafka broker: a
registration made through one gateway reaches the others, a killed gateway catches up before
it reports ready, nothing acknowledged is lost while the broker restarts, and a deregistered
instance stays gone after everything restarts."""

from __future__ import annotations

import itertools
import signal
import uuid

import pytest
import requests

from harness import (
    HTTP_TIMEOUT_S,
    Gateway,
    Launcher,
    control_headers,
    start_gateway,
    start_rust_service,
    wait_until,
)

_topics = itertools.count()


def fresh_topic() -> str:
    """Each test gets its own topic, so tests cannot see each other's registrations."""
    return f"switchyard-e2e-{next(_topics)}-{uuid.uuid4().hex[:8]}"


def start_cluster(launcher: Launcher, kafka, topic: str, count: int = 3, *settings: str) -> list[Gateway]:
    return [
        start_gateway(launcher, f"gw-{i}", node_id=f"gw-{i}", extra=kafka.gateway_args(topic, *settings))
        for i in range(1, count + 1)
    ]


def put(gw: Gateway, service: str, instance: str, addr: str = "127.0.0.1:9") -> requests.Response:
    return requests.put(
        f"{gw.control}/v1/services/{service}/instances/{instance}",
        json={"addr": addr, "lease_ms": 600_000},
        headers=control_headers(),
        timeout=HTTP_TIMEOUT_S,
    )


def sample(metrics: str, series: str) -> float:
    """The value of one series in a Prometheus text exposition."""
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series} in the metrics")


def cluster_status(gw: Gateway) -> dict:
    return requests.get(f"{gw.control}/v1/cluster", timeout=HTTP_TIMEOUT_S).json()


def wait_ready(gw: Gateway, timeout_s: float = 60.0) -> None:
    wait_until(
        lambda: requests.get(f"{gw.public}/readyz", timeout=HTTP_TIMEOUT_S).status_code == 200,
        f"{gw.control} to be ready",
        timeout_s,
    )


def wait_converged(gateways: list[Gateway], timeout_s: float = 60.0) -> str:
    """Waits until every gateway has the same registry digest; returns it."""

    def same() -> str | None:
        digests = {cluster_status(gw)["registry_digest"] for gw in gateways}
        return digests.pop() if len(digests) == 1 else None

    return wait_until(same, "the gateways to converge on one registry digest", timeout_s)


def test_register_through_one_gateway_call_through_another(launcher: Launcher, kafka) -> None:
    gw1, _, gw3 = start_cluster(launcher, kafka, fresh_topic())
    for gw in (gw1, gw3):
        wait_ready(gw)
    start_rust_service(launcher, gw1, "orders", "orders-1")
    gw3.wait_live("orders", "orders-1", timeout_s=30)
    resp = requests.get(f"{gw3.public}/orders/hello", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-served-by"] == "orders-1"
    # Events carry their origin: the entry at gw3 was stamped by gw1.
    assert gw3.instances("orders")["orders-1"]["stamp"]["node_id"] == "gw-1"


def test_a_killed_gateway_catches_up_before_it_reports_ready(launcher: Launcher, kafka) -> None:
    topic = fresh_topic()
    gw1, gw2, gw3 = start_cluster(launcher, kafka, topic)
    for i in range(40):
        assert put(gw1, "catalog", f"c-{i}").status_code == 200
    wait_converged([gw1, gw2, gw3])

    gw2.proc.send_signal(signal.SIGKILL)
    gw2.proc.wait()
    for i in range(40, 70):
        assert put(gw3, "catalog", f"c-{i}").status_code == 200

    restarted = start_gateway(launcher, "gw-2-restarted", node_id="gw-2", extra=kafka.gateway_args(topic))
    wait_ready(restarted)
    # Readiness means caught up to the high-water mark seen at start: everything registered
    # before the restart is there at the first 200 from /readyz, without waiting further.
    status = cluster_status(restarted)
    assert status["catch_up_target"] >= 70, status
    assert status["bus_position"] >= status["catch_up_target"], status
    assert len(restarted.live_ids("catalog")) == 70
    assert status["registry_digest"] == cluster_status(gw1)["registry_digest"]


def test_nothing_acknowledged_is_lost_while_the_broker_restarts(launcher: Launcher, kafka) -> None:
    if not kafka.restartable:
        pytest.skip("KAFKA_BOOTSTRAP names an external broker, which this test cannot restart")
    gateways = start_cluster(
        launcher, kafka, fresh_topic(), 3, "bus.publish_wait_ms=300", "bus.kafka.message_timeout_ms=2000"
    )
    for gw in gateways:
        wait_ready(gw)
    acknowledged: set[str] = set()
    statuses: dict[str, int] = {}

    def register(n: int) -> None:
        name = f"r-{n}"
        resp = put(gateways[n % 3], "ledger", name)
        statuses[name] = resp.status_code
        if resp.status_code in (200, 202):
            acknowledged.add(name)

    counter = itertools.count()
    for _ in range(10):
        register(next(counter))
    kafka.stop()
    try:
        for _ in range(10):
            register(next(counter))
    finally:
        kafka.start()
    for _ in range(10):
        register(next(counter))

    during = [statuses[f"r-{n}"] for n in range(10, 20)]
    assert all(s == 202 for s in during), f"registrations while Kafka was down: {during}"
    assert len(acknowledged) == 30, statuses
    for gw in gateways:
        wait_until(
            lambda gw=gw: acknowledged <= gw.live_ids("ledger"),
            f"every acknowledged registration on {gw.control}",
            timeout_s=90,
        )
    wait_converged(gateways)
    assert all(cluster_status(gw)["outbox_pending"] == 0 for gw in gateways)


def test_a_deregistered_instance_stays_gone_after_everything_restarts(launcher: Launcher, kafka) -> None:
    topic = fresh_topic()
    gw1, gw2, gw3 = start_cluster(launcher, kafka, topic)
    assert put(gw1, "billing", "keep").status_code == 200
    assert put(gw1, "billing", "gone").status_code == 200
    # Deregister through another gateway once the registration has reached it, so that
    # `existed` is about the instance and not about replication latency.
    gw2.wait_live("billing", "gone", timeout_s=30)
    resp = requests.delete(
        f"{gw2.control}/v1/services/billing/instances/gone",
        headers=control_headers(),
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 200 and resp.json()["existed"] is True, resp.text
    wait_converged([gw1, gw2, gw3])
    for gw in (gw1, gw2, gw3):
        gw.proc.stop()

    fresh = start_cluster(launcher, kafka, topic)
    for gw in fresh:
        wait_ready(gw)
        assert set(gw.instances("billing")) == {"keep"}, gw.instances("billing")
    resp = requests.get(f"{fresh[0].public}/billing/x", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 503  # "keep" is registered at 127.0.0.1:9, where nothing listens


def test_convergence_benchmark_smoke(launcher: Launcher, kafka) -> None:
    """The benchmark (testbeds/bench/convergence.sh) runs end to end; times are reported,
    not asserted."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from convergence import measure

    report = measure(launcher, kafka, registrations=10)
    assert report["registrations"] == 10
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]


def test_a_tombstone_ends_with_a_delete_marker_on_the_real_topic(launcher: Launcher, kafka) -> None:
    """Once no older registration can be live (lease bound + drift bound, 2 s here), the
    deregistration's own gateway writes a Kafka delete marker (a null value with the entry it
    deletes in a header); every gateway, and one started afterwards, drops the entry."""
    topic = fresh_topic()
    short = (
        "registry.lease_min_ms=100",
        "registry.lease_default_ms=1000",
        "registry.lease_max_ms=1000",
        "registry.clock_drift_max_ms=1000",
        "registry.housekeeping_interval_ms=200",
    )
    gw1, gw2 = start_cluster(launcher, kafka, topic, 2, *short)
    resp = requests.put(
        f"{gw1.control}/v1/services/billing/instances/gone",
        json={"addr": "127.0.0.1:9", "lease_ms": 1000},
        headers=control_headers(),
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 200, resp.text
    gw2.wait_live("billing", "gone", timeout_s=30)
    resp = requests.delete(
        f"{gw2.control}/v1/services/billing/instances/gone",
        headers=control_headers(),
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 200, resp.text
    for gw in (gw1, gw2):
        wait_until(
            lambda gw=gw: cluster_status(gw)["registry_entries"] == 0,
            f"{gw.control} to drop the collected entry",
            30,
        )
    metrics = requests.get(f"{gw2.control}/metrics", timeout=HTTP_TIMEOUT_S).text
    # The marker's own gateway wrote it (maybe twice, if a round came before it read it back).
    assert sample(metrics, 'switchyard_registry_changes_total{op="collect"}') >= 1, metrics
    assert sample(metrics, "switchyard_registry_entries_collected_total") == 1, metrics
    # A gateway that starts now reads the registration, the tombstone and the marker: nothing.
    late = start_gateway(launcher, "gw-3", node_id="gw-3", extra=kafka.gateway_args(topic, *short))
    wait_ready(late)
    status = cluster_status(late)
    assert status["registry_entries"] == 0, status
    assert status["events_rejected"] == 0, status


def test_changes_answered_202_while_kafka_is_down_reach_the_topic_at_sigterm(launcher: Launcher, kafka) -> None:
    """A gateway stopped with SIGTERM while Kafka is down keeps publishing what it answered 202
    within its drain timeout: once Kafka is back, the changes are on the topic, and a gateway
    started afterwards reads them."""
    if not kafka.restartable:
        pytest.skip("KAFKA_BOOTSTRAP names an external broker, which this test cannot restart")
    topic = fresh_topic()
    settings = (
        "bus.publish_wait_ms=300",
        "bus.kafka.message_timeout_ms=2000",
        "shutdown.drain_timeout_ms=120000",
    )
    (gw,) = start_cluster(launcher, kafka, topic, 1, *settings)
    assert put(gw, "ledger", "gone").status_code == 200
    kafka.stop()
    try:
        resp = requests.delete(
            f"{gw.control}/v1/services/ledger/instances/gone",
            headers=control_headers(),
            timeout=HTTP_TIMEOUT_S,
        )
        assert resp.status_code == 202, resp.text
        assert put(gw, "ledger", "new").status_code == 202
        gw.proc.send_signal(signal.SIGTERM)
        # The gateway is draining, its outbox retrying; nothing is lost yet.
        gw.proc.wait_for_log(r"registry change not published|cannot publish registry event", 1, 30)
    finally:
        kafka.start()
    assert gw.proc.wait(150) == 0, gw.proc.log_tail()
    log = gw.proc.log_text()
    assert "outbox flushed" in log, gw.proc.log_tail()
    assert "registry change not published before shutdown" not in log, gw.proc.log_tail()
    late = start_gateway(launcher, "gw-late", node_id="gw-late", extra=kafka.gateway_args(topic, *settings))
    wait_ready(late)
    assert late.live_ids("ledger") == {"new"}, late.instances("ledger")
    assert late.instances("ledger").keys() == {"new"}, late.instances("ledger")

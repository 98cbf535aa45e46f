"""Scenario: stop Kafka under load and start it again. Requests keep flowing with the registry
the gateways had (no error at all), registrations made meanwhile are answered 202, and once
Kafka is back they appear on every gateway and the gateways agree on one registry."""

from __future__ import annotations

import time

import requests
from support import (
    check_audit,
    Cluster,
    answered,
    control_headers,
    ensure_running,
    failures,
    record_results,
    wait_until,
    window,
)

RATE = 100.0
PATHS = ["/rust-sample/hello", "/python-sample/hello"]
SERVICE = "registered-in-outage"
IDS = [f"outage-{n}" for n in range(1, 4)]
TIMEOUT = (2.0, 10.0)
# Kafka stays down at least this long, counted in answered requests rather than waited for.
OUTAGE_REQUESTS_MIN = int(RATE * 5)
CONVERGE_MAX_S = 30.0


def put(cluster: Cluster, instance: str) -> requests.Response:
    """Registers through HAProxy's control frontend, so each goes to whichever gateway."""
    return requests.put(
        f"{cluster.control}/v1/services/{SERVICE}/instances/{instance}",
        json={"addr": "127.0.0.1:9", "lease_ms": 600_000},
        headers=control_headers(),
        timeout=TIMEOUT,
    )


def test_stop_and_restart_kafka_under_load(healthy: Cluster, load_factory) -> None:
    cluster = healthy
    load = load_factory("kafka-outage", PATHS, RATE, 120)
    statuses: dict[str, int] = {}
    try:
        wait_until(lambda: load.count("status:200") >= 50, "answers through HAProxy", 15)
        stop_began_at = time.time()
        cluster.command("stop", "kafka")
        stopped_at = time.time()
        for instance in IDS:
            resp = put(cluster, instance)
            statuses[instance] = resp.status_code
        # Each gateway that took one applied it at once, and only it lists it until Kafka is
        # back: the other two have not seen it.
        wait_until(
            lambda: load.count("sent", since_unix=stopped_at) >= OUTAGE_REQUESTS_MIN,
            f"{OUTAGE_REQUESTS_MIN} requests sent while Kafka is down",
            OUTAGE_REQUESTS_MIN / RATE + 15,
        )
        ready_during = {gw.name: gw.ready() for gw in cluster.gateways}
        outbox_during = {gw.name: (gw.cluster() or {}).get("outbox_pending") for gw in cluster.gateways}
        start_began_at = time.time()
        cluster.command("start", "kafka")
        kafka_back_at = time.time()

        def everywhere() -> bool:
            return all(
                set(IDS) <= {i for i, s in (gw.states(SERVICE) or {}).items() if s == "live"}
                for gw in cluster.gateways
            )

        try:
            wait_until(everywhere, f"{IDS} live on every gateway", CONVERGE_MAX_S)
            visible_at = time.time()
            wait_until(
                lambda: len({(gw.cluster() or {}).get("registry_digest") for gw in cluster.gateways}) == 1
                and all((gw.cluster() or {}).get("outbox_pending") == 0 for gw in cluster.gateways),
                "one registry digest and empty outboxes on every gateway",
                CONVERGE_MAX_S,
            )
            converged_at = time.time()
        except AssertionError as err:
            seen = {gw.name: (gw.states(SERVICE), gw.cluster()) for gw in cluster.gateways}
            raise AssertionError(f"{err}; each gateway's view: {seen}") from None
    finally:
        ensure_running(cluster, "kafka")
        report = load.stop()
        for instance in IDS:
            requests.delete(
                f"{cluster.control}/v1/services/{SERVICE}/instances/{instance}",
                headers=control_headers(),
                timeout=TIMEOUT,
            )

    outage = window(report, stop_began_at, kafka_back_at)
    whole_run = window(report, 0, float("inf"))
    figures = {
        "rate_per_s": RATE,
        "kafka_stop_s": round(stopped_at - stop_began_at, 3),
        "kafka_start_s": round(kafka_back_at - start_began_at, 3),
        "outage_s": round(kafka_back_at - stop_began_at, 3),
        "requests_during_outage": answered(outage),
        "non_2xx_during_outage": failures(outage),
        "non_2xx_whole_run": failures(whole_run),
        "registrations_during_outage": statuses,
        "gateways_ready_during_outage": ready_during,
        "outbox_pending_during_outage": outbox_during,
        "kafka_back_to_visible_everywhere_s": round(visible_at - kafka_back_at, 3),
        "kafka_back_to_converged_s": round(converged_at - kafka_back_at, 3),
    }
    record_results("kafka_outage", figures)

    # Routing never waits for Kafka: not one request failed.
    assert answered(outage) >= OUTAGE_REQUESTS_MIN, figures
    assert failures(whole_run) == 0, (figures, report["error_sample"][:5])
    # Registrations were taken while Kafka was down: applied locally, answered 202 (not
    # published yet), queued in the outbox.
    assert statuses == {i: 202 for i in IDS}, statuses
    assert sum(n or 0 for n in outbox_during.values()) >= len(IDS), outbox_during
    # A gateway that was ready stays ready: HAProxy keeps sending to all three.
    assert all(ready_during.values()), ready_during
    # Every request a gateway answered is audited once (testbeds/cluster/tests/support.py).
    check_audit(cluster, load, report, "kafka_outage")

"""Scenario: kill -9 one gateway under load. HAProxy marks it DOWN within its check interval,
retries and redispatch keep client errors near zero, and the gateway restarts, catches up
with the registry on Kafka and rejoins: HAProxy marks it UP and requests reach it again."""

from __future__ import annotations

import time

from support import (
    check_audit,
    Cluster,
    answered,
    ensure_running,
    failures,
    record_results,
    scrape,
    metric_sum,
    wait_until,
    window,
)

RATE = 100.0  # requests per second through HAProxy, two paths in turn
PATHS = ["/rust-sample/hello", "/python-sample/hello"]
VICTIM = "gw-2"
SERVER = "gw2"
# HAProxy: inter 500 ms, fastinter 250 ms, fall 2, timeout check 500 ms. A refused check fails
# at once, so DOWN comes at most 500 + 250 ms after the kill; the bound leaves room for a busy
# machine.
DETECT_MAX_S = 2.0
# Requests that may fail during the switch. Connection failures are retried on another
# gateway (retries 3, option redispatch 1) and a GET the dead gateway never answered is
# replayed (retry-on empty-response), so the expected figure is 0.
ERRORS_MAX = 3
REJOIN_MAX_S = 20.0


def backend_states(cluster: Cluster, server: str) -> dict[str, str]:
    return {backend: state for (backend, srv), state in cluster.server_states().items() if srv == server}


def test_kill_one_gateway_under_load(healthy: Cluster, load_factory) -> None:
    cluster = healthy
    victim = cluster.gateway(VICTIM)
    load = load_factory("gateway-failover", PATHS, RATE, 90)
    try:
        # The load reaches every gateway before anything breaks.
        wait_until(lambda: load.count(f"gateway:{SERVER}") >= 20, f"requests answered by {SERVER}", 15)

        killed_at = time.time()
        cluster.command("kill", VICTIM)
        # Time to detect: until HAProxy marks it DOWN in every backend that checks it.
        wait_until(
            lambda: all(s.startswith("DOWN") for s in backend_states(cluster, SERVER).values()),
            f"HAProxy to mark {SERVER} DOWN",
            10,
            interval_s=0.02,
        )
        detected_at = time.time()
        # Load goes on with two gateways for a while before the restart.
        wait_until(
            lambda: load.count("status:200", since_unix=detected_at + 1) >= RATE,
            "a second of answers from the two gateways left",
            10,
        )

        restarted_at = time.time()
        cluster.command("start", VICTIM)
        wait_until(victim.ready, f"{VICTIM} to answer /readyz 200 (caught up)", REJOIN_MAX_S, 0.02)
        ready_at = time.time()
        wait_until(
            lambda: all(s == "UP" for s in backend_states(cluster, SERVER).values()),
            f"HAProxy to mark {SERVER} UP again",
            REJOIN_MAX_S,
            interval_s=0.02,
        )
        up_at = time.time()
        # Requests reach it again: seen by the load generator, and counted by the restarted
        # gateway itself.
        wait_until(
            lambda: load.count(f"gateway:{SERVER}", since_unix=up_at) >= 20,
            f"requests answered by {SERVER} after it rejoined",
            15,
        )
        served_again_at = time.time()
        metrics = scrape(victim.control)
        forwarded = sum(
            metric_sum(metrics, "switchyard_http_requests_total", front="rest", service=s.strip("/").split("/")[0])
            for s in PATHS
        )
        assert forwarded >= 20, f"{VICTIM} counted {forwarded} forwarded requests since its restart"
    finally:
        report = load.stop()
        ensure_running(cluster, VICTIM)

    during = window(report, killed_at, detected_at + 1.0)
    whole_run = window(report, 0, float("inf"))
    # Whole seconds between the kill and the restart: gw2 answered nothing.
    dead_window = window(report, killed_at, restarted_at, inside=True)
    figures = {
        "rate_per_s": RATE,
        "time_to_detect_s": round(detected_at - killed_at, 3),
        "requests_kill_to_detect_plus_1s": answered(during) + sum(
            n for k, n in during.items() if k.startswith("error:")
        ),
        "errors_kill_to_detect_plus_1s": failures(during),
        "errors_whole_run": failures(whole_run),
        "requests_whole_run": whole_run["sent"],
        "restart_to_ready_s": round(ready_at - restarted_at, 3),
        "restart_to_haproxy_up_s": round(up_at - restarted_at, 3),
        "kill_to_serving_again_s": round(served_again_at - killed_at, 3),
        "max_lag_ms": report["max_lag_ms"],
        "error_sample": report["error_sample"][:5],
    }
    record_results("gateway_failover", figures)

    assert figures["time_to_detect_s"] <= DETECT_MAX_S, figures
    assert failures(whole_run) <= ERRORS_MAX, figures
    assert dead_window["sent"] > 0 and dead_window[f"gateway:{SERVER}"] == 0, dead_window
    # The other two took the whole load while gw2 was away.
    assert dead_window["gateway:gw1"] > 0 and dead_window["gateway:gw3"] > 0, dead_window
    assert figures["restart_to_haproxy_up_s"] <= REJOIN_MAX_S, figures
    # Every request a gateway answered is audited once (testbeds/cluster/tests/support.py).
    check_audit(cluster, load, report, "gateway_failover", killed=(VICTIM,))

"""Scenario: kill every instance of a service under load. Its callers get 503 at once, the
other service is untouched, the gateways evict it cluster-wide after upstream.evict_after_ms,
and once the instances restart they are live again on every gateway and answer again."""

from __future__ import annotations

import time

from support import Cluster, answered, check_audit, ensure_running, failures, record_results, wait_until, window

RATE = 100.0
VICTIM = "python-sample"
BYSTANDER = "rust-sample"
PATHS = [f"/{VICTIM}/hello", f"/{BYSTANDER}/hello"]
# The gateway's answers when no instance can be reached: each untried instance refused the
# connection (upstream_connect_failed), or none is left to try, every one ejected after a
# failure or evicted (no_live_instance).
CODES_503 = {"upstream_connect_failed", "no_live_instance"}
# A gateway evicts once every instance has failed to connect for evict_after_ms (2 s in the
# testbed); failures are seen when a request tries an instance, and an ejected instance is
# tried again after 1 s, then 2 s: about 3 s in practice.
EVICT_MAX_S = 10.0
# What a request caught by the kill itself may get (see the test).
AT_KILL = {502: "upstream_reset"}
AT_KILL_STATUSES = {f"status:{s}" for s in AT_KILL}
BACK_MAX_S = 20.0


def test_kill_every_instance_of_a_service(healthy: Cluster, load_factory) -> None:
    cluster = healthy
    ids = cluster.services[VICTIM]
    load = load_factory("service-eviction", PATHS, RATE, 90)
    evicted_on: dict[str, float] = {}
    try:
        wait_until(
            lambda: load.count("status:200", path=PATHS[0]) >= 20, f"answers from {VICTIM}", 15
        )
        kill_began_at = time.time()
        for instance in ids:
            cluster.command("kill", instance)
        killed_at = time.time()

        # Callers get 503 from the gateways (not HAProxy errors: the gateways are fine).
        wait_until(
            lambda: load.count("status:503", path=PATHS[0], since_unix=kill_began_at) > 0,
            f"a 503 for {VICTIM}",
            10,
        )
        first_503_at = time.time()

        # Time to eviction, as each gateway lists it.
        def all_evicted() -> bool:
            for gw in cluster.gateways:
                if gw.name not in evicted_on:
                    states = gw.states(VICTIM) or {}
                    if all(states.get(i) == "evicted" for i in ids):
                        evicted_on[gw.name] = time.time()
            return len(evicted_on) == len(cluster.gateways)

        wait_until(all_evicted, f"{VICTIM} evicted on every gateway", 30, interval_s=0.02)
        # The eviction went through Kafka: the gateways agree on one registry.
        wait_until(
            lambda: len({(gw.cluster() or {}).get("registry_digest") for gw in cluster.gateways}) == 1,
            "one registry digest on every gateway",
            15,
        )

        restarted_at = time.time()
        for instance in ids:
            cluster.command("start", instance)
        cluster.wait_live(VICTIM, ids, BACK_MAX_S)
        back_at = time.time()
        wait_until(
            lambda: load.count("status:200", path=PATHS[0], since_unix=back_at) >= 10,
            f"answers from {VICTIM} after the restart",
            15,
        )
        answering_at = time.time()
    finally:
        report = load.stop()
        ensure_running(cluster, *ids)

    bystander = window(report, 0, float("inf"), path=PATHS[1])
    victim_all = window(report, kill_began_at, answering_at, path=PATHS[0])
    # A request in flight to an instance when it is killed, or sent on the gateway's HTTP/2
    # connection to it before the gateway sees the connection die, breaks with the connection:
    # 502 upstream_reset, not retried (the service may have run it). At most one per gateway
    # and killed instance, right at the kill; reported, and bounded here.
    at_kill = [
        e for e in report["error_sample"]
        if e["path"] == PATHS[0] and e.get("status") != 503
    ]
    codes = {k.removeprefix("code:") for k in victim_all if k.startswith("code:")}
    figures = {
        "rate_per_s": RATE,
        "evict_after_ms": cluster.info["evict_after_ms"],
        "kill_duration_s": round(killed_at - kill_began_at, 3),
        "kill_to_first_503_s": round(first_503_at - kill_began_at, 3),
        "kill_to_evicted_first_gateway_s": round(min(evicted_on.values()) - kill_began_at, 3),
        "kill_to_evicted_every_gateway_s": round(max(evicted_on.values()) - kill_began_at, 3),
        "restart_to_live_every_gateway_s": round(back_at - restarted_at, 3),
        "restart_to_answering_s": round(answering_at - restarted_at, 3),
        f"{VICTIM}_non_2xx": failures(victim_all),
        f"{VICTIM}_error_codes": sorted(codes),
        f"{VICTIM}_non_503_at_kill": [(e["status"], e["code"]) for e in at_kill],
        f"{BYSTANDER}_requests": answered(bystander),
        f"{BYSTANDER}_errors": failures(bystander),
    }
    record_results("service_eviction", figures)

    # While the service was gone, its callers got 503 (apart from the requests the kill
    # itself caught, 502 upstream_reset): no timeout, and no transport error from HAProxy.
    failed = {k for k in victim_all if k.startswith(("status:", "error:")) and k != "status:200"}
    assert "status:503" in failed and failed <= {"status:503"} | AT_KILL_STATUSES, victim_all
    assert codes - set(AT_KILL.values()) <= CODES_503 and "no_live_instance" in codes, codes
    assert len(at_kill) <= len(cluster.gateways) * len(ids), at_kill
    for error in at_kill:
        assert AT_KILL.get(error["status"]) == error["code"], error
        assert kill_began_at - 0.5 <= error["unix"] <= killed_at + 1.0, (error, kill_began_at, killed_at)
    # The other service never noticed.
    assert failures(bystander) == 0, bystander
    assert figures["kill_to_evicted_every_gateway_s"] <= EVICT_MAX_S, figures
    # Eviction waits for evict_after_ms of failures: not earlier.
    assert figures["kill_to_evicted_first_gateway_s"] >= cluster.info["evict_after_ms"] / 1000, figures
    # Every request a gateway answered is audited once (testbeds/cluster/tests/support.py).
    check_audit(cluster, load, report, "service_eviction")

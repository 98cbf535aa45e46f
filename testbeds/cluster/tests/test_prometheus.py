"""A real Prometheus (Debian's) scrapes the three gateways' /metrics and HAProxy's; queried
through its HTTP API, the series agree with what the load generator sent through HAProxy and
with the registry the gateways list."""

from __future__ import annotations

import time

import requests
from support import Cluster, answered, check_audit, control_headers, record_results, wait_until, window

RATE = 100.0
DURATION_S = 5.0
PATHS = ["/rust-sample/hello", "/python-sample/hello"]
TIMEOUT = (2.0, 10.0)


def query(cluster: Cluster, promql: str) -> list[dict]:
    resp = requests.get(f"{cluster.prometheus}/api/v1/query", params={"query": promql}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def by_label(result: list[dict], label: str) -> dict[str, float]:
    return {series["metric"].get(label, ""): float(series["value"][1]) for series in result}


def scalar(result: list[dict]) -> float | None:
    return float(result[0]["value"][1]) if result else None


def last_scrape(cluster: Cluster) -> float:
    """The oldest of the latest scrapes of the gateways and HAProxy, as a unix time."""
    return scalar(query(cluster, "min(timestamp(up))")) or 0.0


def requests_by_service(cluster: Cluster) -> dict[str, float]:
    return by_label(
        query(cluster, 'sum by (service) (switchyard_http_requests_total{front="rest"})'), "service"
    )


def test_prometheus_sees_what_the_load_sent(healthy: Cluster, load_factory) -> None:
    cluster = healthy
    wait_until(
        lambda: by_label(query(cluster, 'up{job="switchyard"}'), "node") == {"gw-1": 1.0, "gw-2": 1.0, "gw-3": 1.0},
        "Prometheus to scrape the three gateways",
        30,
    )
    wait_until(lambda: scalar(query(cluster, 'up{job="haproxy"}')) == 1.0, "Prometheus to scrape HAProxy", 30)

    # Counts before: from a scrape taken after any earlier traffic ended.
    quiet_from = time.time()
    wait_until(lambda: last_scrape(cluster) > quiet_from, "a scrape of every target", 10)
    before = requests_by_service(cluster)
    haproxy_before = scalar(query(cluster, 'sum(haproxy_backend_http_responses_total{proxy="public_rest"})')) or 0.0

    load = load_factory("prometheus", PATHS, RATE, DURATION_S)
    report = load.wait()
    ended = time.time()
    wait_until(lambda: last_scrape(cluster) > ended, "a scrape after the load ended", 10)
    after = requests_by_service(cluster)
    haproxy_after = scalar(query(cluster, 'sum(haproxy_backend_http_responses_total{proxy="public_rest"})')) or 0.0

    sent = {p.strip("/").split("/")[0]: answered(window(report, 0, float("inf"), path=p)) for p in PATHS}
    counted = {s: after.get(s, 0.0) - before.get(s, 0.0) for s in sent}
    by_status = by_label(
        query(cluster, 'sum by (status) (switchyard_http_requests_total{service="rust-sample"})'), "status"
    )
    p99 = scalar(query(
        cluster,
        'histogram_quantile(0.99, sum by (le) (rate(switchyard_http_request_duration_seconds_bucket{service="rust-sample"}[30s])))',
    ))
    instances = by_label(query(cluster, "switchyard_registry_instances"), "node")
    ready = by_label(query(cluster, "switchyard_ready"), "node")
    caught_up = by_label(query(cluster, "switchyard_caught_up"), "node")
    lag = by_label(query(cluster, "switchyard_bus_lag_events"), "node")
    live = sum(
        1
        for service in requests.get(
            f"{cluster.control}/v1/services", headers=control_headers(), timeout=TIMEOUT
        ).json()["services"]
        for instance in service["instances"]
        if instance["state"] == "live"
    )
    figures = {
        "sent_through_haproxy": sent,
        "counted_by_prometheus": counted,
        "haproxy_public_rest_responses": haproxy_after - haproxy_before,
        "rust_sample_p99_s": p99,
        "registry_instances": instances,
        "live_instances_listed": live,
    }
    record_results("prometheus", figures)

    # Every request the load generator got an answer for was counted once, by the gateway
    # that served it, and Prometheus has the sum.
    for service, n in sent.items():
        assert n >= RATE * DURATION_S / len(PATHS) * 0.9, (service, n)
        assert counted[service] == n, figures
    assert haproxy_after - haproxy_before == sum(sent.values()), figures
    assert by_status.get("200", 0) > 0 and set(by_status) >= {"200"}, by_status
    assert p99 is not None and 0 < p99 <= 1.0, p99
    # The registry as Prometheus sees it: the same number of live instances on every node.
    assert instances == {"gw-1": live, "gw-2": live, "gw-3": live}, figures
    assert ready == caught_up == {"gw-1": 1.0, "gw-2": 1.0, "gw-3": 1.0}, (ready, caught_up)
    assert all(v == 0 for v in lag.values()), lag
    # Every request a gateway answered is audited once (testbeds/cluster/tests/support.py).
    check_audit(cluster, load, report, "prometheus")

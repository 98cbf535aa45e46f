"""Cluster-wide rate limits across three gateway processes sharing a real redis-server: the
total admitted over a bounded window is within 10 % of the limit; with Redis stopped, each
gateway admits its share (the limit divided by the live gateways it last counted), so the
total stays within the documented bound, and nothing answers with a 5xx.

The limit is keyed by service, so the clients' addresses do not matter: every request to the
service, through any gateway, takes from one count. The redis-server is the one the
`redis_server` fixture starts for this test (redis_server.py); the test kills it.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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
from redis_server import RedisServer

SERVICE = "limited"
RATE_PER_S = 40
BURST = 30
GATEWAYS = 3
WINDOW_S = 3.0
# Each client's requests in one window, at most (a bound on the load loop besides its time).
REQUESTS_PER_CLIENT_MAX = 20_000

RULES = f"""
[[rate_limits]]
name = "cluster"
services = ["{SERVICE}"]
key = "service"
rate = {RATE_PER_S}
per = "second"
burst = {BURST}
mode = "cluster"

[rate_limit_cluster]
heartbeat_interval_ms = 200
heartbeat_ttl_ms = 1000
"""


def metric(gateway: Gateway, series: str) -> float:
    text = requests.get(f"{gateway.control}/metrics", timeout=HTTP_TIMEOUT_S).text
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@dataclass
class Tally:
    admitted: int = 0
    limited: int = 0
    other: int = 0
    first: float = 0.0
    last: float = 0.0


def hammer(gateways: list[Gateway], window_s: float) -> Tally:
    """One client per gateway, each sending requests back to back for `window_s`; counts the
    answers. Returns the time from the first request sent to the last answer."""
    tally = Tally()
    lock = threading.Lock()
    start = time.monotonic()
    tally.first = start

    def client(gateway: Gateway) -> None:
        with requests.Session() as http:
            for _ in range(REQUESTS_PER_CLIENT_MAX):
                if time.monotonic() - start >= window_s:
                    break
                url = f"{gateway.public}/{SERVICE}/hello"
                status = http.get(url, timeout=HTTP_TIMEOUT_S).status_code
                with lock:
                    if status == 200:
                        tally.admitted += 1
                    elif status == 429:
                        tally.limited += 1
                    else:
                        tally.other += 1

    threads = [threading.Thread(target=client, args=(g,)) for g in gateways]
    for t in threads:
        t.start()
    for t in threads:
        t.join(window_s + 30)
    tally.last = time.monotonic()
    return tally


def test_three_gateways_share_one_limit_and_their_shares_when_redis_stops(
    launcher: Launcher, redis_server: RedisServer, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    gateways = [
        start_gateway(
            launcher,
            f"gw-{i}",
            node_id=f"gw-rl-{i}",
            extra=("--config", str(rules)),
            settings={"redis.url": redis_server.url},
        )
        for i in range(GATEWAYS)
    ]
    sample = start_rust_service(launcher, gateways[0], SERVICE, "s-1")
    addr = re.search(r"listening on (\S+) as", sample.log_text()).group(1)
    for gw in gateways[1:]:
        resp = requests.put(
            f"{gw.control}/v1/services/{SERVICE}/instances/s-1",
            json={"addr": addr, "lease_ms": 60_000},
            headers=control_headers(),
            timeout=HTTP_TIMEOUT_S,
        )
        assert resp.status_code == 200, resp.text
    for gw in gateways:
        gw.wait_live(SERVICE, "s-1")
        wait_until(
            lambda gw=gw: metric(gw, "switchyard_rate_limit_live_gateways") == GATEWAYS,
            f"{gw.public} to count {GATEWAYS} live gateways",
        )

    # Redis up: one count for all three.
    up = hammer(gateways, WINDOW_S)
    elapsed = up.last - up.first
    allowed = BURST + RATE_PER_S * elapsed
    print(f"Redis up: {up.admitted} admitted of {allowed:.0f} allowed in {elapsed:.2f} s ({up})")
    assert up.other == 0, up
    assert up.limited > 0, f"the load did not reach the limit: {up}"
    assert abs(up.admitted - allowed) <= 0.1 * allowed, (
        f"admitted {up.admitted} in {elapsed:.2f} s; the limit allows {allowed:.0f}: {up}"
    )
    answered = [
        requests.get(f"{g.public}/{SERVICE}/hello", timeout=HTTP_TIMEOUT_S) for g in gateways
    ]
    policies = {r.headers.get("ratelimit-policy") for r in answered}
    assert policies == {f'"cluster";q={BURST};w=1'}, policies

    # Redis dies: each gateway alone, with a third of the rate and of the burst.
    redis_server.kill()
    down = hammer(gateways, WINDOW_S)
    elapsed = down.last - down.first
    share_burst = BURST // GATEWAYS
    bound = GATEWAYS * (share_burst + RATE_PER_S / GATEWAYS * elapsed)
    print(f"Redis down: {down.admitted} admitted, the shares allow {bound:.0f} ({down})")
    assert down.other == 0, f"no 5xx while Redis is down: {down}"
    assert down.admitted <= 1.1 * bound, (
        f"admitted {down.admitted} in {elapsed:.2f} s with Redis down; the shares allow {bound:.0f}"
    )
    assert down.admitted >= 0.9 * bound, (
        f"admitted {down.admitted} in {elapsed:.2f} s with Redis down; the shares allow {bound:.0f}"
    )
    for gw in gateways:
        assert metric(gw, 'switchyard_rate_limit_fallbacks_total{rule="cluster"}') > 0
        assert metric(gw, "switchyard_rate_limit_live_gateways") == GATEWAYS, "the last count stays"

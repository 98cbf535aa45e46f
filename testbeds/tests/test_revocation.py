"""Revocation of public tokens through Redis, with real gateways and Debian's redis-server:
a revocation made on one gateway reaches the others, the calls are guarded, a Redis killed
mid-run makes the copies stale (never slow), and a Redis back is read again by a resync.

Most tests observe the copies through the control listener (`GET /v1/revocations`,
`/metrics`); `test_revoked_token_refused_on_every_gateway` takes the full request path, with the
JWT policy verifying tokens against a JWKS served in the test."""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

import requests

from harness import (
    HTTP_TIMEOUT_S,
    Gateway,
    Launcher,
    binary,
    child_env,
    operator,
    start_gateway,
    start_rust_service,
    wait_until,
)
from redis_server import RedisServer
from test_public_jwt import ISSUER as JWT_ISSUER
from test_public_jwt import SERVICE as JWT_SERVICE
from test_public_jwt import JwksServer, jwt_config, keygen
from test_public_jwt import token as jwt_token
from test_public_jwt import token_id as jwt_token_id

# Short timers, so that staleness and resync show within a test's time.
FAST = {
    "revocation.heartbeat_interval_ms": "200",
    "revocation.stale_after_ms": "1000",
    "revocation.resync_interval_ms": "2000",
    "redis.breaker_cooldown_ms": "500",
}
PROPAGATION_BOUND_S = 1.0
ROUNDS = 20


def start(launcher: Launcher, redis: RedisServer, name: str, **settings: str) -> Gateway:
    return start_gateway(
        launcher, name, name, settings={**redis.settings(), **settings}
    )


def revoke(gateway: Gateway, body: dict, token: str | None = None) -> requests.Response:
    headers = {"authorization": f"Bearer {token or operator().token}"} if token != "" else {}
    return requests.post(
        f"{gateway.control}/v1/revocations", json=body, headers=headers, timeout=HTTP_TIMEOUT_S
    )


def listing(gateway: Gateway, session: requests.Session | None = None) -> dict:
    get = session.get if session is not None else requests.get
    resp = get(f"{gateway.control}/v1/revocations", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    return resp.json()


def holds(gateway: Gateway, token_id: str, session: requests.Session | None = None) -> bool:
    return any(r.get("token_id") == token_id for r in listing(gateway, session)["revocations"])


def metric(gateway: Gateway, name: str, labels: str = "") -> float:
    text = requests.get(f"{gateway.control}/metrics", timeout=HTTP_TIMEOUT_S).text
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    assert found, f"{name}{{{labels}}} not in /metrics"
    return float(found.group(1))


def wait_current(*gateways: Gateway, timeout_s: float = 10.0) -> None:
    for gw in gateways:
        wait_until(lambda gw=gw: listing(gw)["current"], f"{gw.control}'s copy to be current", timeout_s)


def token_body(token_id: str, ttl_s: int = 600, issuer: str = "https://id.test") -> dict:
    return {"issuer": issuer, "token_id": token_id, "expires_at": int(time.time()) + ttl_s}


def test_revoked_on_one_gateway_is_held_by_the_others_within_a_second(
    launcher: Launcher, redis_server: RedisServer
) -> None:
    a, b, c = (start(launcher, redis_server, f"rev-{n}") for n in "abc")
    wait_current(a, b, c)
    seen: dict[str, list[float]] = {"b": [], "c": []}
    # One kept-alive connection per watcher, so a poll costs a request, not a handshake.
    sessions = {"b": requests.Session(), "c": requests.Session()}
    after_answer: dict[str, list[float]] = {"b": [], "c": []}
    posts: list[float] = []
    for i in range(ROUNDS):
        token_id = f"jti-{i}"
        start_s = time.monotonic()
        resp = revoke(a, token_body(token_id))
        answered_s = time.monotonic()
        posts.append(answered_s - start_s)
        assert resp.status_code == 200, resp.text
        assert resp.json()["published"] is True
        assert holds(a, token_id), "the gateway that took the call applies it at once"

        def watch(name: str, gw: Gateway) -> None:
            wait_until(
                lambda: holds(gw, token_id, sessions[name]),
                f"{token_id} on {name} within {PROPAGATION_BOUND_S} s",
                PROPAGATION_BOUND_S,
                0.002,
            )
            seen[name].append(time.monotonic() - start_s)
            after_answer[name].append(time.monotonic() - answered_s)

        threads = [threading.Thread(target=watch, args=(n, g)) for n, g in (("b", b), ("c", c))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen["b"]) == len(seen["c"]) == i + 1, f"round {i}: not seen everywhere"
    every = seen["b"] + seen["c"]
    late = after_answer["b"] + after_answer["c"]
    print(
        f"\npropagation A -> B, C over {ROUNDS} revocations, polled every 2 ms: from the POST sent, "
        f"median {statistics.median(every) * 1000:.1f} ms, max {max(every) * 1000:.1f} ms; "
        f"from A's answer, median {statistics.median(late) * 1000:.1f} ms, max {max(late) * 1000:.1f} ms "
        f"(the POST itself: median {statistics.median(posts) * 1000:.1f} ms, debug build)"
    )
    assert metric(b, "switchyard_revocations_applied_total", 'source="pubsub"') == ROUNDS
    assert metric(a, "switchyard_revocations_applied_total", 'source="local"') == ROUNDS
    assert metric(c, "switchyard_revocations_held") == ROUNDS


def test_revoking_needs_an_operator_credential_and_a_valid_body(
    launcher: Launcher, redis_server: RedisServer
) -> None:
    gw = start(launcher, redis_server, "rev-guard")
    wait_current(gw)
    good = token_body("jti-guarded")
    assert revoke(gw, good, token="").status_code == 401
    service_token = operator().service_token("orders")
    refused = revoke(gw, good, token=service_token)
    assert refused.status_code == 403, refused.text
    reader = operator().issue("reader", "--read")
    assert revoke(gw, good, token=reader).status_code == 403
    now = int(time.time())
    for body, field in [
        ({"issuer": "i", "token_id": "j"}, "expires_at"),
        ({"issuer": "i", "token_id": "j", "expires_at": now - 1}, "expires_at"),
        ({"issuer": "i", "token_id": "j", "expires_at": now + 400 * 86400}, "expires_at"),
        ({"issuer": "i", "token_id": "j", "subject": "s", "expires_at": now + 60}, "body"),
        ({"issuer": "", "token_id": "j", "expires_at": now + 60}, "body"),
        ({"issuer": "i", "token_id": "j", "expires_at": now + 60, "extra": 1}, "body"),
        ({"issuer": "i", "token_id": "x" * 5000, "expires_at": now + 60}, None),
    ]:
        resp = revoke(gw, body)
        assert resp.status_code in (400, 413), (body, resp.text)
        if field:
            assert resp.json()["error"]["code"] == "invalid_argument", resp.text
    assert listing(gw)["held"] == 0
    assert redis_server.cli("--scan", "--pattern", "switchyard:revoked:*") == ""
    # A subject: its record lasts the longest token lifetime (24 h by default).
    resp = revoke(gw, {"issuer": "https://id.test", "subject": "alice"})
    assert resp.status_code == 200, resp.text
    record = resp.json()
    assert record["expires_at_s"] - record["revoked_at_s"] == 86400
    # The CLI: the operator's credential revokes, a service's is refused with the gateway's 403.
    out = operator()._switchyard(
        "token", "revoke", "--gateway", gw.control, "--token", operator().token,
        "--issuer", "https://id.test", "--jti", "by-cli", "--expires-at", str(now + 600),
    )
    assert json.loads(out)["token_id"] == "by-cli", out
    assert holds(gw, "by-cli")
    refused_cli = subprocess.run(
        [str(binary("SWITCHYARD_BIN", "target/debug/switchyard")), "token", "revoke",
         "--gateway", gw.control, "--token", service_token, "--issuer", "https://id.test",
         "--subject", "mallory"],
        capture_output=True, text=True, timeout=30, env=child_env(),
    )
    assert refused_cli.returncode != 0 and "403" in refused_cli.stderr, refused_cli.stderr
    key = redis_server.cli("--scan", "--pattern", "switchyard:revoked:s:*")
    assert key, "the subject's key is in Redis"
    ttl = int(redis_server.cli("ttl", key))
    assert 86000 < ttl <= 86400, ttl


def test_a_hung_redis_costs_no_call_more_than_the_breaker_bound(
    launcher: Launcher, redis_server: RedisServer
) -> None:
    a = start(launcher, redis_server, "rev-hung-a", **FAST)
    b = start(launcher, redis_server, "rev-hung-b", **FAST)
    wait_current(a, b)
    # The baseline: revocations with Redis answering (credential check, SET, PUBLISH).
    up = []
    for i in range(10):
        t = time.monotonic()
        assert revoke(a, token_body(f"up-{i}")).status_code == 200
        up.append(time.monotonic() - t)
    failures = "switchyard_redis_failures_total"
    timeouts_before = metric(a, failures, 'kind="timeout"')
    unconnected_before = metric(a, failures, 'kind="not_connected"')
    short_before = metric(a, "switchyard_redis_short_circuits_total")
    redis_server.pause()
    paused = time.monotonic()
    down = []
    for i in range(30):
        t = time.monotonic()
        resp = revoke(a, token_body(f"hung-{i}"))
        down.append(time.monotonic() - t)
        assert resp.status_code == 503, resp.text
    loop_s = time.monotonic() - paused
    timeouts = metric(a, failures, 'kind="timeout"') - timeouts_before
    unconnected = metric(a, failures, 'kind="not_connected"') - unconnected_before
    short = metric(a, "switchyard_redis_short_circuits_total") - short_before
    # Only the calls that open the breaker (5), and one probe per cool-down (500 ms) after,
    # pass the breaker. Those wait out the command timeout, except a probe that finds no
    # connection (the breaker dropped it on opening, and reconnecting hangs on the paused
    # server): it fails at once as not_connected. Every other call is short-circuited.
    passed = timeouts + unconnected
    assert passed <= 5 + int(loop_s / 0.5) + 1, (timeouts, unconnected, loop_s)
    assert short + passed >= 30, (short, timeouts, unconnected)
    # No call waits out more than the command timeout (50 ms): each stays within twice the
    # slowest call with Redis answering plus twice that timeout (noise on shared cores).
    assert max(down) < 2 * max(up) + 2 * 0.050, (max(down), max(up))
    wait_until(lambda: not listing(b)["current"], "B's copy to go stale while Redis hangs", 5.0, 0.01)
    stale_s = time.monotonic() - paused
    assert holds(b, "up-0"), "what the copy held stays in force"
    redis_server.resume()
    resumed = time.monotonic()
    wait_current(a, b)
    current_again_s = time.monotonic() - resumed
    # A's breaker may still be open for its cool-down (500 ms here) when B's copy is current
    # again: a revocation answers 503 until the next probe finds Redis, then 200.
    wait_until(
        lambda: revoke(a, token_body("after-hang")).status_code == 200,
        "a revocation through A to succeed after the breaker's cool-down",
        2.0,
        0.05,
    )
    wait_until(lambda: holds(b, "after-hang"), "after-hang on B", PROPAGATION_BOUND_S, 0.005)
    print(
        f"\nRedis hung (SIGSTOP): {timeouts:.0f} calls of 30 waited out the command timeout, "
        f"{short:.0f} failed at once; POST max {max(down) * 1000:.1f} ms against {max(up) * 1000:.1f} ms "
        f"with Redis up; B stale after {stale_s * 1000:.0f} ms; current again {current_again_s * 1000:.0f} ms "
        "after SIGCONT"
    )


def test_redis_killed_makes_copies_stale_at_once_then_a_resync_repairs_them(
    launcher: Launcher, redis_server: RedisServer
) -> None:
    a = start(launcher, redis_server, "rev-kill-a", **FAST)
    b = start(launcher, redis_server, "rev-kill-b", **FAST)
    wait_current(a, b)
    assert revoke(a, token_body("before-kill")).status_code == 200
    wait_until(lambda: holds(b, "before-kill"), "before-kill on B", 2.0, 0.01)
    # Local reads, the baseline for the control calls' latency in this run.
    baseline = []
    for _ in range(20):
        t = time.monotonic()
        listing(a)
        baseline.append(time.monotonic() - t)

    confirmed_age_s = listing(b)["copy_age_ms"] / 1000
    timeouts_before = metric(a, "switchyard_redis_failures_total", 'kind="timeout"')
    killed = time.monotonic()
    redis_server.kill()
    kill_took_s = time.monotonic() - killed
    wait_until(lambda: not listing(b)["current"], "B's copy to go stale", 5.0, 0.01)
    stale_after_s = time.monotonic() - killed
    # What the copy held stays in force while it is stale.
    assert holds(b, "before-kill")
    # Revoking with Redis dead: refused at once, never waiting out a timeout per call.
    latencies = []
    for i in range(20):
        t = time.monotonic()
        resp = revoke(a, token_body(f"during-{i}"))
        latencies.append(time.monotonic() - t)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "not_ready"
    assert not holds(a, "during-0"), "a refused revocation changes nothing"
    assert metric(a, "switchyard_redis_up") == 0
    print(
        f"\nRedis killed: B stale {stale_after_s * 1000:.0f} ms after the kill began (the kill took "
        f"{kill_took_s * 1000:.0f} ms; the copy was {confirmed_age_s * 1000:.0f} ms old before it; "
        f"stale_after_ms 1000, heartbeat 200 ms); POST with Redis down: max {max(latencies) * 1000:.1f} ms, "
        f"median {statistics.median(latencies) * 1000:.1f} ms; local GET baseline max {max(baseline) * 1000:.1f} ms"
    )
    # A dead server refuses connections: no call waits out a timeout, they fail at once.
    assert metric(a, "switchyard_redis_failures_total", 'kind="timeout"') == timeouts_before

    # Back, empty (no persistence), and written to directly, as a gateway cut off would miss.
    redis_server.start()
    issued = int(time.time())
    record = {
        "issuer": "https://id.test",
        "token_id": "written-while-cut-off",
        "revoked_at_s": issued,
        "expires_at_s": issued + 600,
    }
    key = "switchyard:revoked:t:" + hashlib.sha256(
        b"https://id.test\0written-while-cut-off"
    ).hexdigest()[:32]
    back = time.monotonic()
    redis_server.cli("set", key, json.dumps(record), "exat", str(issued + 600))
    wait_until(lambda: holds(b, "written-while-cut-off"), "the direct write on B", 6.0, 0.02)
    picked_up_s = time.monotonic() - back
    wait_current(a, b)
    # With the subscription up, a write no one publishes is read by the periodic resync.
    record["token_id"] = "never-published"
    quiet = time.monotonic()
    redis_server.cli("set", key + "x", json.dumps(record), "exat", str(issued + 600))
    wait_until(lambda: holds(a, "never-published"), "the unpublished write on A", 4.0, 0.02)
    resync_s = time.monotonic() - quiet
    print(
        f"Redis back: the direct write held on B after {picked_up_s * 1000:.0f} ms; "
        f"an unpublished write held after {resync_s * 1000:.0f} ms (resync_interval_ms 2000)"
    )
    assert metric(b, "switchyard_revocations_applied_total", 'source="resync"') >= 1
    assert metric(a, "switchyard_redis_up") == 1


def test_the_password_comes_from_a_file_and_is_never_logged(
    launcher: Launcher, tmp_path: Path
) -> None:
    from redis_server import session_redis

    secret = "pw-" + os.urandom(12).hex()
    password_file = tmp_path / "redis-password"
    password_file.write_text(secret + "\n")
    password_file.chmod(0o600)
    port = int(os.environ.get("E2E_REDIS_PORT", "16479")) + 1
    server = session_redis(tmp_path / "redis", port=port, password_file=password_file)
    try:
        good = start_gateway(
            launcher, "rev-pw-good", "rev-pw-good",
            settings={"redis.url": server.url, "redis.password_file": str(password_file)},
        )
        bad = start_gateway(launcher, "rev-pw-none", "rev-pw-none", settings={"redis.url": server.url})
        wait_current(good)
        assert metric(good, "switchyard_redis_up") == 1
        wait_until(
            lambda: metric(bad, "switchyard_redis_connects_total", 'outcome="failed"') >= 1,
            "the gateway without the password to be refused",
        )
        assert metric(bad, "switchyard_redis_up") == 0
        assert not listing(bad)["current"]
        assert revoke(good, token_body("with-password")).status_code == 200
        assert server.cli("--scan", "--pattern", "switchyard:revoked:*")
        for gw in (good, bad):
            assert secret not in gw.proc.log_text(), "the password is in a gateway's log"
    finally:
        server.stop()


def test_revoked_token_refused_on_every_gateway(
    launcher: Launcher, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The full request path: a token revoked through gateway A is refused by A, B and C within
    the bound; with Redis killed, a token never revoked is refused (the provider fails closed,
    503 `not_ready`) as soon as the copy is stale, and no faster path waits on Redis."""
    jwks = JwksServer()
    try:
        key = keygen(tmp_path, "idp")
        jwks.publish(key)
        config = jwt_config(tmp_path, jwks.url)
        gateways = [
            start_gateway(
                launcher,
                f"rev-jwt-{n}",
                f"rev-jwt-{n}",
                extra=("--config", str(config)),
                settings={**redis_server.settings(), **FAST},
            )
            for n in "abc"
        ]
        sample = start_rust_service(launcher, gateways[0], JWT_SERVICE, "s-1")
        addr = re.search(r"listening on (\S+) as", sample.log_text()).group(1)
        for gw in gateways[1:]:
            resp = requests.put(
                f"{gw.control}/v1/services/{JWT_SERVICE}/instances/s-1",
                json={"addr": addr, "lease_ms": 60_000},
                headers={"authorization": f"Bearer {operator().token}"},
                timeout=HTTP_TIMEOUT_S,
            )
            assert resp.status_code == 200, resp.text
        for gw in gateways:
            gw.wait_live(JWT_SERVICE, "s-1")
        wait_current(*gateways)
        revoked, kept = jwt_token(key, "mallory"), jwt_token(key, "trent")

        def call(gw: Gateway, bearer: str) -> tuple[int, float]:
            t = time.monotonic()
            resp = requests.get(
                f"{gw.public}/{JWT_SERVICE}/echo",
                headers={"authorization": f"Bearer {bearer}"},
                timeout=HTTP_TIMEOUT_S,
            )
            return resp.status_code, time.monotonic() - t

        for gw in gateways:
            wait_until(lambda gw=gw: call(gw, revoked)[0] == 200, f"{gw.public} to take the token", 10)
        baseline = [call(gw, kept)[1] for gw in gateways for _ in range(5)]
        started = time.monotonic()
        body = token_body(jwt_token_id(revoked), issuer=JWT_ISSUER)
        assert revoke(gateways[0], body).status_code == 200
        for gw in gateways:
            wait_until(
                lambda gw=gw: call(gw, revoked)[0] == 401,
                f"the revoked token refused on {gw.public}",
                PROPAGATION_BOUND_S,
                0.005,
            )
        print(f"revoked token refused on all three gateways {1000 * (time.monotonic() - started):.0f} ms after the POST was sent")
        assert all(call(gw, kept)[0] == 200 for gw in gateways)

        redis_server.kill()
        wait_until(lambda: not listing(gateways[1])["current"], "B's copy to go stale", 5.0, 0.01)
        # Failing closed: a token never revoked is refused once the copy is stale, at once.
        status, elapsed = call(gateways[1], kept)
        assert status == 503, status
        assert elapsed < 3 * max(baseline) + 0.050, (elapsed, max(baseline))
    finally:
        jwks.stop()

"""Auditing on a real Kafka broker: every request of a known burst (REST and GraphQL calls,
errors included) is on the requests topic exactly once by request id, with its fields, and the
registrations on the registry topic, read back with `switchyard audit tail --json`; bodies are
captured with the configured headers and JSON fields redacted; a broker stopped mid-burst loses
only what `switchyard_audit_dropped_total` counts, and records flow again after it is back
without a gateway restart; a service in `required` mode is refused 503 `audit_unavailable`
while the broker is down, and served (and audited) again once it is back, while a best_effort
service is served throughout.

The first two tests share one gateway on the session broker; the two that stop the broker
start gateways of their own with short delivery timeouts."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness import (
    HTTP_TIMEOUT_S,
    Gateway,
    Launcher,
    binary,
    child_env,
    control_headers,
    start_gateway,
    start_python_service,
    wait_until,
)

_names = itertools.count()

# Bounds on the waits below: records reach the topic within ms when the broker is up; the
# broker's restart takes a few seconds.
RECORDS_TIMEOUT_S = 30.0
TAIL_TIMEOUT_S = 60.0


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{uuid.uuid4().hex[:8]}"


def write_config(directory: Path, kafka, audit: str) -> Path:
    """A gateway configuration on the broker with topics of its own and `audit` (TOML: the
    `[audit]` keys, then any `[audit.default]` and `[[audit.services]]` tables)."""
    name = fresh("audit")
    path = directory / f"{name}.toml"
    path.write_text(
        f"""
[bus]
kind = "kafka"

[bus.kafka]
brokers = "{kafka.bootstrap}"
topic = "{name}-registry-bus"

[audit]
enabled = true
topic_requests = "{name}.requests"
topic_registry = "{name}.registry"
partitions = 3
{audit}
"""
    )
    return path


def start_audited(launcher: Launcher, name: str, config: Path) -> Gateway:
    return start_gateway(launcher, name, node_id=name, extra=("--config", str(config)))


def tail(config: Path, *flags: str, check: bool = True) -> list[dict] | None:
    """The records `switchyard audit tail --json` prints for the topics of `config` (the last
    10 minutes, to the end). With `check` off, a failed run (the topic not created yet)
    gives None."""
    exe = binary("SWITCHYARD_BIN", "target/debug/switchyard")
    done = subprocess.run(
        [str(exe), "audit", "tail", "--config", str(config), "--json", *flags],
        capture_output=True,
        text=True,
        timeout=TAIL_TIMEOUT_S,
        env=child_env(),
    )
    if done.returncode != 0:
        if check:
            raise AssertionError(f"switchyard audit tail failed: {done.stderr}")
        return None
    assert "skipped" not in done.stderr, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def requests_by_id(config: Path) -> Counter[str] | None:
    records = tail(config, check=False)
    if records is None:
        return None
    return Counter(r["request"]["request_id"] for r in records if r["kind"] == "request")


def wait_records(config: Path, ids: set[str], timeout_s: float = RECORDS_TIMEOUT_S) -> dict[str, dict]:
    """Waits until every id in `ids` is on the requests topic; returns the records by id,
    after checking that none is there twice."""

    def found() -> list[dict] | None:
        records = tail(config, check=False)
        if records is None:
            return None
        seen = {r["request"]["request_id"] for r in records if r["kind"] == "request"}
        return records if ids <= seen else None

    records = wait_until(found, f"{len(ids)} request records on the topic", timeout_s, 0.5)
    counts = Counter(r["request"]["request_id"] for r in records if r["kind"] == "request")
    twice = {i: n for i, n in counts.items() if n > 1}
    assert not twice, f"records written more than once: {twice}"
    return {r["request"]["request_id"]: r for r in records if r["kind"] == "request"}


def metrics(gw: Gateway) -> str:
    return requests.get(f"{gw.control}/metrics", timeout=HTTP_TIMEOUT_S).text


def series_sum(text: str, family: str, **labels: str) -> float:
    """The sum of `family`'s series whose labels include `labels`."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(family)}(\{{[^}}]*\}})?\s+(\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        if all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def rest(gw: Gateway, request_id: str, path: str, method: str = "GET", **kw) -> requests.Response:
    headers = {"x-request-id": request_id, **kw.pop("headers", {})}
    return requests.request(method, f"{gw.public}{path}", headers=headers, timeout=HTTP_TIMEOUT_S, **kw)


@pytest.fixture(scope="module")
def audited(kafka, log_dir: Path) -> Iterator[tuple[Gateway, Path]]:
    """One audited gateway on the session broker, with the service "aud" (bodies captured,
    a header and a JSON field redacted) registered by a Python instance."""
    launcher = Launcher(log_dir / "audit-module")
    launcher.log_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(
        launcher.log_dir,
        kafka,
        """
[[audit.services]]
service = "aud"
bodies = true
body_bytes_max = 1024
redact_headers = ["x-secret"]
redact_json_fields = ["password"]
""",
    )
    try:
        gw = start_audited(launcher, "gw-audit", config)
        start_python_service(launcher, gw.control, "aud", "aud-1")
        gw.wait_live("aud", "aud-1")
        yield gw, config
    finally:
        launcher.stop_all()


def test_every_request_of_a_burst_is_on_the_topic_once_with_its_fields(audited) -> None:
    gw, config = audited
    run = uuid.uuid4().hex[:8]
    expected: dict[str, dict] = {}
    # REST: successes, the service's own 404 and 500, and the gateway's refusal of an
    # unknown service.
    for i, (path, status, error_code) in enumerate(
        [("/aud/hello", 200, "")] * 12
        + [("/aud/test/status/404", 404, "")] * 3
        + [("/aud/test/status/500", 500, "")] * 3
        + [("/nosuch-audit/x", 404, "service_not_found")] * 2
    ):
        rid = f"rest-{run}-{i}"
        resp = rest(gw, rid, path)
        assert resp.status_code == status, resp.text
        expected[rid] = {"front": "rest", "status": status, "error_code": error_code, "path": path}
    # GraphQL: one operation with three calls, each with its own request id.
    calls = [("ok", "aud", "/hello", 200, ""), ("own404", "aud", "/test/status/404", 404, ""),
             ("unknown", "nosuch-audit", "/x", 404, "service_not_found")]
    fields = " ".join(
        f'{alias}: call(service: "{svc}", path: "{path}", '
        f'headers: [{{name: "x-request-id", value: "gql-{run}-{alias}"}}]) {{ status }}'
        for alias, svc, path, _, _ in calls
    )
    resp = requests.post(f"{gw.public}/graphql", json={"query": "{ " + fields + " }"}, timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    for alias, svc, path, status, error_code in calls:
        expected[f"gql-{run}-{alias}"] = {
            "front": "graphql_call", "status": status, "error_code": error_code, "path": f"/{svc}{path}"
        }

    records = wait_records(config, set(expected))
    for rid, want in expected.items():
        record = records[rid]
        r = record["request"]
        assert record["version"] == 1 and record["gateway_node"] == "gw-audit", record
        assert r["front"] == want["front"], record
        assert r["status"] == want["status"], record
        assert r["error_code"] == want["error_code"], record
        assert r["method"] == "GET", record
        service = want["path"].split("/")[1]
        assert r["service"] == service, record
        # A REST record's path is the request's (with the service); a call's is the call's.
        path = want["path"] if want["front"] == "rest" else want["path"].removeprefix(f"/{service}")
        assert r["path"] == path, record
        assert r["client_addr"].startswith("127.0.0.1:"), record
        assert r["latency_us"] > 0, record
        assert r["sample_rate"] == 1.0, record
        if want["error_code"]:
            assert r["instance_id"] == "", record
        else:
            assert r["instance_id"] == "aud-1", record
            assert re.fullmatch(r"[0-9a-f]{32}", r["trace_id"]), record
    # The filters of the command: the 5xx of the burst, and no other.
    errors = [
        rec["request"]["request_id"]
        for rec in tail(config, "--status", "5xx", "--service", "aud")
        if rec["request"]["request_id"].endswith(tuple(f"-{run}-{i}" for i in range(20)))
    ]
    assert sorted(errors) == sorted(f"rest-{run}-{i}" for i in range(15, 18)), errors


def test_tail_follows_new_records_and_stops_at_its_limit(audited) -> None:
    gw, config = audited
    service = fresh("follow")
    follower = subprocess.Popen(
        [str(binary("SWITCHYARD_BIN", "target/debug/switchyard")), "audit", "tail", "--config", str(config),
         "--follow", "--service", service, "--limit", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        # A service nobody registered: refused 404, and recorded under the name asked for.
        assert rest(gw, f"{service}-1", f"/{service}/x").status_code == 404
        out, err = follower.communicate(timeout=TAIL_TIMEOUT_S)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and f" {service}-1 GET {service} /{service}/x 404 " in lines[0], out
    assert "error=service_not_found" in lines[0], lines[0]


def test_registrations_are_on_the_registry_topic_with_who_made_them(audited) -> None:
    gw, config = audited
    instance = fresh("reg")
    url = f"{gw.control}/v1/services/aud-registry/instances/{instance}"
    body = {"addr": "127.0.0.1:9", "lease_ms": 600_000}
    refused = requests.put(url, json=body, timeout=HTTP_TIMEOUT_S)
    assert refused.status_code == 401, refused.text
    applied = requests.put(url, json=body, headers=control_headers(), timeout=HTTP_TIMEOUT_S)
    assert applied.status_code == 200, applied.text
    gone = requests.delete(url, headers=control_headers(), timeout=HTTP_TIMEOUT_S)
    assert gone.status_code == 200, gone.text

    def mine() -> list[dict] | None:
        records = tail(config, "--registry", "--service", "aud-registry", check=False) or []
        ours = [r["registry"] for r in records if r["registry"]["instance_id"] == instance]
        return ours if len(ours) >= 3 else None

    ours = wait_until(mine, "the registry records of the test's changes", RECORDS_TIMEOUT_S, 0.5)
    assert [(r["action"], r["error_code"]) for r in ours] == [
        ("register", "unauthenticated"),
        ("register", ""),
        ("deregister", ""),
    ], ours
    for r in ours:
        assert r["via"] == "rest" and r["client_addr"].startswith("127.0.0.1:"), r
    assert ours[1]["principal"]["subject"] == "e2e-operator", ours[1]
    assert ours[1]["addr"] == "127.0.0.1:9" and ours[1]["lease_ms"] > 0 and ours[1]["stamp"], ours[1]
    # The Python instance's own registration, with its service credential.
    sample = tail(config, "--registry", "--service", "aud")
    assert any(
        r["registry"]["action"] == "register"
        and r["registry"]["instance_id"] == "aud-1"
        and r["registry"]["principal"]["subject"] == "svc-aud"
        for r in sample
    ), sample


def test_captured_bodies_are_redacted_as_configured(audited) -> None:
    gw, config = audited
    rid = f"bodies-{uuid.uuid4().hex[:8]}"
    secret_body = {"user": {"name": "bob", "password": "hunter2"}, "items": [{"password": "swordfish"}]}
    resp = rest(
        gw,
        rid,
        "/aud/test/status/201",
        method="POST",
        json=secret_body,
        headers={"x-secret": "s3cr3t", "authorization": "Bearer not-a-real-token", "x-plain": "kept"},
    )
    assert resp.status_code == 201, resp.text
    record = wait_records(config, {rid})[rid]
    text = json.dumps(record)
    for secret in ("hunter2", "swordfish", "s3cr3t", "not-a-real-token"):
        assert secret not in text, f"{secret} in {text}"
    capture = record["request"]["request_capture"]
    assert capture["headers"]["x-secret"] == "REDACTED", capture
    assert capture["headers"]["authorization"] == "REDACTED", capture
    assert capture["headers"]["x-plain"] == "kept", capture
    assert capture["body_encoding"] == "utf8" and not capture["truncated"], capture
    body = json.loads(capture["body"])
    assert body == {"user": {"name": "bob", "password": "REDACTED"}, "items": [{"password": "REDACTED"}]}
    assert capture["body_size"] == len(json.dumps(secret_body).encode())
    answer = record["request"]["response_capture"]
    assert json.loads(answer["body"]) == {"status": 201}, answer


def test_a_broker_restart_mid_burst_loses_only_what_is_counted(launcher: Launcher, kafka, tmp_path: Path) -> None:
    if not kafka.restartable:
        pytest.skip("KAFKA_BOOTSTRAP names an external broker, which this test cannot restart")
    config = write_config(tmp_path, kafka, "delivery_timeout_ms = 1500")
    gw = start_audited(launcher, "gw-audit-restart", config)
    start_python_service(launcher, gw.control, "aud", "aud-r1", lease_ms=600_000)
    gw.wait_live("aud", "aud-r1")
    run = uuid.uuid4().hex[:8]
    sent: list[str] = []

    def burst(part: str, count: int) -> None:
        for i in range(count):
            rid = f"{part}-{run}-{i}"
            assert rest(gw, rid, "/aud/hello").status_code == 200
            sent.append(rid)

    burst("before", 20)
    wait_records(config, set(sent))
    pid = gw.proc.pid
    kafka.stop()
    try:
        burst("during", 20)
        # The records of the outage fail once their delivery timeout passes.
        wait_until(
            lambda: series_sum(metrics(gw), "switchyard_audit_dropped_total", stream="requests") > 0,
            "records dropped while the broker is down",
            RECORDS_TIMEOUT_S,
            0.2,
        )
    finally:
        kafka.start()
    burst("after", 20)
    after = {rid for rid in sent if rid.startswith("after-")}
    # Flowing again without a gateway restart.
    wait_records(config, after, timeout_s=60)
    assert gw.proc.running and gw.proc.pid == pid

    def accounted() -> tuple[int, float] | None:
        counts = requests_by_id(config) or Counter()
        received = sum(1 for rid in sent if counts[rid] > 0)
        dropped = series_sum(metrics(gw), "switchyard_audit_dropped_total", stream="requests")
        return (received, dropped) if received + dropped >= len(sent) else None

    received, dropped = wait_until(accounted, "every record received or counted dropped", RECORDS_TIMEOUT_S, 0.5)
    counts = requests_by_id(config) or Counter()
    assert all(counts[rid] <= 1 for rid in sent), {rid: counts[rid] for rid in sent if counts[rid] > 1}
    assert received + dropped == len(sent), (received, dropped, metrics(gw))
    print(f"broker restart mid-burst: {received} of {len(sent)} records received, {dropped:.0f} dropped")
    assert dropped > 0, "the outage dropped nothing: the test did not test the outage"
    assert all(counts[rid] == 1 for rid in sent if not rid.startswith("during-"))


def test_required_mode_refuses_while_the_broker_is_down(launcher: Launcher, kafka, tmp_path: Path) -> None:
    if not kafka.restartable:
        pytest.skip("KAFKA_BOOTSTRAP names an external broker, which this test cannot restart")
    config = write_config(
        tmp_path,
        kafka,
        """delivery_timeout_ms = 1500

[[audit.services]]
service = "strict"
mode = "required"
""",
    )
    gw = start_audited(launcher, "gw-audit-required", config)
    start_python_service(launcher, gw.control, "strict", "strict-1", lease_ms=600_000)
    start_python_service(launcher, gw.control, "loose", "loose-1", lease_ms=600_000)
    gw.wait_live("strict", "strict-1")
    gw.wait_live("loose", "loose-1")
    run = uuid.uuid4().hex[:8]
    counter = itertools.count()

    def call(service: str) -> requests.Response:
        return rest(gw, f"{service}-{run}-{next(counter)}", f"/{service}/hello")

    wait_until(lambda: call("strict").status_code == 200, "the strict service served", RECORDS_TIMEOUT_S, 0.2)
    kafka.stop()
    try:
        refusal = wait_until(
            lambda: (r := call("strict")).status_code == 503 and r,
            "the strict service refused while the broker is down",
            RECORDS_TIMEOUT_S,
            0.2,
        )
        assert refusal.json()["error"]["code"] == "audit_unavailable", refusal.text
        for _ in range(5):
            assert call("loose").status_code == 200
            refused = call("strict")
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "audit_unavailable"
        assert series_sum(metrics(gw), "switchyard_audit_refused_total") >= 6
        # Every record of the outage delivered before it or dropped: no record is left to
        # make the sink available again by its delivery once the broker is back.
        sent = next(counter)
        wait_until(
            lambda: series_sum(metrics(gw), "switchyard_audit_records_total", stream="requests")
            + series_sum(metrics(gw), "switchyard_audit_dropped_total", stream="requests")
            >= sent,
            "every record of the outage accounted for",
            RECORDS_TIMEOUT_S,
            0.2,
        )
        assert series_sum(metrics(gw), "switchyard_audit_sink_available") == 0
    finally:
        kafka.start()
    back = time.monotonic()
    # With no request meanwhile, only the sink's probe can find the broker again.
    wait_until(
        lambda: series_sum(metrics(gw), "switchyard_audit_sink_available") == 1,
        "the sink's probe to find the broker again",
        60,
        0.2,
    )
    # A figure for the report, not a bound (pytest -s shows it).
    print(f"sink available {time.monotonic() - back:.2f} s after the broker answered again")
    served = wait_until(
        lambda: (r := call("strict")).status_code == 200 and r,
        "the strict service served again after the broker is back",
        60,
        0.2,
    )
    rid = served.headers["x-request-id"]
    record = wait_records(config, {rid})[rid]
    assert record["request"]["service"] == "strict" and record["request"]["status"] == 200, record

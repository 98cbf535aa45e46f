"""End-to-end tests with real processes on loopback: the gateway binary, the Rust sample and
the Python sample (testbeds/services/python/service.py).

Requests go through the gateway's public listener as a client would send them; the registry
is read through the control listener. Each test names the behaviour it pins down.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    MIXED,
    MIXED_PYTHON_ID,
    MIXED_RUST_ID,
    PYONLY,
    PYONLY_ID,
    Mixed,
)
from harness import (
    GATEWAY_READY,
    control_headers,
    operator,
    HTTP_TIMEOUT_S,
    SERVICE_READY,
    Gateway,
    Launcher,
    Proc,
    binary,
    child_env,
    python_service_argv,
    start_gateway,
    start_python_service,
    start_rust_service,
    wait_until,
)

# Bounds on request loops.
HELLO_REQUESTS_MAX = 200
FAILOVER_REQUESTS_MAX = 200
FAILOVER_REQUESTS_AFTER = 30


def call(http: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    return http.request(method, url, timeout=HTTP_TIMEOUT_S, **kwargs)


def error_code(resp: requests.Response) -> str:
    """The gateway's stable error code from its JSON error body."""
    return resp.json()["error"]["code"]


# --- registration ---------------------------------------------------------------------------


def test_both_languages_register_under_one_service(gateway: Gateway, mixed: Mixed) -> None:
    instances = gateway.instances(MIXED)
    assert set(instances) == {MIXED_RUST_ID, MIXED_PYTHON_ID}
    assert {i["state"] for i in instances.values()} == {"live"}
    assert instances[MIXED_RUST_ID]["metadata"] == {"language": "rust"}
    assert instances[MIXED_PYTHON_ID]["metadata"] == {"language": "python"}
    # Each advertises the address it printed, normalised to http://host:port.
    for proc, instance_id in ((mixed.rust, MIXED_RUST_ID), (mixed.python, MIXED_PYTHON_ID)):
        assert proc.ready_match is not None
        assert instances[instance_id]["addr"] == f"http://{proc.ready_match['addr']}"
    assert instances[MIXED_PYTHON_ID]["lease_ms"] == 10_000


def test_python_service_renews_its_lease(gateway: Gateway, launcher: Launcher) -> None:
    # A 1.5 s lease is renewed every 0.5 s (a third of the lease, as the gateway advises).
    service, instance_id = "renewing", "py-renew"
    start_python_service(launcher, gateway.control, service, instance_id, lease_ms=1_500)
    gateway.wait_live(service, instance_id)
    first = gateway.instances(service)[instance_id]["expires_unix_ms"]
    wait_until(
        lambda: gateway.instances(service)[instance_id]["expires_unix_ms"] > first,
        "a renewal to push the lease further out",
        timeout_s=5,
    )
    # Removed behind its back, the instance comes back with its next renewal.
    resp = requests.delete(
        f"{gateway.control}/v1/services/{service}/instances/{instance_id}",
        headers=control_headers(),
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 200 and resp.json()["existed"] is True, resp.text
    # (Not checked absent here: a renewal may already have landed in between.)
    gateway.wait_live(service, instance_id, timeout_s=5)


def test_python_service_registers_again_after_a_gateway_restart(launcher: Launcher) -> None:
    first = start_gateway(launcher, "gateway-first", node_id="gw-first")
    service, instance_id = "restarting", "py-restart"
    proc = start_python_service(launcher, first.control, service, instance_id, lease_ms=1_500)
    first.wait_live(service, instance_id)
    proc.wait_for_log(r"registered restarting/py-restart", count=1)

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    # The gateway stays down until a renewal has failed, so the service goes through its
    # retry path rather than simply renewing with the next gateway.
    proc.wait_for_log(r"renewal failed \(UNAVAILABLE", timeout_s=5)
    # A new gateway on the same control port starts with an empty registry (in-memory bus),
    # so the instance can only appear there by registering again.
    second = start_gateway(
        launcher, "gateway-second", node_id="gw-second", control_listen=first.control_addr
    )
    second.wait_live(service, instance_id, timeout_s=15)
    proc.wait_for_log(r"registered restarting/py-restart", count=2, timeout_s=5)
    resp = requests.get(f"{second.public}/{service}/hello", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-served-by"] == instance_id


def test_sigterm_deregisters_the_python_service(gateway: Gateway, launcher: Launcher) -> None:
    service, instance_id = "draining", "py-drain"
    proc = start_python_service(launcher, gateway.control, service, instance_id)
    gateway.wait_live(service, instance_id)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.log_tail()
    # Deregistration happens before the process exits, so no polling: the 10 s lease would
    # otherwise keep the instance listed for seconds yet.
    assert gateway.instances(service) == {}
    # A service whose every instance left on purpose is unknown again (an expired lease would
    # leave it known, with no live instance: 503).
    resp = requests.get(f"{gateway.public}/{service}/hello", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 404 and error_code(resp) == "service_not_found", resp.text


def test_a_refused_registration_stops_the_python_service(
    gateway: Gateway, launcher: Launcher
) -> None:
    # The gateway accepts leases of 1 s to 1 h by default; retrying cannot fix a bad lease.
    proc = launcher.start(
        "python-bad-lease",
        python_service_argv(
            "--gateway", gateway.control, "--service", "refused", "--lease-ms", "10"
        ),
        SERVICE_READY,
        {**child_env(), "SWITCHYARD_TOKEN": operator().service_token("refused")},
    )
    assert proc.wait(15) == 1, proc.log_tail()
    log = proc.log_text()
    assert "cannot register" in log and "lease_ms" in log, log
    assert gateway.instances("refused") == {}


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--listen", "localhost:0"], "the host must be an IP address"),
        (["--listen", "127.0.0.1"], "is not host:port"),
        (["--gateway", "grpc://127.0.0.1:1"], "scheme 'grpc' is not supported"),
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key go together"),
        (["--gateway", "127.0.0.1:0"], "port must lie between 1 and 65535"),
        (["--service", "no spaces"], "must be 1 to 128 ASCII letters"),
        (["--lease-ms", "-5"], "is not a number of milliseconds"),
    ],
)
def test_python_service_rejects_bad_flags(
    launcher: Launcher, flags: list[str], complaint: str
) -> None:
    proc = launcher.start(
        "python-bad-flags", python_service_argv(*flags), SERVICE_READY, child_env()
    )
    assert proc.wait(15) == 2, proc.log_tail()
    log = proc.log_text()
    assert complaint in log, log
    assert "Traceback" not in log, log
    assert proc.ready_match is None


# --- forwarding -----------------------------------------------------------------------------


def test_hello_reaches_both_languages(
    gateway: Gateway, mixed: Mixed, http: requests.Session
) -> None:
    language = {MIXED_RUST_ID: "rust", MIXED_PYTHON_ID: "python"}
    seen: set[str] = set()
    for _ in range(HELLO_REQUESTS_MAX):
        resp = call(http, "GET", f"{gateway.public}/{MIXED}/hello")
        assert resp.status_code == 200, resp.text
        served_by = resp.headers["x-served-by"]
        body = resp.json()
        assert body["instance"] == served_by
        assert body["language"] == language[served_by]
        assert body["service"] == MIXED
        assert body["message"] == f"hello from {MIXED}/{served_by}"
        seen.add(served_by)
        if seen == set(language):
            break
    assert seen == set(language), f"only {seen} answered {HELLO_REQUESTS_MAX} requests"


def test_echo_round_trips_through_the_python_service(
    gateway: Gateway, pyonly: Proc, http: requests.Session
) -> None:
    body = 'héllo, wörld ✓\n{"json": true}'
    resp = call(
        http,
        "POST",
        f"{gateway.public}/{PYONLY}/echo?x=1&y=two%20words&x=3",
        data=body.encode(),
        headers={
            "x-custom": "custom value",
            "content-type": "text/plain; charset=utf-8",
            "x-request-id": "e2e-echo-1",
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-served-by"] == PYONLY_ID
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-request-id"] == "e2e-echo-1"
    echo = resp.json()
    assert echo["instance"] == PYONLY_ID
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo"
    assert echo["query"] == "x=1&y=two%20words&x=3"
    assert echo["body"] == body
    assert echo["service"] == PYONLY
    assert echo["gateway_node"] == "gw-1"
    assert echo["request_id"] == "e2e-echo-1"
    assert echo["scheme"] == "http"
    assert echo["http_version"] == "HTTP/1.1"
    assert echo["client_addr"].startswith("127.0.0.1:")
    assert echo["deadline_unix_ms"] > 0
    headers = [tuple(h) for h in echo["headers"]]
    assert ("x-custom", "custom value") in headers
    assert ("content-type", "text/plain; charset=utf-8") in headers
    assert ("x-forwarded-for", "127.0.0.1") in headers
    assert ("x-request-id", "e2e-echo-1") in headers


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_echo_keeps_the_method(
    gateway: Gateway, pyonly: Proc, http: requests.Session, method: str
) -> None:
    resp = call(http, method, f"{gateway.public}/{PYONLY}/echo", data=b"payload")
    assert resp.status_code == 200, resp.text
    assert (resp.json()["method"], resp.json()["body"]) == (method, "payload")


@pytest.mark.parametrize(
    ("grpc_code", "http_status", "code"),
    [
        (5, 404, "upstream_not_found"),
        (3, 400, "upstream_invalid_argument"),
        (14, 503, "upstream_unavailable"),
        (16, 401, "upstream_unauthenticated"),
        (99, 500, "upstream_unknown"),  # numbers gRPC does not define fail as UNKNOWN
    ],
)
def test_grpc_errors_map_to_http_statuses(
    gateway: Gateway,
    pyonly: Proc,
    http: requests.Session,
    grpc_code: int,
    http_status: int,
    code: str,
) -> None:
    resp = call(http, "GET", f"{gateway.public}/{PYONLY}/test/grpc-error/{grpc_code}")
    assert resp.status_code == http_status, resp.text
    assert error_code(resp) == code
    # The service's own message goes to the gateway's log, not to a public client.
    assert "error requested by the caller" not in resp.text


@pytest.mark.parametrize("status", [418, 201, 503])
def test_service_statuses_pass_through(
    gateway: Gateway, pyonly: Proc, http: requests.Session, status: int
) -> None:
    resp = call(http, "GET", f"{gateway.public}/{PYONLY}/test/status/{status}")
    assert resp.status_code == status, resp.text
    # The service's own answer, not a gateway error with the same status.
    assert resp.headers["x-served-by"] == PYONLY_ID
    assert resp.json() == {"status": status}


def test_sleep_answers_after_the_delay(
    gateway: Gateway, pyonly: Proc, http: requests.Session
) -> None:
    resp = call(http, "GET", f"{gateway.public}/{PYONLY}/test/sleep/200")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"slept_ms": 200}
    assert resp.elapsed.total_seconds() >= 0.2


@pytest.mark.parametrize(
    ("path", "http_status", "code", "message"),
    [
        ("test/status/abc", 400, "upstream_invalid_argument", "status must be a number"),
        ("test/status/99999999999", 400, "upstream_invalid_argument", "status must lie"),
        ("test/status/600", 502, "bad_upstream_response", "status 600 is outside 200..=599"),
        ("test/grpc-error/x", 400, "upstream_invalid_argument", "code must be a number"),
        ("test/grpc-error/0", 400, "upstream_invalid_argument", "code 0 is OK"),
        ("test/sleep/-1", 400, "upstream_invalid_argument", "ms must lie"),
        ("test/bad-header", 502, "bad_upstream_response", "header x-bad"),
    ],
)
def test_bad_input_fails_one_request_not_the_service(
    gateway: Gateway,
    pyonly: Proc,
    http: requests.Session,
    path: str,
    http_status: int,
    code: str,
    message: str,
) -> None:
    resp = call(http, "GET", f"{gateway.public}/{PYONLY}/{path}")
    assert resp.status_code == http_status, resp.text
    assert error_code(resp) == code
    # What the service said, or what was wrong with its answer, is the log's to say.
    assert message not in resp.text
    # The service is still up and answering.
    assert pyonly.running(), pyonly.log_tail()
    assert call(http, "GET", f"{gateway.public}/{PYONLY}/hello").status_code == 200


def test_unknown_route_is_the_services_own_404(
    gateway: Gateway, pyonly: Proc, http: requests.Session
) -> None:
    resp = call(http, "GET", f"{gateway.public}/{PYONLY}/no/such/route")
    assert resp.status_code == 404
    assert resp.headers["x-served-by"] == PYONLY_ID
    assert resp.json() == {"error": "no such route", "path": "/no/such/route"}


# --- failover -------------------------------------------------------------------------------


def test_python_keeps_serving_after_the_rust_instance_is_killed(
    gateway: Gateway, launcher: Launcher, http: requests.Session
) -> None:
    service, rust_id, python_id = "failover", "rust-f", "py-f"
    rust = start_rust_service(launcher, gateway, service, rust_id)
    start_python_service(launcher, gateway.control, service, python_id)
    gateway.wait_live(service, rust_id, python_id)
    # The Rust instance answers once first, so the gateway holds an open connection to it.
    wait_until(
        lambda: (
            call(http, "GET", f"{gateway.public}/{service}/hello").headers.get("x-served-by")
            == rust_id
        ),
        "the Rust instance to answer once",
        timeout_s=10,
        interval_s=0.01,
    )

    rust.send_signal(signal.SIGKILL)
    assert rust.wait() == -signal.SIGKILL

    # It stays registered (no deregistration, 10 s lease), so the gateway keeps picking it,
    # fails to connect, and must retry on the Python instance. Every request must succeed.
    def one_request() -> None:
        resp = call(http, "GET", f"{gateway.public}/{service}/hello")
        assert resp.status_code == 200, f"{resp.status_code} {resp.text}\n{gateway.proc.log_tail()}"
        assert resp.headers["x-served-by"] == python_id

    def rust_ejected() -> bool:
        return "ejected_until_unix_ms" in gateway.instances(service)[rust_id]

    def send_until_ejected() -> None:
        """Sends requests until the gateway shows it tried the dead instance and ejected it,
        which proves the requests went through a retry, not simply to the live instance."""
        for _ in range(FAILOVER_REQUESTS_MAX):
            one_request()
            if rust_ejected():
                return
        pytest.fail(
            f"the gateway did not eject the killed instance in {FAILOVER_REQUESTS_MAX} requests"
        )

    send_until_ejected()
    for _ in range(FAILOVER_REQUESTS_AFTER):
        one_request()
    # An ejection ends (after 1 s at first); the gateway then tries the dead instance again,
    # and the requests that do so must be retried as well.
    wait_until(lambda: not rust_ejected(), "the first ejection to end", timeout_s=10)
    send_until_ejected()
    assert rust_id in gateway.live_ids(service)  # still registered: the lease has not run out


def test_a_log_reader_that_falls_behind_costs_log_lines_not_requests() -> None:
    """The gateway writes its log through a bounded queue: with stderr a pipe that nobody
    reads (it fills after 64 KiB), requests are still answered, and the lines that did not fit
    are counted in switchyard_log_lines_dropped_total."""
    exe = binary("SWITCHYARD_BIN", "target/debug/switchyard")
    env = dict(child_env(), SWITCHYARD_LOG="debug")
    argv = [str(exe), "serve", "--public-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
            "--set", "log.access=true", "--set", "log.buffered_lines_max=100",
            "--set", "shutdown.drain_timeout_ms=1000",
            "--set", "control.auth=none", "--set", "control.reads=open"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        match = GATEWAY_READY.search(proc.stdout.readline())
        assert match, "the gateway did not report its addresses"
        public, control = f"http://{match['public']}", f"http://{match['control']}"
        with requests.Session() as http:
            # A line or more a request: more than the pipe (64 KiB) and the queue (100) hold.
            for i in range(3_000):
                resp = http.get(f"{public}/nowhere/{i}", timeout=HTTP_TIMEOUT_S)
                assert resp.status_code == 404, resp.text
            metrics = http.get(f"{control}/metrics", timeout=HTTP_TIMEOUT_S).text
        dropped = [line for line in metrics.splitlines() if line.startswith("switchyard_log_lines_dropped_total ")]
        assert dropped and float(dropped[0].split()[-1]) > 0, dropped
    finally:
        proc.kill()
        proc.wait(10)


# --- the per-core layout --------------------------------------------------------------------

PER_CORE_REQUESTS = 40


def test_the_per_core_layout_serves_on_threads_of_its_own_and_stops_on_sigterm(
    launcher: Launcher,
) -> None:
    gateway = start_gateway(
        launcher,
        "gateway-per-core",
        node_id="gw-per-core",
        settings={"runtime.layout": '"per_core"', "runtime.worker_threads": "2"},
    )

    def thread_names() -> list[str]:
        names = []
        for task in Path(f"/proc/{gateway.proc.pid}/task").iterdir():
            try:
                names.append((task / "comm").read_text().strip())
            except FileNotFoundError:
                pass  # a blocking-pool thread that ended meanwhile
        return names

    # The address line is printed once the sockets listen, before the node's task starts the
    # threads that accept on them (connections wait in the sockets' backlogs meanwhile).
    # "switchyard-public-N", cut to 15 bytes by the kernel.
    wait_until(
        lambda: thread_names().count("switchyard-publ") == 2,
        "two threads of the public front",
    )
    gateway.proc.wait_for_log(r"each thread serves the public front on its own socket")
    start_rust_service(launcher, gateway, "cores", "rust-cores")
    gateway.wait_live("cores", "rust-cores")
    # A connection per request (no session), so that both threads' sockets are reached.
    served = [
        requests.get(f"{gateway.public}/cores/hello", timeout=HTTP_TIMEOUT_S)
        for _ in range(PER_CORE_REQUESTS)
    ]
    assert [r.status_code for r in served] == [200] * PER_CORE_REQUESTS, served[-1].text
    assert {r.headers["x-served-by"] for r in served} == {"rust-cores"}
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait() == 0, gateway.proc.log_tail()
    assert "gateway node stopped" in gateway.proc.log_text()

"""Gateways on a Kafka broker that takes no client without TLS (testbeds/kafka/kafka.sh with
KAFKA_SECURITY=sasl_ssl): two gateways authenticated with SCRAM share one registry; a gateway
with a wrong password, one that does not trust the broker's CA, and one without the client
certificate the SSL listener asks for never become ready, and their logs say why without
showing a password; audit records travel over the same settings. The broker is this module's
own, started only when these tests run."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness import (
    HTTP_TIMEOUT_S,
    control_headers,
    REPO_ROOT,
    Gateway,
    Launcher,
    binary,
    child_env,
    start_gateway,
    start_rust_service,
    wait_until,
)
from kafka_broker import SecureBroker, secure_broker

# How long a refused gateway may take to log the broker's refusal: its first connection.
REFUSAL_LOGGED_S = 30.0


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[SecureBroker]:
    broker = secure_broker(REPO_ROOT / "testbeds" / ".run" / "kafka-e2e-secure")
    try:
        yield broker
    finally:
        broker.run("stop")


def fresh_topic() -> str:
    return f"switchyard-secure-{uuid.uuid4().hex[:8]}"


def readyz(gw: Gateway) -> int:
    return requests.get(f"{gw.public}/readyz", timeout=HTTP_TIMEOUT_S).status_code


def put(gw: Gateway, service: str, instance: str) -> requests.Response:
    return requests.put(
        f"{gw.control}/v1/services/{service}/instances/{instance}",
        json={"addr": "127.0.0.1:9", "lease_ms": 600_000},
        headers=control_headers(),
        timeout=HTTP_TIMEOUT_S,
    )


def assert_refused(refused: Gateway, working: Gateway, why: str, *secrets: str) -> None:
    """`refused` logged `why`; while `working`, started after it on the same broker, became
    ready, it did not, and it refuses registry changes. Its log shows none of `secrets`."""
    refused.proc.wait_for_log(why, 1, REFUSAL_LOGGED_S)
    assert readyz(working) == 200
    assert readyz(refused) == 503, refused.proc.log_tail()
    resp = put(refused, "orders", "o-1")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "not_ready", resp.text
    log = refused.proc.log_text()
    for secret in secrets:
        assert secret not in log, f"a password in {refused.proc.log_path}"


def test_two_gateways_over_sasl_ssl_share_a_registration(launcher: Launcher, secure_kafka) -> None:
    topic = fresh_topic()
    # One of each SCRAM hash: the broker's user has both.
    gw1 = start_gateway(
        launcher,
        "gw-1",
        node_id="gw-1",
        extra=secure_kafka.sasl_args(topic, "bus.kafka.sasl_mechanism=SCRAM-SHA-256"),
    )
    gw2 = start_gateway(launcher, "gw-2", node_id="gw-2", extra=secure_kafka.sasl_args(topic))
    start_rust_service(launcher, gw1, "orders", "orders-1")
    gw2.wait_live("orders", "orders-1", timeout_s=30)
    resp = requests.get(f"{gw2.public}/orders/hello", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-served-by"] == "orders-1"
    assert gw2.instances("orders")["orders-1"]["stamp"]["node_id"] == "gw-1"

    password = secure_kafka.password_file.read_text().strip()
    for gw in (gw1, gw2):
        assert password not in gw.proc.log_text(), f"the password in {gw.proc.log_path}"
    # What an operator sees of the same settings: the file's path, never its content.
    checked = subprocess.run(
        [
            str(binary("SWITCHYARD_BIN", "target/debug/switchyard")),
            "check-config",
            "--set",
            "control.auth=none",
            *secure_kafka.sasl_args(topic),
        ],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    assert str(secure_kafka.password_file) in checked.stdout, checked.stdout
    assert password not in checked.stdout + checked.stderr


def test_a_wrong_password_keeps_the_gateway_unready_and_its_log_says_why(
    launcher: Launcher, secure_kafka, tmp_path: Path
) -> None:
    topic = fresh_topic()
    wrong = "not-the-password-" + uuid.uuid4().hex
    wrong_file = tmp_path / "wrong.password"
    wrong_file.write_text(wrong + "\n")
    refused = start_gateway(
        launcher,
        "gw-wrong-password",
        node_id="gw-wrong",
        extra=secure_kafka.sasl_args(topic, password_file=wrong_file),
        wait_caught_up=False,
    )
    working = start_gateway(launcher, "gw-right", node_id="gw-right", extra=secure_kafka.sasl_args(topic))
    assert_refused(
        refused,
        working,
        r"Kafka refused this gateway's SASL credentials.*Authentication failed",
        wrong,
        secure_kafka.password_file.read_text().strip(),
    )


def rogue_ca(directory: Path) -> Path:
    """A CA that signed nothing the broker holds."""
    ca = directory / "rogue-ca.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(directory / "rogue-ca.key"), "-out", str(ca), "-days", "1",
            "-subj", "/CN=Not the broker's CA",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return ca


def test_a_gateway_that_does_not_trust_the_broker_ca_does_not_connect(
    launcher: Launcher, secure_kafka, tmp_path: Path
) -> None:
    topic = fresh_topic()
    refused = start_gateway(
        launcher,
        "gw-rogue-ca",
        node_id="gw-rogue",
        extra=secure_kafka.sasl_args(topic, f"bus.kafka.ssl_ca_file={rogue_ca(tmp_path)}"),
        wait_caught_up=False,
    )
    working = start_gateway(launcher, "gw-right", node_id="gw-right", extra=secure_kafka.sasl_args(topic))
    assert_refused(
        refused,
        working,
        r"TLS with a Kafka broker failed.*certificate verify failed",
        secure_kafka.password_file.read_text().strip(),
    )


def test_the_ssl_listener_takes_a_gateway_by_its_client_certificate(
    launcher: Launcher, secure_kafka
) -> None:
    topic = fresh_topic()
    refused = start_gateway(
        launcher,
        "gw-no-cert",
        node_id="gw-no-cert",
        extra=secure_kafka.mtls_args(topic, client_certificate=False),
        wait_caught_up=False,
    )
    gw1 = start_gateway(launcher, "gw-cert", node_id="gw-cert", extra=secure_kafka.mtls_args(topic))
    # The certificate admits it to the same registry as a SCRAM gateway.
    gw2 = start_gateway(launcher, "gw-scram", node_id="gw-scram", extra=secure_kafka.sasl_args(topic))
    assert put(gw1, "billing", "b-1").status_code == 200
    gw2.wait_live("billing", "b-1", timeout_s=30)
    # The broker ends the handshake with an alert when no certificate comes.
    assert_refused(refused, gw1, r"TLS with a Kafka broker failed.*alert bad certificate")


def test_audit_records_travel_over_sasl_ssl_and_tail_reads_them(
    launcher: Launcher, secure_kafka, tmp_path: Path
) -> None:
    """The audit sink and `switchyard audit tail` use the security settings of [bus.kafka]:
    a request through an audited gateway on the SASL_SSL listener is read back with the
    same configuration file."""
    name = fresh_topic()
    config = tmp_path / "audited.toml"
    config.write_text(
        f"""
[bus]
kind = "kafka"

[bus.kafka]
brokers = "{secure_kafka.bootstrap}"
topic = "{name}"
security_protocol = "sasl_ssl"
sasl_username = "{secure_kafka.username}"
sasl_password_file = "{secure_kafka.password_file}"
ssl_ca_file = "{secure_kafka.tls / 'ca.pem'}"

[audit]
enabled = true
topic_requests = "{name}.audit-requests"
topic_registry = "{name}.audit-registry"
partitions = 2
"""
    )
    gw = start_gateway(launcher, "gw-audit", node_id="gw-audit", extra=("--config", str(config)))
    start_rust_service(launcher, gw, "orders", "orders-1")
    gw.wait_live("orders", "orders-1")
    request_id = f"secure-{uuid.uuid4().hex[:8]}"
    resp = requests.get(
        f"{gw.public}/orders/hello", headers={"x-request-id": request_id}, timeout=HTTP_TIMEOUT_S
    )
    assert resp.status_code == 200, resp.text

    def read() -> list[str]:
        done = subprocess.run(
            [
                str(binary("SWITCHYARD_BIN", "target/debug/switchyard")),
                "audit", "tail", "--config", str(config), "--json", "--service", "orders",
            ],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout.splitlines() if done.returncode == 0 else []

    lines = wait_until(
        lambda: [line for line in read() if request_id in line] or None,
        "the request's audit record over SASL_SSL",
        30,
        0.5,
    )
    assert len(lines) == 1, lines
    assert '"status":200' in lines[0] and '"instance_id":"orders-1"' in lines[0], lines[0]
    password = secure_kafka.password_file.read_text().strip()
    assert password not in gw.proc.log_text()

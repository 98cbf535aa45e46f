"""TLS everywhere with real processes and certificates made by the test: the gateway's public and
control listeners over TLS, the Rust and Python samples registering over mutual TLS (their
certificates are their credentials, by SAN), and the gateway calling them over mutual TLS.
"""

from __future__ import annotations

from pathlib import Path

import requests
from certs import Ca
from harness import (
    GATEWAY_READY,
    HTTP_TIMEOUT_S,
    SERVICE_READY,
    Launcher,
    binary,
    child_env,
    python_service_argv,
    wait_until,
)

LOOPBACK = "IP:127.0.0.1"


def test_services_register_and_are_called_over_mutual_tls(launcher: Launcher, tmp_path: Path) -> None:
    ca = Ca.make(tmp_path / "pki")
    gateway = ca.leaf("gateway", [LOOPBACK, "DNS:localhost", "URI:spiffe://test/gateway"])
    rust = ca.leaf("rust", [LOOPBACK, "URI:spiffe://test/rust"])
    python = ca.leaf("python", [LOOPBACK, "URI:spiffe://test/python"])
    ops = ca.leaf("ops", ["URI:spiffe://test/ops"])
    stranger = Ca.make(tmp_path / "other", "other-ca").leaf("stranger", ["URI:spiffe://test/rust"])

    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[public.tls]
cert_file = "{gateway.cert}"
key_file = "{gateway.key}"

[control.tls]
cert_file = "{gateway.cert}"
key_file = "{gateway.key}"
client_ca_file = "{ca.cert}"

[[control.certificate_grants]]
san = "spiffe://test/rust"
services = ["tls-rust"]

[[control.certificate_grants]]
san = "spiffe://test/python"
services = ["tls-py"]

[[control.certificate_grants]]
san = "spiffe://test/ops"
read = true

[upstream]
allow_addresses = ["127.0.0.0/8"]

[upstream.tls]
ca_file = "{ca.cert}"
cert_file = "{gateway.cert}"
key_file = "{gateway.key}"

[shutdown]
drain_timeout_ms = 1000
"""
    )
    exe = binary("SWITCHYARD_BIN", "target/debug/switchyard")
    gw = launcher.start(
        "gw-tls",
        [str(exe), "serve", "--config", str(config), "--public-listen", "127.0.0.1:0",
         "--control-listen", "127.0.0.1:0", "--node-id", "gw-tls"],
        GATEWAY_READY,
        child_env(),
    )
    match = gw.wait_ready()
    public, control = f"https://{match['public']}", f"https://{match['control']}"
    verify = str(ca.cert)
    wait_until(
        lambda: requests.get(f"{public}/readyz", verify=verify, timeout=HTTP_TIMEOUT_S).status_code == 200,
        "the gateway to answer /readyz over TLS",
        30,
    )

    sample = binary("SAMPLE_SERVICE_BIN", "target/debug/sample-service")
    tls_flags = lambda leaf: [  # noqa: E731
        "--tls-cert", str(leaf.cert), "--tls-key", str(leaf.key), "--tls-client-ca", str(ca.cert),
        "--gateway-ca", str(ca.cert),
    ]
    launcher.start(
        "rust-tls",
        [str(sample), "--gateway", control, "--service", "tls-rust", "--instance-id", "r-1",
         "--listen", "127.0.0.1:0", *tls_flags(rust)],
        SERVICE_READY,
        child_env(),
    ).wait_ready()
    launcher.start(
        "python-tls",
        python_service_argv("--gateway", control, "--service", "tls-py", "--instance-id", "p-1",
                            "--listen", "127.0.0.1:0", *tls_flags(python)),
        SERVICE_READY,
        child_env(),
    ).wait_ready()

    def live(service: str) -> set[str]:
        resp = requests.get(f"{control}/v1/services/{service}", cert=ops.pair(), verify=verify,
                            timeout=HTTP_TIMEOUT_S)
        if resp.status_code == 404:
            return set()
        assert resp.status_code == 200, resp.text
        return {i["instance_id"] for i in resp.json()["instances"] if i["state"] == "live"}

    wait_until(lambda: live("tls-rust") == {"r-1"} and live("tls-py") == {"p-1"},
               "both samples to register over mutual TLS", 30)
    for service, instance in (("tls-rust", "r-1"), ("tls-py", "p-1")):
        hello = requests.get(f"{public}/{service}/hello", verify=verify, timeout=HTTP_TIMEOUT_S)
        assert hello.status_code == 200, hello.text
        assert hello.json()["instance"] == instance

    # A certificate's grant covers its own service only; reads need `read`; an unknown CA fails
    # the handshake; cleartext to a TLS listener gets nothing.
    body = {"addr": "https://127.0.0.1:9"}
    put = requests.put(f"{control}/v1/services/tls-py/instances/x", json=body, cert=rust.pair(),
                       verify=verify, timeout=HTTP_TIMEOUT_S)
    assert put.status_code == 403, put.text
    listing = requests.get(f"{control}/v1/services", cert=rust.pair(), verify=verify,
                           timeout=HTTP_TIMEOUT_S)
    assert listing.status_code == 403, listing.text
    try:
        requests.get(f"{control}/v1/services", cert=stranger.pair(), verify=verify, timeout=HTTP_TIMEOUT_S)
    except requests.exceptions.RequestException:
        pass
    else:
        raise AssertionError("a certificate from another CA was accepted")
    try:
        plain = requests.get(f"http://{match['public']}/healthz", timeout=HTTP_TIMEOUT_S)
    except requests.exceptions.RequestException:
        pass
    else:
        raise AssertionError(f"cleartext to a TLS listener answered {plain.status_code}")

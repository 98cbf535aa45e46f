"""Control credentials with real processes: keys and tokens made by `switchyard token`, a
gateway that requires them, and the Rust and Python samples registering with theirs.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import requests
from harness import (
    HTTP_TIMEOUT_S,
    Launcher,
    binary,
    child_env,
    start_gateway,
    start_python_service,
    start_rust_service,
    wait_until,
)


def switchyard(*args: str) -> subprocess.CompletedProcess:
    exe = binary("SWITCHYARD_BIN", "target/debug/switchyard")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=30, env=child_env()
    )


def issue(key: Path, subject: str, *flags: str) -> str:
    done = switchyard("token", "issue", "--key", str(key), "--subject", subject, *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def live_ids(control: str, service: str, token: str) -> set[str]:
    resp = requests.get(
        f"{control}/v1/services/{service}",
        headers={"authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT_S,
    )
    if resp.status_code == 404:
        return set()
    assert resp.status_code == 200, resp.text
    return {i["instance_id"] for i in resp.json()["instances"] if i["state"] == "live"}


def test_samples_register_with_their_credentials_and_nothing_else_gets_in(
    launcher: Launcher, tmp_path: Path
) -> None:
    done = switchyard("token", "keygen", "--out", str(tmp_path / "operator"))
    assert done.returncode == 0, done.stderr
    private, public = tmp_path / "operator.key", tmp_path / "operator.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert "BEGIN PUBLIC KEY" in public.read_text()
    again = switchyard("token", "keygen", "--out", str(tmp_path / "operator"))
    assert again.returncode != 0, "keygen never overwrites a key"

    orders = issue(private, "team-orders", "--services", "orders", "--ttl", "1h")
    operator = issue(private, "ops", "--services", "*", "--read")
    nothing = switchyard("token", "issue", "--key", str(private), "--subject", "x")
    assert nothing.returncode != 0 and "allow nothing" in nothing.stderr

    gw = start_gateway(launcher, "gw-auth", "gw-auth", keys_file=public)
    start_rust_service(launcher, gw, "orders", "rust-1", token=orders)
    start_python_service(launcher, gw.control, "orders", "py-1", token=orders)
    # A credential for orders does not register billing: the instance keeps being refused.
    start_python_service(launcher, gw.control, "billing", "py-2", token=orders)
    wait_until(
        lambda: live_ids(gw.control, "orders", operator) == {"rust-1", "py-1"},
        "both orders instances to register with their credential",
        15,
    )
    gw.proc.wait_for_log("registry change refused: credential", count=1)
    assert live_ids(gw.control, "billing", operator) == set()

    answer = requests.get(f"{gw.public}/orders/hello", timeout=HTTP_TIMEOUT_S)
    assert answer.status_code == 200, answer.text

    # Without a credential: 401 with the challenge, for changes and reads alike.
    put = requests.put(
        f"{gw.control}/v1/services/orders/instances/intruder",
        json={"addr": "127.0.0.1:9"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert put.status_code == 401, put.text
    assert put.json()["error"]["code"] == "unauthenticated"
    assert put.headers["www-authenticate"].startswith('Bearer realm="switchyard-control"')
    assert requests.get(f"{gw.control}/metrics", timeout=HTTP_TIMEOUT_S).status_code == 401
    # The token never reaches the log; its id and subject do.
    log = gw.proc.log_text()
    assert orders not in log and operator not in log
    assert "team-orders" in log


def test_a_gateway_that_requires_credentials_does_not_start_without_keys(tmp_path: Path) -> None:
    done = switchyard("serve", "--public-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0")
    assert done.returncode != 0
    assert "control.jwt_keys_file" in done.stderr, done.stderr
    bad = tmp_path / "keys.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n")
    done = switchyard("check-config", "--set", f"control.jwt_keys_file={bad}")
    assert done.returncode != 0
    assert "never a private key" in done.stderr, done.stderr

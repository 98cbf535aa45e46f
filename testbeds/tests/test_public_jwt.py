"""JWT authentication on the public front with real processes: the gateway binary fetches its
keys from a JWKS served by Python's http.server on loopback; keys and tokens are made by
`switchyard token keygen`, `jwks` and `issue-public`. REST and a GraphQL `call` with a valid
token reach the Rust sample with the forwarded claim; no token is 401; a rotated key works.
With Debian's redis-server, a token revoked through the control listener is refused, and a
stale revocation list fails closed.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from harness import (
    HTTP_TIMEOUT_S,
    Launcher,
    binary,
    child_env,
    operator,
    start_gateway,
    start_rust_service,
    wait_until,
)

ISSUER = "https://idp.test/"
AUDIENCE = "jwt-api"
SERVICE = "jwtsvc"


def switchyard(*args: str) -> str:
    exe = binary("SWITCHYARD_BIN", "target/debug/switchyard")
    done = subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=30, env=child_env()
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class JwksServer:
    """Serves one JWKS document, replaceable, and counts the requests for it."""

    def __init__(self) -> None:
        self.document = b'{"keys": []}'
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                server.hits += 1
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                body = server.document
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, *keys: Path) -> None:
        args = [a for k in keys for a in ("--key", str(k))]
        self.document = switchyard("token", "jwks", *args).encode()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()


def keygen(tmp_path: Path, name: str) -> Path:
    """An Ed25519 key pair (name.key, name.pub.pem); returns the private key's path."""
    exe = binary("SWITCHYARD_BIN", "target/debug/switchyard")
    done = subprocess.run(
        [str(exe), "token", "keygen", "--out", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    return tmp_path / f"{name}.key"


def token(key: Path, subject: str) -> str:
    return switchyard(
        "token",
        "issue-public",
        "--key",
        str(key),
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--subject",
        subject,
        "--scope",
        "jwt:read",
    )


def echoed(echo: dict, name: str) -> list[str]:
    return [value for (n, value) in echo["headers"] if n == name]


def jwt_config(tmp_path: Path, jwks_url: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[jwt]
forward_claims = {{ sub = "x-auth-subject" }}

[[jwt.providers]]
name = "idp"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["EdDSA"]
jwks_url = "{jwks_url}"

[[jwt.routes]]
service = "{SERVICE}"
scopes = ["jwt:read"]
"""
    )
    return config


def test_rest_and_graphql_with_a_token_reach_the_service_and_a_rotated_key_works(
    launcher: Launcher, jwks: JwksServer, tmp_path: Path
) -> None:
    old = keygen(tmp_path, "idp-old")
    jwks.publish(old)
    config = jwt_config(tmp_path, jwks.url)
    gw = start_gateway(launcher, "gw-jwt", "gw-jwt", extra=("--config", str(config)))
    assert jwks.hits >= 1, "the keys were fetched before the gateway reported ready"
    start_rust_service(launcher, gw, SERVICE, "rust-1")
    gw.wait_live(SERVICE, "rust-1")
    url = f"{gw.public}/{SERVICE}/echo"

    good = token(old, "alice")
    resp = requests.get(
        url,
        headers={"authorization": f"Bearer {good}", "x-auth-subject": "mallory"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 200, resp.text
    assert echoed(resp.json(), "x-auth-subject") == ["alice"]
    assert echoed(resp.json(), "authorization") == []

    resp = requests.get(url, timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "unauthenticated"
    assert resp.headers["www-authenticate"] == 'Bearer realm="switchyard"'

    query = """query($h: [HeaderInput!]!) {
        ok: call(service: "%s", path: "/echo", headers: $h) { status json }
        bare: call(service: "%s", path: "/echo") { status }
    }""" % (SERVICE, SERVICE)
    variables = {"h": [{"name": "authorization", "value": f"Bearer {good}"}]}
    resp = requests.post(
        f"{gw.public}/graphql",
        json={"query": query, "variables": variables},
        timeout=HTTP_TIMEOUT_S,
    )
    body = resp.json()
    assert body["data"]["ok"]["status"] == 200, body
    assert echoed(body["data"]["ok"]["json"], "x-auth-subject") == ["alice"], body
    assert body["data"]["bare"] is None, body
    assert body["errors"][0]["extensions"]["code"] == "unauthenticated", body

    # The provider rotates: a new key with a new kid. Its first token is not refused.
    new = keygen(tmp_path, "idp-new")
    jwks.publish(old, new)
    before = jwks.hits
    resp = requests.get(
        url, headers={"authorization": f"Bearer {token(new, 'bob')}"}, timeout=HTTP_TIMEOUT_S
    )
    assert resp.status_code == 200, resp.text
    assert echoed(resp.json(), "x-auth-subject") == ["bob"]
    assert jwks.hits == before + 1, "one refetch for the unknown kid"

    metrics = requests.get(f"{gw.control}/metrics", timeout=HTTP_TIMEOUT_S).text
    assert 'switchyard_jwks_keys{provider="idp"} 2' in metrics, metrics
    assert 'switchyard_jwt_refusals_total{reason="missing"} 2' in metrics, metrics


def token_id(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


def test_a_revoked_token_is_refused_and_a_stale_list_fails_closed(
    launcher: Launcher, jwks: JwksServer, tmp_path: Path, redis_server
) -> None:
    key = keygen(tmp_path, "idp")
    jwks.publish(key)
    config = jwt_config(tmp_path, jwks.url)
    settings = redis_server.settings(
        revocation__heartbeat_interval_ms="200",
        revocation__stale_after_ms="1000",
        revocation__resync_interval_ms="2000",
    )
    gw = start_gateway(
        launcher, "gw-jwt-rev", "gw-jwt-rev", extra=("--config", str(config)), settings=settings
    )
    start_rust_service(launcher, gw, SERVICE, "rust-1")
    gw.wait_live(SERVICE, "rust-1")
    url = f"{gw.public}/{SERVICE}/echo"

    def call(bearer: str) -> requests.Response:
        return requests.get(url, headers={"authorization": f"Bearer {bearer}"}, timeout=HTTP_TIMEOUT_S)

    revoked, kept = token(key, "carol"), token(key, "dave")
    wait_until(lambda: call(revoked).status_code == 200, "the token to be taken", 10)
    body = {"issuer": ISSUER, "token_id": token_id(revoked), "expires_at": int(time.time()) + 600}
    resp = requests.post(
        f"{gw.control}/v1/revocations",
        json=body,
        headers={"authorization": f"Bearer {operator().token}"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 200, resp.text
    refused = call(revoked)
    assert refused.status_code == 401, refused.text
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert call(kept).status_code == 200

    # Redis gone: once the copy is stale, the provider (fail_closed by default) answers 503.
    redis_server.kill()
    wait_until(lambda: call(kept).status_code == 503, "the stale list to fail closed", 10)
    assert call(kept).json()["error"]["code"] == "not_ready"

"""nginx serving the web console in front of the cluster, as the original design has it: the
same files the gateways embed, the peers beside them so that the Cluster page puts the three
gateways side by side, and the control calls passed through to the gateways unweakened (a
credential still needed, the WebSocket's credential in connection_init, its Origin the page's
own). The page itself is tested in a browser by testbeds/console/test.sh; here, what nginx
adds."""

from __future__ import annotations

import json

import requests
from support import Cluster, control_headers, wait_until
from websockets.sync.client import connect

TIMEOUT = (2.0, 10.0)


def console(cluster: Cluster) -> str:
    """The console's address on nginx, without the trailing `console/`."""
    return cluster.info["console"].removesuffix("console/")


def test_nginx_serves_the_embedded_console_hardened(healthy: Cluster) -> None:
    base = console(healthy)
    page = requests.get(f"{base}console/", timeout=TIMEOUT)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for path in ["", "assets/console.js", "assets/console.css"]:
        from_nginx = requests.get(f"{base}console/{path}", timeout=TIMEOUT)
        direct = f"{healthy.gateways[0].control}/console/{path}"
        from_gateway = requests.get(direct, timeout=TIMEOUT)
        assert from_nginx.status_code == from_gateway.status_code == 200, path
        assert from_nginx.content == from_gateway.content, f"{path}: nginx serves another build"
        assert from_nginx.headers["content-type"].split(";")[0] == from_gateway.headers[
            "content-type"
        ].split(";")[0], path
    assert requests.post(f"{base}console/", timeout=TIMEOUT).status_code in (403, 405)


def test_the_three_gateways_side_by_side_through_nginx(healthy: Cluster) -> None:
    base = console(healthy)
    peers = requests.get(f"{base}console/peers.json", timeout=TIMEOUT).json()
    assert [p["name"] for p in peers] == [gw.name for gw in healthy.gateways]

    def digests() -> dict[str, str] | None:
        seen = {}
        for peer in peers:
            resp = requests.get(
                f"{base}{peer['base']}v1/cluster", headers=control_headers(), timeout=TIMEOUT
            )
            assert resp.status_code == 200, resp.text
            seen[resp.json()["node_id"]] = resp.json()["registry_digest"]
        return seen if len(set(seen.values())) == 1 else None

    seen = wait_until(digests, "the three gateways to show one digest through nginx", 15)
    assert sorted(seen) == ["gw-1", "gw-2", "gw-3"], "each path reaches its own gateway"
    # nginx adds no credential: without one, the gateways refuse as they do directly.
    for path in [f"{peers[0]['base']}v1/cluster", "v1/services", "metrics"]:
        assert requests.get(f"{base}{path}", timeout=TIMEOUT).status_code == 401, path


def test_the_subscription_through_nginx_with_the_credential_in_connection_init(
    healthy: Cluster,
) -> None:
    base = console(healthy)
    url = base.replace("http://", "ws://") + "graphql"
    origin = base.rstrip("/")
    token = control_headers()["authorization"]
    with connect(
        url,
        subprotocols=["graphql-transport-ws"],
        origin=origin,
        open_timeout=10,
    ) as ws:
        ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": token}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
        ws.send(json.dumps({
            "id": "1",
            "type": "subscribe",
            "payload": {"query": 'subscription { registryChanges(service: "rust-sample", '
                                 "snapshot: true) { snapshot instance { instanceId } } }"},
        }))
        seen = set()
        while len(seen) < 2:
            message = json.loads(ws.recv(timeout=10))
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            seen.add(message["payload"]["data"]["registryChanges"]["instance"]["instanceId"])
        assert seen == set(healthy.services["rust-sample"])

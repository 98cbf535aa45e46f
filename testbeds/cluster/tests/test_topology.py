"""The testbed as `up` leaves it: one public and one control endpoint in front of three
gateways, services in two languages that registered through HAProxy, GraphQL stickiness by
cookie (HTTP and WebSocket), a client's trace carried through HAProxy and the gateway to the
service and into the gateway's log, and `up` again on a running cluster changing nothing."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections import Counter

import requests
from support import CLUSTER_SH, RUN_DIR, Cluster, control_headers, wait_until
from websockets.sync.client import connect

TIMEOUT = (2.0, 10.0)


def test_every_gateway_serves_both_languages_through_haproxy(healthy: Cluster) -> None:
    gateways: Counter = Counter()
    instances: dict[str, set[str]] = {"rust-sample": set(), "python-sample": set()}
    languages = {}
    with requests.Session() as http:
        for n in range(60):
            service = "rust-sample" if n % 2 == 0 else "python-sample"
            resp = http.get(f"{healthy.public}/{service}/hello", timeout=TIMEOUT)
            assert resp.status_code == 200, resp.text
            gateways[resp.headers["x-switchyard-gateway"]] += 1
            body = resp.json()
            instances[service].add(body["instance"])
            languages[service] = body["language"]
    # Round-robin over three UP gateways: each takes a third.
    assert set(gateways) == {"gw1", "gw2", "gw3"}, gateways
    assert min(gateways.values()) >= 15, gateways
    assert instances == {
        "rust-sample": {"rust-sample-1", "rust-sample-2"},
        "python-sample": {"python-sample-1", "python-sample-2"},
    }
    assert languages == {"rust-sample": "rust", "python-sample": "python"}


def test_services_registered_through_the_control_frontend(healthy: Cluster) -> None:
    # Each instance was told --gateway http://127.0.0.1:<HAProxy control port>, and HAProxy
    # logged the gRPC registrations it passed on, over HTTP/2, to a gateway.
    haproxy_log = (RUN_DIR / "logs" / "haproxy.log").read_text(errors="replace")
    registers = [
        line for line in haproxy_log.splitlines()
        if "control control_grpc/gw" in line and "/switchyard.registry.v1.Registration/Register " in line
    ]
    assert len(registers) >= 4, "\n".join(registers) or "no Register calls in haproxy.log"
    # Every gateway lists the four instances, stamped by the gateway that took the
    # registration (or a renewal) from HAProxy.
    for gw in healthy.gateways:
        for service, ids in healthy.services.items():
            listed = gw.instances(service)
            assert listed is not None and set(ids) <= set(listed), (gw.name, service, listed)
            for instance_id in ids:
                assert listed[instance_id]["state"] == "live"
                assert listed[instance_id]["stamp"]["node_id"] in {"gw-1", "gw-2", "gw-3"}
    # The same through HAProxy's control frontend (REST, HTTP/1.1).
    resp = requests.get(
        f"{healthy.control}/v1/services/rust-sample", headers=control_headers(), timeout=TIMEOUT
    )
    assert resp.status_code == 200, resp.text
    assert {i["instance_id"] for i in resp.json()["instances"]} >= {"rust-sample-1", "rust-sample-2"}


def test_graphql_is_sticky_by_cookie_and_rest_is_not(healthy: Cluster) -> None:
    query = {"query": "{ node { nodeId } }"}
    with requests.Session() as http:
        first = http.post(f"{healthy.public}/graphql", json=query, timeout=TIMEOUT)
        assert first.status_code == 200, first.text
        pinned = first.headers["x-switchyard-gateway"]
        # HAProxy inserted its cookie naming that gateway; the session sends it back.
        assert http.cookies.get("SWITCHYARD_GW") == pinned, first.headers
        node_ids = set()
        for _ in range(12):
            resp = http.post(f"{healthy.public}/graphql", json=query, timeout=TIMEOUT)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-switchyard-gateway"] == pinned
            assert "set-cookie" not in resp.headers  # `indirect`: not set again while valid
            node_ids.add(resp.json()["data"]["node"]["nodeId"])
        assert node_ids == {"gw-" + pinned.removeprefix("gw")}
        # REST carries no cookie and is spread over the gateways.
        rest = Counter()
        for _ in range(9):
            resp = http.get(f"{healthy.public}/rust-sample/hello", timeout=TIMEOUT)
            assert "SWITCHYARD_GW" not in resp.headers.get("set-cookie", "")
            rest[resp.headers["x-switchyard-gateway"]] += 1
        assert len(rest) == 3, rest


def test_a_graphql_websocket_stays_on_its_cookie_gateway(healthy: Cluster) -> None:
    """A subscription over WebSocket through HAProxy, pinned by the cookie to gw3, sees a
    registration made through the control frontend (whichever gateway took it)."""
    url = healthy.public.replace("http://", "ws://") + "/graphql"
    with connect(
        url,
        subprotocols=["graphql-transport-ws"],
        additional_headers={"Cookie": "SWITCHYARD_GW=gw3"},
        open_timeout=10,
    ) as ws:
        assert ws.response.headers["x-switchyard-gateway"] == "gw3"
        ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
        ws.send(json.dumps({
            "id": "1",
            "type": "subscribe",
            "payload": {"query": 'subscription { registryChanges(service: "ws-probe") '
                                 "{ kind instance { instanceId } } }"},
        }))
        resp = requests.put(
            f"{healthy.control}/v1/services/ws-probe/instances/probe-1",
            json={"addr": "127.0.0.1:9", "lease_ms": 5000},
            headers=control_headers(),
            timeout=TIMEOUT,
        )
        assert resp.status_code == 200, resp.text
        try:
            message = json.loads(ws.recv(timeout=15))
            assert message["type"] == "next", message
            change = message["payload"]["data"]["registryChanges"]
            assert change["instance"]["instanceId"] == "probe-1", change
        finally:
            requests.delete(
                f"{healthy.control}/v1/services/ws-probe/instances/probe-1",
                headers=control_headers(),
                timeout=TIMEOUT,
            )


def test_a_clients_trace_reaches_the_service_and_the_gateway_log(healthy: Cluster) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    resp = requests.get(
        f"{healthy.public}/rust-sample/echo",
        headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 200, resp.text
    server = resp.headers["x-switchyard-gateway"]
    node = "gw-" + server.removeprefix("gw")
    echoed = resp.json()
    assert echoed["gateway_node"] == node, echoed
    # The service's parent is the gateway's span, in the client's trace.
    version, echoed_trace, parent, flags = echoed["traceparent"].split("-")
    assert (version, echoed_trace, flags) == ("00", trace_id, "01"), echoed["traceparent"]
    assert parent != client_span
    # The gateway that served it logged the request with the trace id (log.access is on in
    # the testbed); the other two never saw it.
    logs = {gw.name: RUN_DIR / "logs" / f"{gw.name}.log" for gw in healthy.gateways}
    wait_until(
        lambda: f"trace_id={trace_id}" in logs[node].read_text(errors="replace"),
        f"trace id {trace_id} in {logs[node]}",
        10,
    )
    for name, path in logs.items():
        if name != node:
            assert trace_id not in path.read_text(errors="replace"), name


def test_up_on_a_running_cluster_changes_nothing(healthy: Cluster) -> None:
    pids = {c: healthy.pid(c) for c in ("gw-1", "haproxy", "rust-sample-1", "kafka")}
    assert all(pids.values()), pids
    done = subprocess.run([str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "already up" in done.stderr
    assert {c: healthy.pid(c) for c in pids} == pids
    status = subprocess.run([str(CLUSTER_SH), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout
    wait_until(healthy.all_servers_up, "every HAProxy server UP", 5)

"""The GraphQL front of real gateway processes, driven by the `gql` client (aiohttp over HTTP,
websockets over WebSocket with the graphql-transport-ws protocol).

Subscriptions are watched on the gateway that took the registration and, with two gateway
processes on a real Kafka broker, on another gateway than the one that took it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import requests
from conftest import MIXED, PYONLY, PYONLY_ID, Mixed
from gql import Client, GraphQLRequest
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from harness import (
    HTTP_TIMEOUT_S,
    control_headers,
    Gateway,
    Launcher,
    Proc,
    start_gateway,
    start_python_service,
)

# Bounds on waits.
QUERY_TIMEOUT_S = 20.0
CHANGE_TIMEOUT_S = 15.0
SLEEP_MS = 400

T = TypeVar("T")


def graphql_url(gateway: Gateway, control: bool = False) -> str:
    return f"{gateway.control if control else gateway.public}/graphql"


def run(coro: Awaitable[T]) -> T:
    """Runs one coroutine to completion, bounded by QUERY_TIMEOUT_S."""
    return asyncio.run(asyncio.wait_for(coro, QUERY_TIMEOUT_S))  # type: ignore[arg-type]


async def execute(
    url: str,
    query: str,
    variables: dict[str, Any] | None = None,
    fetch_schema: bool = False,
) -> dict[str, Any]:
    """One operation over HTTP, with the operator's credential (which a public listener
    ignores); gql raises TransportQueryError if the answer has errors."""
    transport = AIOHTTPTransport(url=url, timeout=int(QUERY_TIMEOUT_S), headers=control_headers())
    async with Client(transport=transport, fetch_schema_from_transport=fetch_schema) as session:
        return await session.execute(GraphQLRequest(query, variable_values=variables))


def failed(
    url: str, query: str, variables: dict[str, Any] | None = None
) -> TransportQueryError:
    """The error gql raises for an operation that is expected to report errors."""
    with pytest.raises(TransportQueryError) as raised:
        run(execute(url, query, variables))
    return raised.value


def codes(error: TransportQueryError) -> dict[str, str]:
    """Each error's extensions.code, by the field it belongs to ("" for the operation)."""
    assert error.errors is not None
    return {
        (e.get("path") or [""])[0]: e["extensions"]["code"]
        for e in error.errors
    }


# --- introspection --------------------------------------------------------------------------


def test_introspection_serves_the_schema_when_enabled(launcher: Launcher) -> None:
    gw = start_gateway(
        launcher, "gateway-introspection", "gw-intro", settings={"graphql.introspection": "true"}
    )

    async def fetch() -> list[str]:
        transport = AIOHTTPTransport(url=graphql_url(gw))
        async with Client(transport=transport, fetch_schema_from_transport=True) as session:
            schema = session.client.schema
            assert schema is not None and schema.query_type is not None
            # The fetched schema also validates queries on the client side from here on.
            await session.execute(GraphQLRequest("{ node { nodeId } }"))
            return sorted(schema.query_type.fields)

    assert run(fetch()) == ["call", "node", "service", "services"]


def test_introspection_is_refused_by_default(gateway: Gateway) -> None:
    with pytest.raises(TransportQueryError) as raised:
        run(execute(graphql_url(gateway), "{ node { nodeId } }", fetch_schema=True))
    assert codes(raised.value) == {"": "not_allowed"}
    assert "graphql.introspection" in str(raised.value)
    # Without introspection, operations still run.
    node = run(execute(graphql_url(gateway), "{ node { nodeId ready } }"))["node"]
    assert node == {"nodeId": "gw-1", "ready": True}


# --- calling services -----------------------------------------------------------------------

FAN_OUT = """
query($path: String!) {
    mixed: call(service: "mixed", path: $path) { status json headers { name value } }
    pyonly: call(service: "pyonly", path: $path) { status json headers { name value } }
}
"""


def served_by(result: dict[str, Any]) -> str:
    return next(h["value"] for h in result["headers"] if h["name"] == "x-served-by")


def test_one_request_fans_out_to_two_services(
    gateway: Gateway, mixed: Mixed, pyonly: Proc
) -> None:
    data = run(execute(graphql_url(gateway), FAN_OUT, {"path": "/hello"}))
    assert data["mixed"]["status"] == 200 and data["pyonly"]["status"] == 200
    assert data["mixed"]["json"]["service"] == MIXED
    assert data["pyonly"]["json"]["service"] == PYONLY
    assert served_by(data["pyonly"]) == PYONLY_ID
    assert served_by(data["mixed"]) == data["mixed"]["json"]["instance"]

    # The two calls run side by side: two slow calls take about as long as one.
    one = """query($path: String!) { pyonly: call(service: "pyonly", path: $path) { status } }"""
    path = {"path": f"/test/sleep/{SLEEP_MS}"}
    started = time.monotonic()
    run(execute(graphql_url(gateway), one, path))
    single = time.monotonic() - started
    started = time.monotonic()
    data = run(execute(graphql_url(gateway), FAN_OUT, path))
    both = time.monotonic() - started
    assert data["mixed"]["json"] == {"slept_ms": SLEEP_MS} == data["pyonly"]["json"]
    assert both < 1.5 * single, f"two calls took {both:.3f} s, one {single:.3f} s"


def test_a_call_carries_what_rest_would_send(gateway: Gateway, pyonly: Proc) -> None:
    query = """
    query($headers: [HeaderInput!]!) {
        echo: call(service: "pyonly", method: "PUT", path: "/echo", query: "x=1&y=two%20words",
                   headers: $headers, body: "héllo") { status json requestId }
    }"""
    headers = [
        {"name": "X-Custom", "value": "custom value"},
        {"name": "x-request-id", "value": "gql-echo-1"},
    ]
    echo = run(execute(graphql_url(gateway), query, {"headers": headers}))["echo"]
    assert echo["status"] == 200 and echo["requestId"] == "gql-echo-1"
    sent = echo["json"]
    assert (sent["method"], sent["path"], sent["query"]) == ("PUT", "/echo", "x=1&y=two%20words")
    assert sent["body"] == "héllo"
    assert sent["gateway_node"] == "gw-1" and sent["request_id"] == "gql-echo-1"
    pairs = [tuple(h) for h in sent["headers"]]
    assert ("x-custom", "custom value") in pairs
    assert ("x-forwarded-for", "127.0.0.1") in pairs
    assert ("x-request-id", "gql-echo-1") in pairs


def test_errors_carry_the_rest_code_and_leave_the_siblings(
    gateway: Gateway, pyonly: Proc
) -> None:
    error = failed(
        graphql_url(gateway),
        """{
            ok: call(service: "pyonly", path: "/hello") { status }
            own404: call(service: "pyonly", path: "/no/such/route") { status }
            unknown: call(service: "nosuch") { status }
            unavailable: call(service: "pyonly", path: "/test/grpc-error/14") { status }
            invalid: call(service: "pyonly", path: "no-slash") { status }
        }""",
    )
    assert error.data is not None
    assert error.data["ok"] == {"status": 200}
    assert error.data["own404"] == {"status": 404}, "a service's own 404 is an answer"
    for alias in ("unknown", "unavailable", "invalid"):
        assert error.data[alias] is None
    assert codes(error) == {
        "unknown": "service_not_found",
        "unavailable": "upstream_unavailable",
        "invalid": "invalid_argument",
    }
    assert error.errors is not None
    statuses = {e["path"][0]: e["extensions"]["status"] for e in error.errors}
    assert statuses == {"unknown": 404, "unavailable": 503, "invalid": 400}


# --- limits ---------------------------------------------------------------------------------


def test_depth_and_call_limits(launcher: Launcher, pyonly: Proc) -> None:
    gw = start_gateway(
        launcher,
        "gateway-limits",
        "gw-limits",
        settings={"graphql.depth_max": "3", "graphql.calls_max": "2"},
    )
    url = graphql_url(gw)
    error = failed(url, "{ services { instances { stamp { nodeId } } } }")
    assert codes(error) == {"": "invalid_argument"}
    assert "nested too deep" in str(error)

    three = """{ a: call(service: "x") { status } b: call(service: "x") { status }
                 c: call(service: "x") { status } }"""
    error = failed(url, three)
    assert codes(error) == {"": "invalid_argument"}
    assert "3 call fields" in str(error) and "graphql.calls_max" in str(error)
    assert error.data is None
    # Within the bound, the calls run (and fail, as the service is unknown to this gateway).
    error = failed(url, """{ a: call(service: "x") { status } b: call(service: "x") { status } }""")
    assert codes(error) == {"a": "service_not_found", "b": "service_not_found"}


# --- registration ---------------------------------------------------------------------------

REGISTER = """
mutation($service: String!, $id: String!) {
    register(input: { service: $service, instanceId: $id, addr: "127.0.0.1:9", leaseMs: 60000 }) {
        instance { instanceId state } published
    }
}
"""


def test_mutations_are_refused_on_the_public_listener(gateway: Gateway) -> None:
    variables = {"service": "gql-registered", "id": "g-1"}
    error = failed(graphql_url(gateway), REGISTER, variables)
    assert codes(error) == {"": "not_allowed"}
    assert gateway.instances("gql-registered") == {}

    data = run(execute(graphql_url(gateway, control=True), REGISTER, variables))
    assert data["register"] == {"instance": {"instanceId": "g-1", "state": "LIVE"}, "published": True}
    assert set(gateway.instances("gql-registered")) == {"g-1"}
    gone = run(
        execute(
            graphql_url(gateway, control=True),
            'mutation { deregister(service: "gql-registered", instanceId: "g-1") { existed } }',
        )
    )
    assert gone == {"deregister": {"existed": True}}


# --- subscription ---------------------------------------------------------------------------

WATCH = """
subscription($service: String!) {
    registryChanges(service: $service, snapshot: true) {
        kind snapshot originNode instance { instanceId state }
    }
}
"""


async def watch(gateway: Gateway, service: str) -> AsyncIterator[dict[str, Any]]:
    transport = WebsocketsTransport(
        url=graphql_url(gateway).replace("http://", "ws://"),
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    async with Client(transport=transport) as session:
        request = GraphQLRequest(WATCH, variable_values={"service": service})
        async for result in session.subscribe(request):
            yield result["registryChanges"]


async def next_matching(
    changes: AsyncIterator[dict[str, Any]], wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The next change for which `wanted` holds (renewals in between are skipped)."""
    async def scan() -> dict[str, Any]:
        async for change in changes:
            if wanted(change):
                return change
        raise AssertionError("the subscription ended")

    return await asyncio.wait_for(scan(), CHANGE_TIMEOUT_S)


def test_a_subscriber_sees_a_service_register_and_deregister(
    gateway: Gateway, launcher: Launcher
) -> None:
    service, marker, instance_id = "gql-watched", "marker", "py-watched"
    resp = requests.put(
        f"{gateway.control}/v1/services/{service}/instances/{marker}",
        json={"addr": "127.0.0.1:9", "lease_ms": 60_000},
        headers=control_headers(),
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 200, resp.text

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        changes = watch(gateway, service)
        # The snapshot holds the marker, so once it arrives the subscription is live.
        first = await next_matching(changes, lambda c: True)
        proc = await asyncio.to_thread(
            start_python_service, launcher, gateway.control, service, instance_id
        )
        registered = await next_matching(
            changes, lambda c: c["instance"]["instanceId"] == instance_id
        )
        proc.send_signal(signal.SIGTERM)  # the sample deregisters on SIGTERM
        deregistered = await next_matching(changes, lambda c: c["kind"] == "DEREGISTER")
        assert await asyncio.to_thread(proc.wait) == 0
        await changes.aclose()
        return first, registered, deregistered

    first, registered, deregistered = asyncio.run(scenario())
    assert first["snapshot"] is True and first["instance"]["instanceId"] == marker
    assert registered["kind"] == "REGISTER" and registered["snapshot"] is False
    assert registered["originNode"] == "gw-1"
    assert registered["instance"]["state"] == "LIVE"
    assert deregistered["instance"] == {"instanceId": instance_id, "state": "DEREGISTERED"}


def test_a_subscriber_on_one_gateway_sees_a_registration_made_through_another(
    launcher: Launcher, kafka
) -> None:
    """Two gateway processes share the registry through Kafka: the watch on gateway B
    receives the registration that gateway A accepted, stamped by A."""
    from test_kafka_cluster import fresh_topic, wait_ready

    topic = fresh_topic()
    a = start_gateway(launcher, "gql-a", node_id="gql-a", extra=kafka.gateway_args(topic))
    b = start_gateway(launcher, "gql-b", node_id="gql-b", extra=kafka.gateway_args(topic))
    for gw in (a, b):
        wait_ready(gw)
    service = "gql-cross"
    marker = requests.put(
        f"{b.control}/v1/services/{service}/instances/marker",
        json={"addr": "127.0.0.1:9", "lease_ms": 60_000},
        headers=control_headers(),
        timeout=HTTP_TIMEOUT_S,
    )
    assert marker.status_code == 200, marker.text

    async def scenario() -> dict[str, Any]:
        changes = watch(b, service)
        # The snapshot holds the marker, so once it arrives the subscription is live.
        await next_matching(changes, lambda c: c["instance"]["instanceId"] == "marker")
        resp = await asyncio.to_thread(
            requests.put,
            f"{a.control}/v1/services/{service}/instances/through-a",
            json={"addr": "127.0.0.1:9", "lease_ms": 60_000},
            headers=control_headers(),
            timeout=HTTP_TIMEOUT_S,
        )
        assert resp.status_code == 200, resp.text
        seen = await next_matching(changes, lambda c: c["instance"]["instanceId"] == "through-a")
        await changes.aclose()
        return seen

    seen = asyncio.run(scenario())
    assert seen["kind"] == "REGISTER" and seen["snapshot"] is False
    assert seen["originNode"] == "gql-a"
    assert seen["instance"]["state"] == "LIVE"

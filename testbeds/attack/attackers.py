"""The attackers of the hostile-client load test, all in one asyncio process, all from one
source address (`--source`, 127.0.0.2 by default, so that the gateway can tell them from the
legitimate client on 127.0.0.1).

    attackers.py --port P --only slow-header,h2-bodies ... (see --help)

Each attacker keeps a fixed number of sockets and, whenever the gateway closes one, opens it
again after a short pause (longer after a refusal, doubling up to a cap), so the pressure is
constant and every retry rate is bounded. They are cheap by design: sockets mostly sit idle,
trickling a byte now and then, so that on a small machine the gateway is what is measured.

* slow-header: an HTTP/1.1 request head, one byte at a time, never finished.
* slow-body: a complete head declaring a body, then the body a few bytes at a time.
* flood: connections that send nothing (half) or one request and then nothing (half), held
  until the gateway closes them.
* h2-bodies: HTTP/2 connections, each with as many streams as the gateway allows, each
  stream sending part of the body it declared and then nothing.
* websockets: GraphQL WebSockets (graphql-transport-ws) on /graphql: half never send
  `connection_init`; the others do, then subscribe many times each.

With --wait-go it starts once a line arrives on standard input. Runs until SIGTERM or SIGINT
(or --duration-s), then prints one JSON object: per attacker,
what it did and what the gateway answered (counts of each outcome, how long the gateway let
each connection it did not refuse at once live, the most sockets held at once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import itertools
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import websockets
from websockets.asyncio.client import connect as ws_connect

# A connection the gateway closes within this long of opening it, having sent nothing, was
# refused (`connections_max` closes it at once).
REFUSED_WITHIN_S = 0.1
CONNECT_TIMEOUT_S = 2.0
# The pause before opening a socket again after the gateway ended it, drawn up to this; it
# keeps the sockets from moving in step (a wave of reconnections every timeout, which would
# measure the attacker's own bursts of CPU on a small machine more than the gateway).
REOPEN_JITTER_S = 0.5
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 4.0
ATTACKERS = ["slow-header", "slow-body", "flood", "h2-bodies", "websockets"]


@dataclass
class Stats:
    """What one attacker saw. `held_s` is how long the gateway let each connection live."""

    name: str
    sockets: int
    outcomes: Counter = field(default_factory=Counter)
    held_s: list[float] = field(default_factory=list)
    open_now: int = 0
    open_max: int = 0
    extra: Counter = field(default_factory=Counter)

    def opened(self) -> None:
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)

    def closed(self, opened_at: float) -> float:
        """Notes a socket's end; returns how long it lived."""
        self.open_now -= 1
        return time.monotonic() - opened_at

    def ended(self, outcome: str, lived_s: float) -> bool:
        """Counts how a socket ended; returns whether the gateway refused it at once (closed
        it within REFUSED_WITHIN_S, having sent nothing). How long the gateway let the others
        live is kept."""
        refused = outcome in ("closed", "reset") and lived_s < REFUSED_WITHIN_S
        if refused:
            self.outcomes["refused_at_once"] += 1
        else:
            self.outcomes[outcome] += 1
            self.held_s.append(lived_s)
        return refused

    def report(self) -> dict:
        held = sorted(self.held_s)
        return {
            "attacker": self.name,
            "sockets": self.sockets,
            "open_max": self.open_max,
            "outcomes": dict(sorted(self.outcomes.items())),
            "held_s": [round(h, 3) for h in held],
            **({"extra": dict(sorted(self.extra.items()))} if self.extra else {}),
        }


class Backoff:
    """The pause before opening a socket again: at most REOPEN_JITTER_S after a connection
    the gateway held, doubling (to a cap) after each refusal in a row; always jittered."""

    def __init__(self) -> None:
        self.delay = BACKOFF_MIN_S

    def after(self, refused: bool) -> float:
        if not refused:
            self.delay = BACKOFF_MIN_S
            return random.random() * REOPEN_JITTER_S
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)
        return self.delay * (0.5 + random.random())


class Target:
    def __init__(self, args: argparse.Namespace) -> None:
        self.host, self.port, self.source = args.host, args.port, args.source
        self.authority = f"{args.host}:{args.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, local_addr=(self.source, 0)),
            CONNECT_TIMEOUT_S,
        )


async def pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def open_socket(target, stats, stop: asyncio.Event, backoff: Backoff):
    """A new connection to the gateway, counted as opened; `None` after a refused connect
    (counted, and paused for with the backoff)."""
    try:
        reader, writer = await target.connect()
    except (OSError, asyncio.TimeoutError):
        stats.outcomes["connect_failed"] += 1
        await pause(stop, backoff.after(True))
        return None
    stats.opened()
    return reader, writer


def status_of(data: bytes) -> str:
    """`status_408` from the first line of an HTTP/1.1 answer, else `data`."""
    parts = data.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return f"status_{parts[1].decode()}"
    return "data"


async def read_or_stop(
    reader: asyncio.StreamReader, stop: asyncio.Event, timeout_s: float | None
) -> bytes | None:
    """What the gateway sends next (b"" at its end of stream), or None once `stop` is set;
    raises TimeoutError when `timeout_s` passes first."""
    read = asyncio.ensure_future(reader.read(65536))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {read, stopped}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopped.cancel()
    if read in done:
        return read.result()
    read.cancel()
    if stopped in done:
        return None
    raise asyncio.TimeoutError


async def http1_socket(
    stats: Stats,
    target: Target,
    stop: asyncio.Event,
    first: bytes,
    drip: Callable[[], bytes] | None,
    interval_s: float | None,
    hold_after_answer: bool = False,
) -> None:
    """One socket of an HTTP/1.1 attacker, opened again each time the gateway ends it: send
    `first`, then `drip()` every `interval_s`, until the gateway answers (or, with
    `hold_after_answer`, until it closes) or `stop` is set."""
    backoff = Backoff()
    while not stop.is_set():
        opened = await open_socket(target, stats, stop, backoff)
        if opened is None:
            continue
        reader, writer = opened
        opened_at = time.monotonic()
        outcome, answered = None, None
        try:
            if first:
                writer.write(first)
            while True:
                try:
                    data = await read_or_stop(reader, stop, interval_s)
                except asyncio.TimeoutError:
                    if drip is not None:
                        writer.write(drip())
                    continue
                if data is None:
                    break  # stopped
                if not data:
                    outcome = f"closed_after_{answered}" if answered else "closed"
                    break
                answered = answered or status_of(data)
                if not hold_after_answer:
                    outcome = answered
                    break
        except (ConnectionError, OSError):
            outcome = "reset"
        finally:
            lived_s = stats.closed(opened_at)
            writer.close()
        if outcome is None:
            stats.ended("open_at_end", lived_s)
            break
        await pause(stop, backoff.after(stats.ended(outcome, lived_s)))


def slow_header(args: argparse.Namespace, target: Target, stop: asyncio.Event) -> tuple:
    stats = Stats("slow-header", args.slow_header)
    first = f"GET /sample/hello HTTP/1.1\r\nHost: {target.authority}\r\n".encode()
    # More header lines, a byte per interval, for as long as the gateway listens.
    line = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n"

    def dripper() -> Callable[[], bytes]:
        position = itertools.count()

        def drip() -> bytes:
            at = next(position) % len(line)
            stats.extra["bytes_trickled"] += 1
            return line[at : at + 1]

        return drip

    return stats, [
        http1_socket(stats, target, stop, first, dripper(), args.drip_interval_s)
        for _ in range(args.slow_header)
    ]


def slow_body(args: argparse.Namespace, target: Target, stop: asyncio.Event) -> tuple:
    stats = Stats("slow-body", args.slow_body)
    head = (
        f"POST /sample/test/echo-body HTTP/1.1\r\nHost: {target.authority}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {args.body_declared_bytes}\r\n\r\n"
    ).encode()
    first = head + b"x" * min(args.body_sent_bytes, args.body_declared_bytes - 1)

    def drip() -> bytes:
        stats.extra["bytes_trickled"] += 1
        return b"y"

    return stats, [
        http1_socket(stats, target, stop, first, drip, args.drip_interval_s)
        for _ in range(args.slow_body)
    ]


def flood(args: argparse.Namespace, target: Target, stop: asyncio.Event) -> tuple:
    stats = Stats("flood", args.flood)
    # Half the sockets send nothing; the other half send one whole request and then hold the
    # kept-alive connection.
    request = f"GET /healthz HTTP/1.1\r\nHost: {target.authority}\r\n\r\n".encode()
    return stats, [
        http1_socket(stats, target, stop, request if i % 2 else b"", None, None, True)
        for i in range(args.flood)
    ]


def h2_bodies(args: argparse.Namespace, target: Target, stop: asyncio.Event) -> tuple:
    stats = Stats("h2-bodies", args.h2_connections)
    partial = min(args.body_sent_bytes, args.body_declared_bytes - 1)
    chunk = b"z" * partial

    async def one() -> None:
        backoff = Backoff()
        while not stop.is_set():
            opened = await open_socket(target, stats, stop, backoff)
            if opened is None:
                continue
            reader, writer = opened
            opened_at = time.monotonic()
            outcome = None
            try:
                outcome = await h2_session(reader, writer)
            except (ConnectionError, OSError):
                outcome = "reset"
            except h2.exceptions.ProtocolError as error:
                outcome = f"protocol_error_{type(error).__name__}"
            finally:
                lived_s = stats.closed(opened_at)
                writer.close()
            if outcome is None:
                stats.ended("open_at_end", lived_s)
                break
            await pause(stop, backoff.after(stats.ended(outcome, lived_s)))

    async def h2_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        settled = False
        # Stream id -> bytes of its partial body not yet sent (flow control may hold them).
        pending: dict[int, int] = {}

        def open_streams() -> None:
            limit = min(conn.remote_settings.max_concurrent_streams, args.h2_streams_max)
            while conn.open_outbound_streams < limit:
                sid = conn.get_next_available_stream_id()
                conn.send_headers(
                    sid,
                    [
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":authority", target.authority),
                        (":path", "/sample/test/echo-body"),
                        ("content-type", "application/octet-stream"),
                        ("content-length", str(args.body_declared_bytes)),
                    ],
                )
                pending[sid] = partial
                stats.extra["streams_opened"] += 1

        def send_pending() -> None:
            for sid in list(pending):
                try:
                    window = conn.local_flow_control_window(sid)
                except h2.exceptions.StreamClosedError:
                    pending.pop(sid)
                    continue
                size = min(pending[sid], window, conn.max_outbound_frame_size)
                while size > 0:
                    conn.send_data(sid, chunk[:size])
                    pending[sid] -= size
                    stats.extra["body_bytes_sent"] += size
                    window = conn.local_flow_control_window(sid)
                    size = min(pending[sid], window, conn.max_outbound_frame_size)
                if pending[sid] == 0:
                    pending.pop(sid)

        while True:
            data = await read_or_stop(reader, stop, None)
            if data is None:
                return None
            if not data:
                return "closed"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    settled = True
                elif isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers).get(":status", "?")
                    stats.extra[f"stream_status_{status}"] += 1
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    # The answer is complete; give up the rest of the body.
                    pending.pop(event.stream_id, None)
                    try:
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.CANCEL)
                    except h2.exceptions.StreamClosedError:
                        pass
                elif isinstance(event, h2.events.StreamReset):
                    stats.extra[f"stream_reset_{event.error_code.name}"] += 1
                    pending.pop(event.stream_id, None)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    writer.write(conn.data_to_send())
                    return f"goaway_{event.error_code.name}"
            if settled:
                # A stream ends with the gateway's answer (or a reset): open another in its
                # place, so the connection always holds as many unfinished bodies as allowed.
                open_streams()
                send_pending()
            writer.write(conn.data_to_send())

    return stats, [one() for _ in range(args.h2_connections)]


SUBSCRIPTION = "subscription { registryChanges(snapshot: true) { kind snapshot } }"


def websocket_flood(args: argparse.Namespace, target: Target, stop: asyncio.Event) -> tuple:
    stats = Stats("websockets", args.websockets)
    url = f"ws://{target.authority}/graphql"

    async def one(i: int) -> None:
        silent = i % 2 == 0
        backoff = Backoff()
        while not stop.is_set():
            opened_at = time.monotonic()
            try:
                ws = await ws_connect(
                    url,
                    subprotocols=["graphql-transport-ws"],
                    open_timeout=CONNECT_TIMEOUT_S * 2,
                    ping_interval=None,
                    close_timeout=1,
                    max_size=1 << 20,
                    local_addr=(target.source, 0),
                )
            except websockets.exceptions.InvalidStatus as error:
                stats.outcomes[f"upgrade_refused_{error.response.status_code}"] += 1
                await pause(stop, backoff.after(True))
                continue
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
                stats.outcomes[f"connect_failed_{type(e).__name__}"] += 1
                await pause(stop, backoff.after(True))
                continue
            stats.opened()
            outcome = None
            try:
                outcome = await session(ws, silent)
            finally:
                lived_s = stats.closed(opened_at)
                await ws.close()
            if outcome is None:
                stats.ended("open_at_end", lived_s)
                break
            await pause(stop, backoff.after(stats.ended(outcome, lived_s)))

    async def session(ws, silent: bool) -> str | None:
        accepted: set[str] = set()
        try:
            if not silent:
                await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
                for k in range(args.ws_subscriptions):
                    await ws.send(
                        json.dumps(
                            {
                                "id": f"s{k}",
                                "type": "subscribe",
                                "payload": {"query": SUBSCRIPTION},
                            }
                        )
                    )
                stats.extra["subscriptions_sent"] += args.ws_subscriptions
            while not stop.is_set():
                recv = asyncio.ensure_future(ws.recv())
                stopped = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({recv, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if recv not in done:
                    recv.cancel()
                    return None
                message = json.loads(recv.result())
                kind = message.get("type")
                if kind == "next" and message.get("id") not in accepted:
                    accepted.add(message.get("id"))
                    stats.extra["subscriptions_answered"] += 1
                elif kind in ("error", "complete"):
                    stats.extra[f"subscription_{kind}"] += 1
                elif kind == "connection_ack":
                    stats.extra["acks"] += 1
                elif kind == "next":
                    stats.extra["changes_received"] += 1
            return None
        except websockets.exceptions.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else "none"
            return f"closed_{'silent' if silent else 'subscribed'}_{code}"
        except (ValueError, OSError):
            return "bad_message"

    return stats, [one(i) for i in range(args.websockets)]


BUILDERS = {
    "slow-header": slow_header,
    "slow-body": slow_body,
    "flood": flood,
    "h2-bodies": h2_bodies,
    "websockets": websocket_flood,
}


async def run(args: argparse.Namespace) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    target = Target(args)
    chosen = [a for a in args.only.split(",") if a]
    if args.wait_go:
        # Imports and start-up are done: wait for the word, so that they fall outside the
        # measured window.
        print("attackers: ready", file=sys.stderr, flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
    stats, tasks = [], []
    started = time.monotonic()
    for name in chosen:
        one_stats, coroutines = BUILDERS[name](args, target, stop)
        stats.append(one_stats)
        # Start the sockets spread over the ramp, not in one burst.
        for k, coroutine in enumerate(coroutines):
            at = args.ramp_s * k / max(len(coroutines), 1)
            tasks.append(asyncio.create_task(delayed(coroutine, stop, at)))
    print("attackers: started", file=sys.stderr, flush=True)
    try:
        await asyncio.wait_for(stop.wait(), args.duration_s)
    except asyncio.TimeoutError:
        stop.set()
    # Each socket's loop ends at its next wake-up once `stop` is set; bound the wait anyway.
    _, late = await asyncio.wait(tasks, timeout=5)
    for task in late:
        task.cancel()
    return {
        "source": args.source,
        "seconds": round(time.monotonic() - started, 1),
        "unfinished_tasks": len(late),
        "attackers": [s.report() for s in stats],
    }


async def delayed(coroutine, stop: asyncio.Event, seconds: float) -> None:
    await pause(stop, seconds)
    if stop.is_set():
        coroutine.close()
        return
    await coroutine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source", default="127.0.0.2", help="local address to attack from")
    p.add_argument("--only", default=",".join(ATTACKERS), help="comma-separated attackers")
    p.add_argument("--duration-s", type=float, default=60.0, help="stop after this long at most")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--wait-go", action="store_true", help="start on a line on standard input")
    p.add_argument("--ramp-s", type=float, default=2.0, help="spread the sockets' start")
    p.add_argument("--slow-header", type=int, default=100, help="sockets")
    p.add_argument("--slow-body", type=int, default=100, help="sockets")
    p.add_argument("--flood", type=int, default=450, help="sockets")
    p.add_argument("--h2-connections", type=int, default=16)
    p.add_argument("--h2-streams-max", type=int, default=1_000, help="per connection, at most")
    p.add_argument("--websockets", type=int, default=250, help="sockets")
    p.add_argument("--ws-subscriptions", type=int, default=16, help="per subscribing socket")
    p.add_argument("--drip-interval-s", type=float, default=1.0)
    p.add_argument("--body-declared-bytes", type=int, default=64 * 1024)
    p.add_argument("--body-sent-bytes", type=int, default=32 * 1024)
    args = p.parse_args()
    unknown = set(args.only.split(",")) - set(ATTACKERS) - {""}
    if unknown:
        p.error(f"unknown attackers {sorted(unknown)}; known: {ATTACKERS}")
    if args.body_declared_bytes < 2:
        p.error("--body-declared-bytes must be at least 2")
    random.seed(args.seed)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()

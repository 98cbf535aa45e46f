"""The legitimate client of the hostile-client load test: REST calls through the gateway at a
fixed rate, over a pool of kept-alive HTTP/1.1 connections, the way a load balancer in front
of the gateway would send them.

    legit.py --host 127.0.0.1 --port P --path /sample/hello --rate 100 --pool 8 --seed 1

It runs until its standard input closes. Each line it reads names the phase that the requests
sent from then on belong to (`baseline`, `attack`, ...); a request is counted in the phase in
which it was due, and a phase named again adds to what it had. When standard input closes it stops sending, waits for the requests in
flight (each bounded by --request-timeout-s), and prints one JSON object: per phase, the
requests, the successes, the failures by kind and the latency percentiles.

Open loop: request i is due at start + i / rate whatever happened before it, and its latency
counts from when it was due, so a stalled gateway shows up as latency (and, past the request
timeout, as failures) instead of as fewer requests sent. The pool is opened before the first
phase and kept busy; a connection the gateway closes is opened again (a connection the
gateway refuses fails the request that needed it).

Besides the pool, --new-conn-rate requests per second each open a connection of their own
(`Connection: close`), as clients that do not sit behind a load balancer do; they are counted
apart, in phases named `<phase> new-conn`. With --control-port, --control-rate requests per
second go to the control target (control.py) on one kept-alive connection, counted in phases
named `<phase> control`: a stall they share with the gateway's requests is the machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field

# How many due requests may wait for a free connection; past it a request fails at once
# (`queue_full`) instead of growing a backlog without bound.
QUEUE_MAX = 1_000
CONNECT_TIMEOUT_S = 1.0
HEAD_BYTES_MAX = 64 * 1024
BODY_BYTES_MAX = 1024 * 1024


@dataclass
class Phase:
    name: str
    sent: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)
        return {
            "phase": self.name,
            "sent": self.sent,
            "ok": self.ok,
            "failures": dict(sorted(self.failures.items())),
            "success_rate": self.ok / self.sent if self.sent else None,
            "latency_ms": {
                f"p{q}": percentile(lat, q / 100) for q in (50, 90, 99, 99.9)
            }
            | {"max": lat[-1] if lat else None},
        }


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank percentile of successful requests' latencies."""
    if not sorted_values:
        return None
    rank = math.ceil(round(q * len(sorted_values), 6))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


class Failure(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Connection:
    """One kept-alive HTTP/1.1 connection, opened again when the gateway closes it."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.host, self.port, self.source = host, port, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.opened = 0

    async def ensure_open(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            return
        self.close()
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, local_addr=(self.source, 0)),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, asyncio.TimeoutError):
            raise Failure("connect") from None
        self.opened += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        await self.ensure_open()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            if len(head) > HEAD_BYTES_MAX:
                raise Failure("bad_response")
            status, length, close = parse_head(head)
            if length > BODY_BYTES_MAX:
                raise Failure("bad_response")
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.close()
            raise Failure("connection_closed") from None
        except asyncio.LimitOverrunError:
            self.close()
            raise Failure("bad_response") from None
        if close:
            self.close()
        return status, body


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length and whether the gateway closes the connection after it."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise Failure("bad_response")
    length, close = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length" and value.isdigit():
            length = int(value)
        elif name == "connection" and value.lower() == "close":
            close = True
        elif name == "transfer-encoding":
            raise Failure("bad_response")  # the gateway answers with a length
    if length is None:
        raise Failure("bad_response")
    return int(parts[1]), length, close


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.raw = (
            f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
            "User-Agent: switchyard-attack-legit\r\n\r\n"
        ).encode()
        self.queue: asyncio.Queue[tuple[float, Phase]] = asyncio.Queue(QUEUE_MAX)
        self.raw_fresh = self.raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        # By name: a phase named again (rounds of baseline and attack) goes on adding up.
        self.phases: dict[str, Phase] = {}
        self.phase_name = "start"
        self.fresh_in_flight = 0
        self.control_in_flight = 0
        self.control_conn = (
            Connection(args.host, args.control_port, args.source) if args.control_port else None
        )
        self.raw_control = (
            f"GET /control HTTP/1.1\r\nHost: {args.host}:{args.control_port}\r\n\r\n"
        ).encode()
        self.stopping = False
        # Every successful request's due time (monotonic clock, shared by the processes of
        # one machine) and latency, for finding when the slow ones happened.
        self.samples = open(args.samples, "w") if args.samples else None
        self.connections = [
            Connection(args.host, args.port, args.source) for _ in range(args.pool)
        ]

    def phase(self, kind: str) -> Phase:
        """The current phase's record for one kind of request: `pool`, `new-conn` (each on a
        new connection) or `control` (to the control target)."""
        name = self.phase_name if kind == "pool" else f"{self.phase_name} {kind}"
        return self.phases.setdefault(name, Phase(name))

    async def one(self, conn: Connection, raw: bytes, due: float, phase: Phase) -> None:
        """Sends one request due at `due` on `conn` and records its outcome in `phase`."""
        try:
            remaining = due + self.args.request_timeout_s - time.monotonic()
            if remaining <= 0:
                raise Failure("timeout")
            try:
                status, body = await asyncio.wait_for(conn.request(raw), remaining)
            except asyncio.TimeoutError:
                conn.close()
                raise Failure("timeout") from None
            if status != 200:
                raise Failure(f"status_{status}")
            expected = b"hello" if raw is self.raw_control else self.args.expect.encode()
            if expected not in body:
                raise Failure("bad_body")
            phase.ok += 1
            latency_ms = (time.monotonic() - due) * 1000
            phase.latencies_ms.append(latency_ms)
            if self.samples is not None:
                self.samples.write(f"{due:.4f},{latency_ms:.3f},{phase.name}\n")
        except Failure as failure:
            phase.fail(failure.kind)

    async def worker(self, conn: Connection) -> None:
        while True:
            due, phase = await self.queue.get()
            try:
                await self.one(conn, self.raw, due, phase)
            finally:
                self.queue.task_done()

    async def control(self, conn: Connection, due: float, phase: Phase) -> None:
        try:
            await self.one(conn, self.raw_control, due, phase)
        finally:
            self.control_in_flight -= 1

    async def fresh(self, due: float, phase: Phase) -> None:
        conn = Connection(self.args.host, self.args.port, self.args.source)
        try:
            await self.one(conn, self.raw_fresh, due, phase)
        finally:
            conn.close()
            self.fresh_in_flight -= 1

    async def dispatch(self, rate: float, kind: str) -> None:
        """Requests due at `rate` per second: onto the pool's queue (`pool`), each on a
        connection of its own (`new-conn`, at most QUEUE_MAX at once), or to the control
        target on one kept-alive connection (`control`; one at a time, a request due while
        another is in flight fails as `queue_full`)."""
        interval = 1.0 / rate
        # A random phase for the schedule, so runs with different seeds do not line up with
        # the attackers' timers the same way.
        start = time.monotonic() + random.random() * interval
        tasks: set[asyncio.Task] = set()
        i = 0
        while not self.stopping:
            due = start + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            phase = self.phase(kind)
            phase.sent += 1
            i += 1
            task = None
            if kind == "pool":
                try:
                    self.queue.put_nowait((due, phase))
                except asyncio.QueueFull:
                    phase.fail("queue_full")
            elif kind == "control":
                if self.control_in_flight:
                    phase.fail("queue_full")
                else:
                    self.control_in_flight += 1
                    task = asyncio.create_task(self.control(self.control_conn, due, phase))
            elif self.fresh_in_flight >= QUEUE_MAX:
                phase.fail("queue_full")
            else:
                self.fresh_in_flight += 1
                task = asyncio.create_task(self.fresh(due, phase))
            if task is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            name = line.strip()
            if name:
                self.phase_name = name

    async def run(self) -> dict:
        # Open the pool before the first request, so that it is in place before any attacker.
        for conn in self.connections:
            await conn.ensure_open()
        workers = [asyncio.create_task(self.worker(c)) for c in self.connections]
        dispatchers = [asyncio.create_task(self.dispatch(self.args.rate, "pool"))]
        if self.args.new_conn_rate > 0:
            dispatchers.append(
                asyncio.create_task(self.dispatch(self.args.new_conn_rate, "new-conn"))
            )
        if self.control_conn is not None:
            await self.control_conn.ensure_open()
            dispatchers.append(
                asyncio.create_task(self.dispatch(self.args.control_rate, "control"))
            )
        print("legit: pool open", file=sys.stderr, flush=True)
        await self.commands()
        self.stopping = True
        await asyncio.gather(*dispatchers)
        await asyncio.wait_for(self.queue.join(), self.args.request_timeout_s + 1)
        for task in workers:
            task.cancel()
        return {
            "rate": self.args.rate,
            "pool": self.args.pool,
            "new_conn_rate": self.args.new_conn_rate,
            "connections_opened": sum(c.opened for c in self.connections),
            "phases": [p.summary() for p in self.phases.values()],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="127.0.0.1", help="local address to send from")
    parser.add_argument("--path", default="/sample/hello")
    parser.add_argument("--expect", default="hello", help="text a good answer's body holds")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--pool", type=int, default=8, help="kept-alive connections")
    parser.add_argument(
        "--new-conn-rate",
        type=float,
        default=5.0,
        help="requests per second besides, each on a new connection (0: none)",
    )
    parser.add_argument("--control-port", type=int, help="the control target (control.py)")
    parser.add_argument("--control-rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--request-timeout-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--samples", help="write due,latency_ms,phase per request to this file")
    args = parser.parse_args()
    if not (
        0 < args.rate <= 5_000
        and 0 < args.pool <= 256
        and 0 <= args.new_conn_rate <= 1_000
        and 0 < args.control_rate <= 1_000
    ):
        parser.error(
            "--rate must lie in (0, 5000], --pool in [1, 256], --new-conn-rate in [0, 1000], "
            "--control-rate in (0, 1000]"
        )
    random.seed(args.seed)
    result = asyncio.run(Client(args).run())
    print(json.dumps(result))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The cluster testbed seen from Python: its endpoints (written by `cluster.sh up` to
testbeds/.run/cluster/cluster.json), HAProxy's runtime view over its stats socket, the gateways'
registry views, and the `cluster.sh` commands that start, stop and kill one component.

Standard library only: `cluster.sh` runs the waits below with any python3 before the test
virtualenv matters, and the scenario tests (testbeds/cluster/tests) import it.

    cluster.py wait-ready [--timeout S]            every gateway answers /readyz 200
    cluster.py wait-haproxy-up [--timeout S]       every server of every HAProxy backend is UP
    cluster.py wait-live SERVICE ID... [--timeout S]
                                                   the instances are live on every gateway
    cluster.py haproxy-states                      each HAProxy server and its state
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CLUSTER_SH = HERE / "cluster.sh"
RUN_DIR = Path(os.environ.get("CLUSTER_RUN_DIR") or REPO_ROOT / "testbeds" / ".run" / "cluster")

HTTP_TIMEOUT_S = 3.0
# `cluster.sh start kafka` waits for the broker (up to 90 s); `stop` may wait 30 s for it.
COMMAND_TIMEOUT_S = 150.0

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None], what: str, timeout_s: float, interval_s: float = 0.05
) -> T:
    """Calls `probe` until it returns something other than None or False, for at most
    `timeout_s`; returns that value, or raises AssertionError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def control_headers(run_dir: Path = RUN_DIR) -> dict[str, str]:
    """The operator's credential (`cluster.sh up` issued it, docs/security.md), for requests
    to the control listeners; empty before the testbed made one."""
    try:
        token = (run_dir / "keys" / "operator.token").read_text().strip()
    except FileNotFoundError:
        return {}
    return {"authorization": f"Bearer {token}"}


def http_get(
    url: str, timeout_s: float = HTTP_TIMEOUT_S, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET `url`: (status, body); status 0 when no HTTP answer came (refused, reset, timeout)."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


@dataclass(frozen=True)
class GatewayInfo:
    name: str  # gw-1
    server: str  # its name in HAProxy: gw1
    public: str  # http://127.0.0.1:port
    control: str

    def ready(self) -> bool:
        return http_get(f"{self.control}/readyz")[0] == 200

    def instances(self, service: str) -> dict[str, dict] | None:
        """The instances of `service` this gateway lists, by id; {} when it does not know
        the service; None when the gateway did not answer."""
        status, body = http_get(f"{self.control}/v1/services/{service}", headers=control_headers())
        if status == 404:
            return {}
        if status != 200:
            return None
        return {i["instance_id"]: i for i in json.loads(body)["instances"]}

    def states(self, service: str) -> dict[str, str] | None:
        instances = self.instances(service)
        if instances is None:
            return None
        return {k: v["state"] for k, v in instances.items()}

    def cluster(self) -> dict | None:
        status, body = http_get(f"{self.control}/v1/cluster", headers=control_headers())
        return json.loads(body) if status == 200 else None


@dataclass(frozen=True)
class Cluster:
    """The running testbed, as `cluster.sh up` described it in cluster.json."""

    info: dict

    @classmethod
    def load(cls, run_dir: Path = RUN_DIR) -> Cluster:
        path = run_dir / "cluster.json"
        try:
            return cls(json.loads(path.read_text()))
        except FileNotFoundError:
            raise SystemExit(f"{path} is missing: is the cluster up? (testbeds/cluster/up)")

    @property
    def public(self) -> str:
        return self.info["public"]

    @property
    def control(self) -> str:
        return self.info["control"]

    @property
    def prometheus(self) -> str:
        return self.info["prometheus"]

    @property
    def haproxy_socket(self) -> str:
        return self.info["haproxy_socket"]

    @property
    def gateways(self) -> list[GatewayInfo]:
        return [GatewayInfo(**gw) for gw in self.info["gateways"]]

    def gateway(self, name: str) -> GatewayInfo:
        return next(gw for gw in self.gateways if gw.name == name)

    @property
    def services(self) -> dict[str, list[str]]:
        """Service name -> the instance ids the testbed runs for it."""
        return self.info["services"]

    # --- HAProxy ---------------------------------------------------------------------------

    def haproxy_command(self, command: str) -> str:
        """One command on HAProxy's runtime API (the stats socket); its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(HTTP_TIMEOUT_S)
            sock.connect(self.haproxy_socket)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def haproxy_stats(self) -> list[dict[str, str]]:
        """`show stat`: one row per frontend, server and backend."""
        text = self.haproxy_command("show stat").lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def server_states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> status (UP, DOWN, "UP 1/2", "DOWN 1/2", MAINT, ...)."""
        return {
            (row["pxname"], row["svname"]): row["status"]
            for row in self.haproxy_stats()
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def all_servers_up(self) -> bool:
        try:
            states = self.server_states()
        except OSError:
            return False
        return bool(states) and all(state == "UP" for state in states.values())

    # --- cluster.sh ------------------------------------------------------------------------

    def command(self, *args: str) -> str:
        """Runs `cluster.sh ARGS...`; fails with its output if it fails."""
        done = subprocess.run(
            [str(CLUSTER_SH), *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"cluster.sh {' '.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
        return done.stdout

    def pid(self, component: str) -> int | None:
        """The pid of a running component, or None."""
        out = subprocess.run(
            [str(CLUSTER_SH), "pid", component],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        return int(out.stdout) if out.returncode == 0 and out.stdout.strip() else None

    # --- waits -----------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float) -> None:
        for gw in self.gateways:
            wait_until(gw.ready, f"{gw.name} to answer /readyz 200", timeout_s)

    def wait_haproxy_up(self, timeout_s: float) -> None:
        def probe() -> bool:
            return self.all_servers_up()

        try:
            wait_until(probe, "every HAProxy server to be UP", timeout_s)
        except AssertionError as err:
            try:
                states = self.server_states()
            except OSError as sock_err:
                states = {"stats socket": str(sock_err)}
            raise AssertionError(f"{err}: {states}") from None

    def wait_live(self, service: str, ids: list[str], timeout_s: float) -> None:
        """Waits until every gateway lists each of `ids` as live in `service`."""
        for gw in self.gateways:

            def probe(gw: GatewayInfo = gw) -> bool:
                states = gw.states(service)
                return states is not None and all(states.get(i) == "live" for i in ids)

            wait_until(probe, f"{ids} to be live in {service!r} on {gw.name}", timeout_s)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("wait-ready", "wait-haproxy-up"):
        sub.add_parser(name).add_argument("--timeout", type=float, default=60.0)
    live = sub.add_parser("wait-live")
    live.add_argument("service")
    live.add_argument("ids", nargs="+")
    live.add_argument("--timeout", type=float, default=60.0)
    sub.add_parser("haproxy-states")
    args = parser.parse_args(argv)
    cluster = Cluster.load()
    try:
        if args.command == "haproxy-states":
            for (backend, server), state in cluster.server_states().items():
                print(f"  {backend:<16} {server:<5} {state}")
        elif args.command == "wait-ready":
            cluster.wait_ready(args.timeout)
        elif args.command == "wait-haproxy-up":
            cluster.wait_haproxy_up(args.timeout)
        else:
            cluster.wait_live(args.service, args.ids, args.timeout)
    except (AssertionError, OSError) as err:
        print(f"cluster.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Process harness for the end-to-end tests: start real processes on loopback, wait for the
line each prints once it serves, wait for conditions with a bound, and always clean up.

Every process is started with port 0 and tells its address on stdout; nothing here picks a
port by guessing. Every wait has a deadline; a timeout names what was awaited and shows the
tail of the process logs, which are kept under testbeds/.run/e2e-logs/.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_SERVICE = REPO_ROOT / "testbeds" / "services" / "python" / "service.py"

# Bounds. Startup includes the Python service generating its stubs on a cold checkout.
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = (2.0, 10.0)  # connect, read
LOG_TAIL_LINES = 40

GATEWAY_READY = re.compile(r"switchyard listening: public=(?P<public>\S+) control=(?P<control>\S+)")
SERVICE_READY = re.compile(r"listening on (?P<addr>\S+) as (?P<service>[^/\s]+)/(?P<instance>\S+)")

T = TypeVar("T")


def binary(env_var: str, default: str) -> Path:
    """A binary from `env_var`, else `default`; relative paths are relative to the repo."""
    path = Path(os.environ.get(env_var) or default)
    return path if path.is_absolute() else REPO_ROOT / path


def wait_until(
    probe: Callable[[], T | None],
    what: str,
    timeout_s: float = 15.0,
    interval_s: float = 0.05,
) -> T:
    """Calls `probe` until it returns something other than None (or False), at most
    `timeout_s`; returns that value. On timeout, fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Proc:
    """One child process. Its stdout and stderr go, merged, to a log file through a reader
    thread (so a chatty process never blocks on a full pipe), which also watches for the
    line that says the process is ready."""

    def __init__(
        self, name: str, argv: list[str], log_dir: Path, ready: re.Pattern[str], env: dict
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._ready_re = ready
        self._ready = threading.Event()
        self.ready_match: re.Match[str] | None = None
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with open(self.log_path, "ab") as log:
            for raw in iter(self.popen.stdout.readline, b""):
                log.write(raw)
                log.flush()
                if self.ready_match is None:
                    match = self._ready_re.search(raw.decode("utf-8", "replace"))
                    if match:
                        self.ready_match = match
                        self._ready.set()
        self._ready.set()  # the process closed its output: wake wait_ready to report it

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> re.Match[str]:
        """Waits for the ready line; fails with the log tail if it does not come."""
        self._ready.wait(timeout_s)
        if self.ready_match is None:
            state = (
                f"exited with status {self.popen.poll()}"
                if self.popen.poll() is not None
                else f"printed no ready line within {timeout_s} s"
            )
            raise AssertionError(f"{self.name} {state}\n{self.log_tail()}")
        return self.ready_match

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str, count: int = 1, timeout_s: float = 15.0) -> None:
        """Waits until the log holds `count` lines matching the regex `pattern`."""
        regex = re.compile(pattern)
        wait_until(
            lambda: len(regex.findall(self.log_text())) >= count,
            f"{count} line(s) matching {pattern!r} in {self.log_path}",
            timeout_s,
        )

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            lines = []
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(lines)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, signum: int) -> None:
        if self.running():
            self.popen.send_signal(signum)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Waits for the exit and returns the status (negative: killed by that signal)."""
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running {timeout_s} s later\n{self.log_tail()}"
            ) from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S. Never raises."""
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(STOP_TIMEOUT_S)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class Launcher:
    """Starts processes and remembers them, so that `stop_all` (run by a fixture finalizer)
    leaves none behind, whatever the test did."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], ready: re.Pattern[str], env: dict) -> Proc:
        proc = Proc(name, argv, self.log_dir, ready, env)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


# The address policy's allow-list every test gateway runs with (TOML, as `--set` reads it).
LOOPBACK_ALLOWED = '["127.0.0.0/8"]'


def child_env() -> dict[str, str]:
    """The environment for child processes. The gateway reads SWITCHYARD_* variables as config
    overrides, so any the caller has in the environment are removed and the tests run against
    the configuration they set themselves; SWITCHYARD_LOG (the log filter) is kept."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SWITCHYARD_") or k == "SWITCHYARD_LOG"
    }
    env.pop("GATEWAY_CONTROL", None)  # the samples' default gateway; tests pass --gateway
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"  # plain log files
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Gateway:
    proc: Proc
    public: str  # http://127.0.0.1:port
    control: str  # http://127.0.0.1:port
    control_addr: str  # 127.0.0.1:port

    def instances(self, service: str) -> dict[str, dict]:
        """The instances of `service` the gateway lists (deregistered ones are left out),
        by instance id; empty if the gateway does not know the service."""
        resp = requests.get(f"{self.control}/v1/services/{service}", timeout=HTTP_TIMEOUT_S)
        if resp.status_code == 404:
            assert resp.json()["error"]["code"] == "service_not_found", resp.text
            return {}
        assert resp.status_code == 200, resp.text
        return {i["instance_id"]: i for i in resp.json()["instances"]}

    def live_ids(self, service: str) -> set[str]:
        return {k for k, v in self.instances(service).items() if v["state"] == "live"}

    def wait_live(self, service: str, *instance_ids: str, timeout_s: float = 15.0) -> None:
        wanted = set(instance_ids)
        wait_until(
            lambda: wanted <= self.live_ids(service),
            f"{sorted(wanted)} to be live in {service!r} on {self.control}",
            timeout_s,
        )


def start_gateway(
    launcher: Launcher,
    name: str,
    node_id: str,
    control_listen: str = "127.0.0.1:0",
    extra: tuple[str, ...] = (),
    settings: dict[str, str] | None = None,
    wait_caught_up: bool = True,
    keys_file: Path | None = None,
) -> Gateway:
    """Starts a gateway; `settings` are config keys set with `--set key=value`, `extra` more
    command-line arguments. Unless `wait_caught_up` is off, returns once `/readyz` answers 200:
    a gateway refuses registry changes (503 `not_ready`) until it has caught up with the bus.

    With `keys_file` the control listener requires credentials verified against it; without,
    the gateway runs with `control.auth = "none"` and open reads, as the tests about other
    things need (test_control_auth.py runs it with credentials)."""
    exe = binary("SWITCHYARD_BIN", "target/debug/switchyard")
    if not exe.is_file():
        raise AssertionError(
            f"no gateway binary at {exe}: run `cargo build -p switchyard` or set SWITCHYARD_BIN"
        )
    argv = [
        str(exe),
        "serve",
        "--public-listen",
        "127.0.0.1:0",
        "--control-listen",
        control_listen,
        "--node-id",
        node_id,
        # Teardown should not wait out the default 10 s drain.
        "--set",
        "shutdown.drain_timeout_ms=1000",
        # The sample instances listen on loopback, which the address policy refuses unless
        # allowed; the gateway's own listeners stay refused.
        "--set",
        f"upstream.allow_addresses={LOOPBACK_ALLOWED}",
        *extra,
    ]
    auth = (
        {"control.jwt_keys_file": str(keys_file)}
        if keys_file
        else {"control.auth": "none", "control.reads": "open"}
    )
    for key, value in {**auth, **(settings or {})}.items():
        argv += ["--set", f"{key}={value}"]
    proc = launcher.start(name, argv, GATEWAY_READY, child_env())
    match = proc.wait_ready()
    gateway = Gateway(
        proc=proc,
        public=f"http://{match['public']}",
        control=f"http://{match['control']}",
        control_addr=match["control"],
    )
    if wait_caught_up:
        wait_until(
            lambda: requests.get(f"{gateway.public}/readyz", timeout=HTTP_TIMEOUT_S).status_code
            == 200,
            f"{name} to answer /readyz 200 (caught up with the bus)",
            STARTUP_TIMEOUT_S,
            0.02,
        )
    return gateway


def start_rust_service(
    launcher: Launcher,
    gateway: Gateway,
    service: str,
    instance_id: str,
    lease_ms: int = 10_000,
    token: str | None = None,
) -> Proc:
    exe = binary("SAMPLE_SERVICE_BIN", "target/debug/sample-service")
    if not exe.is_file():
        raise AssertionError(
            f"no sample service at {exe}: run `cargo build -p sample-service` "
            "or set SAMPLE_SERVICE_BIN"
        )
    argv = [
        str(exe),
        "--gateway",
        gateway.control,
        "--service",
        service,
        "--instance-id",
        instance_id,
        "--listen",
        "127.0.0.1:0",
        "--lease-ms",
        str(lease_ms),
    ]
    env = {**child_env(), **({"SWITCHYARD_TOKEN": token} if token else {})}
    proc = launcher.start(f"rust-{service}-{instance_id}", argv, SERVICE_READY, env)
    proc.wait_ready()
    return proc


def python_service_argv(*args: str) -> list[str]:
    return [sys.executable, str(PYTHON_SERVICE), *args]


def start_python_service(
    launcher: Launcher,
    gateway_control: str,
    service: str,
    instance_id: str,
    lease_ms: int = 10_000,
    token: str | None = None,
) -> Proc:
    argv = python_service_argv(
        "--gateway",
        gateway_control,
        "--service",
        service,
        "--instance-id",
        instance_id,
        "--listen",
        "127.0.0.1:0",
        "--lease-ms",
        str(lease_ms),
    )
    env = {**child_env(), **({"SWITCHYARD_TOKEN": token} if token else {})}
    proc = launcher.start(f"python-{service}-{instance_id}", argv, SERVICE_READY, env)
    match = proc.wait_ready()
    assert (match["service"], match["instance"]) == (service, instance_id), match.group(0)
    return proc

"""Fixtures for the end-to-end tests: one gateway and the shared service instances for the
whole session, and a per-test launcher for tests that start (and kill) their own processes.
Every fixture that starts a process stops it in its finalizer, even when the test fails."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from harness import (
    REPO_ROOT,
    Gateway,
    Launcher,
    Proc,
    start_gateway,
    start_python_service,
    start_rust_service,
)

# Instance ids of the shared instances.
MIXED = "mixed"
MIXED_RUST_ID = "rust-1"
MIXED_PYTHON_ID = "py-1"
PYONLY = "pyonly"
PYONLY_ID = "py-only-1"


@pytest.fixture(scope="session")
def log_dir() -> Path:
    """Process logs, fresh each session: $E2E_LOG_DIR or testbeds/.run/e2e-logs (gitignored)."""
    path = Path(os.environ.get("E2E_LOG_DIR") or REPO_ROOT / "testbeds" / ".run" / "e2e-logs")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def session_launcher(log_dir: Path) -> Iterator[Launcher]:
    launcher = Launcher(log_dir / "session")
    launcher.log_dir.mkdir()
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def launcher(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Launcher]:
    """For processes that belong to one test; they are stopped when the test ends."""
    launcher = Launcher(log_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name))
    launcher.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(scope="session")
def gateway(session_launcher: Launcher) -> Gateway:
    return start_gateway(session_launcher, "gateway", node_id="gw-1")


@dataclass
class Mixed:
    """One Rust and one Python instance of the service "mixed"."""

    rust: Proc
    python: Proc


@pytest.fixture(scope="session")
def mixed(gateway: Gateway, session_launcher: Launcher) -> Mixed:
    rust = start_rust_service(session_launcher, gateway, MIXED, MIXED_RUST_ID)
    python = start_python_service(session_launcher, gateway.control, MIXED, MIXED_PYTHON_ID)
    gateway.wait_live(MIXED, MIXED_RUST_ID, MIXED_PYTHON_ID)
    return Mixed(rust=rust, python=python)


@pytest.fixture(scope="session")
def pyonly(gateway: Gateway, session_launcher: Launcher) -> Proc:
    """A service served by the Python sample alone, so a request's path is known."""
    proc = start_python_service(session_launcher, gateway.control, PYONLY, PYONLY_ID)
    gateway.wait_live(PYONLY, PYONLY_ID)
    return proc


@pytest.fixture(scope="session")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="session")
def kafka() -> Iterator["Broker"]:
    """A Kafka broker for the whole session (see kafka_broker.py); stopped at the end if this
    session started it."""
    from kafka_broker import Broker, session_broker  # noqa: F401 (Broker: the fixture's type)

    broker = session_broker(REPO_ROOT / "testbeds" / ".run" / "kafka-e2e")
    try:
        yield broker
    finally:
        if broker.restartable:
            broker.stop()


@pytest.fixture
def redis_server() -> Iterator["RedisServer"]:
    """A Redis server of its own for one test (see redis_server.py): the tests kill and
    restart it. Stopped at the end."""
    from redis_server import RedisServer, session_redis  # noqa: F401 (RedisServer: the type)

    server = session_redis(REPO_ROOT / "testbeds" / ".run" / "redis-e2e")
    try:
        yield server
    finally:
        server.stop()

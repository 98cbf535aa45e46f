"""In-process tests of the Python sample's startup pieces: stub generation and flag parsing.
The process-level behaviour is in test_e2e.py."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from harness import PYTHON_SERVICE, REPO_ROOT


@pytest.fixture(scope="module")
def service() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sample_service", PYTHON_SERVICE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sample_service"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def proto_copy(tmp_path: Path) -> Path:
    target = tmp_path / "proto"
    shutil.copytree(REPO_ROOT / "proto" / "switchyard", target / "switchyard")
    return target


def test_stubs_are_generated_once_and_again_when_the_contract_changes(
    service: ModuleType, proto_copy: Path, tmp_path: Path
) -> None:
    gen = tmp_path / "gen"
    assert service.ensure_stubs(proto_copy, gen) is True
    generated = gen / "switchyard" / "forwarding" / "v1" / "forwarding_pb2_grpc.py"
    mtime = generated.stat().st_mtime_ns
    assert service.ensure_stubs(proto_copy, gen) is False  # up to date: left alone
    assert generated.stat().st_mtime_ns == mtime

    forwarding = proto_copy / "switchyard" / "forwarding" / "v1" / "forwarding.proto"
    forwarding.write_text(forwarding.read_text() + "\n// a change\n")
    assert service.ensure_stubs(proto_copy, gen) is True
    assert not list(gen.glob(".tmp-*")), "the scratch folder was left behind"


def test_a_broken_contract_is_a_clear_startup_error(
    service: ModuleType, proto_copy: Path, tmp_path: Path
) -> None:
    registry = proto_copy / "switchyard" / "registry" / "v1" / "registry.proto"
    registry.write_text(registry.read_text() + "\nmessage Broken {\n")
    with pytest.raises(service.StartupError, match="protoc failed"):
        service.ensure_stubs(proto_copy, tmp_path / "gen")
    with pytest.raises(service.StartupError, match="--proto-dir"):
        service.ensure_stubs(tmp_path / "nowhere", tmp_path / "gen")


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("http://127.0.0.1:8081", ("127.0.0.1:8081", False)),
        ("http://127.0.0.1:8081/", ("127.0.0.1:8081", False)),
        ("gateway.internal:8081", ("gateway.internal:8081", False)),
        ("http://[::1]:8081", ("[::1]:8081", False)),
        ("https://127.0.0.1:8081", ("127.0.0.1:8081", True)),
    ],
)
def test_gateway_addresses(service: ModuleType, text: str, target: tuple[str, bool]) -> None:
    assert service.gateway_target(text) == target


@pytest.mark.parametrize(
    "text",
    ["grpc://127.0.0.1:8081", "127.0.0.1", "http://127.0.0.1:8081/path", "user@host:1", ":80"],
)
def test_bad_gateway_addresses(service: ModuleType, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        service.gateway_target(text)


def test_listen_addresses(service: ModuleType) -> None:
    assert service.listen_addr("127.0.0.1:0") == ("127.0.0.1", 0)
    assert service.listen_addr("[::1]:9000") == ("::1", 9000)
    assert service.join_host_port("::1", 9000) == "[::1]:9000"
    with pytest.raises(argparse.ArgumentTypeError):
        service.listen_addr("localhost:0")

#!/usr/bin/env python3
"""A sample Switchyard service in Python, meant to be copied.

It does what the Rust sample (testbeds/services/rust) does:

* ``Sample`` implements ``ForwardingService.Send``, the one rpc a service needs.
* ``Registrar`` registers the instance through a gateway's gRPC ``Registration`` service,
  renews its lease as the gateway advises, and deregisters on shutdown.
* ``ensure_stubs`` generates the Python protobuf and gRPC modules from the contract in
  ``proto/`` with the protoc that the grpcio-tools package ships, so no system protoc is needed.

Routes (the path below the service prefix, so ``/sample/hello`` through the gateway):

==========================  ==========================================================
path                        answer
==========================  ==========================================================
``/hello``                  a JSON greeting naming the instance
``/echo``                   the request as the service received it, as JSON
``/test/status/{n}``        a response with status ``n`` (any number, for testing the gateway)
``/test/grpc-error/{code}`` fails the rpc with gRPC status ``code``
``/test/sleep/{ms}``        answers after ``ms`` milliseconds (at most 60 s)
``/test/bad-header``        a response header whose value holds CR LF
anything else               404 with a JSON error
==========================  ==========================================================

Run ``python service.py --help`` for the flags. The process prints one line on stdout,
``listening on HOST:PORT as SERVICE/ID``, once it serves; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

try:
    import grpc
    import grpc.aio
    from grpc_tools import protoc
except ImportError as missing:  # pragma: no cover - depends on the environment
    sys.exit(
        f"service.py: {missing}. Install the dependencies first: "
        f"pip install -r {Path(__file__).resolve().parent / 'requirements.txt'}"
    )

log = logging.getLogger("sample")

HERE = Path(__file__).resolve().parent
# The contract lives at the repository root; a copy of this file elsewhere passes --proto-dir.
PROTO_DIR_DEFAULT = HERE.parent.parent.parent / "proto"
GEN_DIR_DEFAULT = HERE / "gen"
PROTO_FILES = (
    "switchyard/forwarding/v1/forwarding.proto",
    "switchyard/registry/v1/registry.proto",
)

# Limits. Every wait, retry and message has a bound.
MESSAGE_BYTES_MAX = 16 * 1024 * 1024  # the same as the Rust sample
CONCURRENT_RPCS_MAX = 1024  # beyond this gRPC answers RESOURCE_EXHAUSTED (HTTP 429)
SLEEP_MS_MAX = 60_000
RENEW_MS_MIN = 100
RETRY_S_FIRST = 0.1
RETRY_S_MAX = 5.0
REGISTRATION_CALL_TIMEOUT_S = 5.0
DEREGISTER_TIMEOUT_S = 2.0
SHUTDOWN_GRACE_S = 5.0
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1

# Service names and instance ids, as the gateway accepts them (gateway/core/src/names.rs).
# Checking them here turns a typo into a clear startup error instead of endless retries.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# --------------------------------------------------------------------------------------------
# Stub generation
# --------------------------------------------------------------------------------------------


class StartupError(Exception):
    """A problem that stops the service from starting; the message says what to fix."""


@dataclass(frozen=True)
class Stubs:
    """The generated modules this service uses."""

    forwarding: ModuleType  # forwarding_pb2: ForwardingReq, ForwardingResp, Header
    forwarding_grpc: ModuleType  # forwarding_pb2_grpc: add_ForwardingServiceServicer_to_server
    registry: ModuleType  # registry_pb2: RegisterRequest, DeregisterRequest, ...
    registry_grpc: ModuleType  # registry_pb2_grpc: RegistrationStub


def stubs_fingerprint(proto_dir: Path) -> str:
    """A digest of everything the generated code depends on: the contract files and the
    versions of the code generator and of the protobuf runtime it targets."""
    digest = hashlib.sha256(b"switchyard-python-stubs-v1\0")
    for package in ("grpcio-tools", "protobuf"):
        digest.update(f"{package}={importlib.metadata.version(package)}\0".encode())
    for name in PROTO_FILES:
        path = proto_dir / name
        try:
            content = path.read_bytes()
        except OSError as err:
            raise StartupError(
                f"cannot read the contract file {path}: {err.strerror}; "
                "pass --proto-dir pointing at the repository's proto/ folder"
            ) from None
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def ensure_stubs(proto_dir: Path, gen_dir: Path) -> bool:
    """Generates the Python modules for PROTO_FILES into ``gen_dir`` unless the ones there
    were generated from the same contract by the same tools. Returns whether it generated.

    Several instances may start at once from the same checkout, so the check and the
    generation run under an exclusive lock, and the new modules replace the old ones only once
    protoc has succeeded.
    """
    proto_dir = proto_dir.resolve()
    fingerprint = stubs_fingerprint(proto_dir)
    lock_path = gen_dir / ".lock"
    try:
        gen_dir.mkdir(parents=True, exist_ok=True)
        lock_path.touch()
    except OSError as err:
        raise StartupError(f"cannot write generated code to {gen_dir}: {err}") from None
    with open(lock_path, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        stamp = gen_dir / ".stamp"
        with contextlib.suppress(OSError):
            if stamp.read_text() == fingerprint and (gen_dir / "switchyard").is_dir():
                return False
        run_protoc(proto_dir, gen_dir)
        stamp.write_text(fingerprint)
        return True


def run_protoc(proto_dir: Path, gen_dir: Path) -> None:
    """Runs the protoc bundled with grpcio-tools into a scratch folder inside ``gen_dir``, then
    swaps the result in."""
    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools; the contract does
    # not import any today, but a copy of this service may.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=gen_dir))
    try:
        argv = [
            "grpc_tools.protoc",
            f"--proto_path={proto_dir}",
            f"--proto_path={well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(str(proto_dir / name) for name in PROTO_FILES),
        ]
        status = protoc.main(argv)
        if status != 0:
            raise StartupError(f"protoc failed with status {status} (its errors are above)")
        shutil.rmtree(gen_dir / "switchyard", ignore_errors=True)
        os.replace(scratch / "switchyard", gen_dir / "switchyard")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_stubs(gen_dir: Path) -> Stubs:
    """Imports the generated modules. They import each other as ``switchyard.*``, so
    ``gen_dir`` goes on the module search path."""
    if str(gen_dir) not in sys.path:
        sys.path.insert(0, str(gen_dir))
    module = importlib.import_module
    return Stubs(
        forwarding=module("switchyard.forwarding.v1.forwarding_pb2"),
        forwarding_grpc=module("switchyard.forwarding.v1.forwarding_pb2_grpc"),
        registry=module("switchyard.registry.v1.registry_pb2"),
        registry_grpc=module("switchyard.registry.v1.registry_pb2_grpc"),
    )


# --------------------------------------------------------------------------------------------
# ForwardingService
# --------------------------------------------------------------------------------------------


class RpcFailure(Exception):
    """Fails the ``Send`` rpc with a gRPC status; the gateway maps it to an HTTP status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# gRPC status codes by number. Like tonic's Code::from_i32, numbers outside the table are UNKNOWN.
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def parse_int(text: str, what: str, lowest: int, highest: int) -> int:
    """Parses a decimal path segment strictly (no spaces, no underscores, no exponent)."""
    if not re.fullmatch(r"[+-]?[0-9]{1,20}", text):
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"{what} must be a number")
    value = int(text)
    if not lowest <= value <= highest:
        raise RpcFailure(
            grpc.StatusCode.INVALID_ARGUMENT, f"{what} must lie between {lowest} and {highest}"
        )
    return value


class Sample:
    """The sample service's ``ForwardingService`` implementation."""

    def __init__(self, stubs: Stubs, service: str, instance_id: str) -> None:
        self.pb = stubs.forwarding
        self.service = service
        self.instance_id = instance_id

    async def Send(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Handles one HTTP request (named as the rpc is, so grpc finds it). Bad input fails
        only this rpc, never the server."""
        log.debug(
            "request %s %s id=%s traceparent=%s gateway=%s",
            request.method[:16],
            request.path[:256],
            request.request_id,
            request.traceparent,
            request.gateway_node,
        )
        try:
            return await self.handle(request)
        except RpcFailure as failure:
            await context.abort(failure.code, failure.message)
        except Exception:  # a bug here must not take the process down
            log.exception("Send failed on path %r", request.path[:256])
            await context.abort(grpc.StatusCode.INTERNAL, "the sample service failed")
        # context.abort always raises; this line only tells readers and type checkers so.
        raise AssertionError("unreachable")  # pragma: no cover

    async def handle(self, req: Any) -> Any:
        segments = req.path.lstrip("/").split("/")
        match segments:
            case ["hello"]:
                return self.json(
                    200,
                    {
                        "message": f"hello from {self.service}/{self.instance_id}",
                        "service": self.service,
                        "instance": self.instance_id,
                        "language": "python",
                    },
                )
            case ["echo"]:
                return self.json(200, self.echo(req))
            case ["test", "status", n]:
                # Any 32-bit number is passed on, so the gateway's own checks can be tested.
                status = parse_int(n, "status", 0, U32_MAX)
                return self.json(status, {"status": status})
            case ["test", "grpc-error", code]:
                number = parse_int(code, "code", I32_MIN, I32_MAX)
                if number == 0:
                    # gRPC cannot fail an rpc with OK; say so rather than answer oddly.
                    raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "code 0 is OK, not an error")
                raise RpcFailure(
                    STATUS_CODES.get(number, grpc.StatusCode.UNKNOWN),
                    "error requested by the caller",
                )
            case ["test", "sleep", ms]:
                slept_ms = min(parse_int(ms, "ms", 0, U64_MAX), SLEEP_MS_MAX)
                # If the gateway gives up first, grpc cancels this task and the sleep with it.
                await asyncio.sleep(slept_ms / 1000)
                return self.json(200, {"slept_ms": slept_ms})
            case ["test", "bad-header"]:
                # Deliberately invalid: the gateway must refuse it (502), not pass it on.
                return self.pb.ForwardingResp(
                    status=200,
                    headers=[header(self.pb, "x-bad", "a\r\nset-cookie: injected=1")],
                    body=b"",
                )
            case _:
                return self.json(404, {"error": "no such route", "path": req.path})

    def json(self, status: int, value: Any) -> Any:
        return self.pb.ForwardingResp(
            status=status,
            headers=[
                header(self.pb, "content-type", "application/json"),
                header(self.pb, "x-served-by", self.instance_id),
            ],
            body=json.dumps(value, separators=(",", ":")).encode(),
        )

    def echo(self, req: Any) -> dict[str, Any]:
        """The request as received. Header values and the body are bytes on the wire; they
        are decoded leniently, since JSON holds only text."""
        return {
            "instance": self.instance_id,
            "method": req.method,
            "scheme": req.scheme,
            "authority": req.authority,
            "path": req.path,
            "query": req.raw_query,
            "headers": [[h.name, lossy(h.value)] for h in req.headers],
            "body": lossy(req.body),
            "http_version": req.http_version,
            "client_addr": req.client_addr,
            "request_id": req.request_id,
            "deadline_unix_ms": req.deadline_unix_ms,
            "service": req.service,
            "gateway_node": req.gateway_node,
            "traceparent": req.traceparent,
        }


def header(pb: ModuleType, name: str, value: str) -> Any:
    return pb.Header(name=name, value=value.encode())


def lossy(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


class RegistrationRefused(Exception):
    """The gateway refused the registration as invalid; retrying cannot help."""


class Registrar:
    """Keeps one instance registered with a gateway.

    Registers, then renews every ``renew_after_ms`` as the gateway advises. When a call fails
    (gateway down or restarting, bus unavailable) it retries with a jittered backoff that
    doubles up to ``RETRY_S_MAX``, and registers afresh, so the instance comes back by itself
    after a gateway restart or an eviction.
    """

    def __init__(
        self, stubs: Stubs, channel: grpc.aio.Channel, request: Any, token: str | None = None
    ) -> None:
        self.pb = stubs.registry
        self.stub = stubs.registry_grpc.RegistrationStub(channel)
        self.request = request
        self.jitter = random.Random()
        # The control credential, sent as gRPC metadata with every call.
        # Trimmed: a token read from a file or a Secret often ends with a line end.
        token = token.strip() if token else None
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    async def keep_registered(self, stop: asyncio.Event) -> None:
        """Runs until ``stop`` is set; raises RegistrationRefused on an invalid registration."""
        registered = False
        retry_s = RETRY_S_FIRST
        while not stop.is_set():
            call = self.stub.Renew if registered else self.stub.Register
            try:
                response = await call(
                    self.request, timeout=REGISTRATION_CALL_TIMEOUT_S, metadata=self.metadata
                )
            except grpc.aio.AioRpcError as err:
                # A refused credential is retried like an outage: a key rotation may be under
                # way on the gateways. Only an invalid registration is final.
                if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise RegistrationRefused(err.details()) from None
                wait_s = retry_s * self.jitter.uniform(0.5, 1.0)
                log.warning(
                    "%s failed (%s: %s); retrying in %.0f ms",
                    "renewal" if registered else "registration",
                    err.code().name,
                    err.details(),
                    wait_s * 1000,
                )
                registered = False
                retry_s = min(retry_s * 2, RETRY_S_MAX)
            else:
                if not registered:
                    log.info(
                        "registered %s/%s at %s (lease %d ms)",
                        self.request.service,
                        self.request.instance_id,
                        self.request.addr,
                        response.instance.lease_ms,
                    )
                registered = True
                retry_s = RETRY_S_FIRST
                wait_s = max(response.renew_after_ms, RENEW_MS_MIN) / 1000
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)

    async def deregister(self) -> None:
        """Removes the instance, within DEREGISTER_TIMEOUT_S. Failure is logged, not raised:
        the lease runs out by itself."""
        request = self.pb.DeregisterRequest(
            service=self.request.service, instance_id=self.request.instance_id
        )
        try:
            response = await self.stub.Deregister(
                request, timeout=DEREGISTER_TIMEOUT_S, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as err:
            log.warning("deregistration failed (%s: %s)", err.code().name, err.details())
        else:
            log.info("deregistered %s (existed: %s)", self.request.instance_id, response.existed)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def split_host_port(text: str, port_min: int) -> tuple[str, int]:
    """Splits ``host:port`` or ``[v6]:port``; raises ArgumentTypeError with the reason."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not port_min <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port must lie between {port_min} and 65535")
    if re.search(r"[\s/?#@]", host):
        raise argparse.ArgumentTypeError(f"{text!r}: the host may not hold a path or user info")
    return host, port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gateway_target(text: str) -> tuple[str, bool]:
    """``host:port``, ``http://host:port`` or ``https://host:port`` to the ``host:port`` that
    grpc dials, and whether the control listener speaks TLS."""
    rest, tls = text, False
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme not in ("http", "https"):
            raise argparse.ArgumentTypeError(
                f"{text!r}: scheme {scheme!r} is not supported; use http://, https:// or host:port"
            )
        tls = scheme == "https"
        rest = rest.removesuffix("/")
    return join_host_port(*split_host_port(rest, port_min=1)), tls


def listen_addr(text: str) -> tuple[str, int]:
    """An IP address and a port (0 picks a free one), like Rust's SocketAddr."""
    host, port = split_host_port(text, port_min=0)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the host must be an IP address") from None
    return host, port


def name_arg(text: str) -> str:
    if not NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} must be 1 to 128 ASCII letters, digits, '-', '_' or '.', "
            "starting with a letter or a digit"
        )
    return text


def lease_ms_arg(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,20}", text) or int(text) > U64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A sample Switchyard service (Python)")
    parser.add_argument(
        "--gateway",
        type=gateway_target,
        default=os.environ.get("GATEWAY_CONTROL", "http://127.0.0.1:8081"),
        help="the gateway's control address, where instances register: host:port, "
        "http://host:port or https://host:port (env GATEWAY_CONTROL; default "
        "http://127.0.0.1:8081)",
    )
    parser.add_argument(
        "--service", type=name_arg, default="sample", help="service name to register under"
    )
    parser.add_argument(
        "--instance-id", type=name_arg, default=None, help="instance id; defaults to python-<port>"
    )
    parser.add_argument(
        "--listen",
        type=listen_addr,
        default="127.0.0.1:0",
        help="where to serve ForwardingService, IP:port; port 0 picks a free port",
    )
    parser.add_argument(
        "--advertise",
        default=None,
        help="the address gateways should use; defaults to http://<bound listen address>",
    )
    parser.add_argument(
        "--lease-ms",
        type=lease_ms_arg,
        default=10_000,
        help="lease requested from the gateway, in milliseconds; 0 takes the gateway's default",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("SWITCHYARD_TOKEN") or None,
        help="the control credential the gateway asks for (`switchyard token issue`; env "
        "SWITCHYARD_TOKEN); leave unset for a gateway whose control.auth is \"none\"",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="serve ForwardingService over TLS with this PEM chain (with --tls-key); the "
        "advertised address becomes https://; also the client certificate shown to an https:// "
        "gateway",
    )
    parser.add_argument("--tls-key", type=Path, default=None, help="the key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="require client certificates signed by this CA (the gateways')",
    )
    parser.add_argument(
        "--gateway-ca",
        type=Path,
        default=None,
        help="the CA that signed an https:// gateway's control certificate",
    )
    parser.add_argument(
        "--proto-dir",
        type=Path,
        default=PROTO_DIR_DEFAULT,
        help="folder holding switchyard/**/*.proto (default: the repository's proto/)",
    )
    parser.add_argument(
        "--gen-dir",
        type=Path,
        default=GEN_DIR_DEFAULT,
        help="where the generated Python modules go (default: gen/ beside this file)",
    )
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    return args


# --------------------------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------------------------


async def serve(args: argparse.Namespace, stubs: Stubs) -> int:
    """Serves ForwardingService and keeps the instance registered until SIGTERM or SIGINT;
    then deregisters, lets in-flight requests finish and returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    host, port = args.listen
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            # grpc sets SO_REUSEPORT by default, which lets two processes share a port
            # silently; a port that is taken must be an error instead.
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=CONCURRENT_RPCS_MAX,
    )
    try:
        if args.tls_cert is not None:
            client_ca = args.tls_client_ca.read_bytes() if args.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(args.tls_key.read_bytes(), args.tls_cert.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            bound_port = server.add_secure_port(join_host_port(host, port), credentials)
        else:
            bound_port = server.add_insecure_port(join_host_port(host, port))
    except RuntimeError as err:
        raise StartupError(f"cannot listen on {join_host_port(host, port)}: {err}") from None
    if bound_port == 0:  # older grpc versions report a failed bind this way
        raise StartupError(f"cannot listen on {join_host_port(host, port)}")
    local = join_host_port(host, bound_port)
    instance_id = args.instance_id or f"python-{bound_port}"
    stubs.forwarding_grpc.add_ForwardingServiceServicer_to_server(
        Sample(stubs, args.service, instance_id), server
    )
    await server.start()
    if args.advertise is None and ipaddress.ip_address(host).is_unspecified:
        log.warning("listening on %s: gateways elsewhere need --advertise to reach it", local)
    # One line on stdout that scripts can wait for.
    print(f"listening on {local} as {args.service}/{instance_id}", flush=True)

    request = stubs.registry.RegisterRequest(
        service=args.service,
        instance_id=instance_id,
        addr=args.advertise or f"{'https' if args.tls_cert else 'http'}://{local}",
        metadata={"language": "python"},
        lease_ms=args.lease_ms,
    )
    status = 0
    # grpc reconnects on its own schedule (1 s, growing to 120 s) and, until it has, fails
    # calls at once with the last error; keep its schedule in step with ours.
    channel_options = [
        ("grpc.initial_reconnect_backoff_ms", int(RETRY_S_FIRST * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(RETRY_S_FIRST * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(RETRY_S_MAX * 1000)),
    ]
    target, gateway_tls = args.gateway
    if gateway_tls:
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=args.gateway_ca.read_bytes() if args.gateway_ca else None,
            private_key=args.tls_key.read_bytes() if args.tls_key else None,
            certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        )
        channel = grpc.aio.secure_channel(target, channel_credentials, options=channel_options)
    else:
        channel = grpc.aio.insecure_channel(target, options=channel_options)
    async with channel:
        registrar = Registrar(stubs, channel, request, args.token)
        registration = asyncio.create_task(registrar.keep_registered(stop))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({registration, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if registration.done() and registration.exception() is not None:
            # Only RegistrationRefused ends the loop early: no gateway would ever route here.
            log.error("cannot register: %s", registration.exception())
            status = 1
        else:
            log.info("shutting down")
            # The loop may be inside a call to a gateway that does not answer; don't wait on it.
            registration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await registration
            # Deregister before the server stops, so gateways stop sending requests first; the
            # grace period then lets the requests already under way finish.
            await registrar.deregister()
    await server.stop(SHUTDOWN_GRACE_S)
    log.info("stopped")
    return status


def fail(message: str) -> NoReturn:
    print(f"service.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if isinstance(logging.getLevelName(level), int) else "INFO",
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if ensure_stubs(args.proto_dir, args.gen_dir):
            log.info("generated the gRPC stubs into %s", args.gen_dir)
        stubs = load_stubs(args.gen_dir.resolve())
        return asyncio.run(serve(args, stubs))
    except StartupError as err:
        fail(str(err))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The gateway hop measured against Envoy, nginx and the direct call, back to back, in one run.

    testbeds/bench/proxies.sh [--smoke] [--sat-s 20] [--rate-s 20] [--rate 2000] ...

Targets (each answers `POST` with the JSON body it was sent):

  direct            ForwardingService.Send on the Rust sample service, by bench-grpc-load
  switchyard        HTTP/1.1 JSON -> Switchyard -> ForwardingService.Send -> sample service
  switchyard-dflt   the same with Switchyard's default worker count, not pinned
  switchyard-policies  as switchyard, with a JWT check (EdDSA, a forwarded claim) and a local
                    rate limit by subject on the service, oha sending a token (issue 15)
  switchyard-tls    as switchyard, with TLS on the public listener (`public.tls`)
  switchyard-kafka  as switchyard, with its registry on a Kafka broker the run starts (auditing off)
  switchyard-audit  as switchyard-kafka, with auditing on (`audit.enabled`, no bodies): every
                    request's audit record goes to the broker (issue 16); compared with
                    switchyard-kafka, so that the broker and the bus reader cost both alike
  envoy-transcoder  HTTP/1.1 JSON -> Envoy gRPC-JSON transcoder -> typed gRPC Echo service
  grpc-gateway      HTTP/1.1 JSON -> grpc-gateway v2 (Go, testbeds/bench/grpc-gateway, GOMAXPROCS=1)
                    -> the same typed gRPC Echo service
  envoy             HTTP/1.1 -> Envoy as a plain reverse proxy -> HTTP echo server
  nginx             HTTP/1.1 -> nginx as a plain reverse proxy -> HTTP echo server
  nginx-tls         as nginx, with an `ssl` listener

The two TLS targets serve one certificate that the run makes with the openssl command (P-256,
SAN IP:127.0.0.1), and oha verifies it (`--cacert`). oha keeps its connections alive, so a run
makes one handshake per connection and the figures are per request on established TLS
connections.

For each body size, each target gets a warm-up, a fixed-rate run (latency) and a saturating
closed-loop run (throughput, CPU per request from /proc/<pid>/stat, peak RSS from VmHWM of the
proxy's processes, the load generator's CPU from its rusage). With two or more cores, the proxy
(or, for `direct`, the service) is pinned to the first core with one worker; the load generator
and the backend share the second core.

The two Kafka targets share one broker (testbeds/kafka/kafka.sh, its state in
testbeds/.run/bench/kafka, wiped first), started on the second core when the first of them is measured and stopped at the end.

Writes results.json and results.md to testbeds/.run/bench/<time>/ and prints the tables, and
draws them as SVG charts into charts/ beside them (charts.py; docs/bench/ holds those of the
run in docs/benchmarks.md).
Exits non-zero if a target fails to start, answers wrongly, or (with --smoke) serves no request
or any error. Every process it starts is killed on exit."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import charts  # beside this file

ROOT = Path(__file__).resolve().parents[2]
TARGETS = [
    "direct", "switchyard", "switchyard-per-core", "switchyard-policies", "switchyard-dflt", "switchyard-tls",
    "switchyard-kafka",
    "switchyard-audit", "envoy-transcoder", "grpc-gateway", "envoy", "nginx", "nginx-tls",
]
KAFKA_TARGETS = ("switchyard-kafka", "switchyard-audit")
# The Go program proxies.sh builds from testbeds/bench/grpc-gateway into the bin dir.
GRPC_GATEWAY_BIN = "bench-grpc-gateway"
KAFKA_SH = ROOT / "testbeds/kafka/kafka.sh"
# Added when --switchyard-baseline names an older build: pinned and loaded like `switchyard`.
BASELINE = "switchyard-base"
STARTUP_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path


@dataclass
class Procs:
    """Every process the benchmark started, each in a session of its own, so that stopping it
    stops its children too (nginx's worker, say)."""

    log_dir: Path
    running: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], cpu: str | None, env: dict | None = None) -> Proc:
        if cpu is not None:
            argv = ["taskset", "-c", cpu, *argv]
        log_path = self.log_dir / f"{name}.log"
        out = open(log_path, "wb")
        popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        out.close()
        proc = Proc(name, popen, log_path)
        self.running.append(proc)
        return proc

    def first_line(self, proc: Proc, prefix: str) -> str:
        """The first stdout line starting with `prefix` (bounded by STARTUP_TIMEOUT_S)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert proc.popen.stdout is not None
        os.set_blocking(proc.popen.stdout.fileno(), False)
        buf = b""
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise Failed(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
            chunk = proc.popen.stdout.read()
            if chunk:
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith(prefix):
                        return line
            time.sleep(0.02)
        raise Failed(f"{proc.name} printed no {prefix!r} line within {STARTUP_TIMEOUT_S} s")

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            if proc.popen.poll() is None:
                try:
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in reversed(self.running):
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait(timeout=5)
        self.running.clear()


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return out


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and kernel CPU seconds of `pids` so far."""
    user = kernel = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime
        kernel += int(fields[12])  # stime
    return user / CLK_TCK, kernel / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def status_kib(pids: list[int], key: str) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def reset_peak_rss(pids: list[int]) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def wait_port_answers(
    url: str, body: bytes, expect: bytes, cafile: Path | None = None, headers: dict[str, str] | None = None
) -> None:
    """Posts `body` (with `headers`) until the answer is 200 with `expect` (bounded); an https
    URL is verified against `cafile`."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    context = None if cafile is None else ssl.create_default_context(cafile=str(cafile))
    last = "no answer"
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"content-type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=2, context=context) as resp:
                got = resp.read()
                if resp.status == 200 and json.loads(got) == json.loads(expect):
                    return
                last = f"{resp.status} {got[:200]!r}"
        except urllib.error.HTTPError as e:
            last = f"{e.code} {e.read()[:200]!r}"
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.05)
    raise Failed(f"{url} did not echo the body within {STARTUP_TIMEOUT_S} s: {last}")


# ---------------------------------------------------------------------------------------------
# Configuration files


def nginx_conf(run_dir: Path, name: str, port: int, upstream: str, cert: Cert | None) -> Path:
    d = run_dir / name
    d.mkdir(exist_ok=True)
    listen = f"127.0.0.1:{port} reuseport"
    tls = ""
    if cert is not None:
        listen = f"127.0.0.1:{port} ssl reuseport"
        # nginx 1.22's default protocols stop at TLS 1.2; the gateway (rustls) speaks 1.2 and 1.3.
        tls = f"""
        ssl_certificate {cert.cert};
        ssl_certificate_key {cert.key};
        ssl_protocols TLSv1.2 TLSv1.3;"""
    conf = d / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_body_buffer_size 64k;
    client_max_body_size 1m;
    keepalive_requests 1000000;
    upstream echo {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen {listen};{tls}
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 8 32k;
        }}
    }}
}}
"""
    )
    return conf


def envoy_conf(run_dir: Path, name: str, port: int, upstream_port: int, descriptor: Path | None) -> Path:
    """Envoy's bootstrap as JSON (a YAML subset). `descriptor` set: the gRPC-JSON transcoder in
    front of an HTTP/2 upstream; unset: a plain HTTP/1.1 reverse proxy."""
    filters = []
    cluster: dict = {
        "name": "echo",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "echo",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": upstream_port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if descriptor is not None:
        filters.append(
            {
                "name": "envoy.filters.http.grpc_json_transcoder",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                    "proto_descriptor": str(descriptor),
                    "services": ["switchyard.bench.v1.Echo"],
                    "convert_grpc_status": True,
                },
            }
        )
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    config = {
        "static_resources": {
            "listeners": [
                {
                    "name": "public",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "bench",
                                        "codec_type": "HTTP1",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "echo", "timeout": "15s"},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": filters,
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [cluster],
        }
    }
    path = run_dir / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cert:
    ca: Path  # what clients verify the certificate with
    cert: Path  # the served certificate, for 127.0.0.1
    key: Path


def openssl(*args: str) -> None:
    try:
        out = subprocess.run(["openssl", *args], capture_output=True, timeout=30, check=False)
    except OSError as e:
        raise Failed(f"cannot run openssl to make the TLS targets' certificate: {e}") from e
    if out.returncode != 0:
        raise Failed(f"openssl {args[0]} failed ({out.returncode}): {out.stderr.decode(errors='replace')[-800:]}")


def make_cert(run_dir: Path) -> Cert:
    """A CA and one P-256 certificate it signs for IP 127.0.0.1, served by every TLS target of
    the run. (Clients on webpki, oha's rustls among them, refuse a self-signed CA certificate
    served as the end entity, hence the two.)"""
    d = run_dir / "tls"
    d.mkdir(exist_ok=True)
    ca, ca_key = d / "ca.pem", d / "ca-key.pem"
    cert = Cert(ca, d / "cert.pem", d / "key.pem")
    p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *p256, "-days", "2", "-subj", "/CN=switchyard-bench-ca", "-keyout", str(ca_key), "-out", str(ca))
    csr = d / "cert.csr"
    openssl("req", "-new", *p256, "-subj", "/CN=switchyard-bench", "-keyout", str(cert.key), "-out", str(csr))
    ext = d / "cert.ext"
    ext.write_text("basicConstraints = critical, CA:FALSE\nsubjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(cert.cert),
    )
    return cert


# The policies of switchyard-policies: the benchmark's service needs a token of one EdDSA
# provider (keys from a JWKS file), its subject is forwarded as a header, and a local rate limit
# keeps one bucket per subject, at a rate no run comes near, so that every request is admitted.
POLICIES_TOML = """
[jwt]
forward_claims = {{ sub = "x-auth-subject" }}

[[jwt.providers]]
name = "bench"
issuer = "switchyard-bench"
audiences = ["bench"]
algorithms = ["EdDSA"]
jwks_file = {jwks}

[[jwt.routes]]
service = "sample"

[[rate_limits]]
name = "bench-subject"
key = "subject"
services = ["sample"]
rate = 1000000
per = "second"
"""


@dataclass
class Policies:
    config: Path  # the gateway's config file
    token: str  # what oha sends as its bearer token


def make_policies(gateway: Path, run_dir: Path) -> Policies:
    """A signing key, its JWKS, the config file and a token, with the gateway's own commands
    (`gateway` is the switchyard binary; profile.py reuses this for its `--policies`)."""
    d = run_dir / "policies"
    d.mkdir(exist_ok=True)
    switchyard = str(gateway)

    def token_cmd(*args: str) -> str:
        out = subprocess.run([switchyard, "token", *args], capture_output=True, timeout=30, check=False)
        if out.returncode != 0:
            raise Failed(f"switchyard token {args[0]} failed: {out.stderr.decode(errors='replace')[-800:]}")
        return out.stdout.decode()

    key = d / "bench.key"
    token_cmd("keygen", "--out", str(d / "bench"))
    jwks = d / "jwks.json"
    jwks.write_text(token_cmd("jwks", "--key", str(key)))
    config = d / "policies.toml"
    config.write_text(POLICIES_TOML.format(jwks=json.dumps(str(jwks))))
    token = token_cmd(
        "issue-public", "--key", str(key), "--issuer", "switchyard-bench", "--audience", "bench",
        "--subject", "bench-client", "--ttl", "12h",
    ).strip()
    return Policies(config, token)


def metric_sum(control: str, prefix: str) -> float:
    """The sum of the gateway's metric samples whose series starts with `prefix` (its /metrics)."""
    with urllib.request.urlopen(f"http://{control}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def status_of(url: str, body: bytes) -> int:
    """The status of one POST of `body`, sent without credentials."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def tls_session(url: str, cafile: Path) -> dict:
    """The protocol and cipher suite a TLS target negotiates with a client on OpenSSL's defaults,
    for the report (both servers follow the client's order of cipher suites)."""
    import socket
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((u.hostname, u.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=u.hostname) as tls:
            cipher = tls.cipher()
            return {
                "version": tls.version(),
                "cipher": cipher[0] if cipher else None,
                "alpn": tls.selected_alpn_protocol(),
            }


# ---------------------------------------------------------------------------------------------
# Load


@dataclass
class Tools:
    bin_dir: Path
    oha: str
    envoy: str
    nginx: str
    baseline: Path | None = None
    cert: Cert | None = None  # made on first use by a TLS target
    policies: Policies | None = None  # made on first use by switchyard-policies
    kafka: str | None = None  # the broker's bootstrap address, once a Kafka target started it
    kafka_dir: Path | None = None
    kafka_starting: subprocess.Popen | None = None  # a start begun ahead (begin_kafka)


def json_body(size: int) -> bytes:
    if size < 14:
        raise Failed(f"body size {size} is below the minimum of 14 bytes")
    return b'{"message":"' + b"x" * (size - 14) + b'"}'


def children_cpu_s() -> float:
    """CPU seconds of every child process waited for so far (the load generators)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_oha(
    tools: Tools, url: str, body_file: Path, conns: int, seconds: float, rate: float | None, cpu: str | None,
    headers: dict[str, str],
) -> dict:
    argv = [
        tools.oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-w", "-c", str(conns),
        "-m", "POST", "-T", "application/json", "-D", str(body_file),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if rate is not None:
        argv += ["-q", str(rate)]
    if url.startswith("https://"):
        assert tools.cert is not None
        argv += ["--cacert", str(tools.cert.ca)]
    argv.append(url)
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    load_cpu_before = children_cpu_s()
    out = subprocess.run(argv, capture_output=True, timeout=seconds + 60, check=False)
    load_cpu_s = children_cpu_s() - load_cpu_before
    if out.returncode != 0:
        raise Failed(f"oha failed ({out.returncode}): {out.stderr.decode(errors='replace')[-800:]}")
    report = json.loads(out.stdout)
    summary = report["summary"]
    codes = {str(k): int(v) for k, v in report.get("statusCodeDistribution", {}).items()}
    ok = codes.get("200", 0)
    errors = sum(v for k, v in codes.items() if k != "200") + sum(
        int(v) for v in report.get("errorDistribution", {}).values()
    )
    pct = report.get("latencyPercentiles", {})

    def ms(key: str) -> float | None:
        v = pct.get(key)
        return None if v is None else float(v) * 1000

    elapsed = float(summary.get("total") or seconds)
    return {
        "requests": ok,
        "errors": errors,
        "status_codes": codes,
        "first_error": next(iter(report.get("errorDistribution", {})), None),
        "elapsed_s": elapsed,
        "load_cpu_cores": load_cpu_s / elapsed if elapsed > 0 else None,
        "rps": ok / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": ms("p50"),
            "p99": ms("p99"),
            "p99_9": ms("p99.9"),
            "max": None if summary.get("slowest") is None else float(summary["slowest"]) * 1000,
        },
    }


def run_grpc_load(tools: Tools, target: str, size: int, conns: int, seconds: float, rate: float | None, cpu: str | None) -> dict:
    argv = [
        str(tools.bin_dir / "bench-grpc-load"), "--target", target, "--concurrency", str(conns),
        "--duration-s", str(seconds), "--body-bytes", str(size),
    ]
    if rate is not None:
        argv += ["--rate", str(rate)]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    load_cpu_before = children_cpu_s()
    out = subprocess.run(argv, capture_output=True, timeout=seconds + 60, check=False)
    load_cpu_s = children_cpu_s() - load_cpu_before
    if out.returncode != 0:
        raise Failed(f"bench-grpc-load failed ({out.returncode}): {out.stderr.decode(errors='replace')[-800:]}")
    result = json.loads(out.stdout)
    elapsed = result.get("elapsed_s")
    result["load_cpu_cores"] = load_cpu_s / elapsed if elapsed else None
    return result


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass
class Layout:
    proxy_cpu: str | None
    load_cpu: str | None

    def describe(self) -> str:
        if self.proxy_cpu is None:
            return "not pinned (fewer than 2 cores available)"
        return (
            f"proxy (or, for direct, the service) on CPU {self.proxy_cpu} with one worker; load "
            f"generator and backend on CPU {self.load_cpu}; switchyard-dflt not pinned, default workers"
        )


@dataclass
class Started:
    url: str  # HTTP(S) URL to load, or the gRPC target for direct
    measured: Proc  # the process whose CPU and memory are reported
    cafile: Path | None = None  # what verifies an https URL
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request
    control: str | None = None  # a gateway's control listener (host:port)


# The benchmark measures forwarding: its samples register without credentials, and the echo
# backends listen on loopback, which the address policy refuses unless allowed.
OPEN_CONTROL = ["control.auth=none", "control.reads=open", 'upstream.allow_addresses=["127.0.0.0/8"]']


def open_control_flags(gateway: Path) -> list[str]:
    """`--set` flags for OPEN_CONTROL, or none for a gateway built before these keys (a
    baseline), which has no credentials and no address policy; `check-config` tells which."""
    flags = [arg for kv in OPEN_CONTROL for arg in ("--set", kv)]
    try:
        done = subprocess.run([str(gateway), "check-config", *flags], capture_output=True, timeout=30, check=False)
    except OSError as e:
        raise Failed(f"cannot run {gateway}: {e}") from e
    if done.returncode == 0:
        return flags
    if b"unknown field" in done.stderr:
        log(f"{gateway} predates control credentials and the address policy: started without them")
        return []
    raise Failed(f"{gateway} check-config failed: {done.stderr.decode(errors='replace')[-800:]}")


def gateway_with_sample(procs: Procs, tag: str, argv: list[str], sample: Path, instance_id: str) -> tuple[Proc, dict]:
    """Starts a gateway by `argv` (unpinned, logging warnings only), reads the addresses its
    first line gives, and starts the Rust sample service registered with it as `instance_id`
    (profile.py and pgo.py); returns the gateway and its addresses (`public`, `control`)."""
    gw = procs.start(f"gateway-{tag}", argv, None, env={"SWITCHYARD_LOG": "warn"})
    line = procs.first_line(gw, "switchyard listening:")
    fields = dict(part.split("=", 1) for part in line.split()[2:])
    procs.start(
        f"sample-{tag}",
        [str(sample), "--gateway", f"http://{fields['control']}", "--instance-id", instance_id],
        None,
        env={"RUST_LOG": "warn"},
    )
    return gw, fields


def target_cert(tools: Tools, run_dir: Path) -> Cert:
    if tools.cert is None:
        tools.cert = make_cert(run_dir)
    return tools.cert


def start_target(name: str, procs: Procs, tools: Tools, layout: Layout, run_dir: Path, probe: bytes) -> Started:
    b = tools.bin_dir
    p_cpu, l_cpu = layout.proxy_cpu, layout.load_cpu
    if name == "direct":
        svc = procs.start(
            "direct-sample",
            [str(b / "sample-service"), "--gateway", "http://127.0.0.1:9", "--lease-ms", "60000"],
            p_cpu,
            env={"RUST_LOG": "error"},
        )
        line = procs.first_line(svc, "listening on ")
        addr = line.split()[2]
        return Started(f"http://{addr}", svc)
    if name in (
        "switchyard", "switchyard-per-core", "switchyard-policies", "switchyard-dflt", "switchyard-tls", *KAFKA_TARGETS,
        BASELINE,
    ):
        pinned = name != "switchyard-dflt"
        gateway = tools.baseline if name == BASELINE else b / "switchyard"
        argv = [
            str(gateway), "serve", "--public-listen", "127.0.0.1:0",
            "--control-listen", "127.0.0.1:0", "--node-id", "gw-bench",
            "--set", "log.level=\"warn\"",
        ]
        if pinned:
            argv += ["--set", "runtime.worker_threads=1"]
        if name == "switchyard-per-core":
            # One thread of the public front, on its own socket, beside the two workers that
            # run the control listener and the background tasks (idle here).
            argv += ["--set", 'runtime.layout="per_core"']
        cert = None
        if name == "switchyard-tls":
            # TLS on the public listener only: the sample registers on the control listener.
            cert = target_cert(tools, run_dir)
            argv += ["--set", f"public.tls.cert_file={json.dumps(str(cert.cert))}"]
            argv += ["--set", f"public.tls.key_file={json.dumps(str(cert.key))}"]
        headers = {}
        if name == "switchyard-policies":
            if tools.policies is None:
                tools.policies = make_policies(b / "switchyard", run_dir)
            argv += ["--config", str(tools.policies.config)]
            headers = {"authorization": f"Bearer {tools.policies.token}"}
        if name in KAFKA_TARGETS:
            bootstrap = start_kafka(tools, run_dir, l_cpu)
            argv += [
                "--set", "bus.kind=kafka", "--set", f"bus.kafka.brokers={bootstrap}",
                "--set", "bus.kafka.topic=bench-registry",
            ]
            if name == "switchyard-audit":
                argv += ["--set", "audit.enabled=true"]
        argv += open_control_flags(gateway)
        gw = procs.start(name, argv, p_cpu if pinned else None, env={"SWITCHYARD_LOG": "warn"})
        line = procs.first_line(gw, "switchyard listening:")
        fields = dict(part.split("=", 1) for part in line.split()[2:])
        public, control = fields["public"], fields["control"]
        procs.start(
            f"{name}-sample",
            [str(b / "sample-service"), "--gateway", f"http://{control}", "--instance-id", "bench-1", "--lease-ms", "60000"],
            l_cpu,
            env={"RUST_LOG": "warn"},
        )
        scheme = "http" if cert is None else "https"
        url = f"{scheme}://{public}/sample/test/echo-body"
        cafile = None if cert is None else cert.ca
        wait_port_answers(url, probe, probe, cafile, headers)
        if headers:
            # The route protects the service: a request without the token is refused.
            status = status_of(url, probe)
            if status != 401:
                raise Failed(f"{name}: a request without a token was answered {status}, not 401")
        return Started(url, gw, cafile, headers, control)
    backends = procs.start(f"{name}-backends", [str(b / "bench-backends"), "--threads", "1"], l_cpu)
    line = procs.first_line(backends, "backends ")
    addrs = dict(part.split("=", 1) for part in line.split()[1:])
    grpc_port = int(addrs["grpc"].rsplit(":", 1)[1])
    http_port = int(addrs["http"].rsplit(":", 1)[1])
    port = free_port()
    cert = target_cert(tools, run_dir) if name == "nginx-tls" else None
    if name in ("nginx", "nginx-tls"):
        conf = nginx_conf(run_dir, name, port, f"127.0.0.1:{http_port}", cert)
        proxy = procs.start(name, [tools.nginx, "-e", "stderr", "-c", str(conf)], p_cpu)
    elif name == "grpc-gateway":
        # One P for Go's scheduler, as Envoy gets one worker and nginx one worker process.
        proxy = procs.start(
            name,
            [str(b / GRPC_GATEWAY_BIN), "-listen", "127.0.0.1:0", "-backend", f"127.0.0.1:{grpc_port}"],
            p_cpu,
            env={"GOMAXPROCS": "1"},
        )
        line = procs.first_line(proxy, "grpc-gateway listening on ")
        port = int(line.rsplit(":", 1)[1])
    else:
        descriptor = None
        upstream = http_port
        if name == "envoy-transcoder":
            descriptor = run_dir / "echo_descriptor.pb"
            subprocess.run([str(b / "bench-backends"), "descriptor", str(descriptor)], check=True, timeout=30)
            upstream = grpc_port
        conf = envoy_conf(run_dir, name, port, upstream, descriptor)
        proxy = procs.start(
            name,
            [tools.envoy, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
            p_cpu,
        )
    scheme = "http" if cert is None else "https"
    url = f"{scheme}://127.0.0.1:{port}/echo"
    cafile = None if cert is None else cert.ca
    wait_port_answers(url, probe, probe, cafile)
    return Started(url, proxy, cafile)


def begin_kafka(tools: Tools, run_dir: Path, cpu: str | None) -> None:
    """Starts the run's Kafka broker without waiting for it; `start_kafka` waits. The JVM's
    start takes about 20 s of CPU, so only the smoke begins it ahead, beside the first targets,
    whose figures it does not assert."""
    if tools.kafka is not None or tools.kafka_starting is not None:
        return
    # Beside the runs, not in this one: the jars stay from run to run; the storage is wiped.
    tools.kafka_dir = run_dir.parent / "kafka"
    env = dict(
        os.environ,
        KAFKA_DIR=str(tools.kafka_dir),
        KAFKA_PORT=str(free_port()),
        KAFKA_CONTROLLER_PORT=str(free_port()),
    )
    subprocess.run([str(KAFKA_SH), "wipe"], env=env, capture_output=True, timeout=120, check=False)
    argv = [str(KAFKA_SH), "start"]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    log("starting a Kafka broker for the Kafka targets")
    tools.kafka_starting = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_kafka(tools: Tools, run_dir: Path, cpu: str | None) -> str:
    """The run's Kafka broker (started on `cpu` on first use, or begun ahead): its bootstrap
    address."""
    if tools.kafka is None:
        begin_kafka(tools, run_dir, cpu)
        finish_kafka_start(tools)
    return tools.kafka


def finish_kafka_start(tools: Tools) -> None:
    """Waits for the start `begin_kafka` began and keeps the broker's bootstrap address."""
    starting, tools.kafka_starting = tools.kafka_starting, None
    if starting is None:
        return
    try:
        out, err = starting.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        starting.kill()
        starting.communicate()
        raise Failed("kafka.sh start did not finish within 300 s")
    if starting.returncode != 0:
        raise Failed(f"kafka.sh start failed:\n{err[-2000:]}")
    tools.kafka = out.strip().splitlines()[-1]


def stop_kafka(tools: Tools) -> None:
    # Begun ahead and never waited for (the run failed first): let it finish, then stop it.
    try:
        finish_kafka_start(tools)
    except Failed:
        pass
    if tools.kafka_dir is None or tools.kafka is None:
        return
    env = dict(os.environ, KAFKA_DIR=str(tools.kafka_dir), KAFKA_PORT=tools.kafka.rsplit(":", 1)[1])
    subprocess.run([str(KAFKA_SH), "stop"], env=env, capture_output=True, timeout=120, check=False)
    tools.kafka = tools.kafka_dir = None


def measure_target(
    name: str, args, procs: Procs, tools: Tools, layout: Layout, run_dir: Path, sessions: dict, checks: dict
) -> dict:
    started = start_target(name, procs, tools, layout, run_dir, json_body(100))
    pids = descendants(started.measured.popen.pid)
    # taskset execs the program, so the pid is the program's own.
    out = {}
    if started.cafile is not None:
        tls = sessions[name] = tls_session(started.url, started.cafile)
        log(f"{name}: {tls['version']} {tls['cipher']}, ALPN {tls['alpn']}")
    for size in args.sizes:
        body_file = run_dir / f"body-{size}.json"
        body_file.write_bytes(json_body(size))
        if name != "direct":
            wait_port_answers(started.url, json_body(size), json_body(size), started.cafile, started.headers)

        def load(seconds: float, rate: float | None) -> dict:
            if name == "direct":
                return run_grpc_load(tools, started.url, size, args.connections, seconds, rate, layout.load_cpu)
            return run_oha(
                tools, started.url, body_file, args.connections, seconds, rate, layout.load_cpu, started.headers
            )

        log(f"{name} {size} B: warm-up {args.warmup_s} s")
        load(args.warmup_s, None)
        log(f"{name} {size} B: fixed {args.rate:g} req/s for {args.rate_s} s")
        fixed = load(args.rate_s, args.rate)
        pids = descendants(started.measured.popen.pid)
        reset_peak_rss(pids)
        user_before, kernel_before = cpu_split(pids)
        log(f"{name} {size} B: saturating, {args.connections} connections, {args.sat_s} s")
        sat = load(args.sat_s, None)
        user_after, kernel_after = cpu_split(pids)
        cpu_used = (user_after - user_before) + (kernel_after - kernel_before)
        sat["cpu_s"] = cpu_used
        sat["cpu_us_per_req"] = cpu_used * 1e6 / sat["requests"] if sat["requests"] else None
        # The kernel's share: system calls and the loopback TCP they drive.
        sat["kernel_us_per_req"] = (
            (kernel_after - kernel_before) * 1e6 / sat["requests"] if sat["requests"] else None
        )
        sat["cpu_cores"] = cpu_used / sat["elapsed_s"] if sat["elapsed_s"] else None
        sat["peak_rss_mib"] = status_kib(pids, "VmHWM") / 1024
        sat["rss_mib"] = status_kib(pids, "VmRSS") / 1024
        out[str(size)] = {"fixed": fixed, "saturating": sat}
        if started.measured.popen.poll() is not None:
            raise Failed(f"{name} exited during the run; see {started.measured.log_path}")
    if name == "switchyard-policies":
        checks[name] = check_policies(started.control, out)
    if name == "switchyard-audit":
        checks[name] = check_audit(started.control, out)
    procs.stop_all()
    return out


RATE_LIMIT_SERIES = 'switchyard_rate_limit_requests_total{rule="bench-subject"'


def check_policies(control: str, out: dict) -> dict:
    """The policies were applied to the load and refused nothing: oha saw no 401 or 429, the
    rate limit admitted requests and limited none, and the JWT check refused only the probe
    without a token."""
    seen = {"401": 0, "429": 0}
    for runs in out.values():
        for r in runs.values():
            for code in seen:
                seen[code] += r["status_codes"].get(code, 0)
    counts = {
        "oha_401": seen["401"],
        "oha_429": seen["429"],
        "rate_limit_admitted": metric_sum(control, f'{RATE_LIMIT_SERIES},outcome="admitted"}}'),
        "rate_limit_limited": metric_sum(control, f'{RATE_LIMIT_SERIES},outcome="limited"}}'),
        "jwt_refusals": metric_sum(control, "switchyard_jwt_refusals_total"),
    }
    log(
        "switchyard-policies: {oha_401} answers 401 and {oha_429} answers 429 seen by oha; the rate limit "
        "admitted {rate_limit_admitted:.0f} and limited {rate_limit_limited:.0f}; JWT refusals "
        "{jwt_refusals:.0f} (the probe without a token)".format(**counts)
    )
    if seen["401"] or seen["429"] or counts["rate_limit_limited"] or counts["jwt_refusals"] != 1:
        raise Failed("switchyard-policies refused requests of the load; see the line above")
    if counts["rate_limit_admitted"] == 0:
        raise Failed("switchyard-policies: the rate limit saw no request (the rule is not applied)")
    return counts


def check_audit(control: str, out: dict) -> dict:
    """Auditing was on for the load: the gateway delivered audit records to the broker for the
    requests, and dropped none."""
    answered = sum(r["requests"] for runs in out.values() for r in runs.values())
    counts = {
        "answered": answered,
        "records_delivered": metric_sum(control, 'switchyard_audit_records_total{stream="requests"'),
        "records_dropped": metric_sum(control, "switchyard_audit_dropped_total"),
    }
    log(
        "switchyard-audit: {answered} requests answered to the load generator; {records_delivered:.0f} "
        "request records delivered to Kafka, {records_dropped:.0f} dropped".format(**counts)
    )
    if counts["records_delivered"] == 0:
        raise Failed("switchyard-audit: no audit record reached Kafka (is auditing applied?)")
    return counts


# ---------------------------------------------------------------------------------------------
# Report


def fmt(v, digits=2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def ratio(a, b) -> str:
    if a is None or b in (None, 0):
        return "—"
    return f"{a / b:.2f}"


def ratio_rows(results: dict, s: str, rows) -> list[str]:
    """Ratio lines `numerator / denominator` for each (numerator, denominator, label) of `rows`
    whose two targets were both measured at size `s`."""
    lines = []
    for num, den, label in rows:
        a_run, b_run = results.get(num, {}).get(s), results.get(den, {}).get(s)
        if a_run is None or b_run is None:
            continue
        a, b = a_run["saturating"], b_run["saturating"]
        la, lb = a_run["fixed"].get("latency_ms") or {}, b_run["fixed"].get("latency_ms") or {}
        lines.append(
            f"| {label} | {ratio(a['rps'], b['rps'])} | {ratio(a.get('cpu_us_per_req'), b.get('cpu_us_per_req'))} | "
            f"{ratio(la.get('p99'), lb.get('p99'))} | {ratio(a.get('peak_rss_mib'), b.get('peak_rss_mib'))} |"
        )
    return lines


RATIO_HEAD = ["| ratio | throughput | CPU per request | p99 @ fixed rate | peak RSS |", "| --- | ---: | ---: | ---: | ---: |"]


def tables(results: dict, args) -> str:
    lines = []
    for size in args.sizes:
        s = str(size)
        lines.append(f"\n### {size} B bodies\n")
        lines.append(
            f"| target | req/s ({args.connections} conns) | CPU µs/req | of which kernel | CPU cores | peak RSS MiB | "
            f"p50 ms @{args.rate:g}/s | p99 ms | p99.9 ms | p99 added over direct ms | load CPU cores | errors |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        direct_p99 = results.get("direct", {}).get(s, {}).get("fixed", {}).get("latency_ms", {}).get("p99")
        for t in args.targets:
            r = results.get(t, {}).get(s)
            if r is None:
                continue
            sat, fixed = r["saturating"], r["fixed"]
            lat = fixed.get("latency_ms") or {}
            added = None if direct_p99 is None or lat.get("p99") is None else lat["p99"] - direct_p99
            errs = sat.get("errors", 0) + fixed.get("errors", 0)
            lines.append(
                f"| {t} | {fmt(sat['rps'], 0)} | {fmt(sat.get('cpu_us_per_req'), 1)} | "
                f"{fmt(sat.get('kernel_us_per_req'), 1)} | {fmt(sat.get('cpu_cores'))} | "
                f"{fmt(sat.get('peak_rss_mib'), 1)} | {fmt(lat.get('p50'), 3)} | {fmt(lat.get('p99'), 3)} | "
                f"{fmt(lat.get('p99_9'), 3)} | {fmt(added, 3)} | {fmt(sat.get('load_cpu_cores'))} | {errs} |"
            )
        rows = ratio_rows(
            results,
            s,
            [
                ("switchyard", "envoy-transcoder", "Switchyard / Envoy transcoder"),
                ("switchyard", "grpc-gateway", "Switchyard / grpc-gateway"),
                ("switchyard", "direct", "Switchyard / direct"),
                ("switchyard", "nginx", "Switchyard / nginx"),
                ("switchyard", "envoy", "Switchyard / Envoy plain"),
                ("switchyard", "switchyard-dflt", "Switchyard / Switchyard default workers"),
                ("switchyard", "switchyard-per-core", "Switchyard / Switchyard per-core layout"),
                ("switchyard-per-core", "nginx", "Switchyard per-core layout / nginx"),
                ("switchyard", BASELINE, "Switchyard / the baseline build"),
            ],
        )
        if rows:
            lines += [f"\nSwitchyard (one worker, pinned) / peer, {size} B:\n", *RATIO_HEAD, *rows]
        rows = ratio_rows(
            results,
            s,
            [
                ("switchyard-tls", "nginx-tls", "Switchyard TLS / nginx TLS"),
                ("switchyard-tls", "switchyard", "Switchyard TLS / Switchyard (the price of TLS)"),
                ("nginx-tls", "nginx", "nginx TLS / nginx (the price of TLS)"),
            ],
        )
        if rows:
            lines += [f"\nWith TLS on the public listener, {size} B:\n", *RATIO_HEAD, *rows]
        rows = ratio_rows(
            results, s, [("switchyard-policies", "switchyard", "Switchyard with JWT and a rate limit / Switchyard")]
        )
        if rows:
            title = f"\nWith the JWT check and a local rate limit by subject (issue 15), {size} B:\n"
            lines += [title, *RATIO_HEAD, *rows]
        rows = ratio_rows(
            results, s, [("switchyard-audit", "switchyard-kafka", "Switchyard auditing to Kafka / not auditing")]
        )
        if rows:
            title = f"\nWith auditing on, every request's record to Kafka, no bodies (issue 16), {size} B:\n"
            lines += [title, *RATIO_HEAD, *rows]
        costs = []
        for plain, tls, label in (("switchyard", "switchyard-tls", "Switchyard"), ("nginx", "nginx-tls", "nginx")):
            a, b = results.get(plain, {}).get(s), results.get(tls, {}).get(s)
            if a is None or b is None:
                continue
            cpu_a, cpu_b = a["saturating"].get("cpu_us_per_req"), b["saturating"].get("cpu_us_per_req")
            added = None if cpu_a is None or cpu_b is None else cpu_b - cpu_a
            costs.append(f"| {label} | {fmt(cpu_a, 1)} | {fmt(cpu_b, 1)} | {fmt(added, 1)} |")
        if costs:
            lines += [
                f"\nCPU per request added by TLS, {size} B (established connections):\n",
                "| proxy | CPU µs/req without TLS | with TLS | added by TLS µs |",
                "| --- | ---: | ---: | ---: |",
                *costs,
            ]
    return "\n".join(lines) + "\n"


def versions(tools: Tools) -> dict:
    def first(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, timeout=30, check=False)
            text = (out.stdout + out.stderr).decode(errors="replace").strip().splitlines()
            return next((l.strip() for l in text if l.strip()), "?")
        except OSError as e:
            return f"unavailable: {e}"

    return {
        "oha": first([tools.oha, "--version"]),
        "envoy": first([tools.envoy, "--version"]),
        "nginx": first([tools.nginx, "-v"]),
        **(
            {"grpc-gateway": first([str(tools.bin_dir / GRPC_GATEWAY_BIN), "-version"])}
            if (tools.bin_dir / GRPC_GATEWAY_BIN).exists()
            else {}
        ),
        "switchyard": first([str(tools.bin_dir / "switchyard"), "--version"]),
        **({"switchyard-base": str(tools.baseline)} if tools.baseline is not None else {}),
        "openssl": first(["openssl", "version"]),
        "rustc": first(["rustc", "--version"]),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="every target briefly; fails on any error")
    ap.add_argument("--bin-dir", type=Path, required=True, help="where switchyard, sample-service and the bench tools are")
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument(
        "--switchyard-baseline", type=Path, help="an older switchyard binary, measured as the target switchyard-base"
    )
    ap.add_argument("--sizes", default="100,16384", help="body sizes in bytes")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=float, default=2000.0, help="fixed rate, requests per second")
    ap.add_argument("--rate-s", type=float, default=20.0, help="seconds of the fixed-rate run")
    ap.add_argument("--sat-s", type=float, default=20.0, help="seconds of the saturating run")
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=ROOT / "testbeds/.run/bench")
    args = ap.parse_args()
    args.targets = [t for t in args.targets.split(",") if t]
    if args.switchyard_baseline is not None and BASELINE not in args.targets:
        # Measured right after `switchyard`, so the two builds meet the same state of the
        # machine (on a shared machine its speed drifts within minutes).
        at = args.targets.index("switchyard") + 1 if "switchyard" in args.targets else len(args.targets)
        args.targets.insert(at, BASELINE)
    unknown = [t for t in args.targets if t not in TARGETS and not (t == BASELINE and args.switchyard_baseline)]
    if unknown:
        ap.error(f"unknown targets {unknown}; choose from {TARGETS}")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.smoke:
        # The shortest phases the bounds below allow: the smoke checks that every target starts
        # and answers at each size, not its figures.
        args.rate, args.rate_s, args.sat_s, args.warmup_s = 200.0, 0.5, 0.5, 0.1
    for name, v, lo, hi in (
        ("--connections", args.connections, 1, 1024),
        ("--rate", args.rate, 1, 1_000_000),
        ("--rate-s", args.rate_s, 0.5, 3600),
        ("--sat-s", args.sat_s, 0.5, 3600),
        ("--warmup-s", args.warmup_s, 0.1, 600),
    ):
        if not lo <= v <= hi:
            ap.error(f"{name} must lie in [{lo}, {hi}]")
    for s in args.sizes:
        if not 14 <= s <= 1024 * 1024 - 1024:
            ap.error("--sizes must lie between 14 bytes and 1 MiB less 1 KiB (the gateway's body limit)")

    cpus = sorted(os.sched_getaffinity(0))
    layout = Layout(str(cpus[0]), str(cpus[1])) if len(cpus) >= 2 else Layout(None, None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.out / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    tools = Tools(args.bin_dir, args.oha, args.envoy, args.nginx, args.switchyard_baseline)
    procs = Procs(run_dir)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    results: dict = {}
    sessions: dict = {}  # the TLS targets' negotiated protocol and cipher suite
    checks: dict = {}  # switchyard-policies: what its policies admitted and refused
    started = time.monotonic()
    # How busy the machine was (1-, 5- and 15-minute load averages), for the report: other
    # processes on the same cores depress and scatter every figure.
    loadavg_start = os.getloadavg()
    try:
        if args.smoke and any(t in KAFKA_TARGETS for t in args.targets):
            begin_kafka(tools, run_dir, layout.load_cpu)
        for t in args.targets:
            log(f"target {t}")
            results[t] = measure_target(t, args, procs, tools, layout, run_dir, sessions, checks)
    except Failed as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        procs.stop_all()
        stop_kafka(tools)
    elapsed = time.monotonic() - started

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "smoke": args.smoke,
        "pinning": layout.describe(),
        "connections": args.connections,
        "rate": args.rate,
        "rate_s": args.rate_s,
        "sat_s": args.sat_s,
        "warmup_s": args.warmup_s,
        "sizes": args.sizes,
        "bin_dir": str(args.bin_dir),
        "versions": versions(tools),
        "tls": sessions,
        "policies": checks,
        "elapsed_s": elapsed,
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
    }
    table = tables(results, args)
    (run_dir / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    md = [
        "# Proxy benchmark",
        "",
        f"{meta['date']}; pinning: {meta['pinning']}.",
        "Load average (1, 5, 15 min) at the start: {}; at the end: {}.".format(
            ", ".join(f"{v:.2f}" for v in meta["loadavg_start"]), ", ".join(f"{v:.2f}" for v in meta["loadavg_end"])
        ),
        f"Saturating: {args.connections} connections, closed loop, {args.sat_s} s. "
        f"Fixed rate: {args.rate:g} req/s over {args.connections} connections, {args.rate_s} s. Warm-up {args.warmup_s} s.",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        *(
            [
                "TLS (one certificate, P-256; established keep-alive connections): "
                + "; ".join(f"{t} {v['version']} {v['cipher']} ALPN {v['alpn']}" for t, v in sessions.items())
            ]
            if sessions
            else []
        ),
        table,
    ]
    if "switchyard-audit" in checks:
        audit = checks["switchyard-audit"]
        md.insert(
            -1,
            f"switchyard-audit: {audit['records_delivered']:,.0f} request records delivered to Kafka, "
            f"{audit['records_dropped']:,.0f} dropped (from its /metrics)",
        )
    if "switchyard-policies" in checks:
        admitted = checks["switchyard-policies"]["rate_limit_admitted"]
        md.insert(
            -1,
            "switchyard-policies: JWT (EdDSA, verified once then cached, `sub` forwarded) and a local rate "
            f"limit by subject; no 401 or 429 in any load (checked); the limit admitted {admitted:,.0f} requests",
        )
    (run_dir / "results.md").write_text("\n".join(md))
    print("\n".join(md))
    try:
        drawn = charts.write_charts(run_dir / "results.json", run_dir / "charts")
    except (OSError, ValueError, charts.ChartError) as e:
        log(f"FAILED to draw the charts: {e}")
        return 1
    log(f"charts: {', '.join(p.name for p in drawn)} in {run_dir / 'charts'}")
    log(f"results in {run_dir} ({elapsed:.0f} s)")
    if args.smoke:
        bad = [
            f"{t} {s} B {kind}"
            for t, by_size in results.items()
            for s, runs in by_size.items()
            for kind, r in runs.items()
            if r["requests"] == 0 or r["errors"] != 0
        ]
        if bad:
            log(f"FAILED: no request served, or errors, in: {', '.join(bad)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training run of a profile-guided build (testbeds/bench/pgo.sh): an instrumented gateway
serves a mix of the requests it serves in production, then stops cleanly so that LLVM's
runtime writes its counters (`.profraw` files where `-Cprofile-generate` said; a killed
process writes none).

    python3 testbeds/bench/pgo.py --gateway GW --sample SAMPLE --oha OHA [--scale 1.0]

The mix, every request checked for its status: REST calls with bodies of 100 B, 4 KiB and
16 KiB, on one and on two worker threads and on the per-core layout; GraphQL calls; calls to a
service that is not registered (404); REST calls over TLS (a certificate made with openssl, as
the proxy benchmark's), on eight connections opened afresh every thousand requests; and, with
the proxy benchmark's policies config, calls carrying a valid token (the JWT check, the
verified-token cache and the rate limit) and calls without one (401). The counters are what
the optimiser weighs branches and inlining by, so the mix leans on the plain REST path as
production traffic does, and leaves no path at zero.
Everything runs on loopback and ends by itself (each oha run is bounded by its count of
requests, and by OHA_TIMEOUT_S).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxies import (  # noqa: E402
    ROOT, Cert, Failed, Procs, gateway_with_sample, json_body, log, make_cert, make_policies, open_control_flags,
    wait_port_answers,
)

OHA_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30


def oha(oha_bin: str, url: str, body: Path, requests: int, conns: int, headers: dict[str, str],
        expect: str, cert: Cert | None = None) -> None:
    """`requests` POSTs of `body` by oha; every answer must have the status `expect`."""
    argv = [oha_bin, "--no-tui", "--output-format", "json", "-n", str(requests), "-c", str(conns),
            "-m", "POST", "-T", "application/json", "-D", str(body)]
    if cert is not None:
        argv += ["--cacert", str(cert.ca)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    try:
        out = subprocess.run(argv, capture_output=True, timeout=OHA_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise Failed(f"{url}: oha did not end within {OHA_TIMEOUT_S} s") from e
    if out.returncode != 0:
        raise Failed(f"oha failed: {out.stderr.decode(errors='replace')[-500:]}")
    try:
        codes = json.loads(out.stdout).get("statusCodeDistribution", {})
    except json.JSONDecodeError as e:
        raise Failed(f"{url}: oha's output is not JSON: {out.stdout[:200]!r}") from e
    if set(codes) != {expect} or int(codes[expect]) != requests:
        raise Failed(f"{url}: expected {requests} answers {expect}, got {codes}")


def stop_cleanly(gw) -> None:
    """SIGTERM, then wait for the gateway's own exit: a killed process writes no counters."""
    gw.popen.send_signal(signal.SIGTERM)
    try:
        rc = gw.popen.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise Failed(f"the gateway did not stop within {STOP_TIMEOUT_S} s of SIGTERM") from e
    if rc != 0:
        raise Failed(f"the gateway exited with {rc}; see {gw.log_path}")


def train_one(args, run_dir: Path, tag: str, settings: list[str], policies, work, cert: Cert | None = None) -> None:
    procs = Procs(run_dir)
    try:
        gw, fields = gateway_with_sample(
            procs,
            tag,
            [
                str(args.gateway), "serve", "--public-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
                "--node-id", f"gw-pgo-{tag}", "--set", "log.level=\"warn\"", *settings,
                *open_control_flags(args.gateway),
                *([] if policies is None else ["--config", str(policies.config)]),
                *([] if cert is None else [
                    "--set", f"public.tls.cert_file={json.dumps(str(cert.cert))}",
                    "--set", f"public.tls.key_file={json.dumps(str(cert.key))}",
                ]),
            ],
            args.sample,
            f"pgo-{tag}",
        )
        public = f"{'http' if cert is None else 'https'}://{fields['public']}"
        probe = json_body(100)
        headers = {} if policies is None else {"authorization": f"Bearer {policies.token}"}
        wait_port_answers(f"{public}/sample/test/echo-body", probe, probe, None if cert is None else cert.ca, headers)
        work(public, headers)
        stop_cleanly(gw)
    finally:
        procs.stop_all()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", type=Path, required=True, help="the instrumented gateway")
    ap.add_argument("--sample", type=Path, required=True)
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every request count (0.01 to 10)")
    args = ap.parse_args()
    if not 0.01 <= args.scale <= 10:
        ap.error("--scale must lie in [0.01, 10]")

    def n(count: int) -> int:
        return max(10, int(count * args.scale))

    run_dir = ROOT / "testbeds/.run/bench" / ("pgo-" + time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    bodies = {}
    for size in (100, 4096, 16384):
        bodies[size] = run_dir / f"body-{size}.json"
        bodies[size].write_bytes(json_body(size))
    graphql = run_dir / "graphql.json"
    graphql.write_text(json.dumps({
        "query": '{ a: call(service: "sample", path: "/hello") { status json } '
                 'b: call(service: "sample", path: "/test/echo-body", method: "POST", body: "{}") { status } }'
    }))

    def rest(public: str, headers: dict[str, str]) -> None:
        echo = f"{public}/sample/test/echo-body"
        oha(args.oha, echo, bodies[100], n(40_000), 32, headers, "200")
        oha(args.oha, echo, bodies[4096], n(5_000), 8, headers, "200")
        oha(args.oha, echo, bodies[16384], n(3_000), 8, headers, "200")
        oha(args.oha, f"{public}/nosuch/thing", bodies[100], n(1_000), 4, headers, "404")

    def mixed(public: str, headers: dict[str, str]) -> None:
        rest(public, headers)
        # A GraphQL error is still a 200: the query is checked once for its data first.
        req = urllib.request.Request(f"{public}/graphql", data=graphql.read_bytes(), method="POST",
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer = json.loads(resp.read())
        except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
            raise Failed(f"the training's GraphQL query failed: {e}") from e
        calls = answer.get("data") or {}
        if answer.get("errors") or [(calls.get(k) or {}).get("status") for k in ("a", "b")] != [200, 200]:
            raise Failed(f"the training's GraphQL query was answered {answer}")
        oha(args.oha, f"{public}/graphql", graphql, n(3_000), 8, headers, "200")

    def over_tls(public: str, headers: dict[str, str]) -> None:
        # Eight new connections every thousand requests: handshakes as well as records.
        echo = f"{public}/sample/test/echo-body"
        for _ in range(10):
            oha(args.oha, echo, bodies[100], n(1_000), 8, headers, "200", cert)

    def with_policies(public: str, headers: dict[str, str]) -> None:
        echo = f"{public}/sample/test/echo-body"
        oha(args.oha, echo, bodies[100], n(10_000), 16, headers, "200")
        oha(args.oha, echo, bodies[100], n(1_000), 4, {}, "401")

    try:
        log("training: one worker, REST and GraphQL")
        train_one(args, run_dir, "one", ["--set", "runtime.worker_threads=1"], None, mixed)
        log("training: two workers, REST")
        train_one(args, run_dir, "two", ["--set", "runtime.worker_threads=2"], None, rest)
        log("training: the per-core layout, REST")
        train_one(args, run_dir, "per-core",
                  ["--set", "runtime.worker_threads=2", "--set", 'runtime.layout="per_core"'], None, rest)
        log("training: TLS on the public listener, REST")
        cert = make_cert(run_dir)
        train_one(args, run_dir, "tls", ["--set", "runtime.worker_threads=1"], None, over_tls, cert)
        log("training: JWT check and rate limit")
        policies = make_policies(args.gateway, run_dir)
        train_one(args, run_dir, "policies", ["--set", "runtime.worker_threads=1"], policies, with_policies)
    except Failed as e:
        log(f"FAILED: {e}")
        return 1
    log(f"training done; logs in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

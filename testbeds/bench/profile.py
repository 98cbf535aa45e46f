"""Instructions per request on the gateway's hot path, counted by valgrind's callgrind: the same
count for the same binary and inputs whatever else the machine is doing, so two builds can be
compared on a busy machine.

    testbeds/bench/profile.sh [--requests 2000] [--body-bytes 100] [--tls] GATEWAY_BIN [GATEWAY_BIN...]

Each gateway binary runs under callgrind with one worker thread, instrumentation off; the Rust
sample service registers with it; a warm-up of 300 requests opens the connections; then
instrumentation goes on, the counters are zeroed, `--requests` requests are sent by oha
(8 connections, HTTP/1.1 POST to /sample/test/echo-body) and the counters are dumped. The
report gives instructions per request for each binary, the ratio of each to the first, and
the top functions by inclusive cost (callgrind_annotate) in the run directory. With `--tls` the
public listener serves TLS (a P-256 certificate made with openssl, as the proxy benchmark's) and
oha speaks HTTPS: the counted run includes its 8 handshakes. With `--cache-sim` callgrind also
simulates the caches and the report gives L1 instruction and data misses per request. With
`--policies` each binary is profiled twice, plain and with the config of the proxy benchmark's
`switchyard-policies` target (a JWT check with an EdDSA provider, `sub` forwarded, and a local
rate limit by subject that admits every request; oha sends a bearer token), and the report gives
the policies' ratio to the plain run of the same binary (issue 15)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxies import (  # noqa: E402
    RATE_LIMIT_SERIES, ROOT, Cert, Failed, Policies, Procs, gateway_with_sample, json_body, log, make_cert,
    make_policies, metric_sum, open_control_flags, status_of, wait_port_answers,
)

CALLGRIND_TIMEOUT_S = 600


def oha(oha_bin: str, url: str, body_file: Path, requests: int, cert: Cert | None, headers: dict[str, str]) -> None:
    argv = [
        oha_bin, "--no-tui", "--output-format", "json", "-n", str(requests), "-c", "8",
        "-m", "POST", "-T", "application/json", "-D", str(body_file),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if cert is not None:
        argv += ["--cacert", str(cert.ca)]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, timeout=CALLGRIND_TIMEOUT_S, check=False)
    if out.returncode != 0:
        raise Failed(f"oha failed: {out.stderr.decode(errors='replace')[-500:]}")

    codes = json.loads(out.stdout).get("statusCodeDistribution", {})
    if set(codes) != {"200"} or int(codes["200"]) != requests:
        raise Failed(f"expected {requests} answers 200, got {codes}")


def profile_one(
    gateway: Path, sample: Path, oha_bin: str, requests: int, body_bytes: int, run_dir: Path, tag: str, cert: Cert | None,
    cache_sim: bool, policies: Policies | None, layout: str = "shared",
) -> dict:
    procs = Procs(run_dir)
    out_file = run_dir / f"callgrind.{tag}.out"
    tls = []
    if cert is not None:
        tls = ["--set", f"public.tls.cert_file={json.dumps(str(cert.cert))}",
               "--set", f"public.tls.key_file={json.dumps(str(cert.key))}"]
    try:
        gw, fields = gateway_with_sample(
            procs,
            tag,
            [
                "valgrind", "--tool=callgrind", f"--cache-sim={'yes' if cache_sim else 'no'}", "--instr-atstart=no",
                f"--callgrind-out-file={out_file}",
                str(gateway), "serve", "--public-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
                "--node-id", "gw-profile", "--set", "seed=1", "--set", "runtime.worker_threads=1",
                *([] if layout == "shared" else ["--set", f'runtime.layout="{layout}"']),
                "--set", "log.level=\"warn\"",
                *open_control_flags(gateway),
                *tls,
                *([] if policies is None else ["--config", str(policies.config)]),
            ],
            sample,
            "p-1",
        )
        scheme = "http" if cert is None else "https"
        url = f"{scheme}://{fields['public']}/sample/test/echo-body"
        body = json_body(body_bytes)
        headers = {} if policies is None else {"authorization": f"Bearer {policies.token}"}
        wait_port_answers(url, body, body, None if cert is None else cert.ca, headers)
        if policies is not None and cert is None:
            # The route protects the service: a request without the token is refused.
            status = status_of(url, body)
            if status != 401:
                raise Failed(f"policies: a request without a token was answered {status}, not 401")
        body_file = run_dir / "body.json"
        body_file.write_bytes(body)
        oha(oha_bin, url, body_file, 300, cert, headers)
        pid = str(gw.popen.pid)
        for cmd in (["-i", "on"], ["-z"]):
            subprocess.run(["callgrind_control", *cmd, pid], check=True, capture_output=True, timeout=120)
        oha(oha_bin, url, body_file, requests, cert, headers)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True, timeout=120)
        if policies is not None:
            # Every request of the load went through the rate limit, and none was limited.
            admitted = metric_sum(fields["control"], f'{RATE_LIMIT_SERIES},outcome="admitted"}}')
            limited = metric_sum(fields["control"], f'{RATE_LIMIT_SERIES},outcome="limited"}}')
            if admitted < requests or limited:
                raise Failed(f"policies: the rate limit admitted {admitted:.0f} and limited {limited:.0f}")
    finally:
        procs.stop_all()
    dumps = sorted(run_dir.glob(f"callgrind.{tag}.out*"), key=lambda p: p.stat().st_mtime)
    # The explicit dump is the one with the most events: the final dump at exit holds only
    # what ran after it (shutdown).
    best, best_ir, best_events = None, -1, {}
    for d in dumps:
        text = d.read_text(errors="replace")
        m = re.search(r"^(?:summary|totals):\s*(\d+(?:\s+\d+)*)", text, re.M)
        names = re.search(r"^events:\s*(.*)$", text, re.M)
        if m and int(m.group(1).split()[0]) > best_ir:
            counts = [int(v) for v in m.group(1).split()]
            best, best_ir = d, counts[0]
            best_events = dict(zip(names.group(1).split(), counts)) if names else {}
    if best is None:
        raise Failed(f"no callgrind dump with totals for {gateway}")
    annotate = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=99", str(best)],
        capture_output=True, timeout=300, check=False,
    )
    (run_dir / f"annotate.{tag}.txt").write_bytes(annotate.stdout)
    misses = {
        "i1_misses_per_request": best_events.get("I1mr", 0) / requests,
        "d1_misses_per_request": (best_events.get("D1mr", 0) + best_events.get("D1mw", 0)) / requests,
    }
    return {"binary": str(gateway), "layout": layout, "config": "plain" if policies is None else "policies", "instructions": best_ir, "per_request": best_ir / requests, "dump": str(best), **misses}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gateways", nargs="*", type=Path)
    ap.add_argument("--default-gateway", type=Path, default=ROOT / "target/dist/switchyard",
                    help="the gateway profiled when none is named")
    ap.add_argument("--sample", type=Path, required=True)
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--body-bytes", type=int, default=100)
    ap.add_argument("--tls", action="store_true", help="TLS on the public listener (builds that have public.tls)")
    ap.add_argument("--cache-sim", action="store_true", help="simulate the caches; report L1 misses per request")
    ap.add_argument("--policies", action="store_true",
                    help="profile each binary plain and with the JWT check and a local rate limit (issue 15)")
    ap.add_argument("--layouts", default="shared",
                    help="runtime.layout values to profile each binary in, one thread each (shared,per_core)")
    args = ap.parse_args()
    args.layouts = [x for x in args.layouts.split(",") if x]
    if not args.layouts or any(x not in ("shared", "per_core") for x in args.layouts):
        ap.error("--layouts: shared and/or per_core")
    if not args.gateways:
        args.gateways = [args.default_gateway]
    if not 10 <= args.requests <= 100_000:
        ap.error("--requests must lie in [10, 100000]")
    run_dir = ROOT / "testbeds/.run/bench" / ("profile-" + time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        cert = make_cert(run_dir) if args.tls else None
        # One key, config and token for every binary (made with the first one's commands).
        policies = make_policies(args.gateways[0], run_dir) if args.policies else None
        configs = [None] if policies is None else [None, policies]
        for i, gw in enumerate(args.gateways):
            for layout in args.layouts:
                for pol in configs:
                    tag = f"{i}" if pol is None else f"{i}-policies"
                    if layout != "shared":
                        tag += f"-{layout}"
                    what = "" if pol is None else ", JWT and rate limit"
                    log(
                        f"callgrind: {gw} ({args.requests} requests of {args.body_bytes} B{', TLS' if cert else ''}"
                        f"{what}, {layout} layout)"
                    )
                    rows.append(profile_one(
                        gw, args.sample, args.oha, args.requests, args.body_bytes, run_dir, tag, cert, args.cache_sim,
                        pol, layout,
                    ))
    except Failed as e:
        log(f"FAILED: {e}")
        return 1
    base = rows[0]["per_request"]
    print(f"instructions per request ({args.requests} requests, {args.body_bytes} B bodies{', TLS' if args.tls else ''}):")
    plain = {}
    for r in rows:
        misses = ""
        if args.cache_sim:
            misses = f"  L1 misses: instructions {r['i1_misses_per_request']:,.0f}, data {r['d1_misses_per_request']:,.0f}"
        extra = ""
        if r["config"] == "plain":
            plain[(r["binary"], r["layout"])] = r["per_request"]
        else:
            p = plain[(r["binary"], r["layout"])]
            extra = f"  policies/plain {r['per_request'] / p:.3f} (+{r['per_request'] - p:,.0f})"
        config = f"  {r['config']:<8}" if args.policies else ""
        if len(args.layouts) > 1:
            config += f"  {r['layout']:<8}"
        print(f"  {r['per_request']:>12,.0f}  ratio {r['per_request'] / base:.3f}{config}  {r['binary']}{extra}{misses}")
    log(f"callgrind dumps and annotations in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

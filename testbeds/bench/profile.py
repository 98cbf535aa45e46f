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
simulates the caches and the report gives L1 instruction and data misses per request."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxies import ROOT, Cert, Failed, Procs, json_body, log, make_cert, open_control_flags, wait_port_answers  # noqa: E402

CALLGRIND_TIMEOUT_S = 600


def oha(oha_bin: str, url: str, body_file: Path, requests: int, cert: Cert | None) -> None:
    argv = [
        oha_bin, "--no-tui", "--output-format", "json", "-n", str(requests), "-c", "8",
        "-m", "POST", "-T", "application/json", "-D", str(body_file),
    ]
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
    cache_sim: bool,
) -> dict:
    procs = Procs(run_dir)
    out_file = run_dir / f"callgrind.{tag}.out"
    tls = []
    if cert is not None:
        tls = ["--set", f"public.tls.cert_file={json.dumps(str(cert.cert))}",
               "--set", f"public.tls.key_file={json.dumps(str(cert.key))}"]
    try:
        gw = procs.start(
            f"gateway-{tag}",
            [
                "valgrind", "--tool=callgrind", f"--cache-sim={'yes' if cache_sim else 'no'}", "--instr-atstart=no",
                f"--callgrind-out-file={out_file}",
                str(gateway), "serve", "--public-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
                "--node-id", "gw-profile", "--set", "seed=1", "--set", "runtime.worker_threads=1",
                "--set", "log.level=\"warn\"",
                *open_control_flags(gateway),
                *tls,
            ],
            None,
            env={"SWITCHYARD_LOG": "warn"},
        )
        line = procs.first_line(gw, "switchyard listening:")
        fields = dict(part.split("=", 1) for part in line.split()[2:])
        procs.start(
            f"sample-{tag}",
            [str(sample), "--gateway", f"http://{fields['control']}", "--instance-id", "p-1"],
            None,
            env={"RUST_LOG": "warn"},
        )
        scheme = "http" if cert is None else "https"
        url = f"{scheme}://{fields['public']}/sample/test/echo-body"
        body = json_body(body_bytes)
        wait_port_answers(url, body, body, None if cert is None else cert.ca)
        body_file = run_dir / "body.json"
        body_file.write_bytes(body)
        oha(oha_bin, url, body_file, 300, cert)
        pid = str(gw.popen.pid)
        for cmd in (["-i", "on"], ["-z"]):
            subprocess.run(["callgrind_control", *cmd, pid], check=True, capture_output=True, timeout=120)
        oha(oha_bin, url, body_file, requests, cert)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True, timeout=120)
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
    return {"binary": str(gateway), "instructions": best_ir, "per_request": best_ir / requests, "dump": str(best), **misses}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gateways", nargs="*", type=Path)
    ap.add_argument("--default-gateway", type=Path, default=ROOT / "target/release/switchyard",
                    help="the gateway profiled when none is named")
    ap.add_argument("--sample", type=Path, required=True)
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--body-bytes", type=int, default=100)
    ap.add_argument("--tls", action="store_true", help="TLS on the public listener (builds that have public.tls)")
    ap.add_argument("--cache-sim", action="store_true", help="simulate the caches; report L1 misses per request")
    args = ap.parse_args()
    if not args.gateways:
        args.gateways = [args.default_gateway]
    if not 10 <= args.requests <= 100_000:
        ap.error("--requests must lie in [10, 100000]")
    run_dir = ROOT / "testbeds/.run/bench" / ("profile-" + time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        cert = make_cert(run_dir) if args.tls else None
        for i, gw in enumerate(args.gateways):
            log(f"callgrind: {gw} ({args.requests} requests of {args.body_bytes} B{', TLS' if cert else ''})")
            rows.append(
                profile_one(gw, args.sample, args.oha, args.requests, args.body_bytes, run_dir, str(i), cert, args.cache_sim)
            )
    except Failed as e:
        log(f"FAILED: {e}")
        return 1
    base = rows[0]["per_request"]
    print(f"instructions per request ({args.requests} requests, {args.body_bytes} B bodies{', TLS' if args.tls else ''}):")
    for r in rows:
        misses = ""
        if args.cache_sim:
            misses = f"  L1 misses: instructions {r['i1_misses_per_request']:,.0f}, data {r['d1_misses_per_request']:,.0f}"
        print(f"  {r['per_request']:>12,.0f}  ratio {r['per_request'] / base:.3f}  {r['binary']}{misses}")
    log(f"callgrind dumps and annotations in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

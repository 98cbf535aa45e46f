"""What the public front's JWT check costs per request, what its verified-token cache saves, and the
cost of JWT and a local rate limit together.

    cargo build --release -p switchyard --no-default-features --features demo -p sample-service
    python3 testbeds/bench/jwt_cost.py [--bin-dir target/release] [--requests 20000] [--rounds 3]

Four gateway configurations, in turn within each round so that drift of the machine touches
them alike: `off` (no [jwt]), `jwt` (a route on the service, one EdDSA provider from a JWKS file,
`jwt.cache_entries_max = 0`: every request verifies its signature), `jwt+cache` (the same with
the default cache: the same token is verified once) and `jwt+cache+limit` (with a local
`[[rate_limits]]` rule keyed by the JWT subject, whose rate admits every request). Each gets a warm-up and then a fixed count of
`GET /bench/hello` requests from oha (8 connections, closed loop) with one token. The gateway runs
pinned to the first core with one worker thread; oha and the Rust sample service share the second.
CPU per request is the gateway's user + system time (/proc/<pid>/stat) over the requests answered
200; the ratios are against `off` in the same round. Prints a table; exits non-zero if a run has
errors. Every process it starts is killed on exit."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
READY = re.compile(r"switchyard listening: public=(\S+) control=(\S+)")
SERVICE_READY = re.compile(r"listening on (\S+) as ")
CONFIGS = ["off", "jwt", "jwt+cache", "jwt+cache+limit"]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_line(proc: subprocess.Popen, pattern: re.Pattern[str], lines_max: int = 1000) -> re.Match[str]:
    """The first line of the process's output matching `pattern` (of its first `lines_max`);
    the rest of its output is then read and dropped, so the process never blocks on a full pipe."""
    assert proc.stdout is not None
    for _ in range(lines_max):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"process exited before {pattern.pattern!r}")
        match = pattern.search(line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return match
    raise SystemExit(f"no {pattern.pattern!r} in {lines_max} lines")


def wait_ok(url: str, headers: dict[str, str], limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer 200 within {limit_s} s")


def run(bin_dir: Path, work: Path, config: str, token: str, requests: int, procs: list) -> dict:
    toml = work / f"{config}.toml"
    text = ""
    if config != "off":
        text = f"""
[jwt]
cache_entries_max = {0 if config == "jwt" else 10000}
[[jwt.providers]]
name = "bench"
issuer = "bench-issuer"
audiences = ["bench"]
algorithms = ["EdDSA"]
jwks_file = "{work / 'jwks.json'}"
[[jwt.routes]]
service = "bench"
"""
    if config == "jwt+cache+limit":
        # A local limit by the JWT subject whose rate admits every request.
        text += """
[[rate_limits]]
name = "per-subject"
key = "subject"
rate = 1000000
"""
    toml.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    gateway = subprocess.Popen(
        ["taskset", "-c", "0", str(bin_dir / "switchyard"), "serve", "--config", str(toml),
         "--public-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
         "--set", "control.auth=none", "--set", "runtime.worker_threads=1",
         "--set", 'upstream.allow_addresses=["127.0.0.0/8"]', "--set", "shutdown.drain_timeout_ms=500"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    procs.append(gateway)
    public, control = wait_line(gateway, READY).groups()
    service = subprocess.Popen(
        ["taskset", "-c", "1", str(bin_dir / "sample-service"), "--gateway", f"http://{control}",
         "--service", "bench", "--instance-id", "b-1", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    procs.append(service)
    wait_line(service, SERVICE_READY)
    url = f"http://{public}/bench/hello"
    auth = {"authorization": f"Bearer {token}"}
    wait_ok(url, auth)
    def oha(n: int) -> subprocess.CompletedProcess:
        argv = ["taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json", "-c", "8",
                "-n", str(n), "-H", f"authorization: Bearer {token}", url]
        return subprocess.run(argv, capture_output=True, check=True, timeout=600)

    oha(2000)
    before = cpu_s(gateway.pid)
    out = oha(requests)
    used = cpu_s(gateway.pid) - before
    report = json.loads(out.stdout)
    codes = {str(k): int(v) for k, v in report.get("statusCodeDistribution", {}).items()}
    ok = codes.get("200", 0)
    for p in (service, gateway):
        p.terminate()
        p.wait(timeout=10)
    return {
        "ok": ok,
        "errors": requests - ok,
        "cpu_us": used / max(ok, 1) * 1e6,
        "rps": float(report["summary"]["requestsPerSec"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", type=Path, default=Path("target/release"))
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    switchyard = str(args.bin_dir / "switchyard")
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            subprocess.run([switchyard, "token", "keygen", "--out", str(work / "k")], check=True, capture_output=True)
            jwks = subprocess.run([switchyard, "token", "jwks", "--key", str(work / "k.key")],
                                  check=True, capture_output=True, text=True).stdout
            (work / "jwks.json").write_text(jwks)
            token = subprocess.run(
                [switchyard, "token", "issue-public", "--key", str(work / "k.key"), "--issuer", "bench-issuer",
                 "--audience", "bench", "--subject", "bench-client", "--ttl", "1h"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()
            rows = []
            for r in range(args.rounds):
                results = {c: run(args.bin_dir, work, c, token, args.requests, procs) for c in CONFIGS}
                for c in CONFIGS:
                    res = results[c]
                    res["cpu_ratio"] = res["cpu_us"] / results["off"]["cpu_us"]
                    res["rps_ratio"] = res["rps"] / results["off"]["rps"]
                    rows.append((r + 1, c, res))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    print("| round | config | requests ok | errors | gateway CPU µs/request | × off | req/s | × off |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r, c, res in rows:
        print(f"| {r} | {c} | {res['ok']} | {res['errors']} | {res['cpu_us']:.1f} | {res['cpu_ratio']:.2f} "
              f"| {res['rps']:.0f} | {res['rps_ratio']:.2f} |")
    return 1 if any(res["errors"] for _, _, res in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A bounded HTTP load generator for the cluster testbed, run as a process of its own.

It sends GET requests at a fixed rate, for at most a fixed time, to the paths given, taking them
in turn, with a fixed number of worker threads on keep-alive connections, and counts what came
back in one-second buckets: status codes, Switchyard error codes (the `error.code` of a JSON
error body), transport errors (no HTTP answer at all) and which gateway answered (the
`x-switchyard-gateway` header HAProxy adds). With --request-id-prefix, request number i carries
`x-request-id: PREFIX<i>` (eight digits), so the gateways' audit records of the run can be told
from any other's and counted against these counts. It writes the counts as JSON to --out every second
(atomically, so a reader never sees half a file) and once more at the end. SIGTERM or SIGINT
ends the run early, after the requests in flight.

    loadgen.py --base http://127.0.0.1:18080 --path /rust-sample/hello \\
               --path /python-sample/hello --rate 100 --duration 30 --out load.json

Standard library only. Bounds: rate at most 2,000/s, duration at most 600 s, at most 64
workers, each request times out after --timeout seconds, the error sample keeps 500 entries.
A request is sent at its scheduled time or, if every worker is busy, as soon as one is free;
the output says how late the latest one went out (`max_lag_ms`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from pathlib import Path

RATE_MAX = 2000.0
DURATION_MAX_S = 600.0
WORKERS_MAX = 64
ERROR_SAMPLE_MAX = 500


class Recorder:
    """Per-second, per-path counts, shared by the workers under one lock."""

    def __init__(self, started_unix: float, paths: list[str]) -> None:
        self.started_unix = started_unix
        self.paths = paths
        self.lock = threading.Lock()
        # second -> path -> Counter of "status:200", "error:ConnectionRefusedError",
        # "code:no_live_instance", "gateway:gw1", "sent".
        self.buckets: dict[int, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        self.errors: list[dict] = []
        self.max_lag_ms = 0.0

    def record(self, second: int, path: str, keys: list[str], sample: dict | None) -> None:
        with self.lock:
            counter = self.buckets[second][path]
            counter["sent"] += 1
            for key in keys:
                counter[key] += 1
            if sample is not None and len(self.errors) < ERROR_SAMPLE_MAX:
                self.errors.append(sample)

    def lag(self, lag_ms: float) -> None:
        with self.lock:
            self.max_lag_ms = max(self.max_lag_ms, lag_ms)

    def snapshot(self, args: argparse.Namespace, done: bool) -> dict:
        with self.lock:
            seconds = []
            totals: dict[str, Counter] = {path: Counter() for path in self.paths}
            for second in sorted(self.buckets):
                by_path = {}
                for path, counter in self.buckets[second].items():
                    by_path[path] = dict(counter)
                    totals[path].update(counter)
                seconds.append(
                    {"second": second, "unix": self.started_unix + second, "paths": by_path}
                )
            return {
                "base": args.base,
                "paths": self.paths,
                "rate": args.rate,
                "duration_s": args.duration,
                "workers": args.workers,
                "request_id_prefix": args.request_id_prefix,
                "started_unix": self.started_unix,
                "done": done,
                "max_lag_ms": round(self.max_lag_ms, 1),
                "totals": {path: dict(counter) for path, counter in totals.items()},
                "seconds": seconds,
                "error_sample": list(self.errors),
            }


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def one_request(
    conn: http.client.HTTPConnection | None, host: str, port: int, path: str, timeout_s: float,
    request_id: str | None = None,
) -> tuple[http.client.HTTPConnection | None, list[str], dict | None]:
    """Sends one GET; returns the connection to reuse (None after an error), the counter keys
    and, for a failure, a sample describing it."""
    if conn is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    headers = {"accept": "application/json"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as err:
        conn.close()
        kind = type(err).__name__
        return None, [f"error:{kind}"], {"kind": kind, "detail": str(err)[:200]}
    keys = [f"status:{resp.status}"]
    gateway = resp.getheader("x-switchyard-gateway")
    if gateway:
        keys.append(f"gateway:{gateway}")
    sample = None
    if resp.status >= 300:
        code = "-"
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            pass
        keys.append(f"code:{code}")
        sample = {"kind": "status", "status": resp.status, "code": code, "gateway": gateway}
    if resp.getheader("connection", "").lower() == "close":
        conn.close()
        conn = None
    return conn, keys, sample


def run(args: argparse.Namespace) -> dict:
    base = urllib.parse.urlsplit(args.base)
    if base.scheme != "http" or not base.hostname or not base.port:
        raise SystemExit(f"loadgen: --base must be http://host:port, not {args.base!r}")
    total = int(args.rate * args.duration)
    interval = 1.0 / args.rate
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    started = time.monotonic()
    recorder = Recorder(time.time(), args.path)
    next_index = iter(range(total))
    index_lock = threading.Lock()
    # Requests still unsent past this point are dropped: the run is bounded in time even when
    # answers are slow.
    hard_deadline = started + args.duration + args.timeout

    def worker() -> None:
        conn = None
        while not stop.is_set():
            with index_lock:
                i = next(next_index, None)
            if i is None:
                break
            due = started + i * interval
            now = time.monotonic()
            if due > now:
                if stop.wait(due - now):
                    break
            else:
                recorder.lag((now - due) * 1000)
            if time.monotonic() > hard_deadline:
                break
            path = args.path[i % len(args.path)]
            second = int(due - started)
            sent_at = time.time()
            request_id = f"{args.request_id_prefix}{i:08d}" if args.request_id_prefix else None
            conn, keys, sample = one_request(
                conn, base.hostname, base.port, path, args.timeout, request_id
            )
            if sample is not None:
                sample.update(path=path, unix=round(sent_at, 3), second=second)
            recorder.record(second, path, keys, sample)
        if conn is not None:
            conn.close()

    threads = [
        threading.Thread(target=worker, name=f"load-{n}", daemon=True) for n in range(args.workers)
    ]
    for thread in threads:
        thread.start()
    out = Path(args.out)
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=max(0.0, 1.0 / len(threads)))
        write_json(out, recorder.snapshot(args, done=False))
        if time.monotonic() > hard_deadline + args.timeout + 1:
            break  # a worker stuck past every bound: report what we have
    report = recorder.snapshot(args, done=True)
    report["wall_s"] = round(time.monotonic() - started, 3)
    write_json(out, report)
    return report


def positive(limit: float, kind=float):
    def parse(text: str):
        value = kind(text)
        if not 0 < value <= limit:
            raise argparse.ArgumentTypeError(f"{text} is not in (0, {limit}]")
        return value

    return parse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="http://host:port (HAProxy's public frontend)")
    parser.add_argument("--path", action="append", required=True, help="a path; repeat for more")
    parser.add_argument("--rate", type=positive(RATE_MAX), default=100.0, help="requests per second")
    parser.add_argument("--duration", type=positive(DURATION_MAX_S), default=30.0, help="seconds")
    parser.add_argument("--workers", type=positive(WORKERS_MAX, int), default=16)
    parser.add_argument("--timeout", type=positive(60.0), default=5.0, help="per request, seconds")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument(
        "--request-id-prefix",
        default="",
        help="send x-request-id PREFIX<i>: visible ASCII, at most 100 characters",
    )
    args = parser.parse_args(argv)
    prefix = args.request_id_prefix
    if len(prefix) > 100 or not all(33 <= ord(c) <= 126 for c in prefix):
        parser.error("--request-id-prefix must be at most 100 visible ASCII characters")
    for path in args.path:
        if not path.startswith("/"):
            parser.error(f"--path {path!r} must start with /")
    report = run(args)
    summary = {path: totals for path, totals in report["totals"].items()}
    print(json.dumps({"wall_s": report["wall_s"], "totals": summary}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

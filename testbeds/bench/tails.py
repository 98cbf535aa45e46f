"""Honest tails, every core, and memory (issue 18): four measurements of the proxies that
proxies.py starts, in one command.

    testbeds/bench/tails.sh [--parts tails,scaling,parallel,memory] [--repeats 3] [--smoke] ...

tails    Each proxy's own saturation (closed loop, oha, `--connections` connections), then the
         open-loop generator `bench-open-loop` at 25 %, 50 % and 75 % of it: a fixed schedule,
         latency counted from when each request was due (corrected for coordinated omission).
         The proxy on the first core with one worker, the generator on the second (with the
         backend, as in proxies.py). `--repeats` rounds, the targets in a rotated order each
         round; the tables give the median and the range over the rounds.
scaling  Switchyard with 1 and 2 workers on 1 and 2 cores (`runtime.worker_threads`, taskset),
         in the shared layout, and with 1 thread on 1 core and 2 on 1 and 2 in the per-core
         layout (`runtime.layout = "per_core"`), and nginx with 1 worker process on 1 core and
         2 on 2, saturated by oha: throughput, the gateway's CPU per request, the load generator's and
         the backend's CPU (on a 2-core machine they share the gateway's cores when it has
         both), context switches per request, and futex calls per request under strace.
parallel One process with two threads (each layout of `--layouts`), its threads moved between
         one core and two (sched_setaffinity on every thread, as `taskset -a -p` does)
         `--pairs` times, the order alternating: CPU per request saturated and at a fixed rate
         in each phase. The process, its binary and its memory stay the same, so a lock or a
         shared counter shows as CPU per request on two cores; on a 2-core machine the second
         core is also the generator's and the backend's, which nginx's row measures alone.
memory   RSS of Switchyard (mimalloc, and with `--system-alloc-bin`, the system allocator) and
         nginx with 10,000 idle keep-alive connections (`bench-connections idle`) and with
         1,000 requests in flight, held by the backend `--hold-ms` (8 s) (`bench-connections in-flight` on
         the sample service's `/test/sleep/{ms}`, the bench backend's `/sleep/{ms}`); with
         `--system-alloc-bin`, also both allocators' saturating throughput and CPU per request.

Writes results.json and results.md to testbeds/.run/bench/tails-<time>/ and prints the tables.
Exits non-zero if a target fails to start or (with --smoke) a run has errors or no answers."""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import charts  # noqa: E402  (the SVG bar charts proxies.py draws too)
import proxies as px  # noqa: E402  (the targets, their configs and the process handling)

LOADS = (25, 50, 75)
TAIL_TARGETS = ("switchyard", "nginx", "envoy")
# Idle connections take a slot of the gateway's connection cap (10,000 by default) each: the
# memory part raises it, and nginx's worker_connections, just past what it opens.
IDLE_CAP = 12_000


def log(msg: str) -> None:
    px.log(msg)


def load_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def open_loop(
    tools: px.Tools, url: str, rate: float | None, args, cpu: str | None, headers: dict, seconds: float | None = None
) -> dict:
    seconds = args.rate_s if seconds is None else seconds
    argv = [
        str(tools.bin_dir / "bench-open-loop"), url, "--connections", str(args.connections),
        "--duration-s", str(seconds), "--drain-s", "5", "--timeout-s", "5", "--body-bytes", str(args.size),
    ]
    if rate is not None:
        argv += ["--rate", f"{rate:.1f}"]
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    before = load_cpu_s()
    out = subprocess.run(argv, capture_output=True, timeout=seconds + 60, check=False)
    used = load_cpu_s() - before
    if out.returncode != 0:
        raise px.Failed(f"bench-open-loop failed ({out.returncode}): {out.stderr.decode(errors='replace')[-800:]}")
    report = json.loads(out.stdout)
    report["load_cpu_cores"] = used / report["elapsed_s"] if report["elapsed_s"] else None
    return report


def saturate(tools: px.Tools, started: px.Started, args, body: Path, cpu: str | None, seconds: float) -> dict:
    return px.run_oha(tools, started.url, body, args.connections, seconds, None, cpu, started.headers)


# ---------------------------------------------------------------------------------------------
# Tails


def tails(args, tools: px.Tools, layout: px.Layout, run_dir: Path) -> dict:
    body = run_dir / f"body-{args.size}.json"
    runs: dict = {t: [] for t in args.targets}
    for rnd in range(args.repeats):
        order = args.targets[rnd % len(args.targets):] + args.targets[: rnd % len(args.targets)]
        for t in order:
            procs = px.Procs(run_dir)
            try:
                started = px.start_target(t, procs, tools, layout, run_dir, px.json_body(args.size))
                if t.startswith("switchyard"):
                    px.wait_port_answers(started.url, px.json_body(args.size), px.json_body(args.size))
                saturate(tools, started, args, body, layout.load_cpu, args.warmup_s)
                sat = saturate(tools, started, args, body, layout.load_cpu, args.sat_s)
                entry = {"round": rnd + 1, "saturation_rps": sat["rps"], "saturation": sat, "loads": {}}
                log(f"tails round {rnd + 1} {t}: saturation {sat['rps']:,.0f} req/s")
                for load in args.loads:
                    rate = sat["rps"] * load / 100
                    r = open_loop(tools, started.url, rate, args, layout.load_cpu, started.headers)
                    lat = r.get("latency_ms") or {}
                    log(
                        f"  {load} % = {rate:,.0f} req/s: p50 {lat.get('p50', 0):.3f} p99 {lat.get('p99', 0):.3f} "
                        f"p99.9 {lat.get('p99_9', 0):.3f} ms; {r['requests']} ok, {r['errors']} errors, "
                        f"{r['unanswered']} unanswered"
                    )
                    entry["loads"][str(load)] = r
                runs[t].append(entry)
            finally:
                procs.stop_all()
    return runs


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.3f}"
    return f"{med:.3f} ({min(values):.3f}–{max(values):.3f})"


def tails_table(runs: dict, args) -> list[str]:
    lines = [
        f"| target | load | rate req/s (median) | p50 ms | p99 ms | p99.9 ms | errors + unanswered | generator lag p99 ms | generator CPU cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t, entries in runs.items():
        if not entries:
            continue
        sats = [e["saturation_rps"] for e in entries]
        lines.append(f"| {t} | saturation | {statistics.median(sats):,.0f} ({min(sats):,.0f}–{max(sats):,.0f}) | | | | | | |")
        for load in args.loads:
            rs = [e["loads"][str(load)] for e in entries]
            pick = lambda k: [(r.get("latency_ms") or {}).get(k) for r in rs]  # noqa: E731
            lag = [(r.get("send_lag_ms") or {}).get("p99") for r in rs]
            bad = sum(r["errors"] + r["unanswered"] for r in rs)
            cpu = [r.get("load_cpu_cores") for r in rs if r.get("load_cpu_cores") is not None]
            lines.append(
                f"| {t} | {load} % | {statistics.median(r['rate'] for r in rs):,.0f} | {spread(pick('p50'))} | "
                f"{spread(pick('p99'))} | {spread(pick('p99_9'))} | {bad} | {spread(lag)} | "
                f"{statistics.median(cpu) if cpu else 0:.2f} |"
            )
    return lines


# ---------------------------------------------------------------------------------------------
# Switchyard started directly (scaling, memory): worker count, cores and binary chosen here


def start_switchyard(
    procs: px.Procs, tools: px.Tools, name: str, binary: Path, workers: int, cpus: str | None,
    sample_cpu: str | None, extra: list[str], layout: str = "shared",
) -> px.Started:
    argv = [
        str(binary), "serve", "--public-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
        "--node-id", "gw-bench", "--set", 'log.level="warn"', "--set", f"runtime.worker_threads={workers}",
        *px.open_control_flags(binary),
    ]
    if layout != "shared":
        argv += ["--set", f'runtime.layout="{layout}"']
    for kv in extra:
        argv += ["--set", kv]
    gw = procs.start(name, argv, cpus, env={"SWITCHYARD_LOG": "warn"})
    line = procs.first_line(gw, "switchyard listening:")
    fields = dict(part.split("=", 1) for part in line.split()[2:])
    sample = procs.start(
        f"{name}-sample",
        [str(tools.bin_dir / "sample-service"), "--gateway", f"http://{fields['control']}", "--instance-id", "bench-1",
         "--lease-ms", "60000"],
        sample_cpu,
        env={"RUST_LOG": "warn"},
    )
    url = f"http://{fields['public']}/sample/test/echo-body"
    px.wait_port_answers(url, px.json_body(100), px.json_body(100))
    started = px.Started(url, gw, None, {}, fields["control"])
    started.sample = sample  # type: ignore[attr-defined]
    return started


def start_nginx(
    procs: px.Procs, tools: px.Tools, workers: int, cpus: str, load_cpu: str | None, run_dir: Path
) -> tuple[px.Started, px.Proc]:
    """nginx as proxies.py starts it, with `workers` worker processes on `cpus`; and its backend."""
    plain = px.nginx_conf

    def with_workers(*a, **kw):
        path = plain(*a, **kw)
        path.write_text(path.read_text().replace("worker_processes 1;", f"worker_processes {workers};"))
        return path

    px.nginx_conf = with_workers
    try:
        started = px.start_target("nginx", procs, tools, px.Layout(cpus, load_cpu), run_dir, px.json_body(100))
    finally:
        px.nginx_conf = plain
    backend = next(p for p in procs.running if p.name == "nginx-backends")
    return started, backend


def start_layout(
    procs: px.Procs, tools: px.Tools, rt_layout: str, workers: int, cores: str, layout: px.Layout, run_dir: Path,
    part: str,
) -> tuple[px.Started, px.Proc]:
    """nginx, or Switchyard in one of its runtime layouts, with `workers` workers on `cores`, its
    backend on the load generator's core; and that backend."""
    if rt_layout == "nginx":
        return start_nginx(procs, tools, workers, cores, layout.load_cpu, run_dir)
    started = start_switchyard(
        procs, tools, f"switchyard-{part}", tools.bin_dir / "switchyard", workers, cores, layout.load_cpu, [], rt_layout,
    )
    return started, started.sample  # type: ignore[attr-defined]


def ctx_switches(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total


def futex_per_request(tools, started, args, body: Path, cpu: str | None, seconds: float) -> dict | None:
    """futex system calls per request, and how many of them waited (FUTEX_WAIT), under strace
    for a short saturating run: a lock or a shared counter that threads fight over shows as
    futex waits that grow with the workers."""
    if not shutil.which("strace"):
        return None
    trace = body.parent / f"strace-{started.measured.popen.pid}.txt"
    st = subprocess.Popen(
        ["strace", "-f", "-c", "-e", "trace=futex", "-o", str(trace), "-p", str(started.measured.popen.pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # strace has no readiness signal; it attaches within milliseconds
    r = saturate(tools, started, args, body, cpu, seconds)
    st.send_signal(signal.SIGINT)
    try:
        st.wait(timeout=10)
    except subprocess.TimeoutExpired:
        st.kill()
        st.wait(timeout=5)
    calls = errors = 0
    for line in trace.read_text(errors="replace").splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d*)\s*futex$", line)
        if m:
            calls, errors = int(m.group(1)), int(m.group(2) or 0)
    n = max(r["requests"], 1)
    return {"requests": r["requests"], "futex_calls": calls, "futex_errors": errors, "futex_per_req": calls / n}


def scaling(args, tools: px.Tools, layout: px.Layout, run_dir: Path) -> list[dict]:
    body = run_dir / f"body-{args.size}.json"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        log("scaling needs two cores; skipped")
        return []
    one, both = str(cpus[0]), f"{cpus[0]},{cpus[1]}"
    # nginx with one and two worker processes (`reuseport`: a socket per worker), as a proxy
    # whose workers share nothing: what a second core is worth to it on this machine, where
    # the second core is also the load generator's and the backend's.
    configs = [(1, one, "shared"), (2, one, "shared"), (1, both, "shared"), (2, both, "shared"),
               (1, one, "per_core"), (2, one, "per_core"), (2, both, "per_core"),
               (1, one, "nginx"), (2, both, "nginx")]
    configs = [c for c in configs if c[2] in args.layouts]
    out = []
    for rnd in range(args.repeats):
        for workers, cores, rt_layout in configs:
            procs = px.Procs(run_dir)
            try:
                # The backend and the load generator on the second core: when the gateway has
                # both cores, they compete with it there.
                started, backend = start_layout(procs, tools, rt_layout, workers, cores, layout, run_dir, "scaling")
                saturate(tools, started, args, body, layout.load_cpu, args.warmup_s)
                pids = px.descendants(started.measured.popen.pid)
                sample_pids = px.descendants(backend.popen.pid)
                cpu0, scpu0, cs0 = px.cpu_seconds(pids), px.cpu_seconds(sample_pids), ctx_switches(pids)
                sat = saturate(tools, started, args, body, layout.load_cpu, args.sat_s)
                cpu = px.cpu_seconds(pids) - cpu0
                n = max(sat["requests"], 1)
                row = {
                    "round": rnd + 1, "workers": workers, "cores": cores, "layout": rt_layout,
                    "rps": sat["rps"], "errors": sat["errors"],
                    "cpu_us_per_req": cpu * 1e6 / n, "gateway_cores": cpu / sat["elapsed_s"],
                    "sample_cores": (px.cpu_seconds(sample_pids) - scpu0) / sat["elapsed_s"],
                    "load_cores": sat["load_cpu_cores"], "ctx_per_req": (ctx_switches(pids) - cs0) / n,
                }
                if not args.smoke:
                    row["futex"] = futex_per_request(tools, started, args, body, layout.load_cpu, min(args.sat_s, 3.0))
                log(
                    f"scaling round {rnd + 1}: {workers} worker(s) on CPU {cores}, {rt_layout}: {row['rps']:,.0f} req/s, "
                    f"{row['cpu_us_per_req']:.1f} µs/req, gateway {row['gateway_cores']:.2f} cores, "
                    f"sample {row['sample_cores']:.2f}, oha {row['load_cores']:.2f}"
                )
                out.append(row)
            finally:
                procs.stop_all()
    return out


def scaling_table(rows: list[dict]) -> list[str]:
    lines = [
        "| layout (Switchyard's, or nginx) | workers | cores | req/s | gateway CPU µs/req | gateway cores | sample cores | oha cores | context switches/req | futex calls/req (waits failed) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def key(r: dict) -> tuple:
        # Rows of runs before the per-core layout have no layout: the shared one.
        return (r.get("layout", "shared"), r["workers"], r["cores"])

    order = {"shared": 0, "per_core": 1, "nginx": 2}
    keys = sorted({key(r) for r in rows}, key=lambda k: (order.get(k[0], 3), len(k[2]), k[1]))
    for rt_layout, workers, cores in keys:
        rs = [r for r in rows if key(r) == (rt_layout, workers, cores)]
        fx = [r["futex"] for r in rs if r.get("futex")]
        futex = "—" if not fx else (
            f"{statistics.median(f['futex_per_req'] for f in fx):.2f} ({statistics.median(f['futex_errors'] for f in fx):,.0f})"
        )
        lines.append(
            f"| {rt_layout} | {workers} | {cores} | {spread([r['rps'] for r in rs]).replace('.000', '')} | "
            f"{spread([r['cpu_us_per_req'] for r in rs])} | {statistics.median(r['gateway_cores'] for r in rs):.2f} | "
            f"{statistics.median(r['sample_cores'] for r in rs):.2f} | {statistics.median(r['load_cores'] for r in rs):.2f} | "
            f"{statistics.median(r['ctx_per_req'] for r in rs):.2f} | {futex} |"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Parallel: one process, its threads moved between one core and two


def thread_ids(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                out.append(int(task.name))
            except ValueError:
                pass
    return out


def move_threads(pids: list[int], cpus: set[int]) -> int:
    """Every thread of `pids` allowed on `cpus` only (what `taskset -a -p` does); how many were
    moved. A thread that ends meanwhile is skipped; one left elsewhere fails the run, since
    the comparison would then be of something else."""
    moved = 0
    try:
        for tid in thread_ids(pids):
            try:
                os.sched_setaffinity(tid, cpus)
                moved += 1
            except ProcessLookupError:
                continue
        for tid in thread_ids(pids):
            try:
                if os.sched_getaffinity(tid) != cpus:
                    raise px.Failed(f"thread {tid} kept another affinity than {sorted(cpus)}")
            except ProcessLookupError:
                continue
    except OSError as e:  # EINVAL (no such core) or EPERM: the phase cannot be measured
        raise px.Failed(f"cannot move the threads to CPU {sorted(cpus)}: {e}") from e
    return moved


def parallel_phase(
    args, tools: px.Tools, layout: px.Layout, started: px.Started, body: Path, rt_layout: str, pair: int,
    cores: set[int], rate: float,
) -> dict:
    """One phase of a pair: every thread moved to `cores`, a warm-up, then the CPU per request
    saturated and at `rate`."""
    pids = px.descendants(started.measured.popen.pid)
    moved = move_threads(pids, cores)
    saturate(tools, started, args, body, layout.load_cpu, min(args.warmup_s, 1.0))
    cpu0 = px.cpu_seconds(pids)
    sat = saturate(tools, started, args, body, layout.load_cpu, args.sat_s)
    cpu1 = px.cpu_seconds(pids)
    fixed = open_loop(tools, started.url, rate, args, layout.load_cpu, started.headers, args.sat_s)
    cpu2 = px.cpu_seconds(pids)
    row = {
        "layout": rt_layout, "pair": pair, "cores": ",".join(map(str, sorted(cores))), "threads_moved": moved,
        "rate": rate, "sat_rps": sat["rps"], "sat_errors": sat["errors"],
        "sat_cpu_us_per_req": (cpu1 - cpu0) * 1e6 / max(sat["requests"], 1),
        "fixed_requests": fixed["requests"], "fixed_errors": fixed["errors"], "fixed_unanswered": fixed["unanswered"],
        "fixed_cpu_us_per_req": (cpu2 - cpu1) * 1e6 / max(fixed["requests"], 1),
        "fixed_p99_ms": (fixed.get("latency_ms") or {}).get("p99"),
    }
    log(
        f"  pair {pair}, CPU {row['cores']} ({moved} threads): saturated {sat['rps']:,.0f} req/s "
        f"{row['sat_cpu_us_per_req']:.1f} µs/req; at {rate:,.0f} req/s {row['fixed_cpu_us_per_req']:.1f} µs/req"
    )
    return row


def parallel(args, tools: px.Tools, layout: px.Layout, run_dir: Path) -> list[dict]:
    """What running two threads at once costs, in one process: its threads on one core (they
    take turns), then on two (they run at the same time), back and forth `--pairs` times, the
    order alternating (one-two, two-one, ...). The same process, binary and memory layout in
    both phases (each phase opens its load's connections anew), so a lock the threads fight
    over, or a shared counter whose cache line moves between the cores on every request,
    costs CPU per request in the two-core phase only. On a 2-core machine the second core is
    also the load generator's and the backend's, which changes the two-core phase for any
    process; nginx, whose workers share nothing, measures that alone. With a third core, the
    second core of the phase is that one instead. Each phase measures the CPU per request
    saturated (oha, closed loop) and at a fixed rate (half the one-core saturation measured
    at the start, `bench-open-loop`), so that a change in how many requests each wake-up
    serves, which saturation brings with it, shows apart."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        log("parallel needs two cores; skipped")
        return []
    # cpus[1] is the load generator's and the backend's (layout.load_cpu).
    one, both = {cpus[0]}, {cpus[0], cpus[2] if len(cpus) > 2 else cpus[1]}
    body = run_dir / f"body-{args.size}.json"
    out = []
    for rt_layout in args.layouts:
        procs = px.Procs(run_dir)
        try:
            started, _ = start_layout(procs, tools, rt_layout, 2, str(cpus[0]), layout, run_dir, "parallel")
            saturate(tools, started, args, body, layout.load_cpu, args.warmup_s)
            rate = saturate(tools, started, args, body, layout.load_cpu, args.sat_s)["rps"] * 0.5
            log(f"parallel {rt_layout}: two threads; the fixed rate is {rate:,.0f} req/s")
            for pair in range(args.pairs):
                # One-two, then two-one: a drift over the run falls on both phases alike.
                for cores in (one, both) if pair % 2 == 0 else (both, one):
                    out.append(parallel_phase(args, tools, layout, started, body, rt_layout, pair + 1, cores, rate))
        finally:
            procs.stop_all()
    return out


def parallel_table(rows: list[dict]) -> list[str]:
    lines = [
        "| layout (Switchyard's, or nginx) | pairs | saturated µs/req, 1 core | 2 cores | 2 ÷ 1 per pair | "
        "fixed rate req/s | µs/req, 1 core | 2 cores | 2 ÷ 1 per pair | errors + unanswered |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rt_layout in dict.fromkeys(r["layout"] for r in rows):
        rs = [r for r in rows if r["layout"] == rt_layout]
        pairs = sorted({r["pair"] for r in rs})

        def phase(pair: int, cores_two: bool) -> dict | None:
            return next((r for r in rs if r["pair"] == pair and ("," in r["cores"]) == cores_two), None)

        cells = []
        for key in ("sat_cpu_us_per_req", "fixed_cpu_us_per_req"):
            ones = [r[key] for r in rs if "," not in r["cores"]]
            twos = [r[key] for r in rs if "," in r["cores"]]
            ratios = [b[key] / a[key] for p in pairs if (a := phase(p, False)) and (b := phase(p, True)) and a[key]]
            cells.append((spread(ones), spread(twos), spread(ratios) if ratios else "—"))
        rate = statistics.median(r["rate"] for r in rs)
        bad = sum(r["sat_errors"] + r["fixed_errors"] + r["fixed_unanswered"] for r in rs)
        lines.append(
            f"| {rt_layout} | {len(pairs)} | {cells[0][0]} | {cells[0][1]} | {cells[0][2]} | {rate:,.0f} | "
            f"{cells[1][0]} | {cells[1][1]} | {cells[1][2]} | {bad:,} |"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Memory


def rss_mib(pids: list[int]) -> float:
    return px.status_kib(pids, "VmRSS") / 1024


def settled_rss(pids: list[int], seconds: float = 10.0) -> float:
    """RSS once three readings 200 ms apart agree within 1 % (at most `seconds`)."""
    deadline = time.monotonic() + seconds
    last = [rss_mib(pids)]
    while time.monotonic() < deadline:
        time.sleep(0.2)
        last = (last + [rss_mib(pids)])[-3:]
        if len(last) == 3 and max(last) - min(last) <= 0.01 * max(last):
            break
    return last[-1]


def fds(pids: list[int]) -> int:
    """Open descriptors of `pids`: the held connections are still open when this counts them."""
    total = 0
    for pid in pids:
        try:
            total += sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            pass
    return total


def hold(tools: px.Tools, mode: str, url: str, count: int, cpu: str | None, extra: list[str], hold_s: float):
    argv = [str(tools.bin_dir / "bench-connections"), mode, url, "--count", str(count), "--hold-s", str(hold_s), *extra]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()  # bounded by bench-connections' own timeouts
    m = re.match(r"(held|sent) (\d+) errors=(\d+)", line)
    if not m:
        p.kill()
        raise px.Failed(f"bench-connections {mode}: {line!r} {p.stderr.read()[-800:] if p.stderr else ''}")
    return p, int(m.group(2)), int(m.group(3))


def release(p: subprocess.Popen) -> int:
    """Closes the holder's stdin (it lets go of its connections) and returns how many `200`s
    it read."""
    out, _ = p.communicate(input="", timeout=30)
    m = re.search(r"answered (\d+)", out)
    return int(m.group(1)) if m else 0


def memory_one(args, tools, layout, run_dir: Path, name: str) -> dict:
    procs = px.Procs(run_dir)
    idle_n, flight_n = args.idle_connections, args.in_flight
    try:
        if name.startswith("switchyard"):
            binary = tools.bin_dir / "switchyard" if name == "switchyard" else args.system_alloc_bin
            started = start_switchyard(
                procs, tools, name, binary, 1, layout.proxy_cpu, layout.load_cpu,
                # The head timer (10 s by default) also closes a kept-alive connection idle
                # that long: raised to the idle timeout (60 s), so that the connections stay.
                [f"public.connections_max={IDLE_CAP}", "public.header_read_timeout_ms=60000"],
            )
            base = started.url.rsplit("/sample/", 1)[0]
            sleep_url = f"{base}/sample/test/sleep/{args.hold_ms}"
        else:
            started = px.start_target(name, procs, tools, layout, run_dir, px.json_body(100))
            sleep_url = started.url.replace("/echo", f"/sleep/{args.hold_ms}")
        pids = px.descendants(started.measured.popen.pid)
        body = run_dir / "body-100.json"
        saturate(tools, started, args, body, layout.load_cpu, args.warmup_s)
        row: dict = {"target": name, "idle_rss_mib": settled_rss(pids, 3.0)}
        p, held, errs = hold(tools, "idle", started.url, idle_n, layout.load_cpu, ["--body-bytes", "100"], 120)
        row.update(idle_connections=held, idle_errors=errs, idle_conn_rss_mib=settled_rss(pids), idle_fds=fds(pids))
        release(p)
        log(f"memory {name}: {held} idle connections ({errs} failed, {row['idle_fds']} descriptors open): {row['idle_conn_rss_mib']:.1f} MiB")
        time.sleep(1)  # the proxy notices the closed connections
        p, sent, errs = hold(tools, "in-flight", sleep_url, flight_n, layout.load_cpu, [], args.hold_ms / 1000 + 20)
        time.sleep(min(2.0, args.hold_ms / 4000))  # the proxy reads what was written
        row.update(in_flight=sent, in_flight_errors=errs, in_flight_rss_mib=settled_rss(pids, min(3.0, args.hold_ms / 2000)), in_flight_fds=fds(pids))
        # Every held request is answered once the backend lets go of it (8 s after it came):
        # the count of 200s read back shows that they were all in flight, not refused.
        time.sleep(args.hold_ms / 1000)
        row["in_flight_answered"] = release(p)
        row["peak_rss_mib"] = px.status_kib(pids, "VmHWM") / 1024
        log(
            f"memory {name}: {sent} in flight ({errs} failed, {row['in_flight_answered']} answered 200): "
            f"{row['in_flight_rss_mib']:.1f} MiB; idle {row['idle_rss_mib']:.1f} MiB"
        )
        if started.measured.popen.poll() is not None:
            raise px.Failed(f"{name} exited during the memory run; see {started.measured.log_path}")
        return row
    finally:
        procs.stop_all()


def memory(args, tools, layout, run_dir: Path) -> list[dict]:
    names = ["switchyard", "nginx"]
    if args.system_alloc_bin is not None:
        names.insert(1, "switchyard-system")
    return [memory_one(args, tools, layout, run_dir, n) for _ in range(args.repeats) for n in names]


def memory_table(rows: list[dict]) -> list[str]:
    lines = [
        "| target | idle RSS MiB | with idle keep-alive connections MiB | per connection KiB | with requests in flight MiB | per request KiB | answered | peak MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in dict.fromkeys(r["target"] for r in rows):
        rs = [r for r in rows if r["target"] == name]
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        idle_n, flight_n = med("idle_connections"), med("in_flight")
        lines.append(
            f"| {name} | {med('idle_rss_mib'):.1f} | {med('idle_conn_rss_mib'):.1f} ({idle_n:,.0f} held, "
            f"{med('idle_fds'):,.0f} descriptors open) | "
            f"{(med('idle_conn_rss_mib') - med('idle_rss_mib')) * 1024 / max(idle_n, 1):.1f} | "
            f"{med('in_flight_rss_mib'):.1f} ({flight_n:,.0f}) | "
            f"{(med('in_flight_rss_mib') - med('idle_rss_mib')) * 1024 / max(flight_n, 1):.1f} | "
            f"{med('in_flight_answered'):,.0f} | {med('peak_rss_mib'):.1f} |"
        )
    return lines


def allocators(args, tools, layout, run_dir: Path) -> list[dict]:
    """Both allocators' saturating throughput and CPU per request, one worker on one core,
    alternating the builds so that drift of the machine falls on both."""
    body = run_dir / f"body-{args.size}.json"
    out = []
    builds = [("mimalloc", tools.bin_dir / "switchyard"), ("system", args.system_alloc_bin)]
    for rnd in range(args.repeats * 2):
        for alloc, binary in builds if rnd % 2 == 0 else builds[::-1]:
            procs = px.Procs(run_dir)
            try:
                started = start_switchyard(procs, tools, f"switchyard-{alloc}", binary, 1, layout.proxy_cpu, layout.load_cpu, [])
                saturate(tools, started, args, body, layout.load_cpu, args.warmup_s)
                pids = px.descendants(started.measured.popen.pid)
                px.reset_peak_rss(pids)
                cpu0 = px.cpu_seconds(pids)
                sat = saturate(tools, started, args, body, layout.load_cpu, args.sat_s)
                n = max(sat["requests"], 1)
                out.append({
                    "allocator": alloc, "round": rnd + 1, "rps": sat["rps"],
                    "cpu_us_per_req": (px.cpu_seconds(pids) - cpu0) * 1e6 / n,
                    "peak_rss_mib": px.status_kib(pids, "VmHWM") / 1024,
                })
                log(f"allocator {alloc}: {sat['rps']:,.0f} req/s, {out[-1]['cpu_us_per_req']:.1f} µs/req")
            finally:
                procs.stop_all()
    return out


def allocator_table(rows: list[dict]) -> list[str]:
    lines = ["| allocator | req/s | CPU µs/req | peak RSS MiB under load |", "| --- | ---: | ---: | ---: |"]
    for alloc in ("mimalloc", "system"):
        rs = [r for r in rows if r["allocator"] == alloc]
        if rs:
            lines.append(
                f"| {alloc} | {spread([r['rps'] for r in rs])} | {spread([r['cpu_us_per_req'] for r in rs])} | "
                f"{spread([r['peak_rss_mib'] for r in rs])} |"
            )
    return lines


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--nginx", required=True)
    ap.add_argument("--parts", default="tails,scaling,parallel,memory")
    ap.add_argument("--targets", default=",".join(TAIL_TARGETS), help="tails: proxies.py targets")
    ap.add_argument("--layouts", default="shared,per_core,nginx",
                    help="scaling and parallel: Switchyard's runtime layouts (shared, per_core) and nginx, to measure")
    ap.add_argument("--loads", default=",".join(map(str, LOADS)), help="tails: percent of each saturation")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=8, help="parallel: one-core and two-core phases per layout")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--size", type=int, default=100, help="body bytes")
    ap.add_argument("--rate-s", type=float, default=10.0, help="seconds of each open-loop run")
    ap.add_argument("--sat-s", type=float, default=5.0, help="seconds of each saturating run")
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--idle-connections", type=int, default=10_000)
    ap.add_argument("--in-flight", type=int, default=1_000)
    ap.add_argument("--hold-ms", type=int, default=8_000, help="memory: how long the backend holds each request in flight")
    ap.add_argument("--system-alloc-bin", type=Path, help="switchyard built without the mimalloc feature")
    ap.add_argument("--smoke", action="store_true", help="switchyard and nginx, one round, briefly")
    ap.add_argument("--out", type=Path, default=px.ROOT / "testbeds/.run/bench")
    args = ap.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    args.targets = [t for t in args.targets.split(",") if t]
    args.loads = [int(x) for x in args.loads.split(",") if x]
    if args.smoke:
        args.targets = [t for t in args.targets if t in ("switchyard", "nginx")]
        args.repeats, args.rate_s, args.sat_s, args.warmup_s = 1, 0.5, 0.5, 0.2
        args.idle_connections, args.in_flight, args.hold_ms = 200, 50, 2_000
        args.parts = [p for p in args.parts if p != "scaling"]
        args.pairs, args.layouts = 1, "per_core"
    for name, v, lo, hi in (
        ("--repeats", args.repeats, 1, 20), ("--pairs", args.pairs, 1, 50), ("--connections", args.connections, 1, 1024),
        ("--rate-s", args.rate_s, 0.5, 600), ("--sat-s", args.sat_s, 0.5, 600), ("--warmup-s", args.warmup_s, 0.1, 60),
        ("--idle-connections", args.idle_connections, 1, IDLE_CAP - 500), ("--in-flight", args.in_flight, 1, 1000),
        ("--size", args.size, 14, 1024 * 1024 - 1024), ("--hold-ms", args.hold_ms, 1_000, 60_000),
    ):
        if not lo <= v <= hi:
            ap.error(f"{name} must lie in [{lo}, {hi}]")
    if any(not 1 <= x <= 100 for x in args.loads):
        ap.error("--loads are percentages in [1, 100]")
    args.layouts = [x for x in args.layouts.split(",") if x]
    if not args.layouts or any(x not in ("shared", "per_core", "nginx") for x in args.layouts):
        ap.error("--layouts: any of shared, per_core and nginx")
    unknown = [p for p in args.parts if p not in ("tails", "scaling", "parallel", "memory")]
    if unknown:
        ap.error(f"unknown parts {unknown}")
    bad_targets = [t for t in args.targets if t not in px.TARGETS or t in px.KAFKA_TARGETS or t == "direct"]
    if bad_targets:
        ap.error(f"--targets: {bad_targets} cannot be loaded over HTTP here")
    # 10,000 connections held by one process, and as many by the proxy: raise the descriptor
    # limit (inherited by every process started) to the hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle_connections + 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
    if "memory" in args.parts and resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        ap.error(f"the descriptor limit ({hard}) is below {want}: raise it (ulimit -Hn) or lower --idle-connections")

    cpus = sorted(os.sched_getaffinity(0))
    layout = px.Layout(str(cpus[0]), str(cpus[1])) if len(cpus) >= 2 else px.Layout(None, None)
    run_dir = args.out / ("tails-" + time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    for size in {args.size, 100}:
        (run_dir / f"body-{size}.json").write_bytes(px.json_body(size))
    tools = px.Tools(args.bin_dir, args.oha, args.envoy, args.nginx)
    # nginx for 10,000 idle connections: more connections per worker, and the descriptors.
    plain_conf = px.nginx_conf

    def roomy_nginx_conf(*a, **kw):
        path = plain_conf(*a, **kw)
        text = path.read_text().replace("worker_connections 4096;", f"worker_connections {IDLE_CAP * 2};")
        path.write_text(text.replace("worker_processes 1;", f"worker_processes 1;\nworker_rlimit_nofile {IDLE_CAP * 2 + 100};"))
        return path

    px.nginx_conf = roomy_nginx_conf
    load1 = os.getloadavg()[0]
    started_at = time.monotonic()
    results: dict = {}
    failed = None
    try:
        if "tails" in args.parts:
            results["tails"] = tails(args, tools, layout, run_dir)
        if "scaling" in args.parts:
            results["scaling"] = scaling(args, tools, layout, run_dir)
        if "parallel" in args.parts:
            results["parallel"] = parallel(args, tools, layout, run_dir)
        if "memory" in args.parts:
            results["memory"] = memory(args, tools, layout, run_dir)
            if args.system_alloc_bin is not None:
                results["allocators"] = allocators(args, tools, layout, run_dir)
    except px.Failed as e:
        # What was measured before the failure is still written below.
        failed = str(e)
        log(f"FAILED: {e}")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_1m_before": load1,
        "load_average_1m_after": os.getloadavg()[0],
        "pinning": layout.describe(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": px.versions(tools),
        "elapsed_s": time.monotonic() - started_at,
    }
    md = [
        "# Tails, scaling and memory (issue 18)",
        "",
        f"{meta['date']}; 1-minute load average {load1:.1f} before, {meta['load_average_1m_after']:.1f} after; "
        f"{args.repeats} round(s); {args.connections} connections; {args.size} B bodies; pinning: {meta['pinning']}.",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()),
    ]
    if "tails" in results:
        md += ["", f"## Tail latency, open loop, {args.rate_s:g} s per load (median (min–max) over rounds)", "",
               *tails_table(results["tails"], args), "", "![tails](tails-latency.svg)"]
    if results.get("scaling"):
        md += ["", "## Scaling: Switchyard's workers and cores, saturated (median (min–max))", "",
               *scaling_table(results["scaling"])]
    if results.get("parallel"):
        md += ["", "## Parallel: two threads of one process on one core, then on two (median (min–max) over pairs)", "",
               *parallel_table(results["parallel"])]
    if "memory" in results:
        md += ["", "## Memory (median over rounds)", "", *memory_table(results["memory"])]
    if results.get("allocators"):
        md += ["", "## Allocators, one worker on one core, saturated", "", *allocator_table(results["allocators"])]
    (run_dir / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (run_dir / "results.md").write_text("\n".join(md) + "\n")
    if "tails" in results:
        # After results.json: a chart that cannot be drawn loses no measurement.
        try:
            (run_dir / "tails-latency.svg").write_text(charts.tails_chart(
                results["tails"], args.loads,
                f"{meta['date']}; median of {args.repeats} round(s); {args.connections} connections; {args.size} B bodies",
            ), encoding="utf-8")
        except (charts.ChartError, ArithmeticError, ValueError, OSError) as e:
            log(f"the tail chart was not drawn: {e}")
    print("\n".join(md))
    log(f"results in {run_dir} ({meta['elapsed_s']:.0f} s)")
    if failed is not None:
        return 1
    if args.smoke:
        bad = []
        for t, entries in results.get("tails", {}).items():
            for e in entries:
                for load, r in e["loads"].items():
                    if r["requests"] == 0 or r["errors"] or r["unanswered"]:
                        bad.append(f"tails {t} {load} %")
        for r in results.get("parallel", []):
            if r["sat_errors"] or r["fixed_errors"] or r["fixed_unanswered"] or not r["fixed_requests"]:
                bad.append(f"parallel {r['layout']} on CPU {r['cores']}")
        for r in results.get("memory", []):
            if r["idle_errors"] or r["in_flight_errors"] or r["in_flight_answered"] != r["in_flight"]:
                bad.append(f"memory {r['target']}")
        if bad:
            log(f"FAILED: errors or no answers in: {', '.join(bad)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The hostile-client load test: attackers against one gateway while a legitimate client runs
beside them at a fixed rate, on loopback, bounded in time.

    testbeds/attack/run.sh [--smoke] [--rounds 4] [--baseline-s 8] [--attack-s 15] ...

One gateway (release build, its log in a file, limits scaled down so that a short run reaches
them: see SETTINGS), one instance of the Rust sample service, and a control target
(control.py). The legitimate client (legit.py, its own process) opens its kept-alive pool and
sends GET /sample/hello at a fixed rate from the first second to the last. The run is cut into
windows: a warm-up, then rounds of a baseline window (no attacker) and an attack window
(attackers.py, its own process, every attacker at once), each followed by a short settle that
counts in neither.

Pass criteria (issue 14), all baseline windows against all attack windows: the legitimate
client's success rate with attackers is at least 99.9 % and its p99 latency at most twice the
baseline's; the gateway's peak RSS (VmHWM) stays under the bound derived from the configured
limits (rss_bound); the gateway is still running; and every attacker reached the limit it aims
at (otherwise the run proves nothing). Prints a table, writes results.json, results.md, the
logs and every request's latency to testbeds/.run/attack/<time>/, and exits 1 if a criterion
fails (2 if the run itself could not be made). Every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "testbeds" / "tests"))

import harness  # noqa: E402  (the end-to-end tests' process harness)

HERE = Path(__file__).resolve().parent
KIB, MIB = 1024, 1024 * 1024

# The gateway under test: the public listener's limits scaled down from the defaults
# (connections 10 000, header 10 s, body 30 s, idle 60 s, 100 streams, 1 MiB bodies,
# 1 024 WebSockets) so that attackers reach them within seconds and with few sockets.
SETTINGS = {
    "public.connections_max": 400,
    "public.header_read_timeout_ms": 3_000,
    "public.body_read_timeout_ms": 3_000,
    "public.idle_timeout_ms": 5_000,
    "public.http2_max_concurrent_streams": 16,
    "public.http2_stream_window_bytes": 64 * KIB,
    "public.http2_connection_window_bytes": 256 * KIB,
    "public.http2_send_buf_bytes": 64 * KIB,
    "public.body_bytes_max": 64 * KIB,
    "public.header_bytes_max": 64 * KIB,
    "graphql.body_bytes_max": 64 * KIB,
    "graphql.websockets_max": 200,
}

# Fixed costs the configuration does not state, taken from the libraries the gateway is built
# on (see rss_bound).
H1_HEAD_SLACK = 16 * KIB  # the HTTP/1 read buffer is header_bytes_max + this (serve.rs)
WS_BUFFERS = 128 * KIB + 128 * KIB  # tungstenite's read and write buffers, per socket
CONNECTION_ALLOWANCE = 32 * KIB  # task, protocol state and socket bookkeeping, per connection
SUBSCRIPTION_ALLOWANCE = 16 * KIB  # one subscription's stream and its pending messages
RSS_SAMPLE_S = 0.2
# Scheduling priorities: the attackers yield the CPU to everything else (on a real network they
# would not share the gateway's cores); the gateway, the sample service and the legitimate
# client go before other work on a shared machine (builds, say), when allowed (root).
ATTACKERS_NICE = 10
MEASURED_NICE = -5


@dataclass
class Profile:
    """Rounds of a baseline window then an attack window, so that the load other processes
    put on the machine falls on both alike; `settle_s` after each attack (the attackers gone,
    the gateway closing what they left) counts in neither."""

    rate: float
    rounds: int
    baseline_s: float
    attack_s: float
    warmup_s: float = 2.0
    settle_s: float = 1.0


PROFILES = {
    "full": Profile(rate=100, rounds=4, baseline_s=8, attack_s=15),
    "smoke": Profile(rate=100, rounds=2, baseline_s=4, attack_s=9),
}


LOG_FILE: Path | None = None


def log(msg: str) -> None:
    print(f"attack: {msg}", file=sys.stderr, flush=True)
    if LOG_FILE is not None:
        with open(LOG_FILE, "a") as f:
            f.write(f"{msg}\n")


# ---------------------------------------------------------------------------------------------
# The memory bound


def rss_bound(settings: dict, idle_rss: int, subscriptions: int) -> tuple[int, list[str]]:
    """The most resident memory the configured limits let these attackers make the gateway
    hold, and how it is reached. Every connection (`connections_max` of them at most, on
    either protocol) may pin what the costlier protocol allows; every WebSocket (not counted
    in `connections_max` once upgraded; `websockets_max` of them) its buffers and one message;
    each subscription an allowance (the gateway has no per-socket bound yet, so the
    subscriptions the attackers open are counted)."""
    conns = settings["public.connections_max"]
    body = settings["public.body_bytes_max"]
    streams = settings["public.http2_max_concurrent_streams"]
    h1_buf = settings["public.header_bytes_max"] + H1_HEAD_SLACK
    h1 = h1_buf + body + CONNECTION_ALLOWANCE
    h2 = streams * body + settings["public.http2_connection_window_bytes"] + CONNECTION_ALLOWANCE
    per_conn = max(h1, h2)
    sockets = settings["graphql.websockets_max"]
    per_ws = WS_BUFFERS + settings["graphql.body_bytes_max"] + CONNECTION_ALLOWANCE
    subs = subscriptions * SUBSCRIPTION_ALLOWANCE
    bound = idle_rss + conns * per_conn + sockets * per_ws + subs
    lines = [
        f"idle RSS measured before the attack: {mib(idle_rss)}",
        f"HTTP/1.1 connection: read buffer cap {kib(h1_buf)} + body_bytes_max "
        f"{kib(body)} + {kib(CONNECTION_ALLOWANCE)} = {kib(h1)}",
        f"HTTP/2 connection: http2_max_concurrent_streams {streams} x body_bytes_max {kib(body)}"
        f" + connection window {kib(settings['public.http2_connection_window_bytes'])}"
        f" + {kib(CONNECTION_ALLOWANCE)} = {kib(h2)}",
        f"connections: connections_max {conns} x {kib(per_conn)} = {mib(conns * per_conn)}",
        f"WebSockets: websockets_max {sockets} x (buffers {kib(WS_BUFFERS)} + message "
        f"{kib(settings['graphql.body_bytes_max'])} + {kib(CONNECTION_ALLOWANCE)}) "
        f"= {mib(sockets * per_ws)}",
        f"subscriptions: {subscriptions} open at most x {kib(SUBSCRIPTION_ALLOWANCE)} = {mib(subs)}",
        f"bound: {mib(bound)}",
    ]
    return bound, lines


def kib(n: float) -> str:
    return f"{n / KIB:,.0f} KiB"


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


# ---------------------------------------------------------------------------------------------
# Watching the gateway


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in bytes, threads, and open file descriptors of a process."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * KIB
            elif key == "Threads":
                out[key] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def prioritise(pid: int) -> None:
    """Every thread of `pid` to MEASURED_NICE, when allowed."""
    if os.geteuid() != 0:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), MEASURED_NICE)
        except OSError:
            pass  # a thread that has just ended


def cpu_s(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Samples the gateway's /proc status every RSS_SAMPLE_S, keeping the peaks per phase."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pid = pid
        self.phase = "warmup"
        self.peaks: dict[str, dict[str, int]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(RSS_SAMPLE_S):
            try:
                sample = proc_status(self.pid)
            except OSError:
                return
            peak = self.peaks.setdefault(self.phase, {})
            for key, value in sample.items():
                peak[key] = max(peak.get(key, 0), value)


class GatewayProcess:
    """The gateway under test. Unlike the end-to-end harness, which reads a child's log
    through a pipe, it writes its log (stderr) straight to a file: the gateway logs each
    refused request on the worker thread that refused it, and a burst of refusals (one
    timeout wave is hundreds of lines) behind a reader that lags on a busy machine blocked
    those threads for up to ~100 ms, which measured the harness, not the gateway."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=harness.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(log_path, "wb"),
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout_s: float) -> re.Match[str]:
        """The line the gateway prints on stdout once it listens."""
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.append(self.popen.stdout.readline()), daemon=True
        )
        reader.start()
        reader.join(timeout_s)
        match = harness.GATEWAY_READY.search(lines[0]) if lines else None
        if match is None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the gateway did not report its addresses:\n{tail}")
        return match

    def stop(self) -> None:
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(harness.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_gateway(args: argparse.Namespace, out_dir: Path) -> tuple[GatewayProcess, harness.Gateway]:
    argv = [
        str(args.bin_dir / "switchyard"),
        "serve",
        "--public-listen", "127.0.0.1:0",
        "--control-listen", "127.0.0.1:0",
        "--node-id", "attack-gw",
        "--set", "shutdown.drain_timeout_ms=1000",
        "--set", f"seed={args.seed}",
        "--set", f"upstream.allow_addresses={harness.LOOPBACK_ALLOWED}",
        # The attackers aim at the listeners' bounds, not at credentials.
        "--set", "control.auth=none",
        "--set", "control.reads=open",
    ]
    for key, value in args.settings.items():
        argv += ["--set", f"{key}={value}"]
    process = GatewayProcess(argv, out_dir / "gateway.log")
    match = process.wait_ready(harness.STARTUP_TIMEOUT_S)
    gateway = harness.Gateway(
        proc=process,
        public=f"http://{match['public']}",
        control=f"http://{match['control']}",
        control_addr=match["control"],
    )
    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{gateway.public}/readyz", timeout=2) as resp:
                return resp.status == 200
        except OSError:  # refused, or 503 (HTTPError) until caught up with the bus
            return False

    harness.wait_until(ready, "the gateway to answer /readyz 200", harness.STARTUP_TIMEOUT_S)
    return process, gateway


def refusals(gateway: harness.Gateway) -> dict[str, float]:
    """switchyard_listener_refusals_total of the public listener, by reason."""
    with urllib.request.urlopen(f"{gateway.control}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    pattern = r'^switchyard_listener_refusals_total\{([^}]*)\} (\S+)$'
    for labels, value in re.findall(pattern, text, re.M):
        if 'listener="public"' in labels:
            out[re.search(r'reason="([^"]*)"', labels).group(1)] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# The run


class Child:
    """A Python helper process (legit.py or attackers.py): JSON on stdout, log on stderr."""

    def __init__(
        self, name: str, argv: list[str], log_dir: Path, stdin=None, nice: int = 0
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.popen = subprocess.Popen(
            ["nice", "-n", str(nice), sys.executable, *argv],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "wb"),
            text=True,
        )

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        harness.wait_until(
            lambda: text in self.log_path.read_text(errors="replace") or self.popen.poll() is not None,
            f"{self.name} to log {text!r}",
            timeout_s,
        )
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited early:\n{self.log_path.read_text()[-2000:]}")

    def read_port(self, timeout_s: float) -> int:
        """The port of a child that prints `... listening on HOST:PORT` first on stdout."""
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.append(self.popen.stdout.readline()), daemon=True
        )
        reader.start()
        reader.join(timeout_s)
        match = re.search(r"listening on \S+:(\d+)", lines[0]) if lines else None
        if match is None:
            raise RuntimeError(f"{self.name} did not report its port")
        return int(match.group(1))

    def result(self, timeout_s: float) -> dict:
        try:
            out, _ = self.popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise RuntimeError(f"{self.name} did not finish within {timeout_s} s") from None
        if self.popen.returncode != 0:
            raise RuntimeError(
                f"{self.name} failed ({self.popen.returncode}):\n{self.log_path.read_text()[-2000:]}"
            )
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def attacker_argv(
    args: argparse.Namespace, port: int, duration_s: float, round_no: int
) -> list[str]:
    argv = [
        str(HERE / "attackers.py"),
        "--port", str(port),
        "--duration-s", str(duration_s),
        "--seed", str(args.seed * 1000 + round_no),
        "--wait-go",
        "--only", args.only,
        # Enough to fill the listener alone, whatever else runs.
        "--flood", str(args.settings["public.connections_max"] + 50),
    ]
    return argv + args.attacker_arg  # last, so that they win


def run(args: argparse.Namespace, profile: Profile, out_dir: Path) -> dict:
    os.environ["SAMPLE_SERVICE_BIN"] = str(args.bin_dir / "sample-service")
    launcher = harness.Launcher(out_dir)
    children: list[Child] = []
    gateway_process = None
    measured_nice = MEASURED_NICE if os.geteuid() == 0 else 0
    try:
        gateway_process, gateway = start_gateway(args, out_dir)
        harness.start_rust_service(launcher, gateway, "sample", "s1", lease_ms=60_000)
        gateway.wait_live("sample", "s1")
        gw_pid = gateway_process.pid
        for pid in [gw_pid] + [proc.pid for proc in launcher.procs]:
            prioritise(pid)
        port = int(gateway.public.rsplit(":", 1)[1])

        control = Child("control", [str(HERE / "control.py")], out_dir, nice=measured_nice)
        children.append(control)
        control_port = control.read_port(10)
        legit = Child(
            "legit",
            [
                str(HERE / "legit.py"),
                "--port", str(port),
                "--control-port", str(control_port),
                "--rate", str(profile.rate),
                "--seed", str(args.seed),
                "--samples", str(out_dir / "legit-latencies.csv"),
            ],
            out_dir,
            stdin=subprocess.PIPE,
            nice=measured_nice,
        )
        children.append(legit)
        legit.wait_for_log("pool open", 10)
        sampler = Sampler(gw_pid)
        sampler.start()
        cpu: dict[str, dict[str, float]] = {}

        def phase(name: str, seconds: float, attackers: Child | None = None, n: int = 0) -> None:
            label = f"{name} {n}" if n else name
            sampler.phase = label
            legit.popen.stdin.write(name + "\n")
            legit.popen.stdin.flush()
            log(f"phase {name}: {seconds:g} s from t={time.monotonic():.3f}")
            pids = {"gateway": gw_pid, "legit": legit.popen.pid}
            if attackers is not None:
                pids["attackers"] = attackers.popen.pid
            before = {k: cpu_s(pid) for k, pid in pids.items()}
            time.sleep(seconds)
            cpu[label] = {k: round((cpu_s(pid) - before[k]) / seconds, 3) for k, pid in pids.items()}

        phase("warmup", profile.warmup_s)
        refused_before = refusals(gateway)
        reports = []
        for round_no in range(profile.rounds):
            # Started before the baseline and waiting for the word, so that neither window
            # pays for its start-up. It yields the CPU to the gateway and the legitimate
            # client: on a real network the attackers would not share the gateway's cores.
            attackers = Child(
                f"attackers-{round_no + 1}",
                attacker_argv(args, port, profile.attack_s + 30, round_no),
                out_dir,
                stdin=subprocess.PIPE,
                nice=ATTACKERS_NICE,
            )
            children.append(attackers)
            attackers.wait_for_log("attackers: ready", 10)
            phase("baseline", profile.baseline_s, n=round_no + 1)
            if round_no == 0:
                idle_rss = proc_status(gw_pid)["VmRSS"]  # before any attack
            attackers.popen.stdin.write("go\n")
            attackers.popen.stdin.flush()
            phase("attack", profile.attack_s, attackers, n=round_no + 1)
            attackers.popen.send_signal(signal.SIGTERM)
            reports.append(attackers.result(15))
            phase("settle", profile.settle_s)
        refused_after = refusals(gateway)
        legit_report = legit.result(15)
        sampler.done.set()
        sampler.join(2)
        final = proc_status(gw_pid)
        return {
            "profile": vars(profile),
            "settings": args.settings,
            "seed": args.seed,
            "legit": legit_report,
            "attackers": merge_reports(reports),
            "refusals": {k: refused_after.get(k, 0) - refused_before.get(k, 0) for k in refused_after},
            "gateway": {
                "idle_rss": idle_rss,
                "hwm": final["VmHWM"],
                "peaks": sampler.peaks,
                "cpu_cores": cpu,
            },
            "gateway_alive": gateway.proc.running(),
        }
    finally:
        for child in children:
            child.stop()
        launcher.stop_all()
        if gateway_process is not None:
            gateway_process.stop()


def merge_reports(reports: list[dict]) -> dict:
    """The attackers' reports of every round as one: counts added, most sockets open the
    largest of any round, the times the gateway held sockets pooled."""
    merged: dict[str, dict] = {}
    for report in reports:
        for a in report["attackers"]:
            m = merged.setdefault(
                a["attacker"],
                {"attacker": a["attacker"], "sockets": a["sockets"], "open_max": 0,
                 "outcomes": {}, "extra": {}, "held_s": []},
            )
            m["open_max"] = max(m["open_max"], a["open_max"])
            answered = a.get("extra", {}).get("subscriptions_answered", 0)
            m["subscriptions_max"] = max(m.get("subscriptions_max", 0), answered)
            for key in ("outcomes", "extra"):
                for k, v in a.get(key, {}).items():
                    m[key][k] = m[key].get(k, 0) + v
            m["held_s"].extend(a["held_s"])
    for m in merged.values():
        held = sorted(m.pop("held_s"))
        m["held_s"] = {
            "count": len(held),
            "median": statistics.median(held) if held else None,
            "max": held[-1] if held else None,
        }
    return {
        "rounds": len(reports),
        "unfinished_tasks": sum(r["unfinished_tasks"] for r in reports),
        "attackers": list(merged.values()),
    }


# ---------------------------------------------------------------------------------------------
# Verdict and report


def attribute_stalls(samples: Path, phases: dict[str, dict]) -> dict:
    """For each window kind, the gateway requests slower than twice the baseline's p99, and
    how many of them had a control request (to control.py) due within 100 ms of theirs that
    was also slower than twice its own baseline p99: those slow moments were the machine's,
    the others the gateway's."""
    base = phases.get("baseline", {}).get("latency_ms", {}).get("p99")
    control_base = phases.get("baseline control", {}).get("latency_ms", {}).get("p99")
    if base is None or control_base is None:
        return {"threshold_ms": None}  # nothing served in a baseline window: nothing to compare
    limit, control_limit = 2 * base, 2 * control_base
    gateway: dict[str, list[float]] = {}
    control_slow: list[float] = []
    with open(samples) as f:
        for line in f:
            due, latency, name = line.rstrip("\n").split(",", 2)
            if name.endswith(" control"):
                if float(latency) > control_limit:
                    control_slow.append(float(due))
            elif name in ("baseline", "attack") and float(latency) > limit:
                gateway.setdefault(name, []).append(float(due))
    control_slow.sort()
    out = {"threshold_ms": limit, "control_threshold_ms": control_limit}
    for name in ("baseline", "attack"):
        dues = gateway.get(name, [])
        shared = sum(
            1
            for due in dues
            if bisect.bisect_left(control_slow, due + 0.1) > bisect.bisect_left(control_slow, due - 0.1)
        )
        out[name] = {"slow": len(dues), "shared_with_control": shared}
    return out


def verdict(result: dict, args: argparse.Namespace) -> tuple[list[tuple[str, str, bool]], list[str]]:
    phases = {p["phase"]: p for p in result["legit"]["phases"]}
    base, attack = phases["baseline"], phases["attack"]
    # Subscriptions live as long as their socket, so at most one round's at once.
    subs = sum(a.get("subscriptions_max", 0) for a in result["attackers"]["attackers"])
    bound, derivation = rss_bound(result["settings"], result["gateway"]["idle_rss"], subs)
    result["rss_bound"] = {"bytes": bound, "derivation": derivation}
    hwm = result["gateway"]["hwm"]
    base_p99, attack_p99 = base["latency_ms"]["p99"], attack["latency_ms"]["p99"]
    rate = attack["success_rate"] or 0.0
    checks = [
        (
            "legit success with attackers >= 99.9 %",
            f"{rate * 100:.2f} % ({attack['ok']}/{attack['sent']})",
            rate >= 0.999,
        ),
        (
            P99_CRITERION,
            f"{attack_p99:.2f} ms vs {base_p99:.2f} ms (x{attack_p99 / base_p99:.2f})"
            if attack_p99 and base_p99
            else "no latency",
            bool(attack_p99 and base_p99 and attack_p99 <= 2 * base_p99),
        ),
        ("gateway peak RSS (VmHWM) <= bound", f"{mib(hwm)} <= {mib(bound)}", hwm <= bound),
        ("gateway still running", str(result["gateway_alive"]), result["gateway_alive"]),
    ]
    reached = reached_bounds(result)
    for name, (what, ok) in reached.items():
        checks.append((f"{name} reached its bound", what, ok))
    return checks, derivation


def reached_bounds(result: dict) -> dict[str, tuple[str, bool]]:
    """Whether each attacker that ran reached the limit it aims at, from the gateway's refusal
    counters and the attackers' own counts; a run where one did not proves nothing about it."""
    refused = result["refusals"]
    out = {}
    for a in result["attackers"]["attackers"]:
        outcomes, extra = a["outcomes"], a.get("extra", {})
        name = a["attacker"]
        if name == "slow-header":
            n = refused.get("header_timeout", 0)
            out[name] = (f"header_timeout refusals {n:.0f}", n > 0)
        elif name == "slow-body":
            n = outcomes.get("status_408", 0)
            m = refused.get("body_timeout", 0)
            out[name] = (f"408 answers {n}, body_timeout refusals {m:.0f}", n > 0 and m > 0)
        elif name == "flood":
            n = refused.get("connections_max", 0)
            out[name] = (f"connections_max refusals {n:.0f}", n > 0)
        elif name == "h2-bodies":
            n = extra.get("stream_status_408", 0)
            out[name] = (f"streams answered 408: {n}", n > 0)
        elif name == "websockets":
            # Measured, not assumed: the gateway may refuse, close or accept them.
            n = a["open_max"]
            out[name] = (f"most sockets open at once {n}", n > 0)
    return out


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def render(result: dict, checks: list, derivation: list[str]) -> str:
    lines = []
    phases = result["legit"]["phases"]
    legit = result["legit"]
    lines.append(
        f"legitimate client: GET /sample/hello, {legit['rate']:g}/s over a pool of "
        f"{legit['pool']} kept-alive connections (opened {legit['connections_opened']} times), "
        f"and {legit['new_conn_rate']:g}/s each on a new connection (`new-conn`, not a criterion)"
    )
    lines.append("")
    lines.append("| phase | sent | ok | success | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | failures |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for p in phases:
        lat = p["latency_ms"]
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        rate = f"{p['success_rate'] * 100:.2f} %" if p["success_rate"] is not None else "-"
        fails = ", ".join(f"{k} {v}" for k, v in p["failures"].items()) or "-"
        lines.append(
            f"| {p['phase']} | {p['sent']} | {p['ok']} | {rate} | {fmt(lat['p50'])} | "
            f"{fmt(lat['p90'])} | {fmt(lat['p99'])} | {fmt(lat['p99.9'])} | {fmt(lat['max'])} | {fails} |"
        )
    lines.append("")
    lines.append("| attacker | sockets | most open | gateway held a socket (median / max s) | outcomes | details |")
    lines.append("| --- | ---: | ---: | --- | --- | --- |")
    for a in result["attackers"]["attackers"]:
        held = a["held_s"]
        outcomes = ", ".join(f"{k} {v}" for k, v in a["outcomes"].items()) or "-"
        extra = ", ".join(f"{k} {v}" for k, v in a.get("extra", {}).items()) or "-"
        lines.append(
            f"| {a['attacker']} | {a['sockets']} | {a['open_max']} | "
            f"{fmt_s(held['median'])} / {fmt_s(held['max'])} | {outcomes} | {extra} |"
        )
    lines.append("")
    g = result["gateway"]
    refused = ", ".join(f"{k} {v:.0f}" for k, v in result["refusals"].items())
    lines.append(f"gateway refusals during the attack (public listener): {refused}")
    lines.append("")
    lines.append("| window | gateway peak RSS | peak open fds | threads | CPU, cores: gateway / legit / attackers |")
    lines.append("| --- | ---: | ---: | ---: | --- |")
    for label, peak in g["peaks"].items():
        c = g["cpu_cores"].get(label, {})
        cpu = " / ".join(f"{c[k]:.2f}" if k in c else "-" for k in ("gateway", "legit", "attackers"))
        lines.append(
            f"| {label} | {mib(peak.get('VmRSS', 0))} | {peak.get('fds', 0)} | "
            f"{peak.get('Threads', 0)} | {cpu} |"
        )
    lines.append("")
    st = result["stalls"]
    if st["threshold_ms"] is not None:
        lines.append(
            f"gateway requests slower than {st['threshold_ms']:.1f} ms (2 x baseline p99): "
            + "; ".join(
                f"{w} {st[w]['slow']}, of which {st[w]['shared_with_control']} at a moment when "
                f"the control target was slow too (> {st['control_threshold_ms']:.1f} ms)"
                for w in ("baseline", "attack")
            )
        )
    lines.append(
        f"machine: {result['cores']} cores, 1-minute load average {result['load_average'][0]} "
        f"before the run and {result['load_average'][1]} after it"
    )
    lines.append("")
    lines.append("RSS bound, from the configured limits:")
    lines.extend(f"  {line}" for line in derivation)
    lines.append("")
    lines.append("| criterion | measured | verdict |")
    lines.append("| --- | --- | --- |")
    for name, measured, ok in checks:
        lines.append(f"| {name} | {measured} | {'pass' if ok else 'FAIL'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the short version (about 30 s)")
    parser.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    parser.add_argument("--rate", type=float, help="legitimate requests per second")
    parser.add_argument("--rounds", type=int, help="rounds of baseline then attack")
    parser.add_argument("--baseline-s", type=float, help="each baseline window")
    parser.add_argument("--attack-s", type=float, help="each attack window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default="slow-header,slow-body,flood,h2-bodies,websockets",
                        help="the attackers to run, comma-separated")
    parser.add_argument("--attacker-arg", action="append", default=[],
                        help="passed to attackers.py, e.g. --attacker-arg=--flood=600")
    parser.add_argument(
        "--gateway-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one of SETTINGS (the bound follows), e.g. to see a check fail without "
        "the limit it checks: --gateway-set public.header_read_timeout_ms=600000",
    )
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args()
    args.settings = dict(SETTINGS)
    for item in args.gateway_set:
        key, _, value = item.partition("=")
        if key not in SETTINGS or not value.isdigit():
            parser.error(f"--gateway-set {item!r}: expected KEY=INTEGER, KEY one of {sorted(SETTINGS)}")
        args.settings[key] = int(value)
    profile = PROFILES["smoke" if args.smoke else "full"]
    for key in ("rate", "rounds", "baseline_s", "attack_s"):
        if getattr(args, key) is not None:
            setattr(profile, key, getattr(args, key))
    if not (
        0 < profile.rate <= 2_000
        and 1 <= profile.rounds <= 20
        and 1 <= profile.baseline_s <= 600
        and 1 <= profile.attack_s <= 600
    ):
        parser.error(
            "--rate must lie in (0, 2000], --rounds in [1, 20], --baseline-s and --attack-s in [1, 600]"
        )
    base_dir = args.out_dir or ROOT / "testbeds" / ".run" / "attack" / time.strftime("%Y%m%d-%H%M%S")
    # The smoke runs on a shared 2-core machine, where one stall of the whole machine (seen by
    # the control server too) longer than 1 % of the attack time crosses 2 x p99 by itself,
    # and where the baseline's p99 (the 8th slowest of 800 requests) moves from 3 to 11 ms
    # between runs of one build. A smoke that fails on p99 alone is therefore run again, up to
    # three times, and passes only if a run passes every criterion; a gateway that slows its
    # clients under attack fails all three. Measured on an idle VM (2026-12-03, docs/
    # benchmarks.md): 3 of 11 single runs of one build crossed 2 x (2.06 to 2.39), none twice
    # in a row.
    attempts = 3 if args.smoke else 1
    for attempt in range(1, attempts + 1):
        out_dir = base_dir if attempt == 1 else base_dir / f"attempt-{attempt}"
        code, failed = attempt_run(args, profile, out_dir)
        if code != 1 or attempt == attempts or failed != [P99_CRITERION]:
            return code
        log(f"attempt {attempt} failed on p99 alone; running the smoke again")
    return 1


P99_CRITERION = "legit p99 with attackers <= 2 x without"


def attempt_run(args: argparse.Namespace, profile, out_dir: Path) -> tuple[int, list[str]]:
    """One run with its report; returns the exit status and the criteria that failed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    global LOG_FILE
    LOG_FILE = out_dir / "attack.log"
    log(f"results and logs in {out_dir}; {profile}, seed {args.seed}")
    load_before = os.getloadavg()[0]
    try:
        result = run(args, profile, out_dir)
    except (RuntimeError, AssertionError, OSError) as error:
        log(f"the run could not be made: {error}")
        return 2, []
    # Other work on the machine shows here: the 1-minute load average before and after.
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["cores"] = os.cpu_count()
    phases = {p["phase"]: p for p in result["legit"]["phases"]}
    result["stalls"] = attribute_stalls(out_dir / "legit-latencies.csv", phases)
    checks, derivation = verdict(result, args)
    result["checks"] = [{"criterion": n, "measured": m, "pass": ok} for n, m, ok in checks]
    text = render(result, checks, derivation)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    (out_dir / "results.md").write_text(text + "\n")
    print(text)
    failed = [n for n, _, ok in checks if not ok]
    if failed:
        log(f"FAILED: {'; '.join(failed)}")
        return 1, failed
    log("all criteria met")
    return 0, []


if __name__ == "__main__":
    sys.exit(main())

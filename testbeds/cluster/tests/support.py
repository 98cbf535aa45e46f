"""What the cluster scenarios share: the load generator run as a second process and the
reading of its report, the results file, Prometheus text-format parsing, the count of the
audit records of a load against its own counts, and the wait for a whole cluster."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cluster import CLUSTER_SH, RUN_DIR, Cluster, control_headers, http_get, wait_until  # noqa: E402

LOADGEN = HERE.parent / "loadgen.py"
RESULTS = RUN_DIR / "results.json"
# What a scenario waits for before it starts: the testbed whole again.
HEAL_TIMEOUT_S = 60.0


COMPONENTS = ["kafka", "gw-1", "gw-2", "gw-3", "haproxy", "rust-sample-1", "rust-sample-2",
              "python-sample-1", "python-sample-2", "prometheus"]


def whole(cluster: Cluster) -> None:
    """Makes the cluster whole: starts any component that is not running (a scenario that
    failed half-way may have left one down), then waits until every gateway is ready, every
    HAProxy server is UP and every service instance is live on every gateway."""
    for component in COMPONENTS:
        if cluster.pid(component) is None:
            print(f"\n(starting {component}, which is not running)")
            cluster.command("start", component)
    cluster.wait_ready(HEAL_TIMEOUT_S)
    cluster.wait_haproxy_up(HEAL_TIMEOUT_S)
    for service, ids in cluster.services.items():
        cluster.wait_live(service, ids, HEAL_TIMEOUT_S)


def ensure_running(cluster: Cluster, *components: str) -> None:
    """For a scenario's `finally`: starts again what it stopped, if it is not running."""
    for component in components:
        if cluster.pid(component) is None:
            cluster.command("start", component)


def record_results(scenario: str, figures: dict) -> None:
    """Prints a scenario's figures and merges them into testbeds/.run/cluster/results.json."""
    try:
        results = json.loads(RESULTS.read_text())
    except (FileNotFoundError, ValueError):
        results = {}
    results[scenario] = figures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"\n[{scenario}] " + json.dumps(figures, sort_keys=True))


# --- load from a second process ------------------------------------------------------------


class Load:
    """One run of loadgen.py in its own process; its report is read from the JSON it writes."""

    def __init__(self, cluster: Cluster, name: str, paths: list[str], rate: float, duration_s: float):
        self.out = RUN_DIR / f"load-{name}.json"
        self.out.unlink(missing_ok=True)
        self.log = RUN_DIR / "logs" / f"load-{name}.log"
        # The run's requests carry ids with this prefix, so that its audit records can be
        # told from every other's (check_audit).
        self.request_id_prefix = f"{name}-{uuid.uuid4().hex[:8]}-"
        self.started_unix = time.time()
        self.dropped_before = audit_dropped(cluster)
        argv = [sys.executable, str(LOADGEN), "--base", cluster.public, "--rate", str(rate),
                "--duration", str(duration_s), "--out", str(self.out),
                "--request-id-prefix", self.request_id_prefix]
        for path in paths:
            argv += ["--path", path]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.duration_s = duration_s
        wait_until(self.report, f"the load generator's first report in {self.out}", 10)

    def report(self) -> dict | None:
        try:
            return json.loads(self.out.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def count(self, key: str, path: str | None = None, since_unix: float = 0.0,
              until_unix: float = float("inf")) -> int:
        """How many requests sent in [since, until) (whole seconds that overlap it) had `key`
        ("status:200", "gateway:gw2", "error:...", "code:..."), on `path` or on every path."""
        report = self.report() or {"seconds": []}
        return window(report, since_unix, until_unix, path)[key]

    def stop(self) -> dict:
        """Ends the run (SIGTERM: the requests in flight finish) and returns the final report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the load generator did not stop within 30 s of SIGTERM")
        report = self.report()
        assert report is not None and report["done"], f"no final report in {self.out}"
        return report

    def wait(self) -> dict:
        """Waits for the run to end by itself (its duration, plus the request timeout)."""
        try:
            self.proc.wait(timeout=self.duration_s + 30)
        except subprocess.TimeoutExpired:
            pass
        return self.stop()


def window(
    report: dict, since_unix: float, until_unix: float, path: str | None = None, inside: bool = False
) -> Counter:
    """The counts of every one-second bucket that overlaps [since, until) (with `inside`: that
    lies wholly inside it), summed."""
    total: Counter = Counter()
    for bucket in report["seconds"]:
        start = bucket["unix"]
        if inside and (start < since_unix or start + 1 > until_unix):
            continue
        if start + 1 <= since_unix or start >= until_unix:
            continue
        for p, counts in bucket["paths"].items():
            if path is None or p == path:
                total.update(counts)
    return total


def failures(counts: Counter) -> int:
    """Requests without a 2xx answer: other statuses and transport errors."""
    return sum(
        n for key, n in counts.items()
        if (key.startswith("status:") and not key.startswith("status:2")) or key.startswith("error:")
    )


def answered(counts: Counter) -> int:
    return sum(n for key, n in counts.items() if key.startswith("status:"))


# --- metrics -------------------------------------------------------------------------------

SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format 0.0.4 to (name, labels, value) samples; comments skipped."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE_RE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = {k: v.encode().decode("unicode_escape") for k, v in LABEL_RE.findall(match[3] or "")}
        samples.append((match[1], labels, float(match[4])))
    return samples


def scrape(control_url: str) -> list[tuple[str, dict[str, str], float]]:
    status, body = http_get(f"{control_url}/metrics", headers=control_headers())
    assert status == 200, f"GET {control_url}/metrics answered {status}: {body[:300]!r}"
    return parse_metrics(body.decode())


def metric_sum(samples, name: str, **labels: str) -> float:
    return sum(
        value for n, l, value in samples
        if n == name and all(l.get(k) == v for k, v in labels.items())
    )



# --- audit records --------------------------------------------------------------------------

# How long the audit records of a finished load may take to reach the topic: the gateways'
# queues drain in batches, and after a broker restart librdkafka's own retries come first.
AUDIT_SETTLE_S = 30.0


def audit_dropped(cluster: Cluster) -> dict[str, float]:
    """switchyard_audit_dropped_total{stream="requests"} of each gateway that answers."""
    dropped = {}
    for gw in cluster.gateways:
        status, body = http_get(f"{gw.control}/metrics", headers=control_headers())
        if status == 200:
            samples = parse_metrics(body.decode())
            dropped[gw.name] = metric_sum(samples, "switchyard_audit_dropped_total", stream="requests")
    return dropped


def audit_requests(cluster: Cluster, prefix: str, since_unix: float) -> list[dict]:
    """The request audit records on the cluster's broker whose request id starts with
    `prefix`, written since `since_unix`, read with `switchyard audit tail --json`."""
    since_s = int(time.time() - since_unix) + 60
    argv = [cluster.info["gateway_bin"], "audit", "tail", "--brokers", cluster.info["kafka"],
            "--since", f"{since_s}s", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)} failed: {done.stderr[-2000:]}"
    records = []
    for line in done.stdout.splitlines():
        record = json.loads(line)
        request = record.get("request") or {}
        if str(request.get("request_id", "")).startswith(prefix):
            records.append({"gateway_node": record.get("gateway_node", ""), **request})
    return records


def check_audit(
    cluster: Cluster, load: Load, report: dict, scenario: str, killed: tuple[str, ...] = ()
) -> dict:
    """Counts the load's audit records against the load generator's own counts, per gateway:
    a gateway audits every request it answered (HAProxy names it in `x-switchyard-gateway`),
    once: at most what it answered, and at least that less what its drop counter reports —
    except a gateway in `killed` (SIGKILL), whose queue died with it: at most, then. Records
    the figures as `<scenario>_audit` and returns them."""
    servers = {gw.server: gw.name for gw in cluster.gateways}
    answered_by: Counter = Counter()
    for totals in report["totals"].values():
        for key, n in totals.items():
            if key.startswith("gateway:") and key[len("gateway:"):] in servers:
                answered_by[servers[key[len("gateway:"):]]] += n

    def dropped_since() -> dict[str, float]:
        after = audit_dropped(cluster)
        return {name: after.get(name, 0.0) - load.dropped_before.get(name, 0.0) for name in after}

    records: list[dict] = []

    def settled() -> bool:
        nonlocal records
        records = audit_requests(cluster, load.request_id_prefix, load.started_unix)
        by_gateway = Counter(r["gateway_node"] for r in records)
        dropped = dropped_since()
        return all(
            by_gateway[name] >= answered_by[name] - dropped.get(name, 0.0)
            for name in answered_by if name not in killed
        )

    settle_began = time.time()
    try:
        wait_until(settled, "the load's audit records on the requests topic", AUDIT_SETTLE_S)
    finally:
        by_gateway = Counter(r["gateway_node"] for r in records)
        ids = Counter(r["request_id"] for r in records)
        dropped = dropped_since()
        figures = {
            "audit_answered_by_gateway": dict(answered_by),
            "audit_records_by_gateway": dict(by_gateway),
            "audit_dropped_by_gateway": {k: int(v) for k, v in dropped.items()},
            "audit_duplicates": sum(n - 1 for n in ids.values() if n > 1),
            "audit_settle_s": round(time.time() - settle_began, 3),
        }
        record_results(f"{scenario}_audit", figures)
    assert figures["audit_duplicates"] == 0, f"request ids audited more than once: {figures}"
    for name, n in by_gateway.items():
        assert n <= answered_by[name], f"{name} audited more requests than it answered: {figures}"
    return figures

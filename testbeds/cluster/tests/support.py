"""What the cluster scenarios share: the load generator run as a second process and the
reading of its report, the results file, Prometheus text-format parsing, and the wait for a
whole cluster."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
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
        argv = [sys.executable, str(LOADGEN), "--base", cluster.public, "--rate", str(rate),
                "--duration", str(duration_s), "--out", str(self.out)]
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


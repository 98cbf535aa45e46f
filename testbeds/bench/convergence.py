"""Convergence benchmark: how long a registration made through one gateway takes to be
visible on every gateway of a three-gateway cluster on a real Kafka broker.

    testbeds/bench/convergence.sh [--registrations N]

Each registration is made alone (the next starts once the previous is visible everywhere),
so the figure is the latency of one change, not the throughput of many. The clock starts
just before the PUT to gateway 1 and stops when gateways 2 and 3 both list the instance;
visibility is polled every 0.5 ms. This is a measurement, not a test: nothing is asserted
about the times."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import (  # noqa: E402
    HTTP_TIMEOUT_S,
    REPO_ROOT,
    Gateway,
    Launcher,
    control_headers,
    start_gateway,
)
from kafka_broker import Broker, session_broker  # noqa: E402

POLL_S = 0.0005


def visible(session: requests.Session, gw: Gateway, service: str, instance: str) -> bool:
    resp = session.get(f"{gw.control}/v1/services/{service}", timeout=HTTP_TIMEOUT_S)
    return resp.status_code == 200 and any(
        i["instance_id"] == instance and i["state"] == "live" for i in resp.json()["instances"]
    )


def percentile(sorted_ms: list[float], p: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[index]


def measure(launcher: Launcher, broker: Broker, registrations: int) -> dict:
    topic = f"switchyard-bench-{uuid.uuid4().hex[:8]}"
    gateways = [
        start_gateway(launcher, f"gw-{i}", node_id=f"gw-{i}", extra=broker.gateway_args(topic))
        for i in (1, 2, 3)
    ]
    first, others = gateways[0], gateways[1:]
    latencies_ms: list[float] = []
    acked_ms: list[float] = []
    with requests.Session() as session:
        for gw in gateways:
            deadline = time.monotonic() + 60
            while session.get(f"{gw.public}/readyz", timeout=HTTP_TIMEOUT_S).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{gw.control} not ready within 60 s")
                time.sleep(0.05)
        for n in range(registrations):
            instance = f"b-{n}"
            started = time.perf_counter()
            resp = session.put(
                f"{first.control}/v1/services/bench/instances/{instance}",
                json={"addr": "127.0.0.1:9", "lease_ms": 600_000},
                headers=control_headers(),
                timeout=HTTP_TIMEOUT_S,
            )
            if resp.status_code != 200:
                raise SystemExit(f"registration {n} answered {resp.status_code}: {resp.text}")
            acked_ms.append((time.perf_counter() - started) * 1000)
            pending = list(others)
            deadline = time.monotonic() + 30
            while pending:
                pending = [gw for gw in pending if not visible(session, gw, "bench", instance)]
                if pending and time.monotonic() > deadline:
                    raise SystemExit(f"registration {n} not visible everywhere within 30 s")
                if pending:
                    time.sleep(POLL_S)
            latencies_ms.append((time.perf_counter() - started) * 1000)
    ordered = sorted(latencies_ms)
    acked = sorted(acked_ms)
    return {
        "acknowledged_p50_ms": round(percentile(acked, 50), 2),
        "acknowledged_p99_ms": round(percentile(acked, 99), 2),
        "registrations": registrations,
        "gateways": 3,
        "p50_ms": round(percentile(ordered, 50), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "settings": "bus.kafka.linger_ms=1 fetch_wait_max_ms=10 (defaults); replicate fetch wait 500 ms",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registrations", type=int, default=500)
    args = parser.parse_args()
    if not 1 <= args.registrations <= 100_000:
        parser.error("--registrations must be between 1 and 100000")
    run_dir = REPO_ROOT / "testbeds" / ".run"
    broker = session_broker(run_dir / "kafka-bench")
    launcher = Launcher(run_dir / "bench-logs")
    launcher.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        print(json.dumps(measure(launcher, broker, args.registrations), indent=2))
    finally:
        launcher.stop_all()
        if broker.restartable:
            broker.stop()


if __name__ == "__main__":
    main()

"""The Kafka broker for the cluster tests: the one KAFKA_BOOTSTRAP names, or a single-node
KRaft broker started by testbeds/kafka/kafka.sh on loopback (fresh storage each session)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT

KAFKA_SH = REPO_ROOT / "testbeds" / "kafka" / "kafka.sh"


@dataclass
class Broker:
    bootstrap: str
    # None when the broker is someone else's (KAFKA_BOOTSTRAP): it cannot be restarted.
    state_dir: Path | None

    def _run(self, command: str) -> str:
        assert self.state_dir is not None, "an external broker cannot be stopped or started"
        env = dict(os.environ, KAFKA_DIR=str(self.state_dir), KAFKA_PORT=self.bootstrap.split(":")[1])
        done = subprocess.run(
            [str(KAFKA_SH), command], env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, f"kafka.sh {command} failed:\n{done.stderr[-3000:]}"
        return done.stdout.strip()

    def start(self) -> None:
        out = self._run("start")
        assert out.endswith(self.bootstrap), out

    def stop(self) -> None:
        self._run("stop")

    @property
    def restartable(self) -> bool:
        return self.state_dir is not None

    def gateway_args(self, topic: str, *extra: str) -> tuple[str, ...]:
        """`switchyard serve` flags for a gateway on this broker and topic."""
        args = [
            "--set", "bus.kind=kafka",
            "--set", f"bus.kafka.brokers={self.bootstrap}",
            "--set", f"bus.kafka.topic={topic}",
        ]
        for setting in extra:
            args += ["--set", setting]
        return tuple(args)


def session_broker(run_dir: Path) -> Broker:
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        return Broker(bootstrap=external, state_dir=None)
    port = os.environ.get("E2E_KAFKA_PORT", "19192")
    broker = Broker(bootstrap=f"127.0.0.1:{port}", state_dir=run_dir)
    env = dict(os.environ, KAFKA_DIR=str(run_dir), KAFKA_PORT=port)
    subprocess.run([str(KAFKA_SH), "wipe"], env=env, capture_output=True, timeout=60, check=False)
    broker.start()
    return broker

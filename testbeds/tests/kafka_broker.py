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


@dataclass
class SecureBroker:
    """A broker started by kafka.sh with KAFKA_SECURITY=sasl_ssl: a SASL_SSL listener with
    SCRAM users, and an SSL listener that requires a client certificate. Its CA, certificates
    and the SCRAM user's password file are under `tls`, made by the script."""

    bootstrap: str  # SASL_SSL, SCRAM-SHA-256 and SCRAM-SHA-512
    ssl_bootstrap: str  # SSL, client certificate required
    controller_port: str
    state_dir: Path
    username: str = "switchyard"

    @property
    def tls(self) -> Path:
        return self.state_dir / "tls"

    @property
    def password_file(self) -> Path:
        return self.tls / "scram.password"

    def _env(self) -> dict[str, str]:
        return dict(
            os.environ,
            KAFKA_DIR=str(self.state_dir),
            KAFKA_SECURITY="sasl_ssl",
            KAFKA_PORT=self.bootstrap.split(":")[1],
            KAFKA_SSL_PORT=self.ssl_bootstrap.split(":")[1],
            KAFKA_CONTROLLER_PORT=self.controller_port,
            KAFKA_SCRAM_USER=self.username,
        )

    def run(self, command: str) -> str:
        done = subprocess.run(
            [str(KAFKA_SH), command], env=self._env(), capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, f"kafka.sh {command} failed:\n{done.stderr[-3000:]}"
        return done.stdout.strip()

    def sasl_args(self, topic: str, *extra: str, password_file: Path | None = None) -> tuple[str, ...]:
        """`switchyard serve` flags for a gateway on the SASL_SSL listener, as this broker's
        SCRAM user, trusting this broker's CA; `extra` settings override these."""
        return _flags(
            "bus.kind=kafka",
            f"bus.kafka.brokers={self.bootstrap}",
            f"bus.kafka.topic={topic}",
            "bus.kafka.security_protocol=sasl_ssl",
            f"bus.kafka.sasl_username={self.username}",
            f"bus.kafka.sasl_password_file={password_file or self.password_file}",
            f"bus.kafka.ssl_ca_file={self.tls / 'ca.pem'}",
            *extra,
        )

    def mtls_args(self, topic: str, client_certificate: bool = True) -> tuple[str, ...]:
        """Flags for a gateway on the SSL listener, authenticated by its client certificate
        (or presenting none)."""
        certificate = (
            f"bus.kafka.ssl_certificate_file={self.tls / 'client.pem'}",
            f"bus.kafka.ssl_key_file={self.tls / 'client.key'}",
        )
        return _flags(
            "bus.kind=kafka",
            f"bus.kafka.brokers={self.ssl_bootstrap}",
            f"bus.kafka.topic={topic}",
            "bus.kafka.security_protocol=ssl",
            f"bus.kafka.ssl_ca_file={self.tls / 'ca.pem'}",
            *(certificate if client_certificate else ()),
        )


def _flags(*settings: str) -> tuple[str, ...]:
    args: list[str] = []
    for setting in settings:
        args += ["--set", setting]
    return tuple(args)


def secure_broker(run_dir: Path) -> SecureBroker:
    """Starts a fresh sasl_ssl broker on E2E_KAFKA_SECURE_PORT (default 19392; the controller
    on the next port, the SSL listener on the one after), apart from the session's broker."""
    port = int(os.environ.get("E2E_KAFKA_SECURE_PORT", "19392"))
    broker = SecureBroker(
        bootstrap=f"127.0.0.1:{port}",
        ssl_bootstrap=f"127.0.0.1:{port + 2}",
        controller_port=str(port + 1),
        state_dir=run_dir,
    )
    broker.run("wipe")
    out = broker.run("start")
    assert out.endswith(broker.bootstrap), out
    return broker

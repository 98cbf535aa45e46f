"""The Redis server for the revocation tests: Debian's redis-server started by
testbeds/redis/redis.sh on loopback (no persistence, so a restart starts empty), which the
tests may kill and start again mid-run."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT

REDIS_SH = REPO_ROOT / "testbeds" / "redis" / "redis.sh"


@dataclass
class RedisServer:
    port: int
    state_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _run(self, command: str) -> str:
        env = dict(os.environ, REDIS_DIR=str(self.state_dir), REDIS_PORT=str(self.port))
        done = subprocess.run(
            [str(REDIS_SH), command], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"redis.sh {command} failed:\n{done.stderr[-3000:]}"
        return done.stdout.strip()

    def start(self) -> None:
        out = self._run("start")
        assert out.endswith(self.url), out

    def stop(self) -> None:
        self._run("resume")
        self._run("stop")

    def kill(self) -> None:
        """SIGKILL, as a server that dies mid-run."""
        self._run("kill")

    def pause(self) -> None:
        """SIGSTOP: its connections stay open and nothing is answered (a hung server)."""
        self._run("pause")

    def resume(self) -> None:
        self._run("resume")

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == 0, f"redis-cli {args} failed: {done.stderr}"
        return done.stdout.strip()

    def settings(self, **extra: str) -> dict[str, str]:
        """Gateway config keys for this server, with `extra` keys (dots as `__`) added."""
        out = {"redis.url": self.url}
        for key, value in extra.items():
            out[key.replace("__", ".")] = value
        return out


def session_redis(run_dir: Path) -> RedisServer:
    port = int(os.environ.get("E2E_REDIS_PORT", "16479"))
    server = RedisServer(port=port, state_dir=run_dir)
    env = dict(os.environ, REDIS_DIR=str(run_dir), REDIS_PORT=str(port))
    subprocess.run([str(REDIS_SH), "wipe"], env=env, capture_output=True, timeout=60, check=False)
    server.start()
    return server

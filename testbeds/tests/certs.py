"""Certificates made for a test with the openssl command: a CA, and leaf certificates it signs
with the subject alternative names a test asks for (P-256 keys, valid a day)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {done.stderr}")


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path

    def pair(self) -> tuple[str, str]:
        """(certificate, key) paths, as `requests` takes a client certificate."""
        return str(self.cert), str(self.key)


@dataclass(frozen=True)
class Ca:
    dir: Path
    cert: Path
    key: Path

    @staticmethod
    def make(dir: Path, name: str = "test-ca") -> Ca:
        dir.mkdir(parents=True, exist_ok=True)
        cert, key = dir / f"{name}.pem", dir / f"{name}.key"
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )
        return Ca(dir, cert, key)

    def leaf(self, name: str, sans: list[str]) -> Leaf:
        """A certificate for `sans` (`IP:127.0.0.1`, `DNS:localhost`, `URI:spiffe://...`),
        good for TLS servers and clients alike."""
        cert, key, csr = self.dir / f"{name}.pem", self.dir / f"{name}.key", self.dir / f"{name}.csr"
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
            "-addext", "subjectAltName=" + ",".join(sans),
            "-addext", "extendedKeyUsage=serverAuth,clientAuth",
        )
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-days", "1", "-copy_extensions", "copyall", "-out", str(cert),
        )
        return Leaf(cert, key)

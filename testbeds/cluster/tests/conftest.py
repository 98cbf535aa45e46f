"""Fixtures for the cluster scenarios (testbeds/cluster/tests).

The scenarios run against the testbed `testbeds/cluster/cluster.sh up` starts: HAProxy, three
gateways, Kafka, two Rust and two Python service instances, Prometheus. If it is already up
(testbeds/cluster/test.sh brings it up first) they use it and leave it running; otherwise the
session brings it up and takes it down at the end. Every scenario starts by waiting until the
cluster is whole, and puts back what it broke, even when it fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from support import CLUSTER_SH, Cluster, Load, whole



@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    status = subprocess.run(
        [str(CLUSTER_SH), "status"], capture_output=True, text=True, timeout=60
    )
    started_here = status.returncode != 0
    if started_here:
        up = subprocess.run([str(CLUSTER_SH), "up"], text=True, timeout=900)
        assert up.returncode == 0, "testbeds/cluster/cluster.sh up failed (see above)"
    try:
        yield Cluster.load()
    finally:
        if started_here:
            subprocess.run([str(CLUSTER_SH), "down"], timeout=300, check=False)


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    whole(cluster)
    return cluster


@pytest.fixture
def load_factory(cluster: Cluster) -> Iterator:
    """Starts load generators; any still running when the test ends is stopped."""
    loads: list[Load] = []

    def start(name: str, paths: list[str], rate: float, duration_s: float) -> Load:
        load = Load(cluster, name, paths, rate, duration_s)
        loads.append(load)
        return load

    try:
        yield start
    finally:
        for load in loads:
            if load.proc.poll() is None:
                load.proc.kill()
                load.proc.wait()



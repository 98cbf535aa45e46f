"""Checks of the deployment files in testbeds/deploy (docs/deploy.md), as far as this machine
allows: no Docker engine and no Kubernetes cluster run here.

* The Dockerfile, compose.yaml and the Kubernetes manifests are parsed by the parsers their
  tools use (BuildKit, compose-go, the Kubernetes API types), through testbeds/deploy/validate,
  and each check is shown to fail on a misspelt key.
* The gateway configuration of compose.yaml and of the Kubernetes ConfigMap and Deployment is
  given, as is, to the real `switchyard` binary: `check-config` must accept it, and `serve`
  with it (listeners moved to loopback, the bus pointed at the test broker, the key file at the
  one secrets/make generated) must become ready and require credentials on its control
  listener; the tokens secrets/make issues for the samples and Prometheus do what they are for.
* secrets/make is idempotent and never replaces a key; the samples take their tokens from
  secrets (an env file in Compose, a Secret in Kubernetes), and no gateway's control port is
  published (test_deploy_network_policy.py checks what the NetworkPolicies admit).
* Every metric the Grafana dashboard queries is exported by that gateway's /metrics.
* haproxy.cfg passes `haproxy -c`, and a copy that only swaps the addresses for loopback ones
  routes REST, gRPC registration and GraphQL (with its stickiness cookie) to three real
  gateways on the test broker, credentials passing through it. prometheus.yml passes
  `promtool check config`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from harness import (
    GATEWAY_READY,
    HTTP_TIMEOUT_S,
    REPO_ROOT,
    SERVICE_READY,
    Launcher,
    binary,
    child_env,
    python_service_argv,
    wait_until,
)

DEPLOY = REPO_ROOT / "testbeds" / "deploy"
MAKE_SECRETS = DEPLOY / "secrets" / "make"
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
GO_BUILD_TIMEOUT_S = 900
TOOL_TIMEOUT_S = 60
# The pod name a Deployment's pod would have; the manifests set the node id from it.
POD_NAME = "switchyard-gateway-7d9f8c6b5-x2x7q"
METRIC_NAME = re.compile(r"\b((?:switchyard|process)_[a-z0-9_]+)\b")


def run(argv: list[str], timeout_s: float = TOOL_TIMEOUT_S, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, **kw)


def gateway_exe() -> Path:
    exe = binary("SWITCHYARD_BIN", "target/debug/switchyard")
    assert exe.is_file(), f"no gateway binary at {exe}: run `cargo build -p switchyard`"
    return exe


def apt_install(command: str, package: str) -> str:
    """The path of `command`, installing the Debian package that has it if it is missing."""
    path = shutil.which(command)
    if path:
        return path
    assert shutil.which("apt-get") and os.geteuid() == 0, (
        f"{command} is missing and cannot be installed here (needs root and apt-get): "
        f"install the Debian package {package}"
    )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], 600, env=env)
    result = run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], 900, env=env)
    assert result.returncode == 0, f"apt-get install {package} failed:\n{result.stderr}"
    path = shutil.which(command)
    assert path, f"{package} installed no {command}"
    return path


# ---------------------------------------------------------------------------------------------
# The validator (Go): BuildKit's Dockerfile parser, compose-go, the Kubernetes API types
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Path:
    go = shutil.which("go")
    assert go, "the Go toolchain is needed to build testbeds/deploy/validate"
    out = REPO_ROOT / "testbeds" / ".run" / "deploy-validate"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run(
        [go, "build", "-mod=readonly", "-o", str(out), "."],
        GO_BUILD_TIMEOUT_S,
        cwd=DEPLOY / "validate",
    )
    assert result.returncode == 0, f"go build of the validator failed:\n{result.stderr}"
    return out


def validate(validator: Path, *args: str) -> subprocess.CompletedProcess:
    return run([str(validator), *map(str, args)])


def fresh_deploy_copy(dest: Path) -> Path:
    """testbeds/deploy as a fresh clone has it: without the validator, and without anything
    secrets/make generated in this checkout. Returns the copy's directory."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        if Path(directory) == DEPLOY:
            return {"validate"} & set(names)
        if Path(directory) == DEPLOY / "secrets":
            return set(names) - {"make", ".gitignore"}
        return set()

    shutil.copytree(DEPLOY, dest, ignore=ignore)
    return dest


def make_secrets(deploy: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs the copy's secrets/make with the gateway binary under test."""
    env = {**child_env(), "SWITCHYARD": str(gateway_exe())}
    return run([str(deploy / "secrets" / "make"), *args], env=env)


@dataclass
class Secrets:
    """What secrets/make wrote: the gateways' key file and the tokens."""

    dir: Path
    keys_file: Path
    sample_token: str
    prometheus_token: str
    operator_token: str


def read_secrets(deploy: Path) -> Secrets:
    secrets = deploy / "secrets"
    (line,) = (secrets / "sample.env").read_text().splitlines()
    name, sample = line.split("=", 1)
    assert name == "SWITCHYARD_TOKEN", line.split("=")[0]
    return Secrets(
        dir=secrets,
        keys_file=secrets / "control-keys.pem",
        sample_token=sample,
        prometheus_token=(secrets / "prometheus.token").read_text().strip(),
        operator_token=(secrets / "operator.token").read_text().strip(),
    )


@pytest.fixture(scope="module")
def deploy_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of testbeds/deploy with its secrets made, as `secrets/make` would make them
    before `docker compose up` (the checkout itself is left alone)."""
    deploy = fresh_deploy_copy(tmp_path_factory.mktemp("deploy") / "deploy")
    made = make_secrets(deploy)
    assert made.returncode == 0, made.stderr
    return deploy


@pytest.fixture(scope="module")
def secrets(deploy_copy: Path) -> Secrets:
    return read_secrets(deploy_copy)


@pytest.fixture(scope="module")
def compose(validator: Path, deploy_copy: Path) -> dict:
    """compose.yaml as Docker Compose resolves it (merge keys applied, paths absolute, env files
    read), in a copy whose secrets were made."""
    result = validate(validator, "compose", deploy_copy / "compose.yaml")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def claims(token: str) -> dict:
    """A JWT's claims, unverified (the gateway verifies; here we only read what was issued)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_dockerfile_parses_with_buildkit_and_builds_three_images(validator: Path) -> None:
    result = validate(validator, "dockerfile", DEPLOY / "Dockerfile")
    assert result.returncode == 0, result.stderr
    stages = result.stdout.split()
    assert stages == ["build", "sample-python", "sample-rust", "gateway"], stages
    text = (DEPLOY / "Dockerfile").read_text()
    # The runtime stages run as a numeric non-root user (so runAsNonRoot can verify it) and
    # take only the binary from the build stage.
    for stage in re.split(r"^FROM ", text, flags=re.M)[2:]:
        assert re.search(r"^USER 10001:10001$", stage, re.M), stage.splitlines()[0]
    assert "COPY --from=build /out/switchyard /usr/local/bin/switchyard" in text
    # What the build stage copies from the context exists and is let through the ignore file.
    allowed = [
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M)
    assert sources, "no COPY found"
    for source in (s for line in sources for s in line.split()):
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert any(source == a or source.startswith(a + "/") for a in allowed), (
            f"COPY {source}: excluded by Dockerfile.dockerignore"
        )
    # Every workspace member must be in the build context for cargo to load the workspace.
    members = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for member in members:
        assert any(member == s or member.startswith(s + "/") for line in sources for s in line.split()), (
            f"workspace member {member} is not copied into the build stage"
        )


def test_the_validator_fails_on_misspelt_files(validator: Path, tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text((DEPLOY / "Dockerfile").read_text().replace("\nCOPY --from", "\nCOPPY --from"))
    assert validate(validator, "dockerfile", dockerfile).returncode == 1
    manifest = tmp_path / "gateway.yaml"
    manifest.write_text((DEPLOY / "k8s" / "20-gateway.yaml").read_text().replace("readinessProbe:", "readynessProbe:"))
    result = validate(validator, "k8s", manifest)
    assert result.returncode == 1 and "readynessProbe" in result.stderr, result.stderr
    # NetworkPolicies: a misspelt field, and egress rules a policy would not enforce because
    # policyTypes leaves Egress out (the API server would infer Ingress only).
    policies = (DEPLOY / "k8s" / "15-network-policies.yaml").read_text()
    manifest.write_text(policies.replace("namespaceSelector:", "namespaceSelecter:", 1))
    result = validate(validator, "k8s", manifest)
    assert result.returncode == 1 and "namespaceSelecter" in result.stderr, result.stderr
    manifest.write_text(policies.replace('policyTypes: ["Ingress", "Egress"]', 'policyTypes: ["Ingress"]', 1))
    result = validate(validator, "k8s", manifest)
    assert result.returncode == 1 and "policyTypes" in result.stderr, result.stderr
    deploy = fresh_deploy_copy(tmp_path / "deploy")
    assert make_secrets(deploy).returncode == 0
    compose_file = deploy / "compose.yaml"
    compose_file.write_text(compose_file.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    result = validate(validator, "compose", compose_file)
    assert result.returncode == 1 and "stop_grace_periods" in result.stderr, result.stderr


def test_kubernetes_manifests_decode_strictly(validator: Path) -> None:
    result = validate(validator, "k8s", *K8S_FILES)
    assert result.returncode == 0, result.stderr
    objects = {tuple(line.split("\t")[1:]) for line in result.stdout.splitlines()}
    assert objects == {
        ("Namespace", "switchyard"),
        ("ConfigMap", "switchyard-gateway"),
        ("NetworkPolicy", "switchyard-gateway"),
        ("NetworkPolicy", "switchyard-samples"),
        ("Deployment", "switchyard-gateway"),
        ("Service", "switchyard-public"),
        ("Service", "switchyard-control"),
        ("PodDisruptionBudget", "switchyard-gateway"),
        ("Deployment", "sample-rust"),
        ("Deployment", "sample-python"),
    }, objects


# ---------------------------------------------------------------------------------------------
# The Kubernetes manifests, read here with PyYAML
# ---------------------------------------------------------------------------------------------


def k8s_objects() -> dict[tuple[str, str], dict]:
    objects = {}
    for path in K8S_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def k8s_gateway() -> tuple[dict, dict, str]:
    """The gateway Deployment, its container, and the TOML of its ConfigMap."""
    objects = k8s_objects()
    deployment = objects[("Deployment", "switchyard-gateway")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    toml_text = objects[("ConfigMap", "switchyard-gateway")]["data"]["gateway.toml"]
    return deployment, container, toml_text


def test_kubernetes_gateway_drains_within_its_grace_period_and_probes_the_right_ports() -> None:
    deployment, container, toml_text = k8s_gateway()
    config = tomllib.loads(toml_text)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    assert pod["enableServiceLinks"] is False
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    pre_stop_s = float(command[1])
    drain_s = config["shutdown"]["drain_timeout_ms"] / 1000
    assert pre_stop_s + drain_s + 5 <= pod["terminationGracePeriodSeconds"], (
        f"preStop {pre_stop_s} s + drain {drain_s} s + 5 s margin exceed "
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}"
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["public"] == int(config["public"]["listen"].rsplit(":", 1)[1])
    assert ports["control"] == int(config["control"]["listen"].rsplit(":", 1)[1])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "public"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "public"}
    # /metrics needs a read credential: no annotation invites a scraper that has none.
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert not any(k.startswith("prometheus.io/") for k in annotations), annotations
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["SWITCHYARD_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pdb = k8s_objects()[("PodDisruptionBudget", "switchyard-gateway")]
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_kubernetes_gateway_reads_its_keys_from_a_secret_and_control_stays_in_the_cluster() -> None:
    deployment, container, toml_text = k8s_gateway()
    control_config = tomllib.loads(toml_text)["control"]
    assert control_config.get("auth", "required") == "required"
    assert control_config.get("reads", "credential") == "credential"
    # control.jwt_keys_file is the file the Secret's volume puts there.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    keys_dir, keys_name = control_config["jwt_keys_file"].rsplit("/", 1)
    mount = mounts[keys_dir]
    assert mount["readOnly"] is True and "subPath" not in mount, mount  # subPath never updates
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "switchyard-control-keys"
    assert secret.get("optional", False) is False
    assert {"key": "control-keys.pem", "path": keys_name} in secret["items"], secret
    # Not inside another mount (the ConfigMap's read-only volume cannot hold a mount point).
    for path in mounts:
        assert path == keys_dir or not keys_dir.startswith(path + "/"), (path, keys_dir)
    # The control Service stays inside the cluster; nothing else exposes the control port.
    objects = k8s_objects()
    for (kind, name), obj in objects.items():
        if kind != "Service":
            continue
        assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", (name, obj["spec"]["type"])
        for port in obj["spec"]["ports"]:
            if name != "switchyard-control":
                assert port["targetPort"] != "control", (name, port)
    (control_port,) = objects[("Service", "switchyard-control")]["spec"]["ports"]
    assert control_port["targetPort"] == "control"
    assert not any("hostPort" in p for p in container["ports"]), container["ports"]
    assert not deployment["spec"]["template"]["spec"].get("hostNetwork", False)


def test_kubernetes_samples_take_their_token_from_a_secret() -> None:
    objects = k8s_objects()
    for name in ("sample-rust", "sample-python"):
        (container,) = objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["SWITCHYARD_TOKEN"] == {
            "name": "SWITCHYARD_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "switchyard-sample-token", "key": "token"}},
        }, env["SWITCHYARD_TOKEN"]
        # No token on the command line, where `ps` and the pod spec would show it.
        assert "--token" not in container["args"], container["args"]
    # No Secret carries key material in the repository: they are made with kubectl
    # (docs/deploy.md#secrets).
    assert not any(kind == "Secret" for kind, _ in objects)


def test_kubernetes_samples_register_through_the_control_service() -> None:
    objects = k8s_objects()
    control = objects[("Service", "switchyard-control")]
    (port,) = control["spec"]["ports"]
    want = f"http://{control['metadata']['name']}.{control['metadata']['namespace']}.svc.cluster.local:{port['port']}"
    for name in ("sample-rust", "sample-python"):
        deployment = objects[("Deployment", name)]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[args.index("--gateway") + 1] == want, args
        assert args[args.index("--instance-id") + 1] == "$(POD_NAME)", args
        assert deployment["spec"]["replicas"] == 2


# ---------------------------------------------------------------------------------------------
# The real gateway with the configuration of compose.yaml and of the Kubernetes manifests
# ---------------------------------------------------------------------------------------------


def fresh_topic() -> str:
    return f"switchyard-deploy-{uuid.uuid4().hex[:12]}"


def loopback_on_broker(kafka, topic: str) -> list[str]:
    """Flags that move a gateway's listeners to loopback and its bus to the test broker, and
    admit the loopback instances of these tests in its address policy; flags win over the file
    and the environment, so every other setting stays as deployed."""
    return [
        "--public-listen", "127.0.0.1:0",
        "--control-listen", "127.0.0.1:0",
        "--set", 'upstream.allow_addresses=["127.0.0.0/8"]',
        "--set", f"bus.kafka.brokers={kafka.bootstrap}",
        "--set", f"bus.kafka.topic={topic}",
        "--set", "bus.kafka.replication_factor=1",
    ]


def keys_file_at(path: Path) -> list[str]:
    """The flag that points control.jwt_keys_file at a file of this machine: the deployed path
    (a Secret's mount) does not exist here. Flags win, so nothing else changes."""
    return ["--set", f"control.jwt_keys_file={path}"]


def assert_control_requires_credentials(control: str, secrets: Secrets) -> None:
    """The deployed gateway's control listener asks for a credential and honours its scope:
    the sample token changes service "sample" only and reads nothing, the Prometheus token reads
    /metrics, the operator token reads the registry."""
    resp = requests.get(f"{control}/v1/cluster", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthenticated", resp.text
    assert requests.get(f"{control}/metrics", timeout=HTTP_TIMEOUT_S).status_code == 401
    resp = requests.get(f"{control}/metrics", headers=bearer(secrets.prometheus_token), timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200 and "switchyard_ready" in resp.text, resp.status_code
    resp = requests.get(f"{control}/v1/cluster", headers=bearer(secrets.sample_token), timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden", resp.text
    body = {"addr": "10.0.0.7:50051"}  # a private network: the address policy needs no entry
    resp = requests.put(
        f"{control}/v1/services/billing/instances/b-1", json=body,
        headers=bearer(secrets.sample_token), timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 403, resp.text
    resp = requests.put(
        f"{control}/v1/services/sample/instances/probe-1", json=body,
        headers=bearer(secrets.sample_token), timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 200, resp.text
    resp = requests.delete(
        f"{control}/v1/services/sample/instances/probe-1",
        headers=bearer(secrets.sample_token), timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 200, resp.text


def wait_registered(control: str, token: str, service: str, instance: str) -> None:
    def live() -> bool:
        resp = requests.get(f"{control}/v1/services/{service}", headers=bearer(token), timeout=HTTP_TIMEOUT_S)
        return resp.status_code == 200 and any(
            i["instance_id"] == instance and i["state"] == "live" for i in resp.json()["instances"]
        )

    wait_until(live, f"{service}/{instance} live on {control}", 30)


def start_deployed_gateway(launcher: Launcher, name: str, argv: list[str], env: dict[str, str]) -> tuple[str, str]:
    """Starts the gateway, waits for its ready line and for /readyz 200; returns (public,
    control) base URLs."""
    proc = launcher.start(name, argv, GATEWAY_READY, {**child_env(), **env})
    match = proc.wait_ready()
    public, control = f"http://{match['public']}", f"http://{match['control']}"
    wait_until(
        lambda: requests.get(f"{public}/readyz", timeout=HTTP_TIMEOUT_S).status_code == 200,
        f"{name} to answer /readyz 200",
        30,
    )
    return public, control


def gateway_service_env(compose: dict, service: str) -> tuple[list[str], dict[str, str]]:
    spec = compose["services"][service]
    env = {k: v for k, v in spec["environment"].items() if v is not None}
    return spec["command"], env


def test_compose_wires_kafka_gateways_haproxy_samples_and_monitoring(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {
        "kafka", "gateway-1", "gateway-2", "gateway-3", "haproxy",
        "sample-rust-1", "sample-rust-2", "sample-python-1", "sample-python-2",
        "prometheus", "grafana",
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["haproxy"]["image"].startswith("haproxy:")
    node_ids = set()
    for i in (1, 2, 3):
        gw = services[f"gateway-{i}"]
        command, env = gateway_service_env(compose, f"gateway-{i}")
        node_ids.add(env["SWITCHYARD_NODE_ID"])
        assert env["SWITCHYARD_BUS__KAFKA__BROKERS"] == "kafka:9092"
        assert gw["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(gw["healthcheck"]["test"])
        grace = re.fullmatch(r"([0-9]+)s", gw["stop_grace_period"])
        assert grace, gw["stop_grace_period"]
        drain_s = int(env["SWITCHYARD_SHUTDOWN__DRAIN_TIMEOUT_MS"]) / 1000
        assert int(grace[1]) > drain_s, (gw["stop_grace_period"], drain_s)
    assert len(node_ids) == 3
    for name in ("sample-rust-1", "sample-rust-2", "sample-python-1", "sample-python-2"):
        command = services[name]["command"]
        assert command[command.index("--gateway") + 1] == "http://haproxy:8081", command
        advertise = command[command.index("--advertise") + 1]
        assert advertise == f"http://{name}:50051", command
    # Files mounted into containers exist.
    for name in ("haproxy", "prometheus", "grafana"):
        for volume in services[name].get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]


def compose_keys_file(compose: dict, service: str, env: dict[str, str]) -> Path:
    """The host file behind the gateway's control.jwt_keys_file: the Compose secret mounted at
    that path."""
    target = env["SWITCHYARD_CONTROL__JWT_KEYS_FILE"]
    (secret,) = [s for s in compose["services"][service]["secrets"] if s["target"] == target]
    return Path(compose["secrets"][secret["source"]]["file"])


def test_compose_needs_the_secrets_made_and_secrets_make_never_replaces_a_key(validator: Path, tmp_path: Path) -> None:
    deploy = fresh_deploy_copy(tmp_path / "deploy")
    # A fresh clone: Compose refuses to start the samples without their token file, naming it
    # (compose-go loads a missing secret file, but not a required env file).
    result = validate(validator, "compose", deploy / "compose.yaml")
    assert result.returncode == 1 and "secrets/sample.env" in result.stderr, result.stderr
    assert make_secrets(deploy).returncode == 0
    assert validate(validator, "compose", deploy / "compose.yaml").returncode == 0
    secrets_dir = deploy / "secrets"
    assert (secrets_dir.stat().st_mode & 0o777) == 0o700
    assert (secrets_dir / "operator.key").stat().st_mode & 0o077 == 0, "the private key is readable by others"
    assert (secrets_dir / "control-keys.pem").read_text() == (secrets_dir / "operator.pub.pem").read_text()

    def contents() -> dict[str, str]:
        return {f.name: f.read_text() for f in secrets_dir.iterdir() if f.name not in {"make", ".gitignore"}}

    first = contents()
    # Idempotent: a second run changes nothing.
    again = make_secrets(deploy)
    assert again.returncode == 0, again.stderr
    assert contents() == first
    # --reissue makes new tokens with the same key; the keys stay.
    again = make_secrets(deploy, "--reissue")
    assert again.returncode == 0, again.stderr
    after = contents()
    for name in ("operator.key", "operator.pub.pem", "control-keys.pem"):
        assert after[name] == first[name], name
    for name in ("sample.env", "prometheus.token", "operator.token"):
        assert after[name] != first[name], name
    # A key file the operator edited (a rotation appends a key) is left as it is.
    made = run([str(gateway_exe()), "token", "keygen", "--out", str(tmp_path / "next")], env=child_env())
    assert made.returncode == 0, made.stderr
    rotated = first["control-keys.pem"] + (tmp_path / "next.pub.pem").read_text()
    (secrets_dir / "control-keys.pem").write_text(rotated)
    assert make_secrets(deploy).returncode == 0
    assert (secrets_dir / "control-keys.pem").read_text() == rotated
    # Half a key pair is refused, not repaired by a new key.
    (secrets_dir / "operator.pub.pem").unlink()
    refused = make_secrets(deploy)
    assert refused.returncode != 0 and "operator.pub.pem" in refused.stderr, refused.stderr
    assert (secrets_dir / "operator.key").read_text() == first["operator.key"]
    # Nothing it makes enters git.
    made_paths = sorted(f"testbeds/deploy/secrets/{name}" for name in first)
    ignored = run(["git", "check-ignore", "--no-index", *made_paths], cwd=REPO_ROOT)
    assert sorted(ignored.stdout.split()) == made_paths, ignored.stdout


def test_secrets_make_issues_tokens_scoped_to_their_use(secrets: Secrets) -> None:
    sample, prometheus, operator = (
        claims(t) for t in (secrets.sample_token, secrets.prometheus_token, secrets.operator_token)
    )
    assert (sample["services"], sample["read"]) == (["sample"], False), sample
    assert (prometheus["services"], prometheus["read"]) == ([], True), prometheus
    assert (operator["services"], operator["read"]) == (["*"], True), operator
    assert operator["exp"] - operator["iat"] <= 24 * 3600, "the operator token should not outlive a day"


def test_the_documented_secret_commands_take_the_files_secrets_make_writes(secrets: Secrets) -> None:
    """docs/deploy.md#secrets makes the Kubernetes Secrets from these files: each names one that
    exists, and the sample token is extracted without its variable name or a line end (an
    `authorization` value cannot hold one)."""
    doc = (REPO_ROOT / "docs" / "deploy.md").read_text()
    section = doc[doc.index("### Secrets"):doc.index("### NetworkPolicy")]
    block = section[section.index("```sh"):section.index("```", section.index("```sh") + 5)]
    sources = re.findall(r"--from-file=([^=\s]+)=(.+)$", block, re.M)
    assert {name for name, _ in sources} == {"control-keys.pem", "token"}, sources
    for _, source in sources:
        if source.startswith("<("):
            extracted = run(["bash", "-c", f"cat {source}"], cwd=secrets.dir)
            assert extracted.returncode == 0, extracted.stderr
            assert extracted.stdout == secrets.sample_token, "the extracted token differs"
        else:
            assert (secrets.dir / source).is_file(), source


def test_compose_samples_take_their_token_from_a_secret_and_no_control_port_is_published(compose: dict) -> None:
    services = compose["services"]
    for name in ("sample-rust-1", "sample-rust-2", "sample-python-1", "sample-python-2"):
        spec = services[name]
        assert [Path(e["path"]).name for e in spec["env_file"]] == ["sample.env"], spec["env_file"]
        assert all(e.get("required", True) for e in spec["env_file"]), spec["env_file"]
        assert "--token" not in spec["command"], spec["command"]
        # compose.yaml itself holds no token: it comes from the env file alone.
    assert "SWITCHYARD_TOKEN" not in (DEPLOY / "compose.yaml").read_text().replace("# SWITCHYARD_TOKEN", "")
    for i in (1, 2, 3):
        spec = services[f"gateway-{i}"]
        assert not spec.get("ports"), spec.get("ports")
        _, env = gateway_service_env(compose, f"gateway-{i}")
        assert env.get("SWITCHYARD_CONTROL__AUTH", "required") == "required"
        assert env["SWITCHYARD_CONTROL__READS"] == "credential"
        assert compose_keys_file(compose, f"gateway-{i}", env).name == "control-keys.pem"
    # What is published, is published on the host's loopback only; the control port only
    # through HAProxy's control frontend (documented in docs/deploy.md).
    for name, spec in services.items():
        for port in spec.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
            if port["target"] == 8081:
                assert name == "haproxy", (name, port)
    for secret in compose["secrets"].values():
        assert Path(secret["file"]).parent.name == "secrets", secret


def test_gateway_starts_with_the_compose_environment(
    compose: dict, secrets: Secrets, launcher: Launcher, kafka, tmp_path: Path
) -> None:
    exe = gateway_exe()
    command, env = gateway_service_env(compose, "gateway-1")
    assert command == ["serve"], command
    keys = compose_keys_file(compose, "gateway-1", env)
    assert keys == secrets.keys_file, keys
    checked = run([str(exe), "check-config", *keys_file_at(keys)], env={**child_env(), **env})
    assert checked.returncode == 0, checked.stderr
    assert 'node_id: "gw-1"' in checked.stdout and "kind: Kafka" in checked.stdout, checked.stdout
    assert "auth: Required" in checked.stdout and "reads: Credential" in checked.stdout, checked.stdout
    topic = fresh_topic()
    _, control = start_deployed_gateway(
        launcher, "compose-gateway-1", [str(exe), *command, *loopback_on_broker(kafka, topic), *keys_file_at(keys)], env
    )
    cluster = requests.get(f"{control}/v1/cluster", headers=bearer(secrets.operator_token), timeout=HTTP_TIMEOUT_S)
    assert cluster.json()["node_id"] == "gw-1", cluster.text
    assert_control_requires_credentials(control, secrets)
    # The Rust sample with the environment Compose gives it (its token from sample.env)
    # registers and renews.
    sample_env = {k: v for k, v in compose["services"]["sample-rust-1"]["environment"].items() if v}
    assert sample_env == {"SWITCHYARD_TOKEN": secrets.sample_token}, list(sample_env)
    sample = binary("SAMPLE_SERVICE_BIN", "target/debug/sample-service")
    launcher.start(
        "compose-sample-rust-1",
        [str(sample), "--gateway", control, "--service", "sample", "--instance-id", "rust-1", "--listen", "127.0.0.1:0"],
        SERVICE_READY,
        {**child_env(), **sample_env},
    ).wait_ready()
    wait_registered(control, secrets.operator_token, "sample", "rust-1")


def token_issue(key: Path, *args: str) -> str:
    issued = run([str(gateway_exe()), "token", "issue", "--key", str(key), *args], env=child_env())
    assert issued.returncode == 0, issued.stderr
    return issued.stdout.strip()


@pytest.fixture
def k8s_secrets(tmp_path: Path) -> Secrets:
    """What the Secrets of docs/deploy.md would hold, made here with `switchyard token keygen`
    and `token issue`."""
    made = run([str(gateway_exe()), "token", "keygen", "--out", str(tmp_path / "op")], env=child_env())
    assert made.returncode == 0, made.stderr
    key = tmp_path / "op.key"
    return Secrets(
        dir=tmp_path,
        keys_file=tmp_path / "op.pub.pem",
        sample_token=token_issue(key, "--subject", "sample", "--services", "sample"),
        prometheus_token=token_issue(key, "--subject", "prometheus", "--read"),
        operator_token=token_issue(key, "--subject", "operator", "--services", "*", "--read", "--ttl", "1h"),
    )


def k8s_gateway_args(container: dict, config_file: Path) -> list[str]:
    """The container's args with the ConfigMap's mount path swapped for a local file."""
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    args = [a.replace(f"{mount['mountPath']}/gateway.toml", str(config_file)) for a in container["args"]]
    assert str(config_file) in args, args
    return args


def test_gateway_starts_with_the_kubernetes_configmap_and_env(
    k8s_secrets: Secrets, launcher: Launcher, kafka, tmp_path: Path
) -> None:
    exe = gateway_exe()
    _, container, toml_text = k8s_gateway()
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(toml_text)
    args = k8s_gateway_args(container, config_file)
    env = {"SWITCHYARD_NODE_ID": POD_NAME}  # what the downward API gives
    assert [e["name"] for e in container["env"]] == list(env)
    keys = keys_file_at(k8s_secrets.keys_file)
    checked = run([str(exe), "check-config", *args[1:], *keys], env={**child_env(), **env})
    assert checked.returncode == 0, checked.stderr
    assert f'node_id: "{POD_NAME}"' in checked.stdout, checked.stdout
    assert "auth: Required" in checked.stdout and "reads: Credential" in checked.stdout, checked.stdout
    _, control = start_deployed_gateway(
        launcher, "k8s-gateway", [str(exe), *args, *loopback_on_broker(kafka, fresh_topic()), *keys], env
    )
    cluster = requests.get(f"{control}/v1/cluster", headers=bearer(k8s_secrets.operator_token), timeout=HTTP_TIMEOUT_S)
    assert cluster.json()["node_id"] == POD_NAME, cluster.text
    assert_control_requires_credentials(control, k8s_secrets)
    # The Python sample, as its Deployment runs it: the token in SWITCHYARD_TOKEN.
    launcher.start(
        "k8s-sample-python",
        python_service_argv("--gateway", control, "--service", "sample", "--instance-id", "python-1",
                            "--listen", "127.0.0.1:0"),
        SERVICE_READY,
        {**child_env(), "SWITCHYARD_TOKEN": k8s_secrets.sample_token},
    ).wait_ready()
    wait_registered(control, k8s_secrets.operator_token, "sample", "python-1")


def test_gateway_refuses_a_misspelt_deployed_key(k8s_secrets: Secrets, tmp_path: Path) -> None:
    """The acceptance above means something: the same binary refuses a wrong key, and the
    deployed configuration without a key file."""
    _, _, toml_text = k8s_gateway()
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(toml_text.replace("drain_timeout_ms", "drain_timeout_msec"))
    keys = keys_file_at(k8s_secrets.keys_file)
    checked = run([str(gateway_exe()), "check-config", "--config", str(config_file), *keys], env=child_env())
    assert checked.returncode != 0 and "drain_timeout_msec" in checked.stderr, checked.stderr
    # Where the Secret is not mounted, the gateway does not start (no silent fallback to open).
    config_file.write_text(toml_text)
    checked = run([str(gateway_exe()), "check-config", "--config", str(config_file)], env=child_env())
    assert checked.returncode != 0 and "/etc/switchyard-keys/control-keys.pem" in checked.stderr, checked.stderr


# ---------------------------------------------------------------------------------------------
# Grafana and Prometheus
# ---------------------------------------------------------------------------------------------


def exported_metrics(control: str, token: str) -> dict[str, str]:
    """Metric family name -> type, from a gateway's /metrics (read with `token`)."""
    resp = requests.get(f"{control}/metrics", headers=bearer(token), timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", resp.text, re.M))


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


def test_dashboard_uses_only_metrics_the_gateway_exports(secrets: Secrets, launcher: Launcher) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "switchyard.json").read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"]), "panel ids repeat"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
    exprs = dashboard_exprs(dashboard)
    exe = gateway_exe()
    proc = launcher.start(
        "metrics-gateway",
        [str(exe), "serve", "--public-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
         *keys_file_at(secrets.keys_file)],
        GATEWAY_READY,
        child_env(),
    )
    match = proc.wait_ready()
    # With the token Prometheus is given: what it can scrape is what the dashboard may use.
    exported = exported_metrics(f"http://{match['control']}", secrets.prometheus_token)
    histograms = {name for name, kind in exported.items() if kind == "histogram"}
    used = set()
    for expr in exprs:
        for name in METRIC_NAME.findall(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            family = base if base in histograms else name
            assert family in exported, f"the dashboard queries {name}, which /metrics does not export"
            if name.endswith("_bucket"):
                assert base in histograms, f"{name}: {base} is not a histogram"
            used.add(family)
    # What the dashboard must show, by the metric that carries it.
    for family in (
        "switchyard_http_requests_total", "switchyard_http_request_duration_seconds",
        "switchyard_http_requests_in_flight", "switchyard_upstream_errors_total",
        "switchyard_registry_instances", "switchyard_bus_lag_events", "switchyard_caught_up",
        "switchyard_ready", "switchyard_bus_events_applied_total", "switchyard_evictions_total",
        "switchyard_outbox_events", "process_resident_memory_bytes",
    ):
        assert family in used, f"no panel shows {family}"


def promtool_check(promtool: str, config: dict, token_file: Path, tmp_path: Path) -> None:
    """`promtool check config`, in full, of `config` with its one credentials file swapped for
    `token_file`: promtool checks that the file exists, and the deployed path does not here."""
    (job,) = [j for j in config["scrape_configs"] if "authorization" in j]
    job["authorization"]["credentials_file"] = str(token_file)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_passes_promtool_and_scrapes_each_gateway(
    compose: dict, secrets: Secrets, tmp_path: Path
) -> None:
    promtool = apt_install("promtool", "prometheus")
    result = run([promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "switchyard"]
    assert job["metrics_path"] == "/metrics"
    # It presents the read token Compose mounts into the Prometheus container.
    assert job["authorization"]["type"] == "Bearer"
    (secret,) = compose["services"]["prometheus"]["secrets"]
    assert secret["target"] == job["authorization"]["credentials_file"], (secret, job["authorization"])
    assert Path(compose["secrets"][secret["source"]]["file"]) == secrets.dir / "prometheus.token"
    assert claims(secrets.prometheus_token)["read"] is True
    promtool_check(promtool, config, secrets.dir / "prometheus.token", tmp_path)
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    want = set()
    for i in (1, 2, 3):
        _, env = gateway_service_env(compose, f"gateway-{i}")
        want.add(f"gateway-{i}:{env['SWITCHYARD_CONTROL__LISTEN'].rsplit(':', 1)[1]}")
    assert targets == want, targets


def test_kubernetes_scrape_job_presents_a_token_and_finds_the_control_port(secrets: Secrets, tmp_path: Path) -> None:
    """prometheus-k8s.yml: Debian's promtool is built without Kubernetes discovery, so promtool
    checks the job with its discovery swapped for a static target, and the discovery and
    relabelling are checked here against the manifests."""
    promtool = apt_install("promtool", "prometheus")
    config = yaml.safe_load((DEPLOY / "prometheus-k8s.yml").read_text())
    (job,) = config["scrape_configs"]
    deployment, container, toml_text = k8s_gateway()
    namespace = deployment["metadata"]["namespace"]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["namespaces"]["names"] == [namespace], sd
    keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == labels["app.kubernetes.io/name"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert keep["__meta_kubernetes_pod_container_port_name"] in ports
    control_port = int(tomllib.loads(toml_text)["control"]["listen"].rsplit(":", 1)[1])
    assert ports[keep["__meta_kubernetes_pod_container_port_name"]] == control_port
    assert job["metrics_path"] == "/metrics"
    # The token: a Secret of the monitoring namespace, where the Prometheus Operator mounts it.
    assert job["authorization"]["credentials_file"] == "/etc/prometheus/secrets/switchyard-prometheus-token/token"
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": [f"10.0.0.1:{control_port}"]}]
    promtool_check(promtool, config, secrets.dir / "prometheus.token", tmp_path)


# ---------------------------------------------------------------------------------------------
# HAProxy
# ---------------------------------------------------------------------------------------------


def test_haproxy_cfg_passes_haproxy_check() -> None:
    haproxy = apt_install("haproxy", "haproxy")
    result = run([haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")])
    assert result.returncode == 0, result.stdout + result.stderr
    # The only warnings allowed: the gateways' Docker names do not resolve on this machine.
    for line in (result.stdout + result.stderr).splitlines():
        if "[WARNING]" in line:
            assert re.search(r"could not resolve address 'gateway-[123]'", line), line


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; HAProxy cannot report a port it picked itself, so the
    caller retries if one was taken in between."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def loopback_haproxy_cfg(gateways: list[tuple[str, str]], binds: list[int]) -> str:
    """haproxy.cfg with only the addresses changed: gateway-N's ports become the loopback
    gateways', the binds move to loopback ports, the Docker resolver to a dead address."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    for i, (public, control) in enumerate(gateways, start=1):
        text = text.replace(f"gateway-{i}:8080", public.removeprefix("http://"))
        text = text.replace(f"gateway-{i}:8081", control.removeprefix("http://"))
    for port, bind in zip(binds, (":8080", ":8081", ":8404"), strict=True):
        text, n = re.subn(rf"^(\s*)bind {bind}$", rf"\1bind 127.0.0.1:{port}", text, flags=re.M)
        assert n == 1, bind
    text, n = re.subn(r"^(\s*)nameserver dns \S+$", r"\1nameserver dns 127.0.0.1:9", text, flags=re.M)
    assert n == 1
    assert "gateway-" not in text
    return text


def test_haproxy_cfg_routes_rest_grpc_and_graphql_to_real_gateways(
    secrets: Secrets, launcher: Launcher, kafka, tmp_path: Path
) -> None:
    haproxy = apt_install("haproxy", "haproxy")
    exe = gateway_exe()
    topic = fresh_topic()
    gateways = []
    for i in (1, 2, 3):
        argv = [str(exe), "serve", "--node-id", f"gw-{i}", "--set", "bus.kind=kafka",
                *loopback_on_broker(kafka, topic), *keys_file_at(secrets.keys_file),
                "--set", "shutdown.drain_timeout_ms=1000"]
        gateways.append(start_deployed_gateway(launcher, f"hp-gw-{i}", argv, {}))
    for attempt in range(3):
        public_port, control_port, stats_port = free_ports(3)
        cfg = tmp_path / f"haproxy-{attempt}.cfg"
        cfg.write_text(loopback_haproxy_cfg(gateways, [public_port, control_port, stats_port]))
        assert run([haproxy, "-c", "-f", str(cfg)]).returncode == 0
        proc = launcher.start(f"haproxy-{attempt}", [haproxy, "-db", "-f", str(cfg)], re.compile(r"$^"), child_env())
        public, control = f"http://127.0.0.1:{public_port}", f"http://127.0.0.1:{control_port}"

        def up() -> bool | None:
            if not proc.running():
                return True  # exited: a bind failed; try other ports
            try:
                return requests.get(f"{public}/readyz", timeout=HTTP_TIMEOUT_S).status_code == 200 or None
            except requests.ConnectionError:
                return None

        wait_until(up, "HAProxy's public frontend to answer /readyz 200", 20)
        if proc.running():
            break
    else:
        raise AssertionError(f"HAProxy did not start in 3 tries\n{proc.log_tail()}")
    # REST registration over HTTP/1.1 through the control frontend (HTTP/2 to the gateway):
    # refused without a credential (the challenge passes through HAProxy), taken with one.
    url = f"{control}/v1/services/rest-svc/instances/r-1"
    resp = requests.put(url, json={"addr": "127.0.0.1:9"}, timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer"), resp.headers
    resp = requests.put(url, json={"addr": "127.0.0.1:9"}, headers=bearer(secrets.operator_token), timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    # gRPC registration (h2c) through the control frontend, by the Rust sample with its token
    # in the environment, as compose.yaml gives it.
    sample = binary("SAMPLE_SERVICE_BIN", "target/debug/sample-service")
    service = launcher.start(
        "hp-sample",
        [str(sample), "--gateway", control, "--service", "sample", "--instance-id", "rust-1", "--listen", "127.0.0.1:0"],
        SERVICE_READY,
        {**child_env(), "SWITCHYARD_TOKEN": secrets.sample_token},
    )
    service.wait_ready()
    # Visible on every gateway (through Kafka), and reached through the public frontend
    # whichever gateway HAProxy picks.
    for _, gw_control in gateways:
        wait_registered(gw_control, secrets.operator_token, "sample", "rust-1")
    for _ in range(6):
        resp = requests.get(f"{public}/sample/hello", timeout=HTTP_TIMEOUT_S)
        assert resp.status_code == 200 and resp.json()["instance"] == "rust-1", resp.text
    # GraphQL goes to the sticky backend: the first answer sets the cookie, and a request that
    # carries it stays on that gateway.
    with requests.Session() as session:
        query = {"query": "{ node { nodeId } }"}
        first = session.post(f"{public}/graphql", json=query, timeout=HTTP_TIMEOUT_S)
        assert first.status_code == 200, first.text
        cookie = session.cookies.get("SWITCHYARD_GW")
        assert cookie in {"gw1", "gw2", "gw3"}, first.headers
        for _ in range(4):
            again = session.post(f"{public}/graphql", json=query, timeout=HTTP_TIMEOUT_S)
            assert again.json()["data"]["node"]["nodeId"] == f"gw-{cookie[-1]}", again.text
    # HAProxy's own metrics on the stats frontend.
    stats = requests.get(f"http://127.0.0.1:{stats_port}/metrics", timeout=HTTP_TIMEOUT_S)
    assert stats.status_code == 200 and "haproxy_backend_active_servers" in stats.text

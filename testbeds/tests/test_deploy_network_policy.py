"""What the NetworkPolicies of testbeds/deploy/k8s admit, checked by evaluating them over the
parsed YAML with the rules of the Kubernetes NetworkPolicy API (no cluster runs here; the Go
validator checks that the objects decode and validate).

The evaluation: a pod selected by some policy of a direction admits, in that direction, only
what one rule of one such policy admits; a rule admits a peer that one of its `from`/`to`
entries selects (none: any peer) on a port one of its `ports` entries names (none: any port).
A pod no policy selects admits everything. Named ports resolve against the port's owner: the
selected pod for ingress, the peer for egress.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import yaml

from harness import REPO_ROOT

K8S = REPO_ROOT / "testbeds" / "deploy" / "k8s"
NAMESPACE = "switchyard"


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # named container ports


def ns_labels(namespace: str) -> dict[str, str]:
    """The label every namespace carries (Kubernetes 1.21 and later)."""
    return {"kubernetes.io/metadata.name": namespace}


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """A label selector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_selects(peer: dict, policy_ns: str, other: Pod | None) -> bool:
    """One `from`/`to` entry. `other` None stands for an address outside the cluster's pods,
    which only an ipBlock could select (these manifests use none)."""
    if "ipBlock" in peer:
        raise AssertionError("ipBlock peers are not evaluated here; extend this check")
    if other is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ns_labels(other.namespace)):
            return False
    elif other.namespace != policy_ns:
        return False  # podSelector alone: pods of the policy's own namespace
    return selects(peer.get("podSelector"), other.labels)


def port_matches(rule_ports: list[dict] | None, port_owner: Pod | None, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        want = entry.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            if port_owner is not None and port_owner.ports.get(want) == port:
                return True
        elif want <= port <= entry.get("endPort", want):
            return True
    return False


def load_policies() -> list[dict]:
    policies = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "NetworkPolicy":
                policies.append(doc)
    return policies


def admits(policies: list[dict], direction: str, pod: Pod, other: Pod | None, port: int, protocol: str = "TCP") -> bool:
    """Whether `pod` admits traffic with `other`: for "Ingress", from `other` to `pod`'s
    `port`; for "Egress", from `pod` to `other`'s `port`."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    applying = [
        p for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selects(p["spec"]["podSelector"], pod.labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not applying:
        return True
    port_owner = pod if direction == "Ingress" else other
    for policy in applying:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(peer_selects(p, policy["metadata"]["namespace"], other) for p in peers)
            if peer_ok and port_matches(rule.get("ports"), port_owner, port, protocol):
                return True
    return False


GATEWAY = Pod(NAMESPACE, {"app.kubernetes.io/name": "switchyard-gateway"}, {"public": 8080, "control": 8081})
SAMPLE_RUST = Pod(NAMESPACE, {"app.kubernetes.io/name": "sample-rust"}, {"grpc": 50051})
SAMPLE_PYTHON = Pod(NAMESPACE, {"app.kubernetes.io/name": "sample-python"}, {"grpc": 50051})
OTHER_IN_NS = Pod(NAMESPACE, {"app": "something-else"}, {"http": 9000})
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
INGRESS_CONTROLLER = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
ELSEWHERE = Pod("default", {"app": "curious"}, {"http": 8080})
KAFKA = Pod("kafka", {"strimzi.io/kind": "Kafka"}, {"tcp-clients": 9092})
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})


def test_policies_select_the_pods_the_manifests_run() -> None:
    """The selectors and named ports of the policies match the Deployments' pods as written."""
    deployments = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment":
                deployments[doc["metadata"]["name"]] = doc
    for name, pod in (("switchyard-gateway", GATEWAY), ("sample-rust", SAMPLE_RUST), ("sample-python", SAMPLE_PYTHON)):
        template = deployments[name]["spec"]["template"]
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] == pod.labels["app.kubernetes.io/name"]
        (container,) = template["spec"]["containers"]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == pod.ports, name
        assert deployments[name]["metadata"]["namespace"] == pod.namespace
    policies = load_policies()
    for pod in (GATEWAY, SAMPLE_RUST, SAMPLE_PYTHON):
        for direction in ("Ingress", "Egress"):
            assert any(
                selects(p["spec"]["podSelector"], pod.labels) and direction in p["spec"]["policyTypes"]
                for p in policies
            ), (pod.labels, direction)


def test_gateways_admit_clients_everywhere_and_control_from_the_namespace_and_monitoring() -> None:
    policies = load_policies()
    for client in (INGRESS_CONTROLLER, ELSEWHERE, PROMETHEUS, SAMPLE_RUST):
        assert admits(policies, "Ingress", GATEWAY, client, 8080), client
    for caller in (SAMPLE_RUST, SAMPLE_PYTHON, OTHER_IN_NS, GATEWAY, PROMETHEUS):
        assert admits(policies, "Ingress", GATEWAY, caller, 8081), caller
    for caller in (INGRESS_CONTROLLER, ELSEWHERE, KAFKA, None):
        assert not admits(policies, "Ingress", GATEWAY, caller, 8081), caller
    # No other port of the gateway is open, whoever asks.
    assert not admits(policies, "Ingress", GATEWAY, SAMPLE_RUST, 9999)
    assert not admits(policies, "Ingress", GATEWAY, SAMPLE_RUST, 8081, "UDP")


def test_gateways_reach_dns_kafka_and_the_namespace_instances_only() -> None:
    policies = load_policies()
    assert admits(policies, "Egress", GATEWAY, KUBE_DNS, 53, "UDP")
    assert admits(policies, "Egress", GATEWAY, KUBE_DNS, 53, "TCP")
    assert admits(policies, "Egress", GATEWAY, KAFKA, 9092)
    assert admits(policies, "Egress", GATEWAY, SAMPLE_RUST, 50051)
    assert admits(policies, "Egress", GATEWAY, OTHER_IN_NS, 9000)
    # Not Kafka's other ports, not DNS elsewhere, not pods of other namespaces, not outside
    # addresses (the cloud metadata service among them).
    assert not admits(policies, "Egress", GATEWAY, KAFKA, 22)
    assert not admits(policies, "Egress", GATEWAY, ELSEWHERE, 53, "UDP")
    assert not admits(policies, "Egress", GATEWAY, ELSEWHERE, 8080)
    assert not admits(policies, "Egress", GATEWAY, PROMETHEUS, 9090)
    assert not admits(policies, "Egress", GATEWAY, None, 80)


def test_samples_take_requests_from_the_gateways_and_reach_only_their_control_port() -> None:
    policies = load_policies()
    for sample in (SAMPLE_RUST, SAMPLE_PYTHON):
        assert admits(policies, "Ingress", sample, GATEWAY, 50051)
        for caller in (SAMPLE_PYTHON, OTHER_IN_NS, PROMETHEUS, INGRESS_CONTROLLER, ELSEWHERE, None):
            assert not admits(policies, "Ingress", sample, caller, 50051), (sample, caller)
        assert admits(policies, "Egress", sample, GATEWAY, 8081)
        assert admits(policies, "Egress", sample, KUBE_DNS, 53, "UDP")
        for target, port in ((GATEWAY, 8080), (KAFKA, 9092), (ELSEWHERE, 8080), (None, 443)):
            assert not admits(policies, "Egress", sample, target, port), (sample, target, port)


def test_the_evaluation_sees_a_widened_policy() -> None:
    """The checks above can fail: with the control rule's `from` removed, or a policy's
    Egress type dropped, the evaluation admits what the manifests do not."""
    policies = load_policies()
    widened = copy.deepcopy(policies)
    (gateway_policy,) = [p for p in widened if p["metadata"]["name"] == "switchyard-gateway"]
    (control_rule,) = [r for r in gateway_policy["spec"]["ingress"] if r.get("from")]
    del control_rule["from"]
    assert admits(widened, "Ingress", GATEWAY, ELSEWHERE, 8081)
    assert not admits(policies, "Ingress", GATEWAY, ELSEWHERE, 8081)
    no_egress = copy.deepcopy(policies)
    for p in no_egress:
        p["spec"]["policyTypes"] = ["Ingress"]
    assert admits(no_egress, "Egress", GATEWAY, None, 80)

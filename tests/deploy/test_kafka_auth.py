"""The topics Job and KEDA reach Kafka as the workers do: the Job runs scripts/topics.py from the
worker's image with the worker's settings and credentials (PLAINTEXT, SASL_SSL, mutual TLS), the
TriggerAuthentication reads the keys the example Secret has and tells KEDA what the settings tell
the worker, and both NetworkPolicies let the secured listeners through."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pydantic
import pytest

from app.settings import CONFIG_ENV, ENV_PREFIX, KafkaSettings, Settings
from tests.deploy import kustomize
from tests.deploy.conftest import (
    EXAMPLE_SECRET,
    KAFKA_EXAMPLE,
    STATEFULSET,
    TOPICS_JOB,
    WORKER_CONTAINER,
    pod_settings,
)
from tests.deploy.kustomize import Manifest
from tests.deploy.test_consistency import job_partitions
from tests.deploy.tools import REPO
from tests.deploy.workload import container, container_port, find, object_data, pod_spec

KAFKA_OBJECTS = "ftp-pooler-kafka"
# KEDA's kafka scaler: `sasl` values for kafka.sasl_mechanism, `tls` for kafka.security_protocol.
KEDA_SASL = {None: "none", "PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256"} | {
    "SCRAM-SHA-512": "scram_sha512"
}
KEDA_TLS = {"PLAINTEXT": "disable", "SASL_PLAINTEXT": "disable", "SSL": "enable"} | {
    "SASL_SSL": "enable"
}
PEM = "-----BEGIN {0}-----\n(test)\n-----END {0}-----\n"


def _mutual_tls(examples: list[Manifest]) -> list[Manifest]:
    """The example objects turned into the mutual-TLS variant kafka.example.yaml describes."""
    objects = copy.deepcopy(examples)
    config_map = find(objects, "ConfigMap", KAFKA_OBJECTS)
    config_map["data"] = {
        f"{ENV_PREFIX}KAFKA__SECURITY_PROTOCOL": "SSL",
        f"{ENV_PREFIX}KAFKA__SSL_CA_FILE": "/etc/ftp-pooler/kafka/ca.pem",
        f"{ENV_PREFIX}KAFKA__SSL_CERT_FILE": "/etc/ftp-pooler/kafka/cert.pem",
        f"{ENV_PREFIX}KAFKA__SSL_KEY_FILE": "/etc/ftp-pooler/kafka/key.pem",
    }
    secret = find(objects, "Secret", KAFKA_OBJECTS)
    secret["stringData"] |= {
        "sasl": "none",
        "username": "",
        "password": "",
        "cert": PEM.format("CERTIFICATE"),
        "key": PEM.format("PRIVATE KEY"),
    }
    return objects


@pytest.fixture(scope="module")
def kafka_examples() -> list[Manifest]:
    return kustomize.load_documents(KAFKA_EXAMPLE)


@pytest.fixture(params=["plaintext", "sasl_ssl", "mutual_tls"])
def namespace(
    request: pytest.FixtureRequest, full: list[Manifest], kafka_examples: list[Manifest]
) -> tuple[str, list[Manifest]]:
    """What the namespace holds: the full overlay, the connections Secret, and for a secured
    cluster the ftp-pooler-kafka ConfigMap and Secret (the example, or its mutual-TLS variant)."""
    kafka = {"plaintext": [], "sasl_ssl": kafka_examples, "mutual_tls": _mutual_tls(kafka_examples)}
    return request.param, full + kustomize.load_documents(EXAMPLE_SECRET) + kafka[request.param]


def _job(full: list[Manifest]) -> tuple[Manifest, Manifest]:
    job = find(full, "Job", TOPICS_JOB)
    return job, container(job)


def _worker(full: list[Manifest]) -> tuple[Manifest, Manifest]:
    statefulset = find(full, "StatefulSet", STATEFULSET)
    return statefulset, container(statefulset, WORKER_CONTAINER)


def test_job_runs_the_topics_tool_with_enough_partitions_for_every_worker(
    full: list[Manifest],
) -> None:
    """`python -m scripts.topics` (the module the image ships), with at least as many
    partitions as the StatefulSet's starting replicas and KEDA's maxReplicaCount."""
    _, ctr = _job(full)
    assert ctr["command"] == ["python", "-m", "scripts.topics"]
    assert (REPO / "scripts" / "topics.py").is_file()
    partitions = job_partitions(full)
    assert find(full, "StatefulSet", STATEFULSET)["spec"]["replicas"] <= partitions
    assert find(full, "ScaledObject")["spec"]["maxReplicaCount"] <= partitions


def _setting_exists(name: str) -> bool:
    """``name`` is FTP_POOLER_CONFIG or FTP_POOLER_<SECTION>__<KEY> of app.settings."""
    if name == CONFIG_ENV:
        return True
    found = re.fullmatch(rf"{ENV_PREFIX}([A-Z]+)__([A-Z_]+)", name)
    if not found:
        return False
    section = Settings.model_fields.get(found.group(1).lower())
    model = section.annotation if section else None
    if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
        return False
    return found.group(2).lower() in model.model_fields


def test_job_and_example_variables_are_settings_keys(
    full: list[Manifest], kafka_examples: list[Manifest]
) -> None:
    """Every variable of the Job, and every key of the example ftp-pooler-kafka ConfigMap (its
    envFrom), names a key of app.settings: a typo would be ignored silently."""
    _, ctr = _job(full)
    names = [var["name"] for var in ctr["env"]]
    names += list(object_data(find(kafka_examples, "ConfigMap", KAFKA_OBJECTS)))
    assert names and [n for n in names if not _setting_exists(n)] == []
    assert _setting_exists(f"{ENV_PREFIX}KAFKA__SASL_USERNAME")
    assert not _setting_exists(f"{ENV_PREFIX}KAFKA__SASL_USER")


def test_job_takes_its_kafka_settings_and_credentials_from_where_the_worker_does(
    full: list[Manifest],
) -> None:
    """The Job's variables, envFrom, config and credentials volumes are the worker's own, item
    for item, mounted at the same paths."""
    job, job_ctr = _job(full)
    statefulset, worker_ctr = _worker(full)
    worker_env = {var["name"]: var for var in worker_ctr["env"]}
    for var in job_ctr["env"]:
        assert worker_env[var["name"]] == var
    assert job_ctr["envFrom"] == worker_ctr["envFrom"]
    worker_volumes = {v["name"]: v for v in pod_spec(statefulset)["volumes"]}
    worker_mounts = {m["name"]: m for m in worker_ctr["volumeMounts"]}
    for volume in pod_spec(job)["volumes"]:
        assert worker_volumes[volume["name"]] == volume
    for mount in job_ctr["volumeMounts"]:
        assert worker_mounts[mount["name"]] == mount
    assert pod_spec(job)["securityContext"] == pod_spec(statefulset)["securityContext"]


def test_job_and_worker_load_the_same_kafka_settings(
    namespace: tuple[str, list[Manifest]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loaded as app.settings does in each pod (env, envFrom, mounted files), the Job's
    KafkaSettings equal the worker's, for a PLAINTEXT, a SASL_SSL and a mutual-TLS cluster."""
    variant, objects = namespace
    loaded: list[KafkaSettings] = []
    for workload, ctr in (_worker(objects), _job(objects)):
        _, settings = pod_settings(workload, ctr, objects, tmp_path, monkeypatch)
        loaded.append(settings.kafka)
    worker, job = loaded
    assert job == worker
    expected = {"plaintext": "PLAINTEXT", "sasl_ssl": "SASL_SSL", "mutual_tls": "SSL"}[variant]
    assert worker.security_protocol == expected
    assert worker.replication_factor and worker.min_insync_replicas
    assert worker.min_insync_replicas <= worker.replication_factor


def test_secured_pods_read_the_secret_as_files(
    full: list[Manifest],
    kafka_examples: list[Manifest],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the example objects the pods log in as the Secret's user with the Secret's password
    (a file, never a variable) and trust the Secret's CA."""
    objects = full + kustomize.load_documents(EXAMPLE_SECRET) + kafka_examples
    secret = object_data(find(kafka_examples, "Secret", KAFKA_OBJECTS))
    for workload, ctr in (_worker(objects), _job(objects)):
        env, settings = pod_settings(workload, ctr, objects, tmp_path, monkeypatch)
        kafka = settings.kafka
        assert kafka.sasl_username == secret["username"]
        assert kafka.sasl_secret() == secret["password"]
        assert kafka.sasl_password_file is not None and kafka.sasl_password is None
        assert f"{ENV_PREFIX}KAFKA__SASL_PASSWORD" not in env
        assert kafka.ssl_ca_file is not None
        assert kafka.ssl_ca_file.read_text(encoding="utf-8") == secret["ca"]


def test_credentials_volume_is_optional_and_not_world_readable(full: list[Manifest]) -> None:
    """A PLAINTEXT cluster creates no ftp-pooler-kafka objects: every reference to them is
    optional. The password and key files are readable by the pod's user and group only."""
    for workload, ctr in (_worker(full), _job(full)):
        (volume,) = [
            v
            for v in pod_spec(workload)["volumes"]
            if v.get("secret", {}).get("secretName") == KAFKA_OBJECTS
        ]
        assert volume["secret"]["optional"] is True
        assert volume["secret"]["defaultMode"] & 0o007 == 0
        refs = [
            v["valueFrom"]["secretKeyRef"]
            for v in ctr["env"]
            if "secretKeyRef" in v.get("valueFrom", {})
        ]
        refs += [source["configMapRef"] for source in ctr["envFrom"]]
        assert refs and all(ref["name"] == KAFKA_OBJECTS and ref["optional"] for ref in refs)


def test_trigger_authentication_reads_every_key_of_the_example_secret(
    full: list[Manifest], kafka_examples: list[Manifest]
) -> None:
    """KEDA's seven kafka parameters, each from the key of the same name in the Secret the
    workers mount, and the example Secret has exactly those keys."""
    refs = find(full, "TriggerAuthentication")["spec"]["secretTargetRef"]
    secret = find(kafka_examples, "Secret", KAFKA_OBJECTS)
    assert {ref["name"] for ref in refs} == {secret["metadata"]["name"]}
    assert all(ref["parameter"] == ref["key"] for ref in refs)
    keys = {ref["key"] for ref in refs}
    assert keys == {"sasl", "username", "password", "tls", "ca", "cert", "key"}
    assert keys == set(object_data(secret))
    statefulset, _ = _worker(full)
    (volume,) = [v for v in pod_spec(statefulset)["volumes"] if v["name"] == "kafka-credentials"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert {item["key"] for item in volume["secret"]["items"]} <= keys


@pytest.mark.parametrize("variant", ["sasl_ssl", "mutual_tls"])
def test_example_secret_tells_keda_what_the_settings_tell_the_worker(
    variant: str,
    full: list[Manifest],
    kafka_examples: list[Manifest],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Secret's `sasl` and `tls` are KEDA's spelling of the worker's sasl_mechanism and
    security_protocol, and cert/key are given together, as KEDA requires."""
    examples = kafka_examples if variant == "sasl_ssl" else _mutual_tls(kafka_examples)
    objects = full + kustomize.load_documents(EXAMPLE_SECRET) + examples
    statefulset, ctr = _worker(objects)
    _, settings = pod_settings(statefulset, ctr, objects, tmp_path, monkeypatch)
    secret = object_data(find(examples, "Secret", KAFKA_OBJECTS))
    assert secret["sasl"] == KEDA_SASL[settings.kafka.sasl_mechanism]
    assert secret["tls"] == KEDA_TLS[settings.kafka.security_protocol]
    assert bool(secret["cert"]) == bool(secret["key"]) == bool(settings.kafka.ssl_cert_file)
    assert bool(secret["ca"]) == bool(settings.kafka.ssl_ca_file)


def _kafka_ports(policy: Manifest, ctr: Manifest) -> set[int]:
    """TCP ports of the egress rules that do not only lead to FTP (port 21) or DNS."""
    ports = set()
    for rule in policy["spec"]["egress"]:
        numbers = {container_port(ctr, p["port"]) for p in rule.get("ports", [])}
        if numbers and not numbers & {21, 53}:
            ports |= numbers
    return ports


def test_network_policies_let_worker_and_job_reach_the_documented_kafka_ports(
    full: list[Manifest],
) -> None:
    """Both NetworkPolicies open the same Kafka ports: 9092 and the secured listeners the READMEs
    name (the Secured Kafka example's port included), to any namespace."""
    _, worker_ctr = _worker(full)
    _, job_ctr = _job(full)
    worker = _kafka_ports(find(full, "NetworkPolicy", "ftp-pooler"), worker_ctr) - {
        container_port(worker_ctr, "http")
    }
    job = _kafka_ports(find(full, "NetworkPolicy", "ftp-pooler-topics"), job_ctr)
    assert worker == job
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Secured Kafka") : readme.index("### Topics")]
    documented = {int(p) for p in re.findall(r"BOOTSTRAP_SERVERS=\S+?:(\d+)", section)}
    k8s_readme = (REPO / "k8s" / "README.md").read_text(encoding="utf-8")
    documented |= {int(p) for p in re.findall(r"`(9\d{3})`", k8s_readme)}
    assert documented >= {9092, 9093, 9094, 9096}
    assert documented <= worker, documented - worker

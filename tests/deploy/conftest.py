"""Fixtures for the deployment tests: rendered manifests and the settings a pod would load."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from app.settings import CONFIG_ENV, CONNECTIONS_ENV, ENV_PREFIX, Settings, load_settings
from models.connections import Registry, load_registry
from tests.deploy import kustomize
from tests.deploy.kustomize import Manifest
from tests.deploy.tools import REPO
from tests.deploy.workload import container, file_in_pod, find, pod_spec, resolve_env

K8S = REPO / "k8s"
COMPONENTS = sorted(
    p for p in (K8S / "components").iterdir() if (p / "kustomization.yaml").is_file()
)
EXAMPLE_SECRET = K8S / "secret.example.yaml"
# The optional ftp-pooler-kafka ConfigMap and Secret of a secured Kafka (SASL_SSL).
KAFKA_EXAMPLE = K8S / "kafka.example.yaml"
EXAMPLES = (EXAMPLE_SECRET, KAFKA_EXAMPLE)
TOPICS_JOB = "ftp-pooler-topics"
STATEFULSET = "ftp-pooler"
WORKER_CONTAINER = "worker"
EXAMPLE_IMAGE = "registry.example.com/data-platform/ftp-pooler"


def write_example_overlay(directory: Path) -> Path:
    """The overlay k8s/README.md shows: the base, every component, the image from a registry."""
    directory.mkdir(parents=True, exist_ok=True)
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, directory)],
        # Sorted: components/keda comes before components/keda-auth, which patches its trigger.
        "components": [os.path.relpath(c, directory) for c in COMPONENTS],
        "images": [{"name": "ftp-pooler", "newName": EXAMPLE_IMAGE, "newTag": "0.1.0"}],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def base() -> list[Manifest]:
    return kustomize.build(K8S)


@pytest.fixture(scope="session")
def overlay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_overlay(tmp_path_factory.mktemp("overlay") / "example")


@pytest.fixture(scope="session")
def full(overlay_dir: Path) -> list[Manifest]:
    """The base with every optional component, as a user with KEDA and Prometheus applies it."""
    return kustomize.build(overlay_dir)


@pytest.fixture(scope="session")
def example_secrets() -> list[Manifest]:
    return kustomize.load_documents(EXAMPLE_SECRET)


@dataclass
class Worker:
    """A worker pod as rendered, with the settings and registry it would load at start-up."""

    statefulset: Manifest
    container: Manifest
    env: dict[str, str]
    settings: Settings
    registry: Registry


def _mounted(workload: Manifest, ctr: Manifest, path: str) -> bool:
    """``path`` is on a ConfigMap or Secret volume of the container."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    return any(
        (path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"))
        and {"configMap", "secret"} & volumes.get(m["name"], {}).keys()
        for m in ctr.get("volumeMounts", [])
    )


def pod_settings(
    workload: Manifest,
    ctr: Manifest,
    objects: list[Manifest],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[dict[str, str], Settings]:
    """Load settings exactly as app.settings does in the pod: its env, its mounted files.

    ``objects`` are what the namespace holds (rendered and created by hand). A variable naming a
    file on a ConfigMap or Secret volume is pointed at a local copy of what the pod would read."""
    env = resolve_env(ctr, objects)
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if value.startswith("/") and _mounted(workload, ctr, value):
            local = tmp_path / "pod" / value.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(file_in_pod(workload, ctr, value, objects), "utf-8")
            value = str(local)
        monkeypatch.setenv(name, value)
    return env, load_settings()


@pytest.fixture
def worker(
    full: list[Manifest],
    example_secrets: list[Manifest],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Worker:
    """The worker of the full overlay on a PLAINTEXT cluster (no ftp-pooler-kafka objects)."""
    statefulset = find(full, "StatefulSet", STATEFULSET)
    ctr = container(statefulset, WORKER_CONTAINER)
    objects = full + example_secrets
    env, settings = pod_settings(statefulset, ctr, objects, tmp_path, monkeypatch)
    assert CONFIG_ENV in env and CONNECTIONS_ENV in env
    registry = load_registry(settings.connections_file)
    return Worker(statefulset, ctr, env, settings, registry)

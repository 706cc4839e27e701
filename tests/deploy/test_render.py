"""k8s/ renders as a kustomize base, its components add only their own objects, and a real
kustomize (kubectl's, where installed) renders exactly what tests/deploy/kustomize.py does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import kustomize
from tests.deploy.conftest import EXAMPLE_IMAGE, EXAMPLE_SECRET, K8S, require_tool
from tests.deploy.kustomize import Manifest
from tests.deploy.workload import container, find

BASE_KINDS = {
    ("ServiceAccount", "ftp-pooler"),
    ("ConfigMap", "ftp-pooler-config"),
    ("Service", "ftp-pooler-headless"),
    ("Service", "ftp-pooler-api"),
    ("StatefulSet", "ftp-pooler"),
    ("PodDisruptionBudget", "ftp-pooler"),
    ("NetworkPolicy", "ftp-pooler"),
}
COMPONENT_KINDS = {
    ("ServiceMonitor", "ftp-pooler"),
    ("ScaledObject", "ftp-pooler"),
    ("Job", "ftp-pooler-topics"),
    ("NetworkPolicy", "ftp-pooler-topics"),
}


def _kinds(manifests: list[Manifest]) -> set[tuple[str, str]]:
    return {(m["kind"], m["metadata"]["name"]) for m in manifests}


def _by_identity(manifests: list[Manifest]) -> dict[tuple[str, str, str], Manifest]:
    return {
        (m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"]): m for m in manifests
    }


def test_base_holds_only_core_objects_and_never_the_example_secret(base: list[Manifest]) -> None:
    """Applying the base needs no CRD and cannot overwrite the real connections Secret."""
    assert _kinds(base) == BASE_KINDS


def test_components_add_exactly_their_objects(full: list[Manifest]) -> None:
    """ServiceMonitor, ScaledObject and the topics Job come only with their components."""
    assert _kinds(full) == BASE_KINDS | COMPONENT_KINDS


def test_everything_lands_in_the_kustomization_namespace(full: list[Manifest]) -> None:
    """One namespace for all objects, so the Secret created by hand sits beside them."""
    (namespace,) = {m["metadata"]["namespace"] for m in full}
    (base_kustomization,) = kustomize.load_documents(K8S / "kustomization.yaml")
    assert namespace == base_kustomization["namespace"]
    (secret,) = kustomize.load_documents(EXAMPLE_SECRET)
    assert secret["metadata"]["namespace"] == namespace


def test_overlay_image_rewrite_reaches_the_worker_only(full: list[Manifest]) -> None:
    """The overlay's `images` entry names the image the StatefulSet runs."""
    worker = container(find(full, "StatefulSet", "ftp-pooler"))
    assert worker["image"] == f"{EXAMPLE_IMAGE}:0.1.0"
    job = container(find(full, "Job", "ftp-pooler-topics"))
    assert job["image"].startswith("apache/kafka:")


def test_every_manifest_file_is_used() -> None:
    """A manifest file no kustomization lists would silently never be applied."""
    listed: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        (doc,) = kustomize.load_documents(kustomization)
        for entry in doc.get("resources", []):
            listed.add((kustomization.parent / entry).resolve())
    manifests = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert manifests - listed == {EXAMPLE_SECRET.resolve()}


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    """An unsupported kustomization field is an error, not silently dropped output."""
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\ncommonLabels: {a: b}\n", encoding="utf-8"
    )
    with pytest.raises(kustomize.KustomizeError, match="commonLabels"):
        kustomize.build(tmp_path)


def _real_kustomize(directory: Path) -> list[Manifest]:
    kubectl = require_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("which", ["base", "overlay with every component"])
def test_python_render_equals_kubectl_kustomize(which: str, overlay_dir: Path) -> None:
    """kubectl kustomize (kustomize v5) produces the same objects, field for field."""
    directory = K8S if which == "base" else overlay_dir
    ours = _by_identity(kustomize.build(directory))
    theirs = _by_identity(_real_kustomize(directory))
    assert ours.keys() == theirs.keys()
    for key, manifest in ours.items():
        assert manifest == theirs[key], key

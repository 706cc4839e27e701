"""k8s/ renders with the real `kustomize build` as a base, its components add only their own
objects, and the overlay k8s/README.md recommends (with `patches`) renders too."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.deploy import kustomize
from tests.deploy.conftest import EXAMPLE_IMAGE, EXAMPLES, K8S, STATEFULSET, TOPICS_JOB
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
    ("TriggerAuthentication", "ftp-pooler-kafka"),
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
    """ServiceMonitor, ScaledObject, TriggerAuthentication and the topics Job come only with
    their components."""
    assert _kinds(full) == BASE_KINDS | COMPONENT_KINDS


def test_everything_lands_in_the_kustomization_namespace(full: list[Manifest]) -> None:
    """One namespace for all objects, so the Secrets created by hand sit beside them."""
    (namespace,) = {m["metadata"]["namespace"] for m in full}
    (base_kustomization,) = kustomize.load_documents(K8S / "kustomization.yaml")
    assert namespace == base_kustomization["namespace"]
    for example in EXAMPLES:
        for doc in kustomize.load_documents(example):
            assert doc["metadata"]["namespace"] == namespace, example.name


def test_overlay_image_rewrite_reaches_the_worker_and_the_topics_job(
    full: list[Manifest],
) -> None:
    """The overlay's `images` entry names the image the StatefulSet and the topics Job run: the
    Job creates the topics with the worker's own code and settings."""
    worker = container(find(full, "StatefulSet", STATEFULSET))
    assert worker["image"] == f"{EXAMPLE_IMAGE}:0.1.0"
    job = container(find(full, "Job", TOPICS_JOB))
    assert job["image"] == worker["image"]
    assert job["imagePullPolicy"] == worker["imagePullPolicy"]


def test_keda_auth_component_points_the_trigger_at_its_trigger_authentication(
    full: list[Manifest],
) -> None:
    """components/keda-auth adds the TriggerAuthentication and the trigger's authenticationRef."""
    (trigger,) = find(full, "ScaledObject")["spec"]["triggers"]
    auth = find(full, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {
        "kind": "TriggerAuthentication",
        "name": auth["metadata"]["name"],
    }


def test_keda_without_keda_auth_has_no_authentication_ref(tmp_path: Path) -> None:
    """A PLAINTEXT cluster uses components/keda alone: no TriggerAuthentication, no reference
    to one (KEDA would refuse a trigger naming a missing one)."""
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, tmp_path)],
        "components": [os.path.relpath(K8S / "components" / "keda", tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    rendered = kustomize.build(tmp_path)
    assert "TriggerAuthentication" not in {m["kind"] for m in rendered}
    (trigger,) = find(rendered, "ScaledObject")["spec"]["triggers"]
    assert "authenticationRef" not in trigger


def test_every_manifest_file_is_used() -> None:
    """A manifest file no kustomization lists would silently never be applied."""
    listed: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        (doc,) = kustomize.load_documents(kustomization)
        for entry in doc.get("resources", []):
            listed.add((kustomization.parent / entry).resolve())
    manifests = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert manifests - listed == {example.resolve() for example in EXAMPLES}


def test_a_kustomization_kustomize_refuses_is_an_error(tmp_path: Path) -> None:
    """A failed `kustomize build` raises with kustomize's message instead of rendering nothing."""
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\ncommonLabelz: {a: b}\n", encoding="utf-8"
    )
    with pytest.raises(kustomize.KustomizeError, match="commonLabelz"):
        kustomize.build(tmp_path)


def _readme_overlay_with_patches() -> Manifest:
    """The shared-storage overlay k8s/README.md recommends (its YAML block with `patches`)."""
    text = (K8S / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    (snippet,) = [b for b in blocks if "patches:" in b]
    overlay: Manifest = yaml.safe_load(textwrap.dedent(snippet))
    return overlay


def test_readme_shared_storage_overlay_with_patches_renders(tmp_path: Path) -> None:
    """The README's `patches` overlay renders: the storage claim template is replaced by the
    shared ReadWriteMany claim, and everything else of the base stays."""
    overlay = _readme_overlay_with_patches()
    overlay["resources"] = [os.path.relpath(K8S, tmp_path), *overlay["resources"]]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "ftp-pooler-storage"},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "100Gi"}},
        },
    }
    (tmp_path / "shared-storage.yaml").write_text(yaml.safe_dump(claim), encoding="utf-8")

    rendered = kustomize.build(tmp_path)

    assert _kinds(rendered) == BASE_KINDS | {("PersistentVolumeClaim", "ftp-pooler-storage")}
    statefulset = find(rendered, "StatefulSet", "ftp-pooler")
    templates = [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    assert "storage" not in templates and templates
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["storage"]["persistentVolumeClaim"] == {"claimName": "ftp-pooler-storage"}
    mounts = {m["name"] for m in container(statefulset, "worker")["volumeMounts"]}
    assert "storage" in mounts

"""A small `kustomize build` in Python: the subset k8s/ uses, refusing anything it does not know.

Supported: resources (files and directories), components, namespace and images. Anything else in a
kustomization is an error rather than silently ignored, so the renderer never claims an output
kustomize would not produce. test_render.py compares it with a real kustomize when one is installed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "namespace", "images"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is inconsistent."""


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document in a file."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def build(directory: Path) -> list[Manifest]:
    """Render the kustomization in ``directory`` like ``kustomize build`` (order aside)."""
    return _build(directory, expected_kind="Kustomization")


def _read_kustomization(directory: Path, expected_kind: str) -> Manifest:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    (kustomization,) = load_documents(path)
    kind = kustomization.get("kind", "Kustomization")
    if kind != expected_kind:
        raise KustomizeError(f"{path}: kind {kind}, expected {expected_kind}")
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{path}: unsupported fields {sorted(unknown)}")
    return kustomization


def _build(directory: Path, expected_kind: str) -> list[Manifest]:
    kustomization = _read_kustomization(directory, expected_kind)
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            manifests.extend(_build(target, expected_kind="Kustomization"))
        else:
            manifests.extend(copy.deepcopy(load_documents(target)))
    for entry in kustomization.get("components", []):
        component_dir = (directory / entry).resolve()
        manifests.extend(_build(component_dir, expected_kind="Component"))
    if "namespace" in kustomization:
        for manifest in manifests:
            if manifest["kind"] not in CLUSTER_SCOPED_KINDS:
                manifest["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for container in containers(manifests):
            container["image"] = _rewrite_image(container["image"], image)
    _check_unique(manifests, directory)
    return manifests


def pod_specs(manifests: list[Manifest]) -> Iterator[Manifest]:
    """The pod spec of every workload (Pod, pod templates, Job templates of CronJobs)."""
    for manifest in manifests:
        spec = manifest.get("spec", {})
        if manifest["kind"] == "Pod":
            yield spec
        elif manifest["kind"] == "CronJob":
            yield spec["jobTemplate"]["spec"]["template"]["spec"]
        elif "template" in spec and "spec" in spec["template"]:
            yield spec["template"]["spec"]


def containers(manifests: list[Manifest]) -> Iterator[Manifest]:
    for spec in pod_specs(manifests):
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def _rewrite_image(reference: str, image: Manifest) -> str:
    name, tag, digest = split_image(reference)
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    tag = image.get("newTag", tag)
    if digest and "newTag" not in image:
        return f"{name}@{digest}"
    return f"{name}:{tag}" if tag else name


def split_image(reference: str) -> tuple[str, str | None, str | None]:
    """``registry/name:tag@digest`` -> (name, tag, digest); a registry port is not a tag."""
    digest = None
    if "@" in reference:
        reference, digest = reference.split("@", 1)
    tag = None
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        reference, tag = reference.rsplit(":", 1)
    return reference, tag, digest


def _check_unique(manifests: list[Manifest], directory: Path) -> None:
    seen: set[tuple[str, str, str | None, str]] = set()
    for manifest in manifests:
        group = manifest["apiVersion"].rpartition("/")[0]
        meta = manifest["metadata"]
        key = (group, manifest["kind"], meta.get("namespace"), meta["name"])
        if key in seen:
            raise KustomizeError(f"{directory}: {key} is defined twice")
        seen.add(key)

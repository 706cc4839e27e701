"""Every manifest validates: core kinds against the Kubernetes OpenAPI schemas bundled by
kubernetes-validate (strict: unknown fields fail), custom resources against our own structural
schemas (tests/deploy/crd_schemas.py), since the core schemas do not know them."""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version
from referencing import Registry, Resource

from tests.deploy import kustomize
from tests.deploy.conftest import K8S, write_example_overlay
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.kustomize import Manifest

# The oldest Kubernetes minor we claim (PDB unhealthyPodEvictionPolicy, StatefulSet PVC retention
# and NetworkPolicy endPort are all on by default there) and the newest one bundled.
KUBERNETES_VERSIONS = ("1.30", ".".join(latest_version().split(".")[:2]))


def _raw_documents() -> list[tuple[str, Manifest]]:
    documents = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for index, doc in enumerate(kustomize.load_documents(path)):
            documents.append((f"{path.relative_to(K8S)}#{index}", doc))
    return documents


RAW = _raw_documents()


@functools.cache
def _definitions(version: str) -> Resource[Any]:
    schemas = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    strict_dir = f"v{version}.0-local-strict"
    text = (schemas / strict_dir / "_definitions.json").read_text(encoding="utf-8")
    return Resource.from_contents(json.loads(text))


def validate(doc: Manifest, version: str) -> None:
    """Raise jsonschema.ValidationError unless ``doc`` is a valid object for ``version``."""
    crd_schema = SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd_schema is None:
        kubernetes_validate.validate(doc, version, strict=True)
        return
    registry: Registry[Any] = Registry().with_resource(
        "https://kubernetes.io/api/_definitions.json", _definitions(version)
    )
    jsonschema.Draft202012Validator(crd_schema, registry=registry).validate(doc)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), RAW, ids=[where for where, _ in RAW])
def test_every_manifest_file_validates(where: str, doc: Manifest, version: str) -> None:
    """Each document in k8s/ (components and the example Secret included) is schema-valid."""
    validate(doc, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_overlay_validates(version: str, tmp_path: Path) -> None:
    """What `kubectl apply -k` sends (base + every component, image rewritten) is schema-valid."""
    rendered = kustomize.build(write_example_overlay(tmp_path / "overlay"))
    for doc in rendered:
        validate(doc, version)


def test_each_custom_resource_schema_is_used() -> None:
    """Every CRD schema is needed; a core kind without a schema fails the tests above."""
    assert {(doc["apiVersion"], doc["kind"]) for _, doc in RAW} & SCHEMAS.keys() == SCHEMAS.keys()


def _mutated(kind: str, change: Any) -> Manifest:
    (doc,) = [copy.deepcopy(d) for _, d in RAW if d["kind"] == kind]
    change(doc)
    return doc


def _worker_container(doc: Manifest) -> Manifest:
    return doc["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


BROKEN = {
    "probe field misspelt": (
        "StatefulSet",
        lambda d: _worker_container(d).update(
            readinessprobe=_worker_container(d)["readinessProbe"]
        ),
    ),
    "port as text": (
        "StatefulSet",
        lambda d: _worker_container(d)["ports"][0].update(containerPort="8080"),
    ),
    "unknown PDB field": ("PodDisruptionBudget", lambda d: d["spec"].update(maxUnavailble=1)),
    "KEDA parameter not a string": (
        "ScaledObject",
        lambda d: d["spec"]["triggers"][0]["metadata"].update(lagThreshold=100),
    ),
    "KEDA field misspelt": ("ScaledObject", lambda d: d["spec"].update(maxReplicas=3)),
    "HPA behavior misspelt": (
        "ScaledObject",
        lambda d: d["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"].update(
            scaledown={}
        ),
    ),
    "TriggerAuthentication ref without key": (
        "TriggerAuthentication",
        lambda d: d["spec"]["secretTargetRef"][0].pop("key"),
    ),
    "TriggerAuthentication field misspelt": (
        "TriggerAuthentication",
        lambda d: d["spec"].update(secretTargetRefs=d["spec"].pop("secretTargetRef")),
    ),
    "ServiceMonitor endpoint misspelt": (
        "ServiceMonitor",
        lambda d: d["spec"]["endpoints"][0].update(intervall="30s"),
    ),
    "ServiceMonitor bad duration": (
        "ServiceMonitor",
        lambda d: d["spec"]["endpoints"][0].update(interval="30 seconds"),
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validation_rejects_broken_manifests(case: str) -> None:
    """The validators bite: a typo or wrong type in any kind fails."""
    kind, change = BROKEN[case]
    with pytest.raises(jsonschema.ValidationError):
        validate(_mutated(kind, change), KUBERNETES_VERSIONS[-1])

"""Look-ups over rendered manifests: find objects, resolve env vars, mounts and named ports."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from tests.deploy.kustomize import Manifest

POD_NAME = "ftp-pooler-0"


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of ``kind`` (and ``name``); fails if there are none or several."""
    found = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest, name: str | None = None) -> Manifest:
    containers = pod_spec(workload)["containers"]
    if name is None:
        assert len(containers) == 1, "expected a single container"
        return containers[0]  # type: ignore[no-any-return]
    (match,) = [c for c in containers if c["name"] == name]
    return match  # type: ignore[no-any-return]


def resolve_env(
    ctr: Manifest, manifests: list[Manifest], pod_name: str = POD_NAME
) -> dict[str, str]:
    """The container's variables as the kubelet would set them (fieldRef, configMapKeyRef)."""
    env: dict[str, str] = {}
    for var in ctr.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", source
            env[var["name"]] = pod_name
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = find(manifests, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            raise AssertionError(f"unexpected env source {source}")
    return env


def mount_at(workload: Manifest, ctr: Manifest, path: str) -> tuple[Manifest, Manifest]:
    """(volume, volumeMount) mounted exactly at ``path``; fails if nothing is."""
    mounts = [m for m in ctr.get("volumeMounts", []) if m["mountPath"] == path]
    assert len(mounts) == 1, f"nothing (or several) mounted at {path}"
    mount = mounts[0]
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for claim in workload["spec"].get("volumeClaimTemplates", []):
        volumes[claim["metadata"]["name"]] = {
            "name": claim["metadata"]["name"],
            "volumeClaimTemplate": claim,
        }
    return volumes[mount["name"]], mount


def mount_covering(workload: Manifest, ctr: Manifest, path: str) -> tuple[Manifest, Manifest]:
    """The (volume, volumeMount) whose mount path is ``path`` or its closest parent."""
    target = PurePosixPath(path)
    best: Manifest | None = None
    for mount in ctr.get("volumeMounts", []):
        mount_path = PurePosixPath(mount["mountPath"])
        if (target == mount_path or mount_path in target.parents) and (
            best is None or len(mount_path.parts) > len(PurePosixPath(best["mountPath"]).parts)
        ):
            best = mount
    assert best is not None, f"{path} is on no volume (the root filesystem is read-only)"
    return mount_at(workload, ctr, best["mountPath"])


def container_port(ctr: Manifest, port: Any) -> int:
    """A port given by number or by the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in ctr["ports"] if p.get("name") == port]
    return int(match)


def file_from_volume(
    volume: Manifest, mount: Manifest, manifests: list[Manifest], secrets: list[Manifest]
) -> str:
    """The text a subPath mount of a ConfigMap or Secret key shows in the container."""
    key = mount["subPath"]
    if "configMap" in volume:
        return str(find(manifests, "ConfigMap", volume["configMap"]["name"])["data"][key])
    if "secret" in volume:
        secret = find(secrets, "Secret", volume["secret"]["secretName"])
        return str(secret["stringData"][key])
    raise AssertionError(f"volume {volume['name']} is neither a ConfigMap nor a Secret")

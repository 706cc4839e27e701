"""Look-ups over rendered manifests: find objects, resolve env vars, mounts, files and ports."""

from __future__ import annotations

import base64
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


def _object(manifests: list[Manifest], kind: str, ref: Manifest) -> Manifest | None:
    """The ConfigMap or Secret a reference names; None when it is missing and optional."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == ref["name"]]
    if not found:
        assert ref.get("optional") is True, f"{kind} {ref['name']} is missing and not optional"
        return None
    return find(found, kind, ref["name"])


def object_data(obj: Manifest) -> dict[str, str]:
    """A ConfigMap's or Secret's keys as the container sees them (stringData, as the examples
    are written; base64 `data` of a Secret decoded)."""
    if obj["kind"] == "ConfigMap":
        return {k: str(v) for k, v in obj.get("data", {}).items()}
    data = {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
    return data | {k: str(v) for k, v in obj.get("stringData", {}).items()}


def resolve_env(
    ctr: Manifest, manifests: list[Manifest], pod_name: str = POD_NAME
) -> dict[str, str]:
    """The container's variables as the kubelet would set them: envFrom first (a missing
    optional ConfigMap adds nothing), then env (fieldRef, configMapKeyRef, secretKeyRef; an
    optional key that is missing sets nothing). ``manifests`` holds the objects the pod would
    find in its namespace: the rendered ones plus any created by hand (the example Secrets)."""
    env: dict[str, str] = {}
    for source in ctr.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"unexpected envFrom source {source}"
        config_map = _object(manifests, "ConfigMap", source["configMapRef"])
        if config_map is not None:
            env.update(object_data(config_map))
    for var in ctr.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", source
            env[var["name"]] = pod_name
            continue
        if "configMapKeyRef" in source:
            kind, ref = "ConfigMap", source["configMapKeyRef"]
        elif "secretKeyRef" in source:
            kind, ref = "Secret", source["secretKeyRef"]
        else:
            raise AssertionError(f"unexpected env source {source}")
        obj = _object(manifests, kind, ref)
        data = object_data(obj) if obj is not None else {}
        if ref["key"] in data:
            env[var["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional") is True, f"{kind} {ref['name']} has no key {ref['key']}"
    return env


def projected_files(volume: Manifest, manifests: list[Manifest]) -> dict[str, str]:
    """relative path -> text of the files a ConfigMap or Secret volume shows (its `items`, or
    every key); a missing optional object or key shows nothing."""
    if "configMap" in volume:
        kind, ref = "ConfigMap", {**volume["configMap"]}
    elif "secret" in volume:
        kind, ref = "Secret", {**volume["secret"], "name": volume["secret"]["secretName"]}
    else:
        raise AssertionError(f"volume {volume['name']} is neither a ConfigMap nor a Secret")
    obj = _object(manifests, kind, ref)
    data = object_data(obj) if obj is not None else {}
    items = ref.get("items") or [{"key": key, "path": key} for key in data]
    files = {}
    for item in items:
        if item["key"] in data:
            files[item["path"]] = data[item["key"]]
        else:
            assert ref.get("optional") is True, f"{kind} {ref['name']} has no key {item['key']}"
    return files


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


def file_in_pod(workload: Manifest, ctr: Manifest, path: str, manifests: list[Manifest]) -> str:
    """The text of the file at ``path`` as the container sees it on a ConfigMap or Secret
    volume (a subPath mount, or a file of a directory mount)."""
    volume, mount = mount_covering(workload, ctr, path)
    files = projected_files(volume, manifests)
    if "subPath" in mount:
        assert mount["mountPath"] == path, f"{path} is below a subPath mount"
        return files[mount["subPath"]]
    relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    assert relative in files, f"{path}: the volume {volume['name']} shows no such file"
    return files[relative]

"""Render kustomizations with the real `kustomize build` (pinned, installed by
`make kustomize-setup` into .cache/bin) and read manifests as the tests see them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import REPO, require_tool

Manifest = dict[str, Any]

KUSTOMIZE = REPO / ".cache" / "bin" / "kustomize"


class KustomizeError(Exception):
    """`kustomize build` refused the kustomization; the message is its stderr."""


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document in a file."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def build(directory: Path) -> list[Manifest]:
    """The objects `kustomize build directory` renders."""
    result = subprocess.run(
        [require_tool("kustomize", KUSTOMIZE), "build", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise KustomizeError(f"{directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

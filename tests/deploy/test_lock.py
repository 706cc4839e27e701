"""The lock files (`make lock`) agree with pyproject.toml and with each other, and pin everything
with hashes, so `make setup`, CI and the image install the same packages every time."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.tools import REPO

RUNTIME = REPO / "requirements.lock"
BUILD = REPO / "requirements-build.lock"
DEV = REPO / "requirements-dev.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def pins(lock: Path) -> dict[str, str]:
    """name -> version of every requirement; each must be `name==version` with a sha256 hash."""
    text = lock.read_text(encoding="utf-8")
    # An entry starts at column 0 with a name; its hashes follow on indented lines.
    entries = re.findall(r"^[A-Za-z0-9].*(?:\n[ \t]+.*)*", text, re.M)
    found: dict[str, str] = {}
    for entry in entries:
        head = entry.split()[0]
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", head), f"{lock.name}: {head} not pinned"
        assert "--hash=sha256:" in entry, f"{lock.name}: {head} has no hash"
        name, version = head.split("==")
        found[canonicalize_name(name)] = version
    return found


@pytest.mark.parametrize("lock", [RUNTIME, BUILD, DEV], ids=lambda p: p.name)
def test_every_entry_is_pinned_with_hashes_and_names_no_local_path(lock: Path) -> None:
    """Exact versions, hashes, and no find-links or index of this machine in the file."""
    assert pins(lock)
    text = lock.read_text(encoding="utf-8")
    assert "#    make lock" in text  # how to regenerate it, as the header says
    assert not re.search(r"^--(find-links|index-url|extra-index-url)", text, re.M)


def requirements(names: list[str]) -> list[Requirement]:
    return [Requirement(text) for text in names]


@pytest.mark.parametrize(
    ("lock", "declared"),
    [
        (RUNTIME, PYPROJECT["project"]["dependencies"]),
        (DEV, PYPROJECT["project"]["optional-dependencies"]["dev"]),
        (BUILD, PYPROJECT["build-system"]["requires"]),
    ],
    ids=["runtime", "dev", "build"],
)
def test_lock_satisfies_what_pyproject_declares(lock: Path, declared: list[str]) -> None:
    """Each declared requirement is in its lock at a version inside its range (else: make lock)."""
    locked = pins(lock)
    for requirement in requirements(declared):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} missing from {lock.name}: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{lock.name} pins {name}=={locked[name]} outside {requirement}: run make lock"
        )


def test_build_tools_input_matches_the_build_system_requires() -> None:
    """requirements-build.in is pip plus pyproject.toml's [build-system] requires."""
    lines = (REPO / "requirements-build.in").read_text(encoding="utf-8").splitlines()
    listed = [line for line in lines if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(["pip", *PYPROJECT["build-system"]["requires"]])


def test_dev_lock_pins_the_runtime_and_build_packages_as_the_image_does() -> None:
    """`make setup` tests the exact versions the image ships and builds with."""
    dev = pins(DEV)
    for lock in (RUNTIME, BUILD):
        for name, version in pins(lock).items():
            assert dev.get(name) == version, f"{name}: {lock.name} {version}, dev {dev.get(name)}"

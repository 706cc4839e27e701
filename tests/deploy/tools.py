"""Command-line tools the deployment tests run, found where `make test` installs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def require_tool(name: str, *candidates: Path) -> str:
    """Path of a command-line tool; a missing one fails the test (`make test` installs them)."""
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} was not found; run the suite with `make test`, which installs it")

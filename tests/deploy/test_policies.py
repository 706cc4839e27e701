"""checkov over k8s/ and the Dockerfile: no failed check, and every skipped one carries its
justification in a skip comment (checkov.io/skipN annotations, `#checkov:skip=` in the Dockerfile).

checkov pins packaging<24, which the project's pytest cannot share, so it lives in its own
virtualenv (.cache/checkov-venv, made by `make checkov-setup`) and runs as a separate process.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.deploy.conftest import K8S
from tests.deploy.tools import REPO, require_tool

CHECKOV = REPO / ".cache" / "checkov-venv" / "bin" / "checkov"
SCANS = {
    "kubernetes": ["--directory", str(K8S), "--framework", "kubernetes"],
    "dockerfile": ["--file", str(REPO / "Dockerfile"), "--framework", "dockerfile"],
}
# A justification says why, not just "skip": more than a few words.
MIN_JUSTIFICATION = 40


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    """Both scans, run side by side (checkov starts slowly); --skip-download: no network."""
    checkov = require_tool("checkov", CHECKOV)
    running = {
        name: subprocess.Popen(
            [checkov, *args, "--skip-download", "--output", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in SCANS.items()
    }
    out: dict[str, dict[str, Any]] = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode in (0, 1), stderr  # 1: failed checks, reported below
        out[name] = json.loads(stdout)
    return out


@pytest.mark.parametrize("scan", sorted(SCANS))
def test_checkov_finds_no_failed_check(scan: str, reports: dict[str, dict[str, Any]]) -> None:
    """Every check that ran passed or was skipped with a reason."""
    report = reports[scan]
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0


@pytest.mark.parametrize("scan", sorted(SCANS))
def test_every_skipped_check_is_justified(scan: str, reports: dict[str, dict[str, Any]]) -> None:
    """A skip without a real reason is a failure hidden from the summary."""
    for check in reports[scan]["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) >= MIN_JUSTIFICATION, f"{check['check_id']} {check['resource']}"

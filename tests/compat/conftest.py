"""Fixtures of the compatibility suite: the real servers, and the matrix its tests fill in.

Every test of ``test_matrix.py`` is one cell (a server variant x a feature). A cell passes, fails,
or passes with a note (a server reply quoted, the behaviour FTP Pooler chose); the matrix is
printed at the end of the run and written to ``.local/compat-matrix.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat.servers import (
    REPO,
    VARIANTS,
    Server,
    TestCA,
    make_base,
    missing_setup,
    remove_base,
    versions,
)
from tests.support.stack import Worker

MATRIX_FILE = REPO / ".local" / "compat-matrix.md"
_cells: dict[tuple[str, str], tuple[str, str]] = {}  # (variant, feature) -> (outcome, note)
_features: list[str] = []


class Farm:
    """The servers of one test session, started on first use and stopped at its end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ca = TestCA(base / "ca")
        self.servers: dict[str, Server] = {}

    def get(self, name: str) -> Server:
        server = self.servers.get(name)
        if server is None:
            kind, tls, overwrite = VARIANTS[name]
            server = Server(kind, tls, self.ca, self.base, allow_overwrite=overwrite).start()
            self.servers[name] = server
        return server

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="session")
def farm() -> Iterator[Farm]:
    """All servers; a missing install is a failure naming the make target (never a skip)."""
    problem = missing_setup()
    if problem:
        pytest.fail(problem)
    farm = Farm(make_base())
    try:
        yield farm
    finally:
        farm.stop()
        remove_base(farm.base)


@pytest.fixture
def note(request: pytest.FixtureRequest):
    """Call with a text to show in this test's matrix cell (a quoted reply, a fallback);
    ``outcome`` replaces "pass" in a passing cell (e.g. "fallback")."""

    def add(text: str, outcome: str | None = None) -> None:
        request.node.user_properties.append(("cell_note", text))
        if outcome is not None:
            request.node.user_properties.append(("cell_outcome", outcome))

    return add


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test():
    """A failed end-to-end test must not leave a worker process behind."""
    before = list(Worker.live)
    yield
    for worker in [w for w in Worker.live if w not in before]:
        worker.kill()
        Worker.live.remove(worker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("cell")
    if marker is None or not hasattr(item, "callspec"):
        return
    if report.when == "setup" and report.outcome == "passed":
        return
    if report.when == "teardown" and report.outcome == "passed":
        return
    feature = marker.args[0]
    variant = item.callspec.params["variant"]
    if feature not in _features:
        _features.append(feature)
    notes = [str(text) for key, text in item.user_properties if key == "cell_note"]
    passed_as = [str(text) for key, text in item.user_properties if key == "cell_outcome"]
    result = (passed_as or ["pass"])[-1] if report.outcome == "passed" else "FAIL"
    previous = _cells.get((variant, feature))
    if previous is not None and previous[0] == "FAIL":
        return  # a failed call stays failed whatever its teardown did
    _cells[(variant, feature)] = (result, "; ".join(notes))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cell(feature): one cell of the compatibility matrix")


def render_matrix() -> str:
    """The matrix as Markdown: a row per server variant, a column per feature, notes below.

    A cell is "pass", "FAIL", "fallback" (the server lacks the feature; FTP Pooler works around
    it) or "n/a" (a TLS feature on a plain row); "[n]" points at note n under the table (a quoted
    server reply, and what FTP Pooler did about it).
    """
    found = versions()
    label = {
        "vsftpd": f"vsftpd {found.get('vsftpd', '?')}",
        "proftpd": f"ProFTPD {found.get('proftpd-core', '?')}",
        "pure-ftpd": f"Pure-FTPd {found.get('pure-ftpd', '?')}",
        "pyftpdlib": f"pyftpdlib {found.get('pyftpdlib', '?')}",
    }
    notes: list[str] = []
    lines = [
        "| server | TLS | " + " | ".join(_features) + " |",
        "|---|---|" + "---|" * len(_features),
    ]
    for name, (kind, tls, overwrite) in VARIANTS.items():
        if not any((name, feature) in _cells for feature in _features):
            continue
        server = label[kind] + ("" if overwrite else " (`AllowOverwrite off`)")
        cells = []
        for feature in _features:
            outcome, text = _cells.get((name, feature), ("n/a", ""))
            if text:
                if text not in notes:
                    notes.append(text)
                outcome += f" [{notes.index(text) + 1}]"
            cells.append(outcome)
        lines.append(f"| {server} | {tls} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"{n}. {text}" for n, text in enumerate(notes, start=1))
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _cells:
        return
    table = render_matrix()
    MATRIX_FILE.parent.mkdir(parents=True, exist_ok=True)
    MATRIX_FILE.write_text(table)
    terminalreporter.section("compatibility matrix")
    terminalreporter.write(table)
    terminalreporter.write_line(f"(written to {MATRIX_FILE.relative_to(REPO)})")

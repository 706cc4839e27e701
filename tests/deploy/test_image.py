"""The Dockerfile and .dockerignore, checked statically (no Docker engine is needed): a pinned
multi-stage build, a non-root runtime that writes only to its two volumes, the worker entrypoint,
a build context without tests or caches, and a clean hadolint run."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from packaging.utils import canonicalize_name

from app.settings import CONNECTIONS_ENV, ENV_PREFIX, Settings
from tests.deploy import dockerfile
from tests.deploy.conftest import STATEFULSET, WORKER_CONTAINER
from tests.deploy.kustomize import Manifest
from tests.deploy.routes import route_status
from tests.deploy.test_lock import pins
from tests.deploy.tools import REPO, require_tool
from tests.deploy.workload import container, find, mount_at, resolve_env

DOCKERFILE = REPO / "Dockerfile"
DATA_DIR_ENV = f"{ENV_PREFIX}WORKER__DATA_DIR"
STORAGE = "/data/storage"
# The packages the wheel installs (pyproject.toml [tool.setuptools.packages.find]).
OUR_PACKAGES = ("app", "agents", "models", "pools")


@pytest.fixture(scope="module")
def stages() -> list[dockerfile.Stage]:
    return dockerfile.parse(DOCKERFILE)


@pytest.fixture(scope="module")
def runtime(stages: list[dockerfile.Stage]) -> dockerfile.Stage:
    return stages[-1]


def test_stages_share_one_slim_python_311_base_pinned_by_patch_version(
    stages: list[dockerfile.Stage],
) -> None:
    """Build and runtime stages use the same python:3.11.N-slim image (the venv links into it):
    one BASE_IMAGE argument, so a Debian base given instead (make image IMAGE_BASE=debian) is used
    by both stages too."""
    assert len(stages) >= 2
    assert {stage.raw_base for stage in stages} == {"${BASE_IMAGE}"}
    bases = {stage.base for stage in stages}
    assert len(bases) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", bases.pop())


def test_stages_call_python3_by_name_so_either_base_works(stages: list[dockerfile.Stage]) -> None:
    """The official image has python3 in /usr/local/bin, Debian's in /usr/bin: no path is assumed,
    and `python` (absent from Debian's base) is only the virtualenv's."""
    for stage in stages:
        for instruction in stage.all("RUN"):
            assert "/usr/local" not in instruction.arguments
            assert not re.search(r"(^|&& |then )python\b", instruction.arguments)


def test_runtime_stage_runs_as_uid_1000_and_installs_nothing(
    stages: list[dockerfile.Stage], runtime: dockerfile.Stage
) -> None:
    """No package manager runs in the final stage; only the build stage's venv is copied in."""
    assert [i.arguments for i in runtime.all("USER")][-1] == "1000:1000"
    for instruction in runtime.all("RUN"):
        assert not re.search(r"\b(pip|apt-get|apt)\b[^&]*\binstall\b", instruction.arguments)
        assert "gcc" not in instruction.arguments and "build-essential" not in instruction.arguments
    build_names = {stage.name for stage in stages[:-1]}
    for copy in runtime.all("COPY"):
        source = re.search(r"--from=(\S+)", copy.arguments)
        assert source and source.group(1) in build_names, copy.arguments


def test_dependencies_install_from_the_lock_with_hashes_without_cache(
    stages: list[dockerfile.Stage],
) -> None:
    """The build stage installs requirements.lock (hashes required, nothing resolved) and the
    build tools from requirements-build.lock, pip cache off; the project goes in without deps."""
    installs = [
        command
        for s in stages[:-1]
        for i in s.all("RUN")
        for command in i.arguments.split("&&")
        if re.search(r"pip\b.*\b(install|wheel)\b", command)
    ]
    assert installs and all("--no-cache-dir" in text for text in installs)
    for lock in ("requirements.lock", "requirements-build.lock"):
        (command,) = [c for c in installs if f"--requirement {lock}" in c]
        assert "--require-hashes" in command and "--no-deps" in command
    assert all("--no-deps" in text for text in installs)


def _worker(full: list[Manifest]) -> tuple[Manifest, Manifest]:
    statefulset = find(full, "StatefulSet", STATEFULSET)
    return statefulset, container(statefulset, WORKER_CONTAINER)


def test_runtime_writes_only_to_the_two_volumes_the_statefulset_mounts(
    runtime: dockerfile.Stage, full: list[Manifest]
) -> None:
    """The image's data dir and storage dir are its VOLUMEs, owned by 1000, and PVCs in k8s."""
    env = runtime.env()
    data_dir = env[DATA_DIR_ENV]
    volumes = json.loads(runtime.all("VOLUME")[0].arguments)
    assert sorted(volumes) == sorted([STORAGE, data_dir])
    setup = " ".join(i.arguments for i in runtime.all("RUN"))
    for directory in volumes:
        assert re.search(rf"mkdir -p [^&]*{re.escape(directory)}\b", setup)
        assert re.search(rf"chown 1000:1000 [^&]*{re.escape(directory)}\b", setup)
    statefulset, ctr = _worker(full)
    assert resolve_env(ctr, full)[DATA_DIR_ENV] == data_dir
    for directory in volumes:
        volume, _ = mount_at(statefulset, ctr, directory)
        assert "volumeClaimTemplate" in volume


def test_registry_path_in_the_image_is_where_the_secret_is_mounted(
    runtime: dockerfile.Stage, full: list[Manifest]
) -> None:
    """FTP_POOLER_CONNECTIONS defaults to the Secret's mount path in Kubernetes."""
    statefulset, ctr = _worker(full)
    path = runtime.env()[CONNECTIONS_ENV]
    assert resolve_env(ctr, full)[CONNECTIONS_ENV] == path
    volume, _ = mount_at(statefulset, ctr, path)
    assert "secret" in volume


def test_entrypoint_runs_the_faust_worker(runtime: dockerfile.Stage) -> None:
    """`faust -L uvloop -A app worker -l info`, exec form, so the worker gets SIGTERM itself."""
    (entrypoint,) = runtime.all("ENTRYPOINT")
    (cmd,) = runtime.all("CMD")
    expected = ["faust", "-L", "uvloop", "-A", "app", "worker", "-l", "info"]
    assert entrypoint.exec_form() + cmd.exec_form() == expected


def test_exposed_ports_and_healthcheck_follow_the_settings(runtime: dockerfile.Stage) -> None:
    """EXPOSE lists the default API and metrics ports; HEALTHCHECK asks the liveness route."""
    defaults = Settings()
    exposed = {int(port) for i in runtime.all("EXPOSE") for port in i.arguments.split()}
    assert exposed == {defaults.api.port, defaults.metrics.port}
    (healthcheck,) = runtime.all("HEALTHCHECK")
    script = healthcheck.exec_form()[-1]
    assert "load_settings().api.port" in script
    path = re.search(r"\}(/[a-z]+)'", script)
    assert path and route_status(path.group(1), ready=False) == 200


def test_build_context_holds_the_package_and_nothing_else(stages: list[dockerfile.Stage]) -> None:
    """.dockerignore sends what COPY needs and keeps tests, venvs, caches and jars out."""
    context = dockerfile.build_context(REPO)
    for stage in stages:
        for copy in stage.all("COPY"):
            if "--from=" in copy.arguments:
                continue
            for source in copy.arguments.split()[:-1]:
                assert any(p == source or p.startswith(source + "/") for p in context), source
    tops = {path.split("/")[0] for path in context}
    assert tops == {
        "pyproject.toml",
        "README.md",
        "requirements.lock",
        "requirements-build.lock",
        "app",
        "agents",
        "models",
        "pools",
        "scripts",
    }
    # Of scripts/ (dev tooling), only the topics tool the Kubernetes topics Job runs.
    assert {p for p in context if p.startswith("scripts/")} == {
        "scripts/__init__.py",
        "scripts/topics.py",
    }
    for path in context:
        assert "__pycache__" not in path and not path.endswith((".pyc", ".jar"))


def test_topics_tool_needs_only_what_the_image_installs() -> None:
    """scripts/topics.py (the topics Job's command) imports, all the way down, only the standard
    library, our packages the wheel installs, and requirements.lock's distributions: the two
    files of scripts/ the Dockerfile copies are enough."""
    graph = grimp.build_graph(*OUR_PACKAGES, "scripts", include_external_packages=True)
    needed = graph.find_upstream_modules("scripts.topics") | {"scripts.topics"}
    ours = {m for m in needed if m.split(".")[0] in (*OUR_PACKAGES, "scripts")}
    assert {m for m in ours if m.split(".")[0] == "scripts"} <= {"scripts", "scripts.topics"}
    locked = pins(REPO / "requirements.lock")
    distributions = importlib.metadata.packages_distributions()
    foreign = {
        top
        for top in (m.split(".")[0] for m in needed - ours)
        if top not in sys.stdlib_module_names
        and not {canonicalize_name(d) for d in distributions.get(top, [])} & locked.keys()
    }
    assert foreign == set()


@pytest.mark.parametrize(
    "path",
    [
        "tests/unit/test_pool.py",
        ".cache/kafka/4.4.0/libs/kafka.jar",
        ".venv/bin/python",
        "app/__pycache__/main.cpython-311.pyc",
        ".local/kafka-19092/kafka.pid",
        ".git/HEAD",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    """Each of these stays out of the build context, whether or not it exists right now."""
    assert dockerfile.is_excluded(path, dockerfile.dockerignore_rules(REPO))


def test_hadolint_reports_nothing() -> None:
    """hadolint (every severity, style included) finds nothing, and nothing is ignored silently."""
    hadolint = require_tool("hadolint", Path(sys.executable).with_name("hadolint"))
    result = subprocess.run(
        [hadolint, "--no-fail", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == []
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert lines[number - 1].lstrip().startswith("#"), "an ignore needs a reason above it"


def test_worker_refuses_a_web_port_the_probes_would_not_call(tmp_path: Path) -> None:
    """`worker -p N` stops at start-up (exit 2, one line naming api.port): the probes and
    HEALTHCHECK call api.port, so the flag cannot move the web server away from them."""
    connections = tmp_path / "connections.ini"
    connections.write_text(f"[local]\ntype = local\nbase_path = {tmp_path}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env |= {
        CONNECTIONS_ENV: str(connections),
        DATA_DIR_ENV: str(tmp_path / "data"),
        f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",  # never reached
        f"{ENV_PREFIX}API__PORT": "18080",
    }
    faust = Path(sys.executable).with_name("faust")
    result = subprocess.run(
        [str(faust), "-L", "uvloop", "-A", "app", "worker", "-l", "info", "-p", "18081"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("ftp-pooler: ") and "--web-port" in line and "api.port" in line
    assert "Traceback" not in result.stderr + result.stdout

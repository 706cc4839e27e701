"""The built image, run: `make test-image` builds it and runs these (only there: tests/conftest.py).

The worker runs from the image's own entrypoint, command and environment, as uid 1000 with a
read-only root filesystem except its two volumes, against a real broker and a real FTP server; it
moves files both ways, answers /health and /ready and its HEALTHCHECK, and exits 0 on SIGTERM within
the grace period. The image itself: its size, its packages exactly the lock's, no compiler, no pip,
no pip cache, none of our tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scripts.ftpd import EmbeddedFTPServer
from tests.deploy import dockerfile
from tests.deploy.container import Container, Image
from tests.deploy.tools import REPO
from tests.support.stack import Names, collect, free_port, make_topics, produce, task

IMAGE = os.environ.get("FTP_POOLER_TEST_IMAGE", "")
RUNNER = os.environ.get("FTP_POOLER_TEST_IMAGE_RUNNER", "buildah")
# The image installs ~90 MB of packages on a base of ~125 MB (official) or ~175 MB (Debian's).
MAX_MB = int(os.environ.get("FTP_POOLER_TEST_IMAGE_MAX_MB", "350"))
UID = 1000


def say(line: str) -> None:
    print(f"test-image: {line}", flush=True)


@pytest.fixture(scope="module")
def image() -> Image:
    return Image(RUNNER, IMAGE)


@pytest.fixture(scope="module")
def files(image: Image) -> dict[str, int]:
    return dict(image.files())


def locked_pins(lock: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(encoding="utf-8"), re.M)
    return {normalize(name): version for name, version in pins}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_is_small_and_holds_exactly_the_locked_packages(files: dict[str, int]) -> None:
    """Below the size limit; the venv's distributions are requirements.lock's pins plus ours."""
    size_mb = sum(files.values()) / 1e6
    say(f"image {IMAGE} ({RUNNER}): {size_mb:.0f} MB unpacked, {len(files)} files (limit {MAX_MB})")
    assert size_mb <= MAX_MB
    installed = {}
    for path in files:
        found = re.fullmatch(
            r"/opt/ftp-pooler/lib/python3\.11/site-packages/(.+)-(.+)\.dist-info", path
        )
        if found:
            installed[normalize(found.group(1))] = found.group(2)
    expected = locked_pins(REPO / "requirements.lock") | {"ftp-pooler": "0.1.0"}
    assert installed == expected
    say(f"venv: {len(installed)} distributions, exactly requirements.lock's pins + ftp-pooler")


def test_image_holds_no_compiler_pip_cache_or_test_file(files: dict[str, int]) -> None:
    """Nothing to build or install with, no caches left by the build, none of our tests."""
    compiler = r"/bin/([\w-]+-)?(gcc|g\+\+|c\+\+|cc|clang|ld|as)(-[\d.]+)?$|/cc1(plus)?$"
    compilers = [p for p in files if re.search(compiler, p)]
    assert compilers == []
    pip = [p for p in files if re.search(r"-packages/(pip|setuptools)(/|-[\d.]+\.dist-info$)", p)]
    assert pip == []
    assert not [p for p in files if p.endswith("/bin/pip") or "/pip" in p.rsplit("/bin/", 1)[-1:]]
    caches = [p for p in files if re.search(r"/\.cache(/|$)|/pip-(build|req|wheel)|^/src(/|$)", p)]
    assert caches == [] and "/tmp/wheels" not in files
    ours = [
        p for p in files if re.search(r"/(tests/(unit|integration|compat|deploy)|conftest\.py$)", p)
    ]
    assert ours == []
    say("no compiler, no pip or setuptools, no pip cache, no build tree, no test file")


def test_healthcheck_entrypoint_and_user_survive_the_image_format(image: Image) -> None:
    """The stored image keeps the Dockerfile's HEALTHCHECK (Docker format), entrypoint and user."""
    runtime = dockerfile.parse(REPO / "Dockerfile")[-1]
    config = image.config()
    (healthcheck,) = runtime.all("HEALTHCHECK")
    assert (config.get("Healthcheck") or {}).get("Test") == ["CMD", *healthcheck.exec_form()]
    (entrypoint,) = runtime.all("ENTRYPOINT")
    (cmd,) = runtime.all("CMD")
    assert config["Entrypoint"] == entrypoint.exec_form()
    assert config["Cmd"] == cmd.exec_form()
    assert config["User"] == f"{UID}:{UID}"
    say(f"manifest {image.manifest_type()}: HEALTHCHECK, ENTRYPOINT, CMD and USER kept")


def grace_seconds() -> int:
    statefulset = yaml.safe_load((REPO / "k8s" / "statefulset.yaml").read_text(encoding="utf-8"))
    return int(statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def owned_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    os.chown(path, UID, UID)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def worker_world(tmp_path: Path) -> Iterator[tuple[EmbeddedFTPServer, Path, Path, Names]]:
    """A real FTP server and the two host directories the container mounts as its volumes."""
    os.chmod(tmp_path, 0o755)  # the container's uid walks into it to reach its volumes
    ftp_root = tmp_path / "ftp"
    (ftp_root / "outgoing").mkdir(parents=True)
    (ftp_root / "incoming").mkdir()
    server = EmbeddedFTPServer(ftp_root).start()
    storage, state = owned_dir(tmp_path / "storage"), owned_dir(tmp_path / "faust")
    try:
        yield server, storage, state, Names()
    finally:
        server.stop()


def test_worker_in_the_image_moves_files_both_ways_and_stops_on_sigterm(
    image: Image, worker_world: tuple[EmbeddedFTPServer, Path, Path, Names], tmp_path: Path
) -> None:
    """uid 1000, read-only root, the image's entrypoint: transfers, probes, SIGTERM -> exit 0."""
    server, storage, state, names = worker_world
    downloads = {"report.csv": b"id,amount\n" + b"1,2\n" * 5000, "blob.bin": os.urandom(6 << 20)}
    uploads = {"stock.json": b'{"sku": 1}\n' * 3000, "export.bin": os.urandom(3 << 20)}
    for name, data in downloads.items():
        (server.root / "outgoing" / name).write_bytes(data)
    (storage / "exports").mkdir()
    os.chown(storage / "exports", UID, UID)
    for name, data in uploads.items():
        (storage / "exports" / name).write_bytes(data)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "connections.ini").write_text(
        f"[partner]\ntype = ftp\nhost = 127.0.0.1\nport = {server.port}\n"
        f"user = {server.user}\npass = {server.password}\n\n"
        "[local]\ntype = local\nbase_path = /data/storage\n"
    )
    asyncio.run(make_topics(names, 2))
    api_port, metrics_port = free_port(), free_port()
    env = {
        "FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": os.environ["FTP_POOLER_TEST_KAFKA"],
        "FTP_POOLER_KAFKA__CONSUMER_GROUP": names.group,
        "FTP_POOLER_KAFKA__INPUT_TOPIC": names.tasks,
        "FTP_POOLER_KAFKA__RESULT_TOPIC": names.results,
        "FTP_POOLER_KAFKA__FAIL_TOPIC": names.failures,
        "FTP_POOLER_API__PORT": str(api_port),
        "FTP_POOLER_METRICS__PORT": str(metrics_port),
        "FTP_POOLER_WORKER__ID": "image-test",
    }
    volumes = {storage: "/data/storage", state: "/data/faust", etc: "/etc/ftp-pooler:ro"}
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        container = Container(image, env, volumes, log).start()
        try:
            _exercise(container, api_port, server, storage, state, names, downloads, uploads)
            code, seconds = container.stop(timeout=grace_seconds() + 30)
        except BaseException:
            say(
                "worker log (last 40 lines):\n" + "\n".join(log_path.read_text().splitlines()[-40:])
            )
            raise
        finally:
            container.remove()
    say(f"SIGTERM: worker exited {code} after {seconds:.1f} s (grace period {grace_seconds()} s)")
    assert code == 0, "\n".join(log_path.read_text().splitlines()[-40:])
    assert seconds < grace_seconds()


def _exercise(
    container: Container,
    api_port: int,
    server: EmbeddedFTPServer,
    storage: Path,
    state: Path,
    names: Names,
    downloads: dict[str, bytes],
    uploads: dict[str, bytes],
) -> None:
    started = time.monotonic()
    health = wait_for(container, api_port, "/health", 120)
    ready = wait_for(container, api_port, "/ready", 120)
    say(f"worker up: /health {health}, /ready {ready} after {time.monotonic() - started:.1f} s")
    healthcheck = container.image.config()["Healthcheck"]["Test"][1:]
    checked = container.exec(healthcheck)
    assert checked.returncode == 0, checked.stderr
    say("the image's HEALTHCHECK command, run inside the container: exit 0")
    probe = container.exec(["python", "-c", READ_ONLY_PROBE])
    assert probe.returncode == 0, probe.stdout + probe.stderr
    say(f"inside, uid {UID}: {probe.stdout.strip()}")

    tasks = [
        task(f"dl-{n}", "partner", f"/outgoing/{n}", "local", f"/incoming/{n}") for n in downloads
    ]
    tasks += [
        task(f"ul-{n}", "local", f"/exports/{n}", "partner", f"/incoming/{n}") for n in uploads
    ]
    asyncio.run(produce(names.tasks, list(tasks)))
    results = {r.value["task_id"]: r for r in asyncio.run(collect(names, len(tasks), timeout=120))}
    for item in tasks:
        result = results[item["task_id"]].value
        assert result["status"] == "success", result
        say(
            f"{result['direction']:8} {item['src_id']}:{item['src_path']} -> "
            f"{item['dst_id']}:{item['dst_path']}  {result['bytes_transferred']} bytes "
            f"in {result['duration_ms']} ms  sha256 {result['sha256'][:12]}"
        )
    for name, data in downloads.items():
        written = storage / "incoming" / name
        assert written.read_bytes() == data
        assert written.stat().st_uid == UID  # the worker ran as the image's user
        assert results[f"dl-{name}"].value["sha256"] == sha256(data)
    for name, data in uploads.items():
        assert (server.root / "incoming" / name).read_bytes() == data
        assert results[f"ul-{name}"].value["sha256"] == sha256(data)
    assert any(state.iterdir()), "Faust's data directory (the state volume) stayed empty"


READ_ONLY_PROBE = """
import os
writable = []
for top in ("/", "/etc", "/opt/ftp-pooler", "/tmp", "/var/tmp", "/usr", "/run/lock", "/data"):
    try:
        with open(os.path.join(top, ".probe"), "w"):
            pass
        writable.append(top)
    except OSError:
        pass
for volume in ("/data/storage", "/data/faust"):
    with open(os.path.join(volume, ".probe"), "w"):
        pass
    os.remove(os.path.join(volume, ".probe"))
assert not writable, f"writable outside the volumes: {writable}"
print(f"root filesystem read-only; /data/storage and /data/faust writable (uid {os.getuid()})")
"""


def wait_for(container: Container, port: int, path: str, timeout: float) -> int:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        assert container.running(), "the worker exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{path} answered {status} for {timeout} s")

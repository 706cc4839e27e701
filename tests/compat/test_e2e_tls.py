"""End to end per TLS mode: a real worker process and Kafka, against the real servers.

One worker holds a connection to every server variant (plain, explicit and implicit FTPS) plus
one to a self-signed server whose CA it was not given; each connection gets a download and an
upload through Kafka, and the untrusted one must fail once, finally, with CONNECTION_ERROR.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from pathlib import Path

import pytest

from tests.compat.servers import PASSWORD, SERVER_NAME, VARIANTS
from tests.support.stack import KAFKA, Names, Worker, collect, make_topics, produce, task

pytestmark = pytest.mark.timeout(180)

E2E_VARIANTS = [name for name, (_, _, overwrite) in VARIANTS.items() if overwrite]


@pytest.fixture(scope="module", autouse=True)
def kafka_broker() -> str:
    """The broker the Makefile started; without it the test fails loudly (never skips)."""
    host, _, port = KAFKA.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"no Kafka broker at {KAFKA} ({exc}); run the suite with `make test-compat`")
    return KAFKA


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_every_tls_mode_moves_files_through_a_worker_and_untrusted_tls_fails_once(
    farm, tmp_path
):
    """Plain, explicit and implicit FTPS connections each download and upload via Kafka; a
    server whose certificate the worker cannot verify gives one final CONNECTION_ERROR."""
    storage = tmp_path / "storage"
    storage.mkdir()
    servers = {name: farm.get(name) for name in E2E_VARIANTS}
    untrusted = servers["vsftpd-explicit"]
    sections = [server.ini_section(name) for name, server in servers.items()]
    sections.append(untrusted.ini_section("untrusted", tls_ca_file=None))
    sections.append(f"[local]\ntype = local\nbase_path = {storage}\n")
    connections = tmp_path / "connections.ini"
    connections.write_text("\n".join(sections))

    rng = random.Random(11)
    expected: dict[str, tuple[Path, str]] = {}
    tasks = []
    for name, server in servers.items():
        down = rng.randbytes(200_000)
        server.put(f"/e2e/{name}.bin", down)
        tasks.append(task(f"dl-{name}", name, f"/e2e/{name}.bin", "local", f"/dl/{name}.bin"))
        expected[f"dl-{name}"] = (storage / "dl" / f"{name}.bin", sha256(down))
        up = rng.randbytes(150_000)
        (storage / f"{name}.up").write_bytes(up)
        tasks.append(task(f"ul-{name}", "local", f"/{name}.up", name, f"/e2e/up dir/{name}.bin"))
        expected[f"ul-{name}"] = (server.file(f"/e2e/up dir/{name}.bin"), sha256(up))
    tasks.append(task("untrusted", "untrusted", "/e2e/vsftpd-explicit.bin", "local", "/u.bin"))

    names = Names()
    await make_topics(names, partitions=2)
    worker = Worker(
        tmp_path,
        names,
        connections,
        extra_env={
            "FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": "2",
            "FTP_POOLER_RETRY__MAX_ATTEMPTS": "3",
            "FTP_POOLER_RETRY__BACKOFF_INITIAL_SECONDS": "0.2",
        },
    )
    worker.start()
    await asyncio.to_thread(worker.wait_ready)
    try:
        await produce(names.tasks, tasks)
        received = await collect(names, count=len(tasks), timeout=120)
        status, body = worker.get("/connections")
    finally:
        assert worker.stop() == 0, worker.tail()

    results = {r.value["task_id"]: r.value for r in received}
    assert set(results) == {t["task_id"] for t in tasks}
    for task_id, (path, digest) in expected.items():
        value = results[task_id]
        assert value["status"] == "success", value
        assert value["sha256"] == digest and sha256(path.read_bytes()) == digest
    failure = results["untrusted"]
    assert (failure["error_code"], failure["retryable"], failure["attempts"]) == (
        "CONNECTION_ERROR",
        False,
        1,
    ), failure
    assert "TLS certificate verification failed" in failure["error_message"]
    assert "unable to get local issuer certificate" in failure["error_message"]
    assert status == 200
    shown = {c["id"]: c for c in body["connections"]}
    assert shown["vsftpd-implicit"]["tls"] == "implicit"
    assert shown["proftpd-explicit"]["tls_server_name"] == SERVER_NAME
    for text in (str(results), str(body), worker.log_text()):
        assert PASSWORD not in text

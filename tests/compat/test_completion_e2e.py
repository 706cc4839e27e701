"""Completion actions, metadata and headers end to end: a real worker, Kafka and vsftpd.

Sizes: 50 ``move`` + 50 ``delete`` downloads in ``make test``; ``FTP_POOLER_SOAK_SCALE=4`` (or
``make soak``'s 10) gives the issue's 200 + 200 and more. Figures are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.support.stack import KAFKA, Names, Received, Worker, collect, make_topics, task

pytestmark = pytest.mark.timeout(400)

SCALE = int(os.environ.get("FTP_POOLER_SOAK_SCALE", "1"))
PER_ACTION = 50 * SCALE
SESSIONS = 3  # the worker's cap: at most this many downloads are cut short by the SIGKILL


@pytest.fixture(scope="module", autouse=True)
def kafka_broker() -> str:
    host, _, port = KAFKA.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"no Kafka broker at {KAFKA} ({exc}); run the suite with `make test-compat`")
    return KAFKA


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def produce_with_headers(
    topic: str, items: list[tuple[bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for raw, headers in items:
            key = json.loads(raw).get("task_id", "").encode() if raw.startswith(b"{") else None
            futures.append(await producer.send(topic, raw, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def all_seen(expected: set[str]):
    def check(received: list[Received]) -> bool:
        return expected <= {r.value["task_id"] for r in received}

    return check


class Run:
    """One vsftpd, a local storage and a worker whose connections.ini has a move default."""

    def __init__(self, farm, tmp_path: Path, archive_default: str) -> None:
        self.server = farm.get("vsftpd-none")
        self.storage = tmp_path / "storage"
        self.storage.mkdir()
        self.prefix = f"/c{random.randrange(10**9)}"  # vsftpd serves one root for the session
        ini = tmp_path / "connections.ini"
        ini.write_text(
            self.server.ini_section("vsftpd")
            + f"completion = move\ncompletion_target = {self.prefix}{archive_default}\n\n"
            + f"[local]\ntype = local\nbase_path = {self.storage}\n"
        )
        self.names = Names()
        self.worker = Worker(
            tmp_path,
            self.names,
            ini,
            extra_env={"FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": str(SESSIONS)},
        )
        self.files: dict[str, bytes] = {}
        self.rng = random.Random(16)

    def put(self, task_id: str, size: int) -> str:
        data = self.rng.randbytes(size)
        self.files[task_id] = data
        path = f"{self.prefix}/out/{task_id}.bin"
        self.server.put(path, data)
        return path


async def test_downloads_move_or_delete_their_sources_once_even_across_a_sigkill(farm, tmp_path):
    """Downloads with ``move`` (connection default) and ``delete`` (task field): each
    destination is byte-identical, each source moved or gone exactly once; a SIGKILL mid-run
    and a restart delete no source whose destination is missing or different."""
    run = Run(farm, tmp_path, "/archive/{yyyy}/{mm}/{name}")
    await make_topics(run.names, partitions=4)
    tasks: list[tuple[bytes, list[tuple[str, bytes]]]] = []
    for n in range(PER_ACTION):
        for kind in ("mv", "rm"):
            task_id = f"{kind}-{n}"
            value: dict[str, Any] = task(
                task_id, "vsftpd", run.put(task_id, 2000 + n * 37), "local", f"/in/{task_id}.bin"
            )
            if kind == "rm":
                value["completion"] = {"action": "delete"}
            tasks.append((json.dumps(value).encode(), []))
    await produce_with_headers(run.names.tasks, tasks)
    run.worker.start()
    await asyncio.to_thread(run.worker.wait_ready)
    await collect(run.names, count=len(tasks) // 3, timeout=120)
    run.worker.kill()  # SIGKILL mid-run: some tasks between rename and action, or unpublished
    run.worker.start()
    await asyncio.to_thread(run.worker.wait_ready)
    try:
        received = await collect(
            run.names, count=10**9, timeout=300, until=all_seen(set(run.files))
        )
    finally:
        assert run.worker.stop() == 0, run.worker.tail()

    by_task: dict[str, list[dict[str, object]]] = {}
    for r in received:
        by_task.setdefault(str(r.value["task_id"]), []).append(r.value)
    assert set(by_task) == set(run.files)
    month = datetime.now(UTC).strftime("%Y/%m")
    for task_id, data in run.files.items():
        for value in by_task[task_id]:
            assert value["status"] == "success", value
            assert value["sha256"] == sha256(data)
        assert (run.storage / "in" / f"{task_id}.bin").read_bytes() == data
        source = run.server.file(f"{run.prefix}/out/{task_id}.bin")
        assert not source.exists(), task_id  # never left behind
        completion = by_task[task_id][-1]["completion"]
        if task_id.startswith("mv"):
            archived = run.server.file(f"{run.prefix}/archive/{month}/{task_id}.bin")
            assert archived.read_bytes() == data  # moved, intact
            assert completion == {
                "action": "move",
                "status": "done",
                "target": str(f"{run.prefix}/archive/{month}/{task_id}.bin"),
            }
        else:
            assert completion == {"action": "delete", "status": "done"}
    archive_files = list(run.server.file(f"{run.prefix}/archive").rglob("*.bin"))
    assert len(archive_files) == PER_ACTION  # moved exactly once: nothing else arrived there
    log = run.worker.log_text()
    duplicates = sum(len(v) - 1 for v in by_task.values())
    resumed = log.count('"transfer_resumed"')
    retrs = server_command_count(run.server, "RETR")
    print(
        f"completion: {PER_ACTION} move + {PER_ACTION} delete downloads on vsftpd, 1 SIGKILL; "
        f"{len(received)} results ({duplicates} duplicates), {resumed} resumed from the "
        f"journal, {retrs} RETR for {len(run.files)} files; every destination byte-identical, "
        f"{len(archive_files)} archived, 0 sources left"
    )
    # Redelivered tasks whose file was in place were finished from the journal, not fetched again.
    assert resumed > 0 or duplicates == 0
    # Only the downloads cut short by the SIGKILL (one per session at most) and the tasks
    # published twice are fetched again (exactly_once aborts the cut-short ones: 0 duplicates,
    # and a fresh-clone run saw 102 RETR for 100 files).
    assert retrs <= len(run.files) + SESSIONS + duplicates


def server_command_count(server, command: str) -> int:
    text = "\n".join(p.read_text(errors="replace") for p in server.work.glob("*.log"))
    return sum(1 for line in text.splitlines() if f'"{command} ' in line)


async def test_failed_move_is_reported_and_the_download_counts_once(farm, tmp_path):
    """A move target under a regular file (root or not, no server can create a directory
    there) fails the action: the result is one success per task reporting the failure, the
    source stays, the destination is in place; metadata and headers come back unchanged."""
    run = Run(farm, tmp_path, "/archive/{name}")
    run.server.put(f"{run.prefix}/blocked", b"a file where a directory is expected")
    await make_topics(run.names, partitions=2)
    metadata = {"batch": "2026-12-02", "ü": ["日本", 1.5, None, True, {"n": 10**20}], "e": {}}
    headers = [
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("correlation-id", b"corr-\x00\xff-bytes"),
        ("correlation-id", b"repeated"),
    ]
    items = []
    for n in range(5):
        task_id = f"blocked-{n}"
        value: dict[str, Any] = task(
            task_id, "vsftpd", run.put(task_id, 5000), "local", f"/in/{task_id}.bin"
        )
        value["completion"] = {"action": "move", "target": f"{run.prefix}/blocked/{{name}}"}
        value["metadata"] = metadata
        items.append((json.dumps(value, ensure_ascii=False).encode(), headers))
    oversized = task("big-meta", "vsftpd", "/x", "local", "/y")
    oversized["metadata"] = {"x": "y" * 20_000}  # type: ignore[assignment]
    not_object = task("list-meta", "vsftpd", "/x", "local", "/y")
    not_object["metadata"] = [1, 2]  # type: ignore[assignment]
    items += [(json.dumps(oversized).encode(), headers), (json.dumps(not_object).encode(), [])]
    await produce_with_headers(run.names.tasks, items)
    run.worker.start()
    await asyncio.to_thread(run.worker.wait_ready)
    try:
        received = await collect(run.names, count=len(items), timeout=120)
        await asyncio.sleep(2)  # nothing more may follow
        received = await collect(run.names, count=len(items), timeout=30)
        status, entry = run.worker.get("/tasks/blocked-0")
    finally:
        assert run.worker.stop() == 0, run.worker.tail()

    counts = Counter(r.value["task_id"] for r in received)
    assert set(counts.values()) == {1}, counts
    records = await raw_records(run.names)
    for task_id in (f"blocked-{n}" for n in range(5)):
        value, record_headers = records[task_id]
        assert value["status"] == "success" and value["sha256"] == sha256(run.files[task_id])
        assert (run.storage / "in" / f"{task_id}.bin").read_bytes() == run.files[task_id]
        assert run.server.file(f"{run.prefix}/out/{task_id}.bin").exists()  # left in place
        completion = value["completion"]
        assert (completion["action"], completion["status"]) == ("move", "failed"), completion
        assert completion["target"] == f"{run.prefix}/blocked/{task_id}.bin"
        assert "550" in completion["error"] or "553" in completion["error"], completion
        assert json.dumps(value["metadata"]) == json.dumps(metadata)
        assert record_headers == headers  # byte for byte, order and repeats kept
    for task_id, fragment in (("big-meta", "at most 16384"), ("list-meta", "be an object")):
        value, record_headers = records[task_id]
        assert value["error_code"] == "INVALID_TASK" and fragment in value["error_message"]
    assert records["big-meta"][1] == headers
    assert status == 200 and entry["metadata"] == metadata, entry
    assert entry["completion"]["status"] == "failed"
    traced = [
        json.loads(line)
        for line in run.worker.log_text().splitlines()
        if line.startswith("{") and '"transfer_completed"' in line
    ]
    assert traced and all(e["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" for e in traced)
    print(f"failed action: {len(received)} results, one per task; {completion['error']}")


async def raw_records(names: Names) -> dict[str, tuple[dict[str, Any], list]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        names.results,
        names.failures,
        bootstrap_servers=KAFKA,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    found: dict[str, tuple[dict[str, object], list]] = {}
    try:
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    value = json.loads(record.value)
                    found[value["task_id"]] = (value, list(record.headers))
    finally:
        await consumer.stop()
    return found

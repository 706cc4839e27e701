"""The committed offset never passes an unfinished task (the Faust #606 trap), even when later
tasks of the same partition have finished; after a SIGKILL the slow task is redone. Both modes:
in exactly_once the finished later tasks' results are not even visible until the slow one ends
(their outcomes commit with their offsets), and after the kill each task has exactly one."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from scripts.ftpd import EmbeddedFTPServer
from tests.support.stack import (
    Names,
    Worker,
    collect,
    committed_offsets,
    make_topics,
    produce,
    read_all,
    task,
    write_connections,
)

SLOW_BYTES = 2 * 1024 * 1024
SEND_LIMIT = 128 * 1024  # bytes/s: the slow download takes ~16 s


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_kill_with_slow_task_in_flight_keeps_its_offset_uncommitted(tmp_path, guarantee):
    """Offsets 1..5 finish while offset 0 is still downloading; the commit must stay at 0."""
    exactly_once = guarantee == "exactly_once"
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    storage = tmp_path / "storage"
    storage.mkdir()
    ftp = EmbeddedFTPServer(tmp_path / "ftp").start()
    try:
        slow = os.urandom(SLOW_BYTES)
        (tmp_path / "ftp" / "slow.bin").write_bytes(slow)
        (tmp_path / "ftp" / "fast.txt").write_bytes(b"fast")
        names = Names()
        await make_topics(names, partitions=1)
        connections = write_connections(tmp_path / "connections.ini", ftp.port, storage)
        env = {"FTP_POOLER_KAFKA__PROCESSING_GUARANTEE": guarantee}
        worker = Worker(tmp_path, names, connections, extra_env=env)
        ftp.send_limit = SEND_LIMIT
        worker.start().wait_ready()

        tasks = [task("slow", "ftp-a", "/slow.bin", "local", "/slow.bin")]
        tasks += [
            task(f"fast-{n}", "ftp-a", "/fast.txt", "local", f"/fast-{n}.txt") for n in range(5)
        ]
        await produce(names.tasks, tasks, partition=0)
        if exactly_once:  # finished, but held back with their offsets behind the slow task
            await asyncio.sleep(3)
            assert await read_all(names) == []
        else:
            done = await collect(names, count=5, timeout=60)
            assert {r.value["task_id"] for r in done} == {f"fast-{n}" for n in range(5)}
        # Let several commit intervals (1 s here) pass while the slow task is still running.
        await asyncio.sleep(4)
        assert worker.get("/status")[1]["in_flight"] == 1
        committed = await committed_offsets(names.group, names.tasks)
        assert committed.get(0, 0) == 0, f"committed past the unfinished task: {committed}"

        worker.kill()
        ftp.send_limit = 0
        started = time.monotonic()
        worker.start().wait_ready()
        received = await collect(
            names,
            count=100,
            timeout=60,
            until=lambda rs: any(r.value["task_id"] == "slow" for r in rs),
            isolation_level=isolation,
        )
        slow_results = [r.value for r in received if r.value["task_id"] == "slow"]
        assert len(slow_results) == 1
        assert slow_results[0]["status"] == "success"
        assert slow_results[0]["sha256"] == hashlib.sha256(slow).hexdigest()
        assert (storage / "slow.bin").read_bytes() == slow
        assert time.monotonic() - started < 60
        # The restarted worker redid offsets 1..5 too (at least once), then committed past all.
        await asyncio.sleep(3)
        assert (await committed_offsets(names.group, names.tasks)).get(0) == 6
        if exactly_once:
            everything = await read_all(names)
            ids = sorted(r.value["task_id"] for r in everything)
            assert ids == sorted(t["task_id"] for t in tasks), ids  # one each, none repeated
        assert worker.stop() == 0
    finally:
        ftp.stop()

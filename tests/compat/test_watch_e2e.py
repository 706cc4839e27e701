"""Directory watches end to end: real workers, the real broker, pyftpdlib (MLSD) and vsftpd (LIST).

What must hold: every file that appears in a watched directory becomes exactly one task on
``ftp-tasks`` (counted there, by source path), a file still being written becomes one only once it
has stopped changing, restarts and rebalances between two workers add no task, and a directory of
100,000 entries is scanned without the worker's memory growing with it. Figures are printed
(run with -s).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer

from tests.support.stack import KAFKA, Names, Worker, collect, make_topics

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def kafka_broker() -> str:
    host, _, port = KAFKA.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"no Kafka broker at {KAFKA} ({exc}); run the suite with `make test-compat`")
    return KAFKA


class WatchRun:
    """One FTP server, a local storage, a watch on ``<prefix>/out`` and workers to run it."""

    def __init__(self, farm, tmp_path: Path, server: str, **watch: Any) -> None:
        self.server = farm.get(server)
        self.tmp_path = tmp_path
        self.storage = tmp_path / "storage"
        self.storage.mkdir()
        self.prefix = f"/w{random.randrange(10**9)}"  # the servers are shared by the session
        self.directory = f"{self.prefix}/out"
        self.server.put(f"{self.directory}/.keep", b"")  # the directory, owned by the FTP user
        ini = tmp_path / "connections.ini"
        ini.write_text(
            self.server.ini_section("partner")
            + f"\n[local]\ntype = local\nbase_path = {self.storage}\n"
        )
        settings = {
            "name": "partner-out",
            "connection": "partner",
            "directory": self.directory,
            "pattern": "*.dat",
            "destination": "local",
            "destination_path": "/in/{relpath}",
            "interval_seconds": 1,
            **watch,
        }
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"watches": [settings]}))
        self.names = Names()
        self.env = {
            "FTP_POOLER_CONFIG": str(config),
            "FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": "1",
        }
        self.ini = ini
        self.files: dict[str, bytes] = {}  # remote path -> final content

    def worker(self, worker_id: str) -> Worker:
        return Worker(self.tmp_path, self.names, self.ini, worker_id, extra_env=self.env)

    def put(self, relative: str, data: bytes) -> str:
        path = f"{self.directory}/{relative}"
        self.server.put(path, data)
        self.files[path] = data
        return path


async def read_tasks(names: Names, quiet: float = 3.0, timeout: float = 60) -> list[dict[str, Any]]:
    """Every task on the run's ``ftp-tasks`` topic, read until nothing new came for ``quiet`` s."""
    consumer = AIOKafkaConsumer(
        names.tasks,
        bootstrap_servers=KAFKA,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    tasks: list[dict[str, Any]] = []
    try:
        last, deadline = time.monotonic(), time.monotonic() + timeout
        while time.monotonic() - last < quiet and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    tasks.append({**json.loads(record.value), "_timestamp": record.timestamp})
                    last = time.monotonic()
    finally:
        await consumer.stop()
    return tasks


def per_source(tasks: list[dict[str, Any]]) -> Counter[str]:
    return Counter(t["src_path"] for t in tasks)


def watch_status(worker: Worker) -> dict[str, Any]:
    status, body = worker.get("/status")
    assert status == 200, body
    watch: dict[str, Any] = body["watches"][0]
    return watch


async def results_for(run: WatchRun, count: int, timeout: float = 90) -> dict[str, dict]:
    received = await collect(run.names, count=count, timeout=timeout)
    by_source: dict[str, dict] = {}
    for r in received:
        assert r.value["status"] == "success", r.value
        by_source[r.value["src_path"]] = r.value
    return by_source


async def test_watch_makes_one_task_per_file_and_waits_for_a_slow_upload(farm, tmp_path):
    """pyftpdlib (MLSD), recursive: files appearing while the worker runs, one of them written
    over five seconds, each become exactly one task; the slow one only after its last write,
    and its download is the whole file."""
    run = WatchRun(farm, tmp_path, "pyftpdlib-none", recursive=True)
    await make_topics(run.names, partitions=2)
    worker = run.worker("w1").start()
    await asyncio.to_thread(worker.wait_ready)
    try:
        for n in range(6):
            run.put(f"early-{n}.dat", os.urandom(1000 + n))
        run.put("sub/deeper/nested.dat", b"nested")
        run.put("ignored.tmp", b"not matched by *.dat")
        # The slow one: 15 appends of 1 KiB, one every 0.35 s, owned by the FTP user.
        slow_path = run.put("slow.dat", b"")
        slow_file = run.server.file(slow_path)
        chunks = [os.urandom(1024) for _ in range(15)]
        for chunk in chunks:
            with slow_file.open("ab") as handle:
                handle.write(chunk)
            await asyncio.sleep(0.35)
        slow_done_ms = time.time() * 1000
        run.files[slow_path] = b"".join(chunks)
        for n in range(3):
            run.put(f"late-{n}.dat", os.urandom(2000 + n))
        expected = {p for p in run.files if p.endswith(".dat")}
        results = await results_for(run, len(expected))
        tasks = await read_tasks(run.names)
        status = watch_status(worker)
    finally:
        assert worker.stop() == 0, worker.tail()

    counts = per_source(tasks)
    slow_task = next(t for t in tasks if t["src_path"] == slow_path)
    print(
        f"\nwatch (pyftpdlib, MLSD): {len(expected)} files, {len(tasks)} tasks, most per file "
        f"{max(counts.values())}; slow file's task {slow_task['_timestamp'] - slow_done_ms:.0f} ms "
        f"after its last write; /status: scans {status['scans']}, files_seen "
        f"{status['files_seen']}, tasks_produced {status['tasks_produced']}"
    )
    assert set(counts) == expected and set(counts.values()) == {1}, counts
    assert slow_task["_timestamp"] >= slow_done_ms  # never while it was still growing
    for path in expected:
        data = run.files[path]
        assert results[path]["sha256"] == hashlib.sha256(data).hexdigest(), path
        relative = path.removeprefix(run.directory + "/")
        assert (run.storage / "in" / relative).read_bytes() == data
    assert status["tasks_produced"] == len(expected) and status["errors"] == 0, status
    assert status["scanning_here"] is True and status["files_seen"] == len(expected)


async def test_watch_restart_and_rebalance_produce_no_duplicate_task(farm, tmp_path):
    """vsftpd (LIST, no MLSD): files arrive before and after a restart, while a second worker
    joins and after the first leaves; every file is one task, none is produced twice."""
    run = WatchRun(farm, tmp_path, "vsftpd-none")
    await make_topics(run.names, partitions=2)
    first, second = run.worker("w1"), run.worker("w2")
    produced = 0

    async def wave(label: str, count: int) -> None:
        nonlocal produced
        for n in range(count):
            run.put(f"{label}-{n}.dat", os.urandom(500 + n))
        produced += count
        await results_for(run, produced)

    try:
        first.start()
        await asyncio.to_thread(first.wait_ready)
        await wave("before-restart", 5)
        assert first.stop() == 0, first.tail()
        first.start()
        await asyncio.to_thread(first.wait_ready)
        await wave("after-restart", 5)
        second.start()
        await asyncio.to_thread(second.wait_ready)
        await wave("two-workers", 5)
        owners = [w.worker_id for w in (first, second) if watch_status(w)["scanning_here"]]
        assert first.stop() == 0, first.tail()  # its partitions, the watch's too, go to w2
        await wave("after-leave", 5)
        await asyncio.sleep(3)  # more scans over the same files
        tasks = await read_tasks(run.names)
        status = watch_status(second)
    finally:
        for worker in (first, second):
            assert worker.stop() == 0, worker.tail()

    counts = per_source(tasks)
    duplicates = {path: n for path, n in counts.items() if n > 1}
    print(
        f"\nwatch (vsftpd, LIST): {len(run.files)} files, {len(tasks)} tasks, duplicates "
        f"{len(duplicates)}; lister with two workers: {owners}; after w1 left: w2 scanning "
        f"{status['scanning_here']}, tasks_produced {status['tasks_produced']}"
    )
    assert set(counts) == {p for p in run.files if p.endswith(".dat")}
    assert not duplicates, duplicates
    assert len(owners) == 1, owners  # one lister at a time
    assert status["scanning_here"] is True and status["tasks_produced"] == 20, status


ENTRIES = int(os.environ.get("FTP_POOLER_WATCH_ENTRIES", "100000"))
READY = ENTRIES // 100


def sample_rss(worker: Worker, samples: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            samples.append(worker.rss_bytes())
        except (OSError, StopIteration):
            return
        stop.wait(0.05)


async def test_watch_scans_100000_entries_in_bounded_memory(farm, tmp_path):
    """vsftpd LIST of 100,000 files (1,000 of them old enough), written while the watch runs:
    the 1,000 become one task each (none of the others, though vsftpd shows those written
    during a listing with a year, not a time), and the worker's RSS while scanning the whole
    directory again and again stays within a few MiB of what it was for an empty one."""
    run = WatchRun(
        farm, tmp_path, "vsftpd-none", stable_check=False, min_age_seconds=3600, interval_seconds=2
    )
    await make_topics(run.names, partitions=2)
    worker = run.worker("w1").start()
    await asyncio.to_thread(worker.wait_ready)
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(worker, samples, stop), daemon=True)
    try:
        await asyncio.sleep(5)  # a few scans of the empty directory
        sampler.start()
        await asyncio.sleep(3)
        baseline = max(samples)
        root = run.server.file(run.directory)
        old = time.time() - 7200

        def create() -> None:
            # Empty files, root's and world-readable: the FTP user lists and reads them.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            for n in range(ENTRIES):
                path = f"{root}/f{n:06d}.dat"
                os.close(os.open(path, flags, 0o644))
                if n % (ENTRIES // READY) == 0:
                    os.utime(path, (old, old))

        started = time.monotonic()
        await asyncio.to_thread(create)
        created_in = time.monotonic() - started
        last = watch_status(worker)["last_scan_at"]
        full: list[Any] = []
        deadline = time.monotonic() + 120
        while len(full) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            status = watch_status(worker)
            if status["last_scan_at"] != last and status["entries_listed"] >= ENTRIES:
                full.append({**status, "rss": worker.rss_bytes()})
            last = status["last_scan_at"]
        results = await results_for(run, READY, timeout=120)
        tasks = await read_tasks(run.names)
    finally:
        stop.set()
        assert worker.stop() == 0, worker.tail()
    peak = max(samples)
    counts = per_source(tasks)
    mib = 1024 * 1024
    print(
        f"\nwatch (vsftpd, LIST) of {ENTRIES:,} entries (created in {created_in:.1f} s): "
        f"full scans {[s['last_scan_seconds'] for s in full]} s, RSS after each "
        f"{[round(s['rss'] / mib, 1) for s in full]} MiB, {len(tasks)} tasks for {READY} "
        f"old files (most per file {max(counts.values())}), RSS empty dir {baseline / mib:.1f} "
        f"MiB, peak while scanning {peak / mib:.1f} MiB (+{(peak - baseline) / mib:.1f} MiB)"
    )
    assert len(full) == 2, full
    # Both full scans listed every entry, and neither failed (errors is a running count: a scan
    # that overlapped the creation of 100,000 files on a busy machine may have timed out before).
    assert all(s["entries_listed"] == ENTRIES for s in full), [s["entries_listed"] for s in full]
    assert full[1]["errors"] == full[0]["errors"], [
        (s["errors"], s.get("last_error")) for s in full
    ]
    unexpected = [t for t in tasks if int(t["src_path"][-10:-4]) % 100]
    assert not unexpected, (len(unexpected), unexpected[:3])
    assert len(results) == READY and len(counts) == READY and set(counts.values()) == {1}
    # A list of the entries alone (path, size, time) would take about 25 MiB here; the growth
    # measured is the table's store and the producer's buffers for the 1,000 tasks.
    assert peak - baseline < 16 * mib, (baseline, peak)
    assert full[-1]["rss"] - full[0]["rss"] < 4 * mib, full  # and no growth scan after scan

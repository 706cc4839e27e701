"""Exactly one outcome per task for a read_committed reader, across SIGKILLs, rebalances and a
broker restart (exactly_once); at_least_once loses nothing and reports its duplicates.

Downloads and uploads, a tenth of them failing with FILE_NOT_FOUND. `make test` runs TASKS tasks;
`make soak` (FTP_POOLER_SOAK_SCALE=10) the issue's 2,000. Counts are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
import subprocess
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka.structs import TopicPartition

from agents.outbox import OutRecord
from agents.transactions import GroupOffsets, TransactionalCommitter, producer_factory
from scripts.ftpd import EmbeddedFTPServer
from tests.support.stack import (
    KAFKA,
    REPO,
    Names,
    Received,
    Worker,
    collect,
    committed_offsets,
    make_topics,
    produce,
    read_all,
    task,
    write_connections,
)

SCALE = int(os.environ.get("FTP_POOLER_SOAK_SCALE", "1"))
TASKS = 200 * SCALE
PASSWORD = "s3cret-pw"


class Run:
    """An FTP server, local storage and TASKS tasks: downloads, uploads, some missing sources."""

    def __init__(self, root: Path, guarantee: str) -> None:
        self.root = root
        self.storage = root / "storage"
        (self.storage / "up").mkdir(parents=True)
        self.ftp = EmbeddedFTPServer(root / "ftp", password=PASSWORD).start()
        (self.ftp.root / "in").mkdir(parents=True)
        self.names = Names()
        self.connections = write_connections(
            root / "c.ini", self.ftp.port, self.storage, password=PASSWORD
        )
        self.env = {"FTP_POOLER_KAFKA__PROCESSING_GUARANTEE": guarantee}
        self.guarantee = guarantee
        self.expected: dict[str, tuple[str, Path, bytes | None]] = {}  # id -> status, dst, bytes
        rng = random.Random(7)
        self.tasks = []
        for n in range(TASKS):
            task_id = f"t-{n}"
            data = rng.randbytes(rng.choice((1024, 4096, 32768)))
            if n % 10 == 9:  # a missing source
                self.tasks.append(task(task_id, "ftp-a", f"/in/nope{n}", "local", f"/out/{n}"))
                self.expected[task_id] = ("FILE_NOT_FOUND", self.storage / "out" / str(n), None)
            elif n % 2:  # upload
                (self.storage / "up" / f"{n}.bin").write_bytes(data)
                self.tasks.append(task(task_id, "local", f"/up/{n}.bin", "ftp-a", f"/dst/{n}.bin"))
                self.expected[task_id] = ("success", self.ftp.root / "dst" / f"{n}.bin", data)
            else:  # download
                (self.ftp.root / "in" / f"{n}.bin").write_bytes(data)
                self.tasks.append(task(task_id, "ftp-a", f"/in/{n}.bin", "local", f"/out/{n}.bin"))
                self.expected[task_id] = ("success", self.storage / "out" / f"{n}.bin", data)

    def worker(self, worker_id: str = "w1") -> Worker:
        return Worker(self.root, self.names, self.connections, worker_id, extra_env=self.env)

    async def outcomes(self) -> list[Received]:
        """Wait until every task has an outcome, then read everything a read_committed (or,
        in at_least_once, any) reader sees."""
        isolation = "read_committed" if self.guarantee == "exactly_once" else "read_uncommitted"
        ids = set(self.expected)
        await collect(
            self.names,
            count=10**9,
            timeout=300,
            until=lambda rs: ids <= {r.value["task_id"] for r in rs},
            isolation_level=isolation,
        )
        await asyncio.sleep(2)  # anything still on its way (a duplicate) arrives too
        return await read_all(self.names, isolation)

    def check(self, received: list[Received], label: str) -> int:
        counts = Counter(str(r.value["task_id"]) for r in received)
        assert set(counts) == set(self.expected), "a task without an outcome"
        for r in received:
            status, path, data = self.expected[str(r.value["task_id"])]
            if data is None:
                assert r.value["error_code"] == status, r.value
            else:
                assert r.value["status"] == status, r.value
                assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
        leftovers = list(self.root.rglob("*.ftp-pooler.part"))
        assert leftovers == [], leftovers
        duplicates = sum(c - 1 for c in counts.values())
        failed = sum(1 for s, _, _ in self.expected.values() if s != "success")
        print(
            f"{label} [{self.guarantee}]: {len(self.expected)} tasks ({failed} FILE_NOT_FOUND), "
            f"{len(received)} outcomes seen, {len(counts)} distinct, {duplicates} duplicates"
        )
        return duplicates


def slow_down(run: Run) -> None:
    """Two sessions and 0.15 s per RETR: downloads alone take ~TASKS / 27 s."""
    run.ftp.retr_delay = 0.15
    run.env["FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION"] = "2"


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
async def test_three_sigkills_give_exactly_one_outcome_per_task(tmp_path, guarantee):
    """The worker is SIGKILLed 3 times at seeded random moments and restarted each time."""
    run = Run(tmp_path, guarantee)
    try:
        await make_topics(run.names, 4)
        await produce(run.names.tasks, run.tasks)
        worker = run.worker()
        rng = random.Random(42)
        for _ in range(3):
            worker.start().wait_ready()
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            worker.kill()
        worker.start().wait_ready()
        duplicates = run.check(await run.outcomes(), "3 SIGKILLs")
        if guarantee == "exactly_once":
            assert duplicates == 0
        assert worker.stop() == 0
    finally:
        run.ftp.stop()


async def test_workers_joining_and_leaving_give_exactly_one_outcome_per_task(tmp_path):
    """A second worker joins mid-run and leaves (SIGTERM), the first is SIGKILLed meanwhile:
    partitions move between them several times (and the killed worker's producers are fenced
    by the new owner)."""
    run = Run(tmp_path, "exactly_once")
    slow_down(run)  # the run outlasts the joins and leaves
    try:
        await make_topics(run.names, 4)
        await produce(run.names.tasks, run.tasks)
        rng = random.Random(43)
        first, second = run.worker("w1"), run.worker("w2")
        first.start().wait_ready()
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        second.start().wait_ready()  # joins: a rebalance
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        first.kill()  # its partitions go to the second after the session timeout
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        first.start().wait_ready()  # rejoins: a rebalance
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        assert second.stop() == 0  # leaves: a rebalance
        duplicates = run.check(await run.outcomes(), "join, kill, rejoin, leave")
        assert duplicates == 0
        status = first.get("/status")[1]["transactions"]
        print(f"transactions after the rebalances (w1): {status}")
        assert status["processing_guarantee"] == "exactly_once"
        assert first.stop() == 0
    finally:
        run.ftp.stop()


async def test_broker_restart_gives_exactly_one_outcome_per_task(tmp_path):
    """The broker goes down mid-run and comes back: open transactions abort or complete, and
    the worker carries on without repeating an outcome."""
    run = Run(tmp_path, "exactly_once")
    slow_down(run)  # the run lasts long enough for the restart to hit it
    kafka_env = {
        **os.environ,
        "KAFKA_PORT": KAFKA.rsplit(":", 1)[1],
        "KAFKA_STATE_DIR": os.environ.get(
            "FTP_POOLER_TEST_KAFKA_STATE",
            str(REPO / ".local" / f"kafka-test-{KAFKA.rsplit(':', 1)[1]}"),
        ),
    }
    script = str(REPO / "scripts" / "local-kafka.sh")
    try:
        await make_topics(run.names, 4)
        worker = run.worker()
        worker.start().wait_ready()
        await produce(run.names.tasks, run.tasks)
        await collect(run.names, count=TASKS // 10, timeout=60, isolation_level="read_committed")
        await asyncio.to_thread(
            subprocess.run, [script, "down"], env=kafka_env, check=True, timeout=60
        )
        # A wrong state dir would "stop" nothing and the test would pass without a restart.
        assert not _answers(KAFKA), f"{KAFKA} still up: is FTP_POOLER_TEST_KAFKA_STATE its state?"
        await asyncio.sleep(3)
        await asyncio.to_thread(
            subprocess.run, [script, "up"], env=kafka_env, check=True, timeout=120
        )
        duplicates = run.check(await run.outcomes(), "broker restart")
        print(f"transactions (w1): {worker.get('/status')[1]['transactions']}")
        assert duplicates == 0
        assert worker.stop() == 0
    finally:
        run.ftp.stop()


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


class HeldCommits:
    """A producer factory whose producers, while ``hold`` is on, write their transaction (flush)
    and then wait at ``commit_transaction`` until ``release`` is set: a worker caught between
    writing its outcomes and committing them."""

    def __init__(self, settings: dict[str, str]) -> None:
        self.build = producer_factory(settings)
        self.hold = False
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()
        self.made = 0

    def __call__(self, transactional_id: str):
        producer = self.build(transactional_id)
        commit = producer.commit_transaction
        self.made += 1

        async def held_commit() -> None:
            if self.hold:
                await producer.flush()  # the outcomes are in the log, uncommitted
                self.waiting.set()
                await self.release.wait()
            await commit()

        producer.commit_transaction = held_commit
        return producer


async def test_new_owner_fences_the_old_producer_and_each_outcome_is_read_once():
    """Two workers' committers on one partition of a real broker: the old owner has written
    outcomes 5-9 in a transaction not yet committed when the new owner initialises the
    partition's transactional id. The old producer is fenced (its transaction aborted, its
    records dropped, no new producer started), the new owner redoes 5-9 and goes on
    committing, and a read_committed reader sees each task's outcome exactly once."""
    names = Names()
    await make_topics(names, 1)
    tp = TopicPartition(names.tasks, 0)
    settings = {"bootstrap_servers": KAFKA}

    def make(factory) -> TransactionalCommitter:
        return TransactionalCommitter(
            group_id=names.group,
            topics=lambda: [names.tasks],
            producer_factory=factory,
            committed_offset=GroupOffsets(settings, names.group),
            interval=3600,  # commits happen when the test calls commit_all
        )

    async def complete(c: TransactionalCommitter, offsets: range, by: str) -> None:
        for n in offsets:
            value = json.dumps({"task_id": f"t-{n}", "by": by}).encode()
            record = OutRecord(names.results, f"t-{n}".encode(), value, [])
            await c.complete(SimpleNamespace(message=SimpleNamespace(tp=tp, offset=n)), [record])

    old_factory = HeldCommits(settings)
    old, new = make(old_factory), make(producer_factory(settings))
    await old.start()
    await new.start()
    try:
        await old.assigned([tp])
        await complete(old, range(5), "old")
        await old.commit_all()
        assert old.commits_total == 1 and old.committed(tp) == 5

        await complete(old, range(5, 10), "old")
        old_factory.hold = True
        old_commit = asyncio.create_task(old.commit_all())
        await asyncio.wait_for(old_factory.waiting.wait(), timeout=30)
        await asyncio.wait_for(new.assigned([tp]), timeout=60)  # the rebalance's new owner
        old_factory.release.set()
        await asyncio.wait_for(old_commit, timeout=60)

        snapshot = old.snapshot()
        print(f"old owner: {snapshot}")
        assert old.fenced_total == 1 and old.commits_total == 1 and old.aborts_total == 0
        assert snapshot["fenced_partitions"] == 1 and old.dropped_total == 5
        assert snapshot["last_error"].split(":")[0] in ("ProducerFenced", "InvalidProducerEpoch")
        assert await committed_offsets(names.group, names.tasks) == {0: 5}

        # The new owner redoes from the committed offset and keeps committing: not fenced back.
        await complete(new, range(5, 10), "new")
        await new.commit_all()
        await complete(old, range(10, 11), "old")  # the old owner finishing more: dropped
        assert await old.flush(within=2)
        await old.commit_all()
        await complete(new, range(10, 11), "new")
        await new.commit_all()
        print(f"new owner: {new.snapshot()}")
        assert new.commits_total == 2 and new.fenced_total == 0 and new.aborts_total == 0
        assert old_factory.made == 1  # the fenced worker never initialised the id again
        assert await committed_offsets(names.group, names.tasks) == {0: 11}

        committed = [(r.value["task_id"], r.value["by"]) for r in await read_all(names)]
        expected = [(f"t-{n}", "old" if n < 5 else "new") for n in range(11)]
        assert committed == expected
        uncommitted = Counter(r.value["task_id"] for r in await read_all(names, "read_uncommitted"))
        # The old owner's outcomes 5-9 did reach the log: only its aborted transaction hides them.
        assert [uncommitted[f"t-{n}"] for n in range(11)] == [1] * 5 + [2] * 5 + [1]
        print(f"read_committed: {len(committed)} outcomes, read_uncommitted: {uncommitted.total()}")
    finally:
        await old.stop()
        await new.stop()

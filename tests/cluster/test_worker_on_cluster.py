"""A worker on a 3-broker cluster (RF 3, min.insync.replicas 2) while brokers die.

One broker SIGKILLed mid-run and restarted later: every task gets a result, every file is
byte-identical, the group's committed offsets keep moving while it is down, and /ready stays 200.
Then two of three down: /ready turns 503 within kafka.unhealthy_after_seconds (plus a margin),
and once they return every task still gets its result and work resumes. Last, two down again and
SIGTERM: the worker exits within its grace period plus the stop margin.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.kafka_client import create_topics, describe_topics, public_topics
from app.settings import KafkaSettings
from scripts.ftpd import EmbeddedFTPServer
from tests.cluster.conftest import WORKER_PORT, start_cluster
from tests.support.kafka_secure import KafkaCluster
from tests.support.stack import (
    Names,
    Worker,
    collect,
    committed_offsets,
    produce,
    task,
    wait_until,
    write_connections,
)

UNHEALTHY_AFTER = 15
GRACE = 5
PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def cluster() -> Iterator[KafkaCluster]:
    cluster = start_cluster(WORKER_PORT, "combined", "worker")
    try:
        yield cluster
    finally:
        cluster.script("cluster-down")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Watch:
    """/ready every 0.5 s in the background."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.seen: list[tuple[float, int]] = []
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        while True:
            status = await asyncio.to_thread(self.worker.get, "/ready")
            self.seen.append((time.monotonic(), status[0]))
            await asyncio.sleep(0.5)

    def since(self, start: float) -> list[int]:
        return [code for at, code in self.seen if at >= start]


async def test_worker_survives_one_broker_killed_and_waits_out_two(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    names = Names()
    ftp_root, storage = tmp_path / "ftp", tmp_path / "storage"
    storage.mkdir()
    ftp = EmbeddedFTPServer(ftp_root, password=PASSWORD).start()
    connections = write_connections(tmp_path / "c.ini", ftp.port, storage, password=PASSWORD)
    kafka = KafkaSettings(
        bootstrap_servers=cluster.bootstrap.split(","),
        consumer_group=names.group,
        input_topic=names.tasks,
        result_topic=names.results,
        fail_topic=names.failures,
        replication_factor=3,
        min_insync_replicas=2,
    )
    await create_topics(kafka, public_topics(kafka, 4))
    client: dict[str, Any] = {"bootstrap_servers": cluster.bootstrap}
    expected: dict[str, tuple[Path, str]] = {}

    def tasks(first: int, count: int) -> list[dict[str, str]]:
        made = []
        for n in range(first, first + count):
            data = f"file {n} ".encode() * (50 + n % 400)
            (ftp_root / "out").mkdir(parents=True, exist_ok=True)
            (ftp_root / "out" / f"f{n}.txt").write_bytes(data)
            expected[f"t-{n}"] = (storage / "in" / f"f{n}.txt", sha(data))
            made.append(task(f"t-{n}", "ftp-a", f"/out/f{n}.txt", "local", f"/in/f{n}.txt"))
        return made

    worker = Worker(
        tmp_path,
        names,
        connections,
        extra_env={
            "FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": cluster.bootstrap,
            "FTP_POOLER_KAFKA__REPLICATION_FACTOR": "3",
            "FTP_POOLER_KAFKA__MIN_INSYNC_REPLICAS": "2",
            "FTP_POOLER_KAFKA__UNHEALTHY_AFTER_SECONDS": str(UNHEALTHY_AFTER),
            "FTP_POOLER_POOL__REPORT_INTERVAL_SECONDS": "1",
            "FTP_POOLER_WORKER__SHUTDOWN_GRACE_SECONDS": str(GRACE),
        },
    )
    worker.start().wait_ready(120)
    internal = await describe_topics(kafka, [f"{names.group}-retries", names.tasks])
    print(f"topics: {internal}")
    assert {v["replication_factor"] for v in internal.values()} == {3}
    watch = Watch(worker)

    # Phase 1: 600 tasks produced over ~30 s; node 1 SIGKILLed after ~8 s, back after ~25 s.
    start = time.monotonic()
    offsets_while_down: list[int] = []
    for wave in range(30):
        await produce(names.tasks, tasks(wave * 20, 20), client=client)
        if wave == 8:
            cluster.script("node-kill", "1")
            killed_at = time.monotonic()
            print(f"node 1 killed at {killed_at - start:.1f} s")
        if 8 < wave < 25 and wave % 4 == 0:
            committed = await committed_offsets(names.group, names.tasks, client)
            offsets_while_down.append(sum(committed.values()))
        if wave == 25:
            cluster.script("node-start", "1")
            print(f"node 1 back at {time.monotonic() - start:.1f} s")
        await asyncio.sleep(1)
    received = await collect(names, 600, timeout=180, client=client)
    ready = watch.since(start)
    print(
        f"phase 1: {len(received)} results in {time.monotonic() - start:.1f} s; committed "
        f"offsets while node 1 was down: {offsets_while_down}; /ready answers "
        f"{sorted(set(ready))} ({len(ready)} polls)"
    )
    assert {r.value["task_id"] for r in received} == set(expected)
    for r in received:
        path, digest = expected[r.value["task_id"]]
        assert r.value["status"] == "success", r.value
        assert sha(path.read_bytes()) == digest
    assert offsets_while_down == sorted(offsets_while_down)
    assert offsets_while_down[-1] > offsets_while_down[0], offsets_while_down
    assert set(ready) == {200}, ready

    # Phase 2: 100 more tasks, then two of three brokers down.
    await produce(names.tasks, tasks(600, 100), client=client)
    await collect(names, 700, timeout=120, client=client)
    cluster.script("node-kill", "1")
    cluster.script("node-kill", "2")
    down_at = time.monotonic()
    while worker.get("/ready")[0] != 503:
        assert time.monotonic() - down_at < UNHEALTHY_AFTER + 20, worker.tail()
        await asyncio.sleep(0.5)
    turned = time.monotonic() - down_at
    status = worker.get("/status")[1]["kafka"]
    print(f"two brokers down: /ready 503 after {turned:.1f} s; /status kafka problems "
          f"{status['problems']}")  # fmt: skip
    assert status["problems"]
    await asyncio.sleep(5)
    cluster.script("node-start", "1")
    cluster.script("node-start", "2")
    back_at = time.monotonic()
    await produce(names.tasks, tasks(700, 100), client=client)
    received = await collect(names, 800, timeout=240, client=client)
    while worker.get("/ready")[0] != 200:
        assert time.monotonic() - back_at < 120, worker.tail()
        await asyncio.sleep(0.5)
    print(f"brokers back: {len({r.value['task_id'] for r in received})} of 800 tasks have a "
          f"result; /ready 200 after {time.monotonic() - back_at:.1f} s")  # fmt: skip
    assert {r.value["task_id"] for r in received} == set(expected)
    assert all(r.value["status"] == "success" for r in received)
    metrics = worker.get("/metrics", worker.metrics_port)[1]
    print([line for line in metrics.splitlines() if "kafka_failures_total{" in line])
    watch.task.cancel()

    # SIGTERM with two brokers gone: the worker still exits within the grace period plus the
    # stop margin (app.main.STOP_MARGIN_SECONDS), not when Kafka answers.
    await produce(names.tasks, tasks(800, 50), client=client)
    cluster.script("node-kill", "1")
    cluster.script("node-kill", "2")
    assert await wait_until(lambda: worker.get("/ready")[0] == 503, UNHEALTHY_AFTER + 20)
    stopped_at = time.monotonic()
    code = worker.stop(timeout=GRACE + 20)
    took = time.monotonic() - stopped_at
    print(f"SIGTERM with two brokers down: exit {code} after {took:.1f} s (grace {GRACE} s)")
    assert took <= GRACE + 12
    ftp.stop()

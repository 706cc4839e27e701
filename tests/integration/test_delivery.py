"""Nothing lost, nothing half-written: crashes, outages, shutdown, poison input, path jail, secrets.

Counts are printed (run with -s) so the issue's closing note can quote them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scripts.ftpd import EmbeddedFTPServer
from tests.support.stack import (
    KAFKA,
    PASSWORD,
    REPO,
    Received,
    Stack,
    collect,
    produce,
    task,
    wait_until,
)

SCALE = int(os.environ.get("FTP_POOLER_SOAK_SCALE", "1"))  # `make soak` raises it
FAST_RETRIES = {
    "FTP_POOLER_RETRY__MAX_ATTEMPTS": "8",
    "FTP_POOLER_RETRY__BACKOFF_INITIAL_SECONDS": "1",
    "FTP_POOLER_RETRY__BACKOFF_MAX_SECONDS": "8",
    "FTP_POOLER_POOL__CIRCUIT_OPEN_SECONDS": "2",
    "FTP_POOLER_POOL__CIRCUIT_OPEN_MAX_SECONDS": "4",
}


class Setup(Stack):
    """The shared stack plus the files its download tasks fetch, to check what landed."""

    def __init__(self, root: Path, partitions: int = 4, **server_options: Any) -> None:
        super().__init__(root, partitions=partitions, **server_options)
        self.files: dict[str, bytes] = {}

    def remote_files(self, count: int, size: int = 4096, seed: int = 1) -> list[dict[str, str]]:
        rng = random.Random(seed)
        tasks = []
        (self.ftp.root / "in").mkdir(parents=True, exist_ok=True)
        for n in range(count):
            data = rng.randbytes(size)
            (self.ftp.root / "in" / f"f{n}.bin").write_bytes(data)
            self.files[f"t-{n}"] = data
            tasks.append(task(f"t-{n}", "ftp-a", f"/in/f{n}.bin", "local", f"/out/f{n}.bin"))
        return tasks

    def check_files(self, received: list[Received]) -> None:
        for task_id, data in self.files.items():
            path = self.storage / "out" / f"f{task_id.split('-')[1]}.bin"
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
        leftovers = [p for p in self.root.rglob("*.ftp-pooler.part")]
        assert leftovers == []


def final_by_task(received: list[Received]) -> dict[str, list[dict[str, Any]]]:
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in received:
        by_task.setdefault(str(r.value["task_id"]), []).append(r.value)
    return by_task


def all_seen(expected: set[str]):
    def check(received: list[Received]) -> bool:
        return expected <= {r.value["task_id"] for r in received}

    return check


async def test_three_sigkills_lose_no_task_and_leave_no_partial_file(tmp_path):
    """2,000 tasks; the worker is SIGKILLed three times mid-run and restarted."""
    setup = Setup(tmp_path)
    try:
        await setup.make_topics()
        tasks = setup.remote_files(2000 * SCALE)
        await produce(setup.names.tasks, tasks)
        worker = setup.add_worker()
        rng = random.Random(42)
        for _ in range(3):
            worker.start().wait_ready()
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            worker.kill()
        worker.start().wait_ready()
        received = await collect(
            setup.names, count=10**9, timeout=300, until=all_seen(set(setup.files))
        )
        by_task = final_by_task(received)
        assert set(by_task) == set(setup.files)
        assert all(v["status"] == "success" for values in by_task.values() for v in values)
        setup.check_files(received)
        duplicates = sum(len(v) - 1 for v in by_task.values())
        print(
            f"crash safety: {len(setup.files)} tasks, 3 SIGKILLs, {len(received)} results, "
            f"{duplicates} duplicates, 0 lost"
        )
        assert worker.stop() == 0
    finally:
        setup.ftp.stop()


async def test_ftp_server_down_for_10_seconds_publishes_no_failure(tmp_path):
    """The server disappears mid-run and returns 10 s later: every task still succeeds."""
    setup = Setup(tmp_path)
    try:
        await setup.make_topics()
        tasks = setup.remote_files(300)
        setup.ftp.retr_delay = 0.1  # ~3 s for the whole run: the outage hits mid-run
        worker = setup.add_worker(extra_env=FAST_RETRIES)
        worker.start().wait_ready()
        await produce(setup.names.tasks, tasks)
        await collect(setup.names, count=60, timeout=60)
        port = setup.ftp.port
        setup.ftp.stop()
        await asyncio.sleep(10)
        setup.ftp = EmbeddedFTPServer(setup.ftp.root, password=PASSWORD, port=port).start()
        received = await collect(
            setup.names, count=10**9, timeout=180, until=all_seen(set(setup.files))
        )
        failures = [r.value for r in received if r.value["status"] != "success"]
        by_task = final_by_task(received)
        retried = sum(1 for v in by_task.values() if v[-1]["attempts"] > 1)
        print(f"ftp outage: {len(by_task)} tasks, {len(failures)} failures, {retried} retried")
        assert failures == []
        assert retried >= 1  # the outage really hit transfers
        setup.check_files(received)
        assert worker.stop() == 0
    finally:
        setup.ftp.stop()


async def test_kafka_broker_restart_mid_run_loses_nothing(tmp_path):
    """The broker goes down and comes back; the worker carries on and every task gets a result."""
    setup = Setup(tmp_path)
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
        await setup.make_topics()
        tasks = setup.remote_files(300)
        setup.ftp.retr_delay = 0.2  # ~6 s for the whole run: the restart hits mid-run
        worker = setup.add_worker()
        worker.start().wait_ready()
        await produce(setup.names.tasks, tasks)
        await collect(setup.names, count=50, timeout=60)
        await asyncio.to_thread(
            subprocess.run, [script, "down"], env=kafka_env, check=True, timeout=60
        )
        await asyncio.sleep(3)
        await asyncio.to_thread(
            subprocess.run, [script, "up"], env=kafka_env, check=True, timeout=120
        )
        received = await collect(
            setup.names, count=10**9, timeout=240, until=all_seen(set(setup.files))
        )
        by_task = final_by_task(received)
        assert set(by_task) == set(setup.files)
        assert all(v["status"] == "success" for values in by_task.values() for v in values)
        print(
            f"broker restart: {len(by_task)} tasks, {len(received)} results, "
            f"{sum(len(v) - 1 for v in by_task.values())} duplicates"
        )
        setup.check_files(received)
        assert worker.stop() == 0
    finally:
        setup.ftp.stop()


def black_hole() -> socket.socket:
    """A listener that completes TCP handshakes (via the backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


# The share of B's solo rate that must hold beside the black hole. at_least_once publishes each
# outcome when its transfer ends: B keeps 90 %. exactly_once publishes a partition's outcomes in
# offset order, so a B outcome behind a hole task waits until that task gives up (the 2 s
# connect timeout here, then it is parked): the transfers are as isolated, their outcomes appear
# up to that much later (README, Delivery): 0.75 was measured in a full suite run, so 60 % is
# required there (a stalled partition would give far less: B's outcomes would wait for all 800).
ISOLATION = {"at_least_once": 0.9, "exactly_once": 0.6}


@pytest.mark.parametrize("guarantee", sorted(ISOLATION))
async def test_black_holed_server_does_not_slow_the_healthy_one(tmp_path, guarantee):
    """Half the tasks go to a server that never answers; B keeps its share of its solo rate."""
    hole = black_hole()
    setup = Setup(tmp_path)
    try:
        extra = f"\n[ftp-hole]\ntype = ftp\nhost = 127.0.0.1\nport = {hole.getsockname()[1]}\n"
        setup.connections.write_text(setup.connections.read_text() + extra)
        await setup.make_topics()
        b_tasks = setup.remote_files(820)
        # 200 ms per RETR, like a distant server: B's rate (at most 50 tasks/s over 10 sessions)
        # is bounded by its server, not by this 2-core machine's CPU (shared with the broker, the
        # FTP server and whatever else runs), so the ratio measures isolation, not CPU sharing.
        # (At 100 ms, B's ~80 tasks/s needed enough CPU for a busy host to show 0.8 here.)
        setup.ftp.retr_delay = 0.2
        worker = setup.add_worker(
            extra_env={
                "FTP_POOLER_TRANSFER__CONNECT_TIMEOUT_SECONDS": "2",
                "FTP_POOLER_RETRY__MAX_ATTEMPTS": "3",
                "FTP_POOLER_RETRY__BACKOFF_INITIAL_SECONDS": "1",
                "FTP_POOLER_KAFKA__PROCESSING_GUARANTEE": guarantee,
            }
        )
        worker.start().wait_ready()

        async def b_rate(batch: list[dict[str, str]], also: list[dict[str, str]]) -> float:
            ids = {t["task_id"] for t in batch}
            paired = min(len(batch), len(also))  # interleaved, then the rest of either
            mixed = [x for pair in zip(batch[:paired], also[:paired], strict=True) for x in pair]
            mixed += batch[paired:] + also[paired:]
            assert len(mixed) == len(batch) + len(also)
            started = time.monotonic()
            await produce(setup.names.tasks, mixed)
            await collect(setup.names, count=10**9, timeout=120, until=all_seen(ids))
            return len(batch) / (time.monotonic() - started)

        # A warm-up first: once B's sessions have come back, a line of 400 (8 s at B's rate) is
        # joined rather than parked (pool.max_expected_wait_seconds), in both phases alike.
        await b_rate(b_tasks[:20], [])
        solo = await b_rate(b_tasks[20:420], [])
        hole_tasks = [
            task(f"hole-{n}", "ftp-hole", f"/x/{n}", "local", f"/hole/{n}") for n in range(800)
        ]
        mixed = await b_rate(b_tasks[420:], hole_tasks)
        received = await collect(
            setup.names,
            count=10**9,
            timeout=180,
            until=all_seen({t["task_id"] for t in hole_tasks}),
        )
        hole_results = [r.value for r in received if str(r.value["task_id"]).startswith("hole")]
        print(
            f"dead server ({guarantee}): B solo {solo:.0f} tasks/s, B beside black hole "
            f"{mixed:.0f} tasks/s (ratio {mixed / solo:.2f}); {len(hole_results)} hole results"
        )
        assert mixed >= ISOLATION[guarantee] * solo
        assert len(hole_results) == 800
        assert all(
            v["error_code"] == "CONNECTION_ERROR" and v["attempts"] == 3 for v in hole_results
        ), hole_results[:2]
        assert worker.stop() == 0
    finally:
        setup.ftp.stop()
        hole.close()


async def test_sigterm_with_50_transfers_in_flight_exits_0_within_grace(tmp_path):
    """50 throttled downloads run; SIGTERM finishes them within the grace period (exactly one
    outcome each); a second SIGTERM with a shorter grace abandons the rest cleanly."""
    setup = Setup(tmp_path)
    try:
        await setup.make_topics()
        tasks = setup.remote_files(100, size=256 * 1024)
        # pyftpdlib's throttle lets the first second's worth through, then sleeps ~2 s per
        # window: ~6 s per file here, 50 at once.
        setup.ftp.send_limit = 64 * 1024
        env = {
            "FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": "50",
            "FTP_POOLER_WORKER__MAX_IN_FLIGHT": "50",
            "FTP_POOLER_WORKER__SHUTDOWN_GRACE_SECONDS": "15",
        }
        worker = setup.add_worker(extra_env=env)
        worker.start().wait_ready()
        await produce(setup.names.tasks, tasks[:50])
        assert await wait_until(lambda: worker.get("/status")[1]["in_flight"] == 50, 15)
        started = time.monotonic()
        assert worker.stop() == 0
        first_stop = time.monotonic() - started
        assert first_stop < 15 + 5
        received = await collect(setup.names, count=50, timeout=30)
        counts = Counter(r.value["task_id"] for r in received)
        assert len(counts) == 50 and set(counts.values()) == {1}

        # Now a grace period shorter than the transfers: they are abandoned, not half-written.
        worker.extra_env["FTP_POOLER_WORKER__SHUTDOWN_GRACE_SECONDS"] = "2"
        worker.start().wait_ready()
        await produce(setup.names.tasks, tasks[50:])
        assert await wait_until(lambda: worker.get("/status")[1]["in_flight"] == 50, 15)
        await asyncio.sleep(0.5)
        started = time.monotonic()
        assert worker.stop() == 0
        second_stop = time.monotonic() - started
        assert second_stop < 2 + 5
        assert list(tmp_path.rglob("*.ftp-pooler.part")) == []
        setup.ftp.send_limit = 0
        worker.start().wait_ready()
        received = await collect(
            setup.names, count=10**9, timeout=60, until=all_seen(set(setup.files))
        )
        counts = Counter(r.value["task_id"] for r in received)
        duplicates = sum(c - 1 for c in counts.values())
        print(
            f"sigterm: stop with 50 in flight took {first_stop:.1f} s (grace 15), all 50 "
            f"finished once; short grace stop took {second_stop:.1f} s (grace 2), "
            f"{len(counts)} tasks done after restart, {duplicates} duplicates"
        )
        assert set(counts) == set(setup.files)
        setup.check_files(received)
        assert worker.stop() == 0
    finally:
        setup.ftp.stop()

"""Test harness: a real worker process (`faust -A app worker`), the real broker and FTP server.

:class:`Stack` is the one "FTP server + storage + topics + worker(s)" every integration test runs
against. Tasks are produced and results consumed with plain aiokafka clients, never the app's own
objects, so the wire contract itself is what the tests check.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from scripts.ftpd import EmbeddedFTPServer
from scripts.topics import create_topics

REPO = Path(__file__).resolve().parents[2]
FAUST = Path(sys.executable).with_name("faust")
KAFKA = os.environ.get("FTP_POOLER_TEST_KAFKA", "127.0.0.1:19192")
PASSWORD = "s3cret-pw"  # the FTP login of every stack (user alice); never in a result or log


# Listening ports are picked below Linux's ephemeral range (32768-60999): a port the kernel
# hands out as "free" there can be taken by any outgoing connection before the worker binds it.
_PORTS = list(range(21000, 32000))
random.Random(os.getpid()).shuffle(_PORTS)


def free_port() -> int:
    """A loopback port outside the ephemeral range that is free now (none handed out twice by
    this process)."""
    while _PORTS:
        port = _PORTS.pop()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port left in 21000-32000")


def closed_port() -> int:
    """A loopback port nothing listens on (connect is refused)."""
    return free_port()


@dataclass
class Names:
    """Unique topics and group per test, so tests sharing one broker never see each other."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def tasks(self) -> str:
        return f"ftp-tasks-{self.suffix}"

    @property
    def results(self) -> str:
        return f"ftp-results-{self.suffix}"

    @property
    def failures(self) -> str:
        return f"ftp-failures-{self.suffix}"

    @property
    def group(self) -> str:
        return f"ftp-pooler-{self.suffix}"


async def make_topics(names: Names, partitions: int) -> None:
    await create_topics(KAFKA, [names.tasks], partitions)
    await create_topics(KAFKA, [names.results, names.failures], 1)


class Worker:
    """One `faust -L uvloop -A app worker` subprocess (the Dockerfile's command) with its own
    ports, id and data dir."""

    live: ClassVar[list[Worker]] = []  # killed after each test (see tests/integration/conftest.py)

    def __init__(
        self,
        workdir: Path,
        names: Names,
        connections: Path,
        worker_id: str = "w1",
        extra_env: dict[str, str] | None = None,
        log_level: str = "info",
    ) -> None:
        self.workdir = workdir
        self.names = names
        self.connections = connections
        self.worker_id = worker_id
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.extra_env = extra_env or {}
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{worker_id}.log"
        self.runs = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FTP_POOLER_")}
        env.update(
            {
                "FTP_POOLER_CONNECTIONS": str(self.connections),
                "FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": KAFKA,
                "FTP_POOLER_KAFKA__CONSUMER_GROUP": self.names.group,
                "FTP_POOLER_KAFKA__INPUT_TOPIC": self.names.tasks,
                "FTP_POOLER_KAFKA__RESULT_TOPIC": self.names.results,
                "FTP_POOLER_KAFKA__FAIL_TOPIC": self.names.failures,
                "FTP_POOLER_KAFKA__COMMIT_INTERVAL_SECONDS": "1",
                "FTP_POOLER_KAFKA__SESSION_TIMEOUT_SECONDS": "6",
                "FTP_POOLER_KAFKA__HEARTBEAT_INTERVAL_SECONDS": "1",
                "FTP_POOLER_API__HOST": "127.0.0.1",
                "FTP_POOLER_API__PORT": str(self.api_port),
                "FTP_POOLER_METRICS__PORT": str(self.metrics_port),
                "FTP_POOLER_WORKER__ID": self.worker_id,
                "FTP_POOLER_WORKER__DATA_DIR": str(self.workdir / f"data-{self.worker_id}"),
                "FTP_POOLER_TRANSFER__CONNECT_TIMEOUT_SECONDS": "3",
                "FTP_POOLER_POOL__ACQUIRE_TIMEOUT_SECONDS": "10",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> Worker:
        self.runs += 1
        Worker.live.append(self)
        with self.log_path.open("ab") as log:
            log.write(f"\n==== run {self.runs} ====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [str(FAUST), "-L", "uvloop", "-A", "app", "worker", "-l", self.log_level],
                cwd=self.workdir,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.process.returncode}:\n{self.tail()}"
                )
            status, _ = self.get("/ready")
            if status == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready within {timeout} s:\n{self.tail()}")

    def get(self, path: str, port: int | None = None) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{port or self.api_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
                return response.status, _maybe_json(body)
        except urllib.error.HTTPError as exc:
            return exc.code, _maybe_json(exc.read().decode())
        except OSError:
            return 0, None

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"worker ignored SIGTERM for {timeout} s:\n{self.tail()}"
            ) from None

    def rss_bytes(self) -> int:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) * 1024

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _maybe_json(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body


def task(task_id: str, src_id: str, src_path: str, dst_id: str, dst_path: str) -> dict[str, str]:
    return {
        "task_id": task_id,
        "src_id": src_id,
        "src_path": src_path,
        "dst_id": dst_id,
        "dst_path": dst_path,
    }


async def produce(
    topic: str,
    values: Sequence[bytes | Mapping[str, Any]],
    *,
    partition: int | None = None,
    client: dict[str, Any] | None = None,
) -> None:
    """Produce raw values (dicts become JSON; key = task_id when there is one). ``client``:
    aiokafka options for another broker (bootstrap and security), else the suite's broker."""
    producer = AIOKafkaProducer(**(client or {"bootstrap_servers": KAFKA}), linger_ms=5)
    await producer.start()
    try:
        futures = []
        for value in values:
            if isinstance(value, Mapping):
                key = str(value.get("task_id", "")).encode() or None
                raw = json.dumps(value).encode()
            else:
                key, raw = None, value
            futures.append(await producer.send(topic, raw, key=key, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class Received:
    topic: str
    key: bytes | None
    value: dict[str, Any]


async def collect(
    names: Names,
    count: int,
    timeout: float = 120,
    until: Any = None,
    isolation_level: str = "read_uncommitted",
    client: dict[str, Any] | None = None,
) -> list[Received]:
    """Read results and failures from the beginning until ``count`` arrived (or ``until`` holds);
    ``isolation_level="read_committed"`` reads as a downstream exactly-once consumer does."""
    consumer = AIOKafkaConsumer(
        names.results,
        names.failures,
        **(client or {"bootstrap_servers": KAFKA}),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        isolation_level=isolation_level,
    )
    await consumer.start()
    received: list[Received] = []
    try:
        async with asyncio.timeout(timeout):
            while len(received) < count and not (until and until(received)):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        received.append(
                            Received(record.topic, record.key, json.loads(record.value))
                        )
    except TimeoutError:
        raise AssertionError(
            f"only {len(received)} of {count} results within {timeout} s"
        ) from None
    finally:
        await consumer.stop()
    return received


async def committed_offsets(
    group: str, topic: str, client: dict[str, Any] | None = None
) -> dict[int, int]:
    admin = AIOKafkaAdminClient(**(client or {"bootstrap_servers": KAFKA}))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if isinstance(tp, TopicPartition) and tp.topic == topic and meta.offset >= 0
    }


def write_connections(
    path: Path,
    ftp_port: int,
    storage: Path,
    user: str = "alice",
    password: str = "s3cret-pw",
    extra: str = "",
) -> Path:
    path.write_text(f"""
[ftp-a]
type = ftp
host = 127.0.0.1
port = {ftp_port}
user = {user}
pass = {password}

[ftp-dead]
type = ftp
host = 127.0.0.1
port = {closed_port()}
user = {user}
pass = {password}

[local]
type = local
base_path = {storage}

[local-b]
type = local
base_path = {storage}
{extra}""")
    return path


async def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` (e.g. a worker's HTTP status) until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


class Stack:
    """One FTP server (pyftpdlib, in this process) with user alice, local storage, topics and a
    consumer group of their own, a connections.ini naming them (``ftp-a``, ``ftp-dead``,
    ``local``, ``local-b``), and the workers added with :meth:`add_worker`.

    ``env`` applies to every worker; ``server_options`` go to :class:`EmbeddedFTPServer`.
    """

    def __init__(
        self,
        root: Path,
        *,
        partitions: int = 4,
        env: Mapping[str, str] | None = None,
        **server_options: Any,
    ) -> None:
        self.root = root
        self.ftp_root = root / "ftp"
        self.storage = root / "storage"
        self.storage.mkdir(parents=True)
        self.partitions = partitions
        self.env = dict(env or {})
        self.ftp = EmbeddedFTPServer(self.ftp_root, password=PASSWORD, **server_options).start()
        self.names = Names()
        self.connections = write_connections(
            root / "connections.ini", self.ftp.port, self.storage, password=PASSWORD
        )
        self.workers: dict[str, Worker] = {}

    def add_worker(
        self, worker_id: str = "w1", extra_env: Mapping[str, str] | None = None, **options: Any
    ) -> Worker:
        """A worker of this stack's group (not started): the stack's env plus ``extra_env``."""
        worker = Worker(
            self.root,
            self.names,
            self.connections,
            worker_id=worker_id,
            extra_env={**self.env, **(extra_env or {})},
            **options,
        )
        self.workers[worker_id] = worker
        return worker

    @property
    def worker(self) -> Worker:
        """The stack's only worker."""
        (worker,) = self.workers.values()
        return worker

    async def make_topics(self) -> None:
        await make_topics(self.names, self.partitions)

    def start(self) -> Stack:
        """Create the topics, then start every worker and wait until each is ready."""
        asyncio.run(self.make_topics())
        for worker in self.workers.values():
            worker.start().wait_ready()
        return self

    def close(self, *, check_exit: bool = True) -> None:
        """Stop the workers (SIGTERM; with ``check_exit`` each must exit 0), then the FTP server.

        Without ``check_exit`` the workers are killed: for tests that already stopped them.
        """
        unclean = []
        try:
            for worker in self.workers.values():
                if not check_exit:
                    worker.kill()
                elif worker.stop() != 0:
                    unclean.append(f"{worker.worker_id}:\n{worker.tail()}")
        finally:
            self.ftp.stop()
        assert not unclean, "\n".join(unclean)


async def read_all(names: Names, isolation_level: str = "read_committed") -> list[Received]:
    """Every result and failure on the topics now (up to their end, or last stable offset when
    reading committed only), from the beginning."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA,
        enable_auto_commit=False,
        group_id=None,
        isolation_level=isolation_level,
    )
    await consumer.start()
    received: list[Received] = []
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (names.results, names.failures)
            for p in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        async with asyncio.timeout(60):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        received.append(
                            Received(record.topic, record.key, json.loads(record.value))
                        )
    finally:
        await consumer.stop()
    return received


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or {0}

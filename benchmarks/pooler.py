"""FTP Pooler end to end: tasks on Kafka, one real worker process, results read back from Kafka.

Two modes. ``drain``: every task is produced first, then one worker starts; the window runs from
the worker's first fetch (it turns ready, or its first transfer starts if that is earlier) to
the moment the last result is consumed. ``stream``: the worker starts and turns ready first, then
the tasks are produced as fast as the producer goes; the window runs from the first send to the
last result consumed, and each task's latency (sent -> result consumed) is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks.measure import ProcStats
from benchmarks.servers import REPO, FtpServer, free_port
from scripts.topics import create_topics

TASK_PARTITIONS = 8


@dataclass
class Variant:
    """Which FTP Pooler to run and how: its virtualenv (the code it imports, unless ``env``
    sets PYTHONPATH to another checkout), extra settings (``FTP_POOLER_*``), and Faust's event
    loop (``faust -L``) and log level (``faust -l``) where they should differ from the command
    in the Dockerfile. ``workers`` > 1 runs that many worker processes in one consumer group on
    this host, the 10 sessions per server split between them (scaling out by replicas)."""

    label: str = "pooler"
    venv: Path = REPO / ".venv"
    env: dict[str, str] = field(default_factory=dict)
    loop: str | None = None
    loglevel: str | None = None
    workers: int = 1

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "venv": str(self.venv),
            "env": self.env,
            "loop": self.loop,
            "loglevel": self.loglevel,
            "workers": self.workers,
            "command": " ".join(["faust", *worker_command(self)[1:]]),
        }

    def with_env(self, **env: str) -> Variant:
        return dataclasses.replace(self, env={**self.env, **env})

    def has_setting(self, section: str, key: str) -> bool:
        """True when this variant's code knows ``<section>.<key>`` (else the worker would stop
        with a configuration error)."""
        probe = (
            "import sys, app.settings as s; "
            f"sys.exit(0 if {key!r} in s.Settings.model_fields[{section!r}].annotation"
            ".model_fields else 1)"
        )
        python = self.venv / "bin" / "python"
        done = subprocess.run([str(python), "-c", probe], cwd="/", capture_output=True, check=False)
        return done.returncode == 0


@dataclass
class PoolerRun:
    """One measured run of a worker."""

    mode: str
    tasks: int
    seconds: float
    cpu_seconds: float
    cpu_total_seconds: float
    peak_rss_kib: int
    startup_seconds: float
    window_start: str
    failures: dict[str, int]
    logins: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    max_in_flight_seen: int = 0
    max_busy_sessions_seen: int = 0
    rss_samples_kib: list[int] = field(default_factory=list)
    rss_at_ready_kib: int = 0
    cpu_system_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


def worker_env(
    kafka: str,
    names: dict[str, str],
    connections: Path,
    rundir: Path,
    variant: Variant,
    number: int = 0,
) -> tuple[dict[str, str], int]:
    api_port = free_port()
    suffix = f"-{number}" if number else ""  # the first worker keeps the plain names
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTP_POOLER_")}
    env.update(
        {
            "FTP_POOLER_CONNECTIONS": str(connections),
            "FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": kafka,
            "FTP_POOLER_KAFKA__CONSUMER_GROUP": names["group"],
            "FTP_POOLER_KAFKA__INPUT_TOPIC": names["tasks"],
            "FTP_POOLER_KAFKA__RESULT_TOPIC": names["results"],
            "FTP_POOLER_KAFKA__FAIL_TOPIC": names["failures"],
            "FTP_POOLER_API__HOST": "127.0.0.1",
            "FTP_POOLER_API__PORT": str(api_port),
            "FTP_POOLER_METRICS__PORT": "0",  # off: one port less that could be taken meanwhile
            "FTP_POOLER_WORKER__ID": f"bench{suffix}",
            "FTP_POOLER_WORKER__DATA_DIR": str(rundir / f"faust-data{suffix}"),
            "FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": str(max(1, 10 // variant.workers)),
        }
    )
    env.update(variant.env)
    return env, api_port


def deployed_command(dockerfile: Path = REPO / "Dockerfile") -> list[str]:
    """The worker command the image runs: its ENTRYPOINT and CMD (exec form)."""
    parts: dict[str, list[str]] = {}
    for line in dockerfile.read_text().splitlines():
        word, _, rest = line.partition(" ")
        if word in ("ENTRYPOINT", "CMD") and rest.lstrip().startswith("["):
            parts[word] = json.loads(rest)
    return parts.get("ENTRYPOINT", []) + parts.get("CMD", [])


def worker_command(variant: Variant) -> list[str]:
    """The Dockerfile's command with this variant's faust, event loop and log level."""
    argv = deployed_command() or ["faust", "-A", "app", "worker", "-l", "info"]
    if argv[0] != "faust":
        raise RuntimeError(f"the Dockerfile does not run faust: {argv}")
    options = {"-L": variant.loop, "-l": variant.loglevel}
    for flag, value in options.items():
        if value is None:
            continue
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        elif flag == "-L":
            argv[1:1] = [flag, value]  # a top-level option: before -A app worker
        else:
            argv += [flag, value]
    return [str(variant.venv / "bin" / "faust"), *argv[1:]]


def write_connections(path: Path, server: FtpServer, local_base: Path) -> Path:
    path.write_text(
        f"[ftp]\ntype = ftp\nhost = {server.host}\nport = {server.port}\n"
        f"user = {server.user}\npass = {server.password}\n\n"
        f"[local]\ntype = local\nbase_path = {local_base}\n"
    )
    return path


async def http_get(port: int, path: str, within: float = 2) -> tuple[int, Any]:
    """A tiny HTTP/1.0 GET on 127.0.0.1 (status, parsed JSON body or None)."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return 0, None
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


class ResultReader:
    """Reads the results and failures topics from the beginning, noting when each arrived."""

    def __init__(self, kafka: str, topics: list[str]) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka, enable_auto_commit=False, group_id=None
        )
        self.partitions = [TopicPartition(topic, 0) for topic in topics]
        self.received: list[tuple[float, dict[str, Any]]] = []

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign(self.partitions)
        await self.consumer.seek_to_beginning(*self.partitions)

    async def collect(
        self, count: int, within: float, process: asyncio.subprocess.Process
    ) -> list[tuple[float, dict[str, Any]]]:
        deadline = time.monotonic() + within
        while len(self.received) < count:
            if process.returncode is not None:
                raise RuntimeError(f"worker exited with {process.returncode} mid-run")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(self.received)} of {count} results in {within} s")
            batch = await self.consumer.getmany(timeout_ms=200, max_records=10_000)
            now = time.time()
            for records in batch.values():
                for record in records:
                    self.received.append((now, json.loads(record.value)))
        return self.received

    async def stop(self) -> None:
        await self.consumer.stop()


async def produce(kafka: str, topic: str, tasks: list[dict[str, str]]) -> dict[str, float]:
    """Send every task (key = task_id) and wait for the acks; returns each task's send time."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5, acks="all")
    await producer.start()
    sent: dict[str, float] = {}
    try:
        futures = []
        for task in tasks:
            sent[task["task_id"]] = time.time()
            value = json.dumps(task).encode()
            futures.append(await producer.send(topic, value, key=task["task_id"].encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def delete_topics(kafka: str, prefix_group: str, topics: list[str]) -> None:
    """Remove the run's topics and the worker's internal ones, so the broker stays small."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        existing = await admin.list_topics()
        doomed = [t for t in existing if t in topics or t.startswith(prefix_group)]
        if doomed:
            with contextlib.suppress(Exception):
                await admin.delete_topics(doomed)
    finally:
        await admin.close()


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1], 1)}


async def run_pooler(
    *,
    kafka: str,
    variant: Variant,
    server: FtpServer,
    tasks: list[dict[str, str]],
    mode: str,
    local_base: Path,
    rundir: Path,
    log: Any,
    limit: float = 900,
    profile: Path | None = None,
) -> PoolerRun:
    """One worker process, ``tasks`` through it in ``mode``; everything it started is stopped.

    ``rundir`` (existing) gets the worker's data directory and connections.ini; ``log`` (an open
    binary file) the worker's output.
    """
    suffix = uuid.uuid4().hex[:8]
    names = {
        "tasks": f"bench-tasks-{suffix}",
        "results": f"bench-results-{suffix}",
        "failures": f"bench-failures-{suffix}",
        "group": f"bench-{suffix}",
    }
    await create_topics(kafka, [names["tasks"]], TASK_PARTITIONS)
    await create_topics(kafka, [names["results"], names["failures"]], 1)
    connections = write_connections(rundir / "connections.ini", server, local_base)
    env, api_port = worker_env(kafka, names, connections, rundir, variant)
    reader = ResultReader(kafka, [names["results"], names["failures"]])
    await reader.start()
    process: asyncio.subprocess.Process | None = None
    others: list[tuple[asyncio.subprocess.Process, ProcStats, int]] = []  # workers 2..n
    spy: asyncio.subprocess.Process | None = None
    try:
        sent: dict[str, float] = {}
        # Several workers drain a backlog produced once all of them have joined the group (else
        # the first one ready takes the whole backlog before the others get partitions).
        produce_first = mode == "drain" and variant.workers == 1
        if produce_first:
            sent = await produce(kafka, names["tasks"], tasks)
        argv = worker_command(variant)
        spawned = time.time()
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=rundir, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
        stats = ProcStats(process.pid)
        for number in range(1, variant.workers):
            other_env, other_port = worker_env(kafka, names, connections, rundir, variant, number)
            other = await asyncio.create_subprocess_exec(
                *argv, cwd=rundir, env=other_env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
            others.append((other, ProcStats(other.pid), other_port))
        ready_at = await _wait_ready(api_port, process, within=120)
        for other, _stats, other_port in others:
            ready_at = max(ready_at, await _wait_ready(other_port, other, within=120))
        others_cpu_at_start = sum(o_stats.cpu_seconds() for _o, o_stats, _p in others)
        cpu_at_start = stats.cpu_seconds()
        system_at_start = stats.cpu_split()[1]
        rss_at_ready = stats.memory_kib().get("VmRSS", 0)
        if profile is not None:
            spy = await _start_profiler(process.pid, profile, log)
        sampler = asyncio.create_task(_sample(api_port, stats))
        started = ready_at
        if not produce_first:
            started = time.time()
            sent = await produce(kafka, names["tasks"], tasks)
        received = await reader.collect(len(tasks), limit, process)
        finished = received[-1][0]
        cpu_at_end = stats.cpu_seconds()
        others_cpu = sum(o_stats.cpu_seconds() for _o, o_stats, _p in others) - others_cpu_at_start
        system_at_end = stats.cpu_split()[1]
        memory = stats.memory_kib()
        others_peak = max(
            [o_stats.memory_kib().get("VmHWM", 0) for _o, o_stats, _p in others] or [0]
        )
        logins = await _logins([api_port, *(p for _o, _s, p in others)])
        sampler.cancel()
        samples = await asyncio.gather(sampler, return_exceptions=True)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        if process is not None:
            await _stop(process)
        for other, _stats, _port in others:
            await _stop(other)
        if spy is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.wait(), 30)
        await reader.stop()
        await delete_topics(kafka, names["group"], list(names.values()))
    with (rundir / "results.jsonl").open("w") as timeline:  # for looking into a run later
        for consumed_at, value in received:
            timeline.write(json.dumps({"consumed_at": consumed_at, **value}) + "\n")
    window_start = "ready" if mode == "drain" else "first send"
    if mode == "drain":
        first_transfer = min(_epoch(v["timestamp"]) - v["duration_ms"] / 1000 for _t, v in received)
        if first_transfer < started or not produce_first:
            started, window_start = first_transfer, "first transfer"
    failures = Counter(
        str(v.get("error_code")) for _t, v in received if v.get("status") != "success"
    )
    latencies = [(t - sent[v["task_id"]]) * 1000 for t, v in received if v.get("task_id") in sent]
    peaks = samples[0] if samples and isinstance(samples[0], dict) else {}
    return PoolerRun(
        mode=mode,
        tasks=len(tasks),
        seconds=finished - started,
        cpu_seconds=round(cpu_at_end - cpu_at_start + others_cpu, 2),
        cpu_total_seconds=round(cpu_at_end, 2),
        peak_rss_kib=max(memory.get("VmHWM", 0), others_peak),
        startup_seconds=round(ready_at - spawned, 2),
        window_start=window_start,
        failures=dict(failures),
        logins=logins,
        latency_ms=_percentiles(latencies) if mode == "stream" else {},
        max_in_flight_seen=int(peaks.get("in_flight", 0)),
        max_busy_sessions_seen=int(peaks.get("busy", 0)),
        rss_samples_kib=list(peaks.get("rss", [])),
        rss_at_ready_kib=rss_at_ready,
        cpu_system_seconds=round(system_at_end - system_at_start, 2),
    )


async def _logins(ports: list[int]) -> int:
    """FTP logins made by the workers answering on ``ports`` (from their /status)."""
    total = 0
    for port in ports:
        _code, status = await http_get(port, "/status")
        pools = (status or {}).get("pools", {}).get("connections", {})
        total += sum(int(p.get("opened_total", 0)) for p in pools.values())
    return total


async def _wait_ready(port: int, process: asyncio.subprocess.Process, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"worker exited with {process.returncode} before it was ready")
        status, _ = await http_get(port, "/ready", within=1)
        if status == 200:
            return time.time()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"worker not ready within {within} s")


async def _sample(port: int, stats: ProcStats) -> dict[str, Any]:
    """Until cancelled: the most tasks in flight and busy sessions seen, RSS every 0.5 s."""
    peaks: dict[str, Any] = {"in_flight": 0, "busy": 0, "rss": []}
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            _code, status = await http_get(port, "/status", within=2)
            if status:
                peaks["in_flight"] = max(peaks["in_flight"], int(status.get("in_flight", 0)))
                busy = sum(int(p.get("busy", 0)) for p in status["pools"]["connections"].values())
                peaks["busy"] = max(peaks["busy"], busy)
            peaks["rss"].append(stats.memory_kib().get("VmRSS", 0))
            await asyncio.sleep(0.5)
    return peaks


async def _start_profiler(pid: int, output: Path, log: Any) -> asyncio.subprocess.Process:
    """py-spy sampling the worker (all threads, 250 Hz) into a collapsed-stack file."""
    py_spy = REPO / ".venv" / "bin" / "py-spy"
    argv = [str(py_spy), "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
    argv += ["--threads", "--gil", "--output", str(output)]
    return await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=asyncio.subprocess.STDOUT)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0

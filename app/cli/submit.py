"""``submit``: read tasks, produce them to the input topic, follow their outcomes to a summary.

Tasks are validated with the worker's own parser before anything is produced (all or nothing).
Outcomes are read from the results and failures topics, from their end offsets taken before the
first task is produced, and matched by key (results are keyed by task_id).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.errors import InvalidTask
from models.task import parse_task

TASK_FIELDS = ("task_id", "src_id", "src_path", "dst_id", "dst_path")
MAX_ERRORS_SHOWN = 10
MAX_FAILURES_SHOWN = 20
METADATA_WAIT_SECONDS = 15


class InputError(Exception):
    """The input holds invalid tasks (nothing is produced); the message lists them."""


@dataclass
class Submitted:
    """One validated task: its id and the exact bytes to produce."""

    task_id: str
    value: bytes
    where: str  # "line 3" / "row 3" / "flags", for messages


def read_jsonl(stream: IO[str], name: str) -> Iterator[tuple[str, bytes]]:
    for number, line in enumerate(stream, 1):
        if line.strip():
            yield f"{name} line {number}", line.strip().encode()


def read_csv(stream: IO[str], name: str) -> Iterator[tuple[str, bytes]]:
    reader = csv.DictReader(stream)
    missing = [f for f in TASK_FIELDS if f not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{name}: the CSV header lacks {', '.join(missing)}")
    for number, row in enumerate(reader, 2):
        task = {f: row[f] for f in TASK_FIELDS if row.get(f) is not None}
        yield f"{name} line {number}", json.dumps(task, ensure_ascii=False).encode()


def load_tasks(entries: Iterator[tuple[str, bytes]]) -> list[Submitted]:
    """Validate every task exactly as the worker does; unique task_ids (outcomes are keyed by
    them). Raises :class:`InputError` naming the first problems."""
    tasks: list[Submitted] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for where, raw in entries:
        try:
            task = parse_task(raw)
        except InvalidTask as exc:
            problems.append(f"{where}: {exc.message}")
            continue
        if task.task_id in seen:
            problems.append(
                f"{where}: task_id {task.task_id!r} already used ({seen[task.task_id]})"
            )
            continue
        seen[task.task_id] = where
        tasks.append(Submitted(task.task_id, raw, where))
    if problems:
        shown = problems[:MAX_ERRORS_SHOWN]
        more = len(problems) - len(shown)
        lines = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
        raise InputError(f"{len(problems)} invalid task(s); nothing was produced:\n  {lines}")
    if not tasks:
        raise InputError("no tasks given")
    return tasks


def open_input(path: str, fmt: str, stdin: IO[str]) -> Iterator[tuple[str, bytes]]:
    """Entries of a JSON-lines or CSV file (``-`` is stdin); ``auto`` picks CSV for ``.csv``."""
    if fmt == "auto":
        fmt = "csv" if path.lower().endswith(".csv") else "jsonl"
    reader = read_csv if fmt == "csv" else read_jsonl
    if path == "-":
        yield from reader(stdin, "stdin")
        return
    try:
        with open(path, encoding="utf-8", newline="") as stream:
            yield from reader(stream, path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover


@dataclass
class Outcomes:
    """What came back so far, for the progress line and the summary."""

    expected: set[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def add(self, value: dict[str, Any]) -> bool:
        task_id = value.get("task_id")
        if task_id not in self.expected or task_id in self.results:
            return False  # another client's task, or a repeat (delivery is at least once)
        self.results[task_id] = value
        if len(self.results) == len(self.expected):
            self.finished = time.monotonic()
        return True

    @property
    def succeeded(self) -> int:
        return sum(1 for v in self.results.values() if v.get("status") == "success")

    @property
    def failed(self) -> int:
        return len(self.results) - self.succeeded

    @property
    def waiting(self) -> int:
        return len(self.expected) - len(self.results)

    @property
    def bytes(self) -> int:
        return sum(int(v.get("bytes_transferred") or 0) for v in self.results.values())

    @property
    def elapsed(self) -> float:
        return max(1e-6, (self.finished or time.monotonic()) - self.started)

    def rate(self) -> str:
        files = len(self.results) / self.elapsed
        return f"{files:.1f} files/s, {human_bytes(self.bytes / self.elapsed)}/s"


async def produce(
    bootstrap: list[str], topic: str, tasks: list[Submitted], client: dict[str, Any] | None = None
) -> None:
    producer = AIOKafkaProducer(
        **(client or {"bootstrap_servers": bootstrap}), acks="all", linger_ms=10
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, task.value, key=task.task_id.encode()) for task in tasks
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def outcome_consumer(
    bootstrap: list[str], topics: list[str], client: dict[str, Any] | None = None
) -> AIOKafkaConsumer:
    """A group-less consumer of every partition of ``topics``, positioned at their current end
    (resolved before returning, so nothing produced afterwards can be missed)."""
    consumer = AIOKafkaConsumer(
        *topics,
        **(client or {"bootstrap_servers": bootstrap}),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(METADATA_WAIT_SECONDS):
            while {tp.topic for tp in consumer.assignment()} != set(topics):  # noqa: ASYNC110 (aiokafka has no event for it)
                await asyncio.sleep(0.05)
        for tp in consumer.assignment():
            await consumer.position(tp)
    except TimeoutError:
        await consumer.stop()
        found = {tp.topic for tp in consumer.assignment()}
        missing = ", ".join(t for t in topics if t not in found)
        raise InputError(f"topic(s) {missing} not found on {','.join(bootstrap)}") from None
    except Exception:
        await consumer.stop()
        raise
    return consumer


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "[green]{task.fields[ok]} done[/] [red]{task.fields[failed]} failed[/] "
            "{task.fields[waiting]} in flight  {task.fields[bytes]}  {task.fields[rate]}"
        ),
        TimeElapsedColumn(),
        console=console,
    )


async def follow(
    consumer: AIOKafkaConsumer, outcomes: Outcomes, console: Console, wait_limit: float | None
) -> None:
    """Read outcomes until every task has one or ``wait_limit`` seconds pass, with a live
    progress bar."""
    deadline = None if not wait_limit else time.monotonic() + wait_limit
    with progress_bar(console) as progress:

        def fields() -> dict[str, Any]:
            return {
                "completed": len(outcomes.results),
                "ok": outcomes.succeeded,
                "failed": outcomes.failed,
                "waiting": outcomes.waiting,
                "bytes": human_bytes(outcomes.bytes),
                "rate": outcomes.rate(),
            }

        bar = progress.add_task("transfers", total=len(outcomes.expected), **fields())

        def refresh() -> None:
            progress.update(bar, **fields())

        while outcomes.waiting and (deadline is None or time.monotonic() < deadline):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    try:
                        outcomes.add(json.loads(record.value))
                    except (ValueError, TypeError, AttributeError):
                        continue  # not a result of ours
            refresh()


def summary(outcomes: Outcomes) -> list[Any]:
    """Renderables: outcomes by status and error code, throughput, and the first failures."""
    by_outcome: Counter[tuple[str, str]] = Counter()
    bytes_by: Counter[tuple[str, str]] = Counter()
    for value in outcomes.results.values():
        key = (str(value.get("status")), str(value.get("error_code") or ""))
        by_outcome[key] += 1
        bytes_by[key] += int(value.get("bytes_transferred") or 0)
    table = Table(title="Summary", title_justify="left")
    table.add_column("status")
    table.add_column("error code")
    table.add_column("tasks", justify="right")
    table.add_column("bytes", justify="right")
    for key in sorted(by_outcome, key=lambda k: (k[0] != "success", k[1])):
        table.add_row(key[0], key[1] or "-", str(by_outcome[key]), human_bytes(bytes_by[key]))
    if outcomes.waiting:
        table.add_row("no outcome yet", "-", str(outcomes.waiting), "-")
    table.add_section()
    table.add_row("total", "", str(len(outcomes.expected)), human_bytes(outcomes.bytes))
    lines: list[Any] = [
        table,
        f"{len(outcomes.results)} of {len(outcomes.expected)} tasks finished in "
        f"{outcomes.elapsed:.1f} s: {outcomes.rate()}",
    ]
    failures = [v for v in outcomes.results.values() if v.get("status") != "success"]
    if failures:
        listed = Table(title="Failures", title_justify="left")
        for column in ("task_id", "error code", "attempts", "message"):
            listed.add_column(column, overflow="fold")
        for value in sorted(failures, key=lambda v: str(v.get("task_id")))[:MAX_FAILURES_SHOWN]:
            listed.add_row(
                str(value.get("task_id")),
                str(value.get("error_code")),
                str(value.get("attempts")),
                str(value.get("error_message")),
            )
        lines.append(listed)
        if len(failures) > MAX_FAILURES_SHOWN:
            lines.append(f"... and {len(failures) - MAX_FAILURES_SHOWN} more failures")
    return lines


def single_task(fields: dict[str, str | None]) -> Iterator[tuple[str, bytes]]:
    """The task given by command-line flags."""
    task = {name: value for name, value in fields.items() if value is not None}
    yield "flags", json.dumps(task, ensure_ascii=False).encode()


async def submit(
    *,
    bootstrap: list[str],
    input_topic: str,
    outcome_topics: list[str],
    tasks: list[Submitted],
    console: Console,
    wait: bool,
    wait_limit: float | None,
    client: dict[str, Any] | None = None,
) -> int:
    """Produce ``tasks``; unless ``wait`` is false, follow them. Returns the exit code.
    ``client``: aiokafka options (security included) used instead of ``bootstrap`` alone."""
    if not wait:
        await produce(bootstrap, input_topic, tasks, client)
        console.print(f"produced {len(tasks)} task(s) to {input_topic}")
        return 0
    consumer = await outcome_consumer(bootstrap, outcome_topics, client)
    outcomes = Outcomes({t.task_id for t in tasks})
    try:
        await produce(bootstrap, input_topic, tasks, client)
        console.print(f"produced {len(tasks)} task(s) to {input_topic}; waiting for outcomes")
        await follow(consumer, outcomes, console, wait_limit)
    finally:
        await consumer.stop()
        for renderable in summary(outcomes):
            console.print(renderable)
    return 0 if outcomes.failed == 0 and outcomes.waiting == 0 else 1


def stdin_text(stream: Any) -> IO[str]:
    """Faust's command runner may replace sys.stdin; read the real one as UTF-8 text."""
    buffer = getattr(stream, "buffer", None)
    return io.TextIOWrapper(buffer, encoding="utf-8") if buffer is not None else stream

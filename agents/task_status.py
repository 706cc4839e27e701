"""The latest known state of every task, kept in a table that any worker's API can route to.

Keying: tasks on ``ftp-tasks`` may be keyed by anything, so the table is not fed from that topic.
Every state change is sent to an internal status topic (``<group>-task-status``, as many
partitions as ``kafka.topic_partitions``) keyed by the task_id, serialized as the table
serializes its keys (a JSON string), and one agent on that topic writes the table. The table's
changelog has the same partition count and the same key bytes, so a task_id's partition is the
producer's hash of those bytes: known to every worker.
``GET /tasks/{task_id}`` is decorated with ``app.table_route``, which hashes the id the same way
and forwards the request to the worker that owns that partition.

Changes wait up to ``BATCH_SECONDS`` for others of their partition and go in one message with
them (``{"batch": [[task_id, change], ...]}``, keyed by its first task_id; a lone change is sent
as itself, and a submission at once): under load one message, and one event of the agent, carry
many tasks instead of one. The changes of one task_id keep the order of the calls (one queue,
sent in order by one sender at a time).

States: ``queued`` (accepted by ``POST /tasks``, or parked for a retry), ``in_progress`` (an
attempt running for more than ``IN_PROGRESS_AFTER_SECONDS``), ``success`` and ``failed`` (the
published outcome). Entries older than
``api.task_retention_hours`` are answered as unknown and purged by the owning worker.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import faust
import structlog
from aiokafka.partitioner import murmur2
from faust.types import TP

from models.result import TransferResult
from models.task import TransferTask

log = structlog.get_logger("ftp_pooler.task_status")

TABLE_NAME = "task_status"
QUEUED, IN_PROGRESS, SUCCESS, FAILED = "queued", "in_progress", "success", "failed"
STATES = (QUEUED, IN_PROGRESS, SUCCESS, FAILED)
# Fields of one attempt's outcome: cleared when a task is queued or started again.
_OUTCOME_FIELDS = (
    "finished_at",
    "error_code",
    "error_message",
    "retryable",
    "bytes_transferred",
    "duration_ms",
    "sha256",
    "next_attempt_at",
    "completion",
)
_INTERNAL = ("_ts", "_partition")  # epoch seconds of the last change, and the entry's partition
PURGE_BATCH = 500
IN_PROGRESS_AFTER_SECONDS = 0.5
BATCH_SECONDS = 0.2  # how long a change may wait for others of its partition
BATCH_MAX_ENTRIES = 200
BATCH_MAX_BYTES = 256 * 1024  # estimated; far below Kafka's 1 MiB default message limit
_ENTRY_OVERHEAD = 400  # bytes of an entry beyond its ids, paths and messages (estimate)


class _HeldBack:
    """An in_progress update waiting to be queued (``handle``)."""

    handle: asyncio.TimerHandle
    update: dict[str, Any]


class _Batch:
    """Queued changes of one partition, sent as one message."""

    __slots__ = ("entries", "error", "partition", "sent", "size")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.entries: list[tuple[str, dict[str, Any]]] = []
        self.size = 0
        self.sent: Any = None  # the delivery future, once handed to the producer
        self.error: BaseException | None = None


class StatusRecorder(Protocol):
    """What the task handler reports; recording never fails or delays a task for long."""

    async def started(self, task: TransferTask, attempt: int) -> None: ...

    async def parked(
        self,
        task: TransferTask,
        attempts: int,
        delay: float,
        error_code: str,
        error: str,
        deferrals: int = 0,
    ) -> None: ...

    async def finished(self, result: TransferResult) -> None: ...


class NoStatus:
    """A recorder that records nothing (unit tests, tools)."""

    async def started(self, task: TransferTask, attempt: int) -> None:
        return None

    async def parked(
        self,
        task: TransferTask,
        attempts: int,
        delay: float,
        error_code: str,
        error: str,
        deferrals: int = 0,
    ) -> None:
        return None

    async def finished(self, result: TransferResult) -> None:
        return None


def iso(epoch: float) -> str:
    """ISO 8601 in UTC with milliseconds, like result timestamps."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def merge_status(previous: dict[str, Any] | None, update: dict[str, Any]) -> dict[str, Any]:
    """The entry after ``update``: a new submission starts afresh, a new attempt clears the last
    outcome, and every other field given overwrites the previous one."""
    state = update["state"]
    entry = {} if previous is None or update.get("submitted") else dict(previous)
    if state in (QUEUED, IN_PROGRESS):
        for name in _OUTCOME_FIELDS:
            entry.pop(name, None)
    if update.get("submitted"):
        entry["attempts"] = 0
    entry.update({k: v for k, v in update.items() if v is not None and k != "submitted"})
    return entry


_ORDER = ("task_id", "state", "attempts", "worker", "error_code", "error_message", "retryable")


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as the API shows it: the main fields first, no bookkeeping fields."""
    first = {k: entry[k] for k in _ORDER if k in entry}
    rest = {k: v for k, v in entry.items() if k not in first and k not in _INTERNAL}
    return {**first, **rest}


class TaskStatuses:
    """Sends status changes to the status topic; its agent keeps the table; lookups read it."""

    def __init__(
        self,
        app: faust.App,
        *,
        retention_seconds: float,
        worker_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.retention = retention_seconds
        self.worker_id = worker_id
        self._clock = clock
        partitions = app.conf.topic_partitions
        # Keys serialized exactly as the table serializes a str key (JSON), so the producer's
        # hash of a task_id gives the same partition here, in the changelog, and in table_route.
        self.topic = app.topic(
            f"{app.conf.id}-task-status",
            partitions=partitions,
            internal=True,
            key_type=str,
            key_serializer="json",
            value_serializer="json",
        )
        self.table = app.Table(
            TABLE_NAME,
            default=None,
            partitions=partitions,
            key_type=str,
            help="Latest state of each task, by task_id.",
        )
        self.purged_total = 0
        self.send_failures_total = 0
        self._applied: dict[int, int] = {}  # per partition: the last offset the agent applied
        self.in_progress_after = IN_PROGRESS_AFTER_SECONDS
        self.batch_seconds = BATCH_SECONDS
        self._held_back: dict[str, _HeldBack] = {}
        self._partitions: int = partitions
        self._queued: list[_Batch] = []  # in the order they were opened
        self._open: dict[int, _Batch] = {}  # per partition: the batch still taking changes
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Future[None] | None = None
        self._send_lock = asyncio.Lock()
        app.agent(self.topic, name="task_status", concurrency=1)(self._record)
        app.timer(max(1.0, min(600.0, retention_seconds / 24)))(self.purge)

    # -- recording (StatusRecorder) --------------------------------------------------------------
    async def submitted(self, tasks: Iterable[TransferTask]) -> list[Any]:
        """A ``queued`` entry for each task, sent at once (with whatever else is queued);
        returns the delivery futures to await. Raises when the producer did not take them."""
        now = self._clock()
        batches: dict[int, _Batch] = {}
        for task in tasks:
            update = {
                "state": QUEUED,
                "submitted": True,
                "task_id": task.task_id,
                **_task_fields(task),
                "queued_at": iso(now),
            }
            batch = self._queue(task.task_id, update, now)
            batches[id(batch)] = batch
        await self.flush()
        futures = []
        for batch in batches.values():
            if batch.error is not None:
                raise batch.error
            if batch.sent is None:
                raise RuntimeError("task status not sent")
            futures.append(batch.sent)
        return futures

    async def started(self, task: TransferTask, attempt: int) -> None:
        """Held back for ``in_progress_after`` seconds: most attempts end (or are deferred)
        sooner, and their outcome is then the only update sent, which halves the status
        traffic; a transfer that takes longer, or waits for a session, shows as in progress."""
        self._settle(task.task_id)
        now = self._clock()
        update = {
            "state": IN_PROGRESS,
            "task_id": task.task_id,
            **_task_fields(task),
            "attempts": attempt,
            "started_at": iso(now),
            "worker": self.worker_id,
        }
        pending = _HeldBack()
        pending.update = update

        def send() -> None:
            if self._held_back.get(task.task_id) is pending:
                del self._held_back[task.task_id]
            self._queue(task.task_id, update, now)

        pending.handle = asyncio.get_running_loop().call_later(self.in_progress_after, send)
        self._held_back[task.task_id] = pending

    def _settle(self, task_id: str) -> dict[str, Any]:
        """Before the next update of ``task_id``: drop its held-back in_progress (one queued
        already stays ahead: the queue keeps the order). Returns the fields of a dropped one the
        next update should carry (when the attempt started)."""
        pending = self._held_back.pop(task_id, None)
        if pending is None:
            return {}
        pending.handle.cancel()
        return {k: pending.update[k] for k in ("started_at", "worker")}

    async def parked(
        self,
        task: TransferTask,
        attempts: int,
        delay: float,
        error_code: str,
        error: str,
        deferrals: int = 0,
    ) -> None:
        """A retry, or a deferral (``deferrals`` before this one: only the first is recorded,
        the rest are flow control and would only repeat it)."""
        started = self._settle(task.task_id)
        if deferrals:
            return
        now = self._clock()
        update = {
            **started,
            "state": QUEUED,
            "task_id": task.task_id,
            **_task_fields(task),
            "attempts": attempts,
            "next_attempt_at": iso(now + delay),
            "last_error_code": error_code,
            "last_error_message": error,
            "worker": self.worker_id,
        }
        self._queue(task.task_id, update, now)

    async def finished(self, result: TransferResult) -> None:
        if result.task_id is None:
            return  # an unreadable message: nothing to key it by
        started = self._settle(result.task_id)
        now = self._clock()
        wire = result.to_wire()
        update = {
            **started,
            "state": SUCCESS if result.status == "success" else FAILED,
            "finished_at": result.timestamp,
            **{
                k: wire.get(k)
                for k in (
                    "task_id",
                    "src_id",
                    "src_path",
                    "dst_id",
                    "dst_path",
                    "direction",
                    "attempts",
                    "worker",
                    "bytes_transferred",
                    "duration_ms",
                    "sha256",
                    "error_code",
                    "error_message",
                    "retryable",
                    "completion",
                    "metadata",
                )
            },
        }
        self._queue(result.task_id, update, now)

    # -- the queue ----------------------------------------------------------------------------
    def _queue(self, task_id: str, update: dict[str, Any], now: float) -> _Batch:
        """Add a change to its partition's open batch; the batch is sent within
        ``batch_seconds``, or as soon as it is full."""
        update["updated_at"] = iso(now)
        update["_ts"] = now
        partition = self.partition_of(task_id)
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = _Batch(partition)
            self._queued.append(batch)
        batch.entries.append((task_id, update))
        batch.size += _ENTRY_OVERHEAD + sum(len(v) for v in update.values() if type(v) is str)
        if update.get("metadata"):  # up to 16 KiB each: counted, or a batch could pass 1 MiB
            batch.size += len(json.dumps(update["metadata"]))
        if len(batch.entries) >= BATCH_MAX_ENTRIES or batch.size >= BATCH_MAX_BYTES:
            del self._open[partition]  # the next change of this partition opens another
            self._flush_soon(0)
        else:
            self._flush_soon(self.batch_seconds)
        return batch

    def _flush_soon(self, delay: float) -> None:
        if self._flushing is not None:
            return  # the sender under way schedules what is queued meanwhile
        if self._flush_timer is not None:
            if delay:
                return
            self._flush_timer.cancel()
        self._flush_timer = asyncio.get_running_loop().call_later(delay, self._start_flushing)

    def _start_flushing(self) -> None:
        self._flush_timer = None
        self._flushing = asyncio.ensure_future(self._flush_all())

    async def _flush_all(self) -> None:
        try:
            await self.flush()
        finally:
            self._flushing = None
            if self._queued:  # queued while sending: a full batch goes at once, others wait
                self._flush_soon(0 if len(self._queued) > len(self._open) else self.batch_seconds)

    async def flush(self) -> None:
        """Send every queued change now (after any send under way). A batch the producer did
        not take is counted and logged, never raised: the transfer it describes is done."""
        async with self._send_lock:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            batches, self._queued, self._open = self._queued, [], {}
            for batch in batches:
                await self._send_batch(batch)

    async def _send_batch(self, batch: _Batch) -> None:
        entries = batch.entries
        key, value = entries[0] if len(entries) == 1 else (entries[0][0], {"batch": entries})
        try:
            future: Any = await self.topic.send(key=key, value=value, partition=batch.partition)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a lost status update never fails the transfer itself
            batch.error = exc
            self._send_failed(exc)
            return
        batch.sent = future
        future.add_done_callback(self._delivered)

    def _delivered(self, future: Any) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._send_failed(future.exception())

    def _send_failed(self, exc: BaseException) -> None:
        self.send_failures_total += 1
        log.warning("task_status_send_failed", error=f"{type(exc).__name__}: {exc}")

    # -- the table ---------------------------------------------------------------------------
    async def _record(self, stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            value = event.value
            batch = value.get("batch") if isinstance(value, dict) else None
            for change in batch if isinstance(batch, list) else [(event.key, value)]:
                try:
                    key, update = change
                    self._apply(key, update, message.partition)
                except Exception:
                    log.exception("task_status_invalid")
            self._applied[message.partition] = message.offset

    def _apply(self, key: Any, update: Any, partition: int) -> None:
        task_id = key.decode() if isinstance(key, bytes) else str(key)
        if not isinstance(update, dict) or update.get("state") not in STATES:
            raise ValueError(f"not a status update: {update!r:.200}")
        entry = merge_status(self.table.get(task_id), update)
        entry["_partition"] = partition
        self.table[task_id] = entry

    def owned_partitions(self) -> list[int]:
        """The table partitions this worker is the active owner of (it answers for their ids)."""
        changelog = self.table.changelog_topic.get_topic_name()
        actives = self.app.assignor.assigned_actives()
        return sorted(tp.partition for tp in actives if tp.topic == changelog)

    def snapshot(self) -> dict[str, Any]:
        return {
            "owned_partitions": self.owned_partitions(),
            "retention_hours": self.retention / 3600,
            "purged_total": self.purged_total,
            "send_failures_total": self.send_failures_total,
        }

    def partition_of(self, task_id: str) -> int:
        """The partition of ``task_id`` in the status topic and the table (the producer's
        default partitioner over the serialized key)."""
        key: bytes = self.topic.prepare_key(task_id, None)[0]
        hashed: int = murmur2(key)
        return (hashed & 0x7FFFFFFF) % self._partitions

    async def caught_up(self, task_id: str, limit: float) -> bool:
        """Wait (at most ``limit`` seconds) until the agent has applied every status update
        that was on ``task_id``'s partition when asked: read-your-writes for a client that
        submitted a task and asks for it at once. False when it did not catch up in time."""
        tp = TP(self.topic.get_topic_name(), self.partition_of(task_id))
        consumer: Any = self.app.consumer
        end = (await consumer.highwaters(tp)).get(tp)
        if end is None:
            return True
        committed = getattr(consumer, "_committed_offset", {}).get(tp) or 0
        deadline = self._clock() + limit
        while max(self._applied.get(tp.partition, -1), committed - 1) < end - 1:
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def lookup(self, task_id: str) -> dict[str, Any] | None:
        """This worker's entry for ``task_id`` (None when unknown or past the retention)."""
        entry = self.table.get(task_id)
        if not entry or entry.get("_ts", 0) < self._clock() - self.retention:
            return None
        return public_entry(entry)

    async def purge(self) -> int:
        """Delete entries past the retention from the partitions this worker owns.

        Runs on a timer, outside stream iteration, so instead of ``del table[key]`` (which takes
        the partition from the current event) it writes the tombstone to the entry's own
        changelog partition and removes the key from the store. Nothing is awaited between
        checking an entry and deleting it, so a fresh write by the agent is never lost.
        """
        owned = set(self.owned_partitions())
        horizon = self._clock() - self.retention
        expired: list[str] = []
        try:
            for scanned, (key, entry) in enumerate(self.table.items(), 1):
                if entry and entry.get("_ts", 0) < horizon and entry.get("_partition") in owned:
                    expired.append(key)
                if scanned % PURGE_BATCH == 0:
                    await asyncio.sleep(0)  # let transfers run during a long scan
        except RuntimeError:
            pass  # the store changed under the scan (writes, a rebalance): purge what was seen
        purged = 0
        for key in expired:
            entry = self.table.get(key)
            if not entry or entry.get("_ts", 0) >= horizon:
                continue  # written again since the scan
            self.table.send_changelog(entry["_partition"], key, None, value_serializer="raw")
            del self.table.data[key]
            purged += 1
        if purged:
            self.purged_total += purged
            log.info("task_status_purged", count=purged, retention_hours=self.retention / 3600)
        return purged


def _task_fields(task: TransferTask) -> dict[str, Any]:
    return {
        "src_id": task.src_id,
        "src_path": task.src_path,
        "dst_id": task.dst_id,
        "dst_path": task.dst_path,
        "metadata": task.metadata,  # None is left out (merge_status skips it)
    }

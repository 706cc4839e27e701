"""Task status changes, batched per partition and sent to the internal status topic.

Changes wait up to ``batch_seconds`` for others of their partition and go in one message with
them (``{"batch": [[task_id, change], ...]}``, keyed by its first task_id; a lone change is sent
as itself, a submission at once): under load one message, and one event of the status agent,
carry many tasks instead of one. The changes of one task_id keep the order of the calls (one
queue, sent in order by one sender at a time).

``in_progress`` is held back for ``in_progress_after`` seconds: most attempts end (or are
deferred) sooner, and their outcome is then the only change sent, which halves the traffic.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import mode
import structlog

from models.result import TransferResult
from models.status import StatusEntry, TaskState, iso
from models.task import TransferTask

log = structlog.get_logger("ftp_pooler.task_status")

IN_PROGRESS_AFTER_SECONDS = 0.5
BATCH_SECONDS = 0.2  # how long a change may wait for others of its partition
BATCH_MAX_ENTRIES = 200
BATCH_MAX_BYTES = 256 * 1024  # estimated; far below Kafka's 1 MiB default message limit
_ENTRY_OVERHEAD = 400  # bytes of an entry beyond its ids, paths and messages (estimate)
_RESULT_FIELDS = (
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


class StatusRecorder(Protocol):
    """What the task handler reports; recording never fails or delays a task for long."""

    async def attempt_started(self, task: TransferTask, attempt: int) -> None: ...

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

    async def attempt_started(self, task: TransferTask, attempt: int) -> None:
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


class StatusTopic(Protocol):
    """The part of the Faust topic the sender uses."""

    async def send(self, *, key: Any, value: Any, partition: int | None) -> Any: ...


@dataclass(slots=True)
class _HeldBack:
    """An in_progress change waiting until ``due`` before it is queued."""

    change: StatusEntry
    due: float


class _Batch:
    """Queued changes of one partition, sent as one message."""

    __slots__ = ("due", "entries", "error", "partition", "sent", "size")

    def __init__(self, partition: int, due: float) -> None:
        self.partition = partition
        self.due = due  # when it goes even if not full
        self.entries: list[tuple[str, dict[str, Any]]] = []
        self.size = 0
        self.sent: Any = None  # the delivery future, once handed to the producer
        self.error: BaseException | None = None


class StatusSender(mode.Service):
    """Records status changes (a :class:`StatusRecorder`) and sends them in batches.

    A service: its one task sends what is due, and stopping sends what is still queued.
    """

    def __init__(
        self,
        topic: StatusTopic,
        partition_of: Callable[[str], int],
        *,
        worker_id: str,
        in_progress_after: float = IN_PROGRESS_AFTER_SECONDS,
        batch_seconds: float = BATCH_SECONDS,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.topic = topic
        self.partition_of = partition_of
        self.worker_id = worker_id
        self.in_progress_after = in_progress_after
        self.batch_seconds = batch_seconds
        self.send_failures_total = 0
        self._clock = clock
        self._held_back: dict[str, _HeldBack] = {}
        self._queued: list[_Batch] = []  # in the order they were opened
        self._open: dict[int, _Batch] = {}  # per partition: the batch still taking changes
        self._wakeup = asyncio.Event()
        # When the sending loop wakes up by itself (inf: nothing due). Only a change due
        # earlier wakes it sooner: waking it for every change cost a wait_first per task.
        self._sleeping_until = -math.inf
        self._send_lock = asyncio.Lock()

    @property
    def held_back(self) -> int:
        """in_progress changes not queued yet."""
        return len(self._held_back)

    # -- recording --------------------------------------------------------------------------
    async def submitted(self, tasks: Iterable[TransferTask]) -> list[Any]:
        """A ``queued`` entry for each task, sent at once (with whatever else is queued);
        returns the delivery futures to await. Raises when the producer did not take them."""
        now = self._clock()
        batches: dict[int, _Batch] = {}
        for task in tasks:
            change = _from_task(task, TaskState.QUEUED, submitted=True, queued_at=iso(now))
            batch = self._queue(change, now)
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

    async def attempt_started(self, task: TransferTask, attempt: int) -> None:
        """Held back for ``in_progress_after`` seconds (see the module's docstring)."""
        self._settle(task.task_id)
        now = self._clock()
        change = _from_task(
            task,
            TaskState.IN_PROGRESS,
            attempts=attempt,
            started_at=iso(now),
            worker=self.worker_id,
        )
        change.updated_at, change.updated_ts = iso(now), now
        self._held_back[task.task_id] = _HeldBack(change, now + self.in_progress_after)
        self._wake(now + self.in_progress_after)

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
        change = _from_task(
            task,
            TaskState.QUEUED,
            attempts=attempts,
            next_attempt_at=iso(now + delay),
            last_error_code=error_code,
            last_error_message=error,
            worker=self.worker_id,
        )
        if started is not None:
            change.started_at = started.started_at
        self._queue(change, now)

    async def finished(self, result: TransferResult) -> None:
        if result.task_id is None:
            return  # an unreadable message: nothing to key it by
        started = self._settle(result.task_id)
        wire = result.to_wire()
        change = StatusEntry(
            task_id=result.task_id,
            state=TaskState.SUCCESS if result.status == "success" else TaskState.FAILED,
            finished_at=result.timestamp,
            **{k: v for k in _RESULT_FIELDS if (v := wire.get(k)) is not None},
        )
        if started is not None:
            change.started_at = started.started_at
        self._queue(change, self._clock())

    def _settle(self, task_id: str) -> StatusEntry | None:
        """Before the next change of ``task_id``: drop its held-back in_progress (one queued
        already stays ahead: the queue keeps the order), returned so the next change can
        carry when the attempt started."""
        pending = self._held_back.pop(task_id, None)
        return pending.change if pending is not None else None

    # -- the queue --------------------------------------------------------------------------
    def _queue(self, change: StatusEntry, now: float) -> _Batch:
        """Add a change to its partition's open batch: sent within ``batch_seconds``, or as
        soon as the batch is full."""
        if change.updated_at is None:
            change.updated_at, change.updated_ts = iso(now), now
        partition = self.partition_of(change.task_id)
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = _Batch(partition, now + self.batch_seconds)
            self._queued.append(batch)
        value = change.to_json()
        batch.entries.append((change.task_id, value))
        batch.size += _ENTRY_OVERHEAD + sum(len(v) for v in value.values() if type(v) is str)
        if change.metadata:  # up to 16 KiB each: counted, or a batch could pass 1 MiB
            batch.size += len(json.dumps(change.metadata))
        if len(batch.entries) >= BATCH_MAX_ENTRIES or batch.size >= BATCH_MAX_BYTES:
            del self._open[partition]  # the next change of this partition opens another
            batch.due = now
        self._wake(batch.due)
        return batch

    def _wake(self, due: float) -> None:
        if due < self._sleeping_until:
            self._wakeup.set()

    def _next_due(self) -> float | None:
        dues = [b.due for b in self._queued] + [h.due for h in self._held_back.values()]
        return min(dues) if dues else None

    def _release_held_back(self, now: float) -> None:
        for task_id, pending in list(self._held_back.items()):
            if pending.due <= now:
                del self._held_back[task_id]
                self._queue(pending.change, pending.change.updated_ts)

    @mode.Service.task
    async def _sending(self) -> None:
        """Send batches when due; queue held-back changes when due."""
        while not self.should_stop:
            due = self._next_due()
            timeout = None if due is None else max(0.0, due - self._clock())
            if timeout is None or timeout > 0:
                self._wakeup.clear()
                self._sleeping_until = math.inf if due is None else due
                try:
                    await self.wait_first(self._wakeup.wait(), timeout=timeout)  # type: ignore[arg-type]
                finally:
                    self._sleeping_until = -math.inf
                continue
            now = self._clock()
            self._release_held_back(now)
            await self.flush(due_before=now)

    async def flush(self, due_before: float | None = None) -> None:
        """Send every queued change (only those due by ``due_before`` when given), after any
        send under way. A batch the producer did not take is counted and logged, never raised:
        the transfer it describes is done."""
        async with self._send_lock:
            if due_before is None:
                batches, self._queued, self._open = self._queued, [], {}
            else:
                # The queue keeps its order: send everything up to the last batch that is due
                # (a full one is due at once), so one task's changes go in the order made.
                due = [i for i, b in enumerate(self._queued) if b.due <= due_before]
                split = due[-1] + 1 if due else 0
                batches, self._queued = self._queued[:split], self._queued[split:]
                for batch in batches:
                    if self._open.get(batch.partition) is batch:
                        del self._open[batch.partition]
            for batch in batches:
                await self._send_batch(batch)

    async def _send_batch(self, batch: _Batch) -> None:
        entries = batch.entries
        key, value = entries[0] if len(entries) == 1 else (entries[0][0], {"batch": entries})
        try:
            future: Any = await self.topic.send(key=key, value=value, partition=batch.partition)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a lost status change never fails the transfer itself
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

    async def on_stop(self) -> None:
        """What is queued goes now; an in_progress still held back is dropped (its task's
        outcome, or its redelivery on another worker, follows)."""
        await self.flush()


def _from_task(task: TransferTask, state: TaskState, **fields: Any) -> StatusEntry:
    return StatusEntry(
        task_id=task.task_id,
        state=state,
        src_id=task.src_id,
        src_path=task.src_path,
        dst_id=task.dst_id,
        dst_path=task.dst_path,
        metadata=task.metadata,
        **fields,
    )

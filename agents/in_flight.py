"""Many tasks at once, acknowledged strictly in offset order per partition.

Faust commits "highest contiguous acked offset + 1", but its gap guard is off by one
(issue #606), so acking out of order can commit past a task still running. Here an event is
acked only when it and every earlier event of its partition have finished: the acked offsets are
always a prefix, and the committed offset can never pass an unfinished task.

With ``staged=True`` (``exactly_once``) each event runs with an outbox of its own
(:mod:`agents.outbox`) and the in-order ack is ``ack(event, records)``: the transactional
committer then produces the records and commits the offset in one transaction.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agents import outbox
from agents.outbox import OutRecord

log = structlog.get_logger("ftp_pooler.in_flight")

# ack(event), or ack(event, records) when staged.
Ack = Callable[..., Awaitable[Any]]


@dataclass(eq=False)
class _Entry:
    event: Any
    partition: Any
    task: asyncio.Task[None] | None = None
    finished: bool = False
    started: float = field(default=0.0)
    records: list[OutRecord] | None = None


class InFlight:
    """Runs up to ``limit`` handlers concurrently; acks finished events in offset order."""

    def __init__(self, limit: int, *, staged: bool = False) -> None:
        self.limit = limit
        self.staged = staged
        self._slots = asyncio.Semaphore(limit)
        self._pending: dict[Any, deque[_Entry]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._last_offset: dict[Any, int] = {}  # per partition, the last event submitted
        self.redelivered = 0  # staged: events of an offset already submitted, skipped
        self.completed = 0
        self.abandoned = 0

    def __repr__(self) -> str:
        return f"<InFlight running {len(self._running)} | max {self.limit}>"

    @property
    def running(self) -> int:
        return len(self._running)

    def count_running(self) -> int:
        return len(self._running)

    @property
    def unacked(self) -> int:
        return sum(len(q) for q in self._pending.values())

    async def submit(self, event: Any, handler: Callable[[Any], Awaitable[None]], ack: Ack) -> None:
        """Start ``handler(event)`` once a slot is free; returns as soon as it has started.

        Staged (exactly_once), an event whose offset was already submitted since the last
        drain is a second delivery of the same message: running it would commit its outcome
        twice, so it is skipped (the first delivery's outcome stands for both)."""
        tp, offset = event.message.tp, event.message.offset
        if self.staged:
            last = self._last_offset.get(tp)
            if last is not None and offset <= last:
                self.redelivered += 1
                log.warning("redelivered_event_skipped", partition=str(tp), offset=offset)
                return
            self._last_offset[tp] = offset
        await self._slots.acquire()
        entry = _Entry(event=event, partition=tp)
        self._pending.setdefault(entry.partition, deque()).append(entry)
        task = asyncio.create_task(self._run(entry, handler, ack))
        entry.task = task
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(
        self, entry: _Entry, handler: Callable[[Any], Awaitable[None]], ack: Ack
    ) -> None:
        try:
            if self.staged:
                entry.records = outbox.open_outbox()  # this asyncio task's own
            await handler(entry.event)
            entry.finished = True
        except asyncio.CancelledError:
            raise
        except Exception:
            # A handler must publish a result itself; if it could not, the event stays unacked
            # (and so uncommitted) and is redelivered after a restart.
            log.exception("task_handler_crashed")
        finally:
            self._slots.release()
        await self._ack_finished_prefix(entry.partition, ack)

    async def _ack_finished_prefix(self, partition: Any, ack: Ack) -> None:
        queue = self._pending.get(partition)
        while queue and queue[0].finished:
            entry = queue.popleft()
            self.completed += 1
            if self.staged:
                await ack(entry.event, entry.records or [])
            else:
                await ack(entry.event)

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for running handlers, cancel the rest; return how many.

        Cancelled events are never acked, so their offsets stay uncommitted and are redelivered.
        """
        running = set(self._running)
        if running:
            log.info("draining_in_flight", running=len(running), grace_seconds=grace)
            _done, still = await asyncio.wait(running, timeout=grace)
        else:
            still = set()
        for task in still:
            task.cancel()
        if still:
            await asyncio.gather(*still, return_exceptions=True)
        self.abandoned += len(still)
        self._pending.clear()  # unfinished heads block their partitions: nothing more to ack
        self._last_offset.clear()  # the next assignment fetches from the committed offsets
        return len(still)

"""The latest known state of every task, kept in a table that any worker's API can route to.

Keying: tasks on ``ftp-tasks`` may be keyed by anything, so the table is not fed from that topic.
Every state change is sent (by :mod:`agents.status_sender`) to an internal status topic
(``<group>-task-status``, as many partitions as ``kafka.topic_partitions``) keyed by the task_id,
serialized as the table serializes its keys (a JSON string), and one agent on that topic writes
the table (:meth:`StatusTable.record`). The table's changelog has the same partition count and
the same key bytes, so a task_id's partition is the producer's hash of those bytes: known to every
worker. ``GET /tasks/{task_id}`` is routed with ``app.table_route`` the same way, to the worker
that owns that partition. Entries older than ``api.task_retention_hours`` are answered as unknown
and purged by the owning worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import mode
import structlog
from aiokafka.partitioner import murmur2
from faust.types import TP

from agents import faust_door
from models.status import StatusEntry, merge_status

log = structlog.get_logger("ftp_pooler.task_status")

TABLE_NAME = "task_status"
PURGE_BATCH = 500


class StatusTable(mode.Service):
    """The status agent's body, the lookups, and the purge of old entries (a service task)."""

    def __init__(
        self,
        topic: Any,
        table: Any,
        *,
        partitions: int,
        retention_seconds: float,
        consumer: Callable[[], Any],
        owned_partitions: Callable[[], list[int]],
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        """``topic`` and ``table`` are the Faust status topic and table; ``consumer`` returns
        the app's consumer and ``owned_partitions`` the table partitions this worker owns."""
        super().__init__(**kwargs)
        self.topic = topic
        self.table = table
        self.partitions = partitions
        self.retention = retention_seconds
        self.purge_interval = max(1.0, min(600.0, retention_seconds / 24))
        self.purged_total = 0
        self.applied: dict[int, int] = {}  # per partition: the last offset the agent applied
        self._get_consumer = consumer
        self._owned_partitions = owned_partitions
        self._clock = clock

    def partition_of(self, task_id: str) -> int:
        """The partition of ``task_id`` in the status topic and the table (the producer's
        default partitioner over the serialized key)."""
        key: bytes = self.topic.prepare_key(task_id, None)[0]
        hashed: int = murmur2(key)
        return (hashed & 0x7FFFFFFF) % self.partitions

    def owned_partitions(self) -> list[int]:
        return self._owned_partitions()

    # -- the agent ------------------------------------------------------------------------------
    async def record(self, stream: Any) -> None:
        """The status agent: apply each change (or batch of changes) to the table."""
        async for event in stream.events():
            message = event.message
            value = event.value
            batch = value.get("batch") if isinstance(value, dict) else None
            for change in batch if isinstance(batch, list) else [(event.key, value)]:
                try:
                    key, update = change
                    self.apply(key, update, message.partition)
                except Exception:
                    log.exception("task_status_invalid")
            self.applied[message.partition] = message.offset

    def apply(self, key: Any, update: Any, partition: int) -> None:
        """Merge one change into its entry (inside stream iteration: a table write)."""
        task_id = key.decode() if isinstance(key, bytes) else str(key)
        change = StatusEntry.from_json(update)
        change.task_id = task_id
        previous = self.table.get(task_id)
        entry = merge_status(StatusEntry.from_json(previous) if previous else None, change)
        entry.partition = partition
        self.table[task_id] = entry.to_json()

    # -- lookups --------------------------------------------------------------------------------
    def lookup(self, task_id: str) -> StatusEntry | None:
        """This worker's entry for ``task_id`` (None when unknown or past the retention)."""
        stored = self.table.get(task_id)
        if not stored:
            return None
        entry = StatusEntry.from_json(stored)
        if entry.updated_ts < self._clock() - self.retention:
            return None
        return entry

    async def caught_up(self, task_id: str, limit: float) -> bool:
        """Wait (at most ``limit`` seconds) until the agent has applied every status change
        that was on ``task_id``'s partition when asked: read-your-writes for a client that
        submitted a task and asks for it at once. False when it did not catch up in time."""
        tp = TP(self.topic.get_topic_name(), self.partition_of(task_id))
        consumer = self._get_consumer()
        end = (await consumer.highwaters(tp)).get(tp)
        if end is None:
            return True
        committed = faust_door.committed_offset(consumer, tp) or 0
        deadline = self._clock() + limit
        while max(self.applied.get(tp.partition, -1), committed - 1) < end - 1:
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "owned_partitions": self.owned_partitions(),
            "retention_hours": self.retention / 3600,
            "purged_total": self.purged_total,
        }

    # -- the purge ------------------------------------------------------------------------------
    @mode.Service.task
    async def _purging(self) -> None:
        while not self.should_stop:
            await self.sleep(self.purge_interval)
            if not self.should_stop:
                await self.purge()

    async def purge(self) -> int:
        """Delete entries past the retention from the partitions this worker owns.

        Runs outside stream iteration, so instead of ``del table[key]`` (which takes the
        partition from the current event) it writes the tombstone to the entry's own changelog
        partition and removes the key from the store. Nothing is awaited between checking an
        entry and deleting it, so a fresh write by the agent is never lost.
        """
        owned = set(self.owned_partitions())
        horizon = self._clock() - self.retention
        expired: list[str] = []
        try:
            for scanned, (key, stored) in enumerate(self.table.items(), 1):
                if _expired(stored, horizon) and stored.get("_partition") in owned:
                    expired.append(key)
                if scanned % PURGE_BATCH == 0:
                    await asyncio.sleep(0)  # let transfers run during a long scan
        except RuntimeError:
            pass  # the store changed under the scan (writes, a rebalance): purge what was seen
        purged = 0
        for key in expired:
            stored = self.table.get(key)
            if not _expired(stored, horizon):
                continue  # written again since the scan
            self.table.send_changelog(stored["_partition"], key, None, value_serializer="raw")
            faust_door.forget_table_key(self.table, key)
            purged += 1
        if purged:
            self.purged_total += purged
            log.info("task_status_purged", count=purged, retention_hours=self.retention / 3600)
        return purged


def _expired(stored: Any, horizon: float) -> bool:
    return bool(stored) and isinstance(stored, dict) and stored.get("_ts", 0) < horizon

"""Table recovery that rebuilds a partition whose local state no longer matches its changelog.

Faust raises ``ConsistencyError`` (faust/tables/recovery.py) when a table partition's persisted
offset in RocksDB is past the end of its changelog: the changelog topic was deleted and
recreated, or the state was written by another consumer group. That crash repeats on every
restart. Here such a partition's local store is wiped, with one warning, and recovered from the
changelog like a fresh one: the changelog is the source of truth, the local store only a cache.
Hooked in with ``TableManager="app.table_recovery:RebuildingTableManager"``.
"""

from __future__ import annotations

import shutil
from collections import Counter
from contextlib import suppress
from typing import Any

import structlog
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

log = structlog.get_logger("ftp_pooler.tables")


class RebuildingRecovery(Recovery):
    """Faust's recovery, with stale partitions rebuilt instead of ``ConsistencyError``."""

    async def _build_offsets(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if not tps:
            return
        highwaters = await consumer.highwaters(*tps)
        for tp in tps:
            highwater = highwaters.get(tp)
            last = highwater - 1 if highwater is not None else -1  # as Faust compares them
            persisted = destination.get(tp)
            if persisted is None or persisted <= last:
                continue
            table = self.tp_to_table.get(tp)
            wipe_partition(table, tp.partition)
            earliest = (await consumer.earliest_offsets(tp)).get(tp)
            destination[tp] = earliest - 1 if earliest else -1
            log.warning(
                "table_state_rebuilt",
                table=getattr(table, "name", None),
                changelog=tp.topic,
                partition=tp.partition,
                persisted_offset=persisted,
                changelog_end=last,
                reason="local state is ahead of the changelog (topic recreated, or state of "
                "another consumer group): wiped and recovered from the changelog",
            )


def wipe_partition(table: Any, partition: int) -> None:
    """Drop one partition's local store (RocksDB files); other stores keep nothing locally."""
    store = getattr(table, "data", None)
    dbs = getattr(store, "_dbs", None)
    if store is None or dbs is None:
        return
    db = dbs.pop(partition, None)
    if db is not None:
        with suppress(Exception):
            db.close()
    key_index = getattr(store, "_key_index", None)
    if key_index is not None:
        key_index.clear()  # a cache of key -> partition
    with suppress(FileNotFoundError):
        shutil.rmtree(store.partition_path(partition))


class RebuildingTableManager(TableManager):
    """Faust's table manager with :class:`RebuildingRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = RebuildingRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

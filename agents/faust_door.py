"""The one door to Faust's private internals (faust-streaming 0.15.3).

Everything here reaches past Faust's public API, for a reason given at each function; nothing
else in the project does. ``tests/unit/test_faust_door.py`` checks every reach against the
installed Faust, so an upgrade that removes one fails there, by name, not somewhere in a worker.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import faust
import structlog
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from faust.types._env import DATADIR as _DEFAULT_DATADIR

log = structlog.get_logger("ftp_pooler.tables")

# App._consumer_wait_empty: the step of a shutdown or rebalance that waits for in-flight events.
WAIT_EMPTY_HOOK = "_consumer_wait_empty"


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The offset last committed for ``tp`` by this consumer (None before the first commit).

    Faust keeps it without exposing it; the consumer lag metric and the status lookups'
    read-your-writes wait need it without a round trip to the broker.
    """
    offsets: dict[TP, int] = getattr(consumer, "_committed_offset", {})
    return offsets.get(tp)


def datadir_flag_given(datadir: str | None) -> bool:
    """Whether ``faust worker --datadir`` (or F_DATADIR) was given: the option's default is
    Faust's private ``DATADIR`` constant, not None."""
    return bool(datadir) and datadir != _DEFAULT_DATADIR


def assignment(app: faust.App) -> frozenset[TP]:
    """The partitions assigned to this worker now, without starting a consumer (``app.consumer``
    would create one: a CLI process building the app must not)."""
    assigned: Iterable[TP] | None = getattr(app, "_assignment", None)
    return frozenset(assigned or ())


def started_consumer(app: faust.App) -> Any:
    """The app's consumer if it exists, else None (the public property would create it)."""
    return getattr(app, "_consumer", None)


def raw_producer(app: faust.App) -> Any:
    """aiokafka's producer under Faust's (started if it was not): ``partitions_for`` on it loads
    a topic's metadata, which Faust's producer does not offer."""
    return app.producer._ensure_producer()  # type: ignore[attr-defined]


def producer_settings(app: faust.App) -> dict[str, Any]:
    """The aiokafka options Faust's producer is built with (brokers, client id, timeouts, TLS and
    SASL), so our transactional producers connect exactly as Faust's does."""
    producer: Any = app.producer
    return {**producer._settings_default(), **producer._settings_auth()}


def read_committed(consumer: Any) -> None:
    """Make the (not yet started) Faust consumer read with ``isolation_level=read_committed``.

    Faust sets it only with its own ``processing_guarantee="exactly_once"`` (known to be buggy,
    #517 #323 #440), which we do not use: our transactions put retry entries on the retry topic,
    and an entry of an aborted transaction must never be retried. The aiokafka consumer is built
    by Faust's consumer thread when it starts; the level is set on it before its fetcher exists.
    """
    thread = consumer._thread
    create = thread._create_worker_consumer

    def create_read_committed(transport: Any) -> Any:
        client = create(transport)
        client._isolation_level = "read_committed"
        return client

    thread._create_worker_consumer = create_read_committed


class ReadCommittedConsumer:
    """Mixin for a ``faust.App``: with ``consumer_read_committed`` true, its consumer reads
    committed messages only (see :func:`read_committed`)."""

    consumer_read_committed = False

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()  # type: ignore[misc]
        if self.consumer_read_committed:
            read_committed(consumer)
        return consumer


def forget_table_key(table: Any, key: Any) -> None:
    """Remove ``key`` from a table's local store only. Outside stream iteration ``del table[key]``
    raises, so a purge writes the tombstone to the changelog itself and then drops the key here."""
    del table.data[key]


WaitEmpty = Callable[[Any], Awaitable[None]]


class BoundedWaitEmpty:
    """Mixin for a ``faust.App``: replaces Faust's wait for in-flight events (which has no
    timeout, so one stuck transfer would block a shutdown or rebalance forever) with
    :meth:`wait_for_in_flight`, which the app defines."""

    async def wait_for_in_flight(self, consumer: Any) -> None:
        raise NotImplementedError

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        await self.wait_for_in_flight(consumer)


# -- table recovery ------------------------------------------------------------------------------
# Faust raises ``ConsistencyError`` (faust/tables/recovery.py) when a table partition's persisted
# offset in RocksDB is past the end of its changelog: the changelog topic was deleted and
# recreated, or the state was written by another consumer group. That crash repeats on every
# restart. Here such a partition's local store is wiped, with one warning, and recovered from the
# changelog like a fresh one: the changelog is the source of truth, the local store only a cache.
#
# A standby copy can have holes. After a short active recovery, Faust pauses the active changelog
# partitions (tables/recovery.py:475), seeks the standby partitions (:505), asks for their
# highwaters (:513) and only then resumes them (:544). The Fetcher's getmany still in flight holds
# the consumer's live set of active partitions (transport/consumer.py:795), now empty; aiokafka
# reads an empty set as "every partition" (aiokafka/consumer/fetcher.py:1221) and returns the
# standby records just fetched from the seek, and Faust's getmany skips them, silently, as not
# active (transport/consumer.py:760). The consumer's position is past them and nothing seeks back:
# the records applied after them move the partition's persisted offset past the hole, and when
# the copy becomes active, recovery reads on from that offset. A worker that joined and later took
# a table over so lacked everything written before it joined. For a table marked with
# rebuild_standby_copies (the watch table: a missing entry is a duplicate task), a partition kept
# here as a standby is marked on disk, and when it becomes active here it is wiped and recovered
# from the changelog's start (an active recovery reads up to the highwater before the agents go).
# Hooked in with ``TableManager="agents.faust_door:RebuildingTableManager"``.


class RebuildingRecovery(Recovery):
    """Faust's recovery, with stale partitions rebuilt instead of ``ConsistencyError``, and the
    standby copies of tables marked with :func:`rebuild_standby_copies` rebuilt on takeover."""

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        for tp in self.standby_tps:  # before any standby record is applied to the copy
            marker = standby_marker(self.tp_to_table.get(tp), tp.partition)
            if marker is not None:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()

    async def _build_offsets(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if not tps:
            return
        highwaters = await consumer.highwaters(*tps)
        for tp in tps:
            table = self.tp_to_table.get(tp)
            highwater = highwaters.get(tp)
            last = highwater - 1 if highwater is not None else -1  # as Faust compares them
            persisted = destination.get(tp)
            marker = standby_marker(table, tp.partition) if title == "active" else None
            stale = persisted is not None and persisted > last
            standby_copy = marker is not None and marker.exists()
            if not stale and not standby_copy:
                continue
            wipe_partition(table, tp.partition)
            earliest = (await consumer.earliest_offsets(tp)).get(tp)
            destination[tp] = earliest - 1 if earliest else -1
            if marker is not None:
                marker.unlink(missing_ok=True)  # what is read from here on is whole
            event, reason = (
                ("table_state_rebuilt", STALE_REASON)
                if stale
                else ("table_standby_copy_rebuilt", STANDBY_REASON)
            )
            (log.warning if stale else log.info)(
                event,
                table=getattr(table, "name", None),
                changelog=tp.topic,
                partition=tp.partition,
                persisted_offset=persisted,
                changelog_end=last,
                reason=reason,
            )


STALE_REASON = (
    "local state is ahead of the changelog (topic recreated, or state of another consumer "
    "group): wiped and recovered from the changelog"
)
STANDBY_REASON = (
    "a standby copy can miss records (Faust skips standby records fetched before it resumes "
    "the partition): wiped and recovered from the changelog"
)


REBUILD_STANDBY_COPIES = "_ftp_pooler_rebuild_standby_copies"


def rebuild_standby_copies(table: Any) -> None:
    """Mark ``table``: a partition of it kept here as a standby is recovered from the start of
    its changelog, not from the standby copy, when it becomes active here (see above)."""
    setattr(table, REBUILD_STANDBY_COPIES, True)


def standby_marker(table: Any, partition: int) -> Path | None:
    """The file beside a marked table's partition store that says the store was written as a
    standby copy (None for an unmarked table, or a store with no local files)."""
    if not getattr(table, REBUILD_STANDBY_COPIES, False):
        return None
    partition_path = getattr(getattr(table, "data", None), "partition_path", None)
    if partition_path is None:
        return None  # an in-memory store: nothing persisted, recovery reads the whole changelog
    path = Path(partition_path(partition))
    return path.with_name(f"{path.name}.standby")


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

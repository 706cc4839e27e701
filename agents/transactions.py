"""Exactly once: a task's outcome is produced in the same Kafka transaction as its offset commit.

The ordered-ack :class:`~agents.in_flight.InFlight` hands each finished event, in offset order,
to :meth:`TransactionalCommitter.complete` with what the event produced (results, failures, retry
entries: see :mod:`agents.outbox`). Every ``interval`` seconds (or sooner once ``max_records`` are
waiting) each partition's completed prefix is committed in one transaction: its records, then
``send_offsets_to_transaction({tp: last offset + 1}, group)``, then ``commit_transaction``. A
``read_committed`` reader sees a task's outcome exactly when its input offset is committed, and
never twice: a crash before the commit aborts both, and the task is redone.

Fencing: aiokafka 0.14's ``send_offsets_to_transaction`` takes a group id only (no generation,
pre-KIP-447), so a worker that lost a partition without knowing it (a zombie) could still commit
for it. Each input partition therefore has a producer of its own whose ``transactional.id`` is
``<group>-eos-<topic>-<partition>``; whoever is assigned the partition initialises that id, which
fences the previous owner (its next transaction fails with ``ProducerFenced``; what it held is
dropped, never published, and redone by the new owner from the committed offset) and aborts any
transaction it left open.

An error other than fencing (broker restart, timeout) aborts: the producer is replaced (which
resolves the transaction on the broker: aborted, or completed if it was already committing), the
group's committed offset tells which of the two happened, and the records are dropped (committed)
or sent again in a new transaction (aborted). Faust never commits these partitions itself (their
events are never acked to it).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import mode
import structlog
from aiokafka.errors import (
    InvalidProducerEpoch,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import TopicPartition

from agents.outbox import OutRecord

log = structlog.get_logger("ftp_pooler.transactions")

INTERVAL_SECONDS = 0.1
MAX_RECORDS = 1000  # a partition with this many records waiting commits without waiting
PRODUCER_STOP_TIMEOUT = 5.0
RETRY_BACKOFF_MAX = 5.0

FENCED_ERRORS = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)

ProducerFactory = Callable[[str], Any]  # transactional_id -> an unstarted AIOKafkaProducer
CommittedOffset = Callable[[Any], Awaitable[int | None]]  # tp -> the group's committed offset


@dataclass(eq=False)
class _Partition:
    """One input partition: its producer, the records and offset waiting to be committed."""

    tp: Any
    transactional_id: str
    producer: Any = None
    began: bool = False  # the producer is inside a (local) transaction already
    pending: list[OutRecord] = field(default_factory=list)
    next_offset: int | None = None  # last completed offset + 1
    committed: int | None = None  # what our last transaction committed
    pending_tasks: int = 0  # completed tasks whose records are pending
    unresolved: tuple[int, int, int] | None = None  # a failed transaction: records, tasks, offset
    fenced: bool = False
    failures: int = 0  # consecutive failed transactions (backoff)
    retry_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def has_work(self) -> bool:
        if self.unresolved is not None:
            return True
        if self.fenced or self.next_offset is None:
            return False
        return self.committed is None or self.next_offset > self.committed


class TransactionalCommitter(mode.Service):
    """Commits each input partition's finished tasks and their outcomes in transactions."""

    def __init__(
        self,
        *,
        group_id: str,
        topics: Callable[[], Iterable[str]],
        producer_factory: ProducerFactory,
        committed_offset: CommittedOffset,
        interval: float = INTERVAL_SECONDS,
        max_records: int = MAX_RECORDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.group_id = group_id
        self.topics = topics
        self.producer_factory = producer_factory
        self.committed_offset = committed_offset
        self.interval = interval
        self.max_records = max_records
        self._partitions: dict[Any, _Partition] = {}
        self._wakeup = asyncio.Event()
        # Assignments are handled one at a time: two rebalances in quick succession must not
        # initialise one transactional id twice concurrently (the older initialisation could
        # finish last and fence the newer producer: a partition of ours left fenced).
        self._assigning = asyncio.Lock()
        # Health, for /status and the metrics.
        self.commits_total = 0
        self.aborts_total = 0
        self.fenced_total = 0
        self.records_total = 0  # records committed
        self.tasks_total = 0  # task offsets committed
        self.dropped_total = 0  # completed tasks dropped uncommitted (fenced, revoked): redone
        self.last_commit_seconds = 0.0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return (
            f"<TransactionalCommitter partitions {len(self._partitions)} | commits "
            f"{self.commits_total} aborts {self.aborts_total} fenced {self.fenced_total}>"
        )

    def transactional_id(self, tp: Any) -> str:
        return f"{self.group_id}-eos-{tp.topic}-{tp.partition}"

    # -- assignment -------------------------------------------------------------------------
    async def assigned(self, assignment: Iterable[Any]) -> None:
        """A new assignment (each rebalance): every task partition gets a freshly initialised
        producer, which fences whoever used its transactional id before."""
        async with self._assigning:
            await self.release()
            topics = set(self.topics())
            for tp in assignment:
                if tp.topic in topics:
                    self._partitions[tp] = _Partition(tp, self.transactional_id(tp))
            if self._partitions:
                await asyncio.gather(*(self._start_once(p) for p in self._partitions.values()))
                log.info("transactional_producers_ready", partitions=len(self._partitions))

    async def release(self) -> None:
        """Give up every partition (revoked, or stopping): what is not committed yet is
        dropped (never published; redone by the next owner) and producers are closed."""
        partitions, self._partitions = list(self._partitions.values()), {}
        for p in partitions:
            self.dropped_total += p.pending_tasks
        await asyncio.gather(*(self._close(p) for p in partitions))

    def committed(self, tp: Any) -> int | None:
        """The offset our last transaction committed for ``tp`` (None before the first)."""
        p = self._partitions.get(tp)
        return p.committed if p is not None else None

    # -- completed events -------------------------------------------------------------------
    async def complete(self, event: Any, records: list[OutRecord]) -> None:
        """The next finished event of its partition, in offset order, with its records."""
        message = event.message
        p = self._partitions.get(message.tp)
        if p is None or p.fenced:
            self.dropped_total += 1  # not ours any more: the owner redoes it
            return
        if p.next_offset is not None and message.offset < p.next_offset:
            self.dropped_total += 1  # a second delivery of a completed offset: never twice
            return
        p.pending.extend(records)
        p.pending_tasks += 1
        p.next_offset = message.offset + 1
        if len(p.pending) >= self.max_records:
            self._wakeup.set()

    @mode.Service.task
    async def _committing(self) -> None:
        while not self.should_stop:
            self._wakeup.clear()
            await self.wait_first(self._wakeup.wait(), timeout=self.interval)
            if not self.should_stop:
                await self.commit_all()

    async def commit_all(self) -> None:
        now = time.monotonic()
        due = [p for p in self._partitions.values() if p.has_work() and p.retry_at <= now]
        if due:
            await asyncio.gather(*(self._commit(p) for p in due))

    async def flush(self, within: float) -> bool:
        """Commit everything completed now (shutdown, rebalance); False if that did not finish
        ``within`` seconds (what is left is dropped with the partitions, and redone)."""
        deadline = time.monotonic() + within
        while any(p.has_work() for p in self._partitions.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("transactions_flush_timed_out", timeout_seconds=within)
                return False
            for p in self._partitions.values():
                p.retry_at = 0.0
            try:
                await asyncio.wait_for(self.commit_all(), timeout=remaining)
            except TimeoutError:
                continue
            if any(p.has_work() for p in self._partitions.values()):
                await asyncio.sleep(0.05)  # a failed transaction: not in a tight loop
        return True

    # -- one transaction --------------------------------------------------------------------
    async def _commit(self, p: _Partition) -> None:
        async with p.lock:
            if p.tp not in self._partitions or p.fenced:
                return
            if p.producer is None and not await self._start(p):
                return
            if p.unresolved is not None and not await self._resolve(p):
                return
            if not p.has_work():
                return
            count, tasks, offset = len(p.pending), p.pending_tasks, p.next_offset
            assert offset is not None
            records = p.pending[:count]
            started = time.monotonic()
            try:
                if not p.began:
                    await p.producer.begin_transaction()
                p.began = True
                for r in records:
                    sent = await p.producer.send(
                        r.topic, r.value, key=r.key, headers=r.headers or None
                    )
                    sent.add_done_callback(_retrieve)
                tp = TopicPartition(p.tp.topic, p.tp.partition)
                await p.producer.send_offsets_to_transaction({tp: offset}, self.group_id)
                await p.producer.commit_transaction()
                p.began = False
            except asyncio.CancelledError:
                raise
            except FENCED_ERRORS as exc:
                await self._fenced(p, exc)
                return
            except Exception as exc:
                await self._aborted(p, exc, count, tasks, offset)
                return
            self._committed(p, count, tasks, offset, time.monotonic() - started)

    def _committed(self, p: _Partition, count: int, tasks: int, offset: int, secs: float) -> None:
        del p.pending[:count]
        p.pending_tasks -= tasks
        p.committed = offset
        p.failures = 0
        p.retry_at = 0.0
        self.commits_total += 1
        self.records_total += count
        self.tasks_total += tasks
        self.last_commit_seconds = secs

    async def _fenced(self, p: _Partition, exc: BaseException) -> None:
        """Another worker initialised this partition's transactional id: it owns the partition
        now. Nothing of ours was committed; the owner redoes it from the committed offset."""
        self.fenced_total += 1
        self.dropped_total += p.pending_tasks
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "transaction_fenced",
            topic=p.tp.topic,
            partition=p.tp.partition,
            dropped_tasks=p.pending_tasks,
            error=self.last_error,
        )
        p.fenced = True
        p.pending.clear()
        p.pending_tasks = 0
        p.unresolved = None
        await self._close(p)

    async def _aborted(
        self, p: _Partition, exc: BaseException, count: int, tasks: int, offset: int
    ) -> None:
        """The transaction failed. Its fate is decided before anything else is sent: the
        producer is replaced (the broker then aborts the transaction, or completes it if it was
        already committing) and the group's committed offset tells which (:meth:`_resolve`)."""
        self.aborts_total += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        p.failures += 1
        delay = min(RETRY_BACKOFF_MAX, 0.1 * 2 ** (p.failures - 1))
        p.retry_at = time.monotonic() + delay
        p.unresolved = (count, tasks, offset)
        log.warning(
            "transaction_aborted",
            topic=p.tp.topic,
            partition=p.tp.partition,
            records=count,
            offset=offset,
            error=self.last_error,
            retry_in_seconds=round(delay, 2),
        )
        await self._close(p)

    async def _resolve(self, p: _Partition) -> bool:
        """After a failed transaction and a new producer: did it commit after all? True once
        known (its records are then dropped, or kept for the next transaction)."""
        assert p.unresolved is not None
        count, tasks, offset = p.unresolved
        try:
            committed = await self.committed_offset(p.tp)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # still unknown: try again later with another producer
            log.warning("committed_offset_unknown", error=f"{type(exc).__name__}: {exc}")
            await self._close(p)
            return False
        p.unresolved = None
        if committed is not None and committed >= offset:
            log.info(
                "transaction_commit_confirmed",
                topic=p.tp.topic,
                partition=p.tp.partition,
                offset=offset,
            )
            self._committed(p, count, tasks, offset, 0.0)
        return True

    async def _start_once(self, p: _Partition) -> None:
        """Start the partition's producer under its lock: a commit that comes first (a task
        finished while the producers initialise) starts it, and is not raced by a second
        initialisation of the same id (the later one would fence the one in use)."""
        async with p.lock:
            if p.producer is None and not p.fenced:
                await self._start(p)

    async def _start(self, p: _Partition) -> bool:
        """A new producer for the partition's transactional id, initialised (fencing the
        previous one); False when the broker could not be reached this time."""
        producer = self.producer_factory(p.transactional_id)
        try:
            await producer.start()
            await producer.begin_transaction()  # waits for the producer id: the fence
        except asyncio.CancelledError:
            await self._stop_producer(producer)
            raise
        except FENCED_ERRORS as exc:
            await self._stop_producer(producer)
            await self._fenced(p, exc)
            return False
        except Exception as exc:
            await self._stop_producer(producer)
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("transactional_producer_start_failed", error=self.last_error)
            return False
        if self._partitions.get(p.tp) is not p:  # released meanwhile (a newer assignment)
            await self._stop_producer(producer)
            return False
        p.producer, p.began = producer, True
        return True

    async def _close(self, p: _Partition) -> None:
        producer, p.producer, p.began = p.producer, None, False
        if producer is not None:
            await self._stop_producer(producer)

    async def _stop_producer(self, producer: Any) -> None:
        try:
            await asyncio.wait_for(producer.stop(), timeout=PRODUCER_STOP_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # closing is best effort: the broker fences or times it out
            log.debug("transactional_producer_stop_failed", error=f"{type(exc).__name__}")

    async def on_stop(self) -> None:
        await self.release()
        close = getattr(self.committed_offset, "close", None)
        if close is not None:
            await close()

    # -- health -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "partitions": len(self._partitions),
            "fenced_partitions": sum(1 for p in self._partitions.values() if p.fenced),
            "pending_records": sum(len(p.pending) for p in self._partitions.values()),
            "commits_total": self.commits_total,
            "aborts_total": self.aborts_total,
            "fenced_total": self.fenced_total,
            "records_total": self.records_total,
            "tasks_total": self.tasks_total,
            "dropped_total": self.dropped_total,
            "last_commit_ms": round(self.last_commit_seconds * 1000, 1),
            "last_error": self.last_error,
        }


def _retrieve(future: Any) -> None:
    """A delivery future's error surfaces through commit_transaction; read it here so asyncio
    does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()


def producer_factory(settings: dict[str, Any]) -> ProducerFactory:
    """Transactional, idempotent producers with the connection ``settings`` of Faust's own
    (brokers, TLS, SASL, timeouts: ``faust_door.producer_settings``)."""
    from aiokafka import AIOKafkaProducer

    accepted = set(inspect.signature(AIOKafkaProducer).parameters)
    options = {k: v for k, v in settings.items() if k in accepted}
    options.update(acks="all", enable_idempotence=True)

    def build(transactional_id: str) -> Any:
        return AIOKafkaProducer(**options, transactional_id=transactional_id)

    return build


class GroupOffsets:
    """The consumer group's committed offset of a partition, asked of the broker (an admin
    client, started on first use): after a failed transaction, whether it committed after all."""

    def __init__(self, settings: dict[str, Any], group_id: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        accepted = set(inspect.signature(AIOKafkaAdminClient).parameters)
        self._options = {k: v for k, v in settings.items() if k in accepted}
        self._admin_class = AIOKafkaAdminClient
        self.group_id = group_id
        self._admin: Any = None

    async def __call__(self, tp: Any) -> int | None:
        if self._admin is None:
            admin = self._admin_class(**self._options)
            await admin.start()
            self._admin = admin
        partition = TopicPartition(tp.topic, tp.partition)
        offsets = await self._admin.list_consumer_group_offsets(
            self.group_id, partitions=[partition]
        )
        meta = offsets.get(partition)
        return meta.offset if meta is not None and meta.offset >= 0 else None

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

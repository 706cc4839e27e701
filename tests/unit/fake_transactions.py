"""An in-memory stand-in for Kafka's transactions, and the transactional producers that use it.

What the broker keeps is modelled, not how aiokafka gets there: an epoch per ``transactional.id``
(starting a producer initialises the id: the epoch goes up, which fences every older producer of
that id, and the transaction it left open is aborted), the records written inside open
transactions (in the log, visible to a read_uncommitted reader only), the committed ones (what a
read_committed reader sees) and the consumer group's committed offsets.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, ProducerFenced

from agents.outbox import OutRecord

# What the next commit_transaction does instead of succeeding.
LOST_REPLY = "lost_reply"  # the broker commits, the reply never arrives: the client sees a timeout
FAILED = "failed"  # the request fails before the broker commits: the transaction stays open


@dataclass
class Transaction:
    """One transaction of one producer: what it wrote and the offsets it sent."""

    records: list[OutRecord] = field(default_factory=list)
    offsets: dict[Any, int] = field(default_factory=dict)


class FakeKafka:
    """The broker side of transactions for one consumer group."""

    def __init__(self) -> None:
        self.epochs: dict[str, int] = {}
        self.open: dict[str, Transaction] = {}  # transactional id -> its open transaction
        self.committed: list[OutRecord] = []  # what a read_committed reader sees, in order
        self.aborted: list[OutRecord] = []  # written, then aborted: read_uncommitted only
        self.offsets: dict[Any, int] = {}  # the group's committed offsets
        self.producers: list[FakeProducer] = []
        self.commit_failures: list[str] = []  # LOST_REPLY / FAILED, one per commit, in order
        self.hold_commits: asyncio.Event | None = None  # set: commits wait for it
        self.commit_entered = asyncio.Event()
        self.offset_questions = 0

    def producer(self, transactional_id: str) -> FakeProducer:
        """The committer's producer_factory."""
        producer = FakeProducer(self, transactional_id)
        self.producers.append(producer)
        return producer

    async def committed_offset(self, tp: Any) -> int | None:
        """The committer's committed_offset (the group's offset, as GroupOffsets asks it)."""
        self.offset_questions += 1
        return self.offsets.get(tp)

    def init(self, transactional_id: str) -> int:
        """InitProducerId: a new epoch, and the previous owner's open transaction aborted."""
        self.abort(transactional_id)
        epoch = self.epochs.get(transactional_id, 0) + 1
        self.epochs[transactional_id] = epoch
        return epoch

    def abort(self, transactional_id: str) -> None:
        left = self.open.pop(transactional_id, None)
        if left is not None:
            self.aborted.extend(left.records)

    def commit(self, transactional_id: str) -> None:
        done = self.open.pop(transactional_id, Transaction())
        self.committed.extend(done.records)
        self.offsets.update(done.offsets)

    def visible_uncommitted(self) -> list[OutRecord]:
        """Everything written, as a read_uncommitted reader sees it (order aside)."""
        still_open = [r for t in self.open.values() for r in t.records]
        return self.committed + self.aborted + still_open


class FakeProducer:
    """A transactional producer of one id; every call checks its epoch as the broker would."""

    def __init__(self, kafka: FakeKafka, transactional_id: str) -> None:
        self.kafka = kafka
        self.transactional_id = transactional_id
        self.epoch: int | None = None
        self.stopped = False
        self.in_transaction = False
        self.commits: list[Transaction] = []  # the transactions this producer committed

    async def start(self) -> None:
        self.epoch = self.kafka.init(self.transactional_id)

    async def stop(self) -> None:
        self.stopped = True  # like aiokafka: no abort; the broker's next init (or timeout) aborts

    async def begin_transaction(self) -> None:
        self._check()
        self.in_transaction = True

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        assert self.in_transaction, "send outside a transaction"
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._fenced():
            delivery.set_exception(ProducerFenced())
            return delivery
        record = OutRecord(topic, key, value, list(headers or []))
        self.kafka.open.setdefault(self.transactional_id, Transaction()).records.append(record)
        delivery.set_result(None)
        return delivery

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group_id: str) -> None:
        assert self.in_transaction, "offsets outside a transaction"
        if not self._fenced():
            self.kafka.open.setdefault(self.transactional_id, Transaction()).offsets.update(offsets)

    async def commit_transaction(self) -> None:
        self.kafka.commit_entered.set()
        if self.kafka.hold_commits is not None:
            await self.kafka.hold_commits.wait()
        self._check()
        failure = self.kafka.commit_failures.pop(0) if self.kafka.commit_failures else None
        if failure == FAILED:
            raise KafkaConnectionError("connection to the coordinator lost")
        done = self.kafka.open.get(self.transactional_id, Transaction())
        self.kafka.commit(self.transactional_id)
        self.in_transaction = False
        if failure == LOST_REPLY:
            raise KafkaTimeoutError()
        self.commits.append(done)

    def _fenced(self) -> bool:
        return self.epoch != self.kafka.epochs.get(self.transactional_id)

    def _check(self) -> None:
        if self.stopped:
            raise KafkaConnectionError("producer closed")
        if self._fenced():
            raise ProducerFenced()


@dataclass
class Message:
    tp: Any
    offset: int


@dataclass
class Event:
    """A Faust event as the committer sees it: only its message's partition and offset."""

    message: Message


def event(tp: Any, offset: int) -> Event:
    return Event(Message(tp, offset))


def outcome(n: int, by: str = "w1") -> OutRecord:
    """Task ``t-<n>``'s result record (``by`` tells which worker produced it)."""
    return OutRecord(
        "ftp-results", f"t-{n}".encode(), f'{{"task_id": "t-{n}", "by": "{by}"}}'.encode(), []
    )

"""The transactional committer's failure paths: fencing, a commit whose fate is unknown, shutdown.

Each test drives :class:`TransactionalCommitter` with fake producers over a fake broker
(tests/unit/fake_transactions.py) and checks what a read_committed reader would see.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.structs import TopicPartition

from agents.transactions import TransactionalCommitter
from tests.unit.fake_transactions import FAILED, LOST_REPLY, FakeKafka, event, outcome

TP = TopicPartition("ftp-tasks", 0)
TP1 = TopicPartition("ftp-tasks", 1)
TID = "g-eos-ftp-tasks-0"


def committer(kafka: FakeKafka, interval: float = 3600) -> TransactionalCommitter:
    """A committer of group ``g`` whose timer never fires on its own (unless ``interval``)."""
    return TransactionalCommitter(
        group_id="g",
        topics=lambda: ["ftp-tasks"],
        producer_factory=kafka.producer,
        committed_offset=kafka.committed_offset,
        interval=interval,
    )


async def complete(c: TransactionalCommitter, tp: TopicPartition, offsets: range, by: str = "w1"):
    """Finish the events at ``offsets`` of ``tp``, in order, each with its task's result."""
    for n in offsets:
        await c.complete(event(tp, n), [outcome(tp.partition * 100 + n, by)])


async def after_backoff(c: TransactionalCommitter) -> None:
    """The timer's next round once a failed partition's backoff (0.1 s at first) has passed."""
    await asyncio.sleep(0.15)
    await c.commit_all()


async def test_fenced_commit_drops_its_records_and_never_takes_the_partition_back():
    """A new owner initialised the transactional id: the fenced worker's commit fails, its
    records are dropped (the owner redoes them), it starts no producer again (which would fence
    the owner in turn) and its health shows the fencing."""
    kafka = FakeKafka()
    c = committer(kafka)
    await c.assigned([TP])
    await complete(c, TP, range(2))
    owner = kafka.producer(TID)
    await owner.start()  # the partition's new owner: fences the worker's producer

    await c.commit_all()

    assert kafka.committed == [] and kafka.offsets == {}
    assert c.fenced_total == 1 and c.aborts_total == 0 and c.commits_total == 0
    assert c.dropped_total == 2
    snapshot = c.snapshot()
    assert snapshot["fenced_partitions"] == 1 and snapshot["pending_records"] == 0
    assert snapshot["last_error"].startswith("ProducerFenced")
    assert kafka.producers[0].stopped
    assert "fenced 1" in repr(c)

    await complete(c, TP, range(2, 3))  # a task finishing later is the owner's to redo too
    assert c.dropped_total == 3
    assert await c.flush(within=1)  # a shutdown's flush: nothing of the partition is retried
    await c.commit_all()
    assert kafka.producers == [kafka.producers[0], owner]  # no new producer of the worker's
    assert kafka.committed == [] and kafka.offsets == {} and kafka.offset_questions == 0

    # The owner is not fenced back: its redo of the same tasks commits once.
    await owner.begin_transaction()
    for n in range(3):
        await owner.send("ftp-results", outcome(n, "owner").value, key=outcome(n).key)
    await owner.send_offsets_to_transaction({TP: 3}, "g")
    await owner.commit_transaction()
    assert kafka.committed == [outcome(n, "owner") for n in range(3)]
    assert kafka.offsets == {TP: 3}
    await c.release()


async def test_commit_whose_reply_was_lost_is_not_sent_again():
    """commit_transaction fails with a timeout after the broker committed: the group's committed
    offset shows it, so those records are not sent again; what finished since still goes out."""
    kafka = FakeKafka()
    c = committer(kafka)
    await c.assigned([TP])
    await complete(c, TP, range(2))
    kafka.commit_failures.append(LOST_REPLY)

    await c.commit_all()
    assert c.aborts_total == 1 and c.commits_total == 0
    assert c.last_error is not None and c.last_error.startswith("KafkaTimeoutError")
    assert kafka.committed == [outcome(0), outcome(1)] and kafka.offsets == {TP: 2}
    await complete(c, TP, range(2, 3))  # finished while the fate was unknown

    await after_backoff(c)

    assert kafka.offset_questions == 1
    assert kafka.committed == [outcome(0), outcome(1), outcome(2)]  # each exactly once
    assert kafka.offsets == {TP: 3}
    assert len(kafka.producers) == 2 and kafka.producers[0].stopped  # replaced after the error
    assert [t.records for t in kafka.producers[1].commits] == [[outcome(2)]]
    assert c.tasks_total == 3 and c.records_total == 3 and c.committed(TP) == 3
    assert c.snapshot()["pending_records"] == 0
    await c.commit_all()
    assert kafka.committed == [outcome(0), outcome(1), outcome(2)]
    await c.release()


async def test_commit_that_failed_is_sent_again_once_with_the_same_records():
    """commit_transaction fails before the broker committed: the open transaction is aborted
    when the producer is replaced, and the same records (with what finished since) are sent
    again once, in one new transaction with the offset."""
    kafka = FakeKafka()
    c = committer(kafka)
    await c.assigned([TP])
    await complete(c, TP, range(2))
    kafka.commit_failures.append(FAILED)

    await c.commit_all()
    assert c.aborts_total == 1 and c.commits_total == 0
    assert kafka.committed == [] and kafka.offsets == {}
    await complete(c, TP, range(2, 3))

    await after_backoff(c)

    assert kafka.offset_questions == 1
    assert kafka.aborted == [outcome(0), outcome(1)]  # the first attempt, aborted by the new init
    assert kafka.committed == [outcome(0), outcome(1), outcome(2)]
    assert kafka.offsets == {TP: 3}
    assert len(kafka.producers) == 2
    resent = kafka.producers[1].commits
    assert [t.records for t in resent] == [[outcome(0), outcome(1), outcome(2)]]
    assert [t.offsets for t in resent] == [{TP: 3}]
    assert c.commits_total == 1 and c.tasks_total == 3
    await c.commit_all()
    await after_backoff(c)
    assert kafka.committed == [outcome(0), outcome(1), outcome(2)]  # once, not again
    await c.release()


async def test_shutdown_commits_nothing_and_the_next_owner_commits_each_outcome_once():
    """Stopping with one partition's transaction in flight (its commit not answered yet) and
    another's tasks finished but not yet in a transaction: nothing becomes visible to a
    read_committed reader and no offset is committed; the next owner's initialisation aborts
    the open transaction and its redo commits every outcome once."""
    kafka = FakeKafka()
    kafka.hold_commits = asyncio.Event()  # never set: the broker does not answer the commit
    c = committer(kafka, interval=0.01)
    await c.start()
    await c.assigned([TP, TP1])
    await complete(c, TP, range(2))
    await asyncio.wait_for(kafka.commit_entered.wait(), timeout=5)
    await complete(c, TP1, range(3))  # the timer is busy with partition 0's transaction

    await asyncio.wait_for(c.stop(), timeout=10)

    assert kafka.committed == [] and kafka.offsets == {}
    assert kafka.open[TID].records == [outcome(0), outcome(1)]  # written, never committed
    assert "g-eos-ftp-tasks-1" not in kafka.open  # partition 1's tasks were never sent
    assert c.dropped_total == 5 and c.commits_total == 0
    assert all(p.stopped for p in kafka.producers)

    kafka.hold_commits = None
    nxt = committer(kafka)
    await nxt.assigned([TP, TP1])
    assert kafka.aborted == [outcome(0), outcome(1)]
    await complete(nxt, TP, range(2), by="next")
    await complete(nxt, TP1, range(3), by="next")
    await nxt.commit_all()
    tasks = [0, 1, 100, 101, 102]
    assert sorted(kafka.committed, key=lambda r: r.key or b"") == [
        outcome(n, "next") for n in tasks
    ]
    assert kafka.offsets == {TP: 2, TP1: 3}
    await nxt.release()


async def test_a_commit_during_the_assignment_does_not_initialise_the_id_twice():
    """Tasks finish while the assignment's producers are still initialising (slow on a busy
    broker): the commit waits for that producer instead of initialising the id again, so no
    producer of ours fences another and every outcome is committed once."""
    kafka = FakeKafka()
    slow = asyncio.Event()
    real_producer = kafka.producer

    def slow_producer(transactional_id: str) -> Any:
        producer = real_producer(transactional_id)
        start = producer.start

        async def start_slowly() -> None:
            await slow.wait()
            await start()

        producer.start = start_slowly  # type: ignore[method-assign]
        return producer

    c = TransactionalCommitter(
        group_id="g",
        topics=lambda: ["ftp-tasks"],
        producer_factory=slow_producer,
        committed_offset=kafka.committed_offset,
        interval=3600,
    )
    assigning = asyncio.create_task(c.assigned([TP]))
    await asyncio.sleep(0.01)  # the assignment's producer is initialising
    await complete(c, TP, range(3))
    committing = asyncio.create_task(c.commit_all())
    await asyncio.sleep(0.01)
    slow.set()
    await asyncio.gather(assigning, committing)
    await c.commit_all()

    assert [p.transactional_id for p in kafka.producers] == [TID]  # initialised once
    assert c.fenced_total == 0 and c.dropped_total == 0
    assert len(kafka.committed) == 3 and kafka.offsets == {TP: 3}

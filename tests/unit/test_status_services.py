"""The status sender (batching, held-back in_progress) and the status table (agent, lookups,
purge), each built through its constructor with small fakes of the Faust topic and table."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from agents.status_sender import StatusSender
from agents.status_table import StatusTable
from models.result import TransferResult
from models.status import TaskState
from models.task import TransferTask

PARTITIONS = 6


def partition_of(task_id: str) -> int:
    return sum(task_id.encode()) % PARTITIONS


class FakeStatusTopic:
    """Records what the status topic is given: (key, value, partition) per message."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Any, int]] = []

    async def send(self, *, key: Any, value: Any, partition: int | None) -> Any:
        assert partition is not None
        self.messages.append((key, value, partition))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def changes(self) -> list[tuple[str, str]]:
        """(task_id, state) of every change, in the order sent, batches unpacked."""
        out = []
        for key, value, _ in self.messages:
            for task_id, update in value.get("batch", [(key, value)]):
                out.append((task_id, update["state"]))
        return out


def outcome(task_id: str) -> TransferResult:
    return TransferResult(
        task_id=task_id,
        status="success",
        src_id="ftp-a",
        src_path="/x",
        dst_id="local",
        dst_path="/y",
        direction="download",
        bytes_transferred=1,
        duration_ms=1,
        timestamp="2026-11-26T00:00:00.000+00:00",
        attempts=1,
        worker="w-unit",
        sha256="ab",
    )


def task(task_id: str) -> TransferTask:
    return TransferTask(
        task_id=task_id, src_id="ftp-a", src_path="/x", dst_id="local", dst_path="/y"
    )


def sender(topic: FakeStatusTopic, **options: Any) -> StatusSender:
    return StatusSender(topic, partition_of, worker_id="w-unit", **options)


async def test_in_progress_is_held_back_and_never_overtakes_the_outcome():
    """A quick attempt sends only its outcome; a slow one sends in_progress, then the outcome."""
    topic = FakeStatusTopic()
    statuses = sender(topic, in_progress_after=0.05, batch_seconds=0.02)
    async with statuses:
        await statuses.attempt_started(task("quick"), 1)
        await statuses.finished(outcome("quick"))
        assert topic.messages == []  # queued, not sent yet
        await asyncio.sleep(0.15)
        assert topic.changes() == [("quick", "success")]
        topic.messages.clear()
        await statuses.attempt_started(task("slow"), 1)
        await asyncio.sleep(0.2)  # the held-back change is queued and sent
        await statuses.finished(outcome("slow"))
        await asyncio.sleep(0.15)
        assert topic.changes() == [("slow", "in_progress"), ("slow", "success")]
        assert statuses.held_back == 0


async def test_changes_of_one_partition_go_in_one_message_keyed_by_its_first_task():
    """Many outcomes at once: one message per partition, each change on its id's partition, in
    the order given; a lone change is sent as itself."""
    topic = FakeStatusTopic()
    statuses = sender(topic, batch_seconds=60)
    ids = [f"t-{n}" for n in range(60)]
    for task_id in ids:
        await statuses.finished(outcome(task_id))
    await statuses.flush()
    assert len(topic.messages) == len({partition_of(t) for t in ids}) < len(ids)
    seen = []
    for key, value, partition in topic.messages:
        entries = value.get("batch", [(key, value)])
        assert key == entries[0][0]
        assert all(partition_of(task_id) == partition for task_id, _ in entries)
        seen += [task_id for task_id, _ in entries]
    assert sorted(seen) == sorted(ids)
    assert [t for t in seen if partition_of(t) == 0] == [t for t in ids if partition_of(t) == 0]
    topic.messages.clear()
    await statuses.finished(outcome("alone"))
    await statuses.flush()
    [(key, value, partition)] = topic.messages
    assert key == "alone" and value["state"] == "success" and partition == partition_of("alone")


async def test_a_submission_is_sent_at_once_with_what_was_queued_before():
    """POST /tasks waits for its queued entries: they go now, behind earlier changes."""
    topic = FakeStatusTopic()
    statuses = sender(topic, batch_seconds=60)
    await statuses.finished(outcome("again"))
    futures = await statuses.submitted([task("again"), task("new")])
    assert len(futures) >= 1 and all(f.done() for f in futures)
    changes = topic.changes()
    assert changes.index(("again", "success")) < changes.index(("again", "queued"))
    assert ("new", "queued") in changes


async def test_stopping_the_sender_sends_what_is_still_queued():
    """The final flush is the service's on_stop: nothing queued is left behind."""
    topic = FakeStatusTopic()
    statuses = sender(topic, batch_seconds=60)
    async with statuses:
        await statuses.finished(outcome("last"))
        assert topic.messages == []
    assert topic.changes() == [("last", "success")]


class FakeTable(dict[str, Any]):
    """Enough of a Faust table: a dict with the tombstones sent and a local store."""

    def __init__(self, entries: dict[str, Any] | None = None) -> None:
        super().__init__(entries or {})
        self.data = self
        self.tombstones: list[tuple[int, str]] = []

    def send_changelog(self, partition: int, key: str, value: Any, value_serializer: Any) -> None:
        assert value is None and value_serializer == "raw"
        self.tombstones.append((partition, key))


def table_service(table: FakeTable, now: float, owned: list[int]) -> StatusTable:
    return StatusTable(
        SimpleNamespace(prepare_key=lambda key, _: (key.encode(), None)),
        table,
        partitions=PARTITIONS,
        retention_seconds=3600,
        consumer=lambda: None,
        owned_partitions=lambda: owned,
        clock=lambda: now,
    )


async def test_entries_past_the_retention_are_unknown_and_purged_by_their_owner():
    """lookup() hides an expired entry at once; purge() deletes expired entries of the
    partitions this worker owns, with a tombstone on the entry's own changelog partition."""
    now = 1_000_000.0
    fresh = {"task_id": "fresh", "state": "success", "_ts": now - 3600 + 5, "_partition": 0}
    old_mine = {"task_id": "old", "state": "failed", "_ts": now - 3600 - 5, "_partition": 1}
    old_theirs = {"task_id": "x", "state": "success", "_ts": now - 3600 - 5, "_partition": 2}
    table = FakeTable({"fresh": fresh, "old": old_mine, "x": old_theirs})
    statuses = table_service(table, now, owned=[0, 1])
    found = statuses.lookup("fresh")
    assert found is not None and found.public() == {"task_id": "fresh", "state": "success"}
    assert statuses.lookup("old") is None
    assert await statuses.purge() == 1
    assert table.tombstones == [(1, "old")]
    assert set(table) == {"fresh", "x"}  # another worker purges its own partition
    assert statuses.snapshot()["purged_total"] == 1


async def test_the_agent_applies_single_changes_and_batches_to_the_table():
    """Each change merges into its entry; an invalid one is skipped; the offset is noted."""
    table = FakeTable()
    statuses = table_service(table, 0.0, owned=[2])

    def event(key: str, value: Any, offset: int) -> Any:
        return SimpleNamespace(
            key=key, value=value, message=SimpleNamespace(partition=2, offset=offset)
        )

    class Stream:
        async def events(self) -> Any:
            yield event("a", {"state": "queued", "task_id": "a", "submitted": True}, 7)
            batch = [["a", {"state": "success", "task_id": "a"}], ["b", {"state": "nonsense"}]]
            batch.append(["c", {"state": "failed", "task_id": "c"}])
            yield event("a", {"batch": batch}, 8)

    await statuses.record(Stream())
    assert table["a"]["state"] == TaskState.SUCCESS and table["a"]["attempts"] == 0
    assert table["c"] == {"state": "failed", "task_id": "c", "_partition": 2}
    assert "b" not in table  # an invalid change is logged and skipped
    assert statuses.applied == {2: 8}

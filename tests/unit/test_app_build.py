"""Building the worker app (no broker): no side effects, consistent keying, API description."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import schemathesis
from aiokafka.partitioner import murmur2
from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest

from app.logs import config_summary
from app.main import create_app
from app.metrics import ConsumerLagCollector
from app.settings import Settings
from models.connections import FtpConnection, LocalConnection, Registry
from models.result import TransferResult
from models.task import TransferTask


@pytest.fixture
def built(tmp_path, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("FTP_POOLER_")]:
        monkeypatch.delenv(name)
    settings = Settings(
        kafka={"consumer_group": "unit-build", "topic_partitions": 6},
        worker={"id": "w-unit", "data_dir": tmp_path / "data"},
        api={"token": "unit-secret-token", "max_request_bytes": 4096},
    )
    registry = Registry(
        {
            "ftp-a": FtpConnection("ftp-a", "127.0.0.1", password="unit-secret-pw"),
            "local": LocalConnection("local", tmp_path / "storage"),
        }
    )
    return create_app(settings, registry), settings, registry, tmp_path


def test_building_the_app_touches_no_worker_files(built):
    """A CLI command builds the app too, maybe beside a running worker: no journal is opened
    or rewritten until the worker itself starts."""
    app, _, _, tmp_path = built
    assert app.journal is None and app.runner.journal is None
    assert not (tmp_path / "data" / "temp-files.journal").exists()


def test_status_topic_and_table_changelog_key_a_task_id_identically(built):
    """The agent writes an id's entry in the status topic's partition; table_route looks it
    up by hashing the changelog key: both must be the same bytes, hence the same partition."""
    app, settings, _, _ = built
    statuses = app.statuses
    for task_id in ("task-42", "with/slash and space", "ünï✓"):
        topic_key = statuses.topic.prepare_key(task_id, None)[0]
        table_key = statuses.table.changelog_topic.prepare_key(task_id, None)[0]
        assert topic_key == table_key
        expected = (murmur2(table_key) & 0x7FFFFFFF) % settings.kafka.topic_partitions
        assert statuses.partition_of(task_id) == expected
    assert statuses.table.partitions == statuses.topic.partitions == 6


def test_openapi_document_is_valid_and_follows_the_settings(built):
    """schemathesis loads it; the token and size limit of the settings are described."""
    app, _, _, _ = built
    document = app.openapi()
    schema = schemathesis.openapi.from_dict(document)
    operations = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert ("POST", "/tasks") in operations and ("GET", "/tasks/{task_id}") in operations
    post = document["paths"]["/tasks"]["post"]
    assert post["security"] == [{"bearer": []}] and "401" in post["responses"]
    assert "4096 bytes" in post["description"]
    task = document["components"]["schemas"]["Task"]
    assert task["properties"]["task_id"]["maxLength"] == 256
    assert task["properties"]["src_path"]["maxLength"] == 4096


def test_worker_started_config_summary_holds_no_secret(built):
    """Every setting is summarised; the token shows as set, passwords are nowhere."""
    _, settings, registry, _ = built
    summary = config_summary(settings, registry)
    text = json.dumps(summary)
    assert "unit-secret-token" not in text and "unit-secret-pw" not in text
    assert summary["api"]["token"] == "set"
    assert summary["kafka"]["consumer_group"] == "unit-build"
    assert summary["connections"]["ftp-a"]["host"] == "127.0.0.1"


def test_consumer_lag_is_empty_before_the_worker_consumes(built):
    app, _, _, _ = built
    assert app.consumer_lag() == {}


class FakeConsumer:
    def __init__(self, highwaters: dict, committed: dict) -> None:
        self._highwaters = highwaters
        self._committed_offset = committed

    def highwater(self, tp):
        return self._highwaters.get(tp)


def test_consumer_lag_is_highwater_minus_committed_for_the_task_topics_only(built):
    """Per assigned partition of ftp-tasks and the retry topic; other topics, unfetched
    partitions and revoked ones are left out; served as ftp_pooler_consumer_lag."""
    app, settings, _, _ = built
    tasks = settings.kafka.input_topic
    retries = app.handler.retries.topic.get_topic_name()
    app._assignment = {
        TP(tasks, 0),
        TP(tasks, 1),
        TP(tasks, 2),
        TP(retries, 0),
        TP(app.statuses.topic.get_topic_name(), 0),
    }
    app._consumer = FakeConsumer(
        {TP(tasks, 0): 10, TP(tasks, 1): 5, TP(retries, 0): 3},
        {TP(tasks, 0): 4, TP(retries, 0): 3},
    )
    assert app.consumer_lag() == {(tasks, 0): 6, (tasks, 1): 5, (retries, 0): 0}
    registry = CollectorRegistry()
    registry.register(ConsumerLagCollector(app.consumer_lag))
    page = generate_latest(registry).decode()
    assert f'ftp_pooler_consumer_lag{{partition="0",topic="{tasks}"}} 6.0' in page


class FakeTable:
    """Enough of a Faust table for the purge: entries, tombstones sent, the store."""

    def __init__(self, entries: dict) -> None:
        self.data = dict(entries)
        self.tombstones: list[tuple[int, str]] = []
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: "changelog")

    def items(self):
        return list(self.data.items())

    def get(self, key):
        return self.data.get(key)

    def send_changelog(self, partition, key, value, value_serializer=None):
        assert value is None and value_serializer == "raw"
        self.tombstones.append((partition, key))


async def test_entries_past_the_retention_are_unknown_and_purged_by_their_owner(built):
    """lookup() hides an expired entry at once; purge() deletes expired entries of the
    partitions this worker owns, with a tombstone on the entry's own changelog partition."""
    app, _, _, _ = built
    statuses = app.statuses
    now = 1_000_000.0
    retention = statuses.retention
    statuses._clock = lambda: now
    fresh = {"task_id": "fresh", "state": "success", "_ts": now - retention + 5, "_partition": 0}
    old_mine = {"task_id": "old", "state": "failed", "_ts": now - retention - 5, "_partition": 1}
    old_theirs = {"task_id": "x", "state": "success", "_ts": now - retention - 5, "_partition": 2}
    table = FakeTable({"fresh": fresh, "old": old_mine, "x": old_theirs})
    statuses.table = table  # type: ignore[assignment]
    statuses.owned_partitions = lambda: [0, 1]  # type: ignore[method-assign]
    assert statuses.lookup("fresh") == {"task_id": "fresh", "state": "success"}
    assert statuses.lookup("old") is None
    assert await statuses.purge() == 1
    assert table.tombstones == [(1, "old")]
    assert set(table.data) == {"fresh", "x"}  # another worker purges its own partition
    assert statuses.snapshot()["purged_total"] == 1


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


class FakeStatusTopic:
    """Records what the status topic is given: (key, value, partition) per message."""

    def __init__(self, real) -> None:
        self.prepare_key = real.prepare_key
        self.messages: list[tuple[str, object, int]] = []

    async def send(self, key, value, partition):
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


def task(task_id: str) -> TransferTask:
    return TransferTask(
        task_id=task_id, src_id="ftp-a", src_path="/x", dst_id="local", dst_path="/y"
    )


async def test_in_progress_is_held_back_and_never_overtakes_the_outcome(built):
    """A quick attempt sends only its outcome; a slow one sends in_progress, then the outcome."""
    app, _, _, _ = built
    statuses = app.statuses
    statuses.in_progress_after = 0.05
    statuses.batch_seconds = 0.02
    statuses.topic = topic = FakeStatusTopic(statuses.topic)  # type: ignore[assignment]
    await statuses.started(task("quick"), 1)
    await statuses.finished(outcome("quick"))
    assert topic.messages == []  # queued, not sent yet
    await asyncio.sleep(0.1)
    assert topic.changes() == [("quick", "success")]
    topic.messages.clear()
    await statuses.started(task("slow"), 1)
    await asyncio.sleep(0.055)  # the held-back update is queued when the outcome arrives
    await statuses.finished(outcome("slow"))
    await asyncio.sleep(0.05)
    assert topic.changes() == [("slow", "in_progress"), ("slow", "success")]
    assert statuses._held_back == {}


async def test_changes_of_one_partition_go_in_one_message_keyed_by_its_first_task(built):
    """Many outcomes at once: one message per partition, each change on its id's partition, in
    the order given; a lone change is sent as itself."""
    app, _, _, _ = built
    statuses = app.statuses
    statuses.topic = topic = FakeStatusTopic(statuses.topic)  # type: ignore[assignment]
    ids = [f"t-{n}" for n in range(60)]
    for task_id in ids:
        await statuses.finished(outcome(task_id))
    await statuses.flush()
    assert len(topic.messages) == len({statuses.partition_of(t) for t in ids}) < len(ids)
    seen = []
    for key, value, partition in topic.messages:
        assert isinstance(value, dict)
        entries = value.get("batch", [(key, value)])
        assert key == entries[0][0]
        assert all(statuses.partition_of(task_id) == partition for task_id, _ in entries)
        seen += [task_id for task_id, _ in entries]
    assert sorted(seen) == sorted(ids)
    assert [t for t in seen if statuses.partition_of(t) == 0] == [
        t for t in ids if statuses.partition_of(t) == 0
    ]
    topic.messages.clear()
    await statuses.finished(outcome("alone"))
    await statuses.flush()
    [(key, value, partition)] = topic.messages
    assert key == "alone" and value["state"] == "success"
    assert partition == statuses.partition_of("alone")


async def test_a_submission_is_sent_at_once_with_what_was_queued_before(built):
    """POST /tasks waits for its queued entries: they go now, behind earlier changes."""
    app, _, _, _ = built
    statuses = app.statuses
    statuses.batch_seconds = 60
    statuses.topic = topic = FakeStatusTopic(statuses.topic)  # type: ignore[assignment]
    await statuses.finished(outcome("again"))
    futures = await statuses.submitted([task("again"), task("new")])
    assert len(futures) >= 1 and all(f.done() for f in futures)
    changes = topic.changes()
    assert changes.index(("again", "success")) < changes.index(("again", "queued"))
    assert ("new", "queued") in changes


async def test_the_agent_applies_single_changes_and_batches_to_the_table(built):
    app, _, _, _ = built
    statuses = app.statuses
    statuses.table = {}  # type: ignore[assignment]

    def event(key, value, offset):
        return SimpleNamespace(
            key=key, value=value, message=SimpleNamespace(partition=2, offset=offset)
        )

    class Stream:
        async def events(self):
            yield event("a", {"state": "queued", "task_id": "a", "submitted": True}, 7)
            batch = [["a", {"state": "success", "task_id": "a"}], ["b", {"state": "nonsense"}]]
            batch.append(["c", {"state": "failed", "task_id": "c"}])
            yield event("a", {"batch": batch}, 8)

    await statuses._record(Stream())
    assert statuses.table["a"]["state"] == "success" and statuses.table["a"]["attempts"] == 0
    assert statuses.table["c"] == {"state": "failed", "task_id": "c", "_partition": 2}
    assert "b" not in statuses.table  # an invalid change is logged and skipped
    assert statuses._applied == {2: 8}

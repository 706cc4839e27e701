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
from app.registry import FtpConnection, LocalConnection, Registry
from app.settings import Settings
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


async def test_in_progress_is_held_back_and_never_overtakes_the_outcome(built, monkeypatch):
    """A quick attempt sends only its outcome; a slow one sends in_progress, then the outcome."""
    app, _, _, _ = built
    statuses = app.statuses
    statuses.in_progress_after = 0.05
    sent: list[tuple[str, str]] = []

    async def fake_send(task_id, update, now):
        # The held-back update is slow to send: the outcome must still come second.
        await asyncio.sleep(0.03 if update["state"] == "in_progress" else 0)
        sent.append((task_id, update["state"]))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    monkeypatch.setattr(statuses, "_send", fake_send)
    quick = TransferTask(
        task_id="quick", src_id="ftp-a", src_path="/x", dst_id="local", dst_path="/y"
    )
    await statuses.started(quick, 1)
    await statuses.finished(outcome("quick"))
    await asyncio.sleep(0.1)
    assert sent == [("quick", "success")]
    sent.clear()
    slow = TransferTask(
        task_id="slow", src_id="ftp-a", src_path="/x", dst_id="local", dst_path="/y"
    )
    await statuses.started(slow, 1)
    await asyncio.sleep(0.055)  # the held-back update is being sent when the outcome arrives
    await statuses.finished(outcome("slow"))
    assert sent == [("slow", "in_progress"), ("slow", "success")]
    assert statuses._held_back == {}

"""Building the worker app (no broker): no side effects, consistent keying, API description."""

from __future__ import annotations

import json

import mode
import pytest
import schemathesis
from aiokafka.partitioner import murmur2
from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest

from app.logs import config_summary
from app.main import create_app
from app.metrics import ConsumerLagCollector, consumer_lag
from app.settings import Settings
from models.connections import FtpConnection, LocalConnection, Registry


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
    assert app.journal.journal is None  # opened by the worker's first start only
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
    operations = {
        (op.ok().method.upper(), op.ok().path)  # type: ignore[union-attr]
        for op in schema.get_all_operations()
    }
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


def test_consumer_lag_is_highwater_minus_committed_for_the_task_topics_only(built):
    """Per assigned partition of ftp-tasks and the retry topic; other topics, unfetched
    partitions and revoked ones are left out; served as ftp_pooler_consumer_lag."""
    app, settings, _, _ = built
    tasks = settings.kafka.input_topic
    retries = app.handler.retries.topic.get_topic_name()
    assigned = [TP(tasks, 0), TP(tasks, 1), TP(tasks, 2), TP(retries, 0), TP("other", 0)]
    highwaters = {TP(tasks, 0): 10, TP(tasks, 1): 5, TP(retries, 0): 3, TP("other", 0): 9}
    committed = {TP(tasks, 0): 4, TP(retries, 0): 3}
    lag = consumer_lag(assigned, {tasks, retries}, highwaters.get, committed.get)
    assert lag == {(tasks, 0): 6, (tasks, 1): 5, (retries, 0): 0}
    registry = CollectorRegistry()
    registry.register(ConsumerLagCollector(lambda: lag))
    page = generate_latest(registry).decode()
    assert f'ftp_pooler_consumer_lag{{partition="0",topic="{tasks}"}} 6.0' in page


def test_the_worker_is_a_tree_of_services_built_by_its_constructor(built):
    """Every part that starts and stops is a mode.Service the app owns, built up front."""
    app, _, _, _ = built
    for part in (app.pools, app.metrics_server, app.status_sender, app.statuses, app.fleet):
        assert isinstance(part, mode.Service)
    assert {"transfer_tasks", "retry_tasks", "task_status", "session_reports"} <= {
        name.rsplit(".", 1)[-1] for name in app.agents
    }

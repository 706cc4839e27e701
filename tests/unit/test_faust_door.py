"""Each reach of agents/faust_door.py into Faust's internals, checked against the installed
faust-streaming: an upgrade that renames or removes one fails here, by name."""

from __future__ import annotations

import inspect
from pathlib import Path

import faust
from aiokafka import AIOKafkaConsumer
from faust.tables.base import Collection
from faust.transport.drivers.aiokafka import Producer
from faust.types import TP

from agents import faust_door


def test_committed_offset_reads_the_consumers_mapping():
    class FakeConsumer:
        _committed_offset = {TP("t", 0): 42}

    assert faust_door.committed_offset(FakeConsumer(), TP("t", 0)) == 42
    assert faust_door.committed_offset(FakeConsumer(), TP("t", 1)) is None


def test_apps_keep_assignment_and_consumer_in_private_fields():
    """App declares ``_assignment`` and ``_consumer``; the door reads them without creating
    a consumer (the public property would)."""
    assert "_assignment" in faust.App.__annotations__ or hasattr(faust.App, "_assignment")
    assert "self._consumer = " in Path(inspect.getfile(faust.App)).read_text()
    app = faust.App("door-test", broker="kafka://127.0.0.1:1", store="memory://")
    assert faust_door.assignment(app) == frozenset()
    assert faust_door.started_consumer(app) is None
    app._assignment = {TP("t", 1)}
    assert faust_door.assignment(app) == {TP("t", 1)}


def test_the_aiokafka_driver_has_ensure_producer():
    """faust's aiokafka Producer builds aiokafka's producer in ``_ensure_producer``."""
    assert callable(getattr(Producer, "_ensure_producer", None))


def test_tables_keep_their_store_in_data():
    """Collection.data is the local store a purge deletes from."""
    assert "data" in dir(Collection) or "self.data" in inspect.getsource(Collection)


def test_forget_table_key_deletes_from_the_store_only():
    class Table:
        def __init__(self) -> None:
            self.data = {"a": 1, "b": 2}

    table = Table()
    faust_door.forget_table_key(table, "a")
    assert table.data == {"b": 2}


def test_apps_wait_for_in_flight_events_in_consumer_wait_empty():
    """The mixin overrides App._consumer_wait_empty(consumer, logger), which Faust calls on
    shutdown and on partitions revoked."""
    assert faust_door.WAIT_EMPTY_HOOK == "_consumer_wait_empty"
    hook = getattr(faust.App, faust_door.WAIT_EMPTY_HOOK)
    assert list(inspect.signature(hook).parameters) == ["self", "consumer", "logger"]
    source = Path(inspect.getfile(faust.App)).read_text()
    calls = source.count(f"self.{faust_door.WAIT_EMPTY_HOOK}(")
    calls += source.count(f"T(self.{faust_door.WAIT_EMPTY_HOOK})(")
    assert calls >= 2  # shutdown and revocation


async def test_the_mixin_routes_the_hook_to_wait_for_in_flight():
    seen = []

    class App(faust_door.BoundedWaitEmpty):
        async def wait_for_in_flight(self, consumer):
            seen.append(consumer)

    await App()._consumer_wait_empty("consumer", None)
    assert seen == ["consumer"]


def test_recovery_builds_offsets_in_build_offsets():
    """Recovery._build_offsets(consumer, tps, destination, title) fills the persisted offsets
    the rebuilding recovery compares with the changelog's end."""
    from faust.tables.recovery import Recovery

    hook = Recovery._build_offsets
    assert list(inspect.signature(hook).parameters) == [
        "self",
        "consumer",
        "tps",
        "destination",
        "title",
    ]


def test_table_manager_caches_its_recovery_in_recovery():
    """TableManager.recovery is a property over ``self._recovery`` (None until first use)."""
    from faust.tables import TableManager

    source = Path(inspect.getfile(TableManager)).read_text()
    assert "self._recovery" in source and isinstance(TableManager.recovery, property)


def test_rocksdb_stores_keep_partition_dbs_in_dbs():
    """The RocksDB store keeps one db per partition in ``_dbs`` and a ``_key_index`` cache."""
    from faust.stores.rocksdb import Store

    source = Path(inspect.getfile(Store)).read_text()
    assert "self._dbs" in source and "self._key_index" in source
    assert callable(Store.partition_path)


def test_producer_settings_come_from_fausts_producer():
    """Our transactional producers connect as Faust's own: its default and auth settings."""
    app = faust.App("door-test-producer", broker="kafka://127.0.0.1:1", store="memory://")
    settings = faust_door.producer_settings(app)
    assert settings["bootstrap_servers"] == ["127.0.0.1:1"]
    assert settings["security_protocol"] == "PLAINTEXT"
    assert "client_id" in settings and "request_timeout_ms" in settings


def test_read_committed_sets_the_isolation_level_of_the_consumer_faust_builds():
    """Faust's consumer keeps its thread in ``_thread``, whose ``_create_worker_consumer``
    builds aiokafka's consumer (reading ``_isolation_level`` only when it starts); the door
    wraps it so the consumer is created reading committed messages only."""
    from faust.transport.consumer import ThreadDelegateConsumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert "self._thread = self._new_consumer_thread()" in inspect.getsource(
        ThreadDelegateConsumer.__init__
    )
    assert "isolation_level=isolation_level" in inspect.getsource(
        AIOKafkaConsumerThread._create_worker_consumer
    )
    assert "isolation_level=self._isolation_level" in inspect.getsource(AIOKafkaConsumer.start)

    class Client:
        _isolation_level = "read_uncommitted"

    class Thread:
        def _create_worker_consumer(self, transport: object) -> Client:
            return Client()

    class Consumer:
        _thread = Thread()

    consumer = Consumer()
    faust_door.read_committed(consumer)
    assert consumer._thread._create_worker_consumer(None)._isolation_level == "read_committed"


def test_the_mixin_wraps_fausts_new_consumer():
    """App._new_consumer builds the consumer; the mixin's override reaches it."""
    assert callable(faust.App._new_consumer)

    class Base:
        def _new_consumer(self) -> object:
            return "consumer"

    class App(faust_door.ReadCommittedConsumer, Base):
        consumer_read_committed = True

    seen: list[object] = []
    original = faust_door.read_committed
    faust_door.read_committed = seen.append  # type: ignore[assignment]
    try:
        assert App()._new_consumer() == "consumer"
    finally:
        faust_door.read_committed = original
    assert seen == ["consumer"]


def test_the_datadir_flag_default_is_fausts_private_constant():
    """``--datadir`` defaults to faust.types._env.DATADIR; only another value counts as given."""
    import faust.cli.base
    from faust.types import _env

    source = Path(inspect.getfile(faust.cli.base)).read_text()
    assert '"--datadir",\n        "-D",\n        default=DATADIR,' in source
    assert not faust_door.datadir_flag_given(None)
    assert not faust_door.datadir_flag_given(_env.DATADIR)
    assert faust_door.datadir_flag_given("/somewhere/else")


# -- standby copies of a marked table are rebuilt on takeover ----------------------------------
class _Store:
    """A RocksDB store as the rebuilding recovery sees it: a db per partition on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dbs: dict[int, object] = {0: object()}
        self._key_index: dict[bytes, int] = {b"k": 0}
        self.partition_path(0).mkdir()
        (self.partition_path(0) / "CURRENT").write_text("")

    def partition_path(self, partition: int) -> Path:
        return self.root / f"watch_seen-{partition}.db"


class _Table:
    def __init__(self, root: Path) -> None:
        self.name = "watch_seen"
        self.data = _Store(root)

    def persisted_offset(self, tp: TP) -> int:
        return 40  # what the standby copy applied last, past its hole


class _Consumer:
    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 43)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)


def _recovery(table: _Table, tp: TP, roles: dict[str, set[TP]]) -> faust_door.RebuildingRecovery:
    from types import SimpleNamespace

    app = SimpleNamespace(
        conf=SimpleNamespace(stream_recovery_delay=0.0),
        consumer_generation_id=1,
        assignor=SimpleNamespace(
            assigned_standbys=lambda: roles["standby"], assigned_actives=lambda: roles["active"]
        ),
        _rebalancing_span=None,
        tracer=None,
    )
    tables = SimpleNamespace(_changelogs={tp.topic: table})
    return faust_door.RebuildingRecovery(app, tables)  # type: ignore[arg-type]


async def _standby_then_active(table: _Table) -> tuple[faust_door.RebuildingRecovery, TP]:
    """The partition is a standby here for one generation, then becomes active here."""
    tp = TP("g-watch_seen-changelog", 0)
    roles: dict[str, set[TP]] = {"standby": {tp}, "active": set()}
    recovery = _recovery(table, tp, roles)
    await recovery.on_rebalance({tp}, set(), {tp}, generation_id=1)
    roles.update(standby=set(), active={tp})
    await recovery.on_rebalance({tp}, set(), set(), generation_id=1)
    await recovery._build_offsets(_Consumer(), {tp}, recovery.active_offsets, "active")
    return recovery, tp


async def test_a_marked_tables_standby_copy_is_recovered_from_the_start_on_takeover(tmp_path):
    """Faust can skip standby records (see faust_door), so a marked table's partition that was
    a standby here is wiped and read from the changelog's start when it becomes active here,
    not from the standby's persisted offset (40, past a hole)."""
    table = _Table(tmp_path)
    faust_door.rebuild_standby_copies(table)
    recovery, tp = await _standby_then_active(table)
    assert recovery.active_offsets[tp] == -1  # everything from offset 0 on
    assert not table.data.partition_path(0).exists() and 0 not in table.data._dbs
    assert not table.data._key_index
    assert list(tmp_path.iterdir()) == []  # the standby marker is gone with the copy


async def test_an_unmarked_tables_standby_copy_is_trusted(tmp_path):
    """Other tables (task status, session reports) keep Faust's behaviour: recovery reads on
    from the copy's persisted offset."""
    table = _Table(tmp_path)
    recovery, tp = await _standby_then_active(table)
    assert recovery.active_offsets[tp] == 40
    assert table.data.partition_path(0).exists() and 0 in table.data._dbs


def test_the_watch_table_is_marked():
    """agents/watch.py marks its table: the new owner of a watch never decides on a standby copy."""
    from agents.watch import declare

    app = faust.App("door-test-watch", autodiscover=False, store="memory://")
    _, table = declare(app)
    assert getattr(table, faust_door.REBUILD_STANDBY_COPIES, False) is True

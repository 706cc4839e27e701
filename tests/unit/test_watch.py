"""Directory watches without a broker: listing parsers, settings, and the agent's decisions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from agents.watch import DirectoryWatches
from app.settings import Settings
from models.connections import load_registry
from models.errors import ConfigError
from models.watch import ListedFile, WatchSettings, check_connections, task_for
from pools.listing import LineSplitter, list_directory, parse_list, parse_mlsd

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def watch(**overrides: Any) -> WatchSettings:
    values: dict[str, Any] = {
        "name": "partner-out",
        "connection": "ftp-a",
        "directory": "/outgoing/",
        "destination": "local",
        "destination_path": "/in/{yyyy}/{relpath}",
        "interval_seconds": 1,
    }
    values.update(overrides)
    return WatchSettings(**values)


def test_mlsd_lines_give_type_size_and_utc_modify_time():
    """MLSD facts are read case-insensitively; the name keeps its spaces."""
    entry = parse_mlsd("Type=file;Size=1234;Modify=20261202101500.123;perm=r; a b.csv")
    assert entry is not None
    assert (entry.name, entry.kind, entry.size, entry.modify) == (
        "a b.csv",
        "file",
        1234,
        "20261202101500",
    )
    assert entry.mtime == datetime(2026, 12, 2, 10, 15, tzinfo=UTC).timestamp()
    sub, here = parse_mlsd("type=dir;modify=20261202101500; sub"), parse_mlsd("type=cdir; /x")
    assert sub is not None and sub.kind == "dir"
    assert here is not None and here.name == "."
    assert parse_mlsd("not a listing line") is None


def test_list_lines_give_minutes_this_year_or_days_with_a_year():
    """LIST times without a year are the last twelve months; symlinks are not files."""
    recent = parse_list("-rw-r--r--    1 1000     1000         5 Dec 02 10:15 x y.txt", NOW)
    assert recent is not None
    assert (recent.name, recent.kind, recent.size, recent.modify) == (
        "x y.txt",
        "file",
        5,
        "20261202101500",
    )
    ahead = parse_list("-rw-r--r--    1 ftp ftp 7 Dec 24 10:15 old.txt", NOW)
    assert ahead is not None and ahead.modify.startswith("20251224")
    dated = parse_list("drwxr-xr-x    2 1000     1000      4096 Jan 05  2024 sub", NOW)
    assert dated is not None and (dated.kind, dated.modify) == ("dir", "20240105000000")
    written_during_the_listing = parse_list("-rw-r--r-- 1 0 0 9 Dec 02  2026 new.dat", NOW)
    assert written_during_the_listing is not None and written_during_the_listing.mtime is None
    link = parse_list("lrwxrwxrwx 1 0 0 3 Dec 01 09:00 l -> a", NOW)
    assert link is not None and (link.kind, link.name) == ("other", "l")
    assert parse_list("total 12", NOW) is None


def test_line_splitter_holds_only_the_unfinished_line():
    """Lines cut across blocks come out whole; only the last partial line is carried."""
    splitter = LineSplitter(limit=64)
    out = (
        list(splitter.feed(b"one\r\ntw")) + list(splitter.feed(b"o\nthr")) + list(splitter.finish())
    )
    assert out == [b"one", b"two", b"thr"]
    with pytest.raises(Exception, match="listing line over 64 bytes"):
        list(LineSplitter(limit=64).feed(b"x" * 100))


async def test_listing_streams_entries_to_the_callback_block_by_block():
    """Entries reach the callback while the listing is still arriving; '.' and '..' are left out."""

    class Session:
        async def features(self) -> list[str]:
            return ["MLST type*;size*;modify*;"]

        async def receive_listing(self, command: str, path: str, on_block: Any) -> None:
            assert (command, path) == ("MLSD", "/d")
            await on_block(b"type=cdir; .\r\ntype=file;size=1;modify=20261202000000; a\r\ntype=fi")
            assert seen == ["a"]  # handed on before the next block arrives
            await on_block(b"le;size=2;modify=20261202000000; b\r\ngarbage\r\n")

    seen: list[str] = []

    async def on_entry(entry: Any) -> None:
        seen.append(entry.name)

    counts = await list_directory(Session(), "/d", on_entry, mlsd=True)
    assert seen == ["a", "b"] and (counts.entries, counts.unparsed) == (2, 1)


def test_watch_settings_are_validated():
    """A relative directory, an unknown placeholder, no settling rule, a repeated name: refused."""
    assert watch().directory == "/outgoing"
    for bad in (
        {"directory": "outgoing"},
        {"destination_path": "/in/{nope}"},
        {"stable_check": False, "min_age_seconds": 0},
        {"name": "a|b"},
    ):
        with pytest.raises(pydantic.ValidationError):
            watch(**bad)
    with pytest.raises(pydantic.ValidationError, match="repeated: w"):
        Settings(watches=[watch(name="w").model_dump(), watch(name="w").model_dump()])


def test_watch_connections_must_be_ftp_then_local(tmp_path):
    """A watch naming a local connection as its source stops the worker with the key named."""
    ini = tmp_path / "c.ini"
    ini.write_text("[ftp-a]\ntype = ftp\nhost = h\n\n[local]\ntype = local\nbase_path = /tmp\n")
    registry = load_registry(ini)
    check_connections([watch()], registry, "config.yaml")
    with pytest.raises(ConfigError, match=r"watches.0.connection: not a ftp connection 'local'"):
        check_connections([watch(connection="local")], registry, "config.yaml")


def test_task_id_depends_on_path_size_and_time_only():
    """The same listing facts always give the same task; a new size gives a new one."""
    listed = ListedFile("/outgoing/sub/a.csv", 10, "20261202101500", NOW.timestamp())
    first, again = task_for(watch(), listed), task_for(watch(), listed)
    assert first == again
    assert first["dst_path"] == "/in/2026/sub/a.csv"
    assert first["metadata"] == {"watch": "partner-out", "size": 10, "modify": "20261202101500"}
    grown = ListedFile(listed.path, 11, listed.modify, listed.mtime)
    assert task_for(watch(), grown)["task_id"] != first["task_id"]


class Table(dict[str, Any]):
    pass


def watches(table: Table, sent: list[tuple[bytes, bytes]], **overrides: Any) -> DirectoryWatches:
    async def send_task(key: bytes, value: bytes) -> Any:
        sent.append((key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    return DirectoryWatches(
        None,
        table,
        [watch(**overrides)],
        session=None,  # type: ignore[arg-type]
        send_task=send_task,
        owner=lambda: True,
        ready=lambda: True,
        worker_id="w",
    )


async def test_a_file_becomes_one_task_once_stable_and_never_again():
    """First sight records it; a changed size starts again; the same facts in a later scan
    produce the task; later scans and redelivered batches produce nothing more."""
    table = Table()
    sent: list[Any] = []
    agent = watches(table, sent)
    name = "partner-out"
    await agent._decide(agent.watches[name], 100.0, [["/outgoing/a", 1, "20261202000000", 1.0]])
    await agent._decide(agent.watches[name], 101.0, [["/outgoing/a", 2, "20261202000001", 2.0]])
    assert sent == [] and table["partner-out|/outgoing/a"]["size"] == 2
    for scan in (102.0, 102.0, 103.0):  # settled, the same batch again, the next scan
        await agent._decide(agent.watches[name], scan, [["/outgoing/a", 2, "20261202000001", 2.0]])
    assert len(sent) == 1
    assert table["partner-out|/outgoing/a"]["task_id"] == sent[0][0].decode()
    assert table[name]["tasks_produced"] == 1


async def test_an_old_enough_file_needs_no_second_scan_and_a_failed_send_records_nothing():
    """min_age: a file older than the limit is produced at first sight; when Kafka refuses the
    task, the file stays unrecorded, so the next scan tries again."""
    table = Table()
    sent: list[Any] = []
    agent = watches(table, sent, stable_check=False, min_age_seconds=60)
    w = agent.watches["partner-out"]

    async def refuse(key: bytes, value: bytes) -> Any:
        raise ConnectionError("broker down")

    agent._send_task = refuse
    with pytest.raises(ConnectionError):
        await agent._decide(w, 1000.0, [["/outgoing/old", 1, "x", 900.0]])
    assert "partner-out|/outgoing/old" not in table
    agent._send_task = watches(Table(), sent)._send_task
    await agent._decide(
        w, 1000.0, [["/outgoing/old", 1, "x", 900.0], ["/outgoing/new", 1, "y", 990.0]]
    )
    assert [key.decode() for key, _ in sent] == [table["partner-out|/outgoing/old"]["task_id"]]
    assert "partner-out|/outgoing/new" not in table  # too young, nothing to remember


def test_the_readme_watch_example_loads_and_gives_the_task_shown():
    """README's watch example is valid configuration and renders the task it shows."""
    import json
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("### Directory watch") :]
    config = section[
        section.index("```yaml\n") + 8 : section.index("```", section.index("```yaml\n") + 8)
    ]
    shown = section[
        section.index("```json\n") + 8 : section.index("```", section.index("```json\n") + 8)
    ]
    configured = Settings(**yaml.safe_load(config)).watches[0]
    listed = ListedFile(
        "/outgoing/eu/sales.csv",
        2041,
        "20261202101500",
        datetime(2026, 12, 2, 10, 15, tzinfo=UTC).timestamp(),
    )
    assert task_for(configured, listed) == json.loads(shown)

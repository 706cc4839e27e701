"""Completion actions, metadata and headers at the unit level: parsing, journal, replay rules."""

import json
import os
from datetime import UTC, datetime

import pytest

from agents.tasks import message_headers, trace_id_of
from agents.transfer.completion import Completer, local_action, remote_action
from agents.transfer.completion_journal import CompletionJournal, Delivery
from models.completion import CompletionAction, from_settings
from models.connections import load_registry
from models.errors import ConfigError, InvalidTask, TransferIOError
from models.task import MAX_METADATA_BYTES, parse_task

VALID = {
    "task_id": "t-1",
    "src_id": "ftp-a",
    "src_path": "/out/in/a.csv",
    "dst_id": "local",
    "dst_path": "/in/a.csv",
}


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def test_template_renders_name_parts_date_and_task_id():
    """A move target is rendered from the source path, the delivery time (UTC) and task id."""
    action = CompletionAction("move", "/archive/{yyyy}/{mm}/{dd}/{hh}/{stem}.{task_id}{suffix}")
    when = datetime(2026, 12, 2, 7, 5, tzinfo=UTC)
    assert action.render("/out/in/a.csv", "t-1", when) == "/archive/2026/12/02/07/a.t-1.csv"
    assert CompletionAction("move", "{dir}/done/{name}").render("/o/a.csv", "t", when) == (
        "/o/done/a.csv"
    )


@pytest.mark.parametrize(
    ("completion", "fragment"),
    [
        ({"action": "move"}, "move needs a target"),
        ({"action": "delete", "target": "/x"}, "only meaningful with action move"),
        ({"action": "move", "target": "/a/{nope}"}, "target uses {nope}"),
        ({"action": "move", "target": "/a/{name:>9}"}, "target uses {name}"),
        ({"action": "move", "target": "/a/{"}, "not a valid template"),
        ({"action": "zap"}, "completion.action: Input should be 'none', 'delete' or 'move'"),
        ({"action": "delete", "when": "later"}, "completion.when: Extra inputs"),
        ("delete", "completion: Input should be an object"),
    ],
)
def test_invalid_completion_is_invalid_task(completion, fragment):
    """A completion that is not one of the three actions, well formed, is INVALID_TASK."""
    with pytest.raises(InvalidTask) as caught:
        parse_task(encode({**VALID, "completion": completion}))
    assert fragment in caught.value.message


def test_metadata_is_kept_exactly_and_bounded():
    """Any JSON object up to the cap is kept as given; a non-object, an oversized object or a
    non-finite number is INVALID_TASK."""
    metadata = {"z": [1, 2.5, -0.0, None, True], "ü": {"nested": "日本"}, "big": 10**30, "a": ""}
    task = parse_task(encode({**VALID, "metadata": metadata}))
    assert json.dumps(task.metadata) == json.dumps(metadata)  # key order too
    for bad, fragment in [
        ([1, 2], "metadata: Input should be an object"),
        ("text", "metadata: Input should be an object"),
        ({"x": "y" * MAX_METADATA_BYTES}, f"at most {MAX_METADATA_BYTES} allowed"),
    ]:
        with pytest.raises(InvalidTask) as caught:
            parse_task(encode({**VALID, "metadata": bad}))
        assert fragment in caught.value.message
    raw = encode(VALID)[:-1] + b', "metadata": {"x": 1e999}}'
    with pytest.raises(InvalidTask, match="numbers must be finite"):
        parse_task(raw)


def test_connection_default_is_read_from_the_registry(tmp_path):
    """``completion`` / ``completion_target`` in connections.ini give a connection's default;
    a bad one stops start-up naming the key."""
    ini = tmp_path / "c.ini"
    ini.write_text(
        "[ftp-a]\ntype = ftp\nhost = h\ncompletion = move\n"
        "completion_target = /archive/{yyyy}/{name}\n\n"
        "[local]\ntype = local\nbase_path = /data\ncompletion = delete\n"
    )
    registry = load_registry(ini)
    assert registry["ftp-a"].completion == CompletionAction("move", "/archive/{yyyy}/{name}")
    assert registry["local"].completion == CompletionAction("delete")
    assert registry["local"].public()["completion"] == {"action": "delete"}
    ini.write_text("[ftp-a]\ntype = ftp\nhost = h\ncompletion = move\n")
    with pytest.raises(ConfigError, match=r"\[ftp-a\] completion: move needs a target"):
        load_registry(ini)
    with pytest.raises(ValueError, match="known placeholders"):
        from_settings(
            {"completion": "move", "completion_target": "/{when}"},
            lambda key, message: ValueError(message),
        )


def delivery(**changes: object) -> Delivery:
    fields: dict[str, object] = dict(
        task_id="t-1",
        direction="download",
        src_id="ftp-a",
        src_path="/out/a.csv",
        dst_id="local",
        dst_path="/in/a.csv",
        size=3,
        sha256="abc",
        action="move",
        template="/archive/{name}",
        target="/archive/a.csv",
        at=1000.0,
    )
    fields.update(changes)
    return Delivery(**fields)  # type: ignore[arg-type]


def test_journal_keeps_pending_entries_and_recent_outcomes_across_a_restart(tmp_path):
    """After a crash, a pending delivery and a recently finished one are found by task_id;
    finished ones past the retention are dropped when the journal is compacted."""
    now = [1000.0]
    path = tmp_path / "data" / "completions.journal"
    journal = CompletionJournal(path, done_retention=60, clock=lambda: now[0])
    journal.delivered(delivery(task_id="pending"))
    finished = delivery(task_id="finished")
    journal.delivered(finished)
    journal.finished(finished, {"action": "move", "status": "done", "target": "/archive/a.csv"})
    journal.close()  # the lines are on disk already (line-buffered), as after a SIGKILL
    restarted = CompletionJournal(path, done_retention=60, clock=lambda: now[0])
    assert restarted.get("pending") == delivery(task_id="pending")
    entry = restarted.get("finished")
    assert entry is not None and entry.outcome == {
        "action": "move",
        "status": "done",
        "target": "/archive/a.csv",
    }
    restarted.close()
    now[0] += 120
    later = CompletionJournal(path, done_retention=60, clock=lambda: now[0])
    assert later.get("finished") is None and later.get("pending") is not None
    assert later.pending == 1
    later.close()


class FakeRemote:
    """A dict of remote files standing in for an FTP session."""

    def __init__(self, files: dict[str, bytes], broken_dirs: tuple[str, ...] = ()) -> None:
        self.files = files
        self.broken = broken_dirs
        self.calls: list[str] = []

    async def remove(self, path: str) -> bool:
        self.calls.append(f"DELE {path}")
        return self.files.pop(path, None) is not None

    async def rename(self, source: str, target: str) -> None:
        self.calls.append(f"RNFR {source} RNTO {target}")
        if any(target.startswith(d) for d in self.broken):
            raise TransferIOError("server replied 553 Could not create file.", retryable=False)
        self.files[target] = self.files.pop(source)

    async def make_directories(self, path: str) -> None:
        self.calls.append(f"MKD {path}")

    async def probe(self, path: str) -> tuple[bool, int | None]:
        data = self.files.get(path)
        return (data is not None, len(data) if data is not None else None)


async def test_failed_move_is_reported_not_raised():
    """A move the server refuses yields a failed outcome with the reply; nothing is raised."""
    remote = FakeRemote({"/out/a.csv": b"abc"}, broken_dirs=("/archive",))
    outcome = await remote_action(remote, delivery())
    assert outcome == {
        "action": "move",
        "status": "failed",
        "target": "/archive/a.csv",
        "error": "server replied 553 Could not create file.",
    }
    assert remote.files == {"/out/a.csv": b"abc"}


async def test_resumed_download_entry_acts_once_and_never_on_a_changed_source(tmp_path):
    """Pending entry: a source of the delivered size is moved; one already moved counts as
    done; one of another size means the task must run afresh (None), untouched."""
    journal = CompletionJournal(tmp_path / "j")
    completer = Completer(journal)
    remote = FakeRemote({"/out/a.csv": b"abc"})
    first = await completer.resume_remote(remote, delivery())
    assert first is not None and first["status"] == "done"
    assert remote.files == {"/archive/a.csv": b"abc"}
    again = await completer.resume_remote(remote, delivery())
    assert again is not None and again["status"] == "done"
    assert remote.calls.count("RNFR /out/a.csv RNTO /archive/a.csv") == 1
    changed = FakeRemote({"/out/a.csv": b"a newer, longer file"})
    assert await completer.resume_remote(changed, delivery()) is None
    assert changed.files == {"/out/a.csv": b"a newer, longer file"} and "DELE" not in str(
        changed.calls
    )
    lost = FakeRemote({})
    outcome = await completer.resume_remote(lost, delivery())
    assert outcome is not None and outcome["status"] == "failed"
    assert "is gone and not at /archive/a.csv" in outcome["error"]
    journal.close()


async def test_local_actions_stay_in_the_jail_and_report_failures(tmp_path):
    """Upload sources are deleted or moved under their base; a target outside it, or a file
    where a directory is needed, fails the action only."""
    base = tmp_path / "base"
    (base / "out").mkdir(parents=True)
    (base / "out" / "a.csv").write_bytes(b"abc")
    up = delivery(direction="upload", src_path="/out/a.csv", target="/done/x/a.csv")
    assert (await local_action(base, up))["status"] == "done"
    assert (base / "done" / "x" / "a.csv").read_bytes() == b"abc"
    (base / "out" / "b.csv").write_bytes(b"b")
    escape = delivery(direction="upload", src_path="/out/b.csv", target="/../../etc/b.csv")
    outcome = await local_action(base, escape)
    assert (
        outcome["status"] == "failed" and "outside the connection's base_path" in (outcome["error"])
    )
    (base / "blocked").write_bytes(b"a file")
    blocked = delivery(direction="upload", src_path="/out/b.csv", target="/blocked/b.csv")
    outcome = await local_action(base, blocked)
    assert outcome["status"] == "failed" and "File exists" in outcome["error"]
    gone = delivery(direction="upload", src_path="/out/b.csv", action="delete", target=None)
    assert (await local_action(base, gone))["status"] == "done"
    assert "b.csv" not in os.listdir(base / "out")


def test_headers_are_copied_and_trace_id_comes_from_traceparent():
    """Headers keep order, repeats and bytes; the trace id is the traceparent's second field."""

    class Message:
        headers = [("traceparent", b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")]

    assert message_headers(Message()) == Message.headers
    assert trace_id_of(Message.headers) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of([("traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")]) is None
    assert trace_id_of([("traceparent", b"garbage")]) is None
    assert trace_id_of([("x-correlation-id", b"c-1")]) is None
    assert trace_id_of(None) is None

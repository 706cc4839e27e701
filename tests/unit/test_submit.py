"""The submit command's input reading, outcome bookkeeping and summary, without Kafka."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from app.cli.submit import (
    InputError,
    Outcomes,
    human_bytes,
    load_tasks,
    open_input,
    single_task,
    summary,
)


def line(task_id: str, **extra: str) -> str:
    return json.dumps(
        {
            "task_id": task_id,
            "src_id": "a",
            "src_path": "/x",
            "dst_id": "b",
            "dst_path": "/y",
            **extra,
        }
    )


def render(outcomes: Outcomes) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    for item in summary(outcomes):
        console.print(item)
    return console.export_text()


def test_json_lines_keep_their_exact_bytes_and_skip_blank_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(line("a", extra="kept") + "\n\n" + line("b") + "\n")
    tasks = load_tasks(open_input(str(path), "auto", io.StringIO()))
    assert [t.task_id for t in tasks] == ["a", "b"]
    assert json.loads(tasks[0].value)["extra"] == "kept"
    assert tasks[1].where == f"{path} line 3"


def test_csv_by_extension_and_stdin_as_json_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("task_id,src_id,src_path,dst_id,dst_path,comment\nc1,a,/x,b,/y,hello\n")
    (task,) = load_tasks(open_input(str(path), "auto", io.StringIO()))
    assert json.loads(task.value) == json.loads(line("c1"))
    (from_stdin,) = load_tasks(open_input("-", "auto", io.StringIO(line("s1") + "\n")))
    assert from_stdin.task_id == "s1" and from_stdin.where == "stdin line 1"


def test_a_csv_without_the_task_columns_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("task_id,src_id\nx,y\n")
    with pytest.raises(InputError, match="lacks src_path, dst_id, dst_path"):
        load_tasks(open_input(str(path), "auto", io.StringIO()))


def test_invalid_lines_and_repeated_ids_are_all_named_and_nothing_is_kept(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([line("a"), "{oops", line("a"), json.dumps({"task_id": "q"})]))
    with pytest.raises(InputError) as caught:
        load_tasks(open_input(str(path), "jsonl", io.StringIO()))
    message = str(caught.value)
    assert message.startswith("3 invalid task(s); nothing was produced")
    assert f"{path} line 2: value is not a JSON object" in message
    assert f"{path} line 3: task_id 'a' already used ({path} line 1)" in message
    assert f"{path} line 4: src_id: Field required" in message


def test_a_missing_file_or_no_task_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_tasks(open_input(str(tmp_path / "absent"), "auto", io.StringIO()))
    with pytest.raises(InputError, match="no tasks"):
        load_tasks(open_input("-", "auto", io.StringIO("\n")))


def test_flags_make_one_task_and_missing_flags_are_named():
    (task,) = load_tasks(
        single_task(
            {"task_id": "f", "src_id": "a", "src_path": "/x", "dst_id": "b", "dst_path": "/y"}
        )
    )
    assert task.task_id == "f" and task.where == "flags"
    with pytest.raises(InputError, match="flags: dst_path: Field required"):
        load_tasks(single_task({"task_id": "f", "src_id": "a", "src_path": "/x", "dst_id": "b"}))


def test_outcomes_count_each_expected_task_once():
    """Other clients' results and repeats (at-least-once delivery) are ignored."""
    outcomes = Outcomes({"a", "b", "c"})
    assert outcomes.add({"task_id": "a", "status": "success", "bytes_transferred": 2048})
    assert not outcomes.add({"task_id": "a", "status": "success", "bytes_transferred": 2048})
    assert not outcomes.add({"task_id": "zz", "status": "failed"})
    assert outcomes.add({"task_id": "b", "status": "failed", "error_code": "IO_ERROR"})
    assert (outcomes.succeeded, outcomes.failed, outcomes.waiting, outcomes.bytes) == (
        1,
        1,
        1,
        2048,
    )
    assert outcomes.finished is None
    outcomes.add({"task_id": "c", "status": "failed", "error_code": "IO_ERROR"})
    assert outcomes.finished is not None


def test_summary_groups_by_status_and_code_and_lists_failures():
    outcomes = Outcomes({"a", "b", "c", "d"})
    outcomes.add({"task_id": "a", "status": "success", "bytes_transferred": 1024})
    outcomes.add(
        {
            "task_id": "b",
            "status": "failed",
            "error_code": "FILE_NOT_FOUND",
            "attempts": 1,
            "error_message": "source not found: /x",
        }
    )
    outcomes.add(
        {"task_id": "c", "status": "failed", "error_code": "FILE_NOT_FOUND", "attempts": 1}
    )
    text = render(outcomes)
    assert "success" in text and "1.0 KiB" in text
    assert any("FILE_NOT_FOUND" in row and "2" in row for row in text.splitlines())
    assert "no outcome yet" in text
    assert "3 of 4 tasks finished" in text
    assert "Failures" in text and "source not found: /x" in text


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 1024**2, 3 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]

"""The task parser accepts exactly the contract's shape and names what is wrong otherwise."""

import json

import pytest

from models.errors import ErrorCode, InvalidTask
from models.task import parse_task, peek_task_id

VALID = {
    "task_id": "t-1",
    "src_id": "ftp-a",
    "src_path": "/in/a.bin",
    "dst_id": "local",
    "dst_path": "/out/a.bin",
}


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def test_valid_task_parses_and_ignores_unknown_fields():
    """Extra fields are ignored; the Record carries the contract fields (optional ones None)."""
    task = parse_task(encode({**VALID, "priority": 3}))
    assert task.asdict() == {**VALID, "completion": None, "metadata": None}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not a JSON object"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not a JSON object"),
        (encode({k: v for k, v in VALID.items() if k != "src_path"}), "src_path: Field required"),
        (encode({**VALID, "task_id": 123}), "task_id: Input should be a valid string"),
        (encode({**VALID, "task_id": ""}), "task_id: String should have at least 1 character"),
        (encode({**VALID, "task_id": "x" * 257}), "task_id: String should have at most 256"),
        (
            encode({**VALID, "dst_path": "a\u0000b"}),
            "dst_path: Value error, must not contain a NUL",
        ),
        (encode({**VALID, "src_path": "p" * 4097}), "src_path: String should have at most 4096"),
    ],
)
def test_invalid_values_raise_invalid_task_naming_the_problem(raw, fragment):
    """Each bad value is INVALID_TASK, not retryable, with a message naming the field."""
    with pytest.raises(InvalidTask) as caught:
        parse_task(raw)
    assert caught.value.error_code is ErrorCode.INVALID_TASK
    assert caught.value.retryable is False
    assert fragment in caught.value.message


def test_oversized_value_is_rejected_before_parsing():
    """A 10 MB value is INVALID_TASK by its size alone, and its task_id is not dug out."""
    raw = b'{"task_id": "big", "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    with pytest.raises(InvalidTask, match="bytes; a task is at most 65536 bytes"):
        parse_task(raw)
    assert peek_task_id(raw) is None


def test_tombstone_is_invalid():
    """A message without a value cannot be a task."""
    with pytest.raises(InvalidTask, match="no value"):
        parse_task(None)


def test_task_id_is_recovered_from_an_otherwise_invalid_task():
    """A failure can be correlated when the task_id itself was readable."""
    assert peek_task_id(encode({"task_id": "t-9", "src_id": 1})) == "t-9"
    assert peek_task_id(b"garbage") is None
    assert peek_task_id(encode({"task_id": 5})) is None

"""POST /tasks validation and authentication, without a server."""

from __future__ import annotations

import json

import pytest

from app.task_api import Rejected, check_token, validate_tasks
from models.task import parse_task


class FakeRequest:
    def __init__(self, authorization: str | None = None) -> None:
        self.headers = {"Authorization": authorization} if authorization is not None else {}


def good(task_id: str = "t-1") -> dict:
    return {"task_id": task_id, "src_id": "a", "src_path": "/x", "dst_id": "b", "dst_path": "/y"}


def test_one_object_or_a_list_is_accepted_with_the_exact_bytes_to_produce():
    """Produced bytes parse back to the same task with the worker's parser; extras are kept."""
    (one,) = validate_tasks(json.dumps({**good(), "note": "ünï"}).encode())
    task, raw = one
    assert task.task_id == "t-1" and parse_task(raw) == task
    assert json.loads(raw)["note"] == "ünï"
    many = validate_tasks(json.dumps([good("a"), good("b")]).encode())
    assert [t.task_id for t, _ in many] == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"[1,", "not valid JSON"),
        (b'{"task_id": NaN}', "not valid JSON"),
        (b"[]", "empty"),
    ],
)
def test_bodies_that_are_no_tasks_at_all_are_400(body, fragment):
    with pytest.raises(Rejected) as caught:
        validate_tasks(body)
    assert caught.value.status == 400 and fragment in caught.value.body["error"]


def test_every_invalid_task_is_listed_with_its_index_id_message_and_fields():
    """All or nothing: one bad task rejects the request, and each problem is named."""
    bad_type = {**good("z"), "src_path": 5}
    missing = {"task_id": "m"}
    with pytest.raises(Rejected) as caught:
        validate_tasks(json.dumps([good(), bad_type, missing, 7]).encode())
    body = caught.value.body
    assert caught.value.status == 400
    assert body["error"] == "invalid tasks: 3 of 4; nothing was produced"
    by_index = {e["index"]: e for e in body["errors"]}
    assert by_index[1] == {
        "index": 1,
        "task_id": "z",
        "message": "src_path: Input should be a valid string",
        "fields": {"src_path": "Input should be a valid string"},
    }
    assert set(by_index[2]["fields"]) == {"src_id", "src_path", "dst_id", "dst_path"}
    assert (
        by_index[3]["task_id"] is None and by_index[3]["message"] == "value must be a JSON object"
    )


def test_limits_are_the_workers_own():
    """256-char ids and NUL-free paths, exactly as the agent checks them."""
    with pytest.raises(Rejected) as caught:
        validate_tasks(json.dumps([good("x" * 257), {**good(), "dst_path": "a\x00b"}]).encode())
    fields = [e["fields"] for e in caught.value.body["errors"]]
    assert "at most 256 characters" in fields[0]["task_id"]
    assert "NUL" in fields[1]["dst_path"]
    assert validate_tasks(json.dumps(good("x" * 256)).encode())


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong", "Basic c2VjcmV0", "secret"])
def test_posts_without_the_right_bearer_token_are_401(header):
    with pytest.raises(Rejected) as caught:
        check_token(FakeRequest(header), "secret")  # type: ignore[arg-type]
    assert caught.value.status == 401
    assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="ftp-pooler"'}


def test_the_right_token_or_no_configured_token_passes():
    check_token(FakeRequest("Bearer secret"), "secret")  # type: ignore[arg-type]
    check_token(FakeRequest("bearer secret"), "secret")  # type: ignore[arg-type]
    check_token(FakeRequest(None), None)  # type: ignore[arg-type]

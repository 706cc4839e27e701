"""The result publisher: one plain-JSON value per result, keyed by task_id, on the right topic."""

import json

from structlog.testing import capture_logs

from agents import publisher as publisher_module
from agents.publisher import ResultPublisher
from models.errors import ErrorCode
from models.result import Status, TransferResult
from tests.unit.builders import failure, make_task, success
from tests.unit.fake_topics import FakeTopic


def topics() -> tuple[FakeTopic, FakeTopic, ResultPublisher]:
    results, failures = FakeTopic("ftp-results"), FakeTopic("ftp-failures")
    return results, failures, ResultPublisher(results, failures)


async def test_a_success_goes_to_the_results_topic_keyed_by_task_id():
    """Success -> ftp-results only, key = task_id, value = the wire JSON of the result."""
    results, failures, publisher = topics()
    result = success(make_task("t-ok"))

    await publisher.publish(result)

    assert failures.sent == []
    (sent,) = results.sent
    assert sent.key == b"t-ok"
    value = json.loads(sent.value)
    assert value == result.to_wire()
    assert value["status"] == "success" and value["sha256"] == "ab" * 32
    assert "error_code" not in value and "retryable" not in value


async def test_a_failure_goes_to_the_failures_topic_with_its_error_fields():
    """Failure -> ftp-failures only, carrying error_code, error_message and retryable."""
    results, failures, publisher = topics()

    await publisher.publish(failure(ErrorCode.FILE_NOT_FOUND, retryable=False))

    assert results.sent == []
    (sent,) = failures.sent
    assert sent.key == b"t-1"
    value = json.loads(sent.value)
    assert (value["status"], value["error_code"], value["retryable"]) == (
        "failed",
        "FILE_NOT_FOUND",
        False,
    )
    assert "sha256" not in value


async def test_a_result_without_task_id_is_published_without_a_key():
    """An unreadable message's failure (task_id null) still reaches ftp-failures, key None."""
    results, failures, publisher = topics()
    result = TransferResult(
        task_id=None,
        status=Status.FAILED.value,
        src_id=None,
        src_path=None,
        dst_id=None,
        dst_path=None,
        direction=None,
        bytes_transferred=0,
        duration_ms=0,
        timestamp="2026-12-02T10:00:00.000+00:00",
        attempts=1,
        worker="w-test",
        error_code="INVALID_TASK",
        error_message="value is not a JSON object",
        retryable=False,
        raw_value="{",
        source={"topic": "ftp-tasks", "partition": 0, "offset": 4},
    )

    await publisher.publish(result)

    assert results.sent == []
    (sent,) = failures.sent
    assert sent.key is None
    assert json.loads(sent.value)["task_id"] is None


async def test_the_value_is_compact_utf8_json_not_ascii_escaped():
    """Non-ASCII task ids and paths travel as UTF-8 bytes, not \\u escapes."""
    results, _, publisher = topics()
    task = make_task("täsk-é")

    await publisher.publish(success(task))

    (sent,) = results.sent
    assert sent.key == "täsk-é".encode()
    assert "täsk-é".encode() in sent.value
    assert b", " not in sent.value and b": " not in sent.value


async def test_a_send_that_fails_is_retried_until_the_broker_acknowledges(monkeypatch):
    """While Kafka refuses the send, the publisher waits and tries again; nothing is dropped."""
    monkeypatch.setattr(publisher_module, "RETRY_INITIAL_SECONDS", 0.001)
    results = FakeTopic("ftp-results", fail_sends=2)
    publisher = ResultPublisher(results, FakeTopic("ftp-failures"))

    with capture_logs() as logs:
        await publisher.publish(success())

    assert results.attempts == 3
    assert len(results.sent) == 1
    assert [e["event"] for e in logs] == ["publish_failed", "publish_failed"]
    assert logs[0]["topic"] == "ftp-results"

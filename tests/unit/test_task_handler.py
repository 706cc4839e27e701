"""The task handler: every message ends as one published result, or parked on the retry topic.

The runner is a fake; the publisher and retry queue are the real ones over in-memory topics, all
passed in through the handler's constructor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agents.publisher import ResultPublisher
from agents.retries import RetryEntry, RetryPolicy, RetryQueue
from agents.tasks import TaskHandler
from agents.transfer.runner import TransferRunner
from models.errors import Deferred, ErrorCode
from models.result import TransferResult
from models.task import TransferTask
from tests.unit.builders import failure, make_task, success
from tests.unit.fake_topics import FakeTopic

NOW = 1_000.0


class ScriptedRunner(TransferRunner):
    """Answers each attempt with the next scripted outcome (a result, or an exception raised)."""

    def __init__(self, *outcomes: TransferResult | Exception) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, int]] = []

    async def run(self, task: TransferTask, attempt: int = 1) -> TransferResult:
        self.calls.append((task.task_id, attempt))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


@dataclass
class Message:
    topic: str
    partition: int
    offset: int


@dataclass
class Event:
    value: bytes | None
    message: Message


class Rig:
    """A handler with max 3 attempts and backoff 2 s, 4 s, ... (no jitter); the queue parks at
    a fixed clock, the handler reads ``now``."""

    def __init__(self, *outcomes: TransferResult | Exception) -> None:
        self.runner = ScriptedRunner(*outcomes)
        self.results = FakeTopic("ftp-results")
        self.failures = FakeTopic("ftp-failures")
        self.retry_topic = FakeTopic("ftp-pooler-retries")
        policy = RetryPolicy(max_attempts=3, initial=2.0, maximum=60.0, rng=lambda: 0.5)
        self.now = NOW
        self.finals: list[TransferResult] = []
        self.retried: list[TransferResult] = []
        self.handler = TaskHandler(
            self.runner,
            ResultPublisher(self.results, self.failures),
            RetryQueue(self.retry_topic, policy, clock=lambda: NOW),
            policy,
            worker_id="w-test",
            on_final=self.finals.append,
            on_retry=self.retried.append,
            clock=lambda: self.now,
        )

    def published(self) -> list[dict]:
        return [json.loads(s.value) for s in self.results.sent + self.failures.sent]

    def parked(self) -> list[RetryEntry]:
        return [RetryEntry.decode(s.value) for s in self.retry_topic.sent]


def task_event(task: TransferTask, offset: int = 7) -> Event:
    return Event(json.dumps(task.asdict()).encode(), Message("ftp-tasks", 2, offset))


async def test_invalid_json_is_published_as_invalid_task_with_raw_value_and_source():
    """A value that is not JSON never reaches the runner; its failure carries the raw text."""
    rig = Rig()
    raw = b'{"task_id": "broken", "src_id": '

    await rig.handler.handle_task(Event(raw, Message("ftp-tasks", 3, 4)))

    assert rig.runner.calls == []
    assert rig.results.sent == [] and rig.retry_topic.sent == []
    (value,) = rig.published()
    assert value["status"] == "failed"
    assert (value["error_code"], value["retryable"]) == ("INVALID_TASK", False)
    assert value["raw_value"] == raw.decode()
    assert value["source"] == {"topic": "ftp-tasks", "partition": 3, "offset": 4}
    assert value["worker"] == "w-test" and value["attempts"] == 1
    assert rig.failures.sent[0].key is None  # task_id is not recoverable from broken JSON


async def test_a_success_is_published_once_and_reported_final():
    """The runner's success goes to the results topic and to the on_final observer."""
    task = make_task("t-ok")
    result = success(task)
    rig = Rig(result)

    await rig.handler.handle_task(task_event(task))

    assert rig.runner.calls == [("t-ok", 1)]
    assert [json.loads(s.value) for s in rig.results.sent] == [result.to_wire()]
    assert rig.failures.sent == [] and rig.retry_topic.sent == []
    assert rig.finals == [result]


async def test_a_retryable_failure_is_parked_with_backoff_not_published():
    """A retryable failure with attempts left goes to the retry topic, due after the backoff."""
    task = make_task("t-retry")
    result = failure(ErrorCode.CONNECTION_ERROR, retryable=True, task=task)
    rig = Rig(result)

    await rig.handler.handle_task(task_event(task))

    assert rig.published() == []
    (entry,) = rig.parked()
    assert (entry.task, entry.attempts, entry.deferrals) == (task, 1, 0)
    assert entry.due_at == NOW + 2.0
    assert (entry.error_code, entry.error_message) == ("CONNECTION_ERROR", result.error_message)
    assert rig.retry_topic.sent[0].key == b"t-retry"
    assert rig.retried == [result] and rig.finals == []


async def test_the_final_failure_is_published_once_when_attempts_run_out():
    """The last allowed attempt's failure is published once and not parked again."""
    task = make_task("t-last")
    last = failure(ErrorCode.IO_ERROR, retryable=True, task=task, attempts=3)
    rig = Rig(last)
    entry = RetryEntry(task, attempts=2, due_at=NOW - 1, error_code="IO_ERROR", error_message="x")

    await rig.handler.handle_retry(Event(entry.encode(), Message("ftp-pooler-retries", 0, 9)))

    assert rig.runner.calls == [("t-last", 3)]
    assert rig.retry_topic.sent == []
    assert rig.published() == [last.to_wire()]
    assert rig.failures.sent[0].key == b"t-last"
    assert rig.finals == [last]


async def test_a_non_retryable_failure_is_published_at_the_first_attempt():
    """FILE_NOT_FOUND (retryable false) is final at once: one result, no retry."""
    task = make_task("t-missing")
    result = failure(ErrorCode.FILE_NOT_FOUND, retryable=False, task=task)
    rig = Rig(result)

    await rig.handler.handle_task(task_event(task))

    assert rig.retry_topic.sent == []
    assert rig.published() == [result.to_wire()]


async def test_a_deferred_task_is_parked_without_counting_an_attempt():
    """Deferred (the connection's queue is full) parks the task; its attempts stay as they were."""
    task = make_task("t-busy")
    rig = Rig(Deferred("too many tasks wait for ftp-a"), Deferred("still full"))

    await rig.handler.handle_task(task_event(task))
    (first,) = rig.parked()
    rig.now = first.due_at  # due: the retry runs at once
    await rig.handler.handle_retry(
        Event(rig.retry_topic.sent[0].value, Message("ftp-pooler-retries", 0, 0))
    )

    assert rig.runner.calls == [("t-busy", 1), ("t-busy", 1)]  # the same attempt, twice
    second = rig.parked()[1]
    assert (first.attempts, first.deferrals) == (0, 1)
    assert (second.attempts, second.deferrals) == (0, 2)
    assert first.error_code == "CONNECTION_ERROR"
    assert rig.published() == [] and rig.finals == [] and rig.retried == []


async def test_an_unreadable_retry_entry_is_published_as_a_failure():
    """A retry-topic value that is not one of ours still ends as one failure result."""
    rig = Rig()

    await rig.handler.handle_retry(Event(b"not an entry", Message("ftp-pooler-retries", 1, 5)))

    assert rig.runner.calls == []
    (value,) = rig.published()
    assert value["error_code"] == "UNKNOWN_ERROR"
    assert value["source"] == {"topic": "ftp-pooler-retries", "partition": 1, "offset": 5}

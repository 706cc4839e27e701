"""The retry policy: exponential backoff with bounded jitter, retries only what can succeed."""

import random
from collections.abc import Callable

import pytest

from agents.retries import RetryEntry, RetryPolicy, RetryQueue
from models.errors import ErrorCode
from tests.unit.builders import failure, make_task, success
from tests.unit.fake_topics import FakeTopic

NO_JITTER = 0.5  # rng value whose jitter factor is exactly 1.0


def fixed(value: float) -> Callable[[], float]:
    """An rng that always returns ``value``."""
    return lambda: value


def test_backoff_doubles_with_each_attempt_from_the_initial_delay():
    """Without jitter the delay after attempt n is initial * 2^(n-1)."""
    policy = RetryPolicy(max_attempts=10, initial=2.0, maximum=1000.0, rng=lambda: NO_JITTER)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]


def test_backoff_stops_growing_at_the_maximum():
    """However many attempts were made, no delay exceeds the maximum, jitter included."""
    for rng_value in (0.0, NO_JITTER, 0.999999):
        policy = RetryPolicy(max_attempts=50, initial=1.0, maximum=30.0, rng=fixed(rng_value))
        assert all(policy.delay(n) <= 30.0 for n in range(1, 50))
    policy = RetryPolicy(max_attempts=50, initial=1.0, maximum=30.0, rng=lambda: NO_JITTER)
    assert policy.delay(6) == 30.0  # 32 capped
    assert policy.delay(40) == 30.0


@pytest.mark.parametrize(("rng_value", "factor"), [(0.0, 0.8), (NO_JITTER, 1.0), (1.0, 1.2)])
def test_jitter_spreads_the_delay_between_80_and_120_percent(rng_value, factor):
    """The jitter factor runs from 0.8 (rng 0) to 1.2 (rng 1) of the un-jittered delay."""
    policy = RetryPolicy(max_attempts=5, initial=10.0, maximum=1000.0, rng=fixed(rng_value))
    assert policy.delay(2) == pytest.approx(20.0 * factor)


def test_random_jitter_stays_within_its_bounds():
    """With the default kind of rng every delay lies in [0.8, 1.2] x the base delay."""
    rng = random.Random(7)
    policy = RetryPolicy(max_attempts=5, initial=1.0, maximum=1000.0, rng=rng.random)
    delays = [policy.delay(3) for _ in range(500)]
    assert all(3.2 <= d <= 4.8 for d in delays)
    assert max(delays) - min(delays) > 1.0  # jittered, not constant


def test_a_retryable_failure_is_retried_until_the_attempts_run_out():
    """should_retry holds for a retryable failure only while attempts remain."""
    policy = RetryPolicy(max_attempts=3, initial=1.0, maximum=10.0)
    result = failure(ErrorCode.CONNECTION_ERROR, retryable=True)
    assert policy.should_retry(result, 1)
    assert policy.should_retry(result, 2)
    assert not policy.should_retry(result, 3)


@pytest.mark.parametrize(
    "code", [ErrorCode.CONNECTION_ERROR, ErrorCode.IO_ERROR, ErrorCode.FILE_NOT_FOUND]
)
def test_a_failure_marked_not_retryable_is_never_retried(code):
    """retryable=false ends the task at once, whatever its code."""
    policy = RetryPolicy(max_attempts=3, initial=1.0, maximum=10.0)
    assert not policy.should_retry(failure(code, retryable=False), 1)


def test_a_success_is_never_retried():
    """Only failures go round again."""
    policy = RetryPolicy(max_attempts=3, initial=1.0, maximum=10.0)
    assert not policy.should_retry(success(), 1)


async def test_a_parked_task_is_due_after_the_backoff_of_its_attempts():
    """park() writes the task keyed by task_id, due at now + the policy's delay."""
    topic = FakeTopic("ftp-pooler-retries")
    policy = RetryPolicy(max_attempts=5, initial=3.0, maximum=100.0, rng=lambda: NO_JITTER)
    queue = RetryQueue(topic, policy, clock=lambda: 1000.0)
    task = make_task("t-park")

    delay = await queue.park(task, 2, "IO_ERROR", "server replied 451")

    assert delay == 6.0
    (sent,) = topic.sent
    assert sent.key == b"t-park"
    entry = RetryEntry.decode(sent.value)
    assert (entry.task, entry.attempts, entry.due_at) == (task, 2, 1006.0)
    assert (entry.error_code, entry.error_message, entry.deferrals) == (
        "IO_ERROR",
        "server replied 451",
        0,
    )


async def test_a_deferred_task_waits_longer_with_each_deferral_up_to_30_seconds():
    """A deferral's delay grows with the deferral count, not the attempts, and stays <= 30 s."""
    topic = FakeTopic("ftp-pooler-retries")
    policy = RetryPolicy(max_attempts=5, initial=1.0, maximum=300.0, rng=lambda: NO_JITTER)
    queue = RetryQueue(topic, policy, clock=lambda: 0.0)
    task = make_task()
    delays = [await queue.park(task, 0, "CONNECTION_ERROR", "queue full", d) for d in (1, 2, 9)]
    assert delays == [1.0, 2.0, 30.0]
    assert [RetryEntry.decode(s.value).deferrals for s in topic.sent] == [1, 2, 9]

"""Retries that hold nothing: a retryable failure is parked on the retry topic with its due time.

The task's offset on ``ftp-tasks`` is then committed like any other; the retry agent consumes the
retry topic, sleeps until each entry is due (no transfer slot, no session, no FTP connection held
meanwhile) and tries again. Retry entries are acked in offset order like tasks, so a crash loses
none: an entry not yet retried is redelivered with its original due time.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.publisher import Headers, send_until_acked
from models.result import Status, TransferResult
from models.task import TransferTask, parse_task

MAX_DEFERRAL_SECONDS = 30.0


class RetryPolicy:
    """Exponential backoff with jitter: initial * 2^(n-1), capped, times 0.8-1.2."""

    def __init__(
        self,
        max_attempts: int,
        initial: float,
        maximum: float,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.max_attempts = max_attempts
        self.initial = initial
        self.maximum = maximum
        self._rng = rng

    def should_retry(self, result: TransferResult, attempts_done: int) -> bool:
        return (
            result.status == Status.FAILED
            and bool(result.retryable)
            and attempts_done < self.max_attempts
        )

    def delay(self, attempts_done: int) -> float:
        base: float = min(self.maximum, self.initial * 2.0 ** (attempts_done - 1))
        return min(self.maximum, base * (0.8 + 0.4 * self._rng()))


@dataclass
class RetryEntry:
    """What the retry topic carries: the task, attempts so far, when to try next, and why."""

    task: TransferTask
    attempts: int
    due_at: float
    error_code: str
    error_message: str
    deferrals: int = 0  # times parked because the connection's queue was full (not attempts)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "task": self.task.asdict(),
                "attempts": self.attempts,
                "due_at": self.due_at,
                "error_code": self.error_code,
                "error_message": self.error_message,
                "deferrals": self.deferrals,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RetryEntry:
        """Raises ValueError (or InvalidTask) when the entry is not one of ours."""
        data = json.loads(raw)
        task = parse_task(json.dumps(data["task"]).encode())
        return cls(
            task=task,
            attempts=int(data["attempts"]),
            due_at=float(data["due_at"]),
            error_code=str(data["error_code"]),
            error_message=str(data["error_message"]),
            deferrals=int(data.get("deferrals", 0)),
        )


class RetryQueue:
    """Parks a task on the retry topic, due after the policy's backoff."""

    def __init__(
        self, topic: Any, policy: RetryPolicy, clock: Callable[[], float] = time.time
    ) -> None:
        self.topic = topic
        self.policy = policy
        self._clock = clock

    async def park(
        self,
        task: TransferTask,
        attempts_done: int,
        error_code: str,
        error_message: str,
        deferrals: int = 0,
        headers: Headers | None = None,
    ) -> float:
        """Returns the delay chosen: the backoff after ``attempts_done`` attempts, or, for a
        deferred task, a backoff of its own that grows with each deferral (capped at 30 s)."""
        if deferrals:
            delay = min(MAX_DEFERRAL_SECONDS, self.policy.delay(deferrals))
        else:
            delay = self.policy.delay(max(1, attempts_done))
        entry = RetryEntry(
            task=task,
            attempts=attempts_done,
            due_at=self._clock() + delay,
            error_code=error_code,
            error_message=error_message,
            deferrals=deferrals,
        )
        # The task message's headers ride along as the retry message's own.
        await send_until_acked(self.topic, task.task_id.encode(), entry.encode(), headers)
        return delay

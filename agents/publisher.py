"""Publishes each result to ``ftp-results`` or ``ftp-failures`` and waits until Kafka has it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from models.result import Status, TransferResult

log = structlog.get_logger("ftp_pooler.publisher")

RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0


class ResultPublisher:
    """Sends plain-JSON results keyed by task_id; retries until the broker acknowledges.

    The caller acks the task's offset only after :meth:`publish` returns, so a result is never
    lost: at worst, after a crash, a task is redone and its result published twice.
    """

    def __init__(self, results_topic: Any, failures_topic: Any) -> None:
        self.results_topic = results_topic
        self.failures_topic = failures_topic

    async def publish(self, result: TransferResult) -> None:
        topic = self.results_topic if result.status == Status.SUCCESS else self.failures_topic
        key = result.task_id.encode("utf-8") if result.task_id is not None else None
        value = json.dumps(result.to_wire(), ensure_ascii=False, separators=(",", ":")).encode()
        delay = RETRY_INITIAL_SECONDS
        while True:
            try:
                delivery = await topic.send(key=key, value=value)
                await delivery
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "result_publish_failed",
                    task_id=result.task_id,
                    topic=topic.get_topic_name(),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_seconds=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

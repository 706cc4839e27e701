"""Publishes each result to ``ftp-results`` or ``ftp-failures`` and waits until Kafka has it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from agents import outbox
from models.result import Status, TransferResult

log = structlog.get_logger("ftp_pooler.publisher")

RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0


Headers = outbox.Headers


async def send_until_acked(
    topic: Any, key: bytes | None, value: bytes, headers: Headers | None = None
) -> None:
    """Send and wait for the broker's acknowledgement, retrying (with backoff) until it comes.

    Callers ack the task's offset only after this returns, so nothing is lost while Kafka is
    unreachable: the worker waits, and a crash meanwhile only repeats the task.

    Inside an event with an outbox (``exactly_once``), the message is only staged there: the
    transactional committer produces it together with the commit of the event's offset.
    """
    staged = outbox.current()
    if staged is not None:
        staged.append(outbox.OutRecord(topic.get_topic_name(), key, value, list(headers or ())))
        return
    delay = RETRY_INITIAL_SECONDS
    while True:
        try:
            delivery = await topic.send(key=key, value=value, headers=headers or None)
            await delivery
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "publish_failed",
                topic=topic.get_topic_name(),
                error=f"{type(exc).__name__}: {exc}",
                retry_in_seconds=delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


class ResultPublisher:
    """Sends plain-JSON results keyed by task_id to the results or the failures topic."""

    def __init__(self, results_topic: Any, failures_topic: Any) -> None:
        self.results_topic = results_topic
        self.failures_topic = failures_topic

    async def publish(self, result: TransferResult, headers: Headers | None = None) -> None:
        """``headers``: the task message's Kafka headers, copied unchanged to the result's."""
        topic = self.results_topic if result.status == Status.SUCCESS else self.failures_topic
        key = result.task_id.encode("utf-8") if result.task_id is not None else None
        value = json.dumps(result.to_wire(), ensure_ascii=False, separators=(",", ":")).encode()
        await send_until_acked(topic, key, value, headers)

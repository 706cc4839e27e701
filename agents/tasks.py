"""The Faust agent on ``ftp-tasks``: every message, however broken, becomes exactly one result."""

from __future__ import annotations

import time
from typing import Any

import faust
import structlog

from agents.in_flight import InFlight
from agents.publisher import ResultPublisher
from agents.transfer import TransferRunner, utc_now
from models.errors import InvalidTask
from models.result import Status, TransferResult, raw_value_text
from models.task import parse_task, peek_task_id

log = structlog.get_logger("ftp_pooler.tasks")


class TaskHandler:
    """Parse, transfer, publish: one Kafka event in, one result out."""

    def __init__(self, runner: TransferRunner, publisher: ResultPublisher, worker_id: str) -> None:
        self.runner = runner
        self.publisher = publisher
        self.worker_id = worker_id

    async def __call__(self, event: Any) -> None:
        raw = event.value
        try:
            task = parse_task(raw)
        except InvalidTask as exc:
            result = self.invalid_message(raw, event.message, exc)
        else:
            result = await self.runner.run(task)
        await self.publisher.publish(result)

    def invalid_message(
        self, raw: bytes | None, message: Any, error: InvalidTask
    ) -> TransferResult:
        task_id = peek_task_id(raw)
        log.warning(
            "task_invalid",
            task_id=task_id,
            error_code=error.error_code.value,
            error=error.message,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
        result = TransferResult(
            task_id=task_id,
            status=Status.FAILED.value,
            src_id=None,
            src_path=None,
            dst_id=None,
            dst_path=None,
            direction=None,
            bytes_transferred=0,
            duration_ms=0,
            timestamp=utc_now(),
            attempts=1,
            worker=self.worker_id,
            error_code=error.error_code.value,
            error_message=error.message,
            retryable=False,
            raw_value=raw_value_text(raw),
            source={
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
            },
        )
        self.runner.observe(result)
        return result


def register_task_agent(
    app: faust.App, topic: Any, in_flight: InFlight, handler: TaskHandler
) -> Any:
    """Subscribe one actor to ``topic``; it starts handlers and acks them in order (no auto-ack)."""

    async def transfer_tasks(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            started = time.monotonic()
            try:
                await in_flight.submit(event, handler, manual.ack)
            except Exception:
                # Never let an exception escape: the actor would restart and skip offsets.
                log.exception("task_submit_failed", waited=time.monotonic() - started)

    return app.agent(topic, name="transfer_tasks", concurrency=1)(transfer_tasks)

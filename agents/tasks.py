"""The Faust agents on ``ftp-tasks`` and the retry topic: every message ends as one result.

Both agents run one actor each with manual acks: events are handed to an :class:`InFlight`, which
runs them concurrently and acks them strictly in offset order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import faust
import structlog

from agents.in_flight import InFlight
from agents.outbox import OutRecord
from agents.publisher import Headers, ResultPublisher
from agents.retries import RetryEntry, RetryPolicy, RetryQueue
from agents.status_sender import NoStatus, StatusRecorder
from agents.transactions import TransactionalCommitter
from agents.transfer.runner import TransferRunner, utc_now
from models.errors import Deferred, FtpPoolerError, InvalidTask, UnknownError
from models.result import Status, TransferResult, raw_value_text
from models.task import TransferTask, parse_task, peek_task_id

log = structlog.get_logger("ftp_pooler.tasks")

Observer = Callable[[TransferResult], None]


def _ignore(result: TransferResult) -> None:
    return None


class TaskHandler:
    """Parse, transfer, then publish the outcome or park a retry.

    Nothing here bounds concurrency: transfers are bounded by the session pools' caps, and the
    events held at once by the :class:`InFlight` limits. A task waiting for a session of a slow
    or dead server holds only its place in that connection's queue, never a shared slot, so it
    cannot starve tasks for healthy servers.
    """

    def __init__(
        self,
        runner: TransferRunner,
        publisher: ResultPublisher,
        retries: RetryQueue,
        policy: RetryPolicy,
        *,
        worker_id: str,
        on_final: Observer = _ignore,
        on_retry: Observer = _ignore,
        status: StatusRecorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runner = runner
        self.publisher = publisher
        self.retries = retries
        self.policy = policy
        self.worker_id = worker_id
        self.on_final = on_final
        self.on_retry = on_retry
        self.status: StatusRecorder = status or NoStatus()
        self._clock = clock
        # Set while the worker gives up its partitions (shutdown, rebalance): parked retries
        # stop waiting and stay unacked, so whoever owns the partition next picks them up.
        self.releasing = asyncio.Event()

    async def handle_task(self, event: Any) -> None:
        """A message from ``ftp-tasks``."""
        raw = event.value
        headers = message_headers(event.message)
        try:
            task = parse_task(raw)
        except InvalidTask as exc:
            await self._finish(self.unreadable(raw, event.message, exc), headers)
            return
        await self.attempt(task, 1, headers=headers)

    async def handle_retry(self, event: Any) -> None:
        """A parked retry: wait until it is due (holding nothing), then try again."""
        try:
            entry = RetryEntry.decode(event.value)
        except Exception as exc:
            error = UnknownError(f"unreadable retry entry: {type(exc).__name__}: {exc}")
            unreadable = self.unreadable(event.value, event.message, error)
            await self._finish(unreadable, message_headers(event.message))
            return
        headers = message_headers(event.message)
        delay = entry.due_at - self._clock()
        if delay > 0:
            try:
                await asyncio.wait_for(self.releasing.wait(), timeout=delay)
            except TimeoutError:
                pass  # due now
            else:
                raise asyncio.CancelledError  # not acked: redelivered with its due time
        await self.attempt(entry.task, entry.attempts + 1, entry.deferrals, headers)

    async def attempt(
        self,
        task: TransferTask,
        attempt: int,
        deferrals: int = 0,
        headers: Headers | None = None,
    ) -> None:
        """``headers``: the task message's, copied to its result (and to a parked retry)."""
        context = {"task_id": task.task_id, "src_id": task.src_id, "dst_id": task.dst_id}
        trace_id = trace_id_of(headers)
        if trace_id is not None:
            context["trace_id"] = trace_id
        with structlog.contextvars.bound_contextvars(**context):
            await self.status.attempt_started(task, attempt)
            try:
                result = await self.runner.run(task, attempt)
            except Deferred as exc:
                delay = await self.retries.park(
                    task, attempt - 1, exc.error_code.value, exc.message, deferrals + 1, headers
                )
                await self.status.parked(
                    task, attempt - 1, delay, exc.error_code.value, exc.message, deferrals
                )
                log.info(
                    "transfer_deferred",
                    attempt=attempt,
                    error=exc.message,
                    retry_in_seconds=round(delay, 2),
                )
                return
            if self.policy.should_retry(result, attempt):
                delay = await self.retries.park(
                    task,
                    attempt,
                    result.error_code or "",
                    result.error_message or "",
                    headers=headers,
                )
                await self.status.parked(
                    task, attempt, delay, result.error_code or "", result.error_message or ""
                )
                log.info(
                    "transfer_retry_scheduled",
                    attempt=attempt,
                    error_code=result.error_code,
                    error=result.error_message,
                    retry_in_seconds=round(delay, 2),
                )
                self.on_retry(result)
                return
            await self._finish(result, headers)

    async def _finish(self, result: TransferResult, headers: Headers | None = None) -> None:
        await self.publisher.publish(result, headers)
        await self.status.finished(result)
        if result.status == Status.SUCCESS:
            log.info(
                "transfer_completed",
                direction=result.direction,
                bytes=result.bytes_transferred,
                duration_ms=result.duration_ms,
                attempts=result.attempts,
                **({"completion": result.completion} if result.completion else {}),
            )
        elif result.src_id is not None:
            log.warning(
                "transfer_failed",
                error_code=result.error_code,
                error=result.error_message,
                retryable=result.retryable,
                attempts=result.attempts,
                duration_ms=result.duration_ms,
            )
        self.on_final(result)

    def unreadable(self, raw: bytes | None, message: Any, error: FtpPoolerError) -> TransferResult:
        """The failure result of a message that is not a task at all."""
        task_id = peek_task_id(raw)
        source = {"topic": message.topic, "partition": message.partition, "offset": message.offset}
        log.warning(
            "task_invalid",
            task_id=task_id,
            error_code=error.error_code.value,
            error=error.message,
            **source,
        )
        return TransferResult(
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
            source=source,
        )


def message_headers(message: Any) -> Headers:
    """A Kafka message's headers as (name, bytes) pairs, in order (repeats kept)."""
    headers = getattr(message, "headers", None) or []
    if isinstance(headers, dict):
        headers = list(headers.items())
    return [(str(name), bytes(value or b"")) for name, value in headers]


def trace_id_of(headers: Headers | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header (version-traceid-parentid-flags), or of
    a ``trace_id`` header; None when absent or malformed."""
    for name, value in headers or ():
        lowered = name.lower()
        text = value.decode("ascii", errors="replace").strip()
        if lowered == "traceparent":
            parts = text.split("-")
            trace = parts[1] if len(parts) >= 4 else ""
            if len(trace) == 32 and _is_hex(trace) and trace != "0" * 32:
                return trace.lower()
        elif lowered == "trace_id" and 0 < len(text) <= 64 and text.isprintable():
            return text
    return None


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def register_agent(
    app: faust.App,
    topic: Any,
    name: str,
    in_flight: InFlight,
    handler: Callable[[Any], Any],
    committer: TransactionalCommitter | None = None,
) -> Any:
    """One actor on ``topic`` (no auto-ack): it starts handlers and acks them in order.

    With a ``committer`` (exactly_once; ``in_flight`` staged) the in-order ack hands each event
    and its outcome to the committer, which commits them in one transaction; Faust's own ack
    follows for its bookkeeping only (the topic has acks off, so Faust commits nothing of it).
    """

    async def consume(stream: Any) -> None:
        manual = stream.noack()
        ack: Callable[..., Any] = manual.ack
        if committer is not None:

            async def ack(event: Any, records: list[OutRecord]) -> None:
                await committer.complete(event, records)
                await manual.ack(event)

        async for event in manual.events():
            if committer is not None:
                # Faust calls the sensors' on_message_in only for topics it acks itself, but
                # on_message_out at every ack: counted here, so received-message metrics hold.
                message = event.message
                app.sensors.on_message_in(message.tp, message.offset, message)
            try:
                await in_flight.submit(event, handler, ack)
            except Exception:
                # Never let an exception escape: the actor would restart and skip offsets.
                log.exception("task_submit_failed", agent=name)

    consume.__name__ = consume.__qualname__ = name
    return app.agent(topic, name=name, concurrency=1)(consume)

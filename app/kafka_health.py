"""Whether Kafka is doing our work: results produced, offsets committed, topics present.

:class:`KafkaHealth` is a Faust sensor (public API): it sees every send and commit of the app and
turns the worker unready when sends stay unanswered or keep failing, or a commit hangs, for
longer than ``kafka.unhealthy_after_seconds``. :class:`TopicGate` holds the consumer back until
the input, result and failure topics exist, so a worker started before them waits visibly (and
consumes once they appear) instead of joining the group without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import faust
import mode
import structlog
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from app import kafka_client
from app.settings import KafkaSettings

log = structlog.get_logger("ftp_pooler.kafka")


class KafkaHealth(faust.Sensor):
    """Produce and commit progress, from Faust's sensor callbacks."""

    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.limit = limit
        self.clock = clock
        self.pending: dict[int, float] = {}  # send token -> started
        self._tokens = 0
        self.produce_failures_total = 0
        self.commit_failures_total = 0
        self.last_produce_error: str | None = None
        self.failing_since: float | None = None  # first failed send since the last success
        self.commit_started: float | None = None
        self._commit_counted = False

    # -- sends -------------------------------------------------------------------------------
    def on_send_initiated(self, producer: Any, topic: str, message: Any, *_: Any) -> Any:
        self._tokens += 1
        self.pending[self._tokens] = self.clock()
        return self._tokens

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        self.pending.pop(state, None)
        self.failing_since = None

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        self.pending.pop(state, None)
        self.produce_failures_total += 1
        self.last_produce_error = f"{type(exc).__name__}: {exc}"
        if self.failing_since is None:
            self.failing_since = self.clock()

    # -- commits -----------------------------------------------------------------------------
    def on_commit_initiated(self, consumer: Any) -> Any:
        self.commit_started = self.clock()
        self._commit_counted = False
        return None

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        self.commit_started = None

    # -- the verdict -------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Why Kafka is not doing our work now (empty: it is)."""
        now, found = self.clock(), []
        if self.pending:
            waited = now - min(self.pending.values())
            if waited > self.limit:
                found.append(
                    f"{len(self.pending)} message(s) not acknowledged by Kafka, the oldest for "
                    f"{waited:.0f} s"
                )
        if self.failing_since is not None and now - self.failing_since > self.limit:
            found.append(
                f"producing has failed for {now - self.failing_since:.0f} s "
                f"({self.last_produce_error})"
            )
        if self.commit_started is not None and now - self.commit_started > self.limit:
            if not self._commit_counted:
                self._commit_counted = True
                self.commit_failures_total += 1
            found.append(f"offset commit pending for {now - self.commit_started:.0f} s")
        return found

    def healthy(self) -> bool:
        return not self.problems()

    def snapshot(self) -> dict[str, Any]:
        problems = self.problems()
        return {
            "healthy": not problems,
            "problems": problems,
            "unhealthy_after_seconds": self.limit,
            "sends_pending": len(self.pending),
            "produce_failures_total": self.produce_failures_total,
            "commit_failures_total": self.commit_failures_total,
        }


class KafkaFailuresCollector(Collector):
    """``ftp_pooler_kafka_failures_total{operation}``: failed sends, and commits that hung past
    the limit."""

    def __init__(self, health: KafkaHealth) -> None:
        self.health = health

    def collect(self) -> Iterator[CounterMetricFamily]:
        self.health.problems()  # counts a hanging commit
        family = CounterMetricFamily(
            "ftp_pooler_kafka_failures",
            "Kafka sends that failed, and offset commits that hung past the limit",
            labels=["operation"],
        )
        family.add_metric(["produce"], self.health.produce_failures_total)
        family.add_metric(["commit"], self.health.commit_failures_total)
        yield family


class TopicGate(mode.Service):
    """Starts (as a dependency just before the consumer) once every topic of ``names`` exists;
    until then it logs ``topics_missing`` every ``interval`` seconds."""

    def __init__(
        self, kafka: KafkaSettings, names: list[str], interval: float = 5.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.kafka = kafka
        self.names = names
        self.interval = interval
        self.missing: list[str] = []

    async def on_start(self) -> None:
        admin = AIOKafkaAdminClient(
            **kafka_client.client_options(self.kafka), request_timeout_ms=10000
        )
        started = time.monotonic()
        try:
            await admin.start()
            while not self.should_stop:
                try:
                    self.missing = await kafka_client.missing_topics(admin, self.names)
                except Exception as exc:  # Kafka away for a moment: ask again
                    log.warning("topics_check_failed", error=kafka_client.describe(exc, self.kafka))
                else:
                    if not self.missing:
                        if time.monotonic() - started > 1:
                            log.info("topics_found", topics=self.names)
                        return
                    log.warning(
                        "topics_missing",
                        topics=self.missing,
                        waiting_seconds=round(time.monotonic() - started),
                        hint="create them (python -m scripts.topics); the worker consumes "
                        "once they exist",
                    )
                await self.sleep(self.interval)
        finally:
            await admin.close()

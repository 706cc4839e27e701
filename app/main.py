"""The composition root: settings + registry -> Faust app with agent, pools, views, metrics."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import faust
import structlog
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry

from agents import faust_door, session_reports
from agents.faust_door import BoundedWaitEmpty, ReadCommittedConsumer
from agents.in_flight import InFlight
from agents.publisher import ResultPublisher
from agents.retries import RetryPolicy, RetryQueue
from agents.session_reports import FleetSessions
from agents.status_sender import StatusSender
from agents.status_table import StatusTable
from agents.tasks import TaskHandler, register_agent
from agents.transactions import GroupOffsets, TransactionalCommitter, producer_factory
from agents.transfer.completion import Completer
from agents.transfer.runner import TransferRunner
from agents.transfer.temp_journal import WorkerJournal
from agents.watch import DirectoryWatches
from agents.watch import declare as declare_watch
from app import kafka_client
from app.kafka_health import KafkaFailuresCollector, KafkaHealth, TopicGate
from app.logs import config_summary, configure_logging
from app.metrics import (
    ConsumerLagCollector,
    MetricsServer,
    StateCollector,
    TransactionCollector,
    TransferMetrics,
    consumer_lag,
)
from app.openapi import openapi_document
from app.parts import (
    declare_status,
    faust_options,
    freeze_startup_objects,
    raw_topic,
    reachable_host,
    session_factory,
    session_pools,
)
from app.settings import CONFIG_ENV, Settings, load_settings
from app.state_dir import group_state_dir, journal_path
from app.task_api import TaskSubmitter, register_task_views
from app.web import register_views
from models.connections import Registry, load_registry
from models.errors import ConfigError
from models.watch import check_connections as check_watch_connections
from pools.session import FTPSession

log = structlog.get_logger("ftp_pooler.worker")

VERSION = "0.1.0"
# On shutdown or rebalance, how long the finished tasks' last transactions may take; what is not
# committed by then is dropped uncommitted (and redone by the partition's next owner).
TRANSACTION_FLUSH_SECONDS = 10.0
# After SIGTERM and the grace period, the last commit, flushes and session QUITs get this long;
# then the process exits anyway (a broker that does not answer must not hold it past the pod's
# terminationGracePeriodSeconds).
STOP_MARGIN_SECONDS = 8.0
KAFKA_STOP_STEP_SECONDS = 5.0
# The least a watch decision under way is waited for on shutdown or rebalance (see
# wait_for_in_flight), even when draining the tasks took the whole grace period.
WATCH_SETTLE_SECONDS = 3.0


class FtpPoolerApp(BoundedWaitEmpty, ReadCommittedConsumer, faust.App):
    """The worker: a Faust app whose constructor builds every part from settings and registry.

    The parts are :class:`mode.Service`s started and stopped with the app: the session pools and
    the metrics server before Faust's own services (and stopped after them), the status sender
    after them (so it stops first, flushing while the producer still runs), and the status
    table's purge and the fleet reports once table recovery is done (as Faust's timers would).
    Its shutdown is bounded: in-flight transfers get a grace period, no more.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        kafka, api, pool, worker = settings.kafka, settings.api, settings.pool, settings.worker
        web_host = reachable_host(api)
        super().__init__(kafka.consumer_group, **faust_options(settings, web_host))
        self.settings = settings
        self.registry = registry
        self._joined = False
        self._stopping = False
        self._started_at = 0.0
        # exactly_once: outcomes and offsets of the task topics commit in transactions (the
        # committer); the consumer reads committed messages only, so a retry entry of an
        # aborted transaction is never retried.
        self.exactly_once = kafka.processing_guarantee == "exactly_once"
        self.consumer_read_committed = self.exactly_once

        self.kafka_health = KafkaHealth(kafka.unhealthy_after_seconds)
        self.sensors.add(self.kafka_health)
        self.topic_gate = TopicGate(
            kafka, [kafka.input_topic, kafka.result_topic, kafka.fail_topic]
        )
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.metrics = TransferMetrics(self.metrics_registry)
        self.session_factories: dict[str, Callable[[], FTPSession]] = {
            c.id: session_factory(c, settings.transfer) for c in registry.ftp_connections()
        }
        self.pools = session_pools(settings, registry, self.session_factories, self.metrics)
        self.in_flight = InFlight(worker.max_in_flight, staged=self.exactly_once)
        self.retry_in_flight = InFlight(settings.retry.max_pending, staged=self.exactly_once)
        self.journal = WorkerJournal(journal_path(settings))  # per consumer group
        self.runner = TransferRunner(
            registry,
            self.pools,
            journal=self.journal,
            worker_id=worker.id,
            block_size=settings.transfer.block_size,
            max_duration=settings.transfer.max_duration_seconds,
            verify_size=settings.transfer.verify_size,
            local_io_timeout=settings.transfer.local_io_timeout_seconds,
            completer=Completer(journal_path=group_state_dir(settings) / "completions.journal"),
        )

        # Topics and tables.
        # In exactly_once mode Faust never commits the task topics (acks off for them): the
        # committer commits their offsets inside its transactions.
        task_acks = not self.exactly_once
        self.input_topic = raw_topic(self, kafka.input_topic, acks=task_acks)
        retry_topic = raw_topic(
            self,
            f"{kafka.consumer_group}-retries",
            internal=True,
            partitions=kafka.topic_partitions,
            acks=task_acks,
        )
        status_topic, status_table = declare_status(self)
        report_topic, session_table = session_reports.declare(self)
        self.internal_topics: tuple[Any, ...] = (retry_topic, status_topic, report_topic)

        self.statuses = StatusTable(
            status_topic,
            status_table,
            partitions=kafka.topic_partitions,
            retention_seconds=api.task_retention_hours * 3600,
            consumer=lambda: self.consumer,
            owned_partitions=self.owned_status_partitions,
        )
        self.status_sender = StatusSender(
            status_topic, self.statuses.partition_of, worker_id=worker.id
        )
        self.fleet = FleetSessions(
            report_topic,
            session_table,
            worker_id=worker.id,
            interval=pool.report_interval_seconds,
            snapshot=self.pools.snapshot,
        )
        retry = settings.retry
        policy = RetryPolicy(
            retry.max_attempts, retry.backoff_initial_seconds, retry.backoff_max_seconds
        )
        self.handler = TaskHandler(
            self.runner,
            ResultPublisher(raw_topic(self, kafka.result_topic), raw_topic(self, kafka.fail_topic)),
            RetryQueue(retry_topic, policy),
            policy,
            worker_id=worker.id,
            on_final=self.metrics.observe,
            on_retry=self.metrics.observe_retry,
            status=self.status_sender,
        )

        self.committer: TransactionalCommitter | None = None
        if self.exactly_once:
            self.committer = self._transactional_committer(kafka.transaction_interval_seconds)
            self.on_partitions_assigned.connect(self._assign_transactions)  # type: ignore[arg-type]

        # Agents: the two task agents, and the two that write the tables.
        register_agent(
            self,
            self.input_topic,
            "transfer_tasks",
            self.in_flight,
            self.handler.handle_task,
            self.committer,
        )
        register_agent(
            self,
            retry_topic,
            "retry_tasks",
            self.retry_in_flight,
            self.handler.handle_retry,
            self.committer,
        )
        self.agent(status_topic, name="task_status", concurrency=1)(self.statuses.record)
        self.agent(report_topic, name="session_reports", concurrency=1)(self.fleet.record)

        # Directory watches (agents/watch.py), only when configured: a one-partition topic
        # whose owner lists, and the agent on it that writes the seen-files table.
        self.watches: DirectoryWatches | None = None
        if settings.watches:
            watch_topic, self.watch_table = declare_watch(self)
            self.internal_topics += (watch_topic,)
            self.watches = DirectoryWatches(
                watch_topic,
                self.watch_table,
                settings.watches,
                session=self.pools.session,
                send_task=self.send_task,
                owner=self.owns_watch_partition,
                ready=self.is_ready,
                worker_id=worker.id,
            )
            self.agent(watch_topic, name="directory_watch", concurrency=1)(self.watches.record)

        # Metrics: ours, then Faust's own sensors (messages, events, commits, rebalances, web
        # requests) into the same registry, served on metrics.port and at /metrics on the API.
        self.metrics_registry.register(StateCollector(self.pools, self.in_flight.count_running))
        self.metrics_registry.register(ConsumerLagCollector(self.consumer_lag))
        self.metrics_registry.register(TransactionCollector(self.transactions))
        self.metrics_registry.register(KafkaFailuresCollector(self.kafka_health))
        setup_prometheus_sensors(
            self, registry=self.metrics_registry, name_prefix="ftp_pooler_faust"
        )
        self.metrics_server = MetricsServer(self.metrics_registry, api.host, settings.metrics.port)

        # HTTP API.
        register_views(self, self)
        submitter = TaskSubmitter(self.status_sender, self.send_task, api.produce_timeout_seconds)
        register_task_views(self, self, api, self.statuses, submitter)

    # -- what the views and metrics read ----------------------------------------------------------
    @property
    def worker_id(self) -> str:
        return self.settings.worker.id

    def is_ready(self) -> bool:
        return (
            self._joined
            and not self._stopping
            and not self.should_stop
            and self.kafka_health.healthy()
        )

    def status(self) -> dict[str, Any]:
        assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in faust_door.assignment(self))
        try:
            fleet = self.fleet.fleet()
        except Exception:  # the session table is not open yet (still starting)
            fleet = {}
        return {
            "worker": self.worker_id,
            "version": VERSION,
            "ready": self.is_ready(),
            "kafka": {
                **kafka_client.public_security(self.settings.kafka),
                **self.kafka_health.snapshot(),
                "waiting_for_topics": self.topic_gate.missing,
            },
            "assigned_partitions": assignment,
            "in_flight": self.in_flight.running,
            "max_in_flight": self.in_flight.limit,
            "completed": self.in_flight.completed,
            "retries_waiting": self.retry_in_flight.running,
            "pools": self.pools.snapshot(),
            "fleet": fleet,
            "task_status": {
                **self.statuses.snapshot(),
                "send_failures_total": self.status_sender.send_failures_total,
            },
            "transactions": self.transactions(),
            "watches": self.watches.snapshot() if self.watches else [],
        }

    def transactions(self) -> dict[str, Any]:
        """The processing guarantee in force and, in exactly_once mode, transaction health."""
        mode = self.settings.kafka.processing_guarantee
        if self.committer is None:
            return {"processing_guarantee": mode}
        return {"processing_guarantee": mode, **self.committer.snapshot()}

    def owned_status_partitions(self) -> list[int]:
        """The status table partitions this worker is the active owner of."""
        changelog = self.statuses.table.changelog_topic.get_topic_name()
        actives = self.assignor.assigned_actives()
        return sorted(tp.partition for tp in actives if tp.topic == changelog)

    def owns_watch_partition(self) -> bool:
        """Whether this worker owns the watch table's one partition (and so lists)."""
        changelog = self.watch_table.changelog_topic.get_topic_name()
        return any(tp.topic == changelog for tp in self.assignor.assigned_actives())

    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition of the task topics: highwater minus the committed offset.

        Called from the metrics server's thread: it only reads the consumer's bookkeeping.
        """
        consumer = faust_door.started_consumer(self)
        if consumer is None:
            return {}
        committer = self.committer

        def committed(tp: Any) -> int | None:
            ours = committer.committed(tp) if committer is not None else None
            return ours if ours is not None else faust_door.committed_offset(consumer, tp)

        return consumer_lag(
            faust_door.assignment(self), self.task_topic_names(), consumer.highwater, committed
        )

    def task_topic_names(self) -> set[str]:
        """The topics whose events are tasks: the input topic and the retry topic."""
        return {self.settings.kafka.input_topic, self.internal_topics[0].get_topic_name()}

    def openapi(self) -> dict[str, Any]:
        api = self.settings.api
        return openapi_document(
            version=VERSION,
            max_request_bytes=api.max_request_bytes,
            token_required=api.token is not None,
        )

    async def load_route_metadata(self) -> None:
        """Give the producer the status changelog's partitions (immediate once known), which
        ``table_route`` needs to hash a task_id to its owner."""
        changelog = self.statuses.table.changelog_topic.get_topic_name()
        await faust_door.raw_producer(self).partitions_for(changelog)

    async def send_task(self, key: bytes, value: bytes) -> Any:
        """Produce one task to the input topic (``POST /tasks``); returns the delivery future."""
        return await self.input_topic.send(key=key, value=value)

    # -- exactly once -------------------------------------------------------------------------
    def _transactional_committer(self, interval: float) -> TransactionalCommitter:
        group = self.settings.kafka.consumer_group

        def build(transactional_id: str) -> Any:
            return producer_factory(faust_door.producer_settings(self))(transactional_id)

        return TransactionalCommitter(
            group_id=group,
            topics=self.task_topic_names,
            producer_factory=build,
            committed_offset=GroupOffsets(faust_door.producer_settings(self), group),
            interval=interval,
        )

    async def _assign_transactions(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        """Each assignment: a freshly initialised transactional producer per task partition."""
        if self.committer is not None:
            await self.committer.assigned(assigned)

    # -- lifecycle ----------------------------------------------------------------------------
    def on_init_dependencies(self) -> Any:
        # Pools start before the agents that use them and, stopping in reverse, close after
        # them; the status sender stops before the producer, so its last flush still goes out.
        faust_services = list(super().on_init_dependencies())
        # The topic gate starts just before the consumer: the web server already answers
        # (/ready 503) while it waits for the input, result and failure topics.
        at = next((i for i, s in enumerate(faust_services) if s is self.consumer), 0)
        faust_services.insert(at, self.topic_gate)
        committer = [self.committer] if self.committer is not None else []
        return [
            self.pools,
            self.metrics_server,
            *committer,
            *faust_services,
            self.status_sender,
        ]

    async def on_first_start(self) -> None:
        await super().on_first_start()
        await self._declare_internal_topics()
        self._started_at = time.monotonic()
        # Only a worker opens its journals (see WorkerJournal and Completer.open_journal).
        removed = self.journal.open().remove_local_leftovers()
        self.runner.completer.open_journal()
        if removed:
            log.warning("temp_files_removed", count=removed, reason="left by a previous run")

    async def on_started_init_extra_services(self) -> None:
        await super().on_started_init_extra_services()
        # After table recovery, like Faust's timers: the purge and the reports use the tables.
        for service in (self.statuses, self.fleet):
            await self.add_runtime_dependency(service)
        if self.watches is not None:
            await self.add_runtime_dependency(self.watches)
        log.info(
            "worker_started",
            worker=self.worker_id,
            version=VERSION,
            config=config_summary(self.settings, self.registry),
        )
        self.add_future(self._remove_remote_leftovers())

    async def _remove_remote_leftovers(self) -> None:
        for entry in self.journal.remote_leftovers():
            if entry.conn_id in self.pools.pools and await self.runner.remove_remote(entry):
                log.warning(
                    "temp_files_removed",
                    count=1,
                    connection=entry.conn_id,
                    reason="left by a previous run",
                )

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        if not self._joined:
            freeze_startup_objects()
        self._joined = True  # table recovery is done and the fetcher resumes: consuming

    async def _declare_internal_topics(self) -> None:
        """Create our internal topics and the tables' changelogs, and wait until the broker's
        metadata lists them, before the consumer subscribes.

        Faust creates them one by one while the consumer subscribes; one the group leader does
        not see yet is left out of the assignment ("Ignoring missing topic") until some later
        rebalance: its agent never runs, or, for a changelog, recovery never ends.
        """
        topics = [*self.internal_topics, *(t.changelog_topic for t in self.tables.values())]
        # Created by us first, replicated as configured (the start-up checks did it already;
        # this covers an app started without them); Faust then finds them in place.
        await kafka_client.create_topics(
            self.settings.kafka, kafka_client.internal_topics(self.settings.kafka)
        )
        # Starts the producer (as Faust would a moment later; a failure stops the worker the
        # same way) and creates what is missing.
        for topic in topics:
            await topic.declare()
        client = faust_door.raw_producer(self)
        try:
            # This also gives the producer the changelogs' metadata, which table_route needs
            # to hash a key to its partition on a worker that never wrote to the table.
            for topic in topics:
                await client.partitions_for(topic.get_topic_name())
        except Exception as exc:  # not listed in time: Faust's own start goes on as before
            log.warning("topic_metadata_missing", error=f"{type(exc).__name__}: {exc}")

    async def on_stop(self) -> None:
        self._stopping = True  # /ready turns 503 before anything else stops
        self._arm_stop_watchdog()
        log.info("worker_stopping", worker=self.worker_id, in_flight=self.in_flight.running)
        await super().on_stop()

    def _arm_stop_watchdog(self) -> None:
        """Exit after the grace period plus a margin whatever still waits (a commit or flush to
        a broker that does not answer); a thread, so a blocked event loop cannot hold it."""
        limit = self.settings.worker.shutdown_grace_seconds + STOP_MARGIN_SECONDS

        def expire() -> None:
            print(
                f"ftp-pooler: stop took longer than {limit:.0f} s (Kafka not answering?); "
                "exiting: unfinished tasks are redelivered",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)

        timer = threading.Timer(limit, expire)
        timer.daemon = True
        timer.start()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        if self._started_at:
            log.info(
                "worker_stopped",
                worker=self.worker_id,
                version=VERSION,
                completed=self.in_flight.completed,
                uptime_seconds=round(time.monotonic() - self._started_at, 1),
            )

    async def wait_for_in_flight(self, consumer: Any) -> None:
        """On shutdown or rebalance (Faust's own wait has no timeout: it would wait for a stuck
        transfer forever): wait for in-flight tasks within the grace period, abandon the rest
        (their offsets stay uncommitted, so they are redelivered), then commit what finished."""
        grace = self.settings.worker.shutdown_grace_seconds
        deadline = time.monotonic() + grace
        self.handler.releasing.set()
        try:
            abandoned, _ = await asyncio.gather(
                self.in_flight.drain(grace), self.retry_in_flight.drain(grace)
            )
        finally:
            if not self._stopping:
                self.handler.releasing.clear()  # a rebalance, not a shutdown: carry on
        if abandoned:
            log.warning("tasks_abandoned", count=abandoned, grace_seconds=grace)
        # After the drain (a decision may start while tasks drain), within what is left of the
        # grace period, but never less than a decision needs (a cut one produces its tasks
        # again after the restart): a stop takes at most grace + WATCH_SETTLE_SECONDS here.
        within = max(deadline - time.monotonic(), WATCH_SETTLE_SECONDS)
        if self.watches is not None and not await self.watches.settled(within):
            log.warning("watch_decision_abandoned", seconds=round(within, 1))
        try:
            # Bounded: a broker that does not answer must not hold a shutdown or rebalance.
            async with asyncio.timeout(KAFKA_STOP_STEP_SECONDS):
                await self.status_sender.flush()  # the finished tasks' queued status changes
            if self.committer is not None:  # the finished tasks' outcomes and offsets
                await self.committer.flush(within=TRANSACTION_FLUSH_SECONDS)
            async with asyncio.timeout(KAFKA_STOP_STEP_SECONDS):
                await consumer.commit()
        except TimeoutError:
            log.warning("commit_timed_out", seconds=KAFKA_STOP_STEP_SECONDS)


def create_app(settings: Settings, registry: Registry) -> FtpPoolerApp:
    """Build a ready-to-run worker app from validated settings and registry."""
    return FtpPoolerApp(settings, registry)


def app_from_environment() -> FtpPoolerApp:
    """Load configuration from the environment; on any config error, say where and exit 2."""
    try:
        settings = load_settings()
        configure_logging(settings.logging)
        registry = load_registry(settings.connections_file)
        check_watch_connections(settings.watches, registry, os.environ.get(CONFIG_ENV, "watches"))
    except ConfigError as exc:
        print(f"ftp-pooler: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    started = time.monotonic()
    app = create_app(settings, registry)
    log.debug("app_built", seconds=round(time.monotonic() - started, 3))
    return app

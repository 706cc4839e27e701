"""The composition root: settings + registry -> Faust app with agent, pools, views, metrics."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import faust
import structlog
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry

from agents.in_flight import InFlight
from agents.publisher import ResultPublisher
from agents.retries import RetryPolicy, RetryQueue
from agents.session_reports import FleetSessions
from agents.task_status import TaskStatuses
from agents.tasks import TaskHandler, register_agent
from agents.transfer.completion_journal import CompletionJournal
from agents.transfer.runner import TransferRunner
from agents.transfer.temp_journal import TempJournal
from app.cli.commands import register_commands
from app.logs import config_summary, configure_logging
from app.metrics import ConsumerLagCollector, MetricsServer, StateCollector, TransferMetrics
from app.openapi import openapi_document
from app.settings import ApiSettings, Settings, TransferSettings, load_settings
from app.task_api import TaskSubmitter, register_task_views
from app.web import register_views
from models.connections import FtpConnection, Registry, load_registry
from models.errors import ConfigError
from pools.manager import SessionPoolManager
from pools.session import FTPSession

log = structlog.get_logger("ftp_pooler.worker")

VERSION = "0.1.0"


class FtpPoolerApp(faust.App):
    """A Faust app that bounds its own shutdown: in-flight transfers get a grace period, no more."""

    settings: Settings
    registry: Registry
    pools: SessionPoolManager[FTPSession]
    session_factories: dict[str, Callable[[], FTPSession]]
    in_flight: InFlight
    retry_in_flight: InFlight
    handler: TaskHandler
    runner: TransferRunner
    metrics_server: MetricsServer
    fleet: FleetSessions
    statuses: TaskStatuses
    journal: TempJournal | None = None
    internal_topics: list[Any]
    _joined: bool = False
    _stopping: bool = False
    _started_at: float = 0.0

    @property
    def worker_id(self) -> str:
        return self.settings.worker.id

    def is_ready(self) -> bool:
        return self._joined and not self._stopping and not self.should_stop

    def status(self) -> dict[str, Any]:
        assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in (self._assignment or ()))
        try:
            fleet = self.fleet.fleet()
        except Exception:  # the session table is not open yet (still starting)
            fleet = {}
        return {
            "worker": self.worker_id,
            "version": VERSION,
            "ready": self.is_ready(),
            "assigned_partitions": assignment,
            "in_flight": self.in_flight.running,
            "max_in_flight": self.in_flight.limit,
            "completed": self.in_flight.completed,
            "retries_waiting": self.retry_in_flight.running,
            "pools": self.pools.snapshot(),
            "fleet": fleet,
            "task_status": self.statuses.snapshot(),
        }

    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition of the task topics: highwater minus the committed offset.

        Called from the metrics server's thread: it only reads the consumer's bookkeeping.
        """
        consumer = self._consumer
        topics = {self.settings.kafka.input_topic, self.handler.retries.topic.get_topic_name()}
        if consumer is None or not self._assignment:
            return {}
        lag: dict[tuple[str, int], int] = {}
        for tp in list(self._assignment):
            if tp.topic not in topics:
                continue
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not fetched yet, or revoked meanwhile
                continue
            if highwater is None:
                continue
            committed = getattr(consumer, "_committed_offset", {}).get(tp) or 0
            lag[(tp.topic, tp.partition)] = max(0, highwater - committed)
        return lag

    def openapi(self) -> dict[str, Any]:
        api = self.settings.api
        return openapi_document(
            version=VERSION,
            max_request_bytes=api.max_request_bytes,
            token_required=api.token is not None,
        )

    async def on_first_start(self) -> None:
        await super().on_first_start()
        await self._declare_internal_topics()
        # Only a worker touches the temp-file journal: a CLI command building this app in the
        # same data directory (kubectl exec) must not remove a running worker's temporaries.
        self._started_at = time.monotonic()
        self.journal = TempJournal(self.settings.worker.data_dir / "temp-files.journal")
        removed = self.journal.remove_local_leftovers()
        if removed:
            log.warning("temp_files_removed", count=removed, reason="left by a previous run")
        self.runner.journal = self.journal
        data_dir = self.settings.worker.data_dir
        self.runner.completer.journal = CompletionJournal(data_dir / "completions.journal")

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
        # Starts the producer (as Faust would a moment later; a failure stops the worker the
        # same way) and creates what is missing.
        for topic in topics:
            await topic.declare()
        producer: Any = self.producer  # Faust's aiokafka driver
        client = producer._ensure_producer()
        try:
            # This also gives the producer the changelogs' metadata, which table_route needs
            # to hash a key to its partition on a worker that never wrote to the table.
            for topic in topics:
                await client.partitions_for(topic.get_topic_name())
        except Exception as exc:  # not listed in time: Faust's own start goes on as before
            log.warning("topic_metadata_missing", error=f"{type(exc).__name__}: {exc}")

    async def on_stop(self) -> None:
        self._stopping = True  # /ready turns 503 before anything else stops
        log.info("worker_stopping", worker=self.worker_id, in_flight=self.in_flight.running)
        await super().on_stop()

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

    def on_init_dependencies(self) -> Any:
        # Pools start before the agents that use them and, stopping in reverse, close after them.
        return [self.pools, self.metrics_server, *super().on_init_dependencies()]

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        # Faust's own wait has no timeout (it would wait for a stuck transfer forever). Wait for
        # in-flight tasks within the grace period, abandon the rest (their offsets stay
        # uncommitted, so they are redelivered), then commit what finished.
        grace = self.settings.worker.shutdown_grace_seconds
        self.handler.releasing.set()
        try:
            drained = await asyncio.gather(
                self.in_flight.drain(grace), self.retry_in_flight.drain(grace)
            )
        finally:
            if not self._stopping:
                self.handler.releasing.clear()  # a rebalance, not a shutdown: carry on
        if drained[0]:
            log.warning("tasks_abandoned", count=drained[0], grace_seconds=grace)
        await self.statuses.flush()  # the finished tasks' queued status changes
        await consumer.commit()


def create_app(settings: Settings, registry: Registry) -> FtpPoolerApp:
    """Build a ready-to-run worker app from validated settings and registry."""
    kafka = settings.kafka
    web_host = reachable_host(settings.api)
    app = FtpPoolerApp(
        kafka.consumer_group,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers],
        store="rocksdb://",
        autodiscover=False,
        datadir=str(settings.worker.data_dir),
        web_enabled=True,
        web_port=settings.api.port,
        web_bind=settings.api.host,
        web_host=web_host,
        # Where the other workers forward a request for a table key this worker owns.
        canonical_url=f"http://{web_host}:{settings.api.port}",
        broker_commit_interval=kafka.commit_interval_seconds,
        broker_session_timeout=kafka.session_timeout_seconds,
        broker_heartbeat_interval=kafka.heartbeat_interval_seconds,
        stream_wait_empty=False,
        stream_buffer_maxsize=max(16, settings.worker.max_in_flight),
        topic_partitions=kafka.topic_partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    app.settings = settings
    app.registry = registry
    metrics_registry = CollectorRegistry()
    metrics = TransferMetrics(metrics_registry)
    pool = settings.pool
    pools: SessionPoolManager[FTPSession] = SessionPoolManager(
        max_sessions_per_pod=pool.max_sessions_per_pod,
        acquire_timeout=pool.acquire_timeout_seconds,
        session_timeout=pool.session_timeout_seconds,
        health_check_idle=pool.health_check_idle_seconds,
        pushback_cooldown=pool.pushback_cooldown_seconds,
        breaker_threshold=pool.circuit_failure_threshold,
        breaker_open_initial=pool.circuit_open_seconds,
        breaker_open_max=pool.circuit_open_max_seconds,
        max_waiting=pool.max_waiting_per_connection,
        reuse_sessions=pool.reuse_sessions,
        max_expected_wait=pool.max_expected_wait_seconds,
        observe_wait=metrics.observe_wait,
    )
    transfer = settings.transfer
    app.session_factories = {}
    for connection in registry.ftp_connections():
        cap = connection.max_sessions or pool.max_sessions_per_connection
        factory = session_factory(connection, transfer)
        app.session_factories[connection.id] = factory
        pools.add_pool(connection.id, cap, factory)
    app.pools = pools
    app.in_flight = InFlight(settings.worker.max_in_flight)
    app.retry_in_flight = InFlight(settings.retry.max_pending)

    metrics_registry.register(StateCollector(pools, app.in_flight.count_running))
    metrics_registry.register(ConsumerLagCollector(app.consumer_lag))
    # Faust's own sensors (messages, events, commits, rebalances, web requests) into the same
    # registry: served on metrics.port with ours, and at /metrics on the API port.
    setup_prometheus_sensors(app, registry=metrics_registry, name_prefix="ftp_pooler_faust")
    app.metrics_server = MetricsServer(metrics_registry, settings.api.host, settings.metrics.port)

    runner = TransferRunner(
        registry,
        pools,
        journal=None,  # opened when the worker starts (FtpPoolerApp.on_first_start)
        worker_id=settings.worker.id,
        block_size=transfer.block_size,
        max_duration=transfer.max_duration_seconds,
        verify_size=transfer.verify_size,
    )
    publisher = ResultPublisher(
        raw_topic(app, kafka.result_topic), raw_topic(app, kafka.fail_topic)
    )
    retry = settings.retry
    policy = RetryPolicy(
        retry.max_attempts, retry.backoff_initial_seconds, retry.backoff_max_seconds
    )
    retry_topic = raw_topic(
        app, f"{kafka.consumer_group}-retries", internal=True, partitions=kafka.topic_partitions
    )
    app.runner = runner
    app.statuses = TaskStatuses(
        app,
        retention_seconds=settings.api.task_retention_hours * 3600,
        worker_id=settings.worker.id,
    )
    app.handler = TaskHandler(
        runner,
        publisher,
        RetryQueue(retry_topic, policy),
        policy,
        worker_id=settings.worker.id,
        on_final=metrics.observe,
        on_retry=metrics.observe_retry,
        status=app.statuses,
    )
    register_agent(
        app,
        raw_topic(app, kafka.input_topic),
        "transfer_tasks",
        app.in_flight,
        app.handler.handle_task,
    )
    register_agent(app, retry_topic, "retry_tasks", app.retry_in_flight, app.handler.handle_retry)
    app.fleet = FleetSessions(
        app,
        worker_id=settings.worker.id,
        interval=settings.pool.report_interval_seconds,
        snapshot=pools.snapshot,
    )
    app.internal_topics = [retry_topic, app.statuses.topic, app.fleet.topic]
    register_views(app)
    input_topic = raw_topic(app, kafka.input_topic)

    async def send_task(key: bytes, value: bytes) -> Any:
        return await input_topic.send(key=key, value=value)

    submitter = TaskSubmitter(app.statuses, send_task, settings.api.produce_timeout_seconds)
    register_task_views(app, app.statuses, submitter)
    register_commands(app)

    @app.task
    async def _remove_remote_leftovers() -> None:
        journal = app.journal
        if journal is None:
            return
        for entry in journal.remote_leftovers():
            if entry.conn_id in pools.pools and await runner.remove_remote(entry):
                log.warning(
                    "temp_files_removed",
                    count=1,
                    connection=entry.conn_id,
                    reason="left by a previous run",
                )

    @app.task
    async def _announce() -> None:
        log.info(
            "worker_started",
            worker=settings.worker.id,
            version=VERSION,
            config=config_summary(settings, registry),
        )

    return app


def freeze_startup_objects() -> int:
    """Move every object alive once the worker has joined (Faust's app, modules, tables: about
    100,000) out of the garbage collector's reach; returns how many.

    They live as long as the process, but each full collection scanned them all again (tens of
    milliseconds each, a few times per thousand tasks). Objects created later are collected as
    before; one collection first, so no garbage is frozen with them.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def raw_topic(app: faust.App, name: str, **options: Any) -> Any:
    """A topic of plain bytes both ways: we parse and render JSON ourselves (no Faust envelope,
    and no silent drop of a value Faust could not decode)."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        **options,
    )


def reachable_host(api: ApiSettings) -> str:
    """The host other workers use for this one's API: ``api.advertised_host``, else ``api.host``
    unless that listens on every address, then this machine's fully qualified name."""
    if api.advertised_host:
        return api.advertised_host
    if api.host in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return api.host


def session_factory(
    connection: FtpConnection, transfer: TransferSettings
) -> Callable[[], FTPSession]:
    def new_session() -> FTPSession:
        return FTPSession(
            connection,
            connect_timeout=transfer.connect_timeout_seconds,
            command_timeout=transfer.command_timeout_seconds,
            block_size=transfer.block_size,
            stall_timeout=transfer.stall_timeout_seconds,
        )

    return new_session


def app_from_environment() -> FtpPoolerApp:
    """Load configuration from the environment; on any config error, say where and exit 2."""
    try:
        settings = load_settings()
        configure_logging(settings.logging)
        registry = load_registry(settings.connections_file)
    except ConfigError as exc:
        print(f"ftp-pooler: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    started = time.monotonic()
    app = create_app(settings, registry)
    log.debug("app_built", seconds=round(time.monotonic() - started, 3))
    return app

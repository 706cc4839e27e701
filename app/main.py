"""The composition root: settings + registry -> Faust app with agent, pools, views, metrics."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import faust
import structlog
from prometheus_client import CollectorRegistry

from agents.in_flight import InFlight
from agents.publisher import ResultPublisher
from agents.retries import RetryPolicy, RetryQueue
from agents.session_reports import FleetSessions
from agents.tasks import TaskHandler, register_agent
from agents.temp_journal import TempJournal
from agents.transfer import TransferRunner
from app.logs import configure_logging
from app.metrics import MetricsServer, StateCollector, TransferMetrics
from app.registry import FtpConnection, Registry, load_registry
from app.settings import Settings, TransferSettings, load_settings
from app.web import register_views
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
    in_flight: InFlight
    retry_in_flight: InFlight
    handler: TaskHandler
    metrics_server: MetricsServer
    fleet: FleetSessions
    _joined: bool = False
    _stopping: bool = False

    @property
    def worker_id(self) -> str:
        return self.settings.worker.id

    def is_ready(self) -> bool:
        return self._joined and not self._stopping and not self.should_stop

    def status(self) -> dict[str, Any]:
        assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in (self._assignment or ()))
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
            "fleet": self.fleet.fleet(),
        }

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        self._joined = True  # table recovery is done and the fetcher resumes: consuming

    async def on_stop(self) -> None:
        self._stopping = True  # /ready turns 503 before anything else stops
        await super().on_stop()

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
        await consumer.commit()


def create_app(settings: Settings, registry: Registry) -> FtpPoolerApp:
    """Build a ready-to-run worker app from validated settings and registry."""
    kafka = settings.kafka
    app = FtpPoolerApp(
        kafka.consumer_group,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers],
        store="rocksdb://",
        autodiscover=False,
        datadir=str(settings.worker.data_dir),
        web_enabled=True,
        web_port=settings.api.port,
        web_bind=settings.api.host,
        web_host=settings.api.host,
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
        observe_wait=metrics.observe_wait,
    )
    transfer = settings.transfer
    for connection in registry.ftp_connections():
        cap = connection.max_sessions or pool.max_sessions_per_connection
        pools.add_pool(connection.id, cap, session_factory(connection, transfer))
    app.pools = pools
    app.in_flight = InFlight(settings.worker.max_in_flight)
    app.retry_in_flight = InFlight(settings.retry.max_pending)

    metrics_registry.register(StateCollector(pools, app.in_flight.count_running))
    app.metrics_server = MetricsServer(metrics_registry, settings.api.host, settings.metrics.port)

    journal = TempJournal(settings.worker.data_dir / "temp-files.journal")
    removed = journal.remove_local_leftovers()
    if removed:
        log.warning("temp_files_removed", count=removed, reason="left by a previous run")
    runner = TransferRunner(
        registry,
        pools,
        journal=journal,
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
    app.handler = TaskHandler(
        runner,
        publisher,
        RetryQueue(retry_topic, policy),
        policy,
        worker_id=settings.worker.id,
        on_final=metrics.observe,
        on_retry=metrics.observe_retry,
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
    register_views(app)

    @app.task
    async def _remove_remote_leftovers() -> None:
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
            brokers=kafka.bootstrap_servers,
            group=kafka.consumer_group,
            input_topic=kafka.input_topic,
            connections=sorted(registry),
            api_port=settings.api.port,
            metrics_port=settings.metrics.port,
            max_in_flight=settings.worker.max_in_flight,
            max_sessions_per_pod=settings.pool.max_sessions_per_pod,
        )

    return app


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

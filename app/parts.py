"""The worker's parts, built from settings: Faust's options, the session pools, the status topic
and table, raw topics, the session factory (the composition root, app.main, puts them together)."""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable
from typing import Any

import faust

from agents.status_table import TABLE_NAME as STATUS_TABLE
from app import kafka_client
from app.metrics import TransferMetrics
from app.settings import ApiSettings, Settings, TransferSettings
from app.state_dir import group_state_dir
from models.connections import FtpConnection, Registry
from pools.manager import SessionPoolManager
from pools.session import FTPSession

PRODUCER_LINGER_SECONDS = 0.01


def faust_options(settings: Settings, web_host: str) -> dict[str, Any]:
    """Faust's settings, all from ours."""
    kafka, api = settings.kafka, settings.api
    return {
        # One source of truth: Faust reads unprefixed variables (BROKER_URL, WEB_PORT,
        # TOPIC_REPLICATION_FACTOR, ...) from this mapping, over the values given here.
        "env": {},
        "broker": [f"kafka://{server}" for server in kafka.bootstrap_servers],
        "broker_credentials": kafka_client.faust_credentials(kafka),
        # Every internal topic is created by us first (kafka_client.internal_topics, checked
        # against what the app declares in tests/unit/test_kafka_settings.py); Faust finds them
        # in place. Its own setting cannot say "the broker's default".
        "topic_replication_factor": kafka.replication_factor or 1,
        "store": "rocksdb://",
        "autodiscover": False,
        "datadir": str(group_state_dir(settings)),  # state per consumer group
        # A table whose local state is ahead of its changelog is rebuilt, not a crash loop.
        "TableManager": "agents.faust_door:RebuildingTableManager",
        "web_enabled": True,
        "web_port": api.port,
        "web_bind": api.host,
        "web_host": web_host,
        # Where the other workers forward a request for a table key this worker owns.
        "canonical_url": f"http://{web_host}:{api.port}",
        "broker_commit_interval": kafka.commit_interval_seconds,
        "broker_session_timeout": kafka.session_timeout_seconds,
        "broker_heartbeat_interval": kafka.heartbeat_interval_seconds,
        "stream_wait_empty": False,
        "stream_buffer_maxsize": max(16, settings.worker.max_in_flight),
        "topic_partitions": kafka.topic_partitions,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        # Results (at_least_once) and status batches are produced as tasks finish: 10 ms of
        # linger lets one produce request carry several instead of a request (and its CPU) each.
        "producer_linger": PRODUCER_LINGER_SECONDS,
    }


def session_pools(
    settings: Settings,
    registry: Registry,
    factories: dict[str, Callable[[], FTPSession]],
    metrics: TransferMetrics,
) -> SessionPoolManager[FTPSession]:
    """One pool per FTP connection, under the worker's cap."""
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
    for connection in registry.ftp_connections():
        cap = connection.max_sessions or pool.max_sessions_per_connection
        pools.add_pool(connection.id, cap, factories[connection.id])
    return pools


def declare_status(app: faust.App) -> tuple[Any, Any]:
    """The status topic and table. Keys are serialized exactly as the table serializes a str
    key (JSON), so the producer's hash of a task_id gives the same partition in the topic, in
    the changelog, and in table_route."""
    partitions = app.conf.topic_partitions
    topic = app.topic(
        f"{app.conf.id}-task-status",
        partitions=partitions,
        internal=True,
        key_type=str,
        key_serializer="json",
        value_serializer="json",
    )
    table = app.Table(
        STATUS_TABLE,
        default=None,
        partitions=partitions,
        key_type=str,
        help="Latest state of each task, by task_id.",
    )
    return topic, table


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

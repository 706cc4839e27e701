"""Prometheus metrics (prefix ``ftp_pooler_``) on their own port, from a registry passed in."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import mode
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.result import TransferResult
from pools.manager import SessionPoolManager

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60)


class TransferMetrics:
    """Counters and histograms fed by every final result; labels are bounded (no ids, no paths)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.transfers = Counter(
            "ftp_pooler_transfers_total",
            "Final task outcomes.",
            ["direction", "status", "error_code"],
            registry=registry,
        )
        self.bytes = Counter(
            "ftp_pooler_transfer_bytes_total",
            "Bytes moved by successful transfers.",
            ["direction"],
            registry=registry,
        )
        self.duration = Histogram(
            "ftp_pooler_transfer_duration_seconds",
            "Task duration, start to result.",
            ["direction", "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "ftp_pooler_retries_total",
            "Failed attempts parked for a retry.",
            ["direction", "error_code"],
            registry=registry,
        )
        self.acquire_wait = Histogram(
            "ftp_pooler_session_acquire_wait_seconds",
            "Time a task waited for a ready session.",
            ["connection"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        # labels() validates and looks its child up under a lock on every call; these run once
        # per task, so each label combination's children are looked up once and kept.
        self._outcome_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self._wait_children: dict[str, Any] = {}

    def observe(self, result: TransferResult) -> None:
        key = (result.direction or "unknown", result.status, result.error_code or "")
        children = self._outcome_children.get(key)
        if children is None:
            direction, status, error_code = key
            children = self._outcome_children[key] = (
                self.transfers.labels(direction, status, error_code),
                self.bytes.labels(direction) if status == "success" else None,
                self.duration.labels(direction, status),
            )
        transfers, moved, duration = children
        transfers.inc()
        if moved is not None:
            moved.inc(result.bytes_transferred)
        duration.observe(result.duration_ms / 1000)

    def observe_retry(self, result: TransferResult) -> None:
        self.retries.labels(result.direction or "unknown", result.error_code or "").inc()

    def observe_wait(self, connection: str, seconds: float) -> None:
        child = self._wait_children.get(connection)
        if child is None:
            child = self._wait_children[connection] = self.acquire_wait.labels(connection)
        child.observe(seconds)


class StateCollector(Collector):
    """Read at scrape time from the live objects: sessions, waiters, opens/closes, pushbacks."""

    def __init__(self, pools: SessionPoolManager[Any], in_flight: Callable[[], int]) -> None:
        self._pools = pools
        self._in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "ftp_pooler_sessions", "Open FTP sessions by state.", labels=["connection", "state"]
        )
        waiters = GaugeMetricFamily(
            "ftp_pooler_session_waiters", "Tasks waiting for a session.", labels=["connection"]
        )
        cap = GaugeMetricFamily(
            "ftp_pooler_session_cap",
            "Session cap in force (lowered by server pushback).",
            labels=["connection"],
        )
        opened = CounterMetricFamily(
            "ftp_pooler_sessions_opened", "FTP sessions opened.", labels=["connection"]
        )
        closed = CounterMetricFamily(
            "ftp_pooler_sessions_closed",
            "FTP sessions closed, by reason.",
            labels=["connection", "reason"],
        )
        pushbacks = CounterMetricFamily(
            "ftp_pooler_session_pushbacks",
            "421 refusals that lowered a connection's cap.",
            labels=["connection"],
        )
        for conn_id, pool in self._pools.pools.items():
            for state in ("busy", "idle", "connecting"):
                sessions.add_metric([conn_id, state], getattr(pool, state))
            waiters.add_metric([conn_id], len(pool.waiters))
            cap.add_metric([conn_id], pool.effective_cap)
            opened.add_metric([conn_id], pool.opened_total)
            pushbacks.add_metric([conn_id], pool.pushbacks_total)
        for (conn_id, reason), count in sorted(self._pools.closed_total.items()):
            closed.add_metric([conn_id, reason], count)
        yield from (sessions, waiters, cap, opened, closed, pushbacks)
        yield GaugeMetricFamily(
            "ftp_pooler_tasks_in_flight", "Tasks being transferred now.", value=self._in_flight()
        )


def consumer_lag(
    assigned: Iterable[Any],
    topics: set[str],
    highwater: Callable[[Any], int | None],
    committed: Callable[[Any], int | None],
) -> dict[tuple[str, int], int]:
    """Per assigned partition of ``topics``: highwater minus the committed offset (partitions
    not fetched yet, or revoked meanwhile, are left out)."""
    lag: dict[tuple[str, int], int] = {}
    for tp in assigned:
        if tp.topic not in topics:
            continue
        try:
            end = highwater(tp)
        except Exception:  # not fetched yet, or revoked meanwhile
            continue
        if end is not None:
            lag[(tp.topic, tp.partition)] = max(0, end - (committed(tp) or 0))
    return lag


class ConsumerLagCollector(Collector):
    """Per assigned partition of the task topics: messages not yet committed (highwater minus
    the committed offset), read at scrape time."""

    def __init__(self, lag: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        self._lag = lag

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "ftp_pooler_consumer_lag",
            "Messages behind the committed offset, per assigned partition.",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(self._lag().items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag


class TransactionCollector(Collector):
    """exactly_once transaction health, read at scrape time (nothing in at_least_once mode)."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        if "commits_total" not in state:
            return
        outcomes = CounterMetricFamily(
            "ftp_pooler_transactions",
            "Kafka transactions of task outcomes and offsets, by outcome.",
            labels=["outcome"],
        )
        outcomes.add_metric(["committed"], state["commits_total"])
        outcomes.add_metric(["aborted"], state["aborts_total"])
        outcomes.add_metric(["fenced"], state["fenced_total"])
        yield outcomes
        yield CounterMetricFamily(
            "ftp_pooler_transaction_tasks_dropped",
            "Finished tasks dropped uncommitted (fenced or revoked): redone by the next owner.",
            value=state["dropped_total"],
        )
        yield GaugeMetricFamily(
            "ftp_pooler_transaction_pending_records",
            "Outcomes waiting for their partition's next transaction.",
            value=state["pending_records"],
        )
        yield GaugeMetricFamily(
            "ftp_pooler_transaction_fenced_partitions",
            "Assigned task partitions whose producer was fenced (awaiting a rebalance).",
            value=state["fenced_partitions"],
        )


class MetricsServer(mode.Service):
    """Serves ``/metrics`` on ``metrics.port`` (0 turns it off)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registry = registry
        self.host = host
        self.port = port
        self._server: Any = None

    async def on_start(self) -> None:
        if self.port:
            self._server, _thread = start_http_server(self.port, self.host, registry=self.registry)

    async def on_stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

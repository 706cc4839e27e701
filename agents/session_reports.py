"""Fleet-wide session counts: each worker reports its pools; an agent writes them to a table.

Faust tables may only be written inside stream iteration, so every worker sends its counts to a
one-partition internal topic on a timer, and the agent consuming it (on whichever worker owns the
partition) writes them into a RocksDB-backed GlobalTable. Every worker reads the table's changelog,
so ``/status`` anywhere shows every live worker. An entry not refreshed for two report periods
belongs to a worker that stopped or died, and is no longer counted (and is deleted later).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import faust
import mode
import structlog

log = structlog.get_logger("ftp_pooler.session_reports")

TABLE_NAME = "session_counts"
PURGE_AFTER_PERIODS = 10


class FleetSessions(mode.Service):
    """Reports this worker's pools (a service task, every ``interval`` seconds) and reads
    everyone's from the table; :meth:`record` is the body of the agent that writes it."""

    def __init__(
        self,
        topic: Any,
        table: Any,
        *,
        worker_id: str,
        interval: float,
        snapshot: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        """``topic``: the one-partition report topic; ``table``: the GlobalTable keyed
        "<connection>|<worker>" (see :func:`declare`)."""
        super().__init__(**kwargs)
        self.topic = topic
        self.table = table
        self.worker_id = worker_id
        self.interval = interval
        self._snapshot = snapshot
        self._clock = clock

    @mode.Service.task
    async def _reporting(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            if not self.should_stop:
                await self.report()

    async def report(self) -> None:
        """Send this worker's counts (timer; also usable directly)."""
        pools = self._snapshot()["connections"]
        report = {"worker": self.worker_id, "reported_at": self._clock(), "connections": pools}
        try:
            await self.topic.send(key=self.worker_id, value=report)
        except Exception as exc:  # a missed report only ages this worker's entry
            log.warning("session_report_failed", error=f"{type(exc).__name__}: {exc}")

    async def record(self, stream: Any) -> None:
        """The agent on the report topic: write each report into the table."""
        async for report in stream:
            try:
                self._write(report)
            except Exception:
                log.exception("session_report_invalid")

    def _write(self, report: dict[str, Any]) -> None:
        worker = str(report["worker"])
        reported_at = float(report["reported_at"])
        for conn_id, counts in dict(report["connections"]).items():
            self.table[f"{conn_id}|{worker}"] = {
                "connection": conn_id,
                "worker": worker,
                "reported_at": reported_at,
                **counts,
            }
        horizon = self._clock() - PURGE_AFTER_PERIODS * self.interval
        for key, entry in list(self.table.items()):
            if entry is None or entry.get("reported_at", 0) < horizon:
                del self.table[key]

    def fleet(self) -> dict[str, dict[str, Any]]:
        """Per connection, per live worker: open/busy/idle/connecting/waiting counts."""
        fresh_after = self._clock() - 2 * self.interval
        fleet: dict[str, dict[str, Any]] = {}
        for entry in list(self.table.values()):
            if not entry or entry.get("reported_at", 0) < fresh_after:
                continue
            if entry["worker"] == self.worker_id:
                continue  # our own counts come live, below
            fleet.setdefault(entry["connection"], {})[entry["worker"]] = _counts(entry)
        for conn_id, counts in self._snapshot()["connections"].items():
            fleet.setdefault(conn_id, {})[self.worker_id] = _counts(counts)
        return {
            conn_id: {"workers": workers, "total": _sum(workers.values())}
            for conn_id, workers in sorted(fleet.items())
        }


_FIELDS = ("open", "busy", "idle", "connecting", "waiting")


def _counts(entry: dict[str, Any]) -> dict[str, int]:
    return {name: int(entry.get(name, 0)) for name in _FIELDS}


def _sum(rows: Any) -> dict[str, int]:
    total = dict.fromkeys(_FIELDS, 0)
    for row in rows:
        for name in _FIELDS:
            total[name] += row[name]
    return total


def declare(app: faust.App) -> tuple[Any, Any]:
    """The report topic and the session table of ``app``'s group."""
    topic = app.topic(
        f"{app.conf.id}-session-reports",
        partitions=1,
        internal=True,
        key_type=str,
        key_serializer="raw",
        value_serializer="json",
    )
    # Keys "<connection>|<worker>"; values are JSON objects (the app's default serializers).
    table = app.GlobalTable(
        TABLE_NAME, default=None, partitions=1, recovery_buffer_size=1, key_type=str
    )
    return topic, table

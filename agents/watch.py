"""Directory watches: remote directories listed on a timer, each settled new file one task.

One worker of the group at a time lists: the one that owns the single partition of the internal
topic ``<group>-watch`` (and so the active copy of the ``watch_seen`` table). Its scanner streams
each listing (``pools.listing``: one entry at a time, never a directory in memory), looks every
matching file up in the table and sends what may need a decision, in batches, to that topic. The
agent on the topic (on the same worker) is the only writer of the table and decides:

- a file known with the same size and modification time is left alone (one task per file, across
  restarts and rebalances: the table is recovered from its changelog wherever it moves);
- a file is settled when it showed the same size and time in an earlier scan (``stable_check``),
  or is older than ``min_age_seconds``; until then its observation is recorded (pending);
- a settled file becomes a task on ``ftp-tasks``, and only once Kafka has acknowledged the task
  is the file recorded as done, with the task's id.

Crash windows. Task first, record second: a crash between the two (the table's changelog write
and the topic's offset commit are flushed together at the next commit) lets the batch be decided
again after the restart, and the same file then yields the same task again: the task_id is a hash
of watch, path, size and modification time, so the repeat is recognisable (and the worker's
transfer leaves the same final file). The other order could lose a file for good (recorded, task
never sent), so it is not used. A scanner that lost the partition mid-scan only sends
observations; the agent, wherever it runs, is what decides, so two scanners at once (a rebalance
in progress) cannot produce a file twice either.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import faust
import mode
import structlog

from agents import faust_door
from models.watch import ListedFile, WatchSettings, table_key, task_for
from pools.listing import Entry, ListingSession, list_directory, supports_mlsd

log = structlog.get_logger("ftp_pooler.watch")

TABLE_NAME = "watch_seen"
BATCH = 500  # files per message to the watch topic
PURGE_EVERY_SECONDS = 3600.0

SessionOf = Callable[[str], AbstractAsyncContextManager[ListingSession]]
SendTask = Callable[[bytes, bytes], Awaitable[Any]]


class DirectoryWatches(mode.Service):
    """The scanners (a loop per watch, run by the partition's owner) and the agent's body."""

    def __init__(
        self,
        topic: Any,
        table: Any,
        watches: list[WatchSettings],
        *,
        session: SessionOf,
        send_task: SendTask,
        owner: Callable[[], bool],
        ready: Callable[[], bool],
        worker_id: str,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        """``session(conn_id)``: a pooled FTP session; ``send_task(key, value)``: produce a
        task, returning its delivery future; ``owner()``: whether this worker owns the watch
        partition now; ``ready()``: whether the worker has joined and recovered its tables."""
        super().__init__(**kwargs)
        self.topic = topic
        self.table = table
        self.watches = {w.name: w for w in watches}
        self._session = session
        self._send_task = send_task
        self._owner = owner
        self._ready = ready
        self.worker_id = worker_id
        self._clock = clock
        self._mlsd: dict[str, bool] = {}  # per watch: whether its server has MLSD
        self._purged_at: dict[str, float] = {}
        self.local: dict[str, dict[str, Any]] = {w.name: {"scans_here": 0} for w in watches}
        # Set while the agent is not inside a decision: a shutdown or rebalance waits for it,
        # so tasks produced are recorded (and their scan message acked) before the commit.
        self._idle = asyncio.Event()
        self._idle.set()

    async def on_start(self) -> None:
        for watch in self.watches.values():
            self.add_future(self._scanning(watch))

    # -- the scanner ------------------------------------------------------------------------------
    async def _scanning(self, watch: WatchSettings) -> None:
        while not self.should_stop:
            if self._ready() and self._owner():
                await self.scan(watch)
            await self.sleep(watch.interval_seconds)

    async def scan(self, watch: WatchSettings) -> dict[str, Any]:
        """List the watch's directory (and below, if recursive) once; send what may need a
        decision to the agent; returns the scan's figures (also sent, and kept locally)."""
        scan = Scan(watch, self._clock())
        error: str | None = None
        try:
            async with self._session(watch.connection) as session:
                if watch.name not in self._mlsd:
                    self._mlsd[watch.name] = await supports_mlsd(session)
                directories = [watch.directory]
                while directories and not self.should_stop:
                    directory = directories.pop()

                    async def on_entry(entry: Entry, directory: str = directory) -> None:
                        path = posixpath.join(directory, entry.name)
                        if entry.kind == "dir" and watch.recursive:
                            directories.append(path)
                        elif entry.kind == "file" and watch.matches(entry.name):
                            await self._consider(
                                scan, ListedFile(path, entry.size, entry.modify, entry.mtime)
                            )

                    counts = await list_directory(
                        session, directory, on_entry, mlsd=self._mlsd[watch.name]
                    )
                    scan.listed += counts.entries
                    scan.unparsed += counts.unparsed
                    await self._flush(scan)
        except Exception as exc:
            error = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
            log.warning("watch_scan_failed", watch=watch.name, error=error)
        figures = scan.figures(self._clock(), error)
        local = self.local[watch.name]
        local["scans_here"] += 1
        local["last_scan_here"] = figures
        try:
            await self._flush(scan)
            await self.topic.send(key=watch.name, value={"watch": watch.name, "done": figures})
        except Exception as exc:
            log.warning("watch_report_failed", watch=watch.name, error=f"{exc!r}")
        log.debug("watch_scanned", **figures)
        return figures

    async def _consider(self, scan: Scan, listed: ListedFile) -> None:
        """Send ``listed`` on unless the table already says nothing would come of it (a hint:
        the agent decides again on the authoritative table)."""
        scan.matched += 1
        entry = self.table.get(table_key(scan.watch.name, listed.path))
        same = _same(entry, listed)
        if same and entry.get("task_id"):
            if scan.started - float(entry.get("seen", 0)) <= scan.touch_after:
                return  # done, and seen recently enough not to be forgotten
        elif not _settled(scan.watch, listed, entry if same else None, scan.started):
            scan.waiting += 1
            if same or not scan.watch.stable_check:
                return  # nothing new to record until it settles
        scan.batch.append([listed.path, listed.size, listed.modify, listed.mtime])
        if len(scan.batch) >= BATCH:
            await self._flush(scan)

    async def _flush(self, scan: Scan) -> None:
        if not scan.batch:
            return
        files, scan.batch = scan.batch, []
        scan.sent += len(files)
        value = {"watch": scan.watch.name, "scan": scan.started, "files": files}
        await self.topic.send(key=scan.watch.name, value=value)

    # -- the agent (the table's only writer) ------------------------------------------------------
    async def settled(self, within: float) -> bool:
        """Wait (at most ``within`` s) until no decision is under way; False if one still is."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    async def record(self, stream: Any) -> None:
        async for value in stream:
            self._idle.clear()
            try:
                watch = self.watches.get(str(value.get("watch")))
                if watch is None:
                    continue  # a watch since removed from the configuration
                if "done" in value:
                    self._record_scan(watch, value["done"])
                else:
                    await self._decide(watch, float(value["scan"]), value["files"])
            except Exception:
                # Nothing was recorded for what failed: the next scan sends those files again.
                log.exception("watch_record_failed")
            finally:
                self._idle.set()

    async def _decide(self, watch: WatchSettings, scan: float, files: list[Any]) -> None:
        touch_after = watch.forget_after_hours * 3600 / 2
        claims: dict[str, tuple[ListedFile, dict[str, Any]]] = {}
        for path, size, modify, mtime in files:
            listed = ListedFile(str(path), int(size), str(modify), mtime)
            key = table_key(watch.name, listed.path)
            entry = self.table.get(key)
            same = _same(entry, listed)
            if same and entry.get("task_id"):
                if scan - float(entry.get("seen", 0)) > touch_after:
                    self.table[key] = {**entry, "seen": scan}
            elif _settled(watch, listed, entry if same else None, scan):
                claims[key] = (listed, task_for(watch, listed))
            elif not same and watch.stable_check:
                self.table[key] = _entry(listed, scan)  # first sight, or changed since
            elif same and scan - float(entry.get("seen", 0)) > touch_after:
                self.table[key] = {**entry, "seen": scan}
        if not claims:
            return
        # Every task is on Kafka (acknowledged) before its file is recorded as done.
        pending = [
            await self._send_task(task["task_id"].encode(), json.dumps(task).encode())
            for _, task in claims.values()
        ]
        await asyncio.gather(*pending)
        for key, (listed, task) in claims.items():
            self.table[key] = {**_entry(listed, scan), "task_id": task["task_id"]}
            log.info(
                "watch_task_produced",
                watch=watch.name,
                task_id=task["task_id"],
                src_path=listed.path,
                size=listed.size,
                dst_path=task["dst_path"],
            )
        stats = dict(self.table.get(watch.name) or {})
        stats["tasks_produced"] = int(stats.get("tasks_produced", 0)) + len(claims)
        self.table[watch.name] = stats

    def _record_scan(self, watch: WatchSettings, figures: dict[str, Any]) -> None:
        stats = dict(self.table.get(watch.name) or {})
        stats.update(figures)
        stats["scans"] = int(stats.get("scans", 0)) + 1
        if figures.get("error"):
            stats["errors"] = int(stats.get("errors", 0)) + 1
            stats["last_error"] = figures["error"]
        self.table[watch.name] = stats
        started = float(figures.get("started", 0))
        if not figures.get("error") and started - self._purged_at.get(watch.name, 0) > min(
            PURGE_EVERY_SECONDS, watch.forget_after_hours * 360
        ):
            self._purged_at[watch.name] = started
            self._forget(watch, started - watch.forget_after_hours * 3600)

    def _forget(self, watch: WatchSettings, horizon: float) -> None:
        """Delete the entries of files not listed since ``horizon`` (seen entries are touched
        every half ``forget_after_hours``); at most 10,000 a time, the rest next time."""
        prefix = table_key(watch.name, "")
        stale: list[str] = []
        for key, entry in self.table.items():
            if str(key).startswith(prefix) and float((entry or {}).get("seen", 0)) < horizon:
                stale.append(key)
                if len(stale) >= 10_000:
                    break
        for key in stale:
            del self.table[key]
        if stale:
            log.info("watch_entries_forgotten", watch=watch.name, count=len(stale))

    # -- /status ----------------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        """Each watch: its settings in brief, whether this worker scans it, and the figures
        recorded by the agent (known here when this worker holds a copy of the table)."""
        owner = self._owner()
        rows = []
        for name, watch in self.watches.items():
            try:
                stats = dict(self.table.get(name) or {})
            except Exception:  # the table is not open yet (still starting)
                stats = {}
            rows.append(
                {
                    "name": name,
                    "connection": watch.connection,
                    "directory": watch.directory,
                    "interval_seconds": watch.interval_seconds,
                    "scanning_here": owner,
                    "scans": stats.get("scans", 0),
                    "last_scan_at": stats.get("finished_at"),
                    "last_scan_seconds": stats.get("seconds"),
                    "last_scan_by": stats.get("worker"),
                    "entries_listed": stats.get("listed", 0),
                    "files_seen": stats.get("matched", 0),
                    "files_waiting": stats.get("waiting", 0),
                    "tasks_produced": stats.get("tasks_produced", 0),
                    "errors": stats.get("errors", 0),
                    "last_error": stats.get("last_error"),
                    **self.local[name],
                }
            )
        return rows


class Scan:
    """One pass over a watch's directories: the batch being filled and the figures."""

    def __init__(self, watch: WatchSettings, started: float) -> None:
        self.watch = watch
        self.started = started
        self.touch_after = watch.forget_after_hours * 3600 / 2
        self.batch: list[list[Any]] = []
        self.listed = self.matched = self.waiting = self.sent = self.unparsed = 0

    def figures(self, now: float, error: str | None) -> dict[str, Any]:
        return {
            "watch": self.watch.name,
            "started": self.started,
            "finished_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "seconds": round(now - self.started, 3),
            "listed": self.listed,
            "matched": self.matched,
            "waiting": self.waiting,
            "sent": self.sent,
            "unparsed": self.unparsed,
            "error": error,
        }


def _same(entry: Any, listed: ListedFile) -> bool:
    return bool(entry) and entry["size"] == listed.size and entry["modify"] == listed.modify


def _settled(
    watch: WatchSettings, listed: ListedFile, previous: dict[str, Any] | None, scan: float
) -> bool:
    """Same size and time as recorded by an earlier scan, or older than ``min_age_seconds``."""
    if watch.stable_check and previous is not None and float(previous["scan"]) < scan:
        return True
    age = scan - listed.mtime if listed.mtime is not None else None
    return watch.min_age_seconds > 0 and age is not None and age >= watch.min_age_seconds


def _entry(listed: ListedFile, scan: float) -> dict[str, Any]:
    return {"size": listed.size, "modify": listed.modify, "scan": scan, "seen": scan}


def declare(app: faust.App) -> tuple[Any, Any]:
    """The watch topic (one partition: one owner, one writer) and the seen-files table."""
    topic = app.topic(
        f"{app.conf.id}-watch",
        partitions=1,
        internal=True,
        key_type=str,
        key_serializer="raw",
        value_serializer="json",
    )
    # Keys "<watch>|<path>" -> {size, modify, scan, seen[, task_id]}; "<watch>" -> figures.
    # recovery_buffer_size=1 (and so standby_buffer_size=1): records applied one by one. That
    # alone does not make a standby copy whole: Faust can drop standby records it fetched (see
    # agents/faust_door.py), and a worker that took over after the owner left then lacked the
    # records written before it joined (tests/compat/test_watch_e2e.py: 10 duplicate tasks of
    # 20). So a copy kept as a standby is not trusted: the new owner recovers the table from the
    # start of the changelog (rebuild_standby_copies), before its agent decides anything.
    table = app.Table(
        TABLE_NAME,
        default=None,
        partitions=1,
        recovery_buffer_size=1,
        key_type=str,
        help="Files the directory watches have seen, and the task each became.",
    )
    faust_door.rebuild_standby_copies(table)
    return topic, table

"""Completion actions run after a transfer: delete or move its source, exactly once.

Order: the destination is complete and renamed into place, then the delivery is journalled, then
the source is touched, then the outcome is journalled; only then is the result published. A
failed action never fails the transfer: the result is a success that reports the action's error.

On a redelivery (a crash after the destination was in place), the journal's entry for the task
decides, never a guess from the file system alone:

- the destination is checked first (download: the local file's size and sha256; upload: the
  remote SIZE). If it is not the file delivered, the entry is void and the task runs afresh;
- a finished entry reports its recorded outcome: nothing is transferred or touched again;
- a pending entry runs the action now, without transferring again, if the source is still the
  file delivered (same size; a source of another size was replaced since: the task runs
  afresh). A source already gone counts as done for ``delete``, and for ``move`` when the target
  holds a file of the delivered size; otherwise the action is reported failed.

Without an entry (no journal, or another worker's), a task whose source is gone fails with
FILE_NOT_FOUND as any other: nothing is ever deleted on the strength of a destination alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from agents.transfer.completion_journal import CompletionJournal, Delivery
from agents.transfer.local_files import jail
from models.completion import CompletionAction
from models.errors import FtpPoolerError
from models.task import TransferTask

log = structlog.get_logger("ftp_pooler.completion")

HASH_BLOCK = 1024 * 1024


class RemoteFiles(Protocol):
    """What a completion action needs of an FTP session."""

    async def remove(self, path: str) -> bool: ...

    async def rename(self, source: str, target: str) -> None: ...

    async def make_directories(self, path: str) -> None: ...

    async def probe(self, path: str) -> tuple[bool, int | None]: ...


def done(entry: Delivery) -> dict[str, Any]:
    return _outcome(entry, "done")


def failed(entry: Delivery, error: str) -> dict[str, Any]:
    return {**_outcome(entry, "failed"), "error": error}


def _outcome(entry: Delivery, status: str) -> dict[str, Any]:
    target = {"target": entry.target} if entry.target is not None else {}
    return {"action": entry.action, "status": status, **target}


class Completer:
    """Runs completion actions and journals them; without a journal, actions run unjournalled
    (unit tests, tools) and redeliveries cannot be recognised."""

    def __init__(
        self,
        journal: CompletionJournal | None = None,
        clock: Callable[[], float] = time.time,
        *,
        journal_path: Path | None = None,
    ) -> None:
        """``journal_path``: where the worker's journal is opened by :meth:`open_journal` when
        the worker starts (a CLI process building the app must not replay or rewrite it)."""
        self.journal = journal
        self.journal_path = journal_path
        self._clock = clock

    def open_journal(self) -> None:
        if self.journal is None and self.journal_path is not None:
            self.journal = CompletionJournal(self.journal_path)

    def delivery(
        self, task: TransferTask, direction: str, action: CompletionAction, size: int, sha256: str
    ) -> Delivery:
        now = self._clock()
        target = None
        if action.action == "move":
            target = action.render(task.src_path, task.task_id, datetime.fromtimestamp(now, UTC))
        return Delivery(
            task_id=task.task_id,
            direction=direction,
            src_id=task.src_id,
            src_path=task.src_path,
            dst_id=task.dst_id,
            dst_path=task.dst_path,
            size=size,
            sha256=sha256,
            action=action.action,
            template=action.target,
            target=target,
            at=now,
        )

    def previous(self, wanted: Delivery) -> Delivery | None:
        """The journal's entry for this very task and action, if any."""
        if self.journal is None:
            return None
        entry = self.journal.get(wanted.task_id)
        return entry if entry is not None and entry.same_task(wanted) else None

    # -- after a fresh transfer ------------------------------------------------------------
    async def on_remote(self, session: RemoteFiles, entry: Delivery) -> dict[str, Any]:
        """Download: act on the FTP source (over the session that fetched it)."""
        self._started(entry)
        return self._finished(entry, await remote_action(session, entry))

    async def on_local(self, base: Path, entry: Delivery) -> dict[str, Any]:
        """Upload: act on the local source."""
        self._started(entry)
        return self._finished(entry, await local_action(base, entry))

    # -- on a redelivery ---------------------------------------------------------------------
    async def resume_remote(self, session: RemoteFiles, entry: Delivery) -> dict[str, Any] | None:
        """A pending download entry: None when the source changed (the task must run afresh)."""
        exists, size = await session.probe(entry.src_path)
        if exists and size not in (None, entry.size):
            return None
        if exists:
            outcome = await remote_action(session, entry)
        elif entry.action == "delete":
            outcome = done(entry)
        else:
            assert entry.target is not None
            at_target, target_size = await session.probe(entry.target)
            outcome = (
                done(entry)
                if at_target and target_size in (None, entry.size)
                else failed(entry, f"source {entry.src_path} is gone and not at {entry.target}")
            )
        return self._finished(entry, outcome, resumed=True)

    async def resume_local(self, base: Path, entry: Delivery) -> dict[str, Any] | None:
        """A pending upload entry: None when the source changed (the task must run afresh)."""
        source = jail(base, entry.src_path)
        digest = await asyncio.to_thread(file_digest, source)
        if digest is not None and digest != (entry.size, entry.sha256):
            return None
        if digest is not None:
            outcome = await local_action(base, entry)
        elif entry.action == "delete":
            outcome = done(entry)
        else:
            assert entry.target is not None
            moved = await asyncio.to_thread(file_digest, jail(base, entry.target))
            outcome = (
                done(entry)
                if moved == (entry.size, entry.sha256)
                else failed(entry, f"source {entry.src_path} is gone and not at {entry.target}")
            )
        return self._finished(entry, outcome, resumed=True)

    def _started(self, entry: Delivery) -> None:
        if self.journal is not None:
            self.journal.delivered(entry)

    def _finished(
        self, entry: Delivery, outcome: dict[str, Any], *, resumed: bool = False
    ) -> dict[str, Any]:
        if self.journal is not None:
            self.journal.finished(entry, outcome)
        if resumed:
            log.info("completion_resumed", **outcome)
        if outcome["status"] == "failed":
            log.warning("completion_failed", **outcome)
        return outcome


async def remote_action(session: RemoteFiles, entry: Delivery) -> dict[str, Any]:
    """Delete or move an FTP source; a failure is reported, never raised."""
    try:
        if entry.action == "delete":
            await session.remove(entry.src_path)  # already gone: the end state holds
        else:
            assert entry.target is not None
            if entry.target == entry.src_path:
                return failed(entry, "the move target is the source itself")
            await session.make_directories(posixpath.dirname(entry.target))
            await session.rename(entry.src_path, entry.target)
    except FtpPoolerError as exc:
        return failed(entry, exc.message)
    except Exception as exc:
        return failed(entry, f"{type(exc).__name__}: {exc}")
    return done(entry)


async def local_action(base: Path, entry: Delivery) -> dict[str, Any]:
    """Delete or move a local source (both ends jailed under ``base``); never raises."""
    try:
        source = jail(base, entry.src_path)
        if entry.action == "delete":
            await asyncio.to_thread(source.unlink, missing_ok=True)
        else:
            assert entry.target is not None
            target = jail(base, entry.target)
            if target == source:
                return failed(entry, "the move target is the source itself")
            await asyncio.to_thread(_move, source, target)
    except FtpPoolerError as exc:
        return failed(entry, exc.message)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return failed(entry, f"cannot {entry.action} local source {entry.src_path}: {reason}")
    return done(entry)


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def file_digest(path: Path) -> tuple[int, str] | None:
    """Size and sha256 of a local file, None when it does not exist."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return size, digest.hexdigest()

"""One transfer, start to finish: resolve the connections, move the bytes, build the result."""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from agents.transfer.completion import Completer, file_digest
from agents.transfer.completion_journal import Delivery
from agents.transfer.local_files import AtomicFile, HashingReader, jail, local_io, temp_name
from agents.transfer.temp_journal import TempFile, TempRecord
from models.completion import NONE, CompletionAction
from models.connections import FtpConnection, LocalConnection, Registry
from models.errors import (
    Deferred,
    FtpPoolerError,
    InvalidConfig,
    InvalidTask,
    SizeMismatch,
    TransferIOError,
    UnknownError,
)
from models.result import Direction, Status, TransferResult
from models.task import TransferTask
from pools.manager import SessionPoolManager
from pools.session import FTPSession

log = structlog.get_logger("ftp_pooler.transfer")

CLEANUP_TIMEOUT_SECONDS = 10.0
KNOWN_DIRECTORIES_LIMIT = 10_000


@dataclass
class Moved:
    """What a successful transfer reports."""

    size: int
    sha256: str
    size_verified: bool = False  # the server confirmed the length (150 reply, SIZE, MLST)
    completion: dict[str, Any] | None = None  # the completion action's outcome, if any


class TransferRunner:
    """Runs a task over pooled sessions; always returns its result (only cancellation escapes)."""

    def __init__(
        self,
        registry: Registry,
        pools: SessionPoolManager[FTPSession],
        *,
        worker_id: str,
        block_size: int,
        max_duration: float,
        verify_size: bool = True,
        journal: TempRecord | None = None,
        local_io_timeout: float | None = None,
        completer: Completer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.pools = pools
        self.worker_id = worker_id
        self.block_size = block_size
        self.max_duration = max_duration
        self.verify_size = verify_size
        self.journal = journal
        if local_io_timeout is not None:
            local_io.timeout = local_io_timeout
        self.completer = completer or Completer()
        self._clock = clock
        # Remote directories known to exist, so uploads do not probe them on every task.
        self._known_dirs: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def run(self, task: TransferTask, attempt: int = 1) -> TransferResult:
        """One attempt at ``task``; the caller decides about retries and logs the outcome.

        Raises :class:`Deferred` (and only that) when the task could not even start because its
        connection's queue is full.
        """
        started = self._clock()
        direction: Direction | None = None
        try:
            direction, remote, local = self._plan(task)
            action = _completion_of(task, direction, remote, local)
            async with asyncio.timeout(self.max_duration):
                resumed = await self._resume(task, direction, action, remote, local)
                if resumed is not None:
                    moved = resumed
                elif direction is Direction.DOWNLOAD:
                    moved = await self._download(task, remote, local, action)
                else:
                    moved = await self._upload(task, local, remote, action)
        except Deferred:
            raise  # not an attempt: the caller parks the task
        except TimeoutError:
            error: FtpPoolerError = TransferIOError(
                f"transfer did not finish within {self.max_duration:.0f} s"
            )
        except FtpPoolerError as exc:
            error = exc
        except Exception as exc:  # the contract: every task gets a result
            error = UnknownError(f"{type(exc).__name__}: {exc}")
        else:
            return self._result(task, direction, started, attempt, moved=moved)
        error.message = self._without_local_paths(task, error.message)
        return self._result(task, direction, started, attempt, error=error)

    def _without_local_paths(self, task: TransferTask, message: str) -> str:
        """No message shows where local storage lives: a base_path is shown as its root."""
        for conn_id in (task.src_id, task.dst_id):
            connection = self.registry.get(conn_id)
            if isinstance(connection, LocalConnection):
                for base in {str(connection.base_path), os.path.realpath(connection.base_path)}:
                    message = message.replace(base.rstrip("/") + "/", "/").replace(base, "/")
        return message

    def _plan(self, task: TransferTask) -> tuple[Direction, FtpConnection, LocalConnection]:
        src = self.registry.resolve(task.src_id)
        dst = self.registry.resolve(task.dst_id)
        if isinstance(src, FtpConnection) and isinstance(dst, LocalConnection):
            _check_remote_path("src_path", task.src_path)
            return Direction.DOWNLOAD, src, dst
        if isinstance(src, LocalConnection) and isinstance(dst, FtpConnection):
            _check_remote_path("dst_path", task.dst_path)
            return Direction.UPLOAD, dst, src
        kind = "local" if isinstance(src, LocalConnection) else "ftp"
        raise InvalidConfig(
            f"both ends are {kind} connections ({task.src_id!r} -> {task.dst_id!r}); "
            "a task must move a file between an ftp and a local connection"
        )

    async def _resume(
        self,
        task: TransferTask,
        direction: Direction,
        action: CompletionAction,
        remote: FtpConnection,
        local: LocalConnection,
    ) -> Moved | None:
        """A redelivered task whose file was delivered already (see agents.transfer.completion):
        its recorded or resumed action, with no second transfer; None to run it afresh."""
        if not action.active:
            return None
        wanted = self.completer.delivery(task, direction.value, action, 0, "")
        entry = self.completer.previous(wanted)
        if entry is None:
            return None
        outcome = entry.outcome
        if direction is Direction.DOWNLOAD:
            found = await asyncio.to_thread(file_digest, jail(local.base_path, task.dst_path))
            if found != (entry.size, entry.sha256):
                return None  # not the file delivered (any more): run afresh
            if outcome is None:
                async with self.pools.session(remote.id) as session:
                    outcome = await self.completer.resume_remote(session, entry)
        else:
            async with self.pools.session(remote.id) as session:
                exists, size = await session.probe(task.dst_path)
            if not exists or size not in (None, entry.size):
                return None
            if outcome is None:
                outcome = await self.completer.resume_local(local.base_path, entry)
        if outcome is None:
            return None
        log.info("transfer_resumed", completion=outcome["action"], status=outcome["status"])
        return Moved(entry.size, entry.sha256, completion=outcome)

    async def _download(
        self,
        task: TransferTask,
        remote: FtpConnection,
        local: LocalConnection,
        action: CompletionAction = NONE,
    ) -> Moved:
        target = AtomicFile(
            jail(local.base_path, task.dst_path), task.dst_path, self.journal, self.block_size
        )
        completion = None
        async with self.pools.session(remote.id) as session:
            await target.open()
            try:
                await session.retrieve(task.src_path, target.write)
                verified = False
                if self.verify_size:
                    # Given with the RETR (its 150 reply, or a SIZE sent with it), else asked.
                    expected = await session.transferred_size(task.src_path)
                    verified = _check_size(expected, target.size, task.src_path)
                if action.active:
                    await target.commit()
            except BaseException:
                await asyncio.shield(target.discard())
                raise
            # The destination is complete and in place: only now is the source touched.
            if action.active:
                entry = self._delivery(task, Direction.DOWNLOAD, action, target.size, target.sha256)
                completion = await self.completer.on_remote(session, entry)
        if not action.active:
            # The local write and rename need no session: it goes back to the pool first.
            try:
                await target.commit()
            except BaseException:
                await asyncio.shield(target.discard())
                raise
        return Moved(target.size, target.sha256, verified, completion)

    def _delivery(
        self,
        task: TransferTask,
        direction: Direction,
        action: CompletionAction,
        size: int,
        sha256: str,
    ) -> Delivery:
        return self.completer.delivery(task, direction.value, action, size, sha256)

    async def _upload(
        self,
        task: TransferTask,
        local: LocalConnection,
        remote: FtpConnection,
        action: CompletionAction = NONE,
    ) -> Moved:
        reader = HashingReader(jail(local.base_path, task.src_path), task.src_path, self.block_size)
        handle = await reader.open()  # a missing source fails before a session is taken
        directory, name = posixpath.split(task.dst_path)
        temp_path = posixpath.join(directory, temp_name(name))
        entry = TempFile(temp_path, remote.id)
        stored = False
        try:
            async with self.pools.session(remote.id) as session:
                await self._ensure_directory(session, remote.id, directory)
                stored = True
                if self.journal is not None:
                    self.journal.started(entry)
                await session.store(temp_path, reader.blocks(handle), ask_size=self.verify_size)
                verified = False
                if self.verify_size:
                    # Given with the upload (a SIZE sent behind its data, see
                    # ServerTraits.size_behind_upload), else asked.
                    stored_size = await session.transferred_size(temp_path)
                    verified = _check_size(stored_size, reader.size, task.dst_path)
                await session.rename(temp_path, task.dst_path)
                stored = False
                if self.journal is not None:
                    self.journal.finished(entry)
        except BaseException:
            with contextlib.suppress(Exception):
                await local_io.run(handle.close)
            if stored:
                await asyncio.shield(self.remove_remote(entry))
                self._known_dirs.pop((remote.id, directory), None)
            raise
        completion = None
        if action.active:
            delivered = self._delivery(task, Direction.UPLOAD, action, reader.size, reader.sha256)
            completion = await self.completer.on_local(local.base_path, delivered)
        return Moved(reader.size, reader.sha256, verified, completion)

    async def _ensure_directory(self, session: FTPSession, conn_id: str, directory: str) -> None:
        if directory in ("", "/", "."):
            return
        key = (conn_id, directory)
        if key in self._known_dirs:
            self._known_dirs.move_to_end(key)
            return
        await session.make_directories(directory)
        self._known_dirs[key] = None
        if len(self._known_dirs) > KNOWN_DIRECTORIES_LIMIT:
            self._known_dirs.popitem(last=False)

    async def remove_remote(self, entry: TempFile) -> bool:
        """Best effort: remove an upload's temporary file on a fresh session.

        Gone already counts as removed; on any other failure it stays in the journal and is
        tried again at the next start.
        """
        assert entry.conn_id is not None
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT_SECONDS):
                async with self.pools.session(entry.conn_id) as session:
                    await session.remove(entry.path)
        except Exception as exc:
            log.info("temp_cleanup_failed", path=entry.path, error=str(exc))
            return False
        if self.journal is not None:
            self.journal.finished(entry)
        return True

    def _result(
        self,
        task: TransferTask,
        direction: Direction | None,
        started: float,
        attempt: int,
        *,
        moved: Moved | None = None,
        error: FtpPoolerError | None = None,
    ) -> TransferResult:
        fields: dict[str, Any] = {
            "task_id": task.task_id,
            "src_id": task.src_id,
            "src_path": task.src_path,
            "dst_id": task.dst_id,
            "dst_path": task.dst_path,
            "direction": direction.value if direction else None,
            "duration_ms": int((self._clock() - started) * 1000),
            "timestamp": utc_now(),
            "attempts": attempt,
            "worker": self.worker_id,
            "metadata": task.metadata,
        }
        if moved is not None:
            return TransferResult(
                status=Status.SUCCESS.value,
                bytes_transferred=moved.size,
                sha256=moved.sha256,
                size_verified=moved.size_verified,
                completion=moved.completion,
                **fields,
            )
        assert error is not None
        return TransferResult(
            status=Status.FAILED.value,
            bytes_transferred=0,
            error_code=error.error_code.value,
            error_message=error.message,
            retryable=error.retryable,
            **fields,
        )


def _completion_of(
    task: TransferTask, direction: Direction, remote: FtpConnection, local: LocalConnection
) -> CompletionAction:
    """The task's own action, else its source connection's default, else none."""
    source = remote if direction is Direction.DOWNLOAD else local
    return task.completion_action() or source.completion or NONE


def _check_size(remote_size: int | None, local_size: int, path: str) -> bool:
    """Both ends must hold the same number of bytes; False when the server gave no size."""
    if remote_size is None:
        return False
    if remote_size != local_size:
        raise SizeMismatch(
            f"size mismatch for {path}: {local_size} bytes here, server reports {remote_size}"
        )
    return True


def _check_remote_path(field: str, path: str) -> None:
    """CR or LF would end the FTP command early (command injection): refused up front."""
    if "\r" in path or "\n" in path:
        raise InvalidTask(f"{field}: a path on an FTP connection must not contain CR or LF")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")

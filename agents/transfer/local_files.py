"""Local storage: the path jail under ``base_path`` and atomic, hashed file writes and reads."""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import os
import queue
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

from agents.transfer.temp_journal import TempFile, TempRecord
from models.errors import (
    FileNotFound,
    FtpPoolerError,
    InvalidTask,
    LocalIOTimeout,
    TransferIOError,
)

TEMP_SUFFIX = ".ftp-pooler.part"
LOCAL_IO_THREADS = 2
# An upload source this small is read whole when it is opened: one thread hop in all. Bounded so
# that tasks still waiting for a session hold little (1,000 of them: 16 MiB at most).
READ_AHEAD_BYTES = 16 * 1024

# The longest file name (in bytes) the usual file systems and FTP servers accept.
NAME_MAX = 255

T = TypeVar("T")


class LocalIO:
    """Threads of their own for blocking local file calls, each call bounded in time.

    Few threads (creating and renaming files in one directory serialise on its lock in the
    kernel, where more threads only spin). A call that does not return within ``timeout`` (a
    hung NFS mount, a device that never answers) fails its task with :class:`LocalIOTimeout`;
    its thread stays stuck, so another is started in its place (up to ``max_stuck`` of them),
    and the others keep serving. The threads are daemons: a stuck one never holds up the exit.
    """

    def __init__(self, threads: int, timeout: float = 60.0, max_stuck: int = 32) -> None:
        self.threads = threads
        self.timeout = timeout
        self.max_stuck = max_stuck
        self.stuck = 0
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = 0
        self._started = 0

    def submit(self, function: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """Run ``function(*args)`` in a thread; the future is unbounded (see :meth:`run`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, function, args))
        self._spawn()
        return future

    def _spawn(self) -> None:
        """Start a thread when fewer than ``threads`` are free to take jobs."""
        with self._lock:
            if self._running < self.threads + self.stuck:
                self._running += 1
                self._started += 1
                threading.Thread(
                    target=self._work, name=f"local-io-{self._started}", daemon=True
                ).start()

    async def run(self, function: Callable[..., T], *args: object, what: str = "") -> T:
        """``function(*args)`` in a thread, within ``timeout`` (then :class:`LocalIOTimeout`)."""
        future = self.submit(function, *args)
        try:
            return await self.bounded(future, what)
        finally:
            if not future.done():
                future.cancel()  # nobody waits for it any more; the thread drops the result

    async def bounded(self, future: asyncio.Future[T], what: str = "") -> T:
        """Wait for a submitted call within ``timeout`` without cancelling it."""
        done, _ = await asyncio.wait([future], timeout=self.timeout)
        if not done:
            with self._lock:
                if self.stuck < self.max_stuck:
                    self.stuck += 1  # one more thread may start in the stuck one's place
            if not self._jobs.empty():
                self._spawn()
            raise LocalIOTimeout(
                f"local file operation{' on ' + what if what else ''} did not finish within "
                f"{self.timeout:.0f} s (a hung mount or device?)",
                retryable=False,
            )
        return future.result()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=5)
            except queue.Empty:
                job = None
            if job is None:
                with self._lock:
                    if self._jobs.empty():
                        self._running -= 1
                        return
                continue
            loop, future, function, args = job
            started = time.monotonic()
            try:
                result: Any = function(*args)
                error: BaseException | None = None
            except BaseException as exc:
                result, error = None, exc
            if time.monotonic() - started >= self.timeout:
                with self._lock:  # this thread was counted as stuck and is free again
                    self.stuck = max(0, self.stuck - 1)
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the event loop is closed: nobody is waiting
                return


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


local_io = LocalIO(LOCAL_IO_THREADS)


def _in_thread(function: Callable[..., T], *args: object) -> Awaitable[T]:
    return local_io.run(function, *args)


def jail(base_path: Path, task_path: str) -> Path:
    """Resolve ``task_path`` under ``base_path`` (a leading / is the base's root).

    After normalisation and symlink resolution the result must stay inside the base, else
    :class:`InvalidTask`. Symlinks are resolved as far as they exist, so a link inside the base that
    points outside it is caught too.
    """
    base = _resolved_base(base_path)
    candidate = Path(os.path.realpath(base / task_path.lstrip("/")))
    if candidate == base or base not in candidate.parents:
        raise InvalidTask(f"path {task_path!r} is outside the connection's base_path")
    return candidate


@functools.lru_cache(maxsize=256)
def _resolved_base(base_path: Path) -> Path:
    """A connection's base_path with its symlinks resolved, once per process (a stat per
    component of it saved on every task)."""
    return Path(os.path.realpath(base_path))


def temp_name(final_name: str) -> str:
    """A hidden, unique name in the same directory, so the final rename is atomic.

    Never longer than :data:`NAME_MAX` bytes: a long final name is cut (at a character
    boundary) so that any name the file system or server accepts can be transferred.
    """
    tag = f".{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
    room = NAME_MAX - 1 - len(tag)
    encoded = final_name.encode("utf-8", "surrogateescape")
    if len(encoded) > room:
        final_name = encoded[:room].decode("utf-8", "ignore")
    return f".{final_name}{tag}"


class AtomicFile:
    """Write to a temporary file beside ``path``; :meth:`commit` renames it into place.

    Blocks are gathered up to ``buffer_size`` bytes and written out together in a thread, so a
    slow disk never stalls the event loop and each thread hop moves up to a buffer's worth: a
    file smaller than the buffer is created, written, closed and renamed in a single hop.
    """

    def __init__(
        self,
        path: Path,
        display_path: str,
        journal: TempRecord | None = None,
        buffer_size: int = 1024 * 1024,
    ) -> None:
        self.path = path
        self.display_path = display_path
        self.temp_path = path.with_name(temp_name(path.name))
        self._journal = journal
        self._entry = TempFile(str(self.temp_path))
        self._buffer_size = buffer_size
        self.size = 0
        self._hash = hashlib.sha256()
        self._handle: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flushing: asyncio.Future[None] | None = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def open(self) -> None:
        """Journal the temporary; it is created on disk by the first write out (or commit)."""
        if self._journal is not None:
            self._journal.started(self._entry)

    async def write(self, block: bytes) -> None:
        self._pending.append(block)
        self._pending_size += len(block)
        self.size += len(block)
        if self._pending_size >= self._buffer_size:
            await self._write_out(commit=False)

    async def commit(self) -> None:
        """Write what is left, close and rename into place (replacing an older copy, as a
        repeated task must)."""
        await self._write_out(commit=True)
        if self._journal is not None:
            self._journal.finished(self._entry)

    async def _write_out(self, *, commit: bool) -> None:
        blocks, self._pending, self._pending_size = self._pending, [], 0
        # Shielded so that a cancelled task's discard() can wait for the thread to be done with
        # the file before removing it.
        self._flushing = local_io.submit(self._write, blocks, commit)
        with local_errors("destination", self.display_path):
            await local_io.bounded(self._flushing, self.display_path)

    def _write(self, blocks: list[bytes], commit: bool) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.temp_path.open("xb")
        for block in blocks:
            self._handle.write(block)
            self._hash.update(block)  # hashlib drops the GIL on large buffers
        if commit:
            handle, self._handle = self._handle, None
            handle.close()
            os.replace(self.temp_path, self.path)

    async def discard(self) -> None:
        """Remove the temporary file; never raises."""
        self._pending = []
        if self._flushing is not None and not self._flushing.done():
            await asyncio.wait([self._flushing], timeout=local_io.timeout)
            if not self._flushing.done():
                return  # a stuck write: the journal keeps the temporary for the next start
        handle, self._handle = self._handle, None
        try:
            removed = await local_io.run(self._discard, handle)
        except Exception:
            return
        if self._journal is not None and removed:
            self._journal.finished(self._entry)

    def _discard(self, handle: BinaryIO | None) -> bool:
        """Close and remove the temporary; True when it is gone (or never existed)."""
        try:
            if handle is not None:
                handle.close()
            self.temp_path.unlink(missing_ok=True)
        except OSError:
            return False  # e.g. no permission in the directory: the original error stands
        return True


class HashingReader:
    """Read a local file in blocks (in a thread), hashing what was read."""

    def __init__(self, path: Path, display_path: str, block_size: int) -> None:
        self.path = path
        self.display_path = display_path
        self.block_size = block_size
        self.size = 0
        self._hash = hashlib.sha256()
        self._ahead: bytes | None = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def open(self) -> BinaryIO:
        with local_errors("source", self.display_path):
            return await _in_thread(self._open)

    def _open(self) -> BinaryIO:
        # Non-blocking, so a FIFO (or a device) is refused at once instead of blocking a
        # thread until a writer appears; only regular files are read.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise TransferIOError(
                    f"local source {self.display_path} is not a regular file ({_file_kind(mode)})",
                    retryable=False,
                )
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        handle = os.fdopen(fd, "rb")
        try:
            if os.fstat(handle.fileno()).st_size <= READ_AHEAD_BYTES:
                self._ahead = self._read(handle)
        except BaseException:
            handle.close()
            raise
        return handle

    async def blocks(self, handle: BinaryIO) -> AsyncIterator[bytes]:
        """The file's blocks; a short block is the last, read and closed in the same hop (a
        small file was read whole when it was opened)."""
        try:
            if self._ahead is not None:
                block, self._ahead = self._ahead, None
                if block:
                    yield block
            while not handle.closed:
                with local_errors("source", self.display_path):
                    block = await _in_thread(self._read, handle)
                if block:
                    yield block
        finally:
            if not handle.closed:
                await _in_thread(handle.close)

    def _read(self, handle: BinaryIO) -> bytes:
        block = handle.read(self.block_size)
        self._hash.update(block)
        self.size += len(block)
        if len(block) < self.block_size:  # a regular file reads short only at its end
            handle.close()
        return block


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


@contextmanager
def local_errors(phase: Literal["source", "destination"], path: str) -> Iterator[None]:
    """Translate local file-system errors for the file at ``path`` (as the task named it)."""
    try:
        yield
    except FtpPoolerError:
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno == errno.ENOENT and phase == "source":
            raise FileNotFound(f"local source not found: {path}") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR):
            raise TransferIOError(f"local {phase} {path}: {reason}", retryable=False) from None
        raise TransferIOError(f"local {phase} {path}: {reason}") from None

"""Local storage: the path jail under ``base_path`` and atomic, hashed file writes and reads."""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal, TypeVar

from agents.transfer.temp_journal import TempFile, TempRecord
from models.errors import FileNotFound, FtpPoolerError, InvalidTask, TransferIOError

TEMP_SUFFIX = ".ftp-pooler.part"
LOCAL_IO_THREADS = 2
# An upload source this small is read whole when it is opened: one thread hop in all. Bounded so
# that tasks still waiting for a session hold little (1,000 of them: 16 MiB at most).
READ_AHEAD_BYTES = 16 * 1024

T = TypeVar("T")

# Local file work gets a few threads of its own rather than asyncio's default pool (cpu + 4):
# creating and renaming files in one directory serialise on its lock in the kernel, where more
# threads only spin, and each extra thread is one more to wake and to hand the GIL to.
_local_io = ThreadPoolExecutor(max_workers=LOCAL_IO_THREADS, thread_name_prefix="local-io")


def _in_thread(function: Callable[..., T], *args: object) -> asyncio.Future[T]:
    return asyncio.get_running_loop().run_in_executor(_local_io, function, *args)


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
    """A hidden, unique name in the same directory, so the final rename is atomic."""
    return f".{final_name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"


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
        self._flushing = _in_thread(self._write, blocks, commit)
        with local_errors("destination", self.display_path):
            await asyncio.shield(self._flushing)

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
            await asyncio.wait([self._flushing])
        handle, self._handle = self._handle, None
        await _in_thread(self._discard, handle)
        if self._journal is not None and not self.temp_path.exists():
            self._journal.finished(self._entry)

    def _discard(self, handle: BinaryIO | None) -> None:
        try:
            if handle is not None:
                handle.close()
            self.temp_path.unlink(missing_ok=True)
        except OSError:
            pass


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
        handle = self.path.open("rb")  # a directory raises IsADirectoryError
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

"""Local storage: the path jail under ``base_path`` and atomic, hashed file writes and reads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from agents.temp_journal import TempFile, TempJournal
from models.errors import InvalidTask
from pools.translate import local_errors

TEMP_SUFFIX = ".ftp-pooler.part"


def jail(base_path: Path, task_path: str) -> Path:
    """Resolve ``task_path`` under ``base_path`` (a leading / is the base's root).

    After normalisation and symlink resolution the result must stay inside the base, else
    :class:`InvalidTask`. Symlinks are resolved as far as they exist, so a link inside the base that
    points outside it is caught too.
    """
    base = Path(os.path.realpath(base_path))
    candidate = Path(os.path.realpath(base / task_path.lstrip("/")))
    if candidate == base or base not in candidate.parents:
        raise InvalidTask(f"path {task_path!r} is outside the connection's base_path")
    return candidate


def temp_name(final_name: str) -> str:
    """A hidden, unique name in the same directory, so the final rename is atomic."""
    return f".{final_name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"


class AtomicFile:
    """Write to a temporary file beside ``path``; :meth:`commit` renames it into place.

    Blocking file calls run in a thread so that a slow disk never stalls the event loop.
    """

    def __init__(self, path: Path, display_path: str, journal: TempJournal | None = None) -> None:
        self.path = path
        self.display_path = display_path
        self.temp_path = path.with_name(temp_name(path.name))
        self._journal = journal
        self._entry = TempFile(str(self.temp_path))
        self.size = 0
        self._hash = hashlib.sha256()
        self._handle: BinaryIO | None = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def open(self) -> None:
        if self._journal is not None:
            self._journal.started(self._entry)
        with local_errors("destination", self.display_path):
            self._handle = await asyncio.to_thread(self._open)

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.temp_path.open("xb")

    async def write(self, block: bytes) -> None:
        assert self._handle is not None
        with local_errors("destination", self.display_path):
            await asyncio.to_thread(self._write, self._handle, block)

    def _write(self, handle: BinaryIO, block: bytes) -> None:
        handle.write(block)
        self._hash.update(block)  # hashlib drops the GIL on large buffers
        self.size += len(block)

    async def commit(self) -> None:
        """Close and rename into place (replacing an older copy, as a repeated task must)."""
        assert self._handle is not None
        handle, self._handle = self._handle, None
        with local_errors("destination", self.display_path):
            await asyncio.to_thread(self._commit, handle)
        if self._journal is not None:
            self._journal.finished(self._entry)

    def _commit(self, handle: BinaryIO) -> None:
        handle.close()
        os.replace(self.temp_path, self.path)

    async def discard(self) -> None:
        """Remove the temporary file; never raises."""
        handle, self._handle = self._handle, None
        await asyncio.to_thread(self._discard, handle)
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

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def open(self) -> BinaryIO:
        with local_errors("source", self.display_path):
            return await asyncio.to_thread(self._open)

    def _open(self) -> BinaryIO:
        if self.path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        return self.path.open("rb")

    async def blocks(self, handle: BinaryIO) -> AsyncIterator[bytes]:
        try:
            while True:
                with local_errors("source", self.display_path):
                    block = await asyncio.to_thread(self._read, handle)
                if not block:
                    return
                yield block
        finally:
            await asyncio.to_thread(handle.close)

    def _read(self, handle: BinaryIO) -> bytes:
        block = handle.read(self.block_size)
        self._hash.update(block)
        self.size += len(block)
        return block

"""One logged-in FTP control connection (aioftp client) and the transfer primitives run on it."""

from __future__ import annotations

import asyncio
import enum
import posixpath
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import PurePosixPath
from typing import TypeVar

import aioftp

from app.registry import FtpConnection
from models.errors import TransferIOError
from pools.translate import Phase, ftp_errors

QUIT_TIMEOUT_SECONDS = 2.0

T = TypeVar("T")


class SessionState(enum.Enum):
    """The design document's state machine; a pool hands out IDLE sessions and closes ERROR ones."""

    DISCONNECTED = "disconnected"
    IDLE = "idle"
    BUSY = "busy"
    ERROR = "error"


class FTPSession:
    """A single aioftp client. Any failed command leaves it in ERROR: it is closed, never reused."""

    def __init__(
        self,
        connection: FtpConnection,
        *,
        connect_timeout: float,
        command_timeout: float,
        block_size: int,
        stall_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connection = connection
        self.state = SessionState.DISCONNECTED
        self.block_size = block_size
        self.stall_timeout = stall_timeout
        self.size_supported = True
        self.created_at = clock()
        self.last_used = self.created_at
        self.uses = 0
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._client = aioftp.Client(
            socket_timeout=command_timeout,
            connection_timeout=connect_timeout,
            path_timeout=command_timeout,
            encoding="utf-8",
        )

    def __repr__(self) -> str:
        return f"<FTPSession {self.connection.id} {self.state.value} uses={self.uses}>"

    @property
    def where(self) -> str:
        return f"{self.connection.host}:{self.connection.port}"

    # -- state questions the pool asks ---------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self.state in (SessionState.IDLE, SessionState.BUSY)

    @property
    def is_broken(self) -> bool:
        return self.state is SessionState.ERROR

    def idle_seconds(self, now: float) -> float:
        return now - self.last_used

    def looks_dead(self) -> bool:
        """True when the server already hung up on this idle session (seen without any I/O).

        A server that times an idle session out sends a 421 and closes; both sit unread in the
        control connection's buffer, so an idle session with anything buffered, or at EOF, is gone.
        """
        stream = getattr(self._client, "stream", None)
        if stream is None:
            return True
        reader = stream.reader
        buffered = len(getattr(reader, "_buffer", b""))  # asyncio.StreamReader keeps no public size
        return bool(buffered) or reader.at_eof() or stream.writer.is_closing()

    # -- lifecycle -----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the control connection and log in."""
        conn = self.connection
        try:
            with ftp_errors("connect", self.where):
                async with asyncio.timeout(self._connect_timeout * 2):
                    await self._client.connect(conn.host, conn.port)
                    await self._client.login(conn.user, conn.password)
        except BaseException:
            self.state = SessionState.ERROR
            self._client.close()
            raise
        self.state = SessionState.IDLE

    async def noop(self) -> bool:
        """Ask the server whether the session is alive; a dead one is marked ERROR."""
        try:
            await self._run("command", self._client.command("NOOP", "2xx"))
        except Exception:
            return False
        return True

    async def aclose(self) -> None:
        """Say QUIT (briefly) and close; never raises."""
        if self.state is not SessionState.ERROR and self.state is not SessionState.DISCONNECTED:
            with suppress(Exception):
                async with asyncio.timeout(QUIT_TIMEOUT_SECONDS):
                    await self._client.quit()
        self._client.close()
        self.state = SessionState.DISCONNECTED

    # -- transfer primitives -------------------------------------------------------------------
    async def retrieve(self, path: str, on_block: Callable[[bytes], Awaitable[None]]) -> None:
        """RETR ``path``, passing each block to ``on_block`` as it arrives."""

        async def body() -> None:
            async with self._client.download_stream(path) as stream:
                while True:
                    async with self._stall_guard(path):
                        block = await stream.read(self.block_size)
                    if not block:
                        return
                    await on_block(block)

        await self._run("source", body(), path)

    async def store(self, path: str, blocks: AsyncIterator[bytes]) -> None:
        """STOR ``path`` from an async iterator of blocks."""

        async def body() -> None:
            async with self._client.upload_stream(path) as stream:
                async for block in blocks:
                    async with self._stall_guard(path):
                        await stream.write(block)

        await self._run("destination", body(), path)

    @asynccontextmanager
    async def _stall_guard(self, path: str) -> AsyncIterator[None]:
        """A data connection moving no byte for ``stall_timeout`` fails (IO_ERROR, retryable)."""
        try:
            async with asyncio.timeout(self.stall_timeout):
                yield
        except TimeoutError:
            raise TransferIOError(
                f"transfer of {path} stalled: no bytes moved for {self.stall_timeout:.0f} s"
            ) from None

    async def size(self, path: str) -> int | None:
        """SIZE of ``path`` in bytes, or None when the server does not support SIZE."""
        if not self.size_supported:
            return None

        async def body() -> int | None:
            try:
                _code, info = await self._client.command(f"SIZE {path}", "213")
            except aioftp.StatusCodeError as exc:
                if any(str(code) in ("500", "502", "504") for code in exc.received_codes):
                    self.size_supported = False  # not implemented: stop asking this server
                    return None
                raise
            return int(info[-1].strip().split()[-1])

        return await self._run("command", body(), path)

    async def rename(self, source: str, target: str) -> None:
        await self._run("destination", self._client.rename(source, target), target)

    async def make_directories(self, path: str) -> None:
        """MKD each level of ``path``; a 5xx (usually "exists") is left for STOR to judge.

        Not aioftp's ``make_directory``: it checks, then creates, and loses the race when two
        sessions create the same new directory at once.
        """

        async def body() -> None:
            for level in reversed((PurePosixPath(path), *PurePosixPath(path).parents)):
                if str(level) in ("/", "."):
                    continue
                try:
                    await self._client.command(f"MKD {level}", "257")
                except aioftp.StatusCodeError as exc:
                    if not any(str(code).startswith("5") for code in exc.received_codes):
                        raise

        await self._run("destination", body(), path)

    async def remove(self, path: str) -> bool:
        """DELE ``path``; False when it did not exist (550), which is not an error here."""

        async def body() -> bool:
            try:
                await self._client.command(f"DELE {path}", "2xx")
            except aioftp.StatusCodeError as exc:
                if any(str(code) == "550" for code in exc.received_codes):
                    return False
                raise
            return True

        return await self._run("destination", body(), path)

    async def _run(self, phase: Phase, operation: Awaitable[T], path: str = "") -> T:
        where = f"{self.where}{posixpath.join('/', path) if path else ''}"
        try:
            with ftp_errors(phase, where):
                return await operation
        except BaseException:
            # aioftp leaves the control channel desynchronised after a failed stream body
            # (a stale 426 waits for the next command), so a failed session is never reused.
            self.state = SessionState.ERROR
            self._client.close()
            raise

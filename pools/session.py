"""One logged-in FTP control connection (aioftp client) and the transfer primitives run on it."""

from __future__ import annotations

import asyncio
import posixpath
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import PurePosixPath
from typing import Any, TypeVar

import aioftp
import structlog

from models.connections import FtpConnection
from models.errors import TransferIOError
from pools import wire
from pools.client import FtpClient, tls_context
from pools.state import SessionLifecycle
from pools.translate import (
    Phase,
    cleartext_on_implicit_port,
    data_tls_refused,
    ftp_errors,
    reply_of,
    tls_refused,
)

log = structlog.get_logger("ftp_pooler.session")

QUIT_TIMEOUT_SECONDS = 2.0

T = TypeVar("T")


class FTPSession(SessionLifecycle):
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
        super().__init__(clock())
        self.connection = connection
        self.block_size = block_size
        self.stall_timeout = stall_timeout
        # The byte count the last RETR's 150 reply announced, when the server gives one.
        self.announced_size: int | None = None
        self.replaced_by_delete = 0  # renames that had to delete an existing target first
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._tls = tls_context(connection)
        self._control: wire.ControlChannel | None = None  # set once logged in
        self._passive = "EPSV"  # PASV from the first time a server refuses EPSV
        self._peer: tuple[int, tuple[Any, ...]] | None = None  # control socket's family, address
        # No timeouts inside aioftp: on Python 3.11 each of its timed calls (every line read or
        # written, every connect) runs in a task of its own through asyncio.wait_for, a quarter
        # of its CPU per small file. Each operation is bounded once instead (see _run and
        # FtpClient.data_stream); a data connection by the stall timeout per block.
        self._client = FtpClient(
            server_name=connection.tls_server_name,
            socket_timeout=None,
            connection_timeout=None,
            path_timeout=None,
            encoding="utf-8",
            ssl=self._tls if connection.tls == "implicit" else None,
        )

    def __repr__(self) -> str:
        return f"<FTPSession {self.connection.id} {self.state.value} uses={self.uses}>"

    @property
    def where(self) -> str:
        return f"{self.connection.host}:{self.connection.port}"

    # -- the state question that needs the connection -----------------------------------------
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
    @property
    def tls_version(self) -> str | None:
        """The control connection's TLS version (e.g. "TLSv1.3"), None when plain."""
        tls = self._client.control_tls
        return tls.version() if tls is not None else None

    async def connect(self) -> None:
        """Open the control connection, secure it when FTPS, and log in.

        Explicit FTPS: AUTH TLS before the password is sent, then PBSZ 0 / PROT P after the
        login (the order curl and lftp use; some servers refuse PROT before USER).
        """
        conn = self.connection
        try:
            with ftp_errors("connect", self.where):
                async with asyncio.timeout(self._connect_timeout * 2):
                    try:
                        await self._client.connect(conn.host, conn.port)
                    except ssl.SSLError as exc:
                        if conn.tls == "implicit" and exc.reason == "WRONG_VERSION_NUMBER":
                            raise cleartext_on_implicit_port(exc, self.where) from None
                        raise
                    if conn.tls == "explicit":
                        try:
                            await self._client.upgrade_to_tls(self._tls)
                        except aioftp.StatusCodeError as exc:
                            raise tls_refused(exc, self.where) from None
                    await self._client.login(conn.user, conn.password)
                    if conn.tls != "none":
                        await self._client.command("PBSZ 0", "200")
                        await self._client.command("PROT P", "200")
                    stream = self._client.stream
                    self._control = wire.ControlChannel(stream.reader, stream.writer)
                    control_socket = stream.writer.get_extra_info("socket")
                    self._peer = (control_socket.family, stream.writer.get_extra_info("peername"))
                    # Binary once per session, not before every transfer as aioftp does.
                    await self._control.command("TYPE I", "200")
        except BaseException as exc:
            self.failed()
            self._client.close()
            if not isinstance(exc, asyncio.CancelledError):
                with suppress(Exception):
                    async with asyncio.timeout(QUIT_TIMEOUT_SECONDS):
                        await self._client.wait_closed()
            raise
        self.logged_in()

    async def noop(self) -> bool:
        """Ask the server whether the session is alive; a dead one is marked ERROR."""
        try:
            await self._run("command", self.control.command("NOOP", "2xx"))
        except Exception:
            return False
        return True

    async def aclose(self) -> None:
        """Say QUIT (briefly) and close; never raises."""
        if self.is_connected:
            with suppress(Exception):
                async with asyncio.timeout(QUIT_TIMEOUT_SECONDS):
                    await self._client.quit()
        self._client.close()
        self.closed()
        with suppress(Exception):
            async with asyncio.timeout(QUIT_TIMEOUT_SECONDS):
                await self._client.wait_closed()

    # -- transfer primitives -------------------------------------------------------------------
    @property
    def control(self) -> wire.ControlChannel:
        if self._control is None:
            raise ConnectionError("not logged in")
        return self._control

    async def retrieve(self, path: str, on_block: Callable[[bytes], Awaitable[None]]) -> None:
        """RETR ``path``, passing each block to ``on_block`` as it arrives."""
        if self._tls is None:

            async def receive(sock: socket.socket, watch: wire.StallWatch) -> None:
                await wire.receive(sock, self.block_size, on_block, watch)

            await self._run("source", self._plain_transfer(f"RETR {path}", path, receive), path)
            return

        async def body() -> None:
            with self._data_tls_hint(path):
                retr = self._client.data_stream(f"RETR {path}", self._command_timeout)
                async with retr as stream:
                    while True:
                        async with self._stall_guard(path):
                            block = await stream.read(self.block_size)
                        if not block:
                            return
                        await on_block(block)

        await self._run("source", body(), path, bounded=False)

    async def store(self, path: str, blocks: AsyncIterator[bytes]) -> None:
        """STOR ``path`` from an async iterator of blocks."""
        if self._tls is None:

            async def send(sock: socket.socket, watch: wire.StallWatch) -> None:
                await wire.send(sock, blocks, watch)

            await self._run("destination", self._plain_transfer(f"STOR {path}", path, send), path)
            return

        async def body() -> None:
            with self._data_tls_hint(path):
                stor = self._client.data_stream(f"STOR {path}", self._command_timeout)
                async with stor as stream:
                    async for block in blocks:
                        async with self._stall_guard(path):
                            await stream.write(block)

        await self._run("destination", body(), path, bounded=False)

    async def _plain_transfer(
        self,
        command: str,
        path: str,
        move: Callable[[socket.socket, wire.StallWatch], Awaitable[None]],
    ) -> None:
        """RETR/STOR over a plain passive data connection (a bare socket, see pools.wire);
        ``move`` receives or sends the bytes.

        Opening it (EPSV/PASV, connect, the 1xx) and the final reply are each bounded by the
        command timeout; the bytes in between by the stall timeout.
        """
        self.announced_size = None
        async with asyncio.timeout(self._command_timeout):
            sock = await self._open_passive()
        try:
            async with asyncio.timeout(self._command_timeout):
                preliminary = await self.control.command(command, "1xx")
            self.announced_size = wire.announced_size(preliminary)
            try:
                async with wire.StallWatch(self.stall_timeout) as watch:
                    await move(sock, watch)
            except TimeoutError:
                raise self._stalled(path) from None
        finally:
            sock.close()  # the end of an upload's data
        async with asyncio.timeout(self._command_timeout):
            await self.control.reply("2xx")

    async def _open_passive(self) -> socket.socket:
        assert self._peer is not None
        family, peer = self._peer
        try:
            info = await self.control.command(self._passive, "2xx")
        except aioftp.StatusCodeError as exc:
            if self._passive == "PASV" or not str(exc.received_codes[-1]).startswith("50"):
                raise
            self._passive = "PASV"  # no EPSV here (RFC 2428 is optional)
            info = await self.control.command(self._passive, "2xx")
        port = wire.passive_port(self._passive, info)
        return await wire.open_data_socket(family, (peer[0], port, *peer[2:]))

    @contextmanager
    def _data_tls_hint(self, path: str) -> Iterator[None]:
        """A 425/522 after a data connection that did not resume TLS names that as the cause."""
        try:
            yield
        except aioftp.StatusCodeError as exc:
            if self._client.data_session_reused is False:
                refused = data_tls_refused(exc, self._where(path))
                if refused is not None:
                    raise refused from None
            raise

    @asynccontextmanager
    async def _stall_guard(self, path: str) -> AsyncIterator[None]:
        """A data connection moving no byte for ``stall_timeout`` fails (IO_ERROR, retryable)."""
        try:
            async with asyncio.timeout(self.stall_timeout):
                yield
        except TimeoutError:
            raise self._stalled(path) from None

    def _stalled(self, path: str) -> TransferIOError:
        return TransferIOError(
            f"transfer of {path} stalled: no bytes moved for {self.stall_timeout:.0f} s"
        )

    async def size(self, path: str) -> int | None:
        """The size of ``path`` in bytes from SIZE, else from MLST; None when the server
        answers neither (unsupported, or refused this time).

        Asked anew every time: a refusal says nothing about the next file (a server may answer
        one SIZE with 502 and the next with 213), so verification is never switched off.
        """

        async def body() -> int | None:
            for command, expected in ((f"SIZE {path}", "213"), (f"MLST {path}", "250")):
                try:
                    info = await self.control.command(command, expected)
                except aioftp.StatusCodeError:
                    continue  # not offered, or not now: the next means, else unverified
                found = _size_of(command, info)
                if found is not None:
                    return found
            return None

        return await self._run("command", body(), path)

    async def rename(self, source: str, target: str) -> None:
        """RNFR/RNTO. A server that will not rename over an existing file gets DELE, then RNTO.

        Most servers replace the target atomically. Some refuse (ProFTPD with
        ``AllowOverwrite off``); a redelivered upload must still end with the new file in place,
        so the old one is deleted and the rename repeated: readers may briefly find no file, but
        never a partial one.
        """

        async def body() -> None:
            await self.control.command(f"RNFR {source}", "350")
            try:
                await self.control.command(f"RNTO {target}", "2xx")
                return
            except aioftp.StatusCodeError as exc:
                code, info = reply_of(exc)
                if not code.startswith("5") or not await self._delete_if_present(target):
                    raise
            self.replaced_by_delete += 1
            log.warning(
                "rename_replaced_by_delete",
                connection=self.connection.id,
                path=target,
                reply=f"{code} {info}",
            )
            await self.control.command(f"RNFR {source}", "350")
            await self.control.command(f"RNTO {target}", "2xx")

        await self._run("destination", body(), target)

    async def _delete_if_present(self, path: str) -> bool:
        try:
            await self.control.command(f"DELE {path}", "2xx")
        except aioftp.StatusCodeError:
            return False  # absent, or not ours to delete: the rename's own error stands
        return True

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
                    await self.control.command(f"MKD {level}", "257")
                except aioftp.StatusCodeError as exc:
                    if not any(str(code).startswith("5") for code in exc.received_codes):
                        raise

        await self._run("destination", body(), path)

    async def remove(self, path: str) -> bool:
        """DELE ``path``; False when it did not exist (550), which is not an error here."""

        async def body() -> bool:
            try:
                await self.control.command(f"DELE {path}", "2xx")
            except aioftp.StatusCodeError as exc:
                if any(str(code) == "550" for code in exc.received_codes):
                    return False
                raise
            return True

        return await self._run("destination", body(), path)

    async def probe(self, path: str) -> tuple[bool, int | None]:
        """Whether ``path`` exists (SIZE; a 550 is "no", not an error) and its size, None where
        the server has no SIZE (then the file is taken to exist). Used by completion actions."""

        async def body() -> tuple[bool, int | None]:
            try:
                info = await self.control.command(f"SIZE {path}", "213")
            except aioftp.StatusCodeError as exc:
                codes = {str(code) for code in exc.received_codes}
                if "550" in codes:
                    return False, None
                if codes & {"500", "502", "504"}:
                    return True, None
                raise
            return True, int(info[-1].strip().split()[-1])

        return await self._run("command", body(), path)

    def _where(self, path: str = "") -> str:
        return f"{self.where}{posixpath.join('/', path) if path else ''}"

    async def _run(
        self, phase: Phase, operation: Awaitable[T], path: str = "", *, bounded: bool = True
    ) -> T:
        """Run one FTP operation; unless ``bounded`` is False (transfers bound their own
        phases), it must finish within ``command_timeout``."""
        where = self._where(path)
        try:
            with ftp_errors(phase, where):
                if not bounded:
                    return await operation
                async with asyncio.timeout(self._command_timeout):
                    return await operation
        except BaseException:
            # aioftp leaves the control channel desynchronised after a failed stream body
            # (a stale 426 waits for the next command), so a failed session is never reused.
            self.failed()
            self._client.close()
            raise

    # -- directory listings (used by pools/listing.py) -----------------------------------------
    async def features(self) -> list[str]:
        """The server's FEAT lines, stripped (empty when it has no FEAT)."""

        async def body() -> list[str]:
            try:
                return [line.strip() for line in await self.control.command("FEAT", "211")]
            except aioftp.StatusCodeError:
                return []

        return await self._run("command", body())

    async def receive_listing(
        self, command: str, path: str, on_block: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """``MLSD``/``LIST`` ``path``, passing each block of the listing to ``on_block`` as it
        arrives, as :meth:`retrieve` does (each phase bounded; the bytes by the stall timeout)."""
        line = f"{command} {path}"
        if self._tls is None:

            async def receive(sock: socket.socket, watch: wire.StallWatch) -> None:
                await wire.receive(sock, self.block_size, on_block, watch)

            transfer = self._plain_transfer(line, path, receive)
            await self._run("source", transfer, path, bounded=False)
            return

        async def body() -> None:
            async with self._client.data_stream(line, self._command_timeout) as stream:
                while True:
                    async with self._stall_guard(path):
                        block = await stream.read(self.block_size)
                    if not block:
                        return
                    await on_block(block)

        await self._run("source", body(), path, bounded=False)


def _size_of(command: str, info: list[str]) -> int | None:
    """The size in a 213 (SIZE) or 250 (MLST: the ``size=`` fact) reply, None if absent."""
    if command.startswith("SIZE"):
        words = info[-1].strip().split() if info else []
        return int(words[-1]) if words and words[-1].isdigit() else None
    for line in info:
        for fact in line.strip().split(";"):
            name, _, value = fact.strip().partition("=")
            if name.lower() == "size" and value.isdigit():
                return int(value)
    return None

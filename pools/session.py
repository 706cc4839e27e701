"""One logged-in FTP control connection (aioftp client) and the transfer primitives run on it."""

from __future__ import annotations

import asyncio
import posixpath
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

import aioftp
import structlog
from aioftp.common import Code

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
# A passive port asked for ahead (see ServerTraits) is used only this soon after: an idle
# session's next transfer asks afresh rather than trust a listener the server may have dropped.
AHEAD_MAX_AGE_SECONDS = 5.0

T = TypeVar("T")


@dataclass
class ServerTraits:
    """Which round-trip savings one server allows, learnt at run time, shared by the sessions
    of a connection. Each starts allowed (or unknown) and is switched off for good the first
    time the server answers in a way that shows it does not hold; none weakens a check (sizes
    are still compared, uploads still renamed into place only after their SIZE matched).

    - ``passive_ahead``: the next transfer's EPSV/PASV is sent before it is needed (right after
      a download's data ended, before its final reply; with an upload's RNFR/RNTO). Off when a
      server answers it out of order or refuses it, or the port it gave cannot be used.
    - ``data_before_reply``: an upload's first bytes (a small file whole, then the end of its
      data connection) are sent right after STOR, without waiting for the 150. Off when such an
      upload then fails at the data connection (a 425/426).
    - ``size_in_150``: the RETR 150 reply carries the byte count (vsftpd, ProFTPD). Where it
      does not, a SIZE is sent together with each RETR instead of after it.
    - ``size_behind_upload``: an upload's SIZE is sent as soon as its data connection has
      ended, without waiting for the transfer's final reply, and its answer is taken only when
      it comes after that reply (the server read it once the upload was complete). Off when a
      server answers it before (it reads commands during a transfer: Pure-FTPd refuses them
      with 500, pyftpdlib answers them at once); the SIZE is then asked after the final reply.
    """

    passive_ahead: bool = True
    data_before_reply: bool = True
    size_in_150: bool | None = None
    size_behind_upload: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_TRAITS: dict[tuple[str, str, int], ServerTraits] = {}


def traits_of(connection: FtpConnection) -> ServerTraits:
    """The traits learnt so far for ``connection``'s server (one record per id and address)."""
    key = (connection.id, connection.host, connection.port)
    return _TRAITS.setdefault(key, ServerTraits())


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
        # The byte count the server gave with the last RETR (its 150 reply, or a SIZE sent with
        # it: see ServerTraits.size_in_150) or for the last STOR (a SIZE sent behind its data:
        # ServerTraits.size_behind_upload); None when it gave none.
        self.announced_size: int | None = None
        # The SIZE sent with the last STOR was answered in order, and refused: ask MLST next.
        self.size_refused = False
        self.traits = traits_of(connection)
        self._ahead: tuple[int, float] | None = None  # a passive port asked ahead, and when
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
    def data_session_reused(self) -> bool | None:
        """Whether the last FTPS data connection resumed the control connection's TLS session
        (None: no protected data connection yet, or plain FTP)."""
        return self._client.data_session_reused

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
                    self.answered()  # its 220: the pool now knows the server is up
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
        """RETR ``path``, passing each block to ``on_block`` as it arrives (then
        :meth:`transferred_size` says how long the server says it is)."""
        self.announced_size = None
        self.size_refused = False
        if self._tls is None:
            await self._run("source", self._plain_retrieve(path, on_block), path, bounded=False)
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

    async def store(
        self, path: str, blocks: AsyncIterator[bytes], *, ask_size: bool = False
    ) -> None:
        """STOR ``path`` from an async iterator of blocks. With ``ask_size``, the stored length
        is asked for with the upload where the server allows it (then :meth:`transferred_size`
        needs no round trip)."""
        self.announced_size = None
        self.size_refused = False
        if self._tls is None:
            upload = self._plain_store(path, blocks, ask_size=ask_size)
            await self._run("destination", upload, path, bounded=False)
            return

        async def body() -> None:
            with self._data_tls_hint(path):
                stor = self._client.data_stream(f"STOR {path}", self._command_timeout)
                async with stor as stream:
                    async for block in blocks:
                        async with self._stall_guard(path):
                            await stream.write(block)

        await self._run("destination", body(), path, bounded=False)

    # Plain data connections (pools.wire: bare sockets). Opening one (EPSV/PASV, connect, the
    # 1xx) and the final reply are each bounded by the command timeout, the bytes in between by
    # the stall timeout. Round trips per file: see ServerTraits.

    async def _plain_retrieve(
        self, path: str, on_block: Callable[[bytes], Awaitable[None]]
    ) -> None:
        ask_size = self.traits.size_in_150 is False
        for last_try in (False, True):
            async with asyncio.timeout(self._command_timeout):
                sock, ahead = await self._data_socket(fresh=last_try)
            try:
                async with asyncio.timeout(self._command_timeout):
                    self.control.send(*([f"SIZE {path}"] if ask_size else []), f"RETR {path}")
                    sized = None
                    if ask_size:
                        code, info = await self.control.raw_reply()
                        sized = _size_of("SIZE", info) if code == "213" else None
                    try:
                        preliminary = await self.control.reply("1xx")
                    except aioftp.StatusCodeError as exc:
                        if ahead and not last_try and _no_data_connection(exc):
                            self._learned("passive_ahead", False, exc)
                            continue  # RETR did not start: once more on a fresh port
                        raise
                announced = wire.announced_size(preliminary)
                if self.traits.size_in_150 is None:
                    self._learned("size_in_150", announced is not None, preliminary)
                self.announced_size = announced if announced is not None else sized
                try:
                    async with wire.StallWatch(self.stall_timeout) as watch:
                        await wire.connected(sock)
                        await wire.receive(sock, self.block_size, on_block, watch)
                except TimeoutError:
                    raise self._stalled(path) from None
            finally:
                sock.close()
            await self._final_reply(ask_ahead=True)
            return

    async def _plain_store(
        self, path: str, blocks: AsyncIterator[bytes], *, ask_size: bool
    ) -> None:
        # Blocks taken from ``blocks`` before the 150 are kept, so a try that failed before the
        # server started the transfer can be made again; after the 150 the rest is streamed.
        held: list[bytes] = []
        exhausted = False
        first = await anext(blocks, None)
        if first is None:
            exhausted = True
        else:
            held.append(first)
        for last_try in (False, True):
            async with asyncio.timeout(self._command_timeout):
                sock, ahead = await self._data_socket(fresh=last_try)
            early = self.traits.data_before_reply and not last_try
            size_sent = False
            try:
                sent_all = False
                offset = 0  # bytes of held[0] already on their way
                async with asyncio.timeout(self._command_timeout):
                    self.control.send(f"STOR {path}")
                    if early:
                        await wire.connected(sock)  # STOR is on its way meanwhile
                        if held:
                            offset = _send_now(sock, held[0])
                            if offset == len(held[0]) and len(held) == 1 and not exhausted:
                                more = await anext(blocks, None)
                                if more is None:
                                    exhausted = True
                                else:
                                    held.append(more)
                            sent_all = offset == len(held[0]) and len(held) == 1 and exhausted
                        else:
                            sent_all = True  # an empty file: the data connection just ends
                        if sent_all:
                            sock.close()
                            if ask_size and self.traits.size_behind_upload:
                                # The whole upload is on its way: its SIZE goes with it.
                                self.control.send(f"SIZE {path}")
                                size_sent = True
                    try:
                        if not size_sent:
                            await self.control.reply("1xx")
                    except aioftp.StatusCodeError as exc:
                        if (ahead or early) and not last_try and _no_data_connection(exc):
                            # STOR did not start: once more on a fresh port, data after the 150
                            self._learned(
                                "passive_ahead" if ahead else "data_before_reply", False, exc
                            )
                            continue
                        raise
                if size_sent:
                    started, (code, info), self.announced_size = await self._stor_replies()
                    try:
                        wire.check(code, info, "2xx")
                    except aioftp.StatusCodeError as exc:
                        if not last_try and _no_data_connection(exc):
                            # Made again with data after the 150, as in the cases here.
                            trait = "passive_ahead" if ahead and not started else None
                            self._learned(trait or "data_before_reply", False, exc)
                            continue
                        raise
                    return
                if not sent_all:
                    rest = _chain(held, offset, None if exhausted else blocks)
                    try:
                        async with wire.StallWatch(self.stall_timeout) as watch:
                            await wire.connected(sock)
                            await wire.send(sock, rest, watch)
                    except TimeoutError:
                        raise self._stalled(path) from None
            finally:
                sock.close()  # the end of an upload's data
            try:
                if ask_size and self.traits.size_behind_upload:
                    # Sent at the end of the data, without waiting for the final reply.
                    self.control.send(f"SIZE {path}")
                    _, (code, info), self.announced_size = await self._stor_replies(started=True)
                    wire.check(code, info, "2xx")
                else:
                    await self._final_reply(ask_ahead=False)
            except aioftp.StatusCodeError as exc:
                if sent_all and early and not last_try and _no_data_connection(exc):
                    self._learned("data_before_reply", False, exc)
                    continue  # the whole file is still held: once more, data after the 150
                raise
            return

    async def _plain_listing(
        self,
        line: str,
        path: str,
        receive: Callable[[socket.socket, wire.StallWatch], Awaitable[None]],
    ) -> None:
        """A listing (MLSD/LIST) over a fresh plain data connection, none of the per-file
        overlaps: listings are rare, and their data ends when the server closes it."""
        async with asyncio.timeout(self._command_timeout):
            sock, _ = await self._data_socket(fresh=True)
        try:
            async with asyncio.timeout(self._command_timeout):
                self.control.send(line)
                await self.control.reply("1xx")
            try:
                async with wire.StallWatch(self.stall_timeout) as watch:
                    await wire.connected(sock)
                    await receive(sock, watch)
            except TimeoutError:
                raise self._stalled(path) from None
        finally:
            sock.close()
        await self._final_reply(ask_ahead=False)

    async def _data_socket(self, *, fresh: bool = False) -> tuple[socket.socket, bool]:
        """A data socket whose connect has begun (see :func:`pools.wire.start_connect`), and
        whether its port was asked for ahead (a fresh EPSV or PASV otherwise)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not fresh and self._clock() - ahead[1] <= AHEAD_MAX_AGE_SECONDS:
            try:
                return self._start_data(ahead[0]), True
            except OSError as exc:
                self._learned("passive_ahead", False, exc)
        return self._start_data(await self._passive_port()), False

    async def _final_reply(self, *, ask_ahead: bool) -> None:
        """The transfer's final reply (2xx, else StatusCodeError). With ``ask_ahead`` (and the
        server allowing it) the next transfer's EPSV/PASV is sent first, without waiting for
        that reply: its answer is kept for the next transfer when it comes after the final reply
        and is a passive reply; anything else switches the trait off."""
        ask = ask_ahead and self.traits.passive_ahead
        if ask:
            self.control.send(self._passive)
        async with asyncio.timeout(self._command_timeout):
            code, info = await self.control.raw_reply()
            if not ask:
                wire.check(code, info, "2xx")
                return
            second, second_info = await self.control.raw_reply()
        if wire.is_passive_reply(second) and not wire.is_passive_reply(code):
            wire.check(code, info, "2xx")  # the usual order
            self._take_ahead(second, second_info)
            return
        # Out of order, or refused: the transfer's reply is the one that is not a passive reply
        # nor an answer to the passive command; the port is not used.
        self._learned("passive_ahead", False, [code, *info, second, *second_info])
        if wire.is_passive_reply(code):
            wire.check(second, second_info, "2xx")
        elif code.startswith("2"):
            pass  # transfer done; the passive command was refused after it
        else:
            # An error first: the passive command's refusal when the transfer's 2xx follows,
            # else the transfer's own failure.
            if not (second.startswith("2") and not wire.is_passive_reply(second)):
                wire.check(code, info, "2xx")

    async def _stor_replies(
        self, *, started: bool = False
    ) -> tuple[bool, tuple[str, list[str]], int | None]:
        """The replies to a STOR whose data has all been sent and to the SIZE sent right behind
        it, in whatever order they come (``started``: the STOR's 1xx was read already): whether
        the STOR got its 1xx, the STOR's outcome (its final reply, or its refusal), and the
        size when the SIZE was answered after that outcome (else None: ask again).

        A reply's code says whose it is (1xx and a 2xx other than 213: the STOR's; 213: the
        SIZE's), except an error: one before the 1xx and followed by it is the SIZE's; of two
        errors otherwise the first is the STOR's (the order the server read them in)."""
        replies: list[tuple[str, list[str]]] = []
        try:
            async with asyncio.timeout(self._command_timeout):
                replies += [await self.control.raw_reply(), await self.control.raw_reply()]
                if not started and any(code.startswith("1") for code, _ in replies):
                    replies.append(await self.control.raw_reply())
        except TimeoutError:
            if len(replies) >= 2:  # the SIZE read during the transfer and never answered
                self._learned("size_behind_upload", False, "no reply to a SIZE behind STOR")
            raise
        first = next((i for i, (code, _) in enumerate(replies) if code.startswith("1")), None)
        (a, ra), (b, rb) = [(i, r) for i, r in enumerate(replies) if i != first]
        stor_first = rb[0] == "213" or (ra[0] != "213" and ra[0].startswith("2"))
        size_first = ra[0] == "213" or rb[0].startswith("2")
        if not stor_first and (size_first or (first is not None and a < first)):
            # (the last case: two errors, the first of them before the 1xx)
            (stor, outcome), (asked, answer) = (b, rb), (a, ra)
        else:
            (stor, outcome), (asked, answer) = (a, ra), (b, rb)
        if asked < stor:
            self._learned("size_behind_upload", False, replies)
        trusted = answer[0] == "213" and asked > stor and outcome[0].startswith("2")
        size = _size_of("SIZE", answer[1]) if trusted else None
        self.size_refused = asked > stor and outcome[0].startswith("2") and answer[0] != "213"
        return started or first is not None, outcome, size

    async def _passive_port(self) -> int:
        try:
            info = await self.control.command(self._passive, "2xx")
        except aioftp.StatusCodeError as exc:
            if self._passive == "PASV" or not str(exc.received_codes[-1]).startswith("50"):
                raise
            self._passive = "PASV"  # no EPSV here (RFC 2428 is optional)
            info = await self.control.command(self._passive, "2xx")
        return wire.passive_port(self._passive, info)

    def _start_data(self, port: int) -> socket.socket:
        assert self._peer is not None
        family, peer = self._peer
        return wire.start_connect(family, (peer[0], port, *peer[2:]))

    def _take_ahead(self, code: str, info: list[str]) -> None:
        """Keep the port of a passive command sent ahead for the next transfer."""
        if wire.is_passive_reply(code):
            self._ahead = (wire.passive_port(self._passive, info), self._clock())
        else:
            self._learned("passive_ahead", False, [code, *info])

    def _learned(self, trait: str, value: bool, evidence: object) -> None:
        if getattr(self.traits, trait) == value:
            return
        setattr(self.traits, trait, value)
        log.info(
            "server_trait_learned",
            connection=self.connection.id,
            trait=trait,
            value=value,
            evidence=str(evidence)[:200],
        )

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

    async def transferred_size(self, path: str) -> int | None:
        """The size of ``path`` as the server reports it right after this session's last
        transfer of it: the one given with the transfer (``announced_size``: a 150 reply, or a
        SIZE sent with the RETR or behind the STOR's data), else asked now with :meth:`size`
        (MLST only, where the SIZE sent with the upload was refused)."""
        if self.announced_size is not None:
            return self.announced_size
        return await self.size(path, size_refused=self.size_refused)

    async def size(self, path: str, *, size_refused: bool = False) -> int | None:
        """The size of ``path`` in bytes from SIZE, else from MLST; None when the server
        answers neither (unsupported, or refused this time).

        Asked anew every time: a refusal says nothing about the next file (a server may answer
        one SIZE with 502 and the next with 213), so verification is never switched off.
        With ``size_refused`` (this file's SIZE was just refused) only MLST is asked.
        """

        async def body() -> int | None:
            asks = [(f"SIZE {path}", "213"), (f"MLST {path}", "250")]
            for command, expected in asks[1:] if size_refused else asks:
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
            # RNFR and RNTO in one write (and the next transfer's EPSV/PASV, see ServerTraits):
            # an RNTO after a refused RNFR is itself refused (503), so nothing is renamed then.
            ask = self.traits.passive_ahead and self._tls is None
            self.control.send(f"RNFR {source}", f"RNTO {target}", *([self._passive] if ask else []))
            rnfr = await self.control.raw_reply()
            rnto = await self.control.raw_reply()
            if ask:
                passive = await self.control.raw_reply()
                self._take_ahead(*passive)
            wire.check(*rnfr, "350")
            try:
                wire.check(*rnto, "2xx")
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
            self._ahead = None  # other commands come first: ask afresh
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
            levels = [
                str(level)
                for level in reversed((PurePosixPath(path), *PurePosixPath(path).parents))
                if str(level) not in ("/", ".")
            ]
            self.control.send(*(f"MKD {level}" for level in levels))  # one round trip for all
            failure: aioftp.StatusCodeError | None = None
            for _level in levels:
                code, info = await self.control.raw_reply()
                if code != "257" and not code.startswith("5") and failure is None:
                    failure = aioftp.StatusCodeError(Code("257"), Code(code), info)
            if failure is not None:
                raise failure

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

            transfer = self._plain_listing(line, path, receive)
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


def _no_data_connection(exc: aioftp.StatusCodeError) -> bool:
    """425 (no data connection) or 426 (it closed, transfer aborted)."""
    return any(str(code) in ("425", "426") for code in exc.received_codes)


def _send_now(sock: socket.socket, data: bytes) -> int:
    """As much of ``data`` as the socket takes without waiting (what does not fit is sent
    after the server's 150); errors are left for the replies to explain."""
    try:
        return sock.send(data)
    except OSError:  # BlockingIOError included
        return 0


async def _chain(
    held: list[bytes], offset: int, rest: AsyncIterator[bytes] | None
) -> AsyncIterator[bytes]:
    """The held blocks (the first from ``offset``), then the rest of the file."""
    for index, block in enumerate(held):
        block = block[offset:] if index == 0 else block
        if block:
            yield block
    if rest is not None:
        async for block in rest:
            yield block


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

"""The FTP exchanges of a transfer's hot path, spoken directly on the control connection's streams.

aioftp's ``command()`` runs each line through several wrapper layers (throttles, a timeout
decorator, code objects, debug logging); at thousands of small files per second that was most
of the session's CPU. Here a command is one write and one ``readline`` per reply line, with the
same outcomes aioftp has: :class:`aioftp.StatusCodeError` for an unexpected reply,
:class:`ConnectionResetError` when the server hung up. Login, TLS and everything else stay with
aioftp. Passive data connections without TLS are plain non-blocking sockets driven with the
event loop's ``sock_*`` calls (no transport, protocol and stream objects per file).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aioftp
from aioftp.common import Code

from models.errors import InvalidTask, ReplyTooLarge

# Bounds of one reply: far above any real server's (FEAT lists a few dozen lines), far below
# what would hurt the worker.
MAX_REPLY_LINES = 1000
MAX_REPLY_BYTES = 64 * 1024

_EPSV = re.compile(r"\((.)\1\1(\d+)\1\)")
_PASV = re.compile(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")
_ANNOUNCED = re.compile(r"\((\d+) bytes\)")


class ControlChannel:
    """Commands and replies over a logged-in control connection's reader and writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def command(self, line: str, expected: str) -> list[str]:
        """Send ``line``; return the reply's text lines when its code matches ``expected``
        (e.g. "229", "2xx"), else raise :class:`aioftp.StatusCodeError`."""
        self.send(line)
        return await self.reply(expected)

    def send(self, *lines: str) -> None:
        """Write commands in one go, their replies to be read later in the same order
        (pipelining: one round trip for all of them)."""
        for line in lines:
            if "\r" in line or "\n" in line:
                raise InvalidTask("a path sent to an FTP server must not contain CR or LF")
        self.writer.write("".join(line + "\r\n" for line in lines).encode())

    async def reply(self, expected: str) -> list[str]:
        """Read one (possibly multi-line) reply and check its code against ``expected``."""
        code, info = await self.raw_reply()
        return check(code, info, expected)

    async def raw_reply(self) -> tuple[str, list[str]]:
        """The next reply (code, text lines), whatever its code."""
        return await read_reply(self.reader.readline, self.writer.close)


def check(code: str, info: list[str], expected: str) -> list[str]:
    """``info`` when ``code`` matches ``expected``, else :class:`aioftp.StatusCodeError`."""
    if not _matches(code, expected):
        raise aioftp.StatusCodeError(Code(expected), Code(code), info)
    return info


async def read_reply(
    readline: Callable[[], Awaitable[bytes]], on_eof: Callable[[], object]
) -> tuple[str, list[str]]:
    """One reply as aioftp reads them (code, text lines), bounded in lines and bytes.

    A server sending endless ``150-`` continuation lines would otherwise grow the reply until
    the process runs out of memory long before any command timeout; beyond the bound the reply
    is abandoned with :class:`ReplyTooLarge` (the session is then closed). Bytes that are not
    UTF-8 (a Latin-1 server's message) are replaced, not fatal: replies are only read for their
    codes and shown in messages.
    """
    budget = [MAX_REPLY_BYTES]

    async def line() -> str:
        try:
            raw = await readline()
        except ValueError:  # StreamReader: a single line over its buffer limit
            raise ReplyTooLarge(f"server sent a reply line over {MAX_REPLY_BYTES} bytes") from None
        if not raw:
            on_eof()
            raise ConnectionResetError("the server closed the control connection")
        budget[0] -= len(raw)
        if budget[0] < 0:
            raise ReplyTooLarge(f"server sent a reply over {MAX_REPLY_BYTES} bytes")
        return raw.decode("utf-8", errors="replace").rstrip()

    text = await line()
    code, rest = text[:3], text[3:]
    info = [rest]
    current = code
    while rest.startswith("-") or not current.isdigit():
        if len(info) >= MAX_REPLY_LINES:
            raise ReplyTooLarge(f"server sent a reply of over {MAX_REPLY_LINES} lines")
        text = await line()
        current, rest = text[:3], text[3:]
        if current.isdigit():
            info.append(rest)
            if current != code:
                raise aioftp.StatusCodeError(Code(code), Code(current), info)
        else:
            info.append(text)
    return code, info


def _matches(code: str, mask: str) -> bool:
    """``mask`` like "229" or "2xx": digits must match, anything else matches any digit."""
    if len(code) != 3:
        return False
    return all(m == c or not m.isdigit() for m, c in zip(mask, code, strict=True))


def announced_size(info: list[str]) -> int | None:
    """The byte count a 150 reply announces ("... (4096 bytes)", vsftpd and others), if any."""
    match = _ANNOUNCED.search(" ".join(info))
    return int(match.group(1)) if match else None


def is_passive_reply(code: str) -> bool:
    """227 (PASV) or 229 (EPSV): never the final reply of a transfer."""
    return code in ("227", "229")


def passive_port(command: str, info: list[str]) -> int:
    """The data connection's port from a 229 (EPSV) or 227 (PASV) reply.

    The host is always the control connection's: EPSV names none, and PASV's address is not
    trusted (servers behind NAT announce private ones), as aioftp does by default.
    """
    text = info[-1]
    if command == "EPSV":
        match = _EPSV.search(text)
        if match is None:
            raise aioftp.StatusCodeError(Code("229"), Code("229"), info)
        return int(match.group(2))
    numbers = _PASV.search(text)
    if numbers is None:
        raise aioftp.StatusCodeError(Code("227"), Code("227"), info)
    return (int(numbers.group(5)) << 8) | int(numbers.group(6))


async def open_data_socket(family: int, address: tuple[Any, ...]) -> socket.socket:
    """A connected, non-blocking TCP socket to the server's passive port (an address of the
    control connection's family, so no name lookup per transfer)."""
    sock = start_connect(family, address)
    try:
        await connected(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def start_connect(family: int, address: tuple[Any, ...]) -> socket.socket:
    """A non-blocking socket whose connect to ``address`` has begun (or failed at once, e.g.
    refused on this host: then OSError). The caller may send the transfer command before the
    handshake is done (it then costs no round trip of its own) and awaits :func:`connected`
    before using the socket."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        error = sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            raise OSError(error, os.strerror(error))
    except BaseException:
        sock.close()
        raise
    return sock


async def connected(sock: socket.socket) -> None:
    """Until ``sock``'s connect has finished (at once when it already has); its error, if any,
    as OSError."""
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error == 0:
        try:
            sock.getpeername()
            return
        except OSError:
            pass  # still in progress
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(sock.fileno(), ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_writer(sock.fileno())
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


class StallWatch:
    """Fails a data transfer that moves no byte for ``seconds``, at the cost of a clock read
    per block: the deadline is pushed back only once a tenth of ``seconds`` has passed, so a
    stall is reported after 0.9 to 1.0 times ``seconds`` without progress."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._timeout = asyncio.timeout(seconds)
        self._pushed = self._loop.time()

    async def __aenter__(self) -> StallWatch:
        await self._timeout.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._timeout.__aexit__(*exc_info)

    def progress(self) -> None:
        now = self._loop.time()
        if now - self._pushed >= self.seconds * 0.1:
            self._pushed = now
            self._timeout.reschedule(now + self.seconds)


async def receive(
    sock: socket.socket,
    block_size: int,
    on_block: Callable[[bytes], Awaitable[None]],
    watch: StallWatch,
) -> None:
    """Read the data connection until the server closes it, passing on each block."""
    loop = asyncio.get_running_loop()
    while True:
        block = await loop.sock_recv(sock, block_size)
        if not block:
            return
        watch.progress()
        await on_block(block)


async def send(sock: socket.socket, blocks: AsyncIterator[bytes], watch: StallWatch) -> None:
    """Write every block to the data connection (the caller closes it to mark the end)."""
    loop = asyncio.get_running_loop()
    async for block in blocks:
        await loop.sock_sendall(sock, block)
        watch.progress()

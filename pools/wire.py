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
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aioftp
from aioftp.common import Code

_EPSV = re.compile(r"\((.)\1\1(\d+)\1\)")
_PASV = re.compile(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


class ControlChannel:
    """Commands and replies over a logged-in control connection's reader and writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def command(self, line: str, expected: str) -> list[str]:
        """Send ``line``; return the reply's text lines when its code matches ``expected``
        (e.g. "229", "2xx"), else raise :class:`aioftp.StatusCodeError`."""
        if "\r" in line or "\n" in line:
            raise aioftp.errors.InvalidCommand("Command must not contain CR/LF")
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply(expected)

    async def reply(self, expected: str) -> list[str]:
        """Read one (possibly multi-line) reply and check its code against ``expected``."""
        code, info = await self._read_reply()
        if not _matches(code, expected):
            raise aioftp.StatusCodeError(Code(expected), Code(code), info)
        return info

    async def _read_reply(self) -> tuple[str, list[str]]:
        line = await self._line()
        code, rest = line[:3], line[3:]
        info = [rest]
        current = code
        while rest.startswith("-") or not current.isdigit():  # as aioftp reads them
            line = await self._line()
            current, rest = line[:3], line[3:]
            if current.isdigit():
                info.append(rest)
                if current != code:
                    raise aioftp.StatusCodeError(Code(code), Code(current), info)
            else:
                info.append(line)
        return code, info

    async def _line(self) -> str:
        raw = await self.reader.readline()
        if not raw:
            self.writer.close()
            raise ConnectionResetError("the server closed the control connection")
        return raw.decode("utf-8").rstrip()


def _matches(code: str, mask: str) -> bool:
    """``mask`` like "229" or "2xx": digits must match, anything else matches any digit."""
    if len(code) != 3:
        return False
    return all(m == c or not m.isdigit() for m, c in zip(mask, code, strict=True))


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
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


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

"""A deliberately misbehaving FTP server for the tests: scripted replies per command.

A small asyncio FTP server on loopback (its own thread and event loop, so both in-process tests
and worker subprocesses can use it) that behaves like a normal passive-mode server with files held
in memory, until a test scripts a command: ``server.on("SIZE", reply(b"502 no SIZE today"))``
makes the next SIZE get that reply; behaviours are used once each, in order, then the command is
normal again. Behaviours: a fixed reply, an endless ``150-`` flood, a stall (no answer at all),
a download cut short after N bytes but still ended with 226, a preliminary reply with raw
(non-UTF-8) bytes, and a disconnect in the middle of a transfer.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[["_Session", str], Awaitable[None]]


@dataclass
class Behaviour:
    """One scripted answer to a command (see the module docstring)."""

    kind: str
    data: bytes = b""
    count: int = 0


def reply(line: bytes) -> Behaviour:
    """Answer with ``line`` (CRLF added) instead of the normal reply."""
    return Behaviour("reply", line)


def flood(line: bytes = b"150-" + b"x" * 70) -> Behaviour:
    """Send ``line`` as a reply continuation, over and over, until the client hangs up."""
    return Behaviour("flood", line)


def stall() -> Behaviour:
    """Never answer this command."""
    return Behaviour("stall")


def truncate(count: int) -> Behaviour:
    """RETR: send only the first ``count`` bytes, then close the data connection and say 226."""
    return Behaviour("truncate", count=count)


def preliminary(line: bytes) -> Behaviour:
    """RETR/STOR: use ``line`` (raw bytes, e.g. Latin-1) as the 150 reply, then carry on."""
    return Behaviour("preliminary", line)


def disconnect_after(count: int) -> Behaviour:
    """RETR: send ``count`` bytes, then drop both the data and the control connection."""
    return Behaviour("disconnect", count=count)


@dataclass
class _Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    data_server: asyncio.Server | None = None
    data_conn: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
    rename_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    async def send(self, line: bytes) -> None:
        self.writer.write(line + b"\r\n")
        await self.writer.drain()


class HostileFTPServer:
    """See the module docstring. ``files`` maps absolute paths to contents (STOR adds to it)."""

    def __init__(self, files: dict[str, bytes] | None = None, *, announce_size: bool = False):
        self.files: dict[str, bytes] = dict(files or {})
        self.announce_size = announce_size  # vsftpd-style "(N bytes)" in the 150 reply
        self.commands: list[str] = []
        self.port = 0
        self._script: dict[str, deque[Behaviour]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []  # closed at stop
        self.floods_sent = 0  # bytes sent by floods, to show one really ran

    # -- scripting -------------------------------------------------------------------------
    def on(self, command: str, *behaviours: Behaviour) -> HostileFTPServer:
        with self._lock:
            self._script[command.upper()].extend(behaviours)
        return self

    def _next(self, command: str) -> Behaviour | None:
        with self._lock:
            queue = self._script.get(command)
            return queue.popleft() if queue else None

    def seen(self, command: str) -> int:
        return sum(1 for line in list(self.commands) if line.split(" ")[0].upper() == command)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> HostileFTPServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in self._writers:
                writer.close()
            await asyncio.sleep(0)  # let the transports finish closing

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> HostileFTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the protocol ----------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(reader, writer)
        self._writers.append(writer)
        try:
            await session.send(b"220 hostile ftpd ready")
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append(line)
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                behaviour = self._next(verb)
                if behaviour is not None and await self._scripted(session, verb, arg, behaviour):
                    continue
                if not await self._normal(session, verb, arg, behaviour):
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if session.data_server is not None:
                session.data_server.close()

    async def _scripted(self, s: _Session, verb: str, arg: str, b: Behaviour) -> bool:
        """Handle a behaviour that replaces the command entirely; False to fall through."""
        if b.kind == "reply":
            await s.send(b.data)
            return True
        if b.kind == "stall":
            await asyncio.Event().wait()
        if b.kind == "flood":
            while True:
                s.writer.write(b.data + b"\r\n")
                self.floods_sent += len(b.data) + 2
                await s.writer.drain()
        return False  # truncate, preliminary, disconnect: RETR/STOR with a twist

    async def _normal(self, s: _Session, verb: str, arg: str, b: Behaviour | None) -> bool:
        if verb == "USER":
            await s.send(b"331 password please")
        elif verb == "PASS":
            await s.send(b"230 logged in")
        elif verb in ("TYPE", "MODE", "STRU", "PBSZ", "PROT", "OPTS"):
            await s.send(b"200 ok")
        elif verb == "NOOP":
            await s.send(b"200 noop")
        elif verb == "EPSV":
            port = await self._open_data(s)
            await s.send(f"229 Entering Extended Passive Mode (|||{port}|)".encode())
        elif verb == "PASV":
            port = await self._open_data(s)
            await s.send(f"227 Entering Passive Mode (127,0,0,1,{port >> 8},{port & 255})".encode())
        elif verb == "SIZE":
            if arg in self.files:
                await s.send(f"213 {len(self.files[arg])}".encode())
            else:
                await s.send(b"550 no such file")
        elif verb == "MLST":
            if arg in self.files:
                await s.send(b"250-Listing " + arg.encode())
                await s.send(f" type=file;size={len(self.files[arg])}; {arg}".encode())
                await s.send(b"250 End")
            else:
                await s.send(b"550 no such file")
        elif verb == "RETR":
            await self._retr(s, arg, b)
        elif verb == "STOR":
            await self._stor(s, arg, b)
        elif verb == "MKD":
            await s.send(b'257 "' + arg.encode() + b'" created')
        elif verb == "RNFR":
            s.rename_from = arg if arg in self.files else None
            await s.send(b"350 ready" if s.rename_from else b"550 no such file")
        elif verb == "RNTO":
            if s.rename_from is None:
                await s.send(b"503 RNFR first")
            else:
                self.files[arg] = self.files.pop(s.rename_from)
                s.rename_from = None
                await s.send(b"250 renamed")
        elif verb == "DELE":
            await s.send(b"250 deleted" if self.files.pop(arg, None) is not None else b"550 no")
        elif verb == "QUIT":
            await s.send(b"221 bye")
            return False
        else:
            await s.send(b"502 not implemented")
        return True

    async def _open_data(self, s: _Session) -> int:
        if s.data_server is not None:
            s.data_server.close()
        loop = asyncio.get_running_loop()
        s.data_conn = loop.create_future()
        conn = s.data_conn

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            if not conn.done():
                conn.set_result((reader, writer))

        s.data_server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        port: int = s.data_server.sockets[0].getsockname()[1]
        return port

    async def _data(self, s: _Session) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert s.data_conn is not None, "RETR/STOR without EPSV/PASV"
        reader_writer = await asyncio.wait_for(s.data_conn, 10)
        s.data_conn = None
        return reader_writer

    async def _retr(self, s: _Session, path: str, b: Behaviour | None) -> None:
        if path not in self.files:
            await s.send(b"550 no such file")
            return
        content = self.files[path]
        if b is not None and b.kind == "preliminary":
            await s.send(b.data)
        elif self.announce_size:
            await s.send(
                f"150 Opening BINARY mode data connection ({len(content)} bytes).".encode()
            )
        else:
            await s.send(b"150 Opening data connection")
        _, data = await self._data(s)
        if b is not None and b.kind in ("truncate", "disconnect"):
            content = content[: b.count]
        data.write(content)
        await data.drain()
        data.close()
        if b is not None and b.kind == "disconnect":
            s.writer.close()
            raise ConnectionResetError
        await s.send(b"226 Transfer complete")

    async def _stor(self, s: _Session, path: str, b: Behaviour | None) -> None:
        if b is not None and b.kind == "preliminary":
            await s.send(b.data)
        else:
            await s.send(b"150 Ok to send data")
        reader, data = await self._data(s)
        self.files[path] = await reader.read()
        data.close()
        await s.send(b"226 Transfer complete")

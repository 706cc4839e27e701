"""A user-space TCP proxy in front of an FTP server that delays every chunk by a fixed one-way
time, both ways, on the control connection and on every passive data connection, and counts what
each client says.

    python -m benchmarks.latency --upstream 127.0.0.1:2121 --delay-ms 5   # prints its port

Passive replies (227, 229) are rewritten to a listener of the proxy, which connects on to the
server's data port, so data connections pay the same delay. Order is kept per direction, and so
are half-closes (an EOF is delivered after the bytes before it): a server that waits for the
client to close the data connection before its 226 (vsftpd) pays that round trip here as well.
Connection set-up is one one-way delay (the proxy completes the client's handshake itself and
connects on after the delay), half a round trip less than a real network costs: the same for every
client.

On the control connection it counts each command (by verb) and the client's *turns*: a turn is
the client speaking after the server has spoken, so commands sent together count once; and the
client's *think time*: from the moment a reply reached the client to its next command (its own
work between round trips, summed over turns). It reads
``stats`` or ``reset`` lines on standard input and answers each with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
from collections import Counter, deque
from pathlib import Path
from typing import Any

HIGH_WATER = 4 * 2**20  # bytes queued for one direction before its reader is paused
LOW_WATER = 1 * 2**20
UNUSED_LISTENER_SECONDS = 120.0

_PASV_227 = re.compile(rb"^227 (.*?)(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)(.*)$", re.DOTALL)
_EPSV_229 = re.compile(rb"^229 (.*?)\((.)\2\2(\d+)\2\)(.*)$", re.DOTALL)


class Stats:
    """What the clients did since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.commands: Counter[str] = Counter()
        self.turns = 0
        self.think_seconds = 0.0
        self.control_connections = 0
        self.data_connections = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "commands": dict(self.commands),
            "commands_total": sum(self.commands.values()),
            "turns": self.turns,
            "think_seconds": round(self.think_seconds, 3),
            "control_connections": self.control_connections,
            "data_connections": self.data_connections,
        }


class Side(asyncio.Protocol):
    """One socket of a proxied connection. What it reads is handed to its ``peer`` side, which
    writes it ``delay`` seconds later, in order."""

    def __init__(self, link: Link, name: str) -> None:
        self.link = link
        self.name = name
        self.peer: Side | None = None
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[float, bytes | None]] = deque()  # None: end of stream
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.write_paused = False
        self.read_paused = False
        self.eof_sent = False
        self.got_eof = False

    # -- reading -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.flush()

    def data_received(self, data: bytes) -> None:
        data = self.link.inspect(self, data)
        if data and self.peer is not None:
            self.peer.enqueue(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        if self.peer is not None:
            self.peer.enqueue(None)
        return True  # keep the other direction open (a half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.got_eof and self.peer is not None:
            self.peer.enqueue(None)
        self.link.side_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.peer is not None:
            self.peer.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.peer is not None and self.queued < LOW_WATER:
            self.peer.resume()

    def pause(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    # -- writing, late -------------------------------------------------------------------------
    def enqueue(self, data: bytes | None) -> None:
        loop = self.link.loop
        if not self.queue and self.link.delay == 0 and self.transport is not None:
            self.deliver(data)
            return
        self.queue.append((loop.time() + self.link.delay, data))
        self.queued += len(data or b"")
        if self.queued > HIGH_WATER and self.peer is not None:
            self.peer.pause()
        if self.timer is None:
            self.timer = loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        self.timer = None
        if self.transport is None:
            return  # not connected yet (connection_made flushes) or gone
        now = self.link.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _when, data = self.queue.popleft()
            self.queued -= len(data or b"")
            self.deliver(data)
            if self.transport is None:
                return
        if self.queue:
            self.timer = self.link.loop.call_at(self.queue[0][0], self.flush)
        if self.queued < LOW_WATER and not self.write_paused and self.peer is not None:
            self.peer.resume()

    def deliver(self, data: bytes | None) -> None:
        assert self.transport is not None
        if self is self.link.client:
            self.link.delivered_at = self.link.loop.time()
        if data is not None:
            self.transport.write(data)
            return
        self.eof_sent = True
        if self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:  # the other end has gone already (a reset): nothing to half-close
                self.transport.close()
                return
        if self.got_eof or self.peer is None or self.peer.transport is None:
            self.transport.close()


class Link:
    """A client connection and its connection to the server; control links are parsed."""

    def __init__(self, proxy: Proxy, control: bool) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.delay = proxy.delay
        self.control = control
        self.client = Side(self, "client")
        self.server = Side(self, "server")
        self.client.peer, self.server.peer = self.server, self.client
        self._lines = b""  # the client's unfinished command line
        self._replies = b""  # the server's unfinished reply line
        self._server_spoke = True  # the banner comes first: the first command is a turn
        self.delivered_at = self.loop.time()  # when the client last got bytes from the server

    def inspect(self, side: Side, data: bytes) -> bytes:
        """Count commands; rewrite passive replies (only whole reply lines are passed on)."""
        if not self.control:
            return data
        stats = self.proxy.stats
        if side is self.client:
            if self._server_spoke:
                stats.turns += 1
                # The client's own time before it answered (its work, not the network's).
                stats.think_seconds += self.loop.time() - self.delivered_at
                self._server_spoke = False
            self._lines += data
            *lines, self._lines = self._lines.split(b"\n")
            for line in lines:
                verb = line.strip().split(b" ", 1)[0].upper()
                stats.commands[verb.decode("ascii", "replace") or "?"] += 1
            return data
        self._server_spoke = True
        self._replies += data
        if b"\n" not in self._replies:
            return b""
        complete, _, self._replies = self._replies.rpartition(b"\n")
        out = []
        for line in complete.split(b"\n"):
            out.append(self.proxy.rewrite_passive(line))
        return b"\n".join(out) + b"\n"

    def side_lost(self) -> None:
        for side in (self.client, self.server):
            if side.transport is not None and not side.queue and side.eof_sent:
                side.transport.close()


class Proxy:
    """The listener in front of the server, and a listener per passive reply."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.stats = Stats()
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Future[Any]] = set()

    async def start(self, port: int = 0) -> int:
        server = await self.loop.create_server(
            lambda: self._accept(self.upstream, control=True), "127.0.0.1", port
        )
        return int(server.sockets[0].getsockname()[1])

    def _accept(self, target: tuple[str, int], control: bool) -> Side:
        link = Link(self, control)
        if control:
            self.stats.control_connections += 1
        else:
            self.stats.data_connections += 1
        self._spawn(self._connect(link, target))
        return link.client

    async def _connect(self, link: Link, target: tuple[str, int]) -> None:
        await asyncio.sleep(self.delay)  # the handshake's way there
        try:
            await self.loop.create_connection(lambda: link.server, *target)
        except OSError:
            if link.client.transport is not None:
                link.client.transport.abort()

    def rewrite_passive(self, line: bytes) -> bytes:
        """A 227/229 naming the server's data port, pointed at a new listener of ours."""
        epsv = _EPSV_229.match(line)
        pasv = None if epsv else _PASV_227.match(line)
        if epsv is None and pasv is None:
            return line
        if epsv is not None:
            port = int(epsv.group(3))
        else:
            assert pasv is not None
            port = (int(pasv.group(6)) << 8) | int(pasv.group(7))
        mine = self._listen((self.upstream[0], port))
        if epsv is not None:
            d = epsv.group(2)
            return b"229 %s(%s%s%s%d%s)%s" % (epsv.group(1), d, d, d, mine, d, epsv.group(4))
        assert pasv is not None
        tail = pasv.group(8)
        return b"227 %s127,0,0,1,%d,%d%s" % (pasv.group(1), mine >> 8, mine & 255, tail)

    def _listen(self, target: tuple[str, int]) -> int:
        """A listening socket now (its port goes into the reply), served once."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = int(sock.getsockname()[1])
        self._spawn(self._serve_once(sock, target))
        return port

    async def _serve_once(self, sock: socket.socket, target: tuple[str, int]) -> None:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(UNUSED_LISTENER_SECONDS):
                conn, _ = await self.loop.sock_accept(sock)
        except TimeoutError:
            return
        finally:
            sock.close()
        await self.loop.connect_accepted_socket(lambda: self._accept(target, control=False), conn)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def serve(upstream: tuple[str, int], delay_ms: float, port: int) -> None:
    proxy = Proxy(upstream, delay_ms / 1000)
    listening = await proxy.start(port)
    print(json.dumps({"port": listening}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        word = line.strip().decode()
        snapshot = proxy.stats.snapshot()
        if word == "reset":
            proxy.stats.reset()
        print(json.dumps(snapshot), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstream", required=True, help="host:port of the FTP server")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    asyncio.run(serve((host, int(port)), args.delay_ms, args.port))


class LatencyProxy:
    """The proxy as a process of its own (its CPU is not the bench's), driven from the bench."""

    def __init__(self, upstream: tuple[str, int], delay_ms: float) -> None:
        self.delay_ms = delay_ms
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.latency",
                "--upstream",
                f"{upstream[0]}:{upstream[1]}",
                "--delay-ms",
                str(delay_ms),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(json.loads(self.process.stdout.readline())["port"])

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """Counts since the last reset (and reset them when asked)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("reset\n" if reset else "stats\n")
        self.process.stdin.flush()
        return dict(json.loads(self.process.stdout.readline()))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


if __name__ == "__main__":
    main()

"""The hot-path FTP exchanges (pools.wire) against a scripted server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import aioftp
import pytest

from models.connections import FtpConnection
from models.errors import InvalidTask, TransferIOError
from pools import wire
from pools.session import FTPSession


async def scripted_server(replies: list[bytes]) -> tuple[asyncio.Server, list[bytes]]:
    """A server that answers each received line with the next scripted reply (raw bytes)."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            line = await reader.readline()
            if not line:
                break
            received.append(line)
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, received


@asynccontextmanager
async def channel_to(server: asyncio.Server) -> AsyncIterator[wire.ControlChannel]:
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield wire.ControlChannel(reader, writer)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_command_returns_its_reply_text_when_the_code_matches() -> None:
    server, received = await scripted_server([b"213 4096\r\n", b"229 Entering (|||40123|)\r\n"])
    async with server, channel_to(server) as control:
        assert await control.command("SIZE /a b.txt", "213") == [" 4096"]
        info = await control.command("EPSV", "2xx")
        assert wire.passive_port("EPSV", info) == 40123
    assert received == [b"SIZE /a b.txt\r\n", b"EPSV\r\n"]


async def test_a_multi_line_reply_is_read_to_its_last_line() -> None:
    reply = b"211-Features:\r\n SIZE\r\n 211-looks like an end but is indented\r\n211 End\r\n"
    server, _ = await scripted_server([reply, b"200 ok\r\n"])
    async with server, channel_to(server) as control:
        info = await control.command("FEAT", "211")
        assert info == ["-Features:", " SIZE", " 211-looks like an end but is indented", " End"]
        # the next reply is read in step: nothing of the first was left behind
        assert await control.command("NOOP", "200") == [" ok"]


async def test_an_unexpected_code_raises_status_code_error_with_the_reply() -> None:
    server, _ = await scripted_server([b"550 No such file or directory.\r\n"])
    async with server, channel_to(server) as control:
        with pytest.raises(aioftp.StatusCodeError) as caught:
            await control.command("RETR /missing", "1xx")
    assert [str(code) for code in caught.value.received_codes] == ["550"]
    assert caught.value.info == [" No such file or directory."]


async def test_a_server_that_hangs_up_raises_connection_reset() -> None:
    server, _ = await scripted_server([])  # closes without a word
    async with server, channel_to(server) as control:
        with pytest.raises(ConnectionResetError):
            await control.command("NOOP", "200")


def test_a_command_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    control = wire.ControlChannel(None, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidTask):  # the task's fault: INVALID_TASK, not UNKNOWN_ERROR
        asyncio.run(control.command("RETR a\r\nDELE b", "1xx"))


def test_passive_ports_are_read_from_pasv_replies_and_bad_replies_fail() -> None:
    info = ["Entering Passive Mode (10,0,0,7,156,64)."]
    assert wire.passive_port("PASV", info) == 156 * 256 + 64
    with pytest.raises(aioftp.StatusCodeError):
        wire.passive_port("PASV", ["Entering Passive Mode."])
    with pytest.raises(aioftp.StatusCodeError):
        wire.passive_port("EPSV", ["Entering Extended Passive Mode"])


async def test_data_is_received_until_the_server_closes_and_sent_whole() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    uploaded = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(1)
        if first == b"D":  # download: send the payload and close
            writer.write(payload)
            await writer.drain()
        else:  # upload: read until the client closes
            uploaded.extend(first + await reader.read())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = server.sockets[0].getsockname()
    async with server:
        sock = await wire.open_data_socket(socket.AF_INET, address)
        received = bytearray()

        async def keep(block: bytes) -> None:
            received.extend(block)

        await asyncio.get_running_loop().sock_sendall(sock, b"D")
        async with wire.StallWatch(5) as watch:
            await wire.receive(sock, 64 * 1024, keep, watch)
        sock.close()
        assert received == payload

        async def blocks() -> AsyncIterator[bytes]:
            yield b"U"
            for start in range(0, len(payload), 100_000):
                yield payload[start : start + 100_000]

        sock = await wire.open_data_socket(socket.AF_INET, address)
        async with wire.StallWatch(5) as watch:
            await wire.send(sock, blocks(), watch)
        sock.close()
        for _ in range(100):
            if len(uploaded) == len(payload) + 1:
                break
            await asyncio.sleep(0.02)
        assert uploaded == b"U" + payload


async def test_a_data_connection_that_moves_nothing_times_out_after_the_stall_limit() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until the client gives up
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        sock = await wire.open_data_socket(socket.AF_INET, server.sockets[0].getsockname())
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def ignore(block: bytes) -> None:
            pass

        with pytest.raises(TimeoutError):
            async with wire.StallWatch(0.3) as watch:
                await wire.receive(sock, 1024, ignore, watch)
        sock.close()
        assert 0.25 <= loop.time() - started < 2


async def test_progress_pushes_the_stall_deadline_back() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with wire.StallWatch(0.3) as watch:
        for _ in range(10):  # 0.6 s in all, never 0.3 s without progress
            await asyncio.sleep(0.06)
            watch.progress()
    assert loop.time() - started >= 0.55


async def test_a_session_whose_data_connection_goes_silent_fails_as_stalled_and_is_not_reused() -> (
    None
):
    """FTPSession over a scripted server that answers RETR with 150 and then sends nothing."""
    data_peers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data_peers.append(writer)
        await reader.read()  # until the client closes its end
        writer.close()

    data_server = await asyncio.start_server(hold, "127.0.0.1", 0)
    data_port = data_server.sockets[0].getsockname()[1]
    replies = {
        "USER": "331 password please",
        "PASS": "230 logged in",
        "TYPE": "200 binary",
        "EPSV": f"229 Entering Extended Passive Mode (|||{data_port}|)",
        "RETR": "150 here it comes (it does not)",
    }

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        while line := await reader.readline():
            verb = line.decode().split()[0].upper()
            writer.write(replies.get(verb, "502 not here").encode() + b"\r\n")
        writer.close()

    control_server = await asyncio.start_server(control, "127.0.0.1", 0)
    port = control_server.sockets[0].getsockname()[1]
    connection = FtpConnection(id="silent", host="127.0.0.1", port=port, user="u", password="p")
    session = FTPSession(
        connection, connect_timeout=5, command_timeout=5, block_size=65536, stall_timeout=0.3
    )
    received: list[bytes] = []

    async def keep(block: bytes) -> None:
        received.append(block)

    async with control_server, data_server:
        await session.connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransferIOError, match="stalled: no bytes moved for 0 s") as caught:
            await session.retrieve("/big.bin", keep)
        assert 0.25 <= loop.time() - started < 3
        assert caught.value.retryable
        assert session.is_broken and received == [] and len(data_peers) == 1
        await session.aclose()

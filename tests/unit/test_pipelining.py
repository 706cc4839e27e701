"""Round-trip savings of FTPSession (ServerTraits) against a scripted server: the transfer's own
outcome always decides, and a server that answers out of order switches the saving off."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from models.connections import FtpConnection
from models.errors import FtpPoolerError
from pools.session import FTPSession

PAYLOAD = b"x" * 5000
_ids = itertools.count()


@asynccontextmanager
async def scripted(after_data: bytes, rename: bytes = b"") -> AsyncIterator[tuple[int, list[str]]]:
    """An FTP server whose RETR sends PAYLOAD; the line the client sends after the data has
    ended (the EPSV asked ahead) is answered with ``after_data`` (raw replies, any order)."""
    heard: list[str] = []

    async def data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(PAYLOAD)
        await writer.drain()
        writer.close()

    data_server = await asyncio.start_server(data, "127.0.0.1", 0)
    port = data_server.sockets[0].getsockname()[1]
    passive = f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode()

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await converse(reader, writer)
        finally:
            writer.close()

    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        retr_done = False
        while line := await reader.readline():
            text = line.decode().strip()
            heard.append(text)
            verb = text.split()[0].upper()
            if retr_done and verb == "EPSV":
                writer.write(after_data)
                retr_done = False
            elif verb == "RETR":
                writer.write(f"150 Opening ({len(PAYLOAD)} bytes)\r\n".encode())
                retr_done = True
            elif verb == "RNFR":
                writer.write(rename)
            else:
                reply = {
                    "USER": b"331 pw\r\n",
                    "PASS": b"230 in\r\n",
                    "TYPE": b"200 ok\r\n",
                    "QUIT": b"221 bye\r\n",
                }
                writer.write(reply.get(verb, passive if verb == "EPSV" else b""))
            await writer.drain()

    control_server = await asyncio.start_server(control, "127.0.0.1", 0)
    async with data_server, control_server:
        yield control_server.sockets[0].getsockname()[1], heard


async def session_on(port: int) -> FTPSession:
    connection = FtpConnection(
        id=f"pipelining-{next(_ids)}", host="127.0.0.1", port=port, user="u", password="p"
    )
    session = FTPSession(connection, connect_timeout=5, command_timeout=5, block_size=4096)
    await session.connect()
    return session


async def download(session: FTPSession) -> bytes:
    received = bytearray()

    async def keep(block: bytes) -> None:
        received.extend(block)

    await session.retrieve("/a.bin", keep)
    return bytes(received)


async def test_the_usual_order_keeps_the_port_asked_ahead_for_the_next_transfer():
    """226 then 229: the transfer is done and the next one needs no EPSV round trip."""
    async with scripted(b"226 done\r\n229 (|||4242|)\r\n") as (port, heard):
        session = await session_on(port)
        assert await download(session) == PAYLOAD
        assert session.announced_size == len(PAYLOAD)
        assert session.traits.passive_ahead
        assert session._ahead is not None and session._ahead[0] == 4242
        await session.aclose()
    assert heard[-2:] == ["EPSV", "QUIT"]


async def test_a_passive_reply_before_the_transfer_reply_switches_asking_ahead_off():
    """229 before 226: the transfer still succeeds, the port is not used, the trait goes off."""
    async with scripted(b"229 (|||4242|)\r\n226 done\r\n") as (port, _heard):
        session = await session_on(port)
        assert await download(session) == PAYLOAD
        assert not session.traits.passive_ahead
        assert session._ahead is None
        assert session.is_connected
        await session.aclose()


async def test_a_refused_ahead_command_does_not_fail_a_finished_transfer():
    """The EPSV asked ahead refused before the 226 comes: the transfer is still a success."""
    async with scripted(b"500 not now\r\n226 done\r\n") as (port, _heard):
        session = await session_on(port)
        assert await download(session) == PAYLOAD
        assert not session.traits.passive_ahead
        await session.aclose()


async def test_a_failed_transfer_is_reported_even_when_asked_ahead():
    """426 then 229: the transfer's failure stands, whatever the passive command got."""
    async with scripted(b"426 aborted\r\n229 (|||4242|)\r\n") as (port, _heard):
        session = await session_on(port)
        with pytest.raises(FtpPoolerError):
            await download(session)
        assert session.is_broken
        await session.aclose()


async def test_a_refused_rnfr_fails_the_rename_though_rnto_was_sent_with_it():
    """RNFR and RNTO go together; a refused RNFR (RNTO then gets 503) is the rename's error."""
    replies = b"550 no such file\r\n503 RNFR first\r\n229 (|||4242|)\r\n"
    async with scripted(b"", rename=replies) as (port, heard):
        session = await session_on(port)
        with pytest.raises(FtpPoolerError) as caught:
            await session.rename("/t.tmp", "/t.bin")
        assert "550" in caught.value.message
        assert "RNTO /t.bin" in heard  # pipelined: sent before the RNFR reply came
        await session.aclose()

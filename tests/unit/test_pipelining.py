"""Round-trip savings of FTPSession (ServerTraits) against a scripted server: the transfer's own
outcome always decides, and a server that answers out of order switches the saving off."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from models.connections import FtpConnection
from models.errors import FtpPoolerError
from pools.session import FTPSession

PAYLOAD = b"x" * 5000
_ids = itertools.count()
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# What every scripted server answers alike (the login, TYPE, QUIT).
ROUTINE = {
    "USER": b"331 pw\r\n",
    "PASS": b"230 in\r\n",
    "TYPE": b"200 ok\r\n",
    "QUIT": b"221 bye\r\n",
}


@asynccontextmanager
async def listening(
    data: Handler, converse: Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Any]
) -> AsyncIterator[int]:
    """A data listener serving ``data`` and a control listener that greets, then hands each
    connection to ``converse`` with the 229 reply naming the data port; yields that port."""
    data_server = await asyncio.start_server(data, "127.0.0.1", 0)
    port = data_server.sockets[0].getsockname()[1]
    passive = f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode()

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        try:
            await converse(reader, writer, passive)
        finally:
            writer.close()

    control_server = await asyncio.start_server(control, "127.0.0.1", 0)
    async with data_server, control_server:
        yield control_server.sockets[0].getsockname()[1]


@asynccontextmanager
async def scripted(after_data: bytes, rename: bytes = b"") -> AsyncIterator[tuple[int, list[str]]]:
    """An FTP server whose RETR sends PAYLOAD; the line the client sends after the data has
    ended (the EPSV asked ahead) is answered with ``after_data`` (raw replies, any order)."""
    heard: list[str] = []

    async def data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(PAYLOAD)
        await writer.drain()
        writer.close()

    async def converse(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, passive: bytes
    ) -> None:
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
                writer.write(ROUTINE.get(verb, passive if verb == "EPSV" else b""))
            await writer.drain()

    async with listening(data, converse) as port:
        yield port, heard


async def session_on(port: int, command_timeout: float = 5) -> FTPSession:
    connection = FtpConnection(
        id=f"pipelining-{next(_ids)}", host="127.0.0.1", port=port, user="u", password="p"
    )
    session = FTPSession(
        connection, connect_timeout=5, command_timeout=command_timeout, block_size=4096
    )
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


@asynccontextmanager
async def scripted_upload(
    after_data: bytes,
    *,
    read_ahead: bool = False,
    size_behind: bool = True,
    preliminary: bytes = b"150 go ahead\r\n",
) -> AsyncIterator[tuple[int, list[str], bytearray]]:
    """An FTP server taking one STOR. Once the upload's data has ended it reads the client's
    next line (the SIZE sent behind the data) and answers with ``after_data`` (raw replies,
    any order). With ``read_ahead`` it reads that line before the data has ended, as a server
    that reads commands during a transfer does; without ``size_behind`` it reads none. STOR
    is answered with ``preliminary`` at once (empty: nothing but ``after_data``)."""
    heard: list[str] = []
    stored = bytearray()
    data_ended = asyncio.Event()

    async def data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stored.extend(await reader.read())
        data_ended.set()
        writer.close()

    async def next_line(reader: asyncio.StreamReader) -> str:
        text = (await reader.readline()).decode().strip()
        heard.append(text)
        return text

    async def converse(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, passive: bytes
    ) -> None:
        while text := await next_line(reader):
            verb = text.split()[0].upper()
            if verb == "STOR":
                writer.write(preliminary)
                await writer.drain()
                if size_behind and read_ahead:
                    await next_line(reader)
                await asyncio.wait_for(data_ended.wait(), 5)
                if size_behind and not read_ahead:
                    await next_line(reader)
                writer.write(after_data)
            elif verb == "SIZE":
                writer.write(b"213 %d\r\n" % len(stored))
            else:
                writer.write(ROUTINE.get(verb, passive if verb == "EPSV" else b""))
            await writer.drain()

    async with listening(data, converse) as port:
        yield port, heard, stored


async def upload(session: FTPSession, count: int = 1) -> None:
    async def blocks() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield PAYLOAD

    await session.store("/up.tmp", blocks(), ask_size=True)


async def test_an_upload_size_answered_after_its_226_is_taken_without_another_round_trip():
    """226 then 213: the SIZE went out with the end of the data, and its answer is used."""
    async with scripted_upload(b"226 done\r\n213 5000\r\n") as (port, heard, stored):
        session = await session_on(port)
        await upload(session)
        assert bytes(stored) == PAYLOAD
        assert session.announced_size == 5000
        assert session.traits.size_behind_upload
        await session.aclose()
    assert heard[-2:] == ["SIZE /up.tmp", "QUIT"]  # one SIZE, no second one


async def test_an_upload_size_answered_before_its_226_is_not_trusted():
    """213 before 226: the size may predate the upload's end: not used, the trait goes off."""
    async with scripted_upload(b"213 4096\r\n226 done\r\n", read_ahead=True) as (port, _, _s):
        session = await session_on(port)
        await upload(session)
        assert session.announced_size is None  # the caller asks SIZE again
        assert not session.traits.size_behind_upload
        assert session.is_connected
        await session.aclose()


async def test_a_size_refused_during_the_upload_does_not_fail_it():
    """Pure-FTPd's way: 500 for the SIZE read mid-transfer, then 226: a success, size unknown."""
    async with scripted_upload(b"500 Unknown command\r\n226 done\r\n", read_ahead=True) as (
        port,
        _heard,
        _stored,
    ):
        session = await session_on(port)
        await upload(session)
        assert session.announced_size is None
        assert not session.traits.size_behind_upload
        await session.aclose()


@pytest.mark.parametrize(
    "replies",
    [b"451 disk trouble\r\n213 4096\r\n", b"213 4096\r\n451 disk trouble\r\n"],
    ids=["in order", "size first"],
)
async def test_a_failed_upload_fails_whatever_its_size_reply_says(replies):
    """The transfer's own failure stands in either order; a 213 is never taken for its 2xx."""
    async with scripted_upload(replies, read_ahead=replies.startswith(b"213")) as (
        port,
        _heard,
        _stored,
    ):
        session = await session_on(port)
        with pytest.raises(FtpPoolerError) as caught:
            await upload(session)
        assert "451" in caught.value.message
        assert session.announced_size is None
        await session.aclose()


async def test_the_server_sees_the_size_behind_only_when_a_size_is_wanted():
    """Without ``ask_size`` (verification off) no SIZE is sent at all."""
    async with scripted_upload(b"226 done\r\n", size_behind=False) as (port, heard, _stored):
        session = await session_on(port)

        async def blocks() -> AsyncIterator[bytes]:
            yield PAYLOAD

        await asyncio.wait_for(session.store("/up.tmp", blocks()), 5)
        assert session.announced_size is None
        await session.aclose()
    assert not any(line.startswith("SIZE") for line in heard)


async def test_a_size_behind_an_upload_that_is_never_answered_fails_it_once_then_goes_off():
    """A server that swallows the SIZE it read during the transfer: that upload times out (its
    session is not reused) and the saving is off for the server's next uploads."""
    async with scripted_upload(b"226 done\r\n") as (port, _heard, _stored):
        session = await session_on(port, command_timeout=0.5)
        with pytest.raises(FtpPoolerError):
            await upload(session)
        assert not session.traits.size_behind_upload
        assert session.is_broken
        await session.aclose()


async def test_a_size_refused_before_the_150_does_not_fail_the_upload():
    """500 (the SIZE, read first), 150, 226: the error was the SIZE's, the upload a success."""
    after = b"500 Unknown command\r\n150 go ahead\r\n226 done\r\n"
    async with scripted_upload(after, preliminary=b"") as (port, _heard, stored):
        session = await session_on(port)
        await upload(session)
        assert bytes(stored) == PAYLOAD
        assert session.announced_size is None
        assert not session.traits.size_behind_upload
        await session.aclose()


async def test_a_refused_stor_fails_with_its_own_reply_not_its_sizes():
    """553 (the STOR), then 550 (the SIZE of a file that is not there): the 553 is reported."""
    after = b"553 Not allowed\r\n550 No such file\r\n"
    async with scripted_upload(after, preliminary=b"") as (port, _heard, _stored):
        session = await session_on(port)
        with pytest.raises(FtpPoolerError) as caught:
            await upload(session)
        assert "553" in caught.value.message
        await session.aclose()


async def test_an_upload_streamed_after_its_150_sends_its_size_as_its_data_ends():
    """Three blocks (data after the 150): the SIZE goes out at the end of the data, before
    the 226, and one answer after the 226 is enough."""
    async with scripted_upload(b"226 done\r\n213 15000\r\n") as (port, heard, stored):
        session = await session_on(port)
        await upload(session, count=3)
        assert len(stored) == 15000
        assert session.announced_size == 15000
        assert session.traits.size_behind_upload
        await session.aclose()
    assert [line for line in heard if line.startswith("SIZE")] == ["SIZE /up.tmp"]


async def test_a_size_refused_after_the_226_keeps_the_saving_and_says_so():
    """226 then 502: the upload succeeded, this SIZE was refused (the caller asks MLST, not SIZE
    again), and the saving stays on: the refusal came in order."""
    async with scripted_upload(b"226 done\r\n502 SIZE not here\r\n") as (port, _heard, _stored):
        session = await session_on(port)
        await upload(session)
        assert session.announced_size is None
        assert session.size_refused
        assert session.traits.size_behind_upload
        await session.aclose()

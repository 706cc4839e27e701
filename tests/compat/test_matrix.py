"""The server x feature matrix: FTP Pooler's transfer flow against real servers, plain and FTPS.

Each test drives the real :class:`TransferRunner` over a real :class:`SessionPoolManager` of
:class:`FTPSession` s (no Kafka), so uploads go through the temporary name and the rename, with
SIZE verification, exactly as in a worker. Each test is one matrix cell (see conftest.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agents.transfer.runner import TransferRunner
from models.connections import LocalConnection, Registry
from models.result import TransferResult
from models.task import TransferTask
from pools.client import FtpClient
from pools.manager import SessionPoolManager
from pools.session import FTPSession
from tests.compat.servers import PASSWORD, SESSION_LIMIT, TLS_VARIANTS, VARIANTS, Server

pytestmark = pytest.mark.timeout(120)

ALL = list(VARIANTS)
BIG = 50 * 1024 * 1024
UNICODE_DIR = "/dir with spaces/ünïcödé 日本語"
UNICODE_NAME = "naïve résumé – 計画 ✓ #1.txt"  # noqa: RUF001  # the en dash is the point


class Rig:
    """A registry of one remote and one local connection, its pool and the transfer runner."""

    def __init__(self, server: Server, storage: Path, cap: int = 2, **overrides: object) -> None:
        self.server = server
        self.storage = storage
        self.connection = server.connection("remote", **overrides)
        self.registry = Registry(
            {"remote": self.connection, "local": LocalConnection("local", storage)}
        )
        self.manager: SessionPoolManager[FTPSession] = SessionPoolManager(
            max_sessions_per_pod=100,
            acquire_timeout=60,
            session_timeout=300,
            health_check_idle=30,
            pushback_cooldown=60,
        )
        self.sessions: list[FTPSession] = []
        self.pool = self.manager.add_pool("remote", cap, self._new_session)
        self.runner = TransferRunner(
            self.registry, self.manager, worker_id="compat", block_size=1 << 20, max_duration=120
        )
        self._seq = 0

    def _new_session(self) -> FTPSession:
        session = FTPSession(
            self.connection,
            connect_timeout=5,
            command_timeout=20,
            block_size=1 << 20,
            stall_timeout=30,
        )
        self.sessions.append(session)
        return session

    async def __aenter__(self) -> Rig:
        await self.manager.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.stop()

    async def run(self, src_id: str, src: str, dst_id: str, dst: str) -> TransferResult:
        self._seq += 1
        task = TransferTask(
            task_id=f"t{self._seq}", src_id=src_id, src_path=src, dst_id=dst_id, dst_path=dst
        )
        result = await self.runner.run(task)
        assert PASSWORD not in str(result.asdict())
        return result

    async def download(self, remote: str, local: str) -> TransferResult:
        return await self.run("remote", remote, "local", local)

    async def upload(self, local: str, remote: str) -> TransferResult:
        return await self.run("local", local, "remote", remote)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ok(result: TransferResult, data: bytes) -> None:
    assert result.status == "success", result.asdict()
    assert result.sha256 == sha256(data)
    assert result.bytes_transferred == len(data)


def quoted_reply(message: str) -> str:
    """The server's reply inside one of our error messages ("... server replied X (where)")."""
    return message.split("server replied ", 1)[1].rsplit(" (", 1)[0]


async def read_greeting(port: int) -> str:
    """The first line a server sends on a plain TCP connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(5):
            return (await reader.readline()).decode(errors="replace").strip()
    finally:
        writer.close()


def leftovers(server: Server) -> list[Path]:
    return list(server.root.rglob("*.ftp-pooler.part"))


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.mark.cell("download")
@pytest.mark.parametrize("variant", ALL)
async def test_download_arrives_byte_identical(farm, variant, storage):
    """RETR of a 100 KiB file lands in local storage with the source's sha256."""
    server = farm.get(variant)
    data = random.randbytes(100 * 1024)
    server.put("/dl/report.bin", data)
    async with Rig(server, storage) as rig:
        result = await rig.download("/dl/report.bin", "/in/report.bin")
    ok(result, data)
    assert (storage / "in" / "report.bin").read_bytes() == data


@pytest.mark.cell("upload (temp name + rename)")
@pytest.mark.parametrize("variant", ALL)
async def test_upload_is_renamed_into_place_and_leaves_no_temporary_file(farm, variant, storage):
    """STOR goes to a hidden temporary name, SIZE matches, RNFR/RNTO puts it in place."""
    server = farm.get(variant)
    data = random.randbytes(64 * 1024)
    (storage / "report.bin").write_bytes(data)
    async with Rig(server, storage) as rig:
        result = await rig.upload("/report.bin", "/ul/report.bin")
    ok(result, data)
    assert server.file("/ul/report.bin").read_bytes() == data
    assert leftovers(server) == []


@pytest.mark.cell("pipelining (round trips saved)")
@pytest.mark.parametrize("variant", ALL)
async def test_back_to_back_transfers_on_one_session_stay_intact_with_pipelining(
    farm, variant, storage, note
):
    """Downloads and uploads in turn on one session (the next EPSV asked ahead, upload data
    before the 150, SIZE with RETR where the 150 has no size, an upload's SIZE sent behind its
    data, RNFR+RNTO together) all arrive
    intact and renamed; the note says which savings the server allowed (learnt at run time)."""
    server = farm.get(variant)
    sizes = [0, 1, 4096, 70_000, 3 * 1024 * 1024 + 5]
    async with Rig(server, storage, cap=1) as rig:
        for n, size in enumerate(sizes * 2):
            data = random.randbytes(size)
            server.put(f"/pipe/d{n}.bin", data)
            down = await rig.download(f"/pipe/d{n}.bin", f"/pipe/d{n}.bin")
            ok(down, data)
            assert (storage / "pipe" / f"d{n}.bin").read_bytes() == data
            (storage / f"u{n}.bin").write_bytes(data)
            up = await rig.upload(f"/u{n}.bin", f"/pipe/up/u{n}.bin")
            ok(up, data)
            assert down.size_verified and up.size_verified  # no saving skips a check
            assert server.file(f"/pipe/up/u{n}.bin").read_bytes() == data
        assert len(rig.sessions) == 1  # one session throughout: nothing desynchronised
        session = rig.sessions[0]
    assert leftovers(server) == []
    if session.connection.tls != "none":
        note("TLS data connections: through aioftp, no pipelining")
        return
    traits = session.traits
    allowed = [
        name
        for name, on in (
            ("EPSV ahead", traits.passive_ahead),
            ("upload data before 150", traits.data_before_reply),
            ("SIZE behind upload data", traits.size_behind_upload),
        )
        if on
    ]
    sized = "size in 150" if traits.size_in_150 else "SIZE sent with RETR"
    note(f"{', '.join(allowed) or 'none'}; {sized}")


@pytest.mark.cell("upload over an existing file")
@pytest.mark.parametrize("variant", ALL)
async def test_upload_replaces_an_existing_file(farm, variant, storage, note):
    """A redone upload ends with the new content in place; a refused RNTO falls back to DELE."""
    server = farm.get(variant)
    server.put("/replace/target.txt", b"old content")
    data = b"new content " * 100
    (storage / "target.txt").write_bytes(data)
    async with Rig(server, storage) as rig:
        with capture_logs() as logs:
            result = await rig.upload("/target.txt", "/replace/target.txt")
    ok(result, data)
    assert server.file("/replace/target.txt").read_bytes() == data
    assert leftovers(server) == []
    fallbacks = [e for e in logs if e["event"] == "rename_replaced_by_delete"]
    if fallbacks:
        note(
            f'RNTO over an existing file refused: "{fallbacks[0]["reply"]}"; FTP Pooler deletes '
            "the old file and renames again (never a partial file; briefly no file)",
            outcome="fallback",
        )
    if VARIANTS[variant][2]:
        assert not fallbacks, "a server that allows overwriting needs no fallback"


@pytest.mark.cell("missing file")
@pytest.mark.parametrize("variant", ALL)
async def test_missing_source_is_file_not_found_and_not_retried(farm, variant, storage, note):
    """RETR of a file that is not there: FILE_NOT_FOUND, retryable false, reply quoted."""
    server = farm.get(variant)
    async with Rig(server, storage) as rig:
        result = await rig.download("/missing/no such file.csv", "/in/x.csv")
    assert (result.status, result.error_code, result.retryable) == (
        "failed",
        "FILE_NOT_FOUND",
        False,
    ), result.asdict()
    note(f'"{quoted_reply(result.error_message or "")}": FILE_NOT_FOUND, not retried')
    assert not (storage / "in" / "x.csv").exists()


@pytest.mark.cell("nested directories")
@pytest.mark.parametrize("variant", ALL)
async def test_upload_creates_missing_nested_directories(farm, variant, storage):
    """An upload into /a/b/c/d/e creates every missing level (MKD per level)."""
    server = farm.get(variant)
    (storage / "f.txt").write_bytes(b"deep")
    async with Rig(server, storage) as rig:
        result = await rig.upload("/f.txt", "/a/b/c/d/e/f.txt")
        again = await rig.upload("/f.txt", "/a/b/c/other/f.txt")  # some levels exist now
    ok(result, b"deep")
    ok(again, b"deep")
    assert server.file("/a/b/c/d/e/f.txt").read_bytes() == b"deep"
    assert server.file("/a/b/c/other/f.txt").read_bytes() == b"deep"


@pytest.mark.cell("empty file")
@pytest.mark.parametrize("variant", ALL)
async def test_empty_file_moves_both_ways(farm, variant, storage):
    """A 0-byte file downloads and uploads (an empty data connection, TLS or not)."""
    server = farm.get(variant)
    server.put("/empty/in.txt", b"")
    (storage / "out.txt").write_bytes(b"")
    async with Rig(server, storage) as rig:
        down = await rig.download("/empty/in.txt", "/got/in.txt")
        up = await rig.upload("/out.txt", "/empty/out.txt")
    ok(down, b"")
    ok(up, b"")
    assert (storage / "got" / "in.txt").read_bytes() == b""
    assert server.file("/empty/out.txt").read_bytes() == b""


@pytest.fixture(scope="session")
def big_data() -> bytes:
    return os.urandom(BIG)


@pytest.mark.cell("50 MiB file")
@pytest.mark.parametrize("variant", ALL)
async def test_50_mib_file_moves_both_ways_intact(farm, variant, storage, big_data):
    """50 MiB down and up again, both sha256-identical (TLS data channels stay up that long)."""
    server = farm.get(variant)
    server.put("/big/source.bin", big_data)
    try:
        async with Rig(server, storage) as rig:
            down = await rig.download("/big/source.bin", "/big.bin")
            up = await rig.upload("/big.bin", "/big/copy.bin")
        ok(down, big_data)
        ok(up, big_data)
        assert sha256(server.file("/big/copy.bin").read_bytes()) == sha256(big_data)
    finally:
        for path in (server.file("/big/source.bin"), server.file("/big/copy.bin")):
            path.unlink(missing_ok=True)


@pytest.mark.cell("spaces + UTF-8 names")
@pytest.mark.parametrize("variant", ALL)
async def test_names_with_spaces_and_non_ascii_characters(farm, variant, storage):
    """Paths with spaces and UTF-8 (accents, CJK, symbols) work both ways, byte for byte."""
    server = farm.get(variant)
    remote = f"{UNICODE_DIR}/{UNICODE_NAME}"
    server.put(remote, "données ✓".encode())
    (storage / UNICODE_NAME).write_bytes(b"up")
    async with Rig(server, storage) as rig:
        down = await rig.download(remote, f"/got/{UNICODE_NAME}")
        up = await rig.upload(f"/{UNICODE_NAME}", f"{UNICODE_DIR}/sub dir ü/{UNICODE_NAME}")
    ok(down, "données ✓".encode())
    ok(up, b"up")
    assert (storage / "got" / UNICODE_NAME).read_bytes() == "données ✓".encode()
    # The server wrote the name as UTF-8 bytes on its disk.
    stored = server.root / UNICODE_DIR.lstrip("/") / "sub dir ü" / UNICODE_NAME
    assert stored.read_bytes() == b"up"


@pytest.mark.cell("server session limit")
@pytest.mark.parametrize("variant", ALL)
async def test_server_session_limit_lowers_the_pool_cap_and_every_task_succeeds(
    farm, variant, storage, note
):
    """Pool cap 2x the server's per-address limit: refusals push the cap down, nothing fails."""
    server = farm.get(variant)
    count = 4 * SESSION_LIMIT
    for n in range(count):
        server.put(f"/limit/f{n}.txt", f"file {n}".encode() * 100)
    async with Rig(server, storage, cap=2 * SESSION_LIMIT) as rig:
        with capture_logs() as logs:
            results = await asyncio.gather(
                *(rig.download(f"/limit/f{n}.txt", f"/limit/f{n}.txt") for n in range(count))
            )
        refused = rig.manager.closed_total[("remote", "refused")]
        connected = sum(1 for s in rig.sessions if s.uses > 0)
        assert [r.status for r in results] == ["success"] * count, [
            r.asdict() for r in results if r.status != "success"
        ][:2]
        assert refused >= 1, "the server never refused a session: its limit was not reached"
        assert connected <= SESSION_LIMIT, f"{connected} sessions did work; limit {SESSION_LIMIT}"
        pushbacks = [e["error"] for e in logs if e["event"] == "session_pushback"]
        assert pushbacks
        if "server replied" in pushbacks[0]:
            reply = quoted_reply(pushbacks[0])
            why = " (a 530 naming the limit counts as a 421, not a refused login)"
            note(
                f'"{reply}": pool cap lowered to the open sessions'
                + (why if reply.startswith("530") else "")
            )
        else:
            # vsftpd refuses in clear text on its implicit-TLS port; read that refusal raw.
            assert "answered in clear text" in pushbacks[0], pushbacks[0]
            refusal = await read_greeting(server.port)
            assert refusal.startswith("421"), refusal
            note(
                f'"{refusal}" sent in clear text on the TLS port: taken as a 421, pool cap '
                "lowered to the open sessions"
            )


@pytest.mark.cell("untrusted certificate")
@pytest.mark.parametrize("variant", TLS_VARIANTS)
async def test_self_signed_server_is_refused_without_its_ca_and_accepted_with_it(
    farm, variant, storage, note
):
    """tls_verify without tls_ca_file, or by IP without tls_server_name: CONNECTION_ERROR, final."""
    server = farm.get(variant)
    server.put("/tls/a.txt", b"a")
    async with Rig(server, storage, tls_ca_file=None) as rig:
        no_ca = await rig.download("/tls/a.txt", "/tls/a.txt")
    async with Rig(server, storage, tls_server_name=None) as rig:
        by_ip = await rig.download("/tls/a.txt", "/tls/b.txt")
    async with Rig(server, storage) as rig:
        trusted = await rig.download("/tls/a.txt", "/tls/c.txt")
    for result, reason in (
        (no_ca, "unable to get local issuer certificate"),
        (by_ip, "IP address mismatch"),
    ):
        assert (result.error_code, result.retryable) == ("CONNECTION_ERROR", False), result.asdict()
        assert "TLS certificate verification failed" in (result.error_message or "")
        assert reason in (result.error_message or "")
    ok(trusted, b"a")
    note("refused (CONNECTION_ERROR, not retryable) without `tls_ca_file`; accepted with it")


@pytest.mark.cell("TLS session reuse on data")
@pytest.mark.parametrize("variant", TLS_VARIANTS)
async def test_data_connections_resume_the_control_session_where_required(
    farm, variant, storage, note, monkeypatch
):
    """Data connections resume the control TLS session; without that, a server requiring it is
    reported as such (IO_ERROR, not retryable), never as a silent empty file."""
    server = farm.get(variant)
    server.put("/reuse/a.txt", b"abc")
    async with Rig(server, storage) as rig:
        result = await rig.download("/reuse/a.txt", "/reuse/a.txt")
        resumed = rig.sessions[0].data_session_reused
        version = rig.sessions[0].tls_version
    ok(result, b"abc")

    async def no_resumption(self, writer):  # what a client without session reuse does
        await writer.start_tls(
            self.control_tls.context,
            server_hostname=self.server_name,
            ssl_handshake_timeout=self.socket_timeout,
        )

    monkeypatch.setattr(FtpClient, "protect_data", no_resumption)
    async with Rig(server, storage) as rig:
        without = await rig.download("/reuse/a.txt", "/reuse/b.txt")
    if without.status == "success":
        ok(without, b"abc")
        note(f"{version}; not required by the server (resumed: {'yes' if resumed else 'no'})")
        return
    assert resumed, "the server requires reuse, so the normal download must have resumed"
    assert (without.error_code, without.retryable) == ("IO_ERROR", False), without.asdict()
    assert "not resumed from the control connection" in (without.error_message or "")
    assert not (storage / "reuse" / "b.txt").exists()
    reply = quoted_reply(without.error_message or "")
    note(f'{version}; required and resumed (a data connection that is not resumed gets "{reply}")')

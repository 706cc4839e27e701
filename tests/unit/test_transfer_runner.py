"""The transfer runner end to end against a real FTP server (pyftpdlib in-process) and a tmp dir,
over the real session pool and FTP sessions: one result per task, files whole or absent."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agents.transfer.runner import TransferRunner
from models.connections import FtpConnection, LocalConnection, Registry
from models.result import TransferResult
from models.task import TransferTask
from pools.manager import SessionPoolManager
from pools.session import FTPSession
from scripts.ftpd import EmbeddedFTPServer

PASSWORD = "s3cret-pw"


@pytest.fixture
def ftp_server(tmp_path: Path) -> Iterator[EmbeddedFTPServer]:
    with EmbeddedFTPServer(tmp_path / "ftp", password=PASSWORD) as server:
        yield server


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.fixture
async def runner(ftp_server: EmbeddedFTPServer, storage: Path) -> AsyncIterator[TransferRunner]:
    ftp = {
        name: FtpConnection(name, "127.0.0.1", ftp_server.port, "alice", PASSWORD)
        for name in ("ftp-a", "ftp-b")
    }
    local = {name: LocalConnection(name, storage) for name in ("local", "local-b")}
    manager: SessionPoolManager[FTPSession] = SessionPoolManager(
        max_sessions_per_pod=10, acquire_timeout=10, session_timeout=300, health_check_idle=30
    )
    for name, connection in ftp.items():
        manager.add_pool(name, 2, functools.partial(new_session, connection))
    await manager.start()
    try:
        yield TransferRunner(
            Registry({**ftp, **local}),
            manager,
            worker_id="w-test",
            block_size=65536,
            max_duration=30,
        )
    finally:
        await manager.stop()


def new_session(connection: FtpConnection) -> FTPSession:
    return FTPSession(connection, connect_timeout=5, command_timeout=10, block_size=65536)


async def run(
    runner: TransferRunner, src_id: str, src: str, dst_id: str, dst: str
) -> TransferResult:
    task = TransferTask(task_id="t-1", src_id=src_id, src_path=src, dst_id=dst_id, dst_path=dst)
    result = await runner.run(task)
    assert PASSWORD not in str(result.asdict())
    return result


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_download_writes_the_file_and_reports_its_sha256(runner, ftp_server, storage):
    """ftp -> local: the whole file lands at dst_path (no temporary left), hashed."""
    data = bytes(range(256)) * 1000
    (ftp_server.root / "out").mkdir()
    (ftp_server.root / "out" / "report.csv").write_bytes(data)

    result = await run(runner, "ftp-a", "/out/report.csv", "local", "/in/sales/report.csv")

    assert result.status == "success", result.error_message
    assert (result.direction, result.bytes_transferred) == ("download", len(data))
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert (storage / "in" / "sales" / "report.csv").read_bytes() == data
    assert files_under(storage) == ["in/sales/report.csv"]


async def test_upload_stores_the_file_and_reports_its_sha256(runner, ftp_server, storage):
    """local -> ftp: the whole file lands at dst_path on the server (no temporary left)."""
    data = b"stock;42\n" * 5000
    (storage / "exports").mkdir()
    (storage / "exports" / "stock.csv").write_bytes(data)

    result = await run(runner, "local", "/exports/stock.csv", "ftp-a", "/incoming/us/stock.csv")

    assert result.status == "success", result.error_message
    assert (result.direction, result.bytes_transferred) == ("upload", len(data))
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert (ftp_server.root / "incoming" / "us" / "stock.csv").read_bytes() == data
    assert files_under(ftp_server.root) == ["incoming/us/stock.csv"]


async def test_a_missing_remote_source_is_file_not_found(runner, storage):
    """A download of a file the server does not have: FILE_NOT_FOUND, not retryable, no file."""
    result = await run(runner, "ftp-a", "/out/no-such-file.csv", "local", "/in/x.csv")

    assert (result.status, result.error_code, result.retryable) == (
        "failed",
        "FILE_NOT_FOUND",
        False,
    )
    assert "550" in (result.error_message or "")
    assert files_under(storage) == []


async def test_a_missing_local_source_is_file_not_found(runner, ftp_server):
    """An upload of a file not in storage: FILE_NOT_FOUND, and nothing appears on the server."""
    result = await run(runner, "local", "/exports/gone.csv", "ftp-a", "/incoming/gone.csv")

    assert (result.error_code, result.retryable) == ("FILE_NOT_FOUND", False)
    assert files_under(ftp_server.root) == []


@pytest.mark.parametrize(
    ("src_id", "dst_id"), [("local", "local-b"), ("ftp-a", "ftp-b")], ids=["local", "ftp"]
)
async def test_both_ends_of_the_same_kind_is_invalid_config(runner, src_id, dst_id):
    """local -> local and ftp -> ftp are INVALID_CONFIG, with no direction."""
    result = await run(runner, src_id, "/a.csv", dst_id, "/b.csv")

    assert (result.error_code, result.retryable, result.direction) == (
        "INVALID_CONFIG",
        False,
        None,
    )


async def test_an_unknown_connection_is_invalid_config(runner):
    """A connection id not in the registry is INVALID_CONFIG, naming the id."""
    result = await run(runner, "ftp-nope", "/a.csv", "local", "/b.csv")

    assert result.error_code == "INVALID_CONFIG"
    assert "ftp-nope" in (result.error_message or "")


async def test_a_destination_escaping_the_base_is_invalid_task(
    runner, ftp_server, storage, tmp_path
):
    """A download whose dst_path climbs out of base_path is refused; nothing is written."""
    (ftp_server.root / "a.csv").write_bytes(b"secret")

    result = await run(runner, "ftp-a", "/a.csv", "local", "/../outside/a.csv")

    assert (result.error_code, result.retryable) == ("INVALID_TASK", False)
    assert not (tmp_path / "outside").exists()
    assert files_under(storage) == []


async def test_a_source_escaping_the_base_is_invalid_task(runner, ftp_server, tmp_path):
    """An upload whose src_path climbs out of base_path is refused; nothing is sent."""
    (tmp_path / "private.key").write_bytes(b"secret")

    result = await run(runner, "local", "/../private.key", "ftp-a", "/in/private.key")

    assert (result.error_code, result.retryable) == ("INVALID_TASK", False)
    assert files_under(ftp_server.root) == []

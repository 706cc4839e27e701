"""The transfer flow (TransferRunner over real sessions, no Kafka) against a misbehaving FTP
server written for the suite (tests/support/hostile_ftpd.py), real local files and real mounts.

Issue 14, points 1, 3, 5 and 6: a transfer whose length cannot be confirmed says so, a refused
SIZE never switches verification off, reply floods are bounded, long names get temporary names
that fit, and errors carry the code a user expects without local paths.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from agents.transfer.runner import TransferRunner
from agents.transfer.temp_journal import TempJournal
from models.connections import FtpConnection, LocalConnection, Registry
from models.result import TransferResult
from models.task import TransferTask
from pools.manager import SessionPoolManager
from pools.session import FTPSession
from tests.support.hostile_ftpd import (
    HostileFTPServer,
    disconnect_after,
    flood,
    preliminary,
    reply,
    stall,
    truncate,
)

BIG = bytes(range(256)) * 400  # 102,400 bytes
# The suite runs as root, and root ignores file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
# a worker started through this prefix keeps uid 0 but obeys them, as a real service user would.
AS_PLAIN_USER = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]


class Rig:
    """One hostile server as connection ``remote``, local storage as ``local``, one session."""

    def __init__(
        self,
        server: HostileFTPServer,
        storage: Path,
        command_timeout: float = 5,
        journal: Path | None = None,
    ):
        """``journal``: where the temp-file journal lives, as a worker has one (None: none)."""
        self.server = server
        self.storage = storage
        remote = FtpConnection("remote", "127.0.0.1", server.port, "u", "p")
        self.registry = Registry({"remote": remote, "local": LocalConnection("local", storage)})
        self.manager: SessionPoolManager[FTPSession] = SessionPoolManager(
            max_sessions_per_pod=10,
            acquire_timeout=10,
            session_timeout=300,
            health_check_idle=30,
            pushback_cooldown=60,
        )
        self.manager.add_pool(
            "remote",
            1,
            lambda: FTPSession(
                remote,
                connect_timeout=5,
                command_timeout=command_timeout,
                block_size=65536,
                stall_timeout=5,
            ),
        )
        self.runner = TransferRunner(
            self.registry,
            self.manager,
            worker_id="hostile",
            block_size=65536,
            max_duration=30,
            journal=TempJournal(journal) if journal is not None else None,
        )
        self.seq = 0

    async def __aenter__(self) -> Rig:
        await self.manager.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.stop()

    async def run(self, src_id: str, src: str, dst_id: str, dst: str) -> TransferResult:
        self.seq += 1
        task = TransferTask(
            task_id=f"t{self.seq}", src_id=src_id, src_path=src, dst_id=dst_id, dst_path=dst
        )
        return await self.runner.run(task)


@pytest.fixture
def server():
    with HostileFTPServer({"/big.bin": BIG, "/small.txt": b"hello"}) as hostile:
        yield hostile


# -- 1. size verification ---------------------------------------------------------------------
async def test_a_refused_size_never_switches_verification_off_for_the_session(server, tmp_path):
    """SIZE refused once (502): that transfer says size_verified false; the next one on the
    same session, cut short after half its bytes but ended with 226, fails as a size mismatch
    (it used to be published as success with 51,200 of 102,400 bytes)."""
    server.on("SIZE", reply(b"502 SIZE not implemented"))
    server.on("MLST", reply(b"502 MLST not implemented"))
    server.on("RETR", Behaviour_none(), truncate(len(BIG) // 2))
    async with Rig(server, tmp_path) as rig:
        first = await rig.run("remote", "/small.txt", "local", "/a.txt")
        assert first.status == "success", first.asdict()
        assert first.size_verified is False
        assert first.to_wire()["size_verified"] is False
        second = await rig.run("remote", "/big.bin", "local", "/b.bin")
    assert second.status == "failed", second.asdict()
    assert second.error_code == "IO_ERROR" and "size mismatch" in (second.error_message or "")
    assert "51200 bytes here, server reports 102400" in (second.error_message or "")
    assert not (tmp_path / "b.bin").exists()
    assert server.seen("SIZE") == 2  # asked again after the refusal


async def test_size_is_confirmed_by_the_150_reply_or_mlst_when_size_is_refused(tmp_path):
    """A vsftpd-style "(N bytes)" in the 150 reply confirms a download without SIZE; with
    SIZE refused, MLST's size fact confirms an upload."""
    with HostileFTPServer({"/big.bin": BIG}, announce_size=True) as server:
        (tmp_path / "up.bin").write_bytes(BIG)
        server.on("SIZE", reply(b"500 unknown command"))
        async with Rig(server, tmp_path) as rig:
            down = await rig.run("remote", "/big.bin", "local", "/down.bin")
            up = await rig.run("local", "/up.bin", "remote", "/up.bin")
        assert down.status == "success" and down.size_verified is True, down.asdict()
        assert up.status == "success" and up.size_verified is True, up.asdict()
        assert server.seen("SIZE") == 1 and server.seen("MLST") == 1
        assert server.files["/up.bin"] == BIG


async def test_an_announced_size_catches_a_truncated_download(tmp_path):
    """The 150 reply announced 102,400 bytes; 51,200 arrived: IO_ERROR, nothing written."""
    with HostileFTPServer({"/big.bin": BIG}, announce_size=True) as server:
        server.on("RETR", truncate(len(BIG) // 2))
        async with Rig(server, tmp_path) as rig:
            result = await rig.run("remote", "/big.bin", "local", "/big.bin")
    assert result.error_code == "IO_ERROR" and "size mismatch" in (result.error_message or "")
    assert list(tmp_path.iterdir()) == []


# -- 3. reply floods --------------------------------------------------------------------------
async def test_a_reply_flood_closes_the_session_quickly_with_a_connection_error(server, tmp_path):
    """Endless 150- continuation lines: CONNECTION_ERROR long before the command timeout, and
    the next task gets a fresh session that works."""
    server.on("RETR", flood())
    async with Rig(server, tmp_path, command_timeout=30) as rig:
        started = time.monotonic()
        flooded = await rig.run("remote", "/big.bin", "local", "/f.bin")
        elapsed = time.monotonic() - started
        after = await rig.run("remote", "/small.txt", "local", "/s.txt")
    assert flooded.error_code == "CONNECTION_ERROR", flooded.asdict()
    message = flooded.error_message or ""
    assert "over 1000 lines" in message or "bytes" in message
    assert flooded.retryable is False
    assert elapsed < 30  # bounded by the reply limit, not the command timeout
    assert after.status == "success", after.asdict()


async def test_a_flood_during_login_is_bounded_too(server, tmp_path):
    """A flood answering USER (read by aioftp's login) ends the same way."""
    server.on("USER", flood(b"331-" + b"y" * 200))
    async with Rig(server, tmp_path, command_timeout=30) as rig:
        result = await rig.run("remote", "/big.bin", "local", "/f.bin")
    assert result.error_code == "CONNECTION_ERROR", result.asdict()


# -- 5. long names ----------------------------------------------------------------------------
async def test_a_name_of_244_bytes_transfers_both_ways(server, tmp_path):
    """The temporary name fits within 255 bytes however long the final name is."""
    name = "n" * 240 + ".bin"
    assert len(name.encode()) == 244
    wide = "é" * 125  # 250 bytes of two-byte characters
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / name).write_bytes(b"long")
    (tmp_path / "src" / wide).write_bytes(b"wide")
    server.files[f"/{name}"] = BIG
    async with Rig(server, tmp_path) as rig:
        down = await rig.run("remote", f"/{name}", "local", f"/dst/{name}")
        up = await rig.run("local", f"/src/{name}", "remote", f"/up/{name}")
        up_wide = await rig.run("local", f"/src/{wide}", "remote", f"/up/{wide}")
    assert down.status == "success", down.asdict()
    assert (tmp_path / "dst" / name).read_bytes() == BIG
    assert up.status == "success", up.asdict()
    assert up_wide.status == "success", up_wide.asdict()
    stored = [line.split(" ", 1)[1] for line in server.commands if line.startswith("STOR ")]
    assert all(len(os.path.basename(path).encode()) <= 255 for path in stored), stored


# -- 6. error codes and paths -----------------------------------------------------------------
async def test_a_latin1_byte_in_a_reply_does_not_fail_a_good_transfer(server, tmp_path):
    """150 Opening caf\\xe9: the transfer succeeds (it failed as UNKNOWN_ERROR
    UnicodeDecodeError)."""
    server.on("RETR", preliminary(b"150 Opening caf\xe9 data connection"))
    async with Rig(server, tmp_path) as rig:
        result = await rig.run("remote", "/big.bin", "local", "/big.bin")
    assert result.status == "success", result.asdict()
    assert hashlib.sha256((tmp_path / "big.bin").read_bytes()).hexdigest() == result.sha256


async def test_cr_lf_in_a_remote_path_is_an_invalid_task(server, tmp_path):
    """The injection stays blocked, and the task is INVALID_TASK (was UNKNOWN_ERROR)."""
    async with Rig(server, tmp_path) as rig:
        result = await rig.run("remote", "/big.bin\r\nDELE /small.txt", "local", "/x.bin")
    assert result.error_code == "INVALID_TASK", result.asdict()
    assert "/small.txt" in server.files and server.seen("DELE") == 0


async def test_a_disconnect_mid_transfer_is_a_retryable_error_and_leaves_nothing(server, tmp_path):
    """The server drops both connections after 10,000 bytes: retryable, no file left."""
    server.on("RETR", disconnect_after(10_000))
    async with Rig(server, tmp_path) as rig:
        result = await rig.run("remote", "/big.bin", "local", "/big.bin")
    assert result.status == "failed" and result.retryable is True, result.asdict()
    assert result.error_code in ("CONNECTION_ERROR", "IO_ERROR")
    assert list(tmp_path.iterdir()) == []


async def test_a_stalled_reply_fails_within_the_command_timeout(server, tmp_path):
    """No answer to RETR at all: IO_ERROR after the (2 s) command timeout, not a hang."""
    server.on("RETR", stall())
    async with Rig(server, tmp_path, command_timeout=2) as rig:
        result = await asyncio.wait_for(rig.run("remote", "/big.bin", "local", "/b.bin"), 20)
    assert result.status == "failed" and result.retryable is True, result.asdict()


@pytest.fixture
def nobody_dir(tmp_path):
    """A destination directory the worker may not search: mode 0600, and the worker runs
    without the capabilities that let root ignore file modes (see ``as_plain_user``)."""
    base = tmp_path / "storage"
    (base / "locked").mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    os.chmod(base, 0o777)
    os.chmod(base / "locked", 0o600)  # no search permission for anyone but root
    return base


def test_a_destination_without_permission_is_io_error_without_the_storage_path(server, nobody_dir):
    """Downloading into a directory the worker may not enter: IO_ERROR, not retryable, and the
    message shows the path relative to base_path (was UNKNOWN_ERROR naming the absolute path)."""
    script = f"""
import asyncio, json, sys
sys.path.insert(0, {str(Path.cwd())!r})
from pathlib import Path
from tests.hostile.test_hostile_servers import Rig
from tests.support.hostile_ftpd import HostileFTPServer

class Port:
    port = {server.port}

async def main():
    # With a temp-file journal, as a worker has: the cleanup then checks the temporary.
    journal = Path({str(nobody_dir)!r}) / "temp-files.journal"
    async with Rig(Port, Path({str(nobody_dir)!r}), journal=journal) as rig:
        result = await rig.run("remote", "/big.bin", "local", "/locked/big.bin")
    print(json.dumps(result.to_wire()))

asyncio.run(main())
"""
    done = subprocess.run(
        [*AS_PLAIN_USER, str(Path(".venv/bin/python").absolute()), "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    result = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert result["error_code"] == "IO_ERROR", result
    assert result["retryable"] is False
    assert str(nobody_dir) not in result["error_message"], result
    assert "/locked/big.bin" in result["error_message"]


def Behaviour_none():
    """A RETR that behaves normally (a place holder in a script)."""
    from tests.support.hostile_ftpd import Behaviour

    return Behaviour("normal")

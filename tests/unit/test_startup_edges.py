"""Issue 14, points 4 (bounded local I/O), 7 (configuration that surprises) and 8 (a lone
surrogate in POST /tasks): what an operator or client gets at the edges."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest

from agents.transfer.local_files import HashingReader, LocalIO
from app.settings import load_settings
from app.task_api import Rejected, validate_tasks
from models.connections import FtpConnection, load_registry
from models.errors import ConfigError, LocalIOTimeout, TransferIOError
from models.task import parse_task

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_ini() -> str:
    text = README.read_text()
    start = text.index("```ini\n", text.index("`connections.ini` (`FTP_POOLER_CONNECTIONS`"))
    return text[start + len("```ini\n") : text.index("```", start + 7)]


def test_the_readme_connections_example_loads(tmp_path, monkeypatch):
    """README's own example, inline comments and all, loads; the comments are not values."""
    ca = tmp_path / "ca.pem"
    ca.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text())
    path = tmp_path / "connections.ini"
    path.write_text(readme_ini().replace("/etc/ftp-pooler/partner-ca.pem", str(ca)))
    registry = load_registry(path)
    remote = registry["remote-server-a"]
    assert isinstance(remote, FtpConnection)
    assert (remote.port, remote.user, remote.password, remote.max_sessions) == (
        21,
        "username",
        "password",
        4,
    )
    partner = registry["partner-ftps"]
    assert isinstance(partner, FtpConnection) and partner.tls == "explicit"


def test_a_password_keeps_semicolons_and_hashes_as_the_readme_says(tmp_path):
    """`pass = x ; note` is x; `pa;ss#1` stays whole; quotes keep ` ;` inside a password."""
    path = tmp_path / "c.ini"
    path.write_text(
        "[a]\ntype = ftp\nhost = h\npass = x ; note\n"
        "[b]\ntype = ftp\nhost = h\npass = pa;ss#1\n"
        '[c]\ntype = ftp\nhost = h\npass = "p ;w #d"   ; quoted\n'
    )
    registry = load_registry(path)
    assert [registry[s].password for s in "abc"] == ["x", "pa;ss#1", "p ;w #d"]  # type: ignore[union-attr]


def test_a_misspelt_yaml_section_is_an_error(tmp_path, monkeypatch):
    """`kafak:` is named as an unknown section instead of being ignored."""
    config = tmp_path / "config.yaml"
    config.write_text("kafak:\n  bootstrap_servers: [x:9092]\n")
    monkeypatch.setenv("FTP_POOLER_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"kafak: unknown section"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS", ""), ("FTP_POOLER_KAFKA__CONSUMER_GROUP", " ")],
)
def test_empty_bootstrap_servers_or_group_are_configuration_errors(monkeypatch, variable, value):
    """Empty Kafka names stop the worker at start-up as configuration errors."""
    monkeypatch.delenv("FTP_POOLER_CONFIG", raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError):
        load_settings()


def test_a_lone_surrogate_task_id_is_rejected_with_400():
    """ "\\ud800" is valid JSON text but not Unicode: 400 naming the problem (was a 500)."""
    body = (
        b'{"task_id": "a\\ud800", "src_id": "s", "src_path": "/a", "dst_id": "d", "dst_path": "/b"}'
    )
    with pytest.raises(Rejected) as caught:
        validate_tasks(body)
    assert caught.value.status == 400
    assert "surrogate" in caught.value.body["errors"][0]["message"]


@pytest.mark.parametrize("path", ["/incoming/", "/incoming/.", "/a/.."])
def test_a_path_naming_a_directory_is_an_invalid_task(path):
    """dst_path ending in / (or . or ..) would create a file named like the directory."""
    fields = {"task_id": "t", "src_id": "s", "src_path": "/a", "dst_id": "d", "dst_path": path}
    raw = json.dumps(fields).encode()
    with pytest.raises(Exception, match="must name a file"):
        parse_task(raw)


async def test_a_fifo_source_is_refused_at_once(tmp_path):
    """A FIFO with no writer is refused without blocking a thread (it blocked one forever)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = HashingReader(fifo, "/pipe", 4096)
    with pytest.raises(TransferIOError, match=r"not a regular file \(a FIFO\)") as caught:
        await asyncio.wait_for(reader.open(), 5)
    assert caught.value.retryable is False


async def test_a_stuck_local_call_fails_its_task_and_the_others_carry_on():
    """Two calls hang (a hung mount): each fails after the bound, and later calls still run on
    fresh threads instead of queueing behind them forever."""
    io = LocalIO(threads=2, timeout=0.5)
    release = threading.Event()
    stuck = [asyncio.ensure_future(io.run(release.wait)) for _ in range(2)]
    try:
        for call in stuck:
            with pytest.raises(LocalIOTimeout):
                await call
        started = time.monotonic()
        assert await io.run(lambda: 42) == 42
        assert time.monotonic() - started < 0.5
    finally:
        release.set()

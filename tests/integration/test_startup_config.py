"""A bad configuration stops the worker at start-up with a message naming file, section and key."""

from __future__ import annotations

import subprocess

from tests.support.stack import FAUST, Names, Worker


def run_worker(tmp_path, connections_text: str, extra_env=None) -> subprocess.CompletedProcess[str]:
    connections = tmp_path / "connections.ini"
    connections.write_text(connections_text)
    env = Worker(tmp_path, Names(), connections).env()
    env.update(extra_env or {})
    return subprocess.run(
        [str(FAUST), "-L", "uvloop", "-A", "app", "worker", "-l", "info"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_section_without_host_exits_non_zero_naming_section_and_key(tmp_path):
    """[remote] with no host: exit 2, the file, section and key in one line, no traceback."""
    result = run_worker(tmp_path, "[remote]\ntype = ftp\nport = 21\n")
    assert result.returncode == 2
    expected = (
        f"ftp-pooler: configuration error: {tmp_path / 'connections.ini'} [remote] host: missing"
    )
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_setting_in_environment_exits_non_zero_naming_the_key(tmp_path):
    """A non-numeric port override is named with its environment variable."""
    result = run_worker(
        tmp_path, "[l]\ntype = local\nbase_path = /tmp\n", {"FTP_POOLER_API__PORT": "eighty"}
    )
    assert result.returncode == 2
    assert "api.port" in result.stderr and "FTP_POOLER_API__PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_registry_file_exits_non_zero(tmp_path):
    """An unreadable connections.ini is named in the error."""
    result = run_worker(tmp_path, "", {"FTP_POOLER_CONNECTIONS": str(tmp_path / "absent.ini")})
    assert result.returncode == 2
    assert "absent.ini: cannot read connection registry" in result.stderr

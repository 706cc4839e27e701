"""connections.ini is validated at start-up; every problem names the file, section and key."""

from pathlib import Path

import pytest

from app.registry import FtpConnection, LocalConnection, load_registry
from models.errors import ConfigError, InvalidConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connections.ini"
    path.write_text(text)
    return path


def test_ftp_and_local_sections_parse_with_defaults(tmp_path):
    """Port 21, passive and no per-connection cap are the defaults."""
    registry = load_registry(
        write(
            tmp_path,
            """
[remote-a]
type = ftp
host = ftp.example.com
user = bob
pass = p%ss;word

[local]
type = local
base_path = /data/storage
""",
        )
    )
    remote = registry.resolve("remote-a")
    assert isinstance(remote, FtpConnection)
    assert (remote.host, remote.port, remote.user, remote.password) == (
        "ftp.example.com",
        21,
        "bob",
        "p%ss;word",
    )
    assert remote.passive is True and remote.max_sessions is None
    assert "p%ss" not in repr(remote) and "p%ss" not in str(remote.public())
    assert isinstance(registry.resolve("local"), LocalConnection)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[a]\ntype = ftp\n", "[a] host: missing"),
        ("[a]\ntype = sftp\nhost = h\n", "[a] type: unknown connection type 'sftp'"),
        ("[a]\nhost = h\n", "[a] type: missing"),
        ("[a]\ntype = ftp\nhost = h\nport = 99999\n", "[a] port: must be between 1 and 65535"),
        ("[a]\ntype = ftp\nhost = h\nport = x\n", "[a] port: must be a whole number"),
        ("[a]\ntype = ftp\nhost = h\npassive = false\n", "[a] passive: active (PORT) mode"),
        ("[a]\ntype = ftp\nhost = h\nhots = x\n", "[a] hots: unknown key"),
        ("[l]\ntype = local\nbase_path = data\n", "[l] base_path: must be an absolute path"),
        ("[l]\ntype = local\n", "[l] base_path: missing"),
        (
            "[a]\ntype = local\nbase_path = /x\n[a]\ntype = local\nbase_path = /y\n",
            "[a]: connection id defined twice",
        ),
        ("", "defines no connections"),
    ],
)
def test_bad_registry_names_file_section_and_key(tmp_path, text, expected):
    """The error message points at the exact place to fix."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_registry(path)
    assert str(caught.value).startswith(str(path))
    assert expected in str(caught.value)


def test_unreadable_registry_is_a_config_error(tmp_path):
    """A missing file stops start-up with the file named."""
    with pytest.raises(ConfigError, match="cannot read connection registry"):
        load_registry(tmp_path / "absent.ini")


def test_unknown_connection_id_is_invalid_config(tmp_path):
    """A task naming an id that is not in the registry fails as INVALID_CONFIG."""
    registry = load_registry(write(tmp_path, "[l]\ntype = local\nbase_path = /x\n"))
    with pytest.raises(InvalidConfig, match="unknown connection id 'nope'"):
        registry.resolve("nope")

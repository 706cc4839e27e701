"""connections.ini is validated at start-up; every problem names the file, section and key."""

from pathlib import Path

import pytest

from models.connections import FtpConnection, LocalConnection, load_registry
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


def test_tls_keys_parse_and_implicit_tls_defaults_to_port_990(tmp_path):
    """tls, tls_verify, tls_ca_file and tls_server_name are read and shown (they are no secret)."""
    ca = tmp_path / "ca.pem"
    ca.write_text(CA_PEM)
    registry = load_registry(
        write(
            tmp_path,
            f"""
[explicit]
type = ftp
host = 10.0.0.5
tls = explicit
tls_ca_file = {ca}
tls_server_name = ftp.partner.example

[implicit]
type = ftp
host = ftps.example.com
tls = Implicit
tls_verify = false

[plain]
type = ftp
host = ftp.example.com
""",
        )
    )
    explicit, implicit, plain = (registry.resolve(n) for n in ("explicit", "implicit", "plain"))
    assert isinstance(explicit, FtpConnection)
    assert (explicit.tls, explicit.port, explicit.tls_verify) == ("explicit", 21, True)
    assert (explicit.tls_ca_file, explicit.tls_server_name) == (ca, "ftp.partner.example")
    assert explicit.public()["tls_ca_file"] == str(ca)
    assert isinstance(implicit, FtpConnection)
    assert (implicit.tls, implicit.port, implicit.tls_verify) == ("implicit", 990, False)
    assert isinstance(plain, FtpConnection)
    assert (plain.tls, plain.tls_verify, plain.tls_ca_file) == ("none", True, None)
    assert plain.public()["tls"] == "none"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls = ssl\n", "[a] tls: must be one of none, explicit, implicit; got 'ssl'"),
        ("tls_verify = false\n", "[a] tls_verify: only meaningful with tls = explicit or implicit"),
        ("tls = explicit\ntls_verify = maybe\n", "[a] tls_verify: must be true or false"),
        ("tls = explicit\ntls_ca_file = ca.pem\n", "[a] tls_ca_file: must be an absolute path"),
        ("tls = explicit\ntls_ca_file = /nonexistent/ca.pem\n", "[a] tls_ca_file: cannot read"),
        ("tls = explicit\ntls_server_name = a b\n", "[a] tls_server_name: must be a host name"),
        (
            "tls = implicit\ntls_verify = off\ntls_ca_file = /etc/hostname\n",
            "[a] tls_ca_file: has no effect with tls_verify = false",
        ),
    ],
)
def test_bad_tls_settings_stop_start_up_with_the_key_named(tmp_path, text, expected):
    """A TLS setting that cannot work is a start-up error, not a failure at the first connect."""
    path = write(tmp_path, "[a]\ntype = ftp\nhost = h\n" + text)
    with pytest.raises(ConfigError) as caught:
        load_registry(path)
    assert expected in str(caught.value)


def test_tls_ca_file_that_holds_no_certificate_is_a_config_error(tmp_path):
    """A CA file that is not PEM is caught at start-up."""
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    path = write(tmp_path, f"[a]\ntype = ftp\nhost = h\ntls = explicit\ntls_ca_file = {bogus}\n")
    with pytest.raises(ConfigError, match=r"\[a\] tls_ca_file: .*holds no PEM certificate"):
        load_registry(path)


# A throw-away self-signed CA certificate (no key needed: the registry only loads it).
CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBQzCB6qADAgECAgEBMAoGCCqGSM49BAMCMCAxHjAcBgNVBAMMFXJlZ2lzdHJ5
IHVuaXQgdGVzdCBDQTAgFw0yNjAxMDEwMDAwMDBaGA8yMTI1MTIwODAwMDAwMFow
IDEeMBwGA1UEAwwVcmVnaXN0cnkgdW5pdCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEvaw1RMWpu+kEDMKPtfraQOK8nQjWtUtLZ4EmeHw9HAZWJH0P
0ept3Mh+7GsdVkyX6A6kSMJ9x+9ugKtIi7GHU6MTMBEwDwYDVR0TAQH/BAUwAwEB
/zAKBggqhkjOPQQDAgNIADBFAiBlHoT4WCInVivWUJ/5xp/N8N536Xxbkd7kjD7G
Phe7TAIhAOUEgsVIXGWQioaNwa55iCELUw2zPR6d6dC3QuCE6uyP
-----END CERTIFICATE-----
"""

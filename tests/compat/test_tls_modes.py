"""A `tls` setting that does not match the server fails at connect, with a message saying so."""

from __future__ import annotations

from typing import Any

import pytest

from models.errors import ConnectionFailed, ServerBusy
from pools.session import FTPSession
from tests.compat.servers import PASSWORD, SERVER_NAME, VARIANTS, Server

pytestmark = pytest.mark.timeout(60)

PLAIN = [n for n, (_, tls, overwrite) in VARIANTS.items() if tls == "none" and overwrite]
EXPLICIT = [n for n, (_, tls, _) in VARIANTS.items() if tls == "explicit"]
IMPLICIT = [n for n, (_, tls, _) in VARIANTS.items() if tls == "implicit"]


async def connect_error(server: Server, **overrides: Any) -> ConnectionFailed:
    session = FTPSession(
        server.connection(**overrides), connect_timeout=1, command_timeout=5, block_size=65536
    )
    try:
        with pytest.raises(ConnectionFailed) as caught:
            await session.connect()
    finally:
        await session.aclose()
    assert PASSWORD not in caught.value.message
    return caught.value


@pytest.mark.parametrize("variant", PLAIN)
async def test_explicit_tls_against_a_plain_server_says_auth_tls_was_refused(farm, variant):
    """AUTH TLS refused: CONNECTION_ERROR, not retryable, naming explicit FTPS."""
    server = farm.get(variant)
    error = await connect_error(
        server, tls="explicit", tls_ca_file=farm.ca.ca_file, tls_server_name=SERVER_NAME
    )
    assert error.retryable is False
    assert "server refused AUTH TLS, so explicit FTPS is not possible" in error.message


@pytest.mark.parametrize("variant", PLAIN)
async def test_implicit_tls_against_a_plain_server_is_a_failed_handshake(farm, variant):
    """The plain greeting where a TLS handshake belongs: CONNECTION_ERROR naming the cause."""
    server = farm.get(variant)
    error = await connect_error(
        server, tls="implicit", tls_ca_file=farm.ca.ca_file, tls_server_name=SERVER_NAME
    )
    assert isinstance(error, ServerBusy) and error.retryable  # may be a refusal in clear text
    assert "answered in clear text instead of a TLS handshake" in error.message
    assert "or the port is not implicit FTPS" in error.message


@pytest.mark.parametrize("variant", EXPLICIT)
async def test_plain_client_against_a_server_requiring_tls_is_told_to_use_ftps(farm, variant):
    """The server's "TLS required" refusal: CONNECTION_ERROR, not retryable, reply quoted."""
    server = farm.get(variant)
    error = await connect_error(server, tls="none", tls_ca_file=None, tls_server_name=None)
    assert error.retryable is False
    assert "server requires FTPS (set tls = explicit or implicit)" in error.message


@pytest.mark.parametrize("variant", [*EXPLICIT, *IMPLICIT])
async def test_tls_verify_false_accepts_the_self_signed_server(farm, variant):
    """tls_verify = false: no CA, connected by IP, still a TLS session (for testing setups)."""
    server = farm.get(variant)
    session = FTPSession(
        server.connection(tls_verify=False, tls_ca_file=None, tls_server_name=None),
        connect_timeout=2,
        command_timeout=5,
        block_size=65536,
    )
    try:
        await session.connect()
        assert session.tls_version in ("TLSv1.2", "TLSv1.3")
        assert await session.noop()
    finally:
        await session.aclose()


@pytest.mark.parametrize("variant", IMPLICIT)
async def test_plain_client_against_an_implicit_port_times_out_as_connection_error(farm, variant):
    """Nothing is said in clear text on an implicit port: a retryable CONNECTION_ERROR."""
    server = farm.get(variant)
    error = await connect_error(server, tls="none", tls_ca_file=None, tls_server_name=None)
    assert error.retryable is True
    assert "timed out" in error.message

"""The reply-code and OS-error table (pools/translate.py) against SPEC.md section 2."""

from __future__ import annotations

import socket
import ssl

import aioftp
import pytest

from models.errors import ErrorCode, FileNotFound, FtpPoolerError, ServerBusy
from pools.translate import Phase, ftp_errors

WHERE = "127.0.0.1:2121/out/report.csv"


def reply(code: str, text: str) -> aioftp.StatusCodeError:
    """What aioftp raises for an unexpected reply (text as it parses it: after the code)."""
    return aioftp.StatusCodeError((aioftp.Code("2xx"),), (aioftp.Code(code),), [f" {text}"])


def tls_error(cls: type[ssl.SSLError], reason: str) -> ssl.SSLError:
    """An SSL error as the ssl module raises it: its ``reason`` (and ``verify_message``) set."""
    exc = cls(1, f"[SSL: {reason.upper()}] {reason}")
    exc.reason = reason
    if isinstance(exc, ssl.SSLCertVerificationError):
        exc.verify_message = reason
    return exc


def translated(exc: BaseException, phase: Phase) -> FtpPoolerError:
    with pytest.raises(FtpPoolerError) as caught, ftp_errors(phase, WHERE):
        raise exc
    return caught.value


@pytest.mark.parametrize(
    ("phase", "code", "text", "error_code", "retryable"),
    [
        # 421: the server is busy or closing the session; the pool backs off, then retries.
        ("connect", "421", "Too many connections (8) from this IP", "CONNECTION_ERROR", True),
        ("source", "421", "Timeout.", "CONNECTION_ERROR", True),
        # 530: a login refusal no retry fixes ...
        ("connect", "530", "Login incorrect.", "CONNECTION_ERROR", False),
        # ... unless it is ProFTPD's way of saying the server is full.
        (
            "connect",
            "530",
            "Sorry, the maximum number of clients (2) are already connected.",
            "CONNECTION_ERROR",
            True,
        ),
        # A server that requires TLS while the connection is plain: a configuration problem.
        (
            "connect",
            "530",
            "Non-anonymous sessions must use encryption.",
            "CONNECTION_ERROR",
            False,
        ),
        # Other refusals while connecting: transient if 4xx, permanent if 5xx.
        ("connect", "431", "Unable to accept security mechanism.", "CONNECTION_ERROR", True),
        ("connect", "500", "Unknown command.", "CONNECTION_ERROR", False),
        # The source is missing: FILE_NOT_FOUND, not retried.
        ("source", "550", "No such file or directory.", "FILE_NOT_FOUND", False),
        # 550 on the destination is a permission or path problem of the server's storage.
        ("destination", "550", "Permission denied.", "IO_ERROR", False),
        # Data connection failures.
        ("source", "425", "Can't open data connection.", "IO_ERROR", True),
        ("destination", "426", "Connection closed; transfer aborted.", "IO_ERROR", True),
        # Transient refusals of the server's storage.
        ("source", "450", "Requested file action not taken.", "IO_ERROR", True),
        ("destination", "451", "Requested action aborted: local error.", "IO_ERROR", True),
        ("destination", "452", "Insufficient storage space.", "IO_ERROR", True),
        # Permanent refusals.
        ("destination", "553", "Could not create file.", "IO_ERROR", False),
        ("destination", "552", "Exceeded storage allocation.", "IO_ERROR", False),
        # RFC 4217: the data connection's TLS was refused (vsftpd: session reuse required).
        ("source", "522", "SSL connection failed: session reuse required", "IO_ERROR", False),
    ],
)
def test_each_reply_code_maps_to_its_error_code_and_retryability(
    phase, code, text, error_code, retryable
):
    """A failed FTP reply becomes the error code and retryable flag the spec gives it."""
    error = translated(reply(code, text), phase)
    assert (error.error_code.value, error.retryable) == (error_code, retryable), error.message


def test_the_message_quotes_the_reply_and_says_where():
    """The error message carries the server's code and text and the server/path, on one line."""
    error = translated(reply("550", "No such file or directory."), "source")
    assert isinstance(error, FileNotFound)
    assert "550 No such file or directory." in error.message
    assert WHERE in error.message
    assert "\n" not in error.message


def test_a_421_is_a_busy_server_so_the_pool_can_lower_its_cap():
    """421 is raised as ServerBusy, the class the pool reacts to."""
    assert isinstance(translated(reply("421", "Too many users"), "connect"), ServerBusy)


@pytest.mark.parametrize(
    ("phase", "exc", "error_code", "retryable"),
    [
        ("connect", ConnectionRefusedError(111, "Connection refused"), "CONNECTION_ERROR", True),
        ("connect", TimeoutError(), "CONNECTION_ERROR", True),
        ("connect", socket.gaierror(-2, "Name or service not known"), "CONNECTION_ERROR", True),
        (
            "connect",
            tls_error(ssl.SSLError, "sslv3 alert handshake failure"),
            "CONNECTION_ERROR",
            True,
        ),
        # A certificate that fails verification will fail again: not retried.
        (
            "connect",
            tls_error(ssl.SSLCertVerificationError, "unable to get local issuer certificate"),
            "CONNECTION_ERROR",
            False,
        ),
        # The control connection lost mid-transfer.
        ("source", ConnectionResetError(104, "Connection reset by peer"), "CONNECTION_ERROR", True),
        ("destination", EOFError(), "CONNECTION_ERROR", True),
        ("source", OSError(113, "No route to host"), "CONNECTION_ERROR", True),
        # A stalled transfer and a broken TLS data connection are I/O failures, retried.
        ("source", TimeoutError(), "IO_ERROR", True),
        (
            "destination",
            tls_error(ssl.SSLError, "decryption failed or bad record mac"),
            "IO_ERROR",
            True,
        ),
    ],
)
def test_each_network_error_maps_to_its_error_code_and_retryability(
    phase, exc, error_code, retryable
):
    """Connect failures are CONNECTION_ERROR; a stall or data TLS failure mid-transfer IO_ERROR."""
    error = translated(exc, phase)
    assert (error.error_code.value, error.retryable) == (error_code, retryable), error.message
    assert WHERE in error.message


def test_anything_else_is_unknown_error_naming_the_exception_type():
    """An unforeseen exception is UNKNOWN_ERROR, not retried, its type named in the message."""
    error = translated(ValueError("bad literal"), "source")
    assert (error.error_code, error.retryable) == (ErrorCode.UNKNOWN_ERROR, False)
    assert "ValueError" in error.message and "bad literal" in error.message


def test_our_own_errors_pass_through_unchanged():
    """An FtpPoolerError raised inside the block is not re-translated."""
    original = FileNotFound("source not found")
    assert translated(original, "connect") is original

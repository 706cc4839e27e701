"""The one place where aioftp and OS errors become FTP Pooler errors (no aioftp leaks up)."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import aioftp

from models.errors import (
    ConnectionFailed,
    FileNotFound,
    FtpPoolerError,
    InvalidTask,
    ReplyTooLarge,
    ServerBusy,
    TransferIOError,
    UnknownError,
)

# What the failing FTP command was doing: "connect" covers connect + login, "source" reading the
# file to transfer, "destination" writing it (or renaming into place, creating directories).
Phase = Literal["connect", "source", "destination", "command"]

_TRANSIENT_REPLIES = {"450", "451", "452"}
_CAPACITY_WORDS = re.compile(r"maximum number|too many", re.IGNORECASE)
_TLS_WORDS = re.compile(r"\b(TLS|SSL|encryption|cleartext)\b", re.IGNORECASE)
_DATA_CONNECTION_REPLIES = {"425", "426"}


@contextmanager
def ftp_errors(phase: Phase, where: str) -> Iterator[None]:
    """Re-raise anything escaping the block as an :class:`FtpPoolerError` for ``phase``."""
    try:
        yield
    except ReplyTooLarge as exc:
        raise ReplyTooLarge(f"{exc.message}; session closed ({where})") from None
    except FtpPoolerError:
        raise
    except aioftp.errors.InvalidCommand:  # aioftp's own CR/LF guard
        raise InvalidTask("a path sent to an FTP server must not contain CR or LF") from None
    except aioftp.StatusCodeError as exc:
        raise _from_reply(exc, phase, where) from None
    except (TimeoutError, ConnectionError, socket.gaierror, ssl.SSLError, EOFError) as exc:
        raise _from_network(exc, phase, where) from None
    except OSError as exc:
        raise _from_network(exc, phase, where) from None
    except Exception as exc:
        raise UnknownError(f"{type(exc).__name__} on {where}: {exc}") from None


def reply_of(exc: aioftp.StatusCodeError) -> tuple[str, str]:
    """The last reply code and its text on one line (a multi-line reply's dashes dropped)."""
    code = str(exc.received_codes[-1]) if exc.received_codes else "???"
    lines = (str(line).lstrip("- ").rstrip() for line in (exc.info or []))
    return code, " ".join(line for line in lines if line)[:300]


def tls_refused(exc: aioftp.StatusCodeError, where: str) -> ConnectionFailed:
    """The server answered AUTH TLS with a refusal: it does not offer explicit FTPS."""
    code, info = reply_of(exc)
    return ConnectionFailed(
        f"server refused AUTH TLS, so explicit FTPS is not possible (tls = explicit): "
        f"server replied {code} {info} ({where})",
        retryable=False,
    )


def cleartext_on_implicit_port(exc: ssl.SSLError, where: str) -> ServerBusy:
    """The server spoke plain FTP where the TLS handshake was expected.

    vsftpd sends its "421 There are too many connections" refusal in clear text on an
    implicit-FTPS port, so this is treated like a 421 (the pool lowers its cap for a while);
    with no session open at all it fails the task like any 421, and the message names the other
    cause: a port that is not implicit FTPS.
    """
    return ServerBusy(
        f"server answered in clear text instead of a TLS handshake on {where} "
        f"({_describe(exc)}): a plain-text refusal such as vsftpd's '421 too many "
        "connections', or the port is not implicit FTPS (tls = implicit)"
    )


def data_tls_refused(exc: aioftp.StatusCodeError, where: str) -> TransferIOError | None:
    """A 425/522 after a data connection whose TLS session was not resumed, else None.

    Servers that require TLS session reuse on data connections (vsftpd's require_ssl_reuse,
    ProFTPD unless NoSessionReuseRequired) refuse such a connection: vsftpd with 522, ProFTPD
    with a plain 425.
    """
    code, info = reply_of(exc)
    if code not in ("425", "522"):
        return None
    return TransferIOError(
        "TLS on the data connection refused; its TLS session was not resumed from the control "
        "connection, which servers requiring session reuse reject: "
        f"server replied {code} {info} ({where})",
        retryable=False,
    )


def _from_reply(exc: aioftp.StatusCodeError, phase: Phase, where: str) -> FtpPoolerError:
    code, info = reply_of(exc)
    message = f"server replied {code} {info}".rstrip() + f" ({where})"
    if code == "522":
        # RFC 4217: the data connection's TLS was refused (vsftpd: session reuse required).
        return TransferIOError(f"TLS on the data connection refused: {message}", retryable=False)
    if phase == "connect" and code[0] in "45" and _TLS_WORDS.search(info):
        return ConnectionFailed(
            f"server requires FTPS (set tls = explicit or implicit): {message}", retryable=False
        )
    if code == "530" and _CAPACITY_WORDS.search(info):
        # ProFTPD's MaxClients* refusals come as 530 after USER; a full server, not a bad login.
        return ServerBusy(f"server busy (session limit reached): {message}")
    if code == "530":
        return ConnectionFailed(f"login refused: {message}", retryable=False)
    if code == "421":
        return ServerBusy(f"server busy or closing the session: {message}")
    if phase == "connect":
        return ConnectionFailed(message, retryable=code.startswith("4"))
    if code == "550" and phase == "source":
        return FileNotFound(f"source not found: {message}")
    if code in _DATA_CONNECTION_REPLIES or code in _TRANSIENT_REPLIES:
        return TransferIOError(message)
    return TransferIOError(message, retryable=code.startswith("4"))


def _from_network(exc: BaseException, phase: Phase, where: str) -> FtpPoolerError:
    reason = _describe(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        # The certificate will not change by retrying: a CA (tls_ca_file) or name is missing.
        return ConnectionFailed(
            f"TLS certificate verification failed for {where}: {reason}", retryable=False
        )
    if isinstance(exc, ssl.SSLError):
        if phase == "connect":
            return ConnectionFailed(f"TLS handshake with {where} failed: {reason}")
        return TransferIOError(f"TLS on the data connection to {where} failed: {reason}")
    if phase == "connect":
        return ConnectionFailed(f"cannot connect to {where}: {reason}")
    if isinstance(exc, TimeoutError):
        return TransferIOError(f"no progress on {where} within the timeout: {reason}")
    return ConnectionFailed(f"connection to {where} lost: {reason}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or exc.reason or str(exc)
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

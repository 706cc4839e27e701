"""The one place where aioftp and OS errors become FTP Pooler errors (no aioftp leaks up)."""

from __future__ import annotations

import errno
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
    ServerBusy,
    TransferIOError,
    UnknownError,
)

# What the failing FTP command was doing: "connect" covers connect + login, "source" reading the
# file to transfer, "destination" writing it (or renaming into place, creating directories).
Phase = Literal["connect", "source", "destination", "command"]

_TRANSIENT_REPLIES = {"450", "451", "452"}
_DATA_CONNECTION_REPLIES = {"425", "426"}


@contextmanager
def ftp_errors(phase: Phase, where: str) -> Iterator[None]:
    """Re-raise anything escaping the block as an :class:`FtpPoolerError` for ``phase``."""
    try:
        yield
    except FtpPoolerError:
        raise
    except aioftp.StatusCodeError as exc:
        raise _from_reply(exc, phase, where) from None
    except (TimeoutError, ConnectionError, socket.gaierror, ssl.SSLError, EOFError) as exc:
        raise _from_network(exc, phase, where) from None
    except OSError as exc:
        raise _from_network(exc, phase, where) from None
    except Exception as exc:
        raise UnknownError(f"{type(exc).__name__} on {where}: {exc}") from None


def _from_reply(exc: aioftp.StatusCodeError, phase: Phase, where: str) -> FtpPoolerError:
    code = str(exc.received_codes[-1]) if exc.received_codes else "???"
    info = " ".join(str(line) for line in (exc.info or [])).strip()[:300]
    message = f"server replied {code} {info}".rstrip() + f" ({where})"
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
    if phase == "connect":
        return ConnectionFailed(f"cannot connect to {where}: {reason}")
    if isinstance(exc, TimeoutError):
        return TransferIOError(f"no progress on {where} within the timeout: {reason}")
    return ConnectionFailed(f"connection to {where} lost: {reason}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@contextmanager
def local_errors(phase: Literal["source", "destination"], path: str) -> Iterator[None]:
    """Translate local file-system errors for the file at ``path`` (as the task named it)."""
    try:
        yield
    except FtpPoolerError:
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno == errno.ENOENT and phase == "source":
            raise FileNotFound(f"local source not found: {path}") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR):
            raise TransferIOError(f"local {phase} {path}: {reason}", retryable=False) from None
        raise TransferIOError(f"local {phase} {path}: {reason}") from None

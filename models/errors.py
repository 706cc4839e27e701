"""Error codes of the contract and the one exception tree that carries them.

Every failure a task can meet is raised as a subclass of :class:`FtpPoolerError`. The class decides
the wire category (``error_code``) and, by default, whether a retry can help (``retryable``); a
raise site may override ``retryable`` for one instance (a 530 login refusal is a CONNECTION_ERROR
that no retry will fix).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The failure categories published in ``error_code``."""

    INVALID_TASK = "INVALID_TASK"
    INVALID_CONFIG = "INVALID_CONFIG"
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    CONNECTION_ERROR = "CONNECTION_ERROR"
    IO_ERROR = "IO_ERROR"
    UNKNOWN_ERROR = "UNKNOWN_ERROR"


class FtpPoolerError(Exception):
    """Base of every error a task can fail with; carries its wire category."""

    error_code: ErrorCode = ErrorCode.UNKNOWN_ERROR
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class InvalidTask(FtpPoolerError):
    """The message is not a valid task: not JSON, bad field, or a path outside its base."""

    error_code = ErrorCode.INVALID_TASK


class InvalidConfig(FtpPoolerError):
    """The task names an unknown connection or an impossible direction."""

    error_code = ErrorCode.INVALID_CONFIG


class FileNotFound(FtpPoolerError):
    """The source file does not exist."""

    error_code = ErrorCode.FILE_NOT_FOUND


class ConnectionFailed(FtpPoolerError):
    """The FTP control connection could not be opened, logged in, or was lost."""

    error_code = ErrorCode.CONNECTION_ERROR
    retryable = True


class ServerBusy(ConnectionFailed):
    """The server refused another session (421: too many users or connections)."""


class Deferred(ConnectionFailed):
    """Too many tasks already wait for this connection: park this one (no attempt is used)."""


class ReplyTooLarge(ConnectionFailed):
    """The server's reply exceeded the line or byte bound (a flood): the session is closed."""

    retryable = False


class PoolTimeout(ConnectionFailed):
    """No session of the connection became free within the acquire timeout."""


class TransferIOError(FtpPoolerError):
    """The data connection, the server's storage or the local disk failed mid-transfer."""

    error_code = ErrorCode.IO_ERROR
    retryable = True


class SizeMismatch(TransferIOError):
    """The bytes written differ from the size the server reports or announced."""


class LocalIOTimeout(TransferIOError):
    """A local file operation did not finish within its bound (a hung mount, a stuck device)."""


class UnknownError(FtpPoolerError):
    """Anything not foreseen; the message names the original exception type."""

    error_code = ErrorCode.UNKNOWN_ERROR


class ConfigError(Exception):
    """The worker's settings or connection registry are invalid; the worker must not start."""

    def __init__(
        self, source: str, message: str, *, section: str | None = None, key: str | None = None
    ) -> None:
        self.source = source
        self.section = section
        self.key = key
        where = source
        if section is not None:
            where += f" [{section}]"
        if key is not None:
            where += f" {key}"
        super().__init__(f"{where}: {message}")

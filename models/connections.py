"""The connection registry: ``connections.ini`` parsed and validated into typed connections."""

from __future__ import annotations

import configparser
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from models import completion
from models.completion import CompletionAction
from models.errors import ConfigError, InvalidConfig

_TLS_KEYS = {"tls_verify", "tls_ca_file", "tls_server_name"}
_COMPLETION_KEYS = {"completion", "completion_target"}  # the default for tasks from here
_FTP_KEYS = {"type", "host", "port", "user", "pass", "passive", "max_sessions", "tls", *_TLS_KEYS}
_FTP_KEYS |= _COMPLETION_KEYS
_TLS_MODES = ("none", "explicit", "implicit")
TlsMode = Literal["none", "explicit", "implicit"]
IMPLICIT_TLS_PORT = 990
_LOCAL_KEYS = {"type", "base_path", *_COMPLETION_KEYS}
_INLINE_COMMENT = re.compile(r"\s[;#]")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class FtpConnection:
    """A remote FTP server and the login used on it."""

    id: str
    host: str
    port: int = 21
    user: str = "anonymous"
    password: str = field(default="", repr=False)
    passive: bool = True
    max_sessions: int | None = None
    # FTPS: "explicit" is AUTH TLS on the control port, "implicit" TLS from the first byte.
    tls: TlsMode = "none"
    tls_verify: bool = True
    tls_ca_file: Path | None = None
    tls_server_name: str | None = None
    completion: CompletionAction | None = None  # for downloads from here, unless the task says

    def public(self) -> dict[str, Any]:
        """Settings safe to show anywhere (never the password)."""
        return {
            "id": self.id,
            "type": "ftp",
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "passive": self.passive,
            "max_sessions": self.max_sessions,
            "tls": self.tls,
            "tls_verify": self.tls_verify,
            "tls_ca_file": str(self.tls_ca_file) if self.tls_ca_file else None,
            "tls_server_name": self.tls_server_name,
            **_public_completion(self.completion),
        }


@dataclass(frozen=True)
class LocalConnection:
    """A directory on the worker's own storage; every path is jailed under ``base_path``."""

    id: str
    base_path: Path
    completion: CompletionAction | None = None  # for uploads from here, unless the task says

    def public(self) -> dict[str, Any]:
        """Settings safe to show anywhere."""
        return {
            "id": self.id,
            "type": "local",
            "base_path": str(self.base_path),
            **_public_completion(self.completion),
        }


def _public_completion(action: CompletionAction | None) -> dict[str, Any]:
    return {"completion": action.as_dict()} if action is not None else {}


Connection = FtpConnection | LocalConnection


class Registry(Mapping[str, Connection]):
    """Connections by id, read once at start-up."""

    def __init__(self, connections: Mapping[str, Connection], source: str = "<memory>") -> None:
        self._connections = dict(connections)
        self.source = source

    def __getitem__(self, conn_id: str) -> Connection:
        return self._connections[conn_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._connections)

    def __len__(self) -> int:
        return len(self._connections)

    def resolve(self, conn_id: str) -> Connection:
        """The connection named by a task, or :class:`InvalidConfig`."""
        try:
            return self._connections[conn_id]
        except KeyError:
            raise InvalidConfig(f"unknown connection id {conn_id!r}") from None

    def ftp_connections(self) -> list[FtpConnection]:
        return [c for c in self._connections.values() if isinstance(c, FtpConnection)]


def load_registry(path: Path) -> Registry:
    """Parse and validate ``connections.ini``; any problem is a :class:`ConfigError`."""
    source = str(path)
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\x00")
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle, source=source)
    except OSError as exc:
        raise ConfigError(
            source, f"cannot read connection registry: {exc.strerror or exc}"
        ) from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(source, "connection id defined twice", section=exc.section) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(source, "key given twice", section=exc.section, key=exc.option) from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(source, f"not a valid INI file: {exc}") from None
    connections: dict[str, Connection] = {}
    for section in parser.sections():
        values: dict[str, str] = {}
        for key, raw in parser[section].items():
            try:
                values[key] = ini_value(raw)
            except ValueError as exc:
                raise ConfigError(source, str(exc), section=section, key=key) from None
        connections[section] = _parse_section(source, section, values)
    if not connections:
        raise ConfigError(source, "defines no connections")
    return Registry(connections, source)


def ini_value(raw: str) -> str:
    """A value without its inline comment: ``;`` or ``#`` after whitespace starts one.

    A value that must keep such a sequence (a password like ``pa ;ss``) is written in double
    quotes: ``pass = "pa ;ss"  ; comment``; the quotes are removed. A ``;`` or ``#`` with no
    whitespace before it (``pass = pa;ss#1``) is always part of the value.
    """
    text = raw.strip()
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise ValueError("quoted value has no closing double quote")
        rest = text[end + 1 :].strip()
        if rest and rest[0] not in ";#":
            raise ValueError("text after the closing double quote (a comment starts with ; or #)")
        return text[1:end]
    match = _INLINE_COMMENT.search(text)
    return text[: match.start()].rstrip() if match else text


def _parse_section(source: str, section: str, values: Mapping[str, str]) -> Connection:
    def fail(key: str | None, message: str) -> ConfigError:
        return ConfigError(source, message, section=section, key=key)

    kind = values.get("type", "").strip()
    if not kind:
        raise fail("type", "missing (expected 'ftp' or 'local')")
    allowed = {"ftp": _FTP_KEYS, "local": _LOCAL_KEYS}.get(kind)
    if allowed is None:
        raise fail("type", f"unknown connection type {kind!r} (expected 'ftp' or 'local')")
    for key in values:
        if key not in allowed:
            raise fail(key, f"unknown key for a {kind} connection")
    if kind == "local":
        raw_base = values.get("base_path", "").strip()
        if not raw_base:
            raise fail("base_path", "missing")
        base = Path(raw_base)
        if not base.is_absolute():
            raise fail("base_path", f"must be an absolute path, got {raw_base!r}")
        return LocalConnection(
            id=section, base_path=base, completion=completion.from_settings(values, fail)
        )

    host = values.get("host", "").strip()
    if not host:
        raise fail("host", "missing")
    tls = values.get("tls", "none").strip().lower()
    if tls not in _TLS_MODES:
        raise fail("tls", f"must be one of none, explicit, implicit; got {tls!r}")
    default_port = str(IMPLICIT_TLS_PORT) if tls == "implicit" else "21"
    port = _int(values.get("port", default_port), 1, 65535, lambda m: fail("port", m))
    passive = _bool(values.get("passive", "true"), lambda m: fail("passive", m))
    if not passive:
        raise fail("passive", "active (PORT) mode is not supported; use passive = true")
    max_sessions = None
    if "max_sessions" in values:
        max_sessions = _int(values["max_sessions"], 1, 10_000, lambda m: fail("max_sessions", m))
    tls_verify, ca_file, server_name = _tls_settings(tls, values, fail)
    return FtpConnection(
        id=section,
        host=host,
        port=port,
        user=values.get("user", "anonymous"),
        password=values.get("pass", ""),
        passive=passive,
        max_sessions=max_sessions,
        tls=cast(TlsMode, tls),  # checked against _TLS_MODES above
        tls_verify=tls_verify,
        tls_ca_file=ca_file,
        tls_server_name=server_name,
        completion=completion.from_settings(values, fail),
    )


def _tls_settings(
    tls: str, values: Mapping[str, str], fail: Any
) -> tuple[bool, Path | None, str | None]:
    """``tls_verify``, ``tls_ca_file``, ``tls_server_name``; checked now, not at first connect."""
    if tls == "none":
        stray = sorted(_TLS_KEYS & set(values))
        if stray:
            raise fail(stray[0], "only meaningful with tls = explicit or implicit")
        return True, None, None
    verify = _bool(values.get("tls_verify", "true"), lambda m: fail("tls_verify", m))
    ca_file = None
    if "tls_ca_file" in values:
        if not verify:
            raise fail("tls_ca_file", "has no effect with tls_verify = false")
        ca_file = Path(values["tls_ca_file"].strip())
        if not ca_file.is_absolute():
            raise fail("tls_ca_file", f"must be an absolute path, got {str(ca_file)!r}")
        try:
            ssl.create_default_context(cafile=str(ca_file))
        except ssl.SSLError as exc:  # before OSError: SSLError is one
            reason = exc.reason or exc
            raise fail("tls_ca_file", f"{ca_file} holds no PEM certificate ({reason})") from None
        except OSError as exc:
            raise fail("tls_ca_file", f"cannot read {ca_file}: {exc.strerror or exc}") from None
    server_name = None
    if "tls_server_name" in values:
        server_name = values["tls_server_name"].strip()
        if not server_name or any(c.isspace() or c in "/:" for c in server_name):
            raise fail("tls_server_name", f"must be a host name, got {server_name!r}")
    return verify, ca_file, server_name


def _int(raw: str, low: int, high: int, fail: Any) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise fail(f"must be a whole number, got {raw.strip()!r}") from None
    if not low <= value <= high:
        raise fail(f"must be between {low} and {high}, got {value}")
    return value


def _bool(raw: str, fail: Any) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise fail(f"must be true or false, got {raw.strip()!r}")

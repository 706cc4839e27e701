"""The connection registry: ``connections.ini`` parsed and validated into typed connections."""

from __future__ import annotations

import configparser
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import ConfigError, InvalidConfig

_FTP_KEYS = {"type", "host", "port", "user", "pass", "passive", "max_sessions"}
_LOCAL_KEYS = {"type", "base_path"}
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
        }


@dataclass(frozen=True)
class LocalConnection:
    """A directory on the worker's own storage; every path is jailed under ``base_path``."""

    id: str
    base_path: Path

    def public(self) -> dict[str, Any]:
        """Settings safe to show anywhere."""
        return {"id": self.id, "type": "local", "base_path": str(self.base_path)}


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
        connections[section] = _parse_section(source, section, parser[section])
    if not connections:
        raise ConfigError(source, "defines no connections")
    return Registry(connections, source)


def _parse_section(source: str, section: str, values: configparser.SectionProxy) -> Connection:
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
        return LocalConnection(id=section, base_path=base)

    host = values.get("host", "").strip()
    if not host:
        raise fail("host", "missing")
    port = _int(values.get("port", "21"), 1, 65535, lambda m: fail("port", m))
    passive = _bool(values.get("passive", "true"), lambda m: fail("passive", m))
    if not passive:
        raise fail("passive", "active (PORT) mode is not supported; use passive = true")
    max_sessions = None
    if "max_sessions" in values:
        max_sessions = _int(values["max_sessions"], 1, 10_000, lambda m: fail("max_sessions", m))
    return FtpConnection(
        id=section,
        host=host,
        port=port,
        user=values.get("user", "anonymous"),
        password=values.get("pass", ""),
        passive=passive,
        max_sessions=max_sessions,
    )


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

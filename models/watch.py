"""Directory watches: the YAML configuration of one watch, and what it makes of a listed file.

A watch lists a remote directory every ``interval_seconds`` and turns each new, settled file
(same size and modification time on two consecutive scans, and/or older than ``min_age_seconds``)
into one ordinary task. The task's id is derived from the watch, the path, the size and the
modification time, so a repeated decision about the same file yields the same task.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import pydantic

from models.connections import FtpConnection, LocalConnection, Registry
from models.errors import ConfigError
from models.templates import template_problem

# {name} a.csv, {stem} a, {suffix} .csv, {dir} the file's remote directory, {relpath} its path
# below the watched directory (b/a.csv), {reldir} that path's directory ("" or b), {watch}, and
# the file's modification time in UTC (so a repeated decision renders the same path).
PLACEHOLDERS = (
    "name",
    "stem",
    "suffix",
    "dir",
    "relpath",
    "reldir",
    "watch",
    "yyyy",
    "mm",
    "dd",
    "hh",
)
SEPARATOR = "|"  # table keys are "<watch>|<path>"; a watch's own statistics sit under "<watch>"

_Name = Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class WatchSettings(pydantic.BaseModel):
    """One entry of ``watches:`` in the YAML file."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: _Name
    connection: str = pydantic.Field(min_length=1)  # an ftp connection of connections.ini
    directory: str = pydantic.Field(min_length=1)  # absolute remote path
    recursive: bool = False
    pattern: str = pydantic.Field("*", min_length=1)  # fnmatch on the file name, case-sensitive
    min_age_seconds: float = pydantic.Field(0, ge=0)
    stable_check: bool = True  # same size and modify time on two consecutive scans
    destination: str = pydantic.Field(min_length=1)  # a local connection of connections.ini
    destination_path: str = pydantic.Field(min_length=1)  # template, see PLACEHOLDERS
    interval_seconds: float = pydantic.Field(30, ge=0.5)
    # Entries of files no longer listed are forgotten after this long (a file coming back
    # later with the same size and time is then a new file).
    forget_after_hours: float = pydantic.Field(168, gt=0)

    @pydantic.field_validator("directory")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute remote path (start with /)")
        if any(c in value for c in "\r\n\x00"):
            raise ValueError("must not contain CR, LF or NUL")
        return value.rstrip("/") or "/"

    @pydantic.field_validator("destination_path")
    @classmethod
    def _template(cls, value: str) -> str:
        problem = check_template(value)
        if problem:
            raise ValueError(problem)
        return value

    @pydantic.model_validator(mode="after")
    def _settles_somehow(self) -> WatchSettings:
        if not self.stable_check and self.min_age_seconds <= 0:
            raise ValueError(
                "a watch needs stable_check: true or min_age_seconds > 0, or it would pick up "
                "files still being written"
            )
        return self

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


def check_template(template: str) -> str | None:
    """What is wrong with a destination template, or None."""
    return template_problem(template, PLACEHOLDERS)


def check_unique(watches: list[WatchSettings]) -> list[WatchSettings]:
    names = [w.name for w in watches]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"watch names must be unique; repeated: {', '.join(duplicates)}")
    return watches


@dataclass(frozen=True, slots=True)
class ListedFile:
    """One file of a listing: its full remote path, size and modification time.

    ``modify`` is kept as the server gave it, normalised to ``YYYYMMDDHHMMSS`` (MLSD) or to
    the minute LIST shows; ``mtime`` is the same instant as a UNIX time (None if unknown).
    """

    path: str
    size: int
    modify: str
    mtime: float | None


def table_key(watch: str, path: str) -> str:
    return f"{watch}{SEPARATOR}{path}"


def task_id_for(watch: str, listed: ListedFile) -> str:
    """The same file (path, size, modification time) always gets the same task id."""
    digest = hashlib.sha256(
        f"{watch}\x00{listed.path}\x00{listed.size}\x00{listed.modify}".encode()
    ).hexdigest()
    return f"watch-{watch}-{digest[:24]}"


def render_destination(watch: WatchSettings, listed: ListedFile) -> str:
    directory, name = posixpath.split(listed.path)
    stem, suffix = posixpath.splitext(name)
    base = watch.directory.rstrip("/") + "/"
    relpath = listed.path[len(base) :] if listed.path.startswith(base) else name
    when = datetime.fromtimestamp(listed.mtime or 0, UTC)
    return watch.destination_path.format(
        name=name,
        stem=stem,
        suffix=suffix,
        dir=directory.rstrip("/"),
        relpath=relpath,
        reldir=posixpath.dirname(relpath),
        watch=watch.name,
        yyyy=f"{when.year:04d}",
        mm=f"{when.month:02d}",
        dd=f"{when.day:02d}",
        hh=f"{when.hour:02d}",
    )


def task_for(watch: WatchSettings, listed: ListedFile) -> dict[str, Any]:
    """The ordinary task a settled file becomes (``metadata`` says where it came from)."""
    return {
        "task_id": task_id_for(watch.name, listed),
        "src_id": watch.connection,
        "src_path": listed.path,
        "dst_id": watch.destination,
        "dst_path": render_destination(watch, listed),
        "metadata": {
            "watch": watch.name,
            "size": listed.size,
            "modify": listed.modify,
        },
    }


def check_connections(watches: list[WatchSettings], registry: Registry, source: str) -> None:
    """Each watch lists an ``ftp`` connection and downloads to a ``local`` one, or the worker
    does not start (:class:`ConfigError` naming the watch and key)."""
    for n, watch in enumerate(watches):
        for key, wanted in (("connection", FtpConnection), ("destination", LocalConnection)):
            conn_id = getattr(watch, key)
            found = registry.get(conn_id)
            if not isinstance(found, wanted):
                kind = "ftp" if wanted is FtpConnection else "local"
                problem = "unknown connection" if found is None else f"not a {kind} connection"
                raise ConfigError(
                    source,
                    f"{problem} {conn_id!r} (watch {watch.name!r})",
                    key=f"watches.{n}.{key}",
                )

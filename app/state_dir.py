"""The worker's state directory: one per consumer group under ``worker.data_dir``, locked.

Faust keeps its tables (RocksDB) in its data directory under names that do not include the
consumer group, so two groups sharing one ``data_dir`` read each other's persisted offsets and
crash on start-up. Each group gets ``<data_dir>/<consumer_group>/`` (tables and the temp-file
journal), and a running worker holds an exclusive lock on it so a second worker pointed at the
same directory stops at once with one line instead of fighting over RocksDB's own lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from pathlib import Path
from typing import TextIO

from app.settings import Settings

JOURNAL_NAME = "temp-files.journal"
LOCK_NAME = "worker.lock"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

_held: list[TextIO] = []  # the lock lives as long as the process


class StateDirError(Exception):
    """The state directory cannot be used (unwritable, or locked by another worker)."""


def group_state_dir(settings: Settings) -> Path:
    """``<data_dir>/<consumer_group>``; a group name that is not a safe file name is
    spelt safely with a short hash of the original, so two groups never share a directory."""
    group = settings.kafka.consumer_group
    name = _UNSAFE.sub("_", group)
    if name != group or name in (".", ".."):
        name = f"{name}-{hashlib.sha256(group.encode()).hexdigest()[:8]}"
    return settings.worker.data_dir / name


def journal_path(settings: Settings) -> Path:
    return group_state_dir(settings) / JOURNAL_NAME


def claim(settings: Settings) -> Path:
    """Create and lock the group's state directory; :class:`StateDirError` when it cannot be
    written or another worker holds it. Moves a journal from the old shared location in."""
    directory = group_state_dir(settings)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 (held)
    except OSError as exc:
        raise StateDirError(
            f"worker.data_dir {settings.worker.data_dir} is not writable: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StateDirError(
            f"another worker (pid {holder}) already uses {directory} "
            f"(consumer group {settings.kafka.consumer_group!r}); give each worker its own "
            "worker.data_dir"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _held.append(lock)
    _adopt_legacy_journal(settings.worker.data_dir / JOURNAL_NAME, directory / JOURNAL_NAME)
    return directory


def _adopt_legacy_journal(old: Path, new: Path) -> None:
    """The journal used to live directly in data_dir: the first group to start takes it over,
    so a crashed run's temporaries are still removed."""
    if not old.exists():
        return
    if new.exists():
        # Both: keep the group's own and append the old entries (replayed together).
        with old.open(encoding="utf-8") as source, new.open("a", encoding="utf-8") as target:
            target.write(source.read())
        old.unlink()
    else:
        os.replace(old, new)

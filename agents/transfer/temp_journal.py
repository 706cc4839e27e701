"""A journal of temporary files being written, so a crash (even SIGKILL) leaves none behind.

Before a temporary file is created, local or on an FTP server, a ``+`` line naming it is appended;
when it has been renamed into place or removed, a ``-`` line. At the next start the journal is
replayed and every temporary still listed is removed (remote ones over a pooled session), then the
journal starts afresh. It lives in the worker's data directory, which survives restarts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO


@dataclass(frozen=True)
class TempFile:
    """A temporary file: ``conn_id`` None for local storage, else the FTP connection's id."""

    path: str
    conn_id: str | None = None


class TempJournal:
    """Append-only record of temporary files in progress, compacted as it grows."""

    def __init__(self, path: Path, compact_after: int = 50_000) -> None:
        self.path = path
        self.compact_after = compact_after
        self.leftovers = self._replay()
        self._live: set[TempFile] = set(self.leftovers)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lines = 0
        self._file: TextIO = self._rewrite()

    def _rewrite(self) -> TextIO:
        """Start the file afresh with only the entries still live (atomic replace)."""
        temp = self.path.with_suffix(".compact")
        with open(temp, "w", encoding="utf-8") as out:
            for entry in self._live:
                out.write(json.dumps(["+", entry.conn_id, entry.path]) + "\n")
        os.replace(temp, self.path)
        self._lines = len(self._live)
        return open(self.path, "a", buffering=1, encoding="utf-8")

    def _replay(self) -> list[TempFile]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        live: dict[TempFile, None] = {}
        for line in lines:
            try:
                op, conn_id, path = json.loads(line)
            except (ValueError, TypeError):
                continue  # a line cut short by the crash
            entry = TempFile(str(path), conn_id)
            if op == "+":
                live[entry] = None
            else:
                live.pop(entry, None)
        return list(live)

    def started(self, entry: TempFile) -> None:
        self._live.add(entry)
        self._write("+", entry)

    def finished(self, entry: TempFile) -> None:
        self._live.discard(entry)
        self._write("-", entry)
        if self._lines > self.compact_after:
            self._file.close()
            self._file = self._rewrite()

    def _write(self, op: str, entry: TempFile) -> None:
        self._file.write(json.dumps([op, entry.conn_id, entry.path]) + "\n")
        self._lines += 1

    def remove_local_leftovers(self) -> int:
        """Delete leftover local temporaries; returns how many existed."""
        removed = 0
        for entry in [e for e in self.leftovers if e.conn_id is None]:
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError:
                continue  # kept in the journal: tried again at the next start
            self.finished(entry)
        return removed

    def remote_leftovers(self) -> list[TempFile]:
        return [e for e in self.leftovers if e.conn_id is not None]

    def close(self) -> None:
        self._file.close()


class TempRecord(Protocol):
    """What a transfer reports about its temporary files."""

    def started(self, entry: TempFile) -> None: ...

    def finished(self, entry: TempFile) -> None: ...


class WorkerJournal:
    """The worker's journal, opened when the worker starts: a CLI process building the same
    app in the same data directory (kubectl exec) must not replay it and remove a running
    worker's temporaries. Until opened, nothing is recorded (nothing is transferred then)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal: TempJournal | None = None

    def open(self) -> TempJournal:
        if self.journal is None:
            self.journal = TempJournal(self.path)
        return self.journal

    def started(self, entry: TempFile) -> None:
        if self.journal is not None:
            self.journal.started(entry)

    def finished(self, entry: TempFile) -> None:
        if self.journal is not None:
            self.journal.finished(entry)

    def remote_leftovers(self) -> list[TempFile]:
        return self.journal.remote_leftovers() if self.journal is not None else []

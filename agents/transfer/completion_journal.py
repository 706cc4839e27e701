"""A journal of delivered files whose completion action is pending or was just done.

Written in the worker's data directory (it survives restarts) so that a task redelivered after a
crash between "destination in place" and "result published" finishes its completion action
exactly once instead of downloading again or deleting blindly. A ``+`` line is appended once the
destination is in place, before the source is touched; an ``=`` line with the outcome when the
action is over. Pending entries live until resolved; finished ones for ``done_retention``
seconds (long enough for the result to be published and its offset committed, or for a crashed
worker to restart and see the task again). Lines are written through to the kernel at once, so a
SIGKILL loses nothing; a power loss may lose the last lines (the destination file is not fsynced
either).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

DONE_RETENTION_SECONDS = 900.0


@dataclass
class Delivery:
    """A file delivered by ``task_id`` and what is to happen, or happened, to its source."""

    task_id: str
    direction: str
    src_id: str
    src_path: str
    dst_id: str
    dst_path: str
    size: int
    sha256: str
    action: str
    template: str | None  # the move target as the task or connection gave it
    target: str | None  # rendered once, at delivery, so a redelivery moves to the same place
    at: float  # epoch seconds of the delivery
    outcome: dict[str, Any] | None = None  # set once the action is over

    def same_task(self, other: Delivery) -> bool:
        """Whether ``other`` describes the same transfer and action (a redelivery)."""
        keys = ("direction", "src_id", "src_path", "dst_id", "dst_path", "action", "template")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


class CompletionJournal:
    """Append-only, compacted as it grows; lookups by task_id from memory."""

    def __init__(
        self,
        path: Path,
        *,
        done_retention: float = DONE_RETENTION_SECONDS,
        compact_after: int = 50_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.done_retention = done_retention
        self.compact_after = compact_after
        self._clock = clock
        self._entries: dict[str, Delivery] = {}
        self._replay()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lines = 0
        self._file: TextIO = self._rewrite()

    @property
    def pending(self) -> int:
        return sum(1 for e in self._entries.values() if e.outcome is None)

    def get(self, task_id: str) -> Delivery | None:
        return self._entries.get(task_id)

    def delivered(self, entry: Delivery) -> None:
        """The destination is in place; the source is about to be touched."""
        self._entries[entry.task_id] = entry
        self._write(["+", asdict(entry)])

    def finished(self, entry: Delivery, outcome: dict[str, Any]) -> None:
        entry.outcome = outcome
        entry.at = self._clock()  # from now on: when it finished (its retention starts)
        self._write(["=", entry.task_id, outcome, entry.at])
        if self._lines > self.compact_after:
            self._file.close()
            self._file = self._rewrite()

    def close(self) -> None:
        self._file.close()

    def _write(self, line: list[Any]) -> None:
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._lines += 1

    def _replay(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines:
            try:
                item = json.loads(line)
                if item[0] == "+":
                    entry = Delivery(**item[1])
                    self._entries[entry.task_id] = entry
                elif item[0] == "=" and item[1] in self._entries:
                    self._entries[item[1]].outcome = item[2]
                    self._entries[item[1]].at = float(item[3])
            except (ValueError, TypeError, IndexError, KeyError):
                continue  # a line cut short by a crash

    def _rewrite(self) -> TextIO:
        """Start afresh with the pending entries and the recently finished ones (atomic)."""
        horizon = self._clock() - self.done_retention
        self._entries = {
            k: e for k, e in self._entries.items() if e.outcome is None or e.at >= horizon
        }
        temp = self.path.with_suffix(".compact")
        with open(temp, "w", encoding="utf-8") as out:
            for entry in self._entries.values():
                outcome = entry.outcome
                out.write(json.dumps(["+", {**asdict(entry), "outcome": None}]) + "\n")
                if outcome is not None:
                    out.write(json.dumps(["=", entry.task_id, outcome, entry.at]) + "\n")
        os.replace(temp, self.path)
        self._lines = len(self._entries)
        return open(self.path, "a", buffering=1, encoding="utf-8")

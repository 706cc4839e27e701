"""A task's latest known state, as ``GET /tasks/{task_id}`` shows it and the status table keeps it.

An entry travels as a JSON object (on the internal status topic and in the table's changelog);
:meth:`StatusEntry.to_json` / :meth:`StatusEntry.from_json` are the only way in and out, so the
rest of the code works with typed fields. A change is an entry with only the fields it sets.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class TaskState(enum.StrEnum):
    """Where a task is: accepted or parked for a retry, running, or its published outcome."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    SUCCESS = "success"
    FAILED = "failed"


# Fields of one attempt's outcome: cleared when a task is queued or started again.
OUTCOME_FIELDS = (
    "finished_at",
    "error_code",
    "error_message",
    "retryable",
    "bytes_transferred",
    "duration_ms",
    "sha256",
    "next_attempt_at",
    "completion",
)
# The API shows these first, in this order.
_LEADING = ("task_id", "state", "attempts", "worker", "error_code", "error_message", "retryable")
# Bookkeeping kept in the table, never shown: the epoch seconds of the last change, the partition.
_INTERNAL = {"updated_ts": "_ts", "partition": "_partition"}


@dataclass(slots=True)
class StatusEntry:
    """The latest known state of one task (every field but the two first may be unknown)."""

    task_id: str
    state: TaskState
    attempts: int | None = None
    worker: str | None = None
    src_id: str | None = None
    src_path: str | None = None
    dst_id: str | None = None
    dst_path: str | None = None
    direction: str | None = None
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    next_attempt_at: str | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    bytes_transferred: int | None = None
    duration_ms: int | None = None
    sha256: str | None = None
    metadata: dict[str, Any] | None = None  # the task's own, echoed
    completion: dict[str, Any] | None = None  # what the completion action did
    # Set on a change only: a new submission, which starts the entry afresh.
    submitted: bool = False
    updated_ts: float = 0.0
    partition: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields of a newer worker, kept as is

    def to_json(self) -> dict[str, Any]:
        """The entry as stored and sent: unknown (None) fields left out."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "submitted"):
                continue
            value = getattr(self, f.name)
            if value is None or (f.name == "updated_ts" and not value):
                continue
            data[_INTERNAL.get(f.name, f.name)] = value.value if f.name == "state" else value
        if self.submitted:
            data["submitted"] = True
        return {**self.extra, **data}

    @classmethod
    def from_json(cls, data: Any) -> StatusEntry:
        """An entry (or change) from its JSON object; ValueError when it is not one."""
        if not isinstance(data, dict):
            raise ValueError(f"not a status entry: {data!r:.200}")
        try:
            state = TaskState(str(data.get("state")))
        except ValueError:
            raise ValueError(f"not a status entry: {data!r:.200}") from None
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "state"}
        stored = {v: k for k, v in _INTERNAL.items()}
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            name = stored.get(key, key)
            if name == "state":
                continue
            if name in names:
                known[name] = value
            else:
                extra[key] = value
        known.setdefault("task_id", "")
        known["submitted"] = bool(known.get("submitted"))
        return cls(state=state, extra=extra, **known)

    def merged(self, change: StatusEntry) -> StatusEntry:
        """This entry after ``change``: a new submission starts afresh, a new attempt clears the
        last outcome, and every other field the change sets overwrites this entry's."""
        base = StatusEntry(task_id=change.task_id, state=change.state) if change.submitted else self
        entry = dataclasses.replace(base, extra=dict(base.extra))
        if change.state in (TaskState.QUEUED, TaskState.IN_PROGRESS):
            for name in OUTCOME_FIELDS:
                setattr(entry, name, None)
        if change.submitted:
            entry.attempts = 0
        for f in dataclasses.fields(change):
            if f.name in ("submitted", "extra"):
                continue
            value = getattr(change, f.name)
            if value is not None and not (f.name == "updated_ts" and not value):
                setattr(entry, f.name, value)
        entry.extra.update(change.extra)
        entry.submitted = False
        return entry

    def public(self) -> dict[str, Any]:
        """The entry as the API shows it: the main fields first, no bookkeeping fields."""
        data = self.to_json()
        for stored in _INTERNAL.values():
            data.pop(stored, None)
        data.pop("submitted", None)
        first = {k: data[k] for k in _LEADING if k in data}
        return {**first, **{k: v for k, v in data.items() if k not in first}}


def merge_status(previous: StatusEntry | None, change: StatusEntry) -> StatusEntry:
    """The entry after ``change`` (the change itself, cleaned, when there was none)."""
    if previous is None:
        previous = StatusEntry(task_id=change.task_id, state=change.state)
    return previous.merged(change)


def iso(epoch: float) -> str:
    """ISO 8601 in UTC with milliseconds, like result timestamps."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")

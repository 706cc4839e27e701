"""What a task produces, held back until its input offset is committed with it (exactly once).

In ``exactly_once`` mode every event runs with an outbox of its own (a context variable set in the
event's asyncio task): results, failures and retry entries are appended there instead of being
sent, and the transactional committer produces them in the same Kafka transaction as the commit of
the event's offset. Without an outbox (``at_least_once``, tools, tests) they are sent at once.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One message to produce: topic name, key, value and headers, all as sent."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


_current: ContextVar[list[OutRecord] | None] = ContextVar("ftp_pooler_outbox", default=None)


def current() -> list[OutRecord] | None:
    """The outbox of the event running in this asyncio task, or None (send at once)."""
    return _current.get()


def open_outbox() -> list[OutRecord]:
    """Give the calling asyncio task (one event's handler) an outbox of its own."""
    box: list[OutRecord] = []
    _current.set(box)
    return box

"""The one door to Faust's private internals (faust-streaming 0.15.3).

Everything here reaches past Faust's public API, for a reason given at each function; nothing
else in the project does. ``tests/unit/test_faust_door.py`` checks every reach against the
installed Faust, so an upgrade that removes one fails there, by name, not somewhere in a worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from faust.types import TP

# App._consumer_wait_empty: the step of a shutdown or rebalance that waits for in-flight events.
WAIT_EMPTY_HOOK = "_consumer_wait_empty"


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The offset last committed for ``tp`` by this consumer (None before the first commit).

    Faust keeps it without exposing it; the consumer lag metric and the status lookups'
    read-your-writes wait need it without a round trip to the broker.
    """
    offsets: dict[TP, int] = getattr(consumer, "_committed_offset", {})
    return offsets.get(tp)


def assignment(app: faust.App) -> frozenset[TP]:
    """The partitions assigned to this worker now, without starting a consumer (``app.consumer``
    would create one: a CLI process building the app must not)."""
    assigned: Iterable[TP] | None = getattr(app, "_assignment", None)
    return frozenset(assigned or ())


def started_consumer(app: faust.App) -> Any:
    """The app's consumer if it exists, else None (the public property would create it)."""
    return getattr(app, "_consumer", None)


def raw_producer(app: faust.App) -> Any:
    """aiokafka's producer under Faust's (started if it was not): ``partitions_for`` on it loads
    a topic's metadata, which Faust's producer does not offer."""
    return app.producer._ensure_producer()  # type: ignore[attr-defined]


def forget_table_key(table: Any, key: Any) -> None:
    """Remove ``key`` from a table's local store only. Outside stream iteration ``del table[key]``
    raises, so a purge writes the tombstone to the changelog itself and then drops the key here."""
    del table.data[key]


WaitEmpty = Callable[[Any], Awaitable[None]]


class BoundedWaitEmpty:
    """Mixin for a ``faust.App``: replaces Faust's wait for in-flight events (which has no
    timeout, so one stuck transfer would block a shutdown or rebalance forever) with
    :meth:`wait_for_in_flight`, which the app defines."""

    async def wait_for_in_flight(self, consumer: Any) -> None:
        raise NotImplementedError

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        await self.wait_for_in_flight(consumer)

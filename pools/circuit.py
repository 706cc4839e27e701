"""Per-connection circuit breaker: a server that keeps refusing connections is left alone a while.

CLOSED: connects are tried. After ``threshold`` consecutive connect failures it turns OPEN for a
cool-down that doubles each time it re-opens, up to ``open_max``; tasks then fail fast (retryable)
without touching the network. When the cool-down is over it is HALF_OPEN: exactly one probe
connect is let through; success closes it, failure re-opens it for longer.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from models.errors import ConnectionFailed


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(ConnectionFailed):
    """The connection is marked down; the task is deferred without trying to connect."""


class CircuitBreaker:
    """Decides whether a connect may be attempted; fed with every connect's outcome."""

    def __init__(
        self,
        conn_id: str,
        *,
        threshold: int = 5,
        open_initial: float = 5.0,
        open_max: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn_id = conn_id
        self.threshold = threshold
        self.open_initial = open_initial
        self.open_max = open_max
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_total = 0
        self._open_for = open_initial
        self._open_until = 0.0
        self._probing = False
        self._clock = clock
        self.last_error = ""

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.conn_id} {self.state.value} failures={self.failures}>"

    def snapshot(self) -> dict[str, object]:
        remaining = max(0.0, self._open_until - self._clock())
        return {
            "state": self.state.value,
            "consecutive_failures": self.failures,
            "opened_total": self.opened_total,
            "retry_in_seconds": round(remaining, 1) if self.state is CircuitState.OPEN else 0,
        }

    @property
    def rejecting(self) -> bool:
        """True while new connects are refused (open and cooling down, or a probe is out)."""
        if self.state is CircuitState.OPEN:
            return self._clock() < self._open_until
        return self.state is CircuitState.HALF_OPEN and self._probing

    def fail_fast(self) -> None:
        """Raise :class:`CircuitOpen` while the connection is marked down (no probe due)."""
        if self.rejecting:
            raise self.open_error()

    def before_connect(self) -> None:
        """Raise :class:`CircuitOpen` unless a connect may be tried now (maybe as the probe)."""
        if self.state is CircuitState.CLOSED:
            return
        if self.state is CircuitState.OPEN:
            if self._clock() < self._open_until:
                raise self.open_error()
            self.state = CircuitState.HALF_OPEN
            self._probing = False
        if self._probing:
            raise self.open_error()
        self._probing = True

    def on_success(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self._probing = False
        self._open_for = self.open_initial

    def on_cancelled(self) -> None:
        """A connect was abandoned (not a verdict on the server): free the probe slot."""
        self._probing = False

    def on_failure(self, error: str) -> bool:
        """Record a failed connect; True when this failure opened the circuit."""
        self.failures += 1
        self.last_error = error
        was_probe = self.state is CircuitState.HALF_OPEN
        self._probing = False
        if was_probe or (self.state is CircuitState.CLOSED and self.failures >= self.threshold):
            if was_probe:
                self._open_for = min(self.open_max, self._open_for * 2)
            self.state = CircuitState.OPEN
            self._open_until = self._clock() + self._open_for
            self.opened_total += 1
            return True
        return False

    def open_error(self) -> CircuitOpen:
        remaining = max(0.0, self._open_until - self._clock())
        return CircuitOpen(
            f"connection {self.conn_id!r} is marked down after {self.failures} failed connects "
            f"(last: {self.last_error}); next probe in {remaining:.0f} s"
        )

"""The sessions of one FTP connection and the tasks waiting for one; bookkeeping only, no I/O."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pools.circuit import CircuitBreaker

# How many recent session returns the hand-back rate of a connection is estimated from.
RATE_WINDOW = 32
# Returns needed before their pace is trusted: the first few of a new connection come while its
# sessions are still logging in, far apart (at 30 ms RTT 181 waiters x 60 ms looked like 11 s).
RATE_MIN_SAMPLES = 8
# How long a new connection's sessions may take to greet before its line counts as stuck (a
# greeting is one round trip: far below this even across the world; a black hole never greets).
GREETING_GRACE_SECONDS = 1.0


class Session(Protocol):
    """What a pool needs to know of a session (a fake one in unit tests, FTPSession for real):
    state questions, the two hand-over transitions, and its I/O. The pool never sets a
    session's state itself (see :class:`pools.state.SessionLifecycle`)."""

    last_used: float
    server_answered: bool

    @property
    def is_connecting(self) -> bool: ...

    @property
    def is_idle(self) -> bool: ...

    @property
    def is_busy(self) -> bool: ...

    @property
    def is_connected(self) -> bool: ...

    @property
    def is_broken(self) -> bool: ...

    def idle_seconds(self, now: float) -> float: ...

    def has_expired(self, now: float, idle_timeout: float) -> bool: ...

    def acquired(self) -> None: ...

    def released(self, now: float) -> None: ...

    async def connect(self) -> None: ...

    async def noop(self) -> bool: ...

    async def aclose(self) -> None: ...

    def looks_dead(self) -> bool: ...


S = TypeVar("S", bound=Session)


@dataclass(eq=False)
class Waiter(Generic[S]):
    """One task waiting for a session; the manager sets ``session`` and then the event."""

    pool: SessionPool[S]
    seq: int
    event: asyncio.Event = field(default_factory=asyncio.Event)
    session: S | None = None
    # A session of another connection closed to make room under the worker cap; the waiter
    # QUITs it before connecting, so the server-side count never exceeds the cap.
    evicted: S | None = None
    error: BaseException | None = None  # set instead of a session when the wait must fail


class SessionPool(Generic[S]):
    """Sessions of one connection: open ones (idle, busy or still connecting) and the waiters.

    All methods are synchronous; the :class:`~pools.manager.SessionPoolManager` decides, under no
    lock and without I/O, which waiter gets which session, then connects or closes outside.
    """

    def __init__(
        self,
        conn_id: str,
        max_sessions: int,
        factory: Callable[[], S],
        pushback_cooldown: float = 60.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.max_sessions = max_sessions
        self.factory = factory
        self.sessions: list[S] = []
        self.waiters: deque[Waiter[S]] = deque()
        self.opened_total = 0
        # Server pushback (421 on connect): the cap drops to what the server accepted, then grows
        # back by one session per cool-down period.
        self.effective_cap = max_sessions
        self.pushback_cooldown = pushback_cooldown
        self.pushback_until = 0.0
        self.pushbacks_total = 0
        self._returned: deque[float] = deque(maxlen=RATE_WINDOW)  # when sessions came back
        self._last_moved = 0.0  # when the line last moved: a session handed out or returned
        self.breaker = breaker or CircuitBreaker(conn_id)

    def __repr__(self) -> str:
        cap = f"max {self.max_sessions}"
        if self.effective_cap < self.max_sessions:
            cap += f", pushed back to {self.effective_cap}"
        return (
            f"<SessionPool {self.conn_id} [busy {self.busy}, idle {self.idle}, "
            f"connecting {self.connecting}, waiting {len(self.waiters)} | {cap}]>"
        )

    # -- counts --------------------------------------------------------------------------------
    @property
    def open(self) -> int:
        return len(self.sessions)

    @property
    def busy(self) -> int:
        return sum(1 for s in self.sessions if s.is_busy)

    @property
    def idle(self) -> int:
        return sum(1 for s in self.sessions if s.is_idle)

    @property
    def connecting(self) -> int:
        return sum(1 for s in self.sessions if s.is_connecting)

    @property
    def connected(self) -> int:
        return self.busy + self.idle

    def snapshot(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "busy": self.busy,
            "idle": self.idle,
            "connecting": self.connecting,
            "waiting": len(self.waiters),
            "max_sessions": self.max_sessions,
            "effective_max_sessions": self.effective_cap,
            "opened_total": self.opened_total,
            "pushbacks_total": self.pushbacks_total,
            "circuit": self.breaker.snapshot(),
        }

    # -- server pushback -----------------------------------------------------------------------
    def current_cap(self, now: float) -> int:
        """The cap in force now; after a cool-down it is raised by one (a probe) and re-armed."""
        if self.effective_cap < self.max_sessions and now >= self.pushback_until:
            self.effective_cap += 1
            self.pushback_until = now + self.pushback_cooldown
        return self.effective_cap

    def push_back(self, now: float) -> None:
        """The server refused one more session: keep to what it accepted for a cool-down.

        Sessions still logging in count as accepted: the server let their connection in.
        """
        self.effective_cap = max(1, min(self.max_sessions, self.open))
        self.pushback_until = now + self.pushback_cooldown
        self.pushbacks_total += 1

    # -- bookkeeping ---------------------------------------------------------------------------
    def most_recent_idle(self) -> S | None:
        """The idle session used last (keeps few sessions warm so the rest can expire)."""
        idle = [s for s in self.sessions if s.is_idle]
        return max(idle, key=lambda s: s.last_used) if idle else None

    def least_recent_idle(self) -> S | None:
        idle = [s for s in self.sessions if s.is_idle]
        return min(idle, key=lambda s: s.last_used) if idle else None

    def session_returned(self, now: float) -> None:
        """A task gave its session back (reused or closed): the line moved."""
        self._returned.append(now)
        self._last_moved = now

    def moved(self, now: float) -> None:
        """A waiter got a session, or a new session logged in: the line moved."""
        self._last_moved = now

    def expected_wait(self, now: float) -> float:
        """Seconds a task joining the line now would wait for a session.

        At the pace sessions came back lately (the median time between returns, so a pause
        between bursts does not count; from RATE_MIN_SAMPLES returns on), and at least as long
        as the line has not moved. A server that greeted but has no pace yet (its first
        transfers, slow only by latency) is judged by how long its line has stood still.
        Infinite when no session of the server has greeted within GREETING_GRACE_SECONDS of
        being opened (a dead or black-holed server)."""
        still = now - (self._last_moved or now)
        if len(self._returned) >= RATE_MIN_SAMPLES:
            times = list(self._returned)
            gaps = sorted(b - a for a, b in itertools.pairwise(times))
            per_return = gaps[len(gaps) // 2]
        elif self._returned or any(s.server_answered for s in self.sessions):
            per_return = 0.0
        elif still <= GREETING_GRACE_SECONDS:
            return still
        else:
            return math.inf
        return max((len(self.waiters) + 1) * per_return, still)

    def new_session(self) -> S:
        """Add a not-yet-connected session (counts against the cap while it connects)."""
        session = self.factory()
        self.sessions.append(session)
        self.opened_total += 1
        return session

    def discard(self, session: S) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def expired(self, now: float, idle_timeout: float) -> list[S]:
        return [s for s in self.sessions if s.has_expired(now, idle_timeout)]

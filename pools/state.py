"""A session's state and the transitions it owns; the pool only asks questions of it."""

from __future__ import annotations

import enum


class SessionState(enum.Enum):
    """The design document's state machine, plus the end state. One meaning per value."""

    DISCONNECTED = "disconnected"  # created, not logged in yet (counts against the cap)
    IDLE = "idle"  # logged in, in the pool, free
    BUSY = "busy"  # logged in, held by one task
    ERROR = "error"  # an operation failed: must be closed, never reused
    CLOSED = "closed"  # closed (QUIT sent or connection dropped); the pool has let it go


class SessionLifecycle:
    """State, use count and idle clock of a session, changed only through these methods.

    FTPSession (and the unit tests' fake) inherit it; the pool reads the questions and calls
    :meth:`acquired` / :meth:`released` when it hands a session out and takes it back.
    """

    def __init__(self, now: float) -> None:
        self.state = SessionState.DISCONNECTED
        self.created_at = now
        self.last_used = now
        self.uses = 0
        # The server has said something (its greeting): it is up, however far away.
        self.server_answered = False

    # -- questions ------------------------------------------------------------------------------
    @property
    def is_connecting(self) -> bool:
        return self.state is SessionState.DISCONNECTED

    @property
    def is_idle(self) -> bool:
        return self.state is SessionState.IDLE

    @property
    def is_busy(self) -> bool:
        return self.state is SessionState.BUSY

    @property
    def is_connected(self) -> bool:
        return self.state in (SessionState.IDLE, SessionState.BUSY)

    @property
    def is_broken(self) -> bool:
        return self.state is SessionState.ERROR

    @property
    def is_closed(self) -> bool:
        return self.state is SessionState.CLOSED

    def idle_seconds(self, now: float) -> float:
        return now - self.last_used

    def has_expired(self, now: float, idle_timeout: float) -> bool:
        """Idle for longer than ``idle_timeout`` seconds: the pool closes it."""
        return self.is_idle and now - self.last_used > idle_timeout

    # -- transitions ----------------------------------------------------------------------------
    def answered(self) -> None:
        """The server greeted (still DISCONNECTED until the login is done)."""
        self.server_answered = True

    def logged_in(self) -> None:
        """DISCONNECTED -> IDLE: the login succeeded."""
        self.server_answered = True
        if self.state is SessionState.DISCONNECTED:
            self.state = SessionState.IDLE

    def acquired(self) -> None:
        """IDLE -> BUSY: handed to one task."""
        if self.state is SessionState.IDLE:
            self.state = SessionState.BUSY
            self.uses += 1

    def released(self, now: float) -> None:
        """BUSY -> IDLE: back in the pool, its idle clock restarted."""
        if self.state is SessionState.BUSY:
            self.state = SessionState.IDLE
            self.last_used = now

    def failed(self) -> None:
        """Any open state -> ERROR: not to be reused."""
        if self.state is not SessionState.CLOSED:
            self.state = SessionState.ERROR

    def closed(self) -> None:
        """-> CLOSED."""
        self.state = SessionState.CLOSED

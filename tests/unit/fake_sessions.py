"""A fake session factory for unit tests of the pool's bookkeeping (no network)."""

from __future__ import annotations

import asyncio

from models.errors import ConnectionFailed, ServerBusy
from pools.state import SessionLifecycle


class FakeSession(SessionLifecycle):
    """Connects after ``connect_delay``; fails to connect or NOOP when told to."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__(0.0)
        self.server = server
        self.connected = False

    async def connect(self) -> None:
        await asyncio.sleep(self.server.connect_delay)
        if self.server.refuse_connect:
            self.failed()
            raise ConnectionFailed("refused")
        limit = self.server.accept_at_most
        if limit is not None and self.server.live >= limit:
            self.failed()
            raise ServerBusy("421 too many connections")
        self.server.live += 1
        self.connected = True
        self.server.max_live = max(self.server.max_live, self.server.live)
        self.logged_in()

    async def noop(self) -> bool:
        return not self.server.stale

    def looks_dead(self) -> bool:
        return self.server.hung_up

    async def aclose(self) -> None:
        if self.connected:
            self.connected = False
            self.server.live -= 1
        self.closed()


class FakeServer:
    """Counts live sessions of one connection, like a server would."""

    def __init__(self, connect_delay: float = 0.0) -> None:
        self.connect_delay = connect_delay
        self.refuse_connect = False
        self.stale = False
        self.hung_up = False
        self.accept_at_most: int | None = None  # refuse with 421 beyond this many live sessions
        self.live = 0
        self.max_live = 0
        self.sessions: list[FakeSession] = []

    def factory(self) -> FakeSession:
        session = FakeSession(self)
        self.sessions.append(session)
        return session

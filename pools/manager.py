"""All session pools of one worker: the worker-wide cap, fair hand-out, idle expiry and shutdown."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic

import mode
import structlog

from models.errors import ConnectionFailed, PoolTimeout
from pools.pool import S, SessionPool, Waiter
from pools.session import SessionState

log = structlog.get_logger("ftp_pooler.pools")


class SessionPoolManager(mode.Service, Generic[S]):
    """Hands out sessions with ``async with manager.session(conn_id) as session:``.

    Bookkeeping (:meth:`_assign`) is synchronous and does no I/O; connecting, health checks and
    QUIT happen afterwards in the task that needs them, so a slow server never delays another.
    """

    def __init__(
        self,
        *,
        max_sessions_per_pod: int,
        acquire_timeout: float,
        session_timeout: float,
        health_check_idle: float,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_sessions_per_pod = max_sessions_per_pod
        self.acquire_timeout = acquire_timeout
        self.session_timeout = session_timeout
        self.health_check_idle = health_check_idle
        self.pools: dict[str, SessionPool[S]] = {}
        self.closed_total: Counter[tuple[str, str]] = Counter()
        self._clock = clock
        self._seq = itertools.count()
        self._closing = False
        self._background: set[asyncio.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"<SessionPoolManager open {self.open_total} | max {self.max_sessions_per_pod}>"

    def add_pool(self, conn_id: str, max_sessions: int, factory: Callable[[], S]) -> SessionPool[S]:
        pool: SessionPool[S] = SessionPool(conn_id, max_sessions, factory)
        self.pools[conn_id] = pool
        return pool

    @property
    def open_total(self) -> int:
        return sum(pool.open for pool in self.pools.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "open": self.open_total,
            "max_sessions_per_pod": self.max_sessions_per_pod,
            "connections": {conn_id: pool.snapshot() for conn_id, pool in self.pools.items()},
        }

    # -- the public face -----------------------------------------------------------------------
    @asynccontextmanager
    async def session(self, conn_id: str) -> AsyncIterator[S]:
        """A logged-in session of ``conn_id`` for the duration of the block."""
        pool = self.pools[conn_id]
        session = await self.acquire(pool)
        reuse = False
        try:
            yield session
            reuse = True
        finally:
            await self.release(pool, session, reuse=reuse)

    async def acquire(self, pool: SessionPool[S]) -> S:
        """Wait (bounded) for a session; connect or health-check it outside any bookkeeping."""
        started = self._clock()
        first_seq = next(self._seq)
        try:
            async with asyncio.timeout(self.acquire_timeout):
                while True:
                    session = await self._wait_turn(pool, first_seq)
                    if await self._make_ready(pool, session):
                        session.uses += 1
                        return session
        except TimeoutError:
            waited = self._clock() - started
            raise PoolTimeout(
                f"no session for {pool.conn_id!r} within {waited:.1f} s "
                f"({pool.open} open of max {pool.max_sessions}, worker {self.open_total} of max "
                f"{self.max_sessions_per_pod})"
            ) from None

    async def release(self, pool: SessionPool[S], session: S, *, reuse: bool) -> None:
        """Return a session after use: back to idle if healthy, else closed. Never raises."""
        to_close: list[S] = []
        if reuse and session.is_connected and not self._closing:
            session.state = SessionState.IDLE
            session.last_used = self._clock()
        else:
            pool.discard(session)
            to_close.append(session)
            self._count_close(pool, "failed" if session.is_broken else "released")
        to_close.extend(self._assign())
        await self._close(to_close)

    # -- waiting and readiness -----------------------------------------------------------------
    async def _wait_turn(self, pool: SessionPool[S], seq: int) -> S:
        if self._closing:
            raise ConnectionFailed("worker is shutting down", retryable=True)
        waiter: Waiter[S] = Waiter(pool, seq)
        # A retried waiter (its session failed a health check) keeps its place in line.
        position = sum(1 for w in pool.waiters if w.seq < seq)
        pool.waiters.insert(position, waiter)
        await self._close(self._assign())
        try:
            await waiter.event.wait()
        except BaseException:
            self._abandon(pool, waiter)
            raise
        if waiter.session is None:
            raise ConnectionFailed("worker is shutting down", retryable=True)
        return waiter.session

    async def _make_ready(self, pool: SessionPool[S], session: S) -> bool:
        """Connect a new session or health-check a long-idle one; False means: wait again."""
        try:
            if session.state is SessionState.DISCONNECTED:
                await session.connect()
                session.state = SessionState.BUSY
                log.info("session_opened", connection=pool.conn_id, open=pool.open)
                return True
            idle_for = self._clock() - session.last_used
            long_idle = self.health_check_idle and idle_for > self.health_check_idle
            if long_idle and not await session.noop():
                log.info("session_closed", connection=pool.conn_id, reason="stale")
                pool.discard(session)
                self._count_close(pool, "stale")
                await self._close([session, *self._assign()])
                return False
            return True
        except BaseException:
            pool.discard(session)
            self._count_close(pool, "connect_failed")
            await self._close([session, *self._assign()])
            raise

    def _abandon(self, pool: SessionPool[S], waiter: Waiter[S]) -> None:
        """A waiter gave up (timeout, cancellation): leave nothing behind."""
        if waiter in pool.waiters:
            pool.waiters.remove(waiter)
            return
        session = waiter.session
        if session is None:
            return
        if session.state is SessionState.DISCONNECTED:
            pool.discard(session)  # never connected: nothing to close
        else:
            session.state = SessionState.IDLE
        waiter.session = None
        to_close = self._assign()
        if to_close:
            self._spawn_close(to_close)

    # -- the bookkeeping (no I/O, no awaits) ---------------------------------------------------
    def _assign(self) -> list[S]:
        """Give free or new sessions to waiters, oldest first; return sessions to close."""
        to_close: list[S] = []
        while not self._closing:
            heads = sorted(
                (p for p in self.pools.values() if p.waiters), key=lambda p: p.waiters[0].seq
            )
            for pool in heads:
                session = pool.most_recent_idle()
                if session is None and pool.open < pool.max_sessions:
                    if self.open_total >= self.max_sessions_per_pod:
                        victim = self._evictable(pool)
                        if victim is None:
                            continue
                        victim_pool = self.pools[victim[0]]
                        victim_pool.discard(victim[1])
                        self._count_close(victim_pool, "evicted")
                        to_close.append(victim[1])
                    session = pool.new_session()
                if session is None:
                    continue
                waiter = pool.waiters.popleft()
                if session.state is SessionState.IDLE:
                    session.state = SessionState.BUSY
                waiter.session = session
                waiter.event.set()
                break
            else:
                return to_close
        return to_close

    def _evictable(self, needy: SessionPool[S]) -> tuple[str, S] | None:
        """The least recently used idle session of another connection, if any."""
        best: tuple[str, S] | None = None
        for conn_id, pool in self.pools.items():
            if pool is needy:
                continue
            candidate = pool.least_recent_idle()
            if candidate is not None and (best is None or candidate.last_used < best[1].last_used):
                best = (conn_id, candidate)
        return best

    # -- closing -------------------------------------------------------------------------------
    def _count_close(self, pool: SessionPool[S], reason: str) -> None:
        self.closed_total[(pool.conn_id, reason)] += 1

    async def _close(self, sessions: list[S]) -> None:
        if sessions:
            # Shielded: a cancelled caller must not leave a half-closed control connection.
            await asyncio.shield(asyncio.gather(*(s.aclose() for s in sessions)))

    def _spawn_close(self, sessions: list[S]) -> None:
        task = asyncio.ensure_future(asyncio.gather(*(s.aclose() for s in sessions)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @mode.Service.task
    async def _expire_idle(self) -> None:
        interval = max(0.5, min(5.0, self.session_timeout / 4))
        while not self.should_stop:
            await self.sleep(interval)
            now = self._clock()
            expired: list[S] = []
            for pool in self.pools.values():
                for session in pool.expired(now, self.session_timeout):
                    pool.discard(session)
                    self._count_close(pool, "idle_timeout")
                    expired.append(session)
            if expired:
                log.info("sessions_expired", count=len(expired))
                await self._close(expired)

    async def on_stop(self) -> None:
        """QUIT every session and turn waiters away."""
        self._closing = True
        sessions: list[S] = []
        for pool in self.pools.values():
            while pool.waiters:
                pool.waiters.popleft().event.set()  # session None: the waiter raises
            sessions.extend(pool.sessions)
            for _session in pool.sessions:
                self._count_close(pool, "shutdown")
            pool.sessions.clear()
        await self._close(sessions)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        log.info("session_pools_closed", closed=len(sessions))

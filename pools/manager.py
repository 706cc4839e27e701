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

from models.errors import ConnectionFailed, Deferred, PoolTimeout, ServerBusy
from pools.circuit import CircuitBreaker, CircuitOpen
from pools.pool import S, SessionPool, Waiter

log = structlog.get_logger("ftp_pooler.pools")

WaitObserver = Callable[[str, float], None]


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
        pushback_cooldown: float = 60.0,
        breaker_threshold: int = 5,
        breaker_open_initial: float = 5.0,
        breaker_open_max: float = 300.0,
        max_waiting: int = 100,
        reuse_sessions: bool = True,
        max_expected_wait: float = 10.0,
        observe_wait: WaitObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_sessions_per_pod = max_sessions_per_pod
        self.acquire_timeout = acquire_timeout
        self.session_timeout = session_timeout
        self.health_check_idle = health_check_idle
        self.pushback_cooldown = pushback_cooldown
        self.breaker_settings = (breaker_threshold, breaker_open_initial, breaker_open_max)
        self.max_waiting = max_waiting
        self.reuse_sessions = reuse_sessions
        self.max_expected_wait = max_expected_wait
        self.deferred_total: Counter[str] = Counter()
        self.pools: dict[str, SessionPool[S]] = {}
        self.closed_total: Counter[tuple[str, str]] = Counter()
        self._observe_wait = observe_wait
        self._clock = clock
        self._seq = itertools.count()
        self._closing = False
        self._background: set[asyncio.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"<SessionPoolManager open {self.open_total} | max {self.max_sessions_per_pod}>"

    def add_pool(self, conn_id: str, max_sessions: int, factory: Callable[[], S]) -> SessionPool[S]:
        threshold, open_initial, open_max = self.breaker_settings
        breaker = CircuitBreaker(
            conn_id,
            threshold=threshold,
            open_initial=open_initial,
            open_max=open_max,
            clock=self._clock,
        )
        pool: SessionPool[S] = SessionPool(
            conn_id, max_sessions, factory, self.pushback_cooldown, breaker
        )
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
        if pool.idle == 0:
            pool.breaker.fail_fast()  # a connection marked down defers its tasks at once
            full = len(pool.waiters) >= self.max_waiting
            if full and pool.expected_wait(self._clock()) > self.max_expected_wait:
                # A slow or black-holed server must not collect every task the worker holds:
                # beyond this many waiters its tasks are parked, and others keep flowing. A
                # line that moves fast enough (a busy, healthy server) is joined all the same:
                # parking would only send its tasks round the retry topic, slower.
                self.deferred_total[pool.conn_id] += 1
                raise Deferred(
                    f"{len(pool.waiters)} tasks already wait for a session of {pool.conn_id!r}"
                )
        seq = next(self._seq)  # kept across re-waits, so a task never loses its place in line
        try:
            async with asyncio.timeout(self.acquire_timeout):
                while True:
                    waiter = await self._wait_turn(pool, seq)
                    if await self._make_ready(pool, waiter):
                        session = waiter.session
                        assert session is not None
                        if self._observe_wait is not None:
                            self._observe_wait(pool.conn_id, self._clock() - started)
                        return session
        except TimeoutError:
            waited = self._clock() - started
            raise PoolTimeout(
                f"no session for {pool.conn_id!r} within {waited:.1f} s "
                f"({pool.open} open of max {pool.effective_cap}, worker {self.open_total} of max "
                f"{self.max_sessions_per_pod})"
            ) from None

    async def release(self, pool: SessionPool[S], session: S, *, reuse: bool) -> None:
        """Return a session after use: back to idle if healthy, else closed. Never raises."""
        to_close: list[S] = []
        pool.session_returned(self._clock())
        if reuse and self.reuse_sessions and session.is_connected and not self._closing:
            session.released(self._clock())
        else:
            pool.discard(session)
            to_close.append(session)
            self._closed(pool, "failed" if session.is_broken else "released")
        to_close.extend(self._assign())
        await self._close(to_close)

    # -- waiting and readiness -----------------------------------------------------------------
    async def _wait_turn(self, pool: SessionPool[S], seq: int) -> Waiter[S]:
        if self._closing:
            raise ConnectionFailed("worker is shutting down")
        waiter: Waiter[S] = Waiter(pool, seq)
        if not pool.waiters or pool.waiters[-1].seq < seq:
            pool.waiters.append(waiter)  # the usual case, O(1) however long the line
        else:
            position = sum(1 for w in pool.waiters if w.seq < seq)
            pool.waiters.insert(position, waiter)
        await self._close(self._assign())
        try:
            await waiter.event.wait()
        except BaseException:
            self._abandon(pool, waiter)
            raise
        if waiter.error is not None:
            raise waiter.error
        if waiter.session is None:
            raise ConnectionFailed("worker is shutting down")
        return waiter

    async def _make_ready(self, pool: SessionPool[S], waiter: Waiter[S]) -> bool:
        """Connect a new session or check an idle one; False means: wait for another."""
        session = waiter.session
        assert session is not None
        try:
            if waiter.evicted is not None:
                evicted, waiter.evicted = waiter.evicted, None
                await self._close([evicted])
            if session.is_connecting:
                return await self._connect(pool, session)
            if session.looks_dead():
                return await self._drop_stale(pool, session)
            idle_for = session.idle_seconds(self._clock())
            long_idle = self.health_check_idle and idle_for > self.health_check_idle
            if long_idle and not await session.noop():
                return await self._drop_stale(pool, session)
            return True
        except BaseException:
            pool.discard(session)
            await self._close([session, *self._assign()])
            raise

    async def _connect(self, pool: SessionPool[S], session: S) -> bool:
        try:
            pool.breaker.before_connect()
        except CircuitOpen:
            pool.discard(session)  # never connected: nothing to close
            self._spawn_close(self._assign())
            raise
        try:
            await session.connect()
        except ServerBusy as exc:
            pool.breaker.on_success()  # the server answered: it is up, just full
            pool.discard(session)
            self._closed(pool, "refused")
            if pool.open == 0:
                raise  # the server accepts no session at all: the task fails (retryable)
            pool.push_back(self._clock())
            log.warning(
                "session_pushback",
                connection=pool.conn_id,
                cap=pool.effective_cap,
                cooldown_seconds=pool.pushback_cooldown,
                error=exc.message,
            )
            await self._close([session, *self._assign()])
            return False
        except ConnectionFailed as exc:
            pool.discard(session)
            self._closed(pool, "connect_failed")
            if pool.breaker.on_failure(exc.message):
                log.warning(
                    "connection_marked_down",
                    connection=pool.conn_id,
                    failures=pool.breaker.failures,
                    error=exc.message,
                )
                self._fail_waiters(pool, pool.breaker)
            raise
        except BaseException:
            pool.discard(session)
            self._closed(pool, "connect_failed")
            pool.breaker.on_cancelled()
            raise
        pool.breaker.on_success()
        pool.moved(self._clock())  # a login counts as progress (yescrypt on a busy server)
        session.acquired()
        log.info("session_opened", connection=pool.conn_id, open=pool.open)
        return True

    async def _drop_stale(self, pool: SessionPool[S], session: S) -> bool:
        pool.discard(session)
        self._closed(pool, "stale")
        await self._close([session, *self._assign()])
        return False

    def _fail_waiters(self, pool: SessionPool[S], breaker: CircuitBreaker) -> None:
        """The connection was just marked down: every task queued for it is deferred now."""
        while pool.waiters:
            waiter = pool.waiters.popleft()
            waiter.error = breaker.open_error()
            waiter.event.set()

    def _abandon(self, pool: SessionPool[S], waiter: Waiter[S]) -> None:
        """A waiter gave up (timeout, cancellation): leave nothing behind."""
        if waiter in pool.waiters:
            pool.waiters.remove(waiter)
            return
        session, waiter.session = waiter.session, None
        to_close = [waiter.evicted] if waiter.evicted is not None else []
        if session is not None:
            if session.is_connecting:
                pool.discard(session)  # never connected: nothing to close
            else:
                session.released(self._clock())
        to_close.extend(self._assign())
        if to_close:
            self._spawn_close(to_close)

    # -- the bookkeeping (no I/O, no awaits) ---------------------------------------------------
    def _assign(self) -> list[S]:
        """Give free or new sessions to waiters, oldest first; return sessions to close."""
        to_close: list[S] = []
        now = self._clock()
        while not self._closing:
            heads = sorted(
                (p for p in self.pools.values() if p.waiters), key=lambda p: p.waiters[0].seq
            )
            for pool in heads:
                waiter = pool.waiters[0]
                session = pool.most_recent_idle()
                if session is None and pool.open < pool.current_cap(now):
                    if self.open_total >= self.max_sessions_per_pod:
                        victim = self._evict_for(pool)
                        if victim is None:
                            continue
                        waiter.evicted = victim
                    session = pool.new_session()
                if session is None:
                    continue
                pool.waiters.popleft()
                pool.moved(now)
                session.acquired()  # an idle one is BUSY from now; a new one once logged in
                waiter.session = session
                waiter.event.set()
                break
            else:
                return to_close
        return to_close

    def _evict_for(self, needy: SessionPool[S]) -> S | None:
        """Take out the least recently used idle session of another connection, if any."""
        best: tuple[SessionPool[S], S] | None = None
        for pool in self.pools.values():
            if pool is needy:
                continue
            candidate = pool.least_recent_idle()
            if candidate is not None and (best is None or candidate.last_used < best[1].last_used):
                best = (pool, candidate)
        if best is None:
            return None
        best[0].discard(best[1])
        self._closed(best[0], "evicted")
        return best[1]

    # -- closing -------------------------------------------------------------------------------
    def _closed(self, pool: SessionPool[S], reason: str) -> None:
        self.closed_total[(pool.conn_id, reason)] += 1
        if reason != "released":
            log.info("session_closed", connection=pool.conn_id, reason=reason)

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
                    self._closed(pool, "idle_timeout")
                    expired.append(session)
            if expired:
                await self._close(expired)

    async def on_stop(self) -> None:
        """QUIT every session and turn waiters away."""
        self._closing = True
        sessions: list[S] = []
        for pool in self.pools.values():
            while pool.waiters:
                pool.waiters.popleft().event.set()  # session None: the waiter raises
            sessions.extend(pool.sessions)
            self.closed_total[(pool.conn_id, "shutdown")] += len(pool.sessions)
            pool.sessions.clear()
        await self._close(sessions)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        log.info("session_pools_closed", closed=len(sessions))

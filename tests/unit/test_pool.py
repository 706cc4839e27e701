"""The session pool's bookkeeping, driven by a fake session factory."""

import asyncio
import random

import pytest

from models.errors import ConnectionFailed, Deferred, PoolTimeout
from pools.manager import SessionPoolManager
from pools.pool import GREETING_GRACE_SECONDS
from pools.state import SessionState
from tests.unit.fake_sessions import FakeServer, FakeSession


def make_manager(pod_cap=100, acquire_timeout=5.0, health_check_idle=0.0, session_timeout=300.0):
    return SessionPoolManager(
        max_sessions_per_pod=pod_cap,
        acquire_timeout=acquire_timeout,
        session_timeout=session_timeout,
        health_check_idle=health_check_idle,
    )


async def test_sessions_are_reused_not_reopened():
    """Sequential tasks on one connection share one logged-in session."""
    server = FakeServer()
    manager = make_manager()
    manager.add_pool("a", 10, server.factory)
    for _ in range(5):
        async with manager.session("a") as session:
            assert session.state is SessionState.BUSY
    assert len(server.sessions) == 1
    assert server.sessions[0].uses == 5
    assert repr(manager.pools["a"]) == (
        "<SessionPool a [busy 0, idle 1, connecting 0, waiting 0 | max 10]>"
    )


async def test_sessions_are_not_reused_when_reuse_is_off():
    """With reuse_sessions off, every task logs in on a new session that is closed after it."""
    server = FakeServer()
    manager: SessionPoolManager[FakeSession] = SessionPoolManager(
        max_sessions_per_pod=100,
        acquire_timeout=5.0,
        session_timeout=300.0,
        health_check_idle=0.0,
        reuse_sessions=False,
    )
    pool = manager.add_pool("a", 10, server.factory)
    for _ in range(3):
        async with manager.session("a"):
            pass
    assert len(server.sessions) == 3
    assert all(s.state is SessionState.CLOSED for s in server.sessions)
    assert pool.open == 0
    assert manager.closed_total[("a", "released")] == 3


async def test_full_line_of_a_stalled_connection_parks_new_tasks():
    """Beyond max_waiting, a connection whose sessions have not greeted within the grace parks
    new tasks (and joins them before: a distant server greets a round trip later)."""
    server = FakeServer(connect_delay=10)
    now = [1000.0]
    manager: SessionPoolManager[FakeSession] = SessionPoolManager(
        max_sessions_per_pod=100,
        acquire_timeout=5.0,
        session_timeout=300.0,
        health_check_idle=0.0,
        max_waiting=3,
        clock=lambda: now[0],
    )
    manager.add_pool("a", 1, server.factory)

    async def use():
        async with manager.session("a"):
            pass

    waiting = [asyncio.create_task(use()) for _ in range(4)]  # 1 connecting + 3 in line
    await asyncio.sleep(0.01)
    assert manager.pools["a"].expected_wait(now[0]) == 0  # within the greeting grace
    now[0] += GREETING_GRACE_SECONDS + 0.1
    with pytest.raises(Deferred):
        await manager.acquire(manager.pools["a"])
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert manager.deferred_total["a"] == 1


async def test_full_line_of_a_fast_connection_is_joined_not_parked():
    """Beyond max_waiting, tasks still join a line that moves fast (a busy, healthy server)."""
    server = FakeServer()
    manager: SessionPoolManager[FakeSession] = SessionPoolManager(
        max_sessions_per_pod=100,
        acquire_timeout=5.0,
        session_timeout=300.0,
        health_check_idle=0.0,
        max_waiting=3,
        max_expected_wait=5.0,
    )
    manager.add_pool("a", 2, server.factory)

    async def use():
        async with manager.session("a"):
            await asyncio.sleep(0.001)

    await asyncio.gather(*(use() for _ in range(4)))  # some history: the line moves
    await asyncio.gather(*(use() for _ in range(40)))  # 38 in line at once, none parked
    assert manager.deferred_total["a"] == 0
    assert server.max_live == 2


async def test_full_line_of_a_distant_connection_without_history_is_joined_not_parked():
    """A new connection whose sessions greet and log in slowly (latency, not failure) has all
    its tasks joined before any session came back: none is parked on the retry topic."""
    server = FakeServer(connect_delay=0.05)
    manager: SessionPoolManager[FakeSession] = SessionPoolManager(
        max_sessions_per_pod=100,
        acquire_timeout=5.0,
        session_timeout=300.0,
        health_check_idle=0.0,
        max_waiting=3,
        max_expected_wait=5.0,
    )
    manager.add_pool("a", 2, server.factory)

    async def use():
        async with manager.session("a"):
            await asyncio.sleep(0.02)

    await asyncio.gather(*(use() for _ in range(40)))  # all at once, on a cold pool
    assert manager.deferred_total["a"] == 0


async def test_connection_cap_holds_and_waiters_are_served_in_order():
    """With a cap of 2, at most 2 sessions exist and the third waiter goes after the first two."""
    server = FakeServer(connect_delay=0.01)
    manager = make_manager()
    pool = manager.add_pool("a", 2, server.factory)
    order = []

    async def work(n):
        async with manager.session("a"):
            order.append(n)
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(work(n)) for n in range(6)]
    await asyncio.sleep(0.005)
    assert "waiting 4" in repr(pool)
    await asyncio.gather(*tasks)
    assert server.max_live == 2
    assert order == sorted(order)


async def test_waiter_times_out_when_connection_cap_reached():
    """A wait longer than acquire_timeout fails with a retryable CONNECTION_ERROR."""
    server = FakeServer()
    manager = make_manager(acquire_timeout=0.05)
    pool = manager.add_pool("a", 1, server.factory)
    async with manager.session("a"):
        with pytest.raises(PoolTimeout) as caught:
            async with manager.session("a"):
                pass
    assert caught.value.retryable is True
    assert caught.value.error_code.value == "CONNECTION_ERROR"
    assert len(pool.waiters) == 0 and pool.open == 1


async def test_failed_session_is_closed_not_reused():
    """A session whose transfer raised is discarded; the next task gets a new one."""
    server = FakeServer()
    manager = make_manager()
    manager.add_pool("a", 10, server.factory)
    with pytest.raises(RuntimeError):
        async with manager.session("a") as session:
            session.failed()
            raise RuntimeError("transfer failed")
    assert server.sessions[0].is_closed
    async with manager.session("a") as again:
        assert again is not server.sessions[0]
    assert server.live == 1


async def test_worker_cap_evicts_least_recently_used_idle_session_of_another_connection():
    """At the pod cap, a connection with no idle session takes the LRU idle slot of another."""
    a, b, c = FakeServer(), FakeServer(), FakeServer()
    manager = make_manager(pod_cap=2)
    manager.add_pool("a", 5, a.factory)
    manager.add_pool("b", 5, b.factory)
    manager.add_pool("c", 5, c.factory)
    async with manager.session("a"):
        pass
    await asyncio.sleep(0.001)
    async with manager.session("b"):
        pass
    async with manager.session("c"):
        assert manager.open_total == 2
    assert a.sessions[0].is_closed and not b.sessions[0].is_closed
    assert manager.closed_total[("a", "evicted")] == 1


async def test_stale_idle_session_is_replaced_transparently():
    """A long-idle session that fails NOOP is closed and a fresh one is handed out instead."""
    server = FakeServer()
    manager = make_manager(health_check_idle=0.01)
    manager.add_pool("a", 10, server.factory)
    async with manager.session("a"):
        pass
    server.stale = True
    await asyncio.sleep(0.02)
    async with manager.session("a") as session:
        assert session is server.sessions[1]
    assert server.sessions[0].is_closed


async def test_connect_failure_frees_the_slot():
    """A refused connect raises and leaves no half-open entry in the pool."""
    server = FakeServer()
    server.refuse_connect = True
    manager = make_manager()
    pool = manager.add_pool("a", 1, server.factory)
    with pytest.raises(ConnectionFailed):
        async with manager.session("a"):
            pass
    assert pool.open == 0
    server.refuse_connect = False
    async with manager.session("a"):
        assert pool.open == 1


async def test_cancelled_waiter_leaks_nothing():
    """Cancelling a task waiting for a session removes it from the queue."""
    server = FakeServer()
    manager = make_manager()
    pool = manager.add_pool("a", 1, server.factory)
    async with manager.session("a"):
        waiter = asyncio.create_task(manager.acquire(pool))
        await asyncio.sleep(0.01)
        assert len(pool.waiters) == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert len(pool.waiters) == 0
    assert pool.open == 1 and pool.idle == 1


async def test_shutdown_closes_every_session():
    """Stopping the manager QUITs all sessions."""
    server = FakeServer()
    manager = make_manager()
    manager.add_pool("a", 3, server.factory)

    async def use():
        async with manager.session("a"):
            await asyncio.sleep(0.01)

    await asyncio.gather(*(use() for _ in range(3)))
    assert server.live == 3
    await manager.on_stop()
    assert server.live == 0


async def test_server_pushback_lowers_the_cap_to_what_the_server_accepts_and_no_task_fails():
    """A server that answers 421 beyond 3 sessions: every task still gets a session; cap -> 3."""
    server = FakeServer(connect_delay=0.001)
    server.accept_at_most = 3
    manager = make_manager()
    pool = manager.add_pool("a", 10, server.factory)

    async def work():
        async with manager.session("a"):
            await asyncio.sleep(0.005)

    await asyncio.gather(*(work() for _ in range(40)))
    assert server.max_live == 3
    assert pool.effective_cap == 3 and pool.pushbacks_total >= 1
    assert "pushed back to 3" in repr(pool)


async def test_pushed_back_cap_probes_upward_after_the_cool_down():
    """Once the cool-down passes, the cap grows by one session per period."""
    now = [0.0]
    manager: SessionPoolManager[FakeSession] = SessionPoolManager(
        max_sessions_per_pod=100,
        acquire_timeout=5,
        session_timeout=300,
        health_check_idle=0,
        pushback_cooldown=10,
        clock=lambda: now[0],
    )
    pool = manager.add_pool("a", 5, FakeServer().factory)
    pool.push_back(now[0])
    assert pool.current_cap(now[0]) == 1
    now[0] = 10.0
    assert pool.current_cap(now[0]) == 2
    assert pool.current_cap(now[0] + 5) == 2
    assert pool.current_cap(now[0] + 10) == 3


async def test_session_the_server_hung_up_on_is_replaced_without_a_round_trip():
    """An idle session whose server closed it (421 + EOF buffered) is dropped, not used."""
    server = FakeServer()
    manager = make_manager()
    manager.add_pool("a", 10, server.factory)
    async with manager.session("a"):
        pass
    server.hung_up = True
    async with manager.session("a") as session:
        server.hung_up = False
        assert session is server.sessions[1]
    assert manager.closed_total[("a", "stale")] == 1


class CheckedManager(SessionPoolManager):
    """Checks after every hand-out that no waiter was overtaken by a later one of its connection."""

    overtaken: list = []

    def _assign(self):
        queued_before = {name: list(p.waiters) for name, p in self.pools.items()}
        result = super()._assign()
        for name, pool in self.pools.items():
            served = [w for w in queued_before[name] if w not in pool.waiters]
            still = [w.seq for w in pool.waiters]
            for waiter in served:
                if waiter.session is not None and still and waiter.seq > min(still):
                    self.overtaken.append((name, waiter.seq, min(still)))
        return result


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_randomized_interleavings_keep_caps_fifo_and_leak_nothing(seed):
    """3,000 random acquire/release/failure/cancel/timeout steps per seed keep every invariant.

    Invariants: per-connection and worker caps (pool side and "server" side), no waiter served
    before an earlier one of its connection, every request served, timed out or cancelled, and
    at the end no busy, connecting or unaccounted session.
    """
    rng = random.Random(seed)
    servers = {name: FakeServer(connect_delay=0.0005) for name in "abc"}
    caps = {"a": 3, "b": 4, "c": 2}
    pod_cap = 6
    manager = CheckedManager(
        max_sessions_per_pod=pod_cap, acquire_timeout=0.05, session_timeout=300, health_check_idle=0
    )
    manager.overtaken = []
    for name, server in servers.items():
        manager.add_pool(name, caps[name], server.factory)
    violations = []
    outcomes = {"served": 0, "timed_out": 0, "cancelled": 0}

    def check():
        if manager.open_total > pod_cap:
            violations.append(f"pod cap: {manager.open_total}")
        if sum(s.live for s in servers.values()) > pod_cap:
            violations.append(f"server-side pod cap: {[s.live for s in servers.values()]}")
        for name, pool in manager.pools.items():
            if pool.open > caps[name] or servers[name].live > caps[name]:
                violations.append(f"{name} cap: {pool.open}/{servers[name].live}")

    started = [0]

    async def step():
        started[0] += 1
        name = rng.choice("abc")
        hold = rng.random() * 0.002
        fail = rng.random() < 0.1
        served = False
        try:
            async with manager.session(name) as session:
                served = True
                outcomes["served"] += 1
                check()
                await asyncio.sleep(hold)
                if fail:
                    session.failed()
                    raise RuntimeError("transfer failed")
        except RuntimeError:
            pass
        except PoolTimeout:
            outcomes["timed_out"] += 1
        except asyncio.CancelledError:
            if not served:
                outcomes["cancelled"] += 1
            raise

    tasks = []
    for n in range(3000):
        tasks.append(asyncio.create_task(step()))
        if rng.random() < 0.03:
            rng.choice(tasks[-50:]).cancel()
        if n % 10 == 0:
            await asyncio.sleep(rng.random() * 0.004)
        check()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    check()
    assert violations == []
    assert manager.overtaken == []
    assert outcomes["served"] + outcomes["timed_out"] + outcomes["cancelled"] == started[0]
    assert started[0] + sum(1 for r in results if isinstance(r, asyncio.CancelledError)) >= 3000
    # Every kind of outcome happened (how many time out depends on the machine's speed: the
    # 0.05 s waits are real time, so the share served is only bounded loosely).
    assert outcomes["served"] > 500 and outcomes["timed_out"] > 0 and outcomes["cancelled"] > 0
    for name, pool in manager.pools.items():
        assert not pool.waiters
        assert pool.busy == 0 and pool.connecting == 0
        assert servers[name].live == pool.open  # every open session is accounted for
    await manager.on_stop()
    assert all(server.live == 0 for server in servers.values())


async def test_cancelled_while_connecting_leaks_nothing():
    """A task cancelled in the middle of its session's login leaves no slot or socket behind."""
    server = FakeServer(connect_delay=0.05)
    manager = make_manager()
    pool = manager.add_pool("a", 1, server.factory)
    attempt = asyncio.create_task(manager.acquire(pool))
    await asyncio.sleep(0.01)
    assert pool.connecting == 1
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert pool.open == 0 and not pool.waiters
    async with manager.session("a"):
        assert pool.busy == 1
    await manager.on_stop()
    assert server.live == 0


async def test_cancelled_while_transferring_closes_the_session():
    """Cancellation inside the block counts as a failed transfer: the session is closed."""
    server = FakeServer()
    manager = make_manager()
    pool = manager.add_pool("a", 1, server.factory)

    async def transfer():
        async with manager.session("a"):
            await asyncio.sleep(10)

    running = asyncio.create_task(transfer())
    await asyncio.sleep(0.01)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert pool.open == 0 and server.live == 0

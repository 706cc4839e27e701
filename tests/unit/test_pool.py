"""The session pool's bookkeeping, driven by a fake session factory."""

import asyncio
import random

import pytest

from models.errors import ConnectionFailed, PoolTimeout
from pools.manager import SessionPoolManager
from pools.session import SessionState
from tests.unit.fake_sessions import FakeServer


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
            session.state = SessionState.ERROR
            raise RuntimeError("transfer failed")
    assert server.sessions[0].closed
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
    assert a.sessions[0].closed and not b.sessions[0].closed
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
    assert server.sessions[0].closed


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


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_randomized_interleavings_keep_caps_and_leak_nothing(seed):
    """Random acquire/release/failure/cancel/timeout steps never exceed a cap or leak a session."""
    rng = random.Random(seed)
    servers = {name: FakeServer(connect_delay=0.001) for name in "abc"}
    caps = {"a": 3, "b": 4, "c": 2}
    manager = make_manager(pod_cap=6, acquire_timeout=0.05)
    for name, server in servers.items():
        manager.add_pool(name, caps[name], server.factory)
    violations = []

    def check():
        if manager.open_total > 6:
            violations.append(f"pod cap: {manager.open_total}")
        for name, pool in manager.pools.items():
            if pool.open > caps[name]:
                violations.append(f"{name} cap: {pool.open}")

    async def step(n):
        name = rng.choice("abc")
        try:
            async with manager.session(name) as session:
                check()
                await asyncio.sleep(rng.random() * 0.003)
                if rng.random() < 0.1:
                    session.state = SessionState.ERROR
                    raise RuntimeError("boom")
        except (RuntimeError, PoolTimeout):
            pass

    tasks = []
    for n in range(600):
        tasks.append(asyncio.create_task(step(n)))
        if rng.random() < 0.05:
            victim = rng.choice(tasks)
            victim.cancel()
        if n % 20 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*tasks, return_exceptions=True)
    check()
    assert violations == []
    for name, pool in manager.pools.items():
        assert not pool.waiters
        assert pool.busy == 0 and pool.connecting == 0
        assert servers[name].live == pool.open  # every open session is accounted for
    await manager.on_stop()
    assert all(server.live == 0 for server in servers.values())

"""The circuit breaker: open after repeated connect failures, one probe at a time, growing waits."""

import asyncio

import pytest

from pools.circuit import CircuitBreaker, CircuitOpen, CircuitState
from pools.manager import SessionPoolManager
from tests.unit.fake_sessions import FakeServer, FakeSession


def test_opens_after_threshold_and_fails_fast_until_the_cool_down_ends():
    """Five failures open it; during the cool-down no connect is allowed."""
    now = [0.0]
    breaker = CircuitBreaker("a", threshold=5, open_initial=10, open_max=40, clock=lambda: now[0])
    for _ in range(4):
        assert breaker.on_failure("refused") is False
        breaker.before_connect()
    assert breaker.on_failure("refused") is True
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpen, match="marked down after 5 failed connects"):
        breaker.before_connect()
    now[0] = 10.0
    breaker.before_connect()  # the probe
    with pytest.raises(CircuitOpen):
        breaker.before_connect()  # only one probe at a time
    assert breaker.on_failure("refused again") is True
    now[0] = 29.0
    with pytest.raises(CircuitOpen):
        breaker.fail_fast()  # the cool-down doubled to 20 s
    now[0] = 30.0
    breaker.before_connect()
    breaker.on_success()
    # mypy keeps the narrowing of the assert above across the calls that change the state.
    assert breaker.state is CircuitState.CLOSED  # type: ignore[comparison-overlap]
    assert breaker.failures == 0
    breaker.before_connect()
    breaker.before_connect()


def test_cool_down_growth_stops_at_the_cap():
    """Repeated failed probes never wait longer than open_max."""
    now = [0.0]
    breaker = CircuitBreaker("a", threshold=1, open_initial=10, open_max=25, clock=lambda: now[0])
    breaker.on_failure("x")
    for _ in range(5):
        now[0] += 100
        breaker.before_connect()
        breaker.on_failure("x")
    assert breaker.snapshot()["retry_in_seconds"] == 25


async def test_queued_tasks_are_deferred_the_moment_the_connection_is_marked_down():
    """When the circuit opens, every waiter of that pool fails fast instead of waiting."""
    server = FakeServer(connect_delay=0.01)
    server.refuse_connect = True
    manager: SessionPoolManager[FakeSession] = SessionPoolManager(
        max_sessions_per_pod=10,
        acquire_timeout=5,
        session_timeout=300,
        health_check_idle=0,
        breaker_threshold=2,
    )
    pool = manager.add_pool("a", 2, server.factory)

    async def use():
        async with manager.session("a"):
            pass

    results = await asyncio.gather(*(use() for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    assert sum(isinstance(r, CircuitOpen) for r in results) >= 8
    assert pool.breaker.state is CircuitState.OPEN
    assert not pool.waiters and pool.open == 0
    with pytest.raises(CircuitOpen):
        await use()

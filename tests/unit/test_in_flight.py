"""Events run concurrently but are acked strictly in offset order per partition."""

import asyncio
from dataclasses import dataclass

from agents.in_flight import InFlight


@dataclass
class Message:
    tp: str
    offset: int


@dataclass
class Event:
    message: Message


async def test_acks_never_pass_an_unfinished_event():
    """A slow head blocks acks of later finished events of its partition, not of others."""
    in_flight = InFlight(limit=10)
    acked = []
    release = {n: asyncio.Event() for n in range(4)}

    async def handler(event):
        await release[event.message.offset].wait()

    async def ack(event):
        acked.append((event.message.tp, event.message.offset))

    for offset in range(3):
        await in_flight.submit(Event(Message("p0", offset)), handler, ack)
    await in_flight.submit(Event(Message("p1", 3)), handler, ack)
    release[1].set()
    release[2].set()
    release[3].set()
    await asyncio.sleep(0.01)
    assert acked == [("p1", 3)]  # p0:1 and p0:2 are done but p0:0 is not
    release[0].set()
    await asyncio.sleep(0.01)
    assert acked == [("p1", 3), ("p0", 0), ("p0", 1), ("p0", 2)]


async def test_limit_bounds_concurrent_handlers():
    """submit waits for a free slot once ``limit`` handlers run."""
    in_flight = InFlight(limit=2)
    running = 0
    peak = 0

    async def handler(event):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    async def ack(event):
        pass

    for offset in range(8):
        await in_flight.submit(Event(Message("p", offset)), handler, ack)
    await in_flight.drain(grace=1)
    assert peak == 2
    assert in_flight.completed == 8


async def test_drain_abandons_what_outlives_the_grace_period_without_acking_it():
    """After the grace period stuck handlers are cancelled and their events stay unacked."""
    in_flight = InFlight(limit=5)
    acked = []

    async def handler(event):
        if event.message.offset == 0:
            await asyncio.sleep(60)

    async def ack(event):
        acked.append(event.message.offset)

    for offset in range(3):
        await in_flight.submit(Event(Message("p", offset)), handler, ack)
    abandoned = await in_flight.drain(grace=0.05)
    assert abandoned == 1
    assert acked == []  # 1 and 2 finished, but acking them would commit past offset 0
    assert in_flight.running == 0

"""An in-memory stand-in for a Faust topic: ``send`` records what a producer would write."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Sent:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class FakeTopic:
    """Records every acknowledged send; the first ``fail_sends`` sends raise like a lost broker."""

    name: str
    fail_sends: int = 0
    sent: list[Sent] = field(default_factory=list)
    attempts: int = 0

    def get_topic_name(self) -> str:
        return self.name

    async def send(
        self, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[None]:
        self.attempts += 1
        if self.attempts <= self.fail_sends:
            raise ConnectionError("broker unreachable")
        self.sent.append(Sent(key, value, headers))
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivery.set_result(None)
        return delivery

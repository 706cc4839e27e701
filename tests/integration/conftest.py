"""Fixtures for the integration suite: the real broker (started by `make test`) and FTP servers."""

from __future__ import annotations

import socket

import pytest

from tests.support.stack import KAFKA, Worker


@pytest.fixture(scope="session", autouse=True)
def kafka_broker() -> str:
    """The broker `make test` started; without it the suite fails loudly (never skips)."""
    host, _, port = KAFKA.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"no Kafka broker at {KAFKA} ({exc}); run the suite with `make test`")
    return KAFKA


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test():
    """A failed test must not leave a worker process behind (it would hold ports and groups)."""
    before = list(Worker.live)  # workers of module-scoped fixtures live on
    yield
    for worker in [w for w in Worker.live if w not in before]:
        worker.kill()
        Worker.live.remove(worker)

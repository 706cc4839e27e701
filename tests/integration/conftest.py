"""Fixtures for the integration suite: the real broker (started by `make test`) and FTP servers."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator

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


@pytest.fixture(autouse=True)
def garbage_is_charged_to_the_test_that_made_it() -> Iterator[None]:
    """Collect garbage as each test ends. An object that warns when it is collected unclosed (a
    socket, a transport, a Kafka connection) then fails the test that leaked it, at its teardown,
    not whichever later test the collector happens to run in (one fresh-clone run had a setup
    error in an innocent test of test_kafka_setups.py that way). About 0.1 s a test."""
    yield
    gc.collect()

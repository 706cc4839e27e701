"""Start-up checks of a worker, each failing with one line naming the cause (exit 2).

Faust would meet each of these problems later, deep inside its start-up, and end with a long
traceback (or, for RocksDB's lock, half a minute of retries first): the state directory, the
ports it is about to listen on, and whether any Kafka broker answers at all.
"""

from __future__ import annotations

import socket
from contextlib import closing

from aiokafka.errors import (
    InvalidConfigurationError,
    InvalidReplicationFactorError,
    KafkaError,
    PolicyViolationError,
)

from app import kafka_client, state_dir
from app.settings import Settings

BROKER_CONNECT_SECONDS = 5.0


class StartupError(Exception):
    """The worker cannot start; the message is the one line an operator needs."""


def check_worker(settings: Settings) -> None:
    """Claim the state directory, then check the ports and the brokers."""
    try:
        state_dir.claim(settings)
    except state_dir.StateDirError as exc:
        raise StartupError(str(exc)) from None
    api = settings.api
    _check_port("api.port", api.host, api.port)
    if settings.metrics.port:
        _check_port("metrics.port", api.host, settings.metrics.port)
    _check_brokers(settings.kafka.bootstrap_servers)


def _check_port(key: str, host: str, port: int) -> None:
    for family, kind, proto, _, address in _addresses(host, port, passive=True):
        with closing(socket.socket(family, kind, proto)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
            try:
                sock.bind(address)
            except OSError as exc:
                raise StartupError(
                    f"{key} {port} on {host or '*'} cannot be used: {exc.strerror or exc}"
                ) from None


def _check_brokers(servers: list[str]) -> None:
    reasons = []
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise StartupError(f"kafka.bootstrap_servers: {server!r} is not host:port")
        try:
            with socket.create_connection(
                (host.strip("[]"), int(port)), timeout=BROKER_CONNECT_SECONDS
            ):
                return  # one answering broker is enough: it tells the client the others
        except OSError as exc:
            reasons.append(f"{server}: {exc.strerror or exc or type(exc).__name__}")
    raise StartupError(f"no Kafka broker reachable ({'; '.join(reasons)})")


def _addresses(host: str, port: int, *, passive: bool) -> list[tuple]:  # type: ignore[type-arg]
    flags = socket.AI_PASSIVE if passive else 0
    try:
        return socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=flags)
    except socket.gaierror as exc:
        raise StartupError(f"api.host {host!r} cannot be resolved: {exc.strerror}") from None


async def check_kafka(settings: Settings) -> list[str]:
    """Log in to Kafka as configured (credentials, certificates) and create the internal topics
    that are missing, with the configured replication; returns the names created."""
    kafka = settings.kafka
    try:
        await kafka_client.check_login(kafka)
        created = await kafka_client.create_topics(kafka, kafka_client.internal_topics(kafka))
    except kafka_client.KafkaSetupError as exc:
        raise StartupError(str(exc)) from None
    except (
        InvalidReplicationFactorError,
        InvalidConfigurationError,
        PolicyViolationError,
    ) as exc:
        raise StartupError(
            f"kafka.replication_factor {kafka.replication_factor or 'broker default'} / "
            f"kafka.min_insync_replicas {kafka.min_insync_replicas or 'broker default'} "
            f"refused by the cluster: {exc}"
        ) from None
    except (KafkaError, OSError, TimeoutError) as exc:
        detail = kafka_client.describe(exc, kafka)
        raise StartupError(f"cannot create the internal topics: {detail}") from None
    return [spec.name for spec in created]

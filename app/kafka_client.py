"""Kafka from our settings, one way for every client: the worker (through Faust), the admin
calls, ``ftp-pooler submit``, ``scripts/topics.py``: security, the topics we create, and one-line
descriptions of the failures an operator can fix (credentials, certificates, topics)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    for_code,
)

from app.settings import KafkaSettings

CONNECT_SECONDS = 10.0
# Faust's leader-assignor topic (faust/assignor/leader_assignor.py): one partition per group.
ASSIGNOR_SUFFIX = "-__assignor-__leader"


class KafkaSetupError(Exception):
    """Kafka refused us for a reason the operator must fix; the message is one line, secret-free."""


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL: our CA (else the system's), the client certificate
    for mutual TLS, and the broker's name checked unless ``kafka.ssl_check_hostname`` is off."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None
        )
    except (ssl.SSLError, OSError) as exc:
        where = kafka.ssl_ca_file
        raise KafkaSetupError(f"kafka.ssl_ca_file {where}: no usable CA ({exc})") from None
    if kafka.ssl_cert_file and kafka.ssl_key_file:
        try:
            context.load_cert_chain(str(kafka.ssl_cert_file), str(kafka.ssl_key_file))
        except (ssl.SSLError, OSError) as exc:
            raise KafkaSetupError(
                f"kafka.ssl_cert_file / kafka.ssl_key_file: cannot load the client certificate "
                f"({exc})"
            ) from None
    context.check_hostname = kafka.ssl_check_hostname
    return context


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka producer/consumer/admin keyword arguments for our brokers and security."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(kafka.bootstrap_servers),
        "security_protocol": kafka.security_protocol,
    }
    context = ssl_context(kafka)
    if context is not None:
        options["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_secret()
    return options


def faust_credentials(kafka: KafkaSettings) -> faust.auth.Credentials | None:
    """Faust's ``broker_credentials`` (its aiokafka driver turns them into the same options)."""
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(kafka)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_secret(),
        ssl_context=context,  # None: SASL_PLAINTEXT
        mechanism=kafka.sasl_mechanism,
    )


def public_security(kafka: KafkaSettings) -> dict[str, Any]:
    """The security settings as ``/status`` shows them: the password only as "set"."""
    return {
        "security_protocol": kafka.security_protocol,
        "sasl_mechanism": kafka.sasl_mechanism,
        "sasl_username": kafka.sasl_username,
        "sasl_password": "set" if kafka.security_protocol.startswith("SASL_") else None,
        "ssl_ca_file": str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None,
        "ssl_client_certificate": kafka.ssl_cert_file is not None,
        "ssl_check_hostname": kafka.ssl_check_hostname,
        "replication_factor": kafka.replication_factor or "broker default",
        "min_insync_replicas": kafka.min_insync_replicas or "broker default",
    }


def describe(exc: BaseException, kafka: KafkaSettings) -> str:
    """One line for a failure to reach or use Kafka (never a secret)."""
    if isinstance(exc, SaslAuthenticationFailed):
        return (
            f"Kafka refused the SASL login of user {kafka.sasl_username!r} "
            f"({kafka.sasl_mechanism}): {exc.args[0] if exc.args else exc}"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        where = f"kafka.ssl_ca_file {kafka.ssl_ca_file}" if kafka.ssl_ca_file else "system CAs"
        return (
            f"the broker's TLS certificate is not trusted ({exc.verify_message}; "
            f"checked against {where})"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS with the broker failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "no answer from Kafka in time (wrong port or security_protocol?)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def check_login(kafka: KafkaSettings) -> None:
    """Connect and authenticate to the bootstrap servers until one accepts; raise
    :class:`KafkaSetupError` with one line when credentials or certificates are refused, or
    when none answers."""
    options = client_options(kafka)
    auth = {k: v for k, v in options.items() if k != "bootstrap_servers"}
    problems: list[str] = []
    for server in kafka.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            async with asyncio.timeout(CONNECT_SECONDS):
                conn = await create_conn(host.strip("[]"), int(port), **auth)
        except (SaslAuthenticationFailed, ssl.SSLError) as exc:
            raise KafkaSetupError(f"{server}: {describe(exc, kafka)}") from None
        except (KafkaError, OSError, TimeoutError) as exc:
            problems.append(f"{server}: {describe(exc, kafka)}")
            continue
        conn.close()
        return
    raise KafkaSetupError(f"no Kafka broker answered ({'; '.join(problems)})")


# -- the topics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project uses: what it is for, its key, and how it is created."""

    name: str
    partitions: int
    purpose: str
    key: str
    config: dict[str, str] = field(default_factory=dict)
    internal: bool = True


def internal_topics(kafka: KafkaSettings) -> list[TopicSpec]:
    """The six topics a worker creates for its group (all named after ``consumer_group``)."""
    group, partitions = kafka.consumer_group, kafka.topic_partitions
    compact = {"cleanup.policy": "compact"}
    return [
        TopicSpec(f"{group}{ASSIGNOR_SUFFIX}", 1, "Faust's partition assignor", "none"),
        TopicSpec(f"{group}-retries", partitions, "tasks parked for a retry", "task key"),
        TopicSpec(f"{group}-task-status", partitions, "task state changes", "task_id"),
        TopicSpec(f"{group}-session-reports", 1, "session counts per worker", "conn|worker"),
        TopicSpec(
            f"{group}-task_status-changelog", partitions, "task_status table", "task_id", compact
        ),
        TopicSpec(
            f"{group}-session_counts-changelog", 1, "session_counts table", "conn|worker", compact
        ),
    ]


def public_topics(kafka: KafkaSettings, partitions: int) -> list[TopicSpec]:
    """The three topics users produce to and read from (the worker does not create them)."""
    return [
        TopicSpec(kafka.input_topic, partitions, "tasks", "any (task_id advised)", internal=False),
        TopicSpec(kafka.result_topic, partitions, "successes", "task_id", internal=False),
        TopicSpec(kafka.fail_topic, partitions, "failures", "task_id", internal=False),
    ]


def topic_config(spec: TopicSpec, kafka: KafkaSettings) -> dict[str, str]:
    config = dict(spec.config)
    if kafka.min_insync_replicas:
        config["min.insync.replicas"] = str(kafka.min_insync_replicas)
    return config


async def create_topics(
    kafka: KafkaSettings, specs: list[TopicSpec], admin: AIOKafkaAdminClient | None = None
) -> list[TopicSpec]:
    """Create the topics of ``specs`` that do not exist; return those created."""
    own = admin is None
    if admin is None:
        admin = AIOKafkaAdminClient(**client_options(kafka), request_timeout_ms=30000)
        await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            response = await admin.create_topics([new_topic(spec, kafka) for spec in missing])
            for name, code, *message in response.topic_errors:
                error = for_code(code)
                if code and error is not TopicAlreadyExistsError:  # another worker was quicker
                    detail = message[0] if message and message[0] else error.description
                    raise error(f"{name}: {detail}")
        return missing
    finally:
        if own:
            await admin.close()


def new_topic(spec: TopicSpec, kafka: KafkaSettings) -> NewTopic:
    topic = NewTopic(spec.name, spec.partitions, 1, topic_configs=topic_config(spec, kafka))
    # -1: the broker's default.replication.factor (CreateTopics v4+, Kafka 2.4+). aiokafka's
    # constructor refuses -1 with partitions given, the protocol does not.
    topic.replication_factor = kafka.replication_factor or -1
    return topic


async def describe_topics(kafka: KafkaSettings, names: list[str]) -> dict[str, dict[str, Any]]:
    """Partitions, replication factor and min.insync.replicas of existing topics."""
    admin = AIOKafkaAdminClient(**client_options(kafka), request_timeout_ms=30000)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        found: dict[str, dict[str, Any]] = {}
        for topic in described:
            partitions = topic.get("partitions") or []
            if topic.get("error_code", 0) or not partitions:
                continue
            found[topic["topic"]] = {
                "partitions": len(partitions),
                "replication_factor": len(partitions[0]["replicas"]),
            }
        return found
    finally:
        await admin.close()


async def missing_topics(admin: AIOKafkaAdminClient, names: list[str]) -> list[str]:
    """The names of ``names`` the cluster does not list."""
    existing = set(await admin.list_topics())
    return [name for name in names if name not in existing]

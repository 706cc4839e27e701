"""The secured broker of scripts/local-kafka.sh behaves as the tests need: SASL_SSL (SCRAM and
PLAIN) and mutual TLS serve clients, wrong credentials and foreign CAs are refused, topics are not
auto-created. It is the broker `make test` starts for the suite
(FTP_POOLER_TEST_SECURE_KAFKA_STATE);
the clusters' own checks are in tests/cluster/test_kafka_cluster.py (`make test-cluster`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnknownTopicOrPartitionError,
)

from tests.support.kafka_secure import (
    SecureBroker,
)


@pytest.fixture(scope="module")
def secure_broker() -> SecureBroker:
    """The secured broker `make test` started (no topic auto-creation); never skipped."""
    state = os.environ.get("FTP_POOLER_TEST_SECURE_KAFKA_STATE")
    if not state or not (Path(state) / "client.json").exists():
        pytest.fail("no secured broker: run the suite with `make test` (it starts one)")
    return SecureBroker.load(Path(state))


def new_topic_name() -> str:
    return f"setups-{uuid.uuid4().hex[:8]}"


async def create_topic(client: dict[str, object], topic: str, replication: int = 1) -> None:
    admin = AIOKafkaAdminClient(**client)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, replication)])
    finally:
        await admin.close()


async def round_trip(topic: str, client: dict[str, object]) -> list[bytes]:
    """Produce three values with acks=all, then read them back from the beginning."""
    producer = AIOKafkaProducer(acks="all", request_timeout_ms=15000, **client)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topic, f"value-{i}".encode(), partition=i)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **client)
    await consumer.start()
    try:
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < 3:
                values.append((await consumer.getone()).value or b"")
        return sorted(values)
    finally:
        await consumer.stop()


# --- the secured broker -------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
async def test_sasl_ssl_round_trip_with_hostname_verification(
    secure_broker: SecureBroker, mechanism: str
) -> None:
    """A producer and a consumer authenticate over SASL_SSL, verifying the broker's name."""
    client = secure_broker.sasl_client_kwargs(mechanism)
    context = client["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    topic = new_topic_name()
    await create_topic(client, topic)
    assert await round_trip(topic, client) == [b"value-0", b"value-1", b"value-2"]


async def test_mtls_round_trip(secure_broker: SecureBroker) -> None:
    """With a client certificate signed by our CA the mTLS listener serves produce and fetch."""
    client = secure_broker.mtls_client_kwargs()
    topic = new_topic_name()
    await create_topic(client, topic)
    assert await round_trip(topic, client) == [b"value-0", b"value-1", b"value-2"]


async def test_wrong_password_is_refused(secure_broker: SecureBroker) -> None:
    """SCRAM with a wrong password fails authentication, and a producer cannot start."""
    client = secure_broker.sasl_client_kwargs(password="not-the-password")
    host, _, port = secure_broker.sasl_bootstrap.rpartition(":")
    with pytest.raises(SaslAuthenticationFailed):
        await create_conn(
            host,
            int(port),
            security_protocol="SASL_SSL",
            ssl_context=client["ssl_context"],
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=client["sasl_plain_username"],
            sasl_plain_password=client["sasl_plain_password"],
        )
    producer = AIOKafkaProducer(**client)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA certificate that signed nothing of the broker's."""
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=someone else", "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return other_ca


async def test_untrusted_ca_is_refused(secure_broker: SecureBroker, other_ca: Path) -> None:
    """A client trusting another CA rejects the broker's certificate during the handshake."""
    context = secure_broker.sasl_client_kwargs(ca_file=other_ca)["ssl_context"]
    host, _, port = secure_broker.sasl_bootstrap.rpartition(":")

    def handshake() -> None:
        # A blocking handshake closes its socket when it fails. Through asyncio the failed SSL
        # transport was still shutting down when the test's loop closed: in 1 of 5 fresh-clone
        # suite runs its socket was collected unclosed (a ResourceWarning, an error under -W error).
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            pass

    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(handshake)


async def test_mtls_without_client_certificate_is_refused(secure_broker: SecureBroker) -> None:
    """The mTLS listener requires a client certificate."""
    producer = AIOKafkaProducer(**secure_broker.mtls_client_kwargs(client_cert=False))
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()


async def test_topics_are_not_auto_created(secure_broker: SecureBroker) -> None:
    """KAFKA_AUTO_CREATE_TOPICS=false: producing to a missing topic fails and creates nothing."""
    client = secure_broker.mtls_client_kwargs()
    topic = new_topic_name()
    producer = AIOKafkaProducer(request_timeout_ms=3000, **client)
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait(topic, b"v")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(**client)
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()

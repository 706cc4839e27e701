"""The secured broker and the 3-node clusters of scripts/local-kafka.sh behave as the tests need.

They start and stop their own brokers on ports 19710-19766 (not the suite's broker): about three
minutes and up to four more JVMs, so they run only when FTP_POOLER_KAFKA_SETUPS=1, as
`make test-kafka-setups` does (FTP_POOLER_KAFKA_SETUPS_VERSION picks the Kafka release).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    NotEnoughReplicasError,
    SaslAuthenticationFailed,
    UnknownTopicOrPartitionError,
)

from tests.support.kafka_secure import (
    REPO,
    KafkaCluster,
    SecureBroker,
    cluster_env,
    run_script,
    secure_env,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("FTP_POOLER_KAFKA_SETUPS") != "1",
    reason="starts its own brokers for minutes; run with `make test-kafka-setups`",
)

VERSION = os.environ.get("FTP_POOLER_KAFKA_SETUPS_VERSION", "4.4.0")
STATE = REPO / ".local" / "test-kafka-setups"
SECURE_PORT = 19710  # +1 controller, +2 SASL_SSL, +3 mTLS
COMBINED_PORT = 19740  # nodes on 19740/42/44, controllers one above each
SPLIT_PORT = 19760  # brokers on 19760/62/64, the controller-only node on 19766


@pytest.fixture(scope="module")
def kafka_broker() -> None:
    """Overrides the suite's shared-broker check: these tests bring their own brokers."""


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    state = STATE / f"secure-{VERSION}"
    env = secure_env(SECURE_PORT, state, VERSION) | {"KAFKA_AUTO_CREATE_TOPICS": "false"}
    run_script("down", env=env)  # a broker left by an aborted run
    shutil.rmtree(state, ignore_errors=True)
    try:
        run_script("up", env=env)
        yield SecureBroker.load(state)
    finally:
        run_script("down", env=env)


def start_cluster(port: int, layout: str) -> KafkaCluster:
    state = STATE / f"cluster-{layout}-{VERSION}"
    env = cluster_env(port, state, VERSION, layout)
    run_script("cluster-down", env=env)
    shutil.rmtree(state, ignore_errors=True)
    try:
        run_script("cluster-up", env=env)
    except (RuntimeError, subprocess.TimeoutExpired):
        run_script("cluster-down", env=env)
        raise
    return KafkaCluster.load(state, port)


@pytest.fixture(scope="module")
def combined_cluster() -> Iterator[KafkaCluster]:
    cluster = start_cluster(COMBINED_PORT, "combined")
    try:
        yield cluster
    finally:
        cluster.script("cluster-down")


@pytest.fixture(scope="module")
def split_cluster() -> Iterator[KafkaCluster]:
    cluster = start_cluster(SPLIT_PORT, "split")
    try:
        yield cluster
    finally:
        cluster.script("cluster-down")


def all_nodes_up(cluster: KafkaCluster) -> None:
    """Restart the nodes an earlier test left down."""
    for node in cluster.nodes:
        if not node.pid_file.exists():
            cluster.script("node-start", str(node.node_id))


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


async def isr_sizes(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [len(p["isr"]) for p in described[0]["partitions"]]


async def wait_for_isr(bootstrap: str, topic: str, size: int, timeout: float = 60) -> None:
    """Wait until every partition's ISR has exactly `size` replicas."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sizes = await isr_sizes(bootstrap, topic)
        except KafkaError:
            sizes = []
        if sizes and all(s == size for s in sizes):
            return
        assert time.monotonic() < deadline, f"ISR sizes of {topic} still {sizes}, wanted {size}"
        await asyncio.sleep(1)


async def produce_all(bootstrap: str, topic: str, timeout_ms: int) -> None:
    """One acks=all write to each of the three partitions."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=timeout_ms
    )
    await producer.start()
    try:
        for partition in range(3):
            await producer.send_and_wait(topic, b"v", partition=partition)
    finally:
        await producer.stop()


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
    client = secure_broker.sasl_client_kwargs(ca_file=other_ca)
    host, _, port = secure_broker.sasl_bootstrap.rpartition(":")
    with pytest.raises(ssl.SSLCertVerificationError):
        await create_conn(
            host, int(port), security_protocol="SASL_SSL", ssl_context=client["ssl_context"]
        )


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


# --- the clusters ---------------------------------------------------------------------------------


async def test_acks_all_survives_one_killed_node_and_it_rejoins(
    combined_cluster: KafkaCluster,
) -> None:
    """RF 3 / min ISR 2: acks=all writes go on with one node SIGKILLed; node-start brings it back
    into every ISR."""
    all_nodes_up(combined_cluster)
    topic = new_topic_name()
    await create_topic({"bootstrap_servers": combined_cluster.bootstrap}, topic, replication=3)
    await wait_for_isr(combined_cluster.bootstrap, topic, 3)
    combined_cluster.script("node-kill", "1")
    assert not combined_cluster.node(1).pid_file.exists()
    await produce_all(combined_cluster.bootstrap, topic, timeout_ms=30000)
    await wait_for_isr(combined_cluster.bootstrap, topic, 2)
    combined_cluster.script("node-start", "1")
    await wait_for_isr(combined_cluster.bootstrap, topic, 3)


async def test_two_nodes_down_of_combined_cluster_stops_acks_all_writes(
    combined_cluster: KafkaCluster,
) -> None:
    """With two of three combined nodes gone the controller quorum is gone too: writes fail."""
    all_nodes_up(combined_cluster)
    topic = new_topic_name()
    await create_topic({"bootstrap_servers": combined_cluster.bootstrap}, topic, replication=3)
    await wait_for_isr(combined_cluster.bootstrap, topic, 3)
    combined_cluster.script("node-kill", "1")
    combined_cluster.script("node-kill", "2")
    with pytest.raises(KafkaError):
        await produce_all(combined_cluster.bootstrap, topic, timeout_ms=8000)


async def test_two_brokers_down_gives_not_enough_replicas(split_cluster: KafkaCluster) -> None:
    """With the quorum alive (split layout) the ISR shrinks to one and acks=all is refused with
    NOT_ENOUGH_REPLICAS."""
    all_nodes_up(split_cluster)
    topic = new_topic_name()
    await create_topic({"bootstrap_servers": split_cluster.bootstrap}, topic, replication=3)
    await wait_for_isr(split_cluster.bootstrap, topic, 3)
    split_cluster.script("node-kill", "1")
    split_cluster.script("node-kill", "2")
    survivor = split_cluster.node(3).bootstrap
    assert survivor is not None
    await wait_for_isr(survivor, topic, 1)
    with pytest.raises(NotEnoughReplicasError):
        await produce_all(survivor, topic, timeout_ms=5000)

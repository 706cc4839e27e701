"""The 3-node clusters of scripts/local-kafka.sh behave as the failure tests need: acks=all goes
on with one node SIGKILLed and the node rejoins; two nodes down stop acks=all writes (combined
layout: the quorum is gone too; split layout: NOT_ENOUGH_REPLICAS).

Not collected by `make test`: `make test-cluster` (or `make test-kafka-setups`) runs it, starting
and stopping its own clusters (FTP_POOLER_TEST_CLUSTER_PORT, default 19740: combined on +0..+5,
split on +20..+26; FTP_POOLER_KAFKA_SETUPS_VERSION picks the Kafka release).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, NotEnoughReplicasError

from tests.cluster.conftest import COMBINED_PORT, SPLIT_PORT, start_cluster
from tests.support.kafka_secure import KafkaCluster


@pytest.fixture(scope="module")
def combined_cluster() -> Iterator[KafkaCluster]:
    cluster = start_cluster(COMBINED_PORT, "combined", "setups")
    try:
        yield cluster
    finally:
        cluster.script("cluster-down")


@pytest.fixture(scope="module")
def split_cluster() -> Iterator[KafkaCluster]:
    cluster = start_cluster(SPLIT_PORT, "split", "setups")
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
    import uuid

    return f"setups-{uuid.uuid4().hex[:8]}"


async def create_topic(client: dict[str, object], topic: str, replication: int = 1) -> None:
    admin = AIOKafkaAdminClient(**client)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, replication)])
    finally:
        await admin.close()


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

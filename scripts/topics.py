"""Create the FTP Pooler topics if they do not exist (idempotent), and say what is there.

    python -m scripts.topics [--bootstrap host:port,...] [--partitions 12]
        [--replication-factor 3] [--min-insync-replicas 2]

Creates the three public topics (``kafka.input_topic``, ``result_topic``, ``fail_topic``, with
``--partitions``) and the six internal topics of ``kafka.consumer_group`` (as the worker would),
all with ``kafka.replication_factor`` and ``kafka.min_insync_replicas``. Everything else, the
security settings included, comes from the worker's own configuration (FTP_POOLER_CONFIG and
FTP_POOLER_* variables); the flags override it. One line per topic is printed; a Kafka or
configuration problem is one line too, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app import kafka_client
from app.settings import KafkaSettings, load_settings
from models.errors import ConfigError


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> list[str]:
    """Create missing topics on a plain (PLAINTEXT) broker with replication 1; return the names
    created. For the tests, the demo and the benchmarks' single local broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(n, partitions, 1) for n in missing])
        return missing
    finally:
        await admin.close()


async def create_all(kafka: KafkaSettings, partitions: int) -> list[str]:
    """Create the nine topics; return one line per topic."""
    await kafka_client.check_login(kafka)
    specs = kafka_client.public_topics(kafka, partitions) + kafka_client.internal_topics(kafka)
    created = {spec.name for spec in await kafka_client.create_topics(kafka, specs)}
    found = await kafka_client.describe_topics(kafka, [spec.name for spec in specs])
    lines = []
    for spec in specs:
        info = found.get(spec.name, {})
        isr = kafka_client.topic_config(spec, kafka).get("min.insync.replicas", "broker default")
        lines.append(
            f"{'created' if spec.name in created else 'exists '}  {spec.name:40} "
            f"partitions {info.get('partitions', '?'):>3}  "
            f"replication {info.get('replication_factor', '?')}  "
            f"min.insync.replicas {isr if spec.name in created else '(as it was)'}  "
            f"{'internal' if spec.internal else 'public'}: {spec.purpose}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", help="host:port[,host:port] (kafka.bootstrap_servers)")
    parser.add_argument("--partitions", type=int, default=8, help="of the public topics")
    parser.add_argument("--replication-factor", type=int, help="kafka.replication_factor")
    parser.add_argument("--min-insync-replicas", type=int, help="kafka.min_insync_replicas")
    args = parser.parse_args()
    overrides = {
        "BOOTSTRAP_SERVERS": args.bootstrap,
        "REPLICATION_FACTOR": args.replication_factor,
        "MIN_INSYNC_REPLICAS": args.min_insync_replicas,
    }
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"FTP_POOLER_KAFKA__{key}"] = str(value)
    try:
        kafka = load_settings().kafka
        lines = asyncio.run(create_all(kafka, args.partitions))
    except ConfigError as exc:
        print(f"topics: configuration error: {exc}", file=sys.stderr)
        return 2
    except kafka_client.KafkaSetupError as exc:
        print(f"topics: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"topics: {kafka_client.describe(exc, kafka)}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Create the FTP Pooler topics on a broker if they do not exist (idempotent)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> list[str]:
    """Create missing topics; return the names that were created."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("topics", nargs="*", default=["ftp-tasks", "ftp-results", "ftp-failures"])
    args = parser.parse_args()
    created = asyncio.run(create_topics(args.bootstrap, args.topics, args.partitions))
    print(f"topics created: {', '.join(created) or 'none (all existed)'}")


if __name__ == "__main__":
    main()

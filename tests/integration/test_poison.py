"""Poison input never hurts: 2,000 generated bad messages, path escapes, secrets kept."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaProducer

from scripts.ftpd import EmbeddedFTPServer
from tests.support.stack import (
    KAFKA,
    Names,
    Received,
    Worker,
    collect,
    make_topics,
    produce,
    task,
    write_connections,
)

PASSWORD = "s3cret-pw"
FUZZ_COUNT = 2000
BIG = 10 * 1024 * 1024


def bad_messages(rng: random.Random, count: int, prefix: str) -> list[tuple[str, bytes]]:
    """(expected code, raw value) pairs, every one of them a bad task in its own way."""
    out: list[tuple[str, bytes]] = []

    def valid(n: int) -> dict[str, object]:
        return {**task(f"{prefix}-{n}", "ftp-a", f"/in/{n}", "local", f"/out/{n}")}

    def without(value: dict[str, object], key: str) -> dict[str, object]:
        return {k: v for k, v in value.items() if k != key}

    def as_json(value: object) -> bytes:
        return json.dumps(value).encode()

    makers = [
        ("INVALID_TASK", lambda n: rng.randbytes(rng.randint(1, 200)) + b"\xff\xfe"),
        ("INVALID_TASK", lambda n: b"[" * rng.randint(1000, 200_000)),
        ("INVALID_TASK", lambda n: as_json({**valid(n), "src_path": rng.randint(0, 10**9)})),
        ("INVALID_TASK", lambda n: as_json({**valid(n), "dst_id": [1, 2]})),
        (
            "INVALID_TASK",
            lambda n: as_json(without(valid(n), rng.choice(["src_id", "dst_path", "src_path"]))),
        ),
        ("INVALID_TASK", lambda n: as_json({**valid(n), "dst_path": "a\u0000b"})),
        ("INVALID_TASK", lambda n: as_json({**valid(n), "src_path": "x" * 5000})),
        (
            "INVALID_TASK",
            lambda n: as_json({**valid(n), "dst_path": "../" * rng.randint(1, 9) + "etc/passwd"}),
        ),
        ("INVALID_TASK", lambda n: as_json({**valid(n), "dst_path": "/link-out/stolen"})),
        ("INVALID_TASK", lambda n: as_json(rng.choice([[], "task", 42, None, True, 1.5]))),
        ("INVALID_TASK", lambda n: b""),
        ("INVALID_TASK", lambda n: as_json({**valid(n), "task_id": ""})),
        ("INVALID_CONFIG", lambda n: as_json({**valid(n), "src_id": f"nope-{n}"})),
        ("INVALID_CONFIG", lambda n: as_json({**valid(n), "src_id": "local"})),
        ("INVALID_CONFIG", lambda n: as_json({**valid(n), "dst_id": "ftp-dead"})),
    ]
    for n in range(count):
        code, make = rng.choice(makers)
        out.append((code, make(n)))
    for n in rng.sample(range(count), 3):  # a few 10 MB blobs
        out[n] = ("INVALID_TASK", b'{"task_id": "' + b"x" * BIG + b'"}')
    return out


async def produce_raw(topic: str, values: list[bytes]) -> list[tuple[int, int]]:
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA, max_request_size=16 * 1024 * 1024, linger_ms=5
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value) for value in values]
        records = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(r.partition, r.offset) for r in records]


async def test_2000_generated_bad_messages_get_one_failure_each_with_flat_memory(tmp_path):
    """Every bad value gets exactly one INVALID_TASK/INVALID_CONFIG result; RSS stays flat."""
    storage = tmp_path / "storage"
    storage.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", storage / "link-out")
    ftp = EmbeddedFTPServer(tmp_path / "ftp", password=PASSWORD).start()
    try:
        names = Names()
        await make_topics(names, partitions=4)
        worker = Worker(
            tmp_path,
            names,
            write_connections(tmp_path / "c.ini", ftp.port, storage, password=PASSWORD),
        )
        worker.start().wait_ready()
        rng = random.Random(2026)
        warmup = bad_messages(rng, 200, "warmup")
        await produce_raw(names.tasks, [raw for _, raw in warmup])
        await collect(names, count=200, timeout=120)
        await asyncio.sleep(1)
        rss_before = worker.rss_bytes()

        fuzz = bad_messages(rng, FUZZ_COUNT, "fuzz")
        positions = await produce_raw(names.tasks, [raw for _, raw in fuzz])
        expected = dict(zip(positions, fuzz, strict=True))
        received = await collect(names, count=200 + FUZZ_COUNT, timeout=240)
        await asyncio.sleep(1)
        rss_after = worker.rss_bytes()

        fuzz_results = [r for r in received[200:]] if len(received) == 200 + FUZZ_COUNT else []
        assert len(received) == 200 + FUZZ_COUNT, len(received)
        assert all(r.topic == names.failures for r in received)
        by_position = match_results(received, expected)
        assert len(by_position) == FUZZ_COUNT
        codes: Counter[str] = Counter()
        for position, result in by_position.items():
            code, _raw = expected[position]
            assert result["error_code"] == code, (result, _raw[:80])
            assert result["status"] == "failed" and result["retryable"] is False
            assert len(result.get("raw_value") or "") <= 64 * 1024
            codes[code] += 1
        assert list((tmp_path / "outside").iterdir()) == []
        growth = rss_after / rss_before
        print(
            f"fuzz: {FUZZ_COUNT} bad messages -> {len(by_position)} failures "
            f"({dict(codes)}), RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB "
            f"({(growth - 1) * 100:+.1f} %)"
        )
        assert growth <= 1.2
        assert fuzz_results  # (the warm-up results came first)
        assert worker.stop() == 0
    finally:
        ftp.stop()


def match_results(
    received: list[Received], expected: dict[tuple[int, int], tuple[str, bytes]]
) -> dict[tuple[int, int], dict[str, Any]]:
    """Pair each result with the message it answers: by source position when the message could
    not be parsed, else by its (unique) task_id."""
    position_of_id: dict[str, tuple[int, int]] = {}
    for position, (_code, raw) in expected.items():
        try:
            task_id = json.loads(raw).get("task_id")
        except (ValueError, AttributeError, RecursionError):
            continue
        if isinstance(task_id, str) and task_id:
            position_of_id[task_id] = position
    matched: dict[tuple[int, int], dict[str, object]] = {}
    for r in received:
        source = r.value.get("source")
        if source is not None:
            position = (source["partition"], source["offset"])
        else:
            position = position_of_id.get(str(r.value["task_id"]), (-1, -1))
        if position in expected:
            assert position not in matched, f"two results for one message: {r.value}"
            matched[position] = r.value
    return matched


async def test_traversal_and_symlink_escapes_write_nothing_outside_the_base(tmp_path):
    """../ paths and a symlink inside the base that points outside are INVALID_TASK both ways."""
    storage = tmp_path / "storage"
    storage.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not upload me")
    os.symlink(outside, storage / "link")
    ftp = EmbeddedFTPServer(tmp_path / "ftp", password=PASSWORD).start()
    try:
        (tmp_path / "ftp" / "in.txt").write_text("payload")
        names = Names()
        await make_topics(names, partitions=2)
        worker = Worker(
            tmp_path,
            names,
            write_connections(tmp_path / "c.ini", ftp.port, storage, password=PASSWORD),
        )
        worker.start().wait_ready()
        escapes = [
            task("down-dotdot", "ftp-a", "/in.txt", "local", "../outside/x.txt"),
            task("down-abs-dotdot", "ftp-a", "/in.txt", "local", "/../../outside/y.txt"),
            task("down-link", "ftp-a", "/in.txt", "local", "/link/z.txt"),
            task("up-link", "local", "/link/secret.txt", "ftp-a", "/stolen.txt"),
            task("up-dotdot", "local", "../outside/secret.txt", "ftp-a", "/stolen2.txt"),
        ]
        await produce(names.tasks, escapes)
        received = await collect(names, count=len(escapes), timeout=60)
        for r in received:
            assert r.value["error_code"] == "INVALID_TASK", r.value
            assert "outside the connection's base_path" in r.value["error_message"]
        assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
        assert not (tmp_path / "ftp" / "stolen.txt").exists()
        assert not (tmp_path / "ftp" / "stolen2.txt").exists()
        assert worker.stop() == 0
    finally:
        ftp.stop()


async def test_password_appears_in_no_log_line_api_response_metric_or_result(tmp_path):
    """With debug logging, successes, failures and a refused login: the password is nowhere."""
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "up.txt").write_text("upload me")
    ftp = EmbeddedFTPServer(tmp_path / "ftp", password=PASSWORD).start()
    try:
        (tmp_path / "ftp" / "in.txt").write_text("payload")
        names = Names()
        await make_topics(names, partitions=2)
        wrong = (
            f"\n[ftp-wrong]\ntype = ftp\nhost = 127.0.0.1\nport = {ftp.port}\nuser = alice\n"
            f"pass = {PASSWORD}-but-wrong\n"
        )
        connections = write_connections(
            tmp_path / "c.ini", ftp.port, storage, password=PASSWORD, extra=wrong
        )
        worker = Worker(
            tmp_path,
            names,
            connections,
            log_level="debug",
            extra_env={"FTP_POOLER_LOGGING__LEVEL": "DEBUG"},
        )
        worker.start().wait_ready()
        tasks = [
            task("ok-down", "ftp-a", "/in.txt", "local", "/in.txt"),
            task("ok-up", "local", "/up.txt", "ftp-a", "/up.txt"),
            task("missing", "ftp-a", "/nope.txt", "local", "/nope.txt"),
            task("refused", "ftp-wrong", "/in.txt", "local", "/refused.txt"),
            task("dead", "ftp-dead", "/in.txt", "local", "/dead.txt"),
        ]
        await produce(names.tasks, tasks)
        received = await collect(names, count=len(tasks), timeout=180)
        by_id = {r.value["task_id"]: r.value for r in received}
        assert by_id["refused"]["error_code"] == "CONNECTION_ERROR"
        assert by_id["refused"]["retryable"] is False
        assert "530" in by_id["refused"]["error_message"]
        surfaces = [json.dumps([r.value for r in received])]
        for path in ("/health", "/ready", "/status", "/connections", "/nope"):
            surfaces.append(str(worker.get(path)))
        surfaces.append(str(worker.get("/metrics", port=worker.metrics_port)))
        assert worker.stop() == 0
        surfaces.append(worker.log_text())
        assert "PASS" in worker.log_text()  # aioftp's debug log of the login, masked
        for text in surfaces:
            assert PASSWORD not in text
    finally:
        ftp.stop()

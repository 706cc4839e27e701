"""End to end through the real broker, a real worker process and a real FTP server."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import pytest

from tests.support.stack import PASSWORD, Stack, collect, produce, task

SIZES = [0, 1, 64 * 1024, 5 * 1024 * 1024]
CAP = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(
        tmp_path_factory.mktemp("e2e"),
        env={
            "FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": str(CAP),
            "FTP_POOLER_RETRY__MAX_ATTEMPTS": "2",
            "FTP_POOLER_RETRY__BACKOFF_INITIAL_SECONDS": "0.2",
        },
    )
    stack.add_worker()
    yield stack.start()
    stack.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*.ftp-pooler.part")]


async def test_200_downloads_and_200_uploads_arrive_byte_identical_once_each(stack):
    """Every task gets exactly one success; every destination matches its source's sha256."""
    rng = random.Random(7)
    expected: dict[str, tuple[Path, str]] = {}
    tasks = []
    stack.ftp.reset_counters()
    for n in range(200):
        data = rng.randbytes(SIZES[n % 4])
        remote = stack.ftp_root / "dl" / f"sub{n % 7}" / f"file-{n}.bin"
        remote.parent.mkdir(parents=True, exist_ok=True)
        remote.write_bytes(data)
        tid = f"down-{n}"
        tasks.append(
            task(
                tid,
                "ftp-a",
                f"/dl/sub{n % 7}/file-{n}.bin",
                "local",
                f"/downloads/sub{n % 7}/file-{n}.bin",
            )
        )
        expected[tid] = (
            stack.storage / "downloads" / f"sub{n % 7}" / f"file-{n}.bin",
            sha256(data),
        )
    for n in range(200):
        data = rng.randbytes(SIZES[n % 4])
        local = stack.storage / "ul" / f"file-{n}.bin"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        tid = f"up-{n}"
        tasks.append(
            task(tid, "local", f"/ul/file-{n}.bin", "ftp-a", f"/uploads/d{n % 5}/file-{n}.bin")
        )
        expected[tid] = (stack.ftp_root / "uploads" / f"d{n % 5}" / f"file-{n}.bin", sha256(data))
    await produce(stack.names.tasks, tasks)

    received = await collect(stack.names, count=400, timeout=240)

    counts = Counter(r.value["task_id"] for r in received)
    assert set(counts) == set(expected)
    assert max(counts.values()) == 1, [t for t, c in counts.items() if c > 1]
    for r in received:
        value = r.value
        assert r.topic == stack.names.results, value
        assert r.key == value["task_id"].encode()
        path, digest = expected[value["task_id"]]
        assert value["status"] == "success"
        assert value["sha256"] == digest
        assert sha256(path.read_bytes()) == digest
        assert value["bytes_transferred"] == path.stat().st_size
        assert value["direction"] == (
            "download" if value["task_id"].startswith("down") else "upload"
        )
        assert value["attempts"] == 1 and value["worker"] == "w1"
        assert value["timestamp"].endswith("+00:00")
        assert "error_code" not in value
    assert leftovers(stack.storage, stack.ftp_root) == []
    # Pooling, counted by the server: few logins, never more than the cap at once.
    assert stack.ftp.max_sessions <= CAP
    assert 1 <= stack.ftp.logins <= 2 * CAP, stack.ftp.logins


async def test_each_kind_of_bad_task_gets_one_failure_with_the_right_code(stack):
    """Missing file, unknown id, impossible directions, bad values, escapes, dead server."""
    (stack.storage / "here.txt").write_text("x")
    good = [
        task("nf", "ftp-a", "/no/such/file", "local", "/x/nf"),
        task("unknown-id", "ftp-zzz", "/a", "local", "/x/u"),
        task("local-local", "local", "/here.txt", "local-b", "/x/ll"),
        task("ftp-ftp", "ftp-a", "/a", "ftp-dead", "/b"),
        task("escape", "ftp-a", "/dl/sub0/file-0.bin", "local", "../../outside.bin"),
        task("dead", "ftp-dead", "/a", "local", "/x/dead"),
    ]
    missing_field = {
        "task_id": "missing-field",
        "src_id": "ftp-a",
        "dst_id": "local",
        "dst_path": "/x",
    }
    wrong_type = {**task("wrong-type", "ftp-a", "/a", "local", "/x"), "src_path": 42}
    await produce(stack.names.tasks, [*good, b"this is not json", missing_field, wrong_type])
    received = await collect(stack.names, count=400 + 9, timeout=120)
    failures = {r.value["task_id"]: r for r in received if r.topic == stack.names.failures}

    expected_codes = {
        "nf": ("FILE_NOT_FOUND", False),
        "unknown-id": ("INVALID_CONFIG", False),
        "local-local": ("INVALID_CONFIG", False),
        "ftp-ftp": ("INVALID_CONFIG", False),
        "escape": ("INVALID_TASK", False),
        "dead": ("CONNECTION_ERROR", True),  # after the retry budget (attempts == 2 here)
        "missing-field": ("INVALID_TASK", False),
        "wrong-type": ("INVALID_TASK", False),
        None: ("INVALID_TASK", False),
    }
    assert set(failures) == set(expected_codes)
    for task_id, (code, retryable) in expected_codes.items():
        value = failures[task_id].value
        assert value["status"] == "failed"
        assert (value["error_code"], value["retryable"]) == (code, retryable), value
        assert value["error_message"] and PASSWORD not in value["error_message"]
        assert value["attempts"] == (2 if task_id == "dead" else 1)
    assert "src_path: Field required" in failures["missing-field"].value["error_message"]
    assert (
        "src_path: Input should be a valid string" in failures["wrong-type"].value["error_message"]
    )
    assert "outside the connection's base_path" in failures["escape"].value["error_message"]
    for unparsable in (None, "missing-field", "wrong-type"):
        value = failures[unparsable].value
        assert value["source"]["topic"] == stack.names.tasks
        assert isinstance(value["source"]["offset"], int)
        assert value["raw_value"]
    assert failures[None].value["raw_value"] == "this is not json"
    assert failures[None].key is None
    assert not (stack.root / "outside.bin").exists()


async def test_web_views_report_health_readiness_status_and_connections_without_secrets(stack):
    """The four views answer JSON; nothing exposes a password."""
    worker = stack.worker
    assert worker.get("/health") == (200, {"status": "ok", "worker": "w1"})
    assert worker.get("/ready")[0] == 200
    status, body = worker.get("/status")
    assert status == 200
    assert body["worker"] == "w1"
    assert body["pools"]["connections"]["ftp-a"]["max_sessions"] == CAP
    assert body["pools"]["connections"]["ftp-a"]["open"] <= CAP
    assert any(p.startswith(stack.names.tasks) for p in body["assigned_partitions"])
    status, body = worker.get("/connections")
    assert status == 200
    ids = {c["id"]: c for c in body["connections"]}
    assert ids["ftp-a"]["port"] == stack.ftp.port and ids["local"]["type"] == "local"
    metrics_status, metrics = worker.get("/metrics", port=worker.metrics_port)
    assert metrics_status == 200
    for direction in ("download", "upload"):
        line = (
            f'ftp_pooler_transfers_total{{direction="{direction}",error_code="",status="success"}}'
        )
        assert f"{line} 200.0" in metrics
    for text in (str(body), metrics, worker.log_text()):
        assert PASSWORD not in text

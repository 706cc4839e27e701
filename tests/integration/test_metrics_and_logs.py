"""Metrics and logs of a real worker after a known mix of tasks: exact counts, bounded labels,
one JSON object per stdout line with the expected events."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter
from typing import Any

import pytest

from scripts.ftpd import EmbeddedFTPServer
from tests.support.stack import (
    FAUST,
    Names,
    Worker,
    collect,
    make_topics,
    produce,
    task,
    write_connections,
)

PASSWORD = "s3cret-pw"
TOKEN = "metrics-test-t0ken"
DOWNLOADS = {"dl-0": 0, "dl-1": 1, "dl-2": 1000, "dl-3": 50_000, "dl-4": 100_000}
UPLOADS = {"ul-0": 10, "ul-1": 20, "ul-2": 30}
RETENTION_SECONDS = 6  # api.task_retention_hours, shortened to see entries expire
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class SplitWorker(Worker):
    """A worker whose stdout (our JSON events) and stderr (Faust's logs) go to separate files."""

    def start(self) -> Worker:
        self.runs += 1
        Worker.live.append(self)
        self.stdout_path = self.workdir / f"{self.worker_id}.stdout"
        with self.stdout_path.open("ab") as out, self.log_path.open("ab") as err:
            self.process = subprocess.Popen(
                [str(FAUST), "-L", "uvloop", "-A", "app", "worker", "-l", self.log_level],
                cwd=self.workdir,
                env=self.env(),
                stdout=out,
                stderr=err,
            )
        return self


def samples(page: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text page: (name, labels, value)."""
    found = []
    for line in page.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        labels = dict(LABEL.findall(match["labels"] or ""))
        found.append((match["name"], labels, float(match["value"])))
    return found


def value(page: str, name: str, **labels: str) -> float:
    """The one sample named ``name`` whose labels include ``labels`` (0 when there is none)."""
    matching = [v for n, ls, v in samples(page) if n == name and labels.items() <= ls.items()]
    assert len(matching) <= 1, (name, labels, matching)
    return matching[0] if matching else 0.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One worker, the known mix, its metrics page when idle, and its stdout after SIGTERM."""
    root = tmp_path_factory.mktemp("metrics")
    ftp_root, storage = root / "ftp", root / "storage"
    (ftp_root / "dl").mkdir(parents=True)
    (storage / "ul").mkdir(parents=True)
    for name, size in DOWNLOADS.items():
        (ftp_root / "dl" / f"{name}.bin").write_bytes(b"d" * size)
    for name, size in UPLOADS.items():
        (storage / "ul" / f"{name}.bin").write_bytes(b"u" * size)
    ftp = EmbeddedFTPServer(ftp_root, password=PASSWORD).start()
    names = Names()
    asyncio.run(make_topics(names, partitions=2))
    worker = SplitWorker(
        root,
        names,
        write_connections(root / "connections.ini", ftp.port, storage, password=PASSWORD),
        extra_env={
            "FTP_POOLER_RETRY__MAX_ATTEMPTS": "2",
            "FTP_POOLER_RETRY__BACKOFF_INITIAL_SECONDS": "0.2",
            "FTP_POOLER_API__TOKEN": TOKEN,
            "FTP_POOLER_KAFKA__TOPIC_PARTITIONS": "2",
            "FTP_POOLER_API__TASK_RETENTION_HOURS": str(RETENTION_SECONDS / 3600),
        },
    )
    try:
        worker.start().wait_ready()
        mix: list[Any] = [
            *(task(n, "ftp-a", f"/dl/{n}.bin", "local", f"/got/{n}.bin") for n in DOWNLOADS),
            *(task(n, "local", f"/ul/{n}.bin", "ftp-a", f"/put/{n}.bin") for n in UPLOADS),
            task("nf-0", "ftp-a", "/dl/missing-0.bin", "local", "/got/nf-0.bin"),
            task("nf-1", "ftp-a", "/dl/missing-1.bin", "local", "/got/nf-1.bin"),
            task("cfg-0", "ftp-zzz", "/dl/x.bin", "local", "/got/cfg-0.bin"),
            task("dead-0", "ftp-dead", "/dl/x.bin", "local", "/got/dead-0.bin"),
            b"this is not json",
        ]
        asyncio.run(produce(names.tasks, mix))
        # dl-3 is asked for as soon as its own result is out, not after the whole mix: the
        # dead server's retries may take longer than the retention on a slow machine.
        seen: list[Any] = []

        def ask_when_done(received: list[Any]) -> bool:
            if not seen and any(r.value.get("task_id") == "dl-3" for r in received):
                # Status changes travel in batches (up to 0.2 s) beside the result: the entry
                # may follow the result by that much, so a 404 is asked again, briefly.
                until = time.monotonic() + 3
                answer = worker.get("/tasks/dl-3")
                while answer[0] == 404 and time.monotonic() < until:
                    time.sleep(0.1)
                    answer = worker.get("/tasks/dl-3")
                seen.append(answer)
            return False

        results = asyncio.run(collect(names, count=len(mix), timeout=90, until=ask_when_done))
        assert len(results) == len(mix)
        fresh = seen[0]
        deadline = time.monotonic() + RETENTION_SECONDS + 20
        while worker.get("/status")[1]["task_status"]["purged_total"] < len(mix) - 1:
            assert time.monotonic() < deadline, worker.get("/status")[1]["task_status"]
            time.sleep(0.3)
        expired = worker.get("/tasks/dl-3")
        purged = worker.get("/status")[1]["task_status"]["purged_total"]
        deadline = time.monotonic() + 30
        while True:  # idle: nothing in flight, every offset committed
            _, page = worker.get("/metrics", port=worker.metrics_port)
            lags = [
                (ls["topic"], v) for n, ls, v in samples(page) if n == "ftp_pooler_consumer_lag"
            ]
            # The retry topic is written inside transactions (exactly_once, the default): the
            # commit marker after its last entry occupies one offset, so its lag rests at 1 at
            # most (kafka-consumer-groups shows the same); the task topic's reaches 0.
            settled = bool(lags) and all(v == 0 if t == names.tasks else v <= 1 for t, v in lags)
            if settled and value(page, "ftp_pooler_tasks_in_flight") == 0:
                break
            assert time.monotonic() < deadline, [s for s in samples(page) if "lag" in s[0]]
            time.sleep(0.3)
        assert worker.stop() == 0, worker.tail()
        yield {
            "retention": (fresh, expired, purged),
            "page": page,
            "stdout": worker.stdout_path.read_text(),
            "names": names,
            "stderr": worker.log_text(),
            "mix": mix,
        }
    finally:
        worker.kill()
        ftp.stop()


def test_transfer_counters_and_histograms_hold_exactly_the_mix(run):
    """transfers, bytes, duration histogram and retries count each final outcome exactly once."""
    page = run["page"]
    total = "ftp_pooler_transfers_total"
    assert value(page, total, direction="download", status="success", error_code="") == 5
    assert value(page, total, direction="upload", status="success", error_code="") == 3
    assert (
        value(page, total, direction="download", status="failed", error_code="FILE_NOT_FOUND") == 2
    )
    assert (
        value(page, total, direction="download", status="failed", error_code="CONNECTION_ERROR")
        == 1
    )
    assert (
        value(page, total, direction="unknown", status="failed", error_code="INVALID_CONFIG") == 1
    )
    assert value(page, total, direction="unknown", status="failed", error_code="INVALID_TASK") == 1
    assert sum(v for n, _, v in samples(page) if n == total) == 13
    bytes_total = "ftp_pooler_transfer_bytes_total"
    assert value(page, bytes_total, direction="download") == sum(DOWNLOADS.values())
    assert value(page, bytes_total, direction="upload") == sum(UPLOADS.values())
    duration = "ftp_pooler_transfer_duration_seconds"
    expected_counts = {
        ("download", "success"): 5,
        ("upload", "success"): 3,
        ("download", "failed"): 3,
        ("unknown", "failed"): 2,
    }
    for (direction, status), count in expected_counts.items():
        labels = {"direction": direction, "status": status}
        assert value(page, f"{duration}_count", **labels) == count, labels
        assert value(page, f"{duration}_bucket", le="+Inf", **labels) == count
        assert value(page, f"{duration}_sum", **labels) >= 0
    histogram_series = {
        (ls["direction"], ls["status"]) for n, ls, _ in samples(page) if n == f"{duration}_count"
    }
    assert histogram_series == set(expected_counts)
    retries = "ftp_pooler_retries_total"
    assert value(page, retries, direction="download", error_code="CONNECTION_ERROR") == 1
    assert sum(v for n, _, v in samples(page) if n == retries) == 1


def test_gauges_lag_and_faust_sensor_metrics_are_served(run):
    """In-flight, sessions and per-partition lag are there (idle: 0), and Faust's own sensors
    counted exactly the 13 messages of the input topic."""
    page, names = run["page"], run["names"]
    assert value(page, "ftp_pooler_tasks_in_flight") == 0
    lag = {
        ls["partition"]: v
        for n, ls, v in samples(page)
        if n == "ftp_pooler_consumer_lag" and ls["topic"] == names.tasks
    }
    assert lag == {"0": 0.0, "1": 0.0}
    assert value(page, "ftp_pooler_sessions", connection="ftp-a", state="idle") >= 1
    assert value(page, "ftp_pooler_sessions_opened_total", connection="ftp-a") >= 1
    received = "ftp_pooler_faust_messages_received_per_topic_total"
    assert value(page, received, topic=names.tasks) == 13
    assert value(page, "ftp_pooler_faust_total_events_total") >= 13
    assert any(
        n.startswith("ftp_pooler_faust_consumer_commit_latency") for n, _, _ in samples(page)
    )


def test_metric_names_follow_conventions_and_labels_never_carry_ids_or_paths(run):
    """Counters end in _total, durations in _seconds; no label value is a task id or a path."""
    page = run["page"]
    forbidden = set()
    for item in run["mix"]:
        if isinstance(item, dict):
            forbidden |= {item["task_id"], item["src_path"], item["dst_path"]}
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", page, re.M))
    for name, kind in types.items():
        if name.startswith("ftp_pooler_") and not name.startswith("ftp_pooler_faust_"):
            if kind == "counter":
                assert name.endswith("_total"), name
            if kind == "histogram":
                assert name.endswith(("_seconds", "_bytes")), name
    for name, labels, _ in samples(page):
        for label, text in labels.items():
            assert text not in forbidden, (name, label, text)
            assert "/" not in text or label == "le", (name, label, text)
    assert PASSWORD not in page and TOKEN not in page


def test_stdout_is_one_json_object_per_line_with_the_events_of_the_mix(run):
    """worker start/stop with version and config, one final event per task with ids bound,
    session opens with their connection; nothing else on stdout, no secret anywhere."""
    lines = [line for line in run["stdout"].splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(e, dict) and e.get("event") and e.get("timestamp") for e in events)
    by_name = Counter(e["event"] for e in events)
    started = [e for e in events if e["event"] == "worker_started"]
    assert len(started) == 1
    assert started[0]["version"] and started[0]["worker"] == "w1"
    config = started[0]["config"]
    assert config["kafka"]["input_topic"] == run["names"].tasks
    assert config["api"]["token"] == "set"
    assert config["connections"]["ftp-a"]["host"] == "127.0.0.1"
    stopped = [e for e in events if e["event"] == "worker_stopped"]
    assert len(stopped) == 1 and stopped[0]["version"] == started[0]["version"]
    assert by_name["worker_stopping"] == 1

    finals: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["event"] in ("transfer_completed", "transfer_failed"):
            finals.setdefault(e["task_id"], []).append(e)
    expected = {*DOWNLOADS, *UPLOADS, "nf-0", "nf-1", "cfg-0", "dead-0"}
    assert set(finals) == expected
    assert all(len(v) == 1 for v in finals.values()), finals
    for task_id, (e,) in finals.items():
        assert e["src_id"] and e["dst_id"], e  # bound per task
        if task_id in DOWNLOADS or task_id in UPLOADS:
            assert e["event"] == "transfer_completed" and e["attempts"] == 1
        else:
            assert e["event"] == "transfer_failed" and e["level"] == "warning"
    assert finals["nf-0"][0]["error_code"] == "FILE_NOT_FOUND"
    assert finals["cfg-0"][0]["error_code"] == "INVALID_CONFIG"
    assert finals["dead-0"][0]["error_code"] == "CONNECTION_ERROR"
    assert finals["dead-0"][0]["attempts"] == 2
    assert by_name["task_invalid"] == 1
    assert by_name["transfer_retry_scheduled"] == 1
    opened = [e for e in events if e["event"] == "session_opened"]
    assert opened and all(e["connection"] == "ftp-a" for e in opened)
    closed = [e for e in events if e["event"] == "session_closed"]
    assert all(e["reason"] for e in closed)
    assert by_name["session_pools_closed"] == 1
    for text in (run["stdout"], run["stderr"]):
        assert PASSWORD not in text and TOKEN not in text
    assert "ƒaµS†" in run["stderr"]  # Faust's banner went to stderr, not stdout


def test_task_states_are_forgotten_after_the_retention(run):
    """GET /tasks/{id} answers until api.task_retention_hours has passed, then 404; the owner
    purges every expired entry (one per task id of the mix) from its table."""
    fresh, expired, purged = run["retention"]
    assert fresh[0] == 200 and fresh[1]["state"] == "success", fresh
    assert expired[0] == 404, expired
    assert purged == 12

"""The HTTP API of real worker processes: probes across start-up and shutdown, /status,
/connections, task submission (token, validation, size limit) and task lookup routed between
two workers of one group, and a schemathesis run over /openapi.json."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from faust.utils import json as faust_json

from tests.support.stack import PASSWORD, Stack, Worker, task

TOKEN = "api-t0ken-for-tests"
PARTITIONS = 4  # ftp-tasks and the internal topics (kafka.topic_partitions)
MAX_BODY = 16 * 1024
CAP = 3
ST = Path(sys.executable).with_name("st")


def call(
    worker: Worker, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    """One HTTP request; a dict or list body is sent as JSON, bytes as they are."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.api_port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read().decode()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw


def task_path(task_id: str) -> str:
    return "/tasks/" + urllib.parse.quote(task_id, safe="")


def partition_of(task_id: str) -> int:
    """The partition a worker files task_id's status under (JSON key, murmur2), computed here
    independently of the app's code."""
    key = faust_json.dumps(task_id).encode()
    return int(murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def watch_startup(worker: Worker, timeout: float = 60) -> list[tuple[int, int]]:
    """Start ``worker`` and poll /ready and /health until ready: the (ready, health) seen."""
    worker.start()
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = worker.get("/ready")[0]
        seen.append((ready, worker.get("/health")[0]))
        if ready == 200:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not ready in {timeout} s: {seen[-5:]}\n{worker.tail()}")


def owner(stack: Stack, task_id: str) -> str:
    """The worker whose /status says it owns task_id's partition of the status table."""
    partition = partition_of(task_id)
    owners = [
        w.worker_id
        for w in stack.workers.values()
        if partition in w.get("/status")[1]["task_status"]["owned_partitions"]
    ]
    assert len(owners) == 1, (task_id, partition, owners)
    return owners[0]


def settled(stack: Stack) -> bool:
    """Both workers own a disjoint share of the table partitions, together all of them."""
    owned = [w.get("/status")[1]["task_status"]["owned_partitions"] for w in stack.workers.values()]
    return all(owned) and sorted(owned[0] + owned[1]) == list(range(PARTITIONS))


@pytest.fixture(scope="module")
def w1(stack: Stack) -> Worker:
    return stack.workers["w1"]


@pytest.fixture(scope="module")
def w2(stack: Stack) -> Worker:
    return stack.workers["w2"]


@pytest.fixture(scope="module")
def startup() -> list[tuple[int, int]]:
    """The (ready, health) answers seen while w1 started; filled in by the stack fixture."""
    return []


@pytest.fixture(scope="module")
def stack(tmp_path_factory, startup):
    stack = Stack(
        tmp_path_factory.mktemp("api"),
        partitions=PARTITIONS,
        env={
            "FTP_POOLER_API__TOKEN": TOKEN,
            "FTP_POOLER_API__MAX_REQUEST_BYTES": str(MAX_BODY),
            "FTP_POOLER_KAFKA__TOPIC_PARTITIONS": str(PARTITIONS),
            "FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": str(CAP),
            "FTP_POOLER_POOL__REPORT_INTERVAL_SECONDS": "1",
            "FTP_POOLER_RETRY__MAX_ATTEMPTS": "2",
            "FTP_POOLER_RETRY__BACKOFF_INITIAL_SECONDS": "1.5",
            "FTP_POOLER_WORKER__SHUTDOWN_GRACE_SECONDS": "15",
        },
    )
    w1, w2 = stack.add_worker("w1"), stack.add_worker("w2")
    asyncio.run(stack.make_topics())
    startup.extend(watch_startup(w1))
    w2.start().wait_ready()
    deadline = time.monotonic() + 60
    while not settled(stack):
        assert time.monotonic() < deadline, "partitions never settled between w1 and w2"
        time.sleep(0.3)
    yield stack
    stack.close(check_exit=False)  # the last test stops w1 itself; w2 is not checked


def test_ready_is_503_while_joining_then_200_and_health_answers_throughout(startup, w1):
    """Before the group is joined and tables recovered /ready is 503 (and /health 200); then 200."""
    answered = [(ready, health) for ready, health in startup if ready != 0]
    first_ok = next(i for i, (ready, _) in enumerate(answered) if ready == 200)
    assert first_ok > 0, f"never saw 503 before ready: {startup}"
    assert {ready for ready, _ in answered[:first_ok]} == {503}
    assert all(health == 200 for _, health in answered)
    status, body = w1.get("/ready")
    assert (status, body) == (200, {"ready": True, "worker": "w1"})
    assert w1.get("/health") == (200, {"status": "ok", "worker": "w1"})


def test_status_shows_partitions_pools_with_caps_and_the_fleet(stack, w1, w2):
    """This worker's partitions, tasks in flight, pools (caps, states, waiters, circuit), fleet."""
    status, body = w1.get("/status")
    assert status == 200
    assert body["worker"] == "w1" and body["ready"] is True and body["version"]
    mine = [p for p in body["assigned_partitions"] if p.startswith(stack.names.tasks + ":")]
    assert mine, body["assigned_partitions"]
    assert body["in_flight"] == 0 and body["max_in_flight"] >= 1
    pool = body["pools"]["connections"]["ftp-a"]
    assert pool["max_sessions"] == CAP and pool["effective_max_sessions"] == CAP
    for field in ("open", "busy", "idle", "connecting", "waiting"):
        assert isinstance(pool[field], int), field
    assert pool["circuit"]["state"] == "closed"
    other = w2.get("/status")[1]
    theirs = [p for p in other["assigned_partitions"] if p.startswith(stack.names.tasks + ":")]
    assert sorted(mine + theirs) == sorted(f"{stack.names.tasks}:{n}" for n in range(PARTITIONS))
    deadline = time.monotonic() + 15
    while set(body["fleet"].get("ftp-a", {}).get("workers", {})) != {"w1", "w2"}:
        assert time.monotonic() < deadline, body["fleet"]
        time.sleep(0.3)
        body = w1.get("/status")[1]
    assert body["fleet"]["ftp-a"]["total"]["open"] == sum(
        w["open"] for w in body["fleet"]["ftp-a"]["workers"].values()
    )


def test_connections_show_settings_but_never_credentials(stack, w2):
    """ids, types, hosts, ports, passive/TLS flags, caps; no password anywhere."""
    status, body = w2.get("/connections")
    assert status == 200
    by_id = {c["id"]: c for c in body["connections"]}
    assert set(by_id) == {"ftp-a", "ftp-dead", "local", "local-b"}
    ftp = by_id["ftp-a"]
    assert (ftp["type"], ftp["host"], ftp["port"]) == ("ftp", "127.0.0.1", stack.ftp.port)
    assert ftp["passive"] is True and "max_sessions" in ftp
    assert by_id["local"] == {"id": "local", "type": "local", "base_path": str(stack.storage)}
    text = json.dumps(body)
    assert PASSWORD not in text and '"pass"' not in text and '"password"' not in text


def test_post_needs_the_bearer_token_and_gets_stay_open(w1):
    """401 without or with a wrong token (nothing produced); every GET answers without one."""
    one = task("no-token-1", "ftp-a", "/x", "local", "/y")
    for token in (None, "wrong"):
        status, body = call(w1, "POST", "/tasks", one, token=token)
        assert status == 401, body
        assert "bearer" in body["error"].lower()
    for path in ("/health", "/ready", "/status", "/connections", "/openapi.json", "/metrics"):
        assert call(w1, "GET", path, token=None)[0] == 200, path
    assert call(w1, "GET", task_path("no-token-1"), token=None)[0] == 404


def test_post_rejects_invalid_tasks_with_per_field_errors_and_produces_none(w1, w2):
    """400 for a body that is not JSON, an empty list, or any invalid task; all or nothing."""
    status, body = call(w1, "POST", "/tasks", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = call(w1, "POST", "/tasks", [])
    assert status == 400 and "empty" in body["error"]
    valid = task("all-or-nothing-ok", "ftp-a", "/x", "local", "/y")
    missing = {
        "task_id": "all-or-nothing-bad",
        "src_id": "ftp-a",
        "dst_id": "local",
        "dst_path": "/y",
    }
    typed = {**task("x", "ftp-a", "/x", "local", "/y"), "task_id": 123}
    nul = task("nul", "ftp-a", "/x\x00y", "local", "/y")
    status, body = call(w1, "POST", "/tasks", [valid, missing, typed, nul, "text"])
    assert status == 400, body
    assert body["error"] == "invalid tasks: 4 of 5; nothing was produced"
    errors = {e["index"]: e for e in body["errors"]}
    assert set(errors) == {1, 2, 3, 4}
    assert errors[1]["task_id"] == "all-or-nothing-bad"
    assert errors[1]["fields"] == {"src_path": "Field required"}
    assert errors[1]["message"] == "src_path: Field required"  # as the worker would publish it
    assert errors[2]["task_id"] is None
    assert errors[2]["fields"] == {"task_id": "Input should be a valid string"}
    assert "NUL" in errors[3]["fields"]["src_path"]
    assert errors[4]["message"] == "value must be a JSON object"
    assert call(w2, "GET", task_path("all-or-nothing-ok"))[0] == 404


def test_post_over_the_size_limit_is_413_declared_or_streamed(w1):
    """A body over api.max_request_bytes is refused, with Content-Length or chunked."""
    big = json.dumps([task(f"big-{n}", "ftp-a", "/x" * 40, "local", "/y") for n in range(200)])
    assert len(big) > MAX_BODY
    status, body = call(w1, "POST", "/tasks", big.encode())
    assert status == 413 and body["limit_bytes"] == MAX_BODY
    conn = http.client.HTTPConnection("127.0.0.1", w1.api_port, timeout=10)
    chunks = (big[i : i + 4096].encode() for i in range(0, len(big), 4096))
    conn.request(
        "POST",
        "/tasks",
        body=chunks,
        headers={"Authorization": f"Bearer {TOKEN}"},
        encode_chunked=True,
    )
    response = conn.getresponse()
    assert response.status == 413, response.read()
    conn.close()
    assert call(w1, "GET", task_path("big-0"))[0] == 404


def test_unknown_task_ids_are_404_from_either_worker(w1, w2):
    """Any id never submitted, however odd, is 404 with a JSON error."""
    for task_id in ("never-seen", "with/slash and space", "ünïcode-✓", "x" * 256):
        for worker in (w1, w2):
            status, body = call(worker, "GET", task_path(task_id), token=None)
            assert status == 404, (task_id, body)
            assert body["task_id"] == task_id


def test_tasks_pass_through_their_states_and_either_worker_answers_with_the_owners_entry(
    stack, w1, w2
):
    """queued -> in_progress -> success/failed (with code, attempts, timestamps), kept by the
    owner of each id's partition and answered through either worker of the group."""
    data = b"hello over ftp\n" * 100
    (stack.ftp_root / "out").mkdir(parents=True, exist_ok=True)
    (stack.ftp_root / "out" / "report.csv").write_bytes(data)
    (stack.storage / "up").mkdir()
    (stack.storage / "up" / "stock.json").write_bytes(b"{}")
    # Ids on every partition, so each worker is asked for ids the other one owns.
    ids: dict[str, str] = {}
    n = 0
    while len({partition_of(i) for i in ids}) < PARTITIONS:
        ids[f"st-ok-{n}"] = "ok"
        n += 1
    tasks = [task(i, "ftp-a", "/out/report.csv", "local", f"/in/{i}.csv") for i in ids]
    tasks += [
        task("st-up/ünï 1", "local", "/up/stock.json", "ftp-a", "/in/stock.json"),
        task("st-missing", "ftp-a", "/out/nope.csv", "local", "/in/nope.csv"),
        task("st-dead", "ftp-dead", "/a", "local", "/in/dead"),
    ]
    status, body = call(w2, "POST", "/tasks", tasks)
    assert status == 202, body
    assert body == {"accepted": len(tasks), "task_ids": [t["task_id"] for t in tasks]}

    dead_states: list[dict[str, Any]] = []
    finals: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while len(finals) < len(tasks):
        assert time.monotonic() < deadline, f"final states missing: {set(ids) - set(finals)}"
        for t in tasks:
            task_id = t["task_id"]
            if task_id in finals:
                continue
            status, entry = call(w1, "GET", task_path(task_id), token=None)
            assert status == 200, (task_id, entry)  # read-your-writes: never 404 after a 202
            assert entry["task_id"] == task_id and entry["state"] in (
                "queued",
                "in_progress",
                "success",
                "failed",
            )
            if task_id == "st-dead":
                dead_states.append(entry)
            if entry["state"] in ("success", "failed"):
                finals[task_id] = entry
        time.sleep(0.1)

    for task_id in ids:
        entry = finals[task_id]
        assert entry["state"] == "success" and entry["attempts"] == 1, entry
        assert entry["bytes_transferred"] == len(data) and len(entry["sha256"]) == 64
        assert (
            entry["queued_at"] <= entry["started_at"] <= entry["finished_at"] <= entry["updated_at"]
        )
        assert entry["direction"] == "download" and entry["worker"] in ("w1", "w2")
    assert finals["st-up/ünï 1"]["state"] == "success"
    assert finals["st-up/ünï 1"]["direction"] == "upload"
    missing = finals["st-missing"]
    assert (missing["state"], missing["error_code"], missing["retryable"]) == (
        "failed",
        "FILE_NOT_FOUND",
        False,
    )
    dead = finals["st-dead"]
    assert (dead["state"], dead["error_code"], dead["attempts"]) == (
        "failed",
        "CONNECTION_ERROR",
        2,
    )
    parked = [e for e in dead_states if e["state"] == "queued" and e.get("attempts") == 1]
    assert parked, [e["state"] for e in dead_states]
    assert parked[0]["last_error_code"] == "CONNECTION_ERROR" and parked[0]["next_attempt_at"]

    # Both workers answer every id with the owner's entry: the non-owner forwards the request.
    for t in tasks:
        task_id = t["task_id"]
        answers = [call(w, "GET", task_path(task_id), token=None) for w in (w1, w2)]
        assert answers[0] == answers[1], task_id
        assert answers[0][1]["answered_by"] == owner(stack, task_id)
    owners = {owner(stack, i) for i in ids}
    assert owners == {"w1", "w2"}, owners


def test_openapi_describes_the_api_and_schemathesis_finds_no_failure(stack, tmp_path, w1, w2):
    """Every route is in /openapi.json; schemathesis (all checks, all phases) finds nothing."""
    status, document = w1.get("/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/health",
        "/ready",
        "/status",
        "/connections",
        "/tasks",
        "/tasks/{task_id}",
        "/metrics",
        "/openapi.json",
    }
    assert document["paths"]["/tasks"]["post"]["security"] == [{"bearer": []}]
    run = subprocess.run(
        [
            str(ST),
            "run",
            f"http://127.0.0.1:{stack.workers['w1'].api_port}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            "15",
            "--workers",
            "1",
            "--seed",
            "20261126",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "No issues found" in output, output[-3000:]
    assert w1.get("/health")[0] == 200 and w2.get("/health")[0] == 200


def test_ready_is_503_while_stopping_and_the_worker_exits_0(stack, w1, w2):
    """On SIGTERM /ready answers 503 (health still 200) while in-flight transfers finish."""
    (stack.ftp_root / "slow").mkdir(exist_ok=True)
    (stack.ftp_root / "slow" / "file.bin").write_bytes(b"s" * 1000)
    stack.ftp.retr_delay = 3.0
    try:
        slow = [
            task(f"slow-{n}", "ftp-a", "/slow/file.bin", "local", f"/slow/{n}.bin")
            for n in range(8)
        ]
        assert call(w1, "POST", "/tasks", slow)[0] == 202
        deadline = time.monotonic() + 20
        while w2.get("/status")[1]["in_flight"] == 0:
            assert time.monotonic() < deadline, "no task in flight on w2"
            time.sleep(0.05)
        assert w2.process is not None
        w2.process.send_signal(signal.SIGTERM)
        seen: list[tuple[int, int]] = []
        while w2.process.poll() is None:
            seen.append((w2.get("/ready")[0], w2.get("/health")[0]))
            time.sleep(0.05)
        assert w2.process.returncode == 0, w2.tail()
        answered = [pair for pair in seen if pair[0] != 0]
        assert (503, 200) in answered, seen[:20]
        # The signal reaches the event loop a moment after it is sent (a request may be answered
        # first); from the first 503 on, /ready never says 200 again.
        after = answered[answered.index((503, 200)) :]
        assert all(ready == 503 for ready, _ in after), seen[:20]
        # Whatever w2 abandoned is redone by w1: every slow task ends in success.
        deadline = time.monotonic() + 60
        for t in slow:
            while True:
                status, entry = call(w1, "GET", task_path(t["task_id"]), token=None)
                if status == 200 and entry["state"] == "success":
                    break
                assert time.monotonic() < deadline, (t["task_id"], status, entry)
                time.sleep(0.2)
    finally:
        stack.ftp.retr_delay = 0.0

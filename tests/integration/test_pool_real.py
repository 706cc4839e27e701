"""The session pool against real FTP servers that count logins and sessions per server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from scripts.ftpd import EmbeddedFTPServer, SessionTally
from tests.support.stack import Names, Worker, collect, make_topics, produce, task


def connections_ini(path: Path, servers: dict[str, EmbeddedFTPServer], storage: Path) -> Path:
    sections = [
        f"[{name}]\ntype = ftp\nhost = 127.0.0.1\nport = {server.port}\nuser = alice\n"
        f"pass = s3cret-pw\n"
        for name, server in servers.items()
    ]
    sections.append(f"[local]\ntype = local\nbase_path = {storage}\n")
    path.write_text("\n".join(sections))
    return path


def small_files(server: EmbeddedFTPServer, count: int) -> None:
    (server.root / "in").mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (server.root / "in" / f"f{n}.txt").write_bytes(b"x" * 4096)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_caps_hold_for_500_transfers_over_3_servers_and_eviction_unstarves_one(tmp_path):
    """Per-connection cap 4, worker cap 8 (< 3 x 4): never more sessions than that, server-side.

    A and B first fill the worker cap with idle sessions; C's tasks then proceed only because
    the least recently used idle sessions are closed to make room.
    """
    tally = SessionTally()
    servers = {n: EmbeddedFTPServer(tmp_path / n, tally=tally).start() for n in ("a", "b", "c")}
    try:
        for server in servers.values():
            small_files(server, 170)
        storage = tmp_path / "storage"
        storage.mkdir()
        names = Names()
        await make_topics(names, partitions=4)
        worker = Worker(
            tmp_path,
            names,
            connections_ini(tmp_path / "c.ini", servers, storage),
            extra_env={
                "FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": "4",
                "FTP_POOLER_POOL__MAX_SESSIONS_PER_POD": "8",
            },
        )
        worker.start().wait_ready()
        first = [
            task(f"{n}-{i}", n, f"/in/f{i}.txt", "local", f"/{n}/f{i}.txt")
            for i in range(170)
            for n in ("a", "b")
        ]
        await produce(names.tasks, first)
        await collect(names, count=len(first), timeout=120)
        assert tally.sessions == 8  # a and b hold the whole worker cap, idle
        second = [task(f"c-{i}", "c", f"/in/f{i}.txt", "local", f"/c/f{i}.txt") for i in range(160)]
        await produce(names.tasks, second)
        received = await collect(names, count=len(first) + len(second), timeout=120)
        assert len(received) == 500
        assert all(r.value["status"] == "success" for r in received), [
            r.value for r in received if r.value["status"] != "success"
        ][:3]
        assert tally.max_sessions <= 8
        assert all(server.max_sessions <= 4 for server in servers.values())
        assert servers["c"].logins >= 1
        _, page = worker.get("/metrics", port=worker.metrics_port)
        evicted = sum(
            metric(page, "ftp_pooler_sessions_closed_total", connection=n, reason="evicted")
            for n in ("a", "b")
        )
        assert evicted >= 1
        print(
            f"server-side max sessions: all {tally.max_sessions}, "
            + ", ".join(f"{n} {s.max_sessions} ({s.logins} logins)" for n, s in servers.items())
            + f"; evicted {evicted:.0f}"
        )
        assert worker.stop() == 0
    finally:
        for server in servers.values():
            server.stop()


async def test_sessions_the_server_timed_out_are_replaced_without_failing_or_retrying(tmp_path):
    """Server idle timeout 2 s; tasks sent after 3 s of silence all succeed at attempt 1."""
    server = EmbeddedFTPServer(tmp_path / "srv", idle_timeout=2).start()
    try:
        small_files(server, 20)
        storage = tmp_path / "storage"
        storage.mkdir()
        names = Names()
        await make_topics(names, partitions=2)
        worker = Worker(
            tmp_path, names, connections_ini(tmp_path / "c.ini", {"ftp-a": server}, storage)
        )
        worker.start().wait_ready()
        await produce(
            names.tasks,
            [
                task(f"early-{i}", "ftp-a", f"/in/f{i}.txt", "local", f"/early/f{i}.txt")
                for i in range(10)
            ],
        )
        await collect(names, count=10, timeout=60)
        opened_before = server.logins
        await asyncio.sleep(3)
        assert server.sessions == 0  # the server closed every idle session
        await produce(
            names.tasks,
            [
                task(f"late-{i}", "ftp-a", f"/in/f{i}.txt", "local", f"/late/f{i}.txt")
                for i in range(10, 20)
            ],
        )
        received = await collect(names, count=20, timeout=60)
        late = [r.value for r in received if r.value["task_id"].startswith("late")]
        assert len(late) == 10
        assert all(v["status"] == "success" and v["attempts"] == 1 for v in late), late
        assert server.logins > opened_before
        _, page = worker.get("/metrics", port=worker.metrics_port)
        assert (
            metric(page, "ftp_pooler_sessions_closed_total", connection="ftp-a", reason="stale")
            >= 1
        )
        assert worker.stop() == 0
    finally:
        server.stop()


async def test_server_limit_of_3_sessions_lowers_cap_10_to_3_and_no_task_fails(tmp_path):
    """The server answers 421 beyond 3 connections; the pool settles at 3, nothing fails."""
    server = EmbeddedFTPServer(tmp_path / "srv", max_cons_per_ip=3).start()
    try:
        small_files(server, 60)
        storage = tmp_path / "storage"
        storage.mkdir()
        names = Names()
        await make_topics(names, partitions=4)
        worker = Worker(
            tmp_path,
            names,
            connections_ini(tmp_path / "c.ini", {"ftp-a": server}, storage),
            extra_env={"FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": "10"},
        )
        worker.start().wait_ready()
        await produce(
            names.tasks,
            [
                task(f"t-{i}", "ftp-a", f"/in/f{i}.txt", "local", f"/out/f{i}.txt")
                for i in range(60)
            ],
        )
        received = await collect(names, count=60, timeout=120)
        assert all(r.value["status"] == "success" for r in received), [
            r.value for r in received if r.value["status"] != "success"
        ][:3]
        assert server.max_sessions <= 3
        _, status = worker.get("/status")
        pool = status["pools"]["connections"]["ftp-a"]
        assert pool["effective_max_sessions"] == 3 and pool["max_sessions"] == 10
        assert pool["pushbacks_total"] >= 1
        _, page = worker.get("/metrics", port=worker.metrics_port)
        assert metric(page, "ftp_pooler_session_cap", connection="ftp-a") == 3
        assert worker.stop() == 0
    finally:
        server.stop()


async def test_status_on_either_worker_shows_both_and_a_killed_worker_disappears(tmp_path):
    """Two workers, one group: the session table gives each the fleet view; the dead expire."""
    server = EmbeddedFTPServer(tmp_path / "srv").start()
    try:
        small_files(server, 40)
        storage = tmp_path / "storage"
        storage.mkdir()
        names = Names()
        await make_topics(names, partitions=4)
        ini = connections_ini(tmp_path / "c.ini", {"ftp-a": server}, storage)
        env = {"FTP_POOLER_POOL__REPORT_INTERVAL_SECONDS": "1"}
        w1 = Worker(tmp_path, names, ini, worker_id="w1", extra_env=env).start()
        w2 = Worker(tmp_path, names, ini, worker_id="w2", extra_env=env).start()
        w1.wait_ready()
        w2.wait_ready()
        await produce(
            names.tasks,
            [
                task(f"t-{i}", "ftp-a", f"/in/f{i}.txt", "local", f"/out/f{i}.txt")
                for i in range(40)
            ],
        )
        await collect(names, count=40, timeout=60)

        def fleet_workers(worker: Worker) -> set[str]:
            status, body = worker.get("/status")
            assert status == 200, body
            return set(body["fleet"].get("ftp-a", {}).get("workers", {}))

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if fleet_workers(w1) == {"w1", "w2"} and fleet_workers(w2) == {"w1", "w2"}:
                break
            await asyncio.sleep(0.5)
        assert fleet_workers(w1) == {"w1", "w2"}
        assert fleet_workers(w2) == {"w1", "w2"}
        _, body = w1.get("/status")
        total = body["fleet"]["ftp-a"]["total"]
        assert total["open"] == sum(w["open"] for w in body["fleet"]["ftp-a"]["workers"].values())

        w2.kill()
        killed_at = time.monotonic()
        while fleet_workers(w1) != {"w1"} and time.monotonic() - killed_at < 10:  # noqa: ASYNC110 (polling another process over HTTP)
            await asyncio.sleep(0.2)
        gone_after = time.monotonic() - killed_at
        assert fleet_workers(w1) == {"w1"}
        assert gone_after <= 2 * 1 + 1.0, gone_after  # two report periods (+ polling slack)
        print(f"killed worker's entries gone after {gone_after:.1f} s")
        # A restarted worker rebuilds the table from RocksDB and the changelog and sees the fleet.
        w2.start().wait_ready()
        deadline = time.monotonic() + 20
        while fleet_workers(w2) != {"w1", "w2"} and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.3)
        assert fleet_workers(w2) == {"w1", "w2"}
        assert w2.stop() == 0
        assert w1.stop() == 0
    finally:
        server.stop()

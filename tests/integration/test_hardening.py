"""Issue 14 against real worker processes and the real broker: stale Faust state (point 2), a
reply flood measured from the worker's RSS (3), FIFOs that used to wedge the worker (4), and
start-up failures that must be one line and exit 2 (2, 7)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

import rocksdict

from tests.support.hostile_ftpd import HostileFTPServer, flood
from tests.support.stack import (
    FAUST,
    Names,
    Worker,
    closed_port,
    collect,
    make_topics,
    produce,
    task,
)

MIB = 1024 * 1024


def connections(path: Path, ftp_port: int, storage: Path) -> Path:
    storage.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"[ftp-h]\ntype = ftp\nhost = 127.0.0.1\nport = {ftp_port}\nuser = u\npass = p\n\n"
        f"[local]\ntype = local\nbase_path = {storage}\n"
    )
    return path


def peak_rss(worker: Worker) -> int:
    assert worker.process is not None
    status = Path(f"/proc/{worker.process.pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) * 1024


def start_once(worker: Worker, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``faust -A app worker`` expecting it to stop by itself (a start-up failure)."""
    return subprocess.run(
        [str(FAUST), "-L", "uvloop", "-A", "app", "worker", "-l", "info"],
        cwd=worker.workdir,
        env=worker.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_exit_2(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("ftp-pooler: cannot start:") and fragment in lines[0], lines


# -- 3. a reply flood ---------------------------------------------------------------------------
def test_a_reply_flood_fails_the_task_without_growing_the_worker(tmp_path):
    """Endless 150- lines within a 5 s command timeout: one CONNECTION_ERROR result, and the
    worker's peak RSS stays within 100 MiB of its idle size (it grew by ~1.4 GiB)."""
    with HostileFTPServer({"/f.bin": b"x" * 1000}) as server:
        server.on("RETR", flood())
        names = Names()
        asyncio.run(make_topics(names, partitions=1))
        worker = Worker(
            tmp_path,
            names,
            connections(tmp_path / "c.ini", server.port, tmp_path / "storage"),
            extra_env={
                "FTP_POOLER_TRANSFER__COMMAND_TIMEOUT_SECONDS": "5",
                "FTP_POOLER_RETRY__MAX_ATTEMPTS": "1",
            },
        ).start()
        worker.wait_ready()
        idle = peak_rss(worker)
        asyncio.run(produce(names.tasks, [task("flood-1", "ftp-h", "/f.bin", "local", "/f")]))
        [result] = asyncio.run(collect(names, count=1, timeout=60))
        peak = peak_rss(worker)
        assert worker.stop() == 0, worker.tail()
    assert result.value["error_code"] == "CONNECTION_ERROR", result.value
    assert server.floods_sent > 0
    assert peak - idle < 100 * MIB, (idle // MIB, peak // MIB)


# -- 4. FIFOs -----------------------------------------------------------------------------------
def test_fifo_sources_are_refused_and_do_not_stall_other_transfers_or_shutdown(tmp_path):
    """Two uploads from FIFOs (no writer) and one from a regular file: three results at once,
    and SIGTERM exits within the grace period plus a few seconds (the FIFOs used to block
    both local I/O threads: no later transfer ran, SIGTERM was ignored)."""
    storage = tmp_path / "storage"
    storage.mkdir()
    for name in ("p1", "p2"):
        import os

        os.mkfifo(storage / name)
    (storage / "ok.txt").write_bytes(b"fine")
    with HostileFTPServer() as server:
        names = Names()
        asyncio.run(make_topics(names, partitions=1))
        worker = Worker(
            tmp_path,
            names,
            connections(tmp_path / "c.ini", server.port, storage),
            extra_env={"FTP_POOLER_WORKER__SHUTDOWN_GRACE_SECONDS": "3"},
        ).start()
        worker.wait_ready()
        tasks = [
            task("fifo-1", "local", "/p1", "ftp-h", "/in/p1"),
            task("fifo-2", "local", "/p2", "ftp-h", "/in/p2"),
            task("regular", "local", "/ok.txt", "ftp-h", "/in/ok.txt"),
        ]
        asyncio.run(produce(names.tasks, tasks))
        results = {r.value["task_id"]: r.value for r in asyncio.run(collect(names, 3, 30))}
        started = time.monotonic()
        code = worker.stop(timeout=3 + 10)
        stopped_in = time.monotonic() - started
    assert results["regular"]["status"] == "success", results
    for name in ("fifo-1", "fifo-2"):
        assert results[name]["error_code"] == "IO_ERROR", results[name]
        assert "not a regular file (a FIFO)" in results[name]["error_message"]
        assert results[name]["retryable"] is False
    assert code == 0 and stopped_in < 3 + 5, stopped_in


# -- 2. stale state -----------------------------------------------------------------------------
def test_groups_sharing_a_data_dir_do_not_crash_each_other(tmp_path):
    """Group A, then B, then A again on one worker.data_dir: A starts again (it exited 1 with
    ConsistencyError every time: B's status table offsets, written into the same RocksDB files,
    were past the end of A's changelog), and each group's state lives under <data_dir>/<group>/."""
    data_dir = tmp_path / "shared-data"
    # One status partition, so both groups' table writes land in the same partition's store.
    env = {"FTP_POOLER_WORKER__DATA_DIR": str(data_dir), "FTP_POOLER_KAFKA__TOPIC_PARTITIONS": "1"}
    ini = connections(tmp_path / "c.ini", closed_port(), tmp_path / "storage")
    a, b = Names(), Names()
    for names in (a, b):
        asyncio.run(make_topics(names, partitions=1))
    worker_a = Worker(tmp_path, a, ini, worker_id="wa", extra_env=env).start()
    worker_a.wait_ready()
    few = [task(f"a-{i}", "local", "/x", "local", "/y") for i in range(5)]
    asyncio.run(produce(a.tasks, few))
    asyncio.run(collect(a, count=len(few), timeout=60))
    assert worker_a.stop() == 0, worker_a.tail()
    worker_b = Worker(tmp_path, b, ini, worker_id="wb", extra_env=env).start()
    worker_b.wait_ready()
    many = [task(f"b-{i}", "local", "/x", "local", "/y") for i in range(60)]
    asyncio.run(produce(b.tasks, many))
    asyncio.run(collect(b, count=len(many), timeout=60))
    assert worker_b.stop() == 0, worker_b.tail()
    worker_a.start().wait_ready()
    assert worker_a.stop() == 0, worker_a.tail()
    assert (data_dir / a.group / "worker.lock").exists()
    assert (data_dir / b.group / "temp-files.journal").exists()
    assert "ConsistencyError" not in worker_a.log_text()


def test_state_ahead_of_its_changelog_is_rebuilt_with_one_warning(tmp_path):
    """A table partition whose persisted offset is past the end of its changelog (as a deleted
    and recreated topic leaves it; here written into the stopped worker's own RocksDB file):
    the worker starts with one table_state_rebuilt warning (it exited 1 with ConsistencyError on
    every start)."""
    ini = connections(tmp_path / "c.ini", closed_port(), tmp_path / "storage")
    names = Names()
    asyncio.run(make_topics(names, partitions=1))
    env = {"FTP_POOLER_KAFKA__TOPIC_PARTITIONS": "1"}
    worker = Worker(tmp_path, names, ini, extra_env=env).start()
    worker.wait_ready()
    assert worker.stop() == 0, worker.tail()
    stores = list((tmp_path / "data-w1").glob("**/tables/task_status-0.db"))
    assert stores
    for store in stores:
        db = rocksdict.Rdict(str(store), options=rocksdict.Options(raw_mode=True))
        db.put(b"__faust\0offset__", b"500")  # Faust's persisted-offset key
        db.close()
    worker.start().wait_ready()
    assert worker.stop() == 0, worker.tail()
    log = worker.log_text()
    assert "ConsistencyError" not in log
    assert log.count('"table_state_rebuilt"') == 1, log[-3000:]


def test_a_second_worker_on_the_same_data_dir_exits_2_at_once(tmp_path):
    """Same group, same data dir: one line and exit 2 within seconds (it retried RocksDB's
    lock for 30 s, then a traceback)."""
    ini = connections(tmp_path / "c.ini", closed_port(), tmp_path / "storage")
    names = Names()
    asyncio.run(make_topics(names, partitions=1))
    env = {"FTP_POOLER_WORKER__DATA_DIR": str(tmp_path / "data")}
    first = Worker(tmp_path, names, ini, worker_id="w1", extra_env=env).start()
    first.wait_ready()
    started = time.monotonic()
    done = start_once(Worker(tmp_path, names, ini, worker_id="w2", extra_env=env))
    assert time.monotonic() - started < 15
    one_line_exit_2(done, "another worker")
    assert first.stop() == 0


# -- 7. start-up failures -----------------------------------------------------------------------
def test_start_up_failures_are_one_line_and_exit_2(tmp_path):
    """A port in use, an unwritable data dir and an unreachable broker: one line naming the
    cause, exit 2 (each was a traceback of about 100 lines)."""
    ini = connections(tmp_path / "c.ini", closed_port(), tmp_path / "storage")
    names = Names()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = start_once(
            Worker(tmp_path, names, ini, extra_env={"FTP_POOLER_API__PORT": str(port)})
        )
    one_line_exit_2(done, f"api.port {port}")
    (tmp_path / "a-file").write_text("not a directory")
    env = {"FTP_POOLER_WORKER__DATA_DIR": str(tmp_path / "a-file" / "data")}
    one_line_exit_2(start_once(Worker(tmp_path, names, ini, extra_env=env)), "not writable")
    env = {"FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}
    one_line_exit_2(start_once(Worker(tmp_path, names, ini, extra_env=env)), "no Kafka broker")

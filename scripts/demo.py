"""`make demo`: a local broker, an embedded FTP server, a real worker, sample tasks, live results.

Everything it starts it stops again, also on Ctrl-C or failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from scripts.ftpd import EmbeddedFTPServer
from scripts.topics import create_topics

REPO = Path(__file__).resolve().parents[1]
KAFKA_PORT = int(os.environ.get("KAFKA_PORT", "19292"))
BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"
WORK = REPO / ".local" / "demo"
KAFKA_ENV = {
    **os.environ,
    "KAFKA_PORT": str(KAFKA_PORT),
    "KAFKA_STATE_DIR": str(REPO / ".local" / "kafka-demo"),
}


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_sample_files(ftp_root: Path, storage: Path) -> None:
    rng = random.Random(2026)
    (ftp_root / "outgoing").mkdir(parents=True)
    for day in (24, 25, 26):
        rows = "\n".join(f"2026-11-{day},{n},{rng.randint(1, 10**6)}" for n in range(500))
        (ftp_root / "outgoing" / f"sales-2026-11-{day}.csv").write_text("date,id,amount\n" + rows)
    (ftp_root / "outgoing" / "catalogue.bin").write_bytes(rng.randbytes(8 * 1024 * 1024))
    (storage / "exports").mkdir(parents=True)
    for name in ("orders.json", "refunds.json", "stock.json"):
        body = [{"sku": f"SKU-{n}", "qty": rng.randint(0, 99)} for n in range(200)]
        (storage / "exports" / name).write_text(json.dumps(body))


def sample_tasks() -> list[bytes]:
    def task(task_id: str, src_id: str, src: str, dst_id: str, dst: str) -> bytes:
        return json.dumps(
            {
                "task_id": task_id,
                "src_id": src_id,
                "src_path": src,
                "dst_id": dst_id,
                "dst_path": dst,
            }
        ).encode()

    tasks = [
        task(
            f"dl-sales-{d}",
            "partner-ftp",
            f"/outgoing/sales-2026-11-{d}.csv",
            "storage",
            f"/incoming/sales/2026-11-{d}.csv",
        )
        for d in (24, 25, 26)
    ]
    tasks.append(
        task(
            "dl-catalogue",
            "partner-ftp",
            "/outgoing/catalogue.bin",
            "storage",
            "/incoming/catalogue.bin",
        )
    )
    tasks += [
        task(
            f"ul-{name}",
            "storage",
            f"/exports/{name}.json",
            "partner-ftp",
            f"/incoming/from-us/{name}.json",
        )
        for name in ("orders", "refunds", "stock")
    ]
    tasks.append(
        task(
            "dl-missing",
            "partner-ftp",
            "/outgoing/no-such-file.csv",
            "storage",
            "/incoming/missing.csv",
        )
    )
    tasks.append(b'{"task_id": "broken", "src_id": "partner-ftp"')  # not even JSON
    return tasks


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def show(result: dict[str, Any]) -> str:
    if result["status"] == "success":
        return (
            f"  OK    {result['task_id']:<16} {result['direction']:<8} "
            f"{result['src_id']}:{result['src_path']} -> {result['dst_id']}:"
            f"{result['dst_path']}  {human_bytes(result['bytes_transferred'])} in "
            f"{result['duration_ms']} ms  sha256 {result['sha256'][:12]}..."
        )
    where = result.get("source")
    origin = f" (offset {where['offset']} of {where['topic']})" if where else ""
    return (
        f"  FAIL  {result['task_id'] or '<unreadable>':<16} {result['error_code']:<15} "
        f"{result['error_message']}{origin}"
    )


async def produce_and_watch(tasks: list[bytes], within: float) -> list[dict[str, Any]]:
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    try:
        for raw in tasks:
            await producer.send_and_wait("ftp-tasks", raw)
    finally:
        await producer.stop()
    say(f"produced {len(tasks)} tasks to ftp-tasks; results as they arrive:")
    consumer = AIOKafkaConsumer(
        "ftp-results",
        "ftp-failures",
        bootstrap_servers=BOOTSTRAP,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    results: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(within):
            while len(results) < len(tasks):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        result = json.loads(record.value)
                        results.append(result)
                        print(show(result), flush=True)
    finally:
        await consumer.stop()
    return results


def wait_ready(port: int, worker: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: worker exited early; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"demo: worker not ready after 90 s; see {log}")


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    # A fresh broker each run, so old results never mix with this run's.
    subprocess.run([str(REPO / "scripts" / "local-kafka.sh"), "down"], env=KAFKA_ENV, check=True)
    shutil.rmtree(KAFKA_ENV["KAFKA_STATE_DIR"], ignore_errors=True)
    ftp_root, storage = WORK / "ftp", WORK / "storage"
    storage.mkdir(parents=True)
    make_sample_files(ftp_root, storage)
    with ExitStack() as cleanup:
        say(f"starting a local Kafka broker on {BOOTSTRAP}")
        subprocess.run([str(REPO / "scripts" / "local-kafka.sh"), "up"], env=KAFKA_ENV, check=True)
        cleanup.callback(
            subprocess.run, [str(REPO / "scripts" / "local-kafka.sh"), "down"], env=KAFKA_ENV
        )
        asyncio.run(create_topics(BOOTSTRAP, ["ftp-tasks", "ftp-results", "ftp-failures"], 4))

        ftp = EmbeddedFTPServer(ftp_root, user="partner", password="demo-secret").start()
        cleanup.callback(ftp.stop)
        say(f"embedded FTP server on 127.0.0.1:{ftp.port} serving {ftp_root}")

        connections = WORK / "connections.ini"
        connections.write_text(
            f"[partner-ftp]\ntype = ftp\nhost = 127.0.0.1\nport = {ftp.port}\nuser = partner\n"
            "pass = demo-secret\npassive = true\n\n"
            f"[storage]\ntype = local\nbase_path = {storage}\n"
        )
        api_port, metrics_port = free_port(), free_port()
        env = {
            **os.environ,
            "FTP_POOLER_CONNECTIONS": str(connections),
            "FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": BOOTSTRAP,
            "FTP_POOLER_API__HOST": "127.0.0.1",
            "FTP_POOLER_API__PORT": str(api_port),
            "FTP_POOLER_METRICS__PORT": str(metrics_port),
            "FTP_POOLER_WORKER__ID": "demo-worker",
            "FTP_POOLER_WORKER__DATA_DIR": str(WORK / "faust-data"),
            "FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION": "3",
        }
        log = WORK / "worker.log"
        faust = str(Path(sys.executable).with_name("faust"))
        say(f"starting a worker: faust -L uvloop -A app worker (log: {log.relative_to(REPO)})")
        with log.open("wb") as log_file:
            worker = subprocess.Popen(
                [faust, "-L", "uvloop", "-A", "app", "worker", "-l", "info"],  # as the Dockerfile
                cwd=WORK,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

        def stop_worker() -> None:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    worker.kill()

        cleanup.callback(stop_worker)
        wait_ready(api_port, worker, log)
        say(f"worker ready (API http://127.0.0.1:{api_port}, metrics :{metrics_port}/metrics)")

        results = asyncio.run(produce_and_watch(sample_tasks(), within=60))
        ok = sum(1 for r in results if r["status"] == "success")
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/status", timeout=5) as reply:
            status = json.load(reply)
        pool = status["pools"]["connections"]["partner-ftp"]
        say(
            f"{ok} succeeded, {len(results) - ok} failed (both failures are expected: a missing "
            "file and a message that is not JSON)"
        )
        say(
            f"FTP logins seen by the server: {ftp.logins} for {len(results)} tasks "
            f"(pool cap {pool['max_sessions']}, now {pool['idle']} idle sessions)"
        )
        say(
            "downloaded files: "
            + ", ".join(
                str(p.relative_to(storage)) for p in sorted((storage / "incoming").rglob("*.*"))
            )
        )
        say("stopping worker, FTP server and broker")
        stop_worker()
        say(f"worker exit code {worker.returncode}")
    say(f"done in {time.monotonic() - started:.0f} s")
    failed = sorted(r["error_code"] for r in results if r["status"] != "success")
    return 0 if failed == ["FILE_NOT_FOUND", "INVALID_TASK"] else 1


if __name__ == "__main__":
    sys.exit(main())

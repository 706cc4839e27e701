"""Bounded memory: one worker moving 100 transfers at once, four of them 1 GiB files.

Half download, half upload: two 1 GiB files each way and 48 x 32 MiB each way, over 100
sessions of one vsftpd (``max_sessions_per_connection`` raised to 100 for this run). The sources
are sparse files (zeros that take no disk space, on the server and locally), which only makes
reading them cheap: every byte still crosses a data connection, is hashed and is written. The
worker's peak RSS (VmHWM) is what counts; a whole file held in memory would show as 1 GiB.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import uuid
from pathlib import Path
from typing import Any

from benchmarks.datasets import GIB, MIB, sparse_file, tree_size
from benchmarks.measure import loadavg
from benchmarks.pooler import Variant, run_pooler
from benchmarks.servers import Vsftpd

LIMIT_MIB = 250


def _shape(smoke: bool) -> tuple[int, int, int, int]:
    """(large files per direction, large size, small files per direction, small size)."""
    return (1, 256 * MIB, 9, 8 * MIB) if smoke else (2, GIB, 48, 32 * MIB)


def run(
    *, kafka: str, workdir: Path, variant: Variant, repeats: int, smoke: bool = False
) -> dict[str, Any]:
    big_count, big_size, small_count, small_size = _shape(smoke)
    root = workdir / "servers" / "memory" / "root"
    local_src = workdir / "memory-src"
    names = [f"big-{i}.bin" for i in range(1, big_count + 1)]
    sizes = dict.fromkeys(names, big_size)
    for i in range(1, small_count + 1):
        sizes[f"part-{i:02d}.bin"] = small_size
    for name, size in sizes.items():
        for base in (root / "mem", local_src):
            if not (base / name).exists() or (base / name).stat().st_size != size:
                sparse_file(base / name, size)
    transfers = 2 * len(sizes)
    mem_variant = variant.with_env(
        FTP_POOLER_POOL__MAX_SESSIONS_PER_CONNECTION=str(transfers),
        FTP_POOLER_POOL__MAX_SESSIONS_PER_POD=str(transfers),
    )
    runs: list[dict[str, Any]] = []
    server = Vsftpd(root, workdir / "servers" / "memory")
    with server:
        for repeat in range(1, repeats + 1):
            run_id = f"mem-{uuid.uuid4().hex[:8]}"
            tasks = []
            for name in sizes:
                tasks.append(
                    {
                        "task_id": f"{run_id}-down-{name}",
                        "src_id": "ftp",
                        "src_path": f"/mem/{name}",
                        "dst_id": "local",
                        "dst_path": f"/out/{run_id}/{name}",
                    }
                )
                tasks.append(
                    {
                        "task_id": f"{run_id}-up-{name}",
                        "src_id": "local",
                        "src_path": f"/memory-src/{name}",
                        "dst_id": "ftp",
                        "dst_path": f"/up/{run_id}/{name}",
                    }
                )
            up = root / "up" / run_id
            up.mkdir(parents=True)
            shutil.chown(up.parent, server.user)
            shutil.chown(up, server.user)
            rundir = workdir / "runs" / run_id
            rundir.mkdir(parents=True)
            load = loadavg()
            with (rundir / "worker.log").open("ab") as log:
                result = asyncio.run(
                    run_pooler(
                        kafka=kafka,
                        variant=mem_variant,
                        server=server,
                        tasks=tasks,
                        mode="drain",
                        local_base=workdir,
                        rundir=rundir,
                        log=log,
                    )
                )
            total = sum(sizes.values()) * 2
            landed = tree_size(workdir / "out" / run_id), tree_size(up)
            complete = all(files == len(sizes) for files, _ in landed) and (
                sum(size for _, size in landed) == total
            )
            record: dict[str, Any] = {
                "repeat": repeat,
                "loadavg_before": load,
                "transfers": len(tasks),
                "bytes": total,
                "seconds": round(result.seconds, 2),
                "mib_per_s": round(total / MIB / result.seconds, 1),
                "peak_rss_kib": result.peak_rss_kib,
                "rss_at_ready_kib": result.rss_at_ready_kib,
                "max_in_flight_seen": result.max_in_flight_seen,
                "max_busy_sessions_seen": result.max_busy_sessions_seen,
                "cpu_seconds": result.cpu_seconds,
                "ok": result.ok and complete,
                "failures": result.failures,
            }
            runs.append(record)
            print(
                f"  memory run {repeat}: peak RSS {record['peak_rss_kib'] / 1024:.1f} MiB "
                f"(at ready {record['rss_at_ready_kib'] / 1024:.1f}), "
                f"{record['max_busy_sessions_seen']} sessions busy at once, "
                f"{record['mib_per_s']} MiB/s, ok={record['ok']}, load {load[0]}",
                flush=True,
            )
            shutil.rmtree(workdir / "out" / run_id, ignore_errors=True)
            shutil.rmtree(up, ignore_errors=True)
            shutil.rmtree(rundir / "faust-data", ignore_errors=True)
    peaks = [r["peak_rss_kib"] / 1024 for r in runs if r["ok"]]
    return {
        "shape": {
            "per_direction": f"{big_count} x {big_size // MIB} MiB + {small_count} x "
            f"{small_size // MIB} MiB",
            "transfers": transfers,
            "sparse_sources": True,
        },
        "limit_mib": LIMIT_MIB,
        "peak_rss_mib": {
            "median": round(statistics.median(peaks), 1) if peaks else None,
            "min": round(min(peaks), 1) if peaks else None,
            "max": round(max(peaks), 1) if peaks else None,
        },
        "runs": runs,
    }

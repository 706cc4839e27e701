"""Run the benchmark matrix and write results/<date>-<host>.json and .md (``make bench``).

For each server (vsftpd, pyftpdlib), data set (SMALL, MEDIUM, LARGE) and direction, every tool
moves the same files on the same server, ``--repeats`` times, the tools taking turns in a rotating
order so load from others on the host spreads evenly. Tools: FTP Pooler through Kafka with all
tasks produced first (``pooler``: the drain rate), with tasks produced while it runs
(``pooler-stream``), with pooling off (``pooler-nopool``, a login per task; needs the
``pool.reuse_sessions`` setting), and the peers lftp, rclone and curl.

    python -m benchmarks.run --kafka 127.0.0.1:19592              # the full matrix
    python -m benchmarks.run --kafka ... --smoke                   # ~30 s of measuring
    python -m benchmarks.run --kafka ... --servers vsftpd --sets small --tools pooler,lftp \\
        --variant '{"label": "uvloop", "loop": "uvloop", "venv": "/tmp/perf-wt/.venv"}'

Without ``--variant`` FTP Pooler runs twice per turn: ``kafka.processing_guarantee`` exactly_once
and at_least_once. ``--variant`` (repeatable) runs FTP Pooler from another virtualenv (another
checkout's code), with extra ``FTP_POOLER_*`` settings (``"env"``) or another event loop
(``"loop"``), alongside the others in the same rotation: that is how a candidate change is
measured against the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import datasets, memory, peers, report
from benchmarks.datasets import DataSet
from benchmarks.latency import LatencyProxy
from benchmarks.measure import HostCpu, loadavg, run_commands
from benchmarks.pooler import PoolerRun, Variant, run_pooler
from benchmarks.servers import REPO, SERVERS, FtpServer, Proxied

POOLER_TOOLS = ("pooler", "pooler-stream", "pooler-nopool")
ALL_TOOLS = (*POOLER_TOOLS, *peers.PEERS)
LATENCY_TOOLS = ("pooler", *peers.PEERS)
NOPOOL_SETTING = ("pool", "reuse_sessions")
# Without --variant, FTP Pooler runs in both processing guarantees, in the same rotation, so the
# cost of exactly_once (transactions) is measured against at_least_once on the same host and files.
GUARANTEES = ("exactly_once", "at_least_once")


class Bench:
    """The state of one benchmark invocation: where things live and what was measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.kafka: str = args.kafka
        self.workdir: Path = args.workdir.resolve()
        self.data_dir = self.workdir / "data"
        self.out_dir = self.workdir / "out"
        self.runs_dir = self.workdir / "runs"
        self.trash = self.workdir / "trash"
        self.sets: dict[str, DataSet] = datasets.SMOKE if args.smoke else datasets.FULL
        self.latency_set = datasets.DataSet(
            "small", args.latency_files, 4 * datasets.KIB, "files/s"
        )
        self.records: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.variants = [Variant(**_variant_args(v)) for v in args.variant] or [
            Variant(label=mode, env={"FTP_POOLER_KAFKA__PROCESSING_GUARANTEE": mode})
            for mode in GUARANTEES
        ]
        self.nopool: dict[str, bool] = {}
        self.server_versions: dict[str, str] = {}

    # -- one measurement ---------------------------------------------------------------------
    def measure(
        self,
        server: FtpServer,
        dataset: DataSet,
        direction: str,
        tool: str,
        variant: Variant | None,
        repeat: int,
    ) -> None:
        run_id = f"{dataset.name[0]}{direction[0]}-{uuid.uuid4().hex[:8]}"
        local_source = self.data_dir / dataset.key
        remote_source = f"/{dataset.key}"
        out = self.out_dir / run_id
        up = f"/up/{run_id}"
        up_path = server.root / "up" / run_id
        out.mkdir(parents=True)
        _make_remote_dir(server, up_path)
        rundir = self.runs_dir / run_id
        rundir.mkdir(parents=True)
        record: dict[str, Any] = {
            "server": server.name,
            "set": dataset.name,
            "direction": direction,
            "tool": tool,
            "variant": variant.label if variant else None,
            "repeat": repeat,
            "run_id": run_id,
            "files": dataset.count,
            "bytes": dataset.total_bytes,
            "loadavg_before": loadavg(),
        }
        proxy = server.proxy if isinstance(server, Proxied) else None
        if proxy is not None:
            record["one_way_ms"] = proxy.delay_ms
            proxy.stats(reset=True)
        host_cpu = HostCpu()
        server_cpu = server.cpu_seconds()
        try:
            if variant is not None:
                try:
                    fields = self._pooler(server, dataset, direction, tool, variant, run_id, rundir)
                except RuntimeError as exc:
                    if "before it was ready" not in str(exc):
                        raise
                    # e.g. its API port was taken by another process meanwhile: start afresh.
                    self.notes.append(f"{run_id}: worker did not start ({exc}); started again")
                    fields = self._pooler(server, dataset, direction, tool, variant, run_id, rundir)
                record.update(fields)
            else:
                local = out if direction == "download" else local_source
                remote = remote_source if direction == "download" else up
                argvs = peers.commands(tool, server, dataset, direction, local, remote, rundir)
                done = run_commands(argvs, log=rundir / f"{tool}.log")
                record.update(
                    seconds=done.seconds,
                    cpu_seconds=round(done.cpu_seconds, 2),
                    peak_rss_kib=done.peak_rss_kib,
                    ok=done.ok,
                )
                if not done.ok:
                    record["error"] = peers.scrub(done.output_tail[-500:], server.password)
        except Exception as exc:
            record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        record["host_cpu_busy"] = host_cpu.busy_fraction()
        if proxy is not None:
            record["ftp"] = proxy.stats()  # what the clients said on their control connections
        time.sleep(0.3)  # let the server reap its session processes before reading its CPU
        record["server_cpu_seconds"] = round(server.cpu_seconds() - server_cpu, 2)
        landed = out if direction == "download" else up_path
        files, size = datasets.tree_size(landed)
        if record.get("ok") and (files, size) != (dataset.count, dataset.total_bytes):
            record.update(ok=False, error=f"landed {files} files / {size} bytes")
        if record.get("seconds"):
            record["files_per_s"] = round(dataset.count / record["seconds"], 1)
            record["mib_per_s"] = round(dataset.total_bytes / 2**20 / record["seconds"], 1)
        self.dispose(out, dataset)
        self.dispose(up_path, dataset)
        os.sync()  # the next run must not pay for this one's dirty pages
        self.records.append(record)
        _print_record(record, dataset)

    def _pooler(
        self,
        server: FtpServer,
        dataset: DataSet,
        direction: str,
        tool: str,
        variant: Variant,
        run_id: str,
        rundir: Path,
    ) -> dict[str, Any]:
        if tool == "pooler-nopool":
            variant = variant.with_env(FTP_POOLER_POOL__REUSE_SESSIONS="false")
        tasks = make_tasks(dataset, direction, run_id)
        profile = None
        if self.args.profile_dir and tool == "pooler":
            name = f"{server.name}-{dataset.name}-{direction}-{variant.label}-{run_id}.txt"
            profile = self.args.profile_dir.resolve() / name
            profile.parent.mkdir(parents=True, exist_ok=True)
        with (rundir / "worker.log").open("ab") as log:
            result: PoolerRun = asyncio.run(
                run_pooler(
                    kafka=self.kafka,
                    variant=variant,
                    server=server,
                    tasks=tasks,
                    mode="stream" if tool == "pooler-stream" else "drain",
                    local_base=self.workdir,
                    rundir=rundir,
                    log=log,
                    profile=profile,
                )
            )
        shutil.rmtree(rundir / "faust-data", ignore_errors=True)
        fields = asdict(result)
        fields.pop("rss_samples_kib")
        fields["ok"] = result.ok
        if not result.ok:
            fields["error"] = f"failed tasks: {result.failures}"
        if profile is not None:
            fields["profile"] = str(profile)
        return fields

    def dispose(self, path: Path, dataset: DataSet) -> None:
        """Remove a run's output. Many files are moved aside and deleted when the bench ends:
        ext4 passes over inodes freed in the last minute when it allocates new ones, so deleting
        2,000 files right before the next run makes every file that run creates pay a scan
        (a third of the worker's CPU in one profile)."""
        if dataset.count <= 100 or dataset.total_bytes > 64 * 2**20 or not path.exists():
            shutil.rmtree(path, ignore_errors=True)
            return
        self.trash.mkdir(parents=True, exist_ok=True)
        path.rename(self.trash / uuid.uuid4().hex)

    def empty_trash(self) -> None:
        shutil.rmtree(self.trash, ignore_errors=True)

    # -- the matrix ----------------------------------------------------------------------------
    def run_server(self, server_name: str) -> None:
        root = self.workdir / "servers" / server_name / "root"
        shutil.rmtree(root / "up", ignore_errors=True)
        server = SERVERS[server_name](root, self.workdir / "servers" / server_name)
        linked = self.selected_sets() if self.args.matrix else []
        for dataset in [*linked, *([self.latency_set] if self.args.latency else [])]:
            datasets.link_tree(self.data_dir / dataset.key, root / dataset.key)
        with server:
            self.server_versions[server.name] = server.version()
            for dataset in self.selected_sets() if self.args.matrix else []:
                for direction in self.args.directions:
                    self.run_cell(server, dataset, direction)
            for delay in self.args.latency:
                self.run_latency(server, delay)

    def run_latency(self, server: FtpServer, delay_ms: float) -> None:
        """The latency cells: the same server behind the delay proxy, SMALL-like files."""
        dataset = self.latency_set
        print(f"bench: {server.name} behind {delay_ms:g} ms one-way ({dataset.describe()})")
        proxy = LatencyProxy((server.host, server.port), delay_ms)
        try:
            proxied = Proxied(server, proxy)
            for direction in self.args.directions:
                self.run_cell(proxied, dataset, direction, tools=self.args.latency_tools)
        finally:
            proxy.stop()

    def run_cell(
        self,
        server: FtpServer | Proxied,
        dataset: DataSet,
        direction: str,
        tools: list[str] | None = None,
    ) -> None:
        plan: list[tuple[str, Variant | None]] = []
        for tool in tools or self.args.tools:
            if tool in POOLER_TOOLS:
                if tool == "pooler-nopool" and dataset.name != "small":
                    continue  # the pooling baseline is about many small files
                for variant in self.variants:
                    if tool == "pooler-nopool" and not self._nopool_supported(variant):
                        continue
                    plan.append((tool, variant))
            elif peers.available(tool):
                plan.append((tool, None))
        for repeat in range(1, self.args.repeats + 1):
            shift = (repeat - 1) % len(plan)
            for tool, planned in plan[shift:] + plan[:shift]:
                # A Proxied server answers for the FtpServer it wraps (same files, account).
                self.measure(server, dataset, direction, tool, planned, repeat)  # type: ignore[arg-type]

    def _nopool_supported(self, variant: Variant) -> bool:
        if variant.label not in self.nopool:
            supported = variant.has_setting(*NOPOOL_SETTING)
            self.nopool[variant.label] = supported
            if not supported:
                self.notes.append(
                    f"pooling-off baseline not measured for {variant.label!r}: its code has no "
                    "pool.reuse_sessions setting (FTP_POOLER_POOL__REUSE_SESSIONS)"
                )
        return self.nopool[variant.label]

    def selected_sets(self) -> list[DataSet]:
        return [self.sets[name] for name in self.args.sets if name in self.sets]


def make_tasks(dataset: DataSet, direction: str, run_id: str) -> list[dict[str, str]]:
    tasks = []
    for index, name in enumerate(dataset.names()):
        if direction == "download":
            src = ("ftp", f"/{dataset.key}/{name}")
            dst = ("local", f"/out/{run_id}/{name}")
        else:
            src = ("local", f"/data/{dataset.key}/{name}")
            dst = ("ftp", f"/up/{run_id}/{name}")
        tasks.append(
            {
                "task_id": f"{run_id}-{index}",
                "src_id": src[0],
                "src_path": src[1],
                "dst_id": dst[0],
                "dst_path": dst[1],
            }
        )
    return tasks


def _make_remote_dir(server: FtpServer, path: Path) -> None:
    """The upload target exists before every tool starts (each would create it otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    owner = server.root.stat()
    os.chown(path.parent, owner.st_uid, owner.st_gid)
    os.chown(path, owner.st_uid, owner.st_gid)


def _variant_args(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if "venv" in data:
        data["venv"] = Path(data["venv"])
    return dict(data)


def _print_record(record: dict[str, Any], dataset: DataSet) -> None:
    label = record["tool"] + (f"[{record['variant']}]" if record.get("variant") else "")
    where = f"{record['server']:9} {dataset.name:6} {record['direction']:8} {label:28}"
    if not record.get("ok"):
        print(f"  {where} FAILED {record.get('error', '')}", flush=True)
        return
    figure = record["files_per_s"] if dataset.unit == "files/s" else record["mib_per_s"]
    rss = record.get("peak_rss_kib", 0) / 1024
    print(
        f"  {where} {figure:9.1f} {dataset.unit:7} {record['seconds']:7.2f} s  "
        f"cpu {record.get('cpu_seconds', 0):6.2f} s  rss {rss:6.1f} MiB  "
        f"load {record['loadavg_before'][0]:.2f}",
        flush=True,
    )


def environment(bench: Bench) -> dict[str, Any]:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    from importlib.metadata import version

    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_paths": [line[3:] for line in git("status", "--porcelain").splitlines()],
        "packages": {p: version(p) for p in ("faust-streaming", "aiokafka", "aioftp")},
        "peers": {p: peers.version(p) for p in peers.PEERS if peers.available(p)},
        "servers": bench.server_versions,
        "kafka": bench.kafka,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kafka", default="127.0.0.1:19592", help="bootstrap server")
    parser.add_argument("--workdir", type=Path, default=REPO / ".local" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="small sets, 1 repeat, vsftpd")
    parser.add_argument("--servers", type=_csv)
    parser.add_argument("--sets", type=_csv, default=["small", "medium", "large"])
    parser.add_argument("--directions", type=_csv, default=["download", "upload"])
    parser.add_argument("--tools", type=_csv)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--variant", action="append", default=[], help="JSON, see above")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--matrix", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--latency",
        type=_floats,
        default=[],
        help="one-way delays in ms (e.g. 0,5,15): SMALL-like cells behind the delay proxy",
    )
    parser.add_argument("--latency-files", type=int, default=500, help="4 KiB files per cell")
    parser.add_argument("--latency-tools", type=_csv, default=list(LATENCY_TOOLS))
    parser.add_argument("--profile-dir", type=Path, help="py-spy every `pooler` run into here")
    parser.add_argument("--name", help="results file name (default <date>-<host>)")
    args = parser.parse_args(argv)
    # The smoke run: vsftpd only, the FTP Pooler and one peer, once each, small data sets.
    args.repeats = args.repeats or (1 if args.smoke else 3)
    args.servers = args.servers or (["vsftpd"] if args.smoke else list(SERVERS))
    args.tools = args.tools or (["pooler", "lftp"] if args.smoke else list(ALL_TOOLS))
    return args


def _floats(text: str) -> list[float]:
    return [float(part) for part in _csv(text)]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # aiokafka warns while a just-created topic's metadata propagates; not news here.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    bench = Bench(args)
    unknown = [t for t in args.tools if t not in ALL_TOOLS]
    if unknown:
        raise SystemExit(f"unknown tools {unknown}; known: {', '.join(ALL_TOOLS)}")
    started = datetime.now(UTC)
    print(f"bench: workdir {bench.workdir}, Kafka {bench.kafka}, load {loadavg()}", flush=True)
    shutil.rmtree(bench.out_dir, ignore_errors=True)
    shutil.rmtree(bench.runs_dir, ignore_errors=True)  # logs of each run: the latest bench only
    if bench.trash.exists():  # left by an interrupted run: delete, then let ext4 forget them
        print("bench: emptying the trash of an earlier run, then 60 s for ext4", flush=True)
        bench.empty_trash()
        time.sleep(60)
    wanted = bench.selected_sets() if args.matrix else []
    if args.latency:
        wanted.append(bench.latency_set)
    for dataset in wanted:
        print(f"bench: data set {dataset.name} ({dataset.describe()})", flush=True)
        datasets.ensure(dataset, bench.data_dir)
    for server_name in args.servers if args.matrix or args.latency else []:
        print(f"bench: server {server_name}", flush=True)
        bench.run_server(server_name)
    memory_results = []
    for variant in bench.variants if args.memory else []:
        print(f"bench: memory, {variant.label} (100 transfers at once, 4 of 1 GiB)", flush=True)
        result = memory.run(
            kafka=bench.kafka,
            workdir=bench.workdir,
            variant=variant,
            repeats=args.repeats,
            smoke=args.smoke,
        )
        memory_results.append({"variant": variant.label, **result})
    bench.empty_trash()
    results = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "environment": environment(bench),
        "config": {
            "repeats": args.repeats,
            "sessions_per_server": peers.SESSIONS,
            "sets": {name: asdict(ds) for name, ds in bench.sets.items()},
            "variants": [v.describe() for v in bench.variants],
        },
        "notes": bench.notes,
        "runs": bench.records,
        "memory": memory_results,
    }
    results["summary"] = report.summarize(results)
    results["targets"] = report.targets(results)
    out_dir: Path = args.out if not args.smoke else bench.workdir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{started:%Y-%m-%d}-{socket.gethostname()}"
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    markdown = report.markdown(results)
    (out_dir / f"{name}.md").write_text(markdown)
    print(markdown, flush=True)
    print(f"bench: wrote {json_path} and {json_path.with_suffix('.md')}", flush=True)
    failed = [r for r in bench.records if not r.get("ok")]
    return 1 if failed and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())

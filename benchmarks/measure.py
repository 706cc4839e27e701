"""Measuring processes and the host: CPU seconds, peak RSS, load, wall time of commands."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, recorded with every figure (the host is shared)."""
    return [round(value, 2) for value in os.getloadavg()]


class HostCpu:
    """Busy fraction of all CPUs between :meth:`start` and :meth:`stop` (from /proc/stat)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    def start(self) -> None:
        self._start = self._read()

    def busy_fraction(self) -> float:
        total, idle = self._read()
        total -= self._start[0]
        idle -= self._start[1]
        return round(1 - idle / total, 3) if total else 0.0


class ProcStats:
    """CPU seconds and resident memory of one live process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        """User + system time of the process and its threads so far."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) seconds of the process and its threads so far."""
        try:
            text = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return 0.0, 0.0
        fields = text.rsplit(")", 1)[1].split()
        return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (the peak so far) in KiB; empty once the process is gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return {}
        values = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
        return values


@dataclass
class CommandRun:
    """What running one or more commands concurrently cost."""

    seconds: float
    cpu_seconds: float
    peak_rss_kib: int
    returncodes: list[int]
    output_tail: str

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.returncodes)


def run_commands(
    commands: Sequence[Sequence[str]],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 1800,
) -> CommandRun:
    """Start all ``commands`` at once and wait for every one: wall time from the first start to
    the last exit, summed CPU and the largest peak RSS (each child's rusage, from wait4).

    Output goes to ``log``; a command still running after ``timeout`` is killed (and fails).
    """
    with log.open("ab") as out:
        started = time.perf_counter()
        processes = [
            subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
            for argv in commands
        ]
    watchdog = threading.Timer(timeout, _kill_all, [processes])
    watchdog.start()
    cpu = 0.0
    peak = 0
    codes: list[int] = []
    try:
        for process in processes:
            _pid, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            codes.append(process.returncode)
            cpu += usage.ru_utime + usage.ru_stime
            peak = max(peak, usage.ru_maxrss)
        seconds = time.perf_counter() - started
    finally:
        watchdog.cancel()
    tail = log.read_bytes()[-2000:].decode(errors="replace").strip()
    return CommandRun(seconds, cpu, peak, codes, tail)


def _kill_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.returncode is None:
            process.kill()

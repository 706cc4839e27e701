"""Summarise a py-spy collapsed-stack profile: where the worker's samples go, by function.

    python -m benchmarks.profiles <profile.txt> [--top 30] [--thread MainThread]

Inclusive share: samples with the function anywhere on the stack (counted once per sample).
Self share: samples with the function at the top of the stack.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/", "/tmp/perf-wt/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def load(path: Path, thread: str | None = None) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        frames = body.split(";")
        if thread and thread not in frames[0]:
            continue
        stacks.append(([_short(f) for f in frames[1:]], int(count)))
    return stacks


def summarize(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks) or 1
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for frames, count in stacks:
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    lines = [f"{total} samples"]
    lines.append("\ninclusive:")
    lines += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    lines.append("\nself:")
    lines += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    del threads
    return "\n".join(lines)


def by_thread(path: Path) -> str:
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        body, _, count = line.rpartition(" ")
        if body and count.isdigit():
            counts[body.split(";", 1)[0]] += int(count)
    total = sum(counts.values()) or 1
    return "\n".join(f"  {n / total:6.1%}  {name}" for name, n in counts.most_common(12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--thread", help="only stacks of threads whose name contains this")
    args = parser.parse_args()
    print("threads:\n" + by_thread(args.profile))
    print(summarize(load(args.profile, args.thread), args.top))


if __name__ == "__main__":
    main()

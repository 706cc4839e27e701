"""The data sets: many small files, medium files, a few large ones; generated once, reused."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class DataSet:
    """``count`` files of ``size`` bytes each, named f00001.bin, f00002.bin, ..."""

    name: str
    count: int
    size: int
    unit: str  # the headline figure: "files/s" or "MiB/s"

    @property
    def total_bytes(self) -> int:
        return self.count * self.size

    @property
    def key(self) -> str:
        """Directory name: the shape, so a changed shape never reuses stale files."""
        return f"{self.name}-{self.count}x{self.size}"

    def names(self) -> list[str]:
        return [f"f{i:05d}.bin" for i in range(1, self.count + 1)]

    def describe(self) -> str:
        return f"{self.count:,} x {human_size(self.size)}"


FULL = {
    "small": DataSet("small", 2000, 4 * KIB, "files/s"),
    "medium": DataSet("medium", 500, 1 * MIB, "MiB/s"),
    "large": DataSet("large", 4, 256 * MIB, "MiB/s"),
}
SMOKE = {
    "small": DataSet("small", 300, 4 * KIB, "files/s"),
    "large": DataSet("large", 2, 64 * MIB, "MiB/s"),
}


def human_size(size: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def ensure(dataset: DataSet, data_dir: Path) -> Path:
    """The directory holding ``dataset``'s files (random bytes), generated on first use."""
    target = data_dir / dataset.key
    done = data_dir / f"{dataset.key}.complete"  # beside it: tools copy every file inside
    if done.exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    rng = random.Random(dataset.key)  # reproducible contents, and much faster than os.urandom
    chunk = min(dataset.size, 4 * MIB)
    for name in dataset.names():
        with (target / name).open("wb") as out:
            left = dataset.size
            while left:
                step = min(chunk, left)
                out.write(rng.randbytes(step))
                left -= step
    done.touch()
    return target


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no disk space (reads return zeros)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.truncate(size)
    return path


def link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of ``source`` into ``target`` (same file system: instant, no copy)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name.startswith("."):
            continue
        dest = target / entry.name
        if not dest.exists():
            os.link(entry, dest)


def tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root``, ignoring hidden entries (temporary files)."""
    files = total = 0
    if not root.exists():
        return 0, 0
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            if name.startswith("."):
                continue
            files += 1
            total += os.stat(os.path.join(dirpath, name)).st_size
    return files, total

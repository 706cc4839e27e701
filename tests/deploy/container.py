"""Run a built image the way a cluster would, with docker, podman or buildah (no engine needed).

`Container` is one run of the image's own entrypoint and command: uid from the image, a read-only
root filesystem except the bind-mounted volumes, host networking, extra environment on top of the
image's. buildah has no `--read-only`: its working container's directories are bind-mounted
read-only on the host before `buildah run` (chroot isolation) starts the worker in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]


def run(argv: list[str], timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result.stdout


class Image:
    """A built image: its configuration, its size and the files in it."""

    def __init__(self, tool: str, ref: str) -> None:
        self.tool = tool
        self.ref = ref

    def config(self) -> dict[str, Any]:
        """The image configuration as stored (Docker's schema: Entrypoint, Healthcheck, ...)."""
        if self.tool == "buildah":
            data = json.loads(run([*BUILDAH, "inspect", "--type", "image", self.ref]))
            return dict(data["Docker"]["config"])
        (data,) = json.loads(run([self.tool, "image", "inspect", self.ref]))
        return dict(data["Config"])

    def manifest_type(self) -> str:
        if self.tool == "buildah":
            data = json.loads(run([*BUILDAH, "inspect", "--type", "image", self.ref]))
            return str(json.loads(data["Manifest"])["mediaType"])
        format_ = "{{.ManifestType}}" if self.tool == "podman" else "docker"
        return run([self.tool, "image", "inspect", "--format", format_, self.ref]).strip()

    def files(self) -> Iterator[tuple[str, int]]:
        """(absolute path, size) of every file and directory in the image's filesystem."""
        if self.tool == "buildah":
            container = run([*BUILDAH, "from", "--pull-never", self.ref]).strip()
            try:
                root = Path(run([*BUILDAH, "mount", container]).strip())
                yield from _walk(root)
            finally:
                run([*BUILDAH, "rm", container], check=False)
            return
        container = run([self.tool, "create", self.ref]).strip()
        try:
            with subprocess.Popen([self.tool, "export", container], stdout=subprocess.PIPE) as ex:
                assert ex.stdout is not None
                with tarfile.open(fileobj=ex.stdout, mode="r|") as tar:
                    for member in tar:
                        yield "/" + member.name.lstrip("./"), member.size
        finally:
            run([self.tool, "rm", container], check=False)


def _walk(root: Path) -> Iterator[tuple[str, int]]:
    seen: set[int] = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            stat = path.lstat()
            size = 0 if stat.st_ino in seen else stat.st_size
            seen.add(stat.st_ino)
            yield "/" + path.relative_to(root).as_posix(), size


class Container:
    """The image's entrypoint and command, running; `stop()` sends SIGTERM and returns the code."""

    def __init__(
        self,
        image: Image,
        env: dict[str, str],
        volumes: dict[Path, str],
        log: IO[bytes],
    ) -> None:
        self.image = image
        self.tool = image.tool
        self.name = f"ftp-pooler-image-test-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.volumes = volumes
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._read_only: list[str] = []

    def _volume_args(self) -> list[str]:
        args = []
        for host, inside in self.volumes.items():
            args += ["--volume", f"{host}:{inside}"]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        return args

    def start(self) -> Container:
        if self.tool != "buildah":
            argv = [self.tool, "run", "--detach", "--name", self.name, "--read-only"]
            argv += ["--network", "host", *self._volume_args(), self.image.ref]
            run(argv)
            self.process = subprocess.Popen(
                [self.tool, "logs", "--follow", self.name],
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
            return self
        config = self.image.config()
        run([*BUILDAH, "from", "--pull-never", "--name", self.name, self.image.ref])
        # The image's VOLUMEs would get anonymous volumes that win over --volume in buildah run.
        for inside in config.get("Volumes") or {}:
            run([*BUILDAH, "config", "--volume", f"{inside}-", self.name])
        root = Path(run([*BUILDAH, "mount", self.name]).strip())
        self._make_read_only(root)
        command = list(config["Entrypoint"] or []) + list(config["Cmd"] or [])
        argv = [*BUILDAH, "run", "--isolation", "chroot", "--network", "host"]
        argv += [*self._volume_args(), self.name, "--", *command]
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def _make_read_only(self, root: Path) -> None:
        """Every top-level directory read-only, as --read-only makes the whole root. /run stays a
        root-owned writable directory (uid 1000 cannot write there) because buildah run creates
        /run/.containerenv in it; its world-writable /run/lock is read-only too."""
        targets = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink()]
        targets = [p for p in targets if p.name != "run"] + [root / "run" / "lock"]
        for target in targets:
            if not target.is_dir():
                continue
            run(["mount", "--bind", str(target), str(target)])
            self._read_only.append(str(target))
            run(["mount", "-o", "remount,bind,ro", str(target)])

    def exec(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command in the running container (its env and user), e.g. the HEALTHCHECK's."""
        if self.tool == "buildah":
            full = [*BUILDAH, "run", "--isolation", "chroot", "--network", "host"]
            full += [*self._volume_args(), self.name, "--", *argv]
        else:
            full = [self.tool, "exec", self.name, *argv]
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout)

    def worker_pid(self) -> int | None:
        """The worker's process id on this machine (buildah: a child of `buildah run`)."""
        assert self.process is not None
        pending, seen = [self.process.pid], set()
        while pending:
            pid = pending.pop()
            seen.add(pid)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # python .../bin/faust ...; not buildah's helper that execs it (its argv names it too)
            if (
                not cmdline[0].startswith(b"buildah")
                and cmdline[1:2]
                and cmdline[1].endswith(b"/faust")
            ):
                return pid
            pending += [child for child in _children(pid) if child not in seen]
        return None

    def running(self) -> bool:
        if self.tool == "buildah":
            return self.process is not None and self.process.poll() is None
        state = run(
            [self.tool, "inspect", "--format", "{{.State.Running}}", self.name], check=False
        )
        return state.strip() == "true"

    def stop(self, timeout: float) -> tuple[int, float]:
        """SIGTERM to the worker (what `docker stop` and the kubelet send); (exit code, seconds)."""
        started = time.monotonic()
        if self.tool == "buildah":
            assert self.process is not None
            pid = self.worker_pid()
            assert pid is not None, "no worker process found under buildah run"
            os.kill(pid, signal.SIGTERM)
            code = self.process.wait(timeout=timeout)
            return code, time.monotonic() - started
        run([self.tool, "kill", "--signal", "TERM", self.name])
        code = int(run([self.tool, "wait", self.name], timeout=timeout).strip())
        return code, time.monotonic() - started

    def remove(self) -> None:
        if self.process is not None and self.process.poll() is None:
            if self.tool == "buildah":
                for pid in _descendants(self.process.pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait()
        if self.tool == "buildah":
            for target in reversed(self._read_only):
                run(["umount", target], check=False)
            run([*BUILDAH, "rm", self.name], check=False)
        else:
            if self.process is not None:
                self.process.wait(timeout=10)
            run([self.tool, "rm", "--force", self.name], check=False)


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, from any of its threads (Go starts them from many)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        children = _children(pending.pop())
        found += children
        pending += children
    return found

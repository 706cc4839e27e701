"""The peers: lftp, rclone and curl moving the same files on the same server, 10 sessions each."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from benchmarks.datasets import DataSet
from benchmarks.servers import FtpServer

PEERS = ("lftp", "lftp-async", "rclone", "curl")
SESSIONS = 10


def _program(peer: str) -> str:
    return peer.split("-", 1)[0]  # lftp-async is lftp with other settings


def available(peer: str) -> bool:
    return shutil.which(_program(peer)) is not None


def version(peer: str) -> str:
    """e.g. "lftp 4.9.2", "rclone v1.60.1-DEV", "curl 7.88.1"."""
    program = _program(peer)
    flag = {"lftp": "--version", "rclone": "version", "curl": "--version"}[program]
    out = subprocess.run([program, flag], capture_output=True, text=True, check=False).stdout
    first = out.splitlines()[0] if out else ""
    found = re.search(r"v?\d+\.\d+[\w.+-]*", first)
    return f"{peer} {found.group(0) if found else 'unknown'}"


def commands(
    peer: str,
    server: FtpServer,
    dataset: DataSet,
    direction: str,
    local_dir: Path,
    remote_dir: str,
    scratch: Path,
) -> list[list[str]]:
    """The processes (run concurrently) that move ``dataset`` between ``local_dir`` and
    ``remote_dir`` on ``server``: a download fills ``local_dir``, an upload fills ``remote_dir``.
    """
    if peer == "lftp":
        return [_lftp(server, direction, local_dir, remote_dir)]
    if peer == "lftp-async":
        return [_lftp(server, direction, local_dir, remote_dir, pipelined=True)]
    if peer == "rclone":
        return [_rclone(server, direction, local_dir, remote_dir, scratch)]
    if peer == "curl":
        return _curl(server, dataset, direction, local_dir, remote_dir, scratch)
    raise ValueError(f"unknown peer {peer!r}")


def _lftp(
    server: FtpServer, direction: str, local_dir: Path, remote_dir: str, pipelined: bool = False
) -> list[str]:
    """``pipelined``: lftp at its fastest over latency, ``ftp:sync-mode off`` (commands sent
    without waiting for each reply) and ``mirror --no-perms`` (no SITE CHMOD per upload)."""
    options = " --no-perms" if pipelined else ""
    if direction == "download":
        mirror = f"mirror{options} --parallel={SESSIONS} {remote_dir} {local_dir}"
    else:
        mirror = f"mirror -R{options} --parallel={SESSIONS} {local_dir} {remote_dir}"
    script = "; ".join(
        [
            "set cmd:fail-exit yes",
            "set ftp:ssl-allow no",  # neither server offers TLS: skip the AUTH round trip
            "set net:max-retries 1",
            f"set ftp:sync-mode {'off' if pipelined else 'on'}",
            f"open -u {server.user},{server.password} -p {server.port} {server.host}",
            mirror,
        ]
    )
    return ["lftp", "-c", script]


def _rclone(
    server: FtpServer, direction: str, local_dir: Path, remote_dir: str, scratch: Path
) -> list[str]:
    remote, local = f":ftp:{remote_dir}", str(local_dir)
    source, target = (remote, local) if direction == "download" else (local, remote)
    config = scratch / "rclone.conf"
    config.touch()
    return [
        "rclone",
        "copy",
        source,
        target,
        "--config",
        str(config),
        "--ftp-host",
        server.host,
        "--ftp-port",
        str(server.port),
        "--ftp-user",
        server.user,
        "--ftp-pass",
        _obscure(server.password),
        "--transfers",
        str(SESSIONS),
        "--checkers",
        str(SESSIONS),
        # Above transfers + checkers: at 10 it deadlocks (see NOTES.md).
        "--ftp-concurrency",
        str(2 * SESSIONS + 1),
        # Its multi-stream download of large files fails with 426 on these servers.
        "--multi-thread-streams",
        "0",
        "-q",
    ]


def _curl(
    server: FtpServer,
    dataset: DataSet,
    direction: str,
    local_dir: Path,
    remote_dir: str,
    scratch: Path,
) -> list[list[str]]:
    """One ``curl -Z`` over many files (SMALL, MEDIUM), or one curl process per file (LARGE)."""
    base = f"ftp://{server.host}:{server.port}{remote_dir}"
    names = dataset.names()
    if dataset.count > SESSIONS:
        config = scratch / f"curl-{direction}.cfg"
        lines = [f'user = "{server.user}:{server.password}"']
        for name in names:
            if direction == "download":
                lines += [f'url = "{base}/{name}"', f'output = "{local_dir / name}"']
            else:
                lines += [f'upload-file = "{local_dir / name}"', f'url = "{base}/{name}"']
        config.write_text("\n".join(lines) + "\n")
        extra = ["--ftp-create-dirs"] if direction == "upload" else []
        return [
            ["curl", "-s", "-S", "-Z", "--parallel-max", str(SESSIONS), *extra, "-K", str(config)]
        ]
    config = scratch / "curl-user.cfg"
    config.write_text(f'user = "{server.user}:{server.password}"\n')
    processes = []
    for name in names:
        if direction == "download":
            move = ["-o", str(local_dir / name), f"{base}/{name}"]
        else:
            move = ["--ftp-create-dirs", "-T", str(local_dir / name), f"{base}/{name}"]
        processes.append(["curl", "-s", "-S", "-K", str(config), *move])
    return processes


_OBSCURED: dict[str, str] = {}


def _obscure(password: str) -> str:
    """rclone takes FTP passwords only in its reversible 'obscured' form."""
    if password not in _OBSCURED:
        out = subprocess.run(
            ["rclone", "obscure", password], capture_output=True, text=True, check=True
        )
        _OBSCURED[password] = out.stdout.strip()
    return _OBSCURED[password]


def scrub(text: str, password: str) -> str:
    """Output of a failed peer, without the password (it may echo its command line)."""
    return re.sub(re.escape(password), "***", text)

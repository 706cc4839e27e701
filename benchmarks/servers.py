"""The FTP servers benchmarked against, each a separate process on 127.0.0.1.

vsftpd (Debian's, the primary target: one process per session, ``sendfile`` for downloads) runs
in the foreground from a config written into the work directory; the local account and PAM
service come from ``benchmarks/install-deps.sh``. pyftpdlib is the project's embedded server
(``scripts/ftpd.py``), single-threaded, run in a process of its own.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.latency import LatencyProxy
from benchmarks.measure import ProcStats

REPO = Path(__file__).resolve().parents[1]
VSFTPD = "/usr/sbin/vsftpd"
BENCH_USER = os.environ.get("BENCH_FTP_USER", "ftp-pooler-bench")
BENCH_PASSWORD = os.environ.get("BENCH_FTP_PASSWORD", "bench-only-pw")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_banner(port: int, timeout: float = 15) -> None:
    """Until the server on ``port`` greets with a 220 line (it is then accepting logins)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(256).startswith(b"220"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no FTP server answered on 127.0.0.1:{port} within {timeout} s")
        time.sleep(0.1)


class FtpServer:
    """One FTP server process; ``root`` is the directory its user sees as ``/``."""

    name = "ftp"
    host = "127.0.0.1"

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        self.user = BENCH_USER
        self.password = BENCH_PASSWORD
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the root (and anything else the server needs) before it starts."""
        self.root.mkdir(parents=True, exist_ok=True)

    def version(self) -> str:
        raise NotImplementedError

    def start(self) -> FtpServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        log = (self.workdir / f"{self.name}.log").open("ab")
        # A process group of its own: vsftpd forks per session, and stop() ends them all.
        self.process = subprocess.Popen(
            self.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            wait_for_banner(self.port)
        except RuntimeError:
            self.stop()
            raise
        return self

    def cpu_seconds(self) -> float:
        """CPU of the server's main process plus its exited, reaped session processes."""
        if self.process is None:
            return 0.0
        stats = ProcStats(self.process.pid)
        total = stats.cpu_seconds()
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
        return total

    def stop(self) -> None:
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    def __enter__(self) -> FtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Vsftpd(FtpServer):
    """Debian's vsftpd in the foreground with its own config, chrooted to ``root``."""

    name = "vsftpd"

    def prepare(self) -> None:
        super().prepare()
        account = pwd.getpwnam(self.user)
        # The session runs as the bench account: it writes uploads under the root.
        os.chown(self.root, account.pw_uid, account.pw_gid)
        # Passive ports below the ephemeral range (32768-60999 here): a port some client socket
        # on the host already uses makes vsftpd fail the session ("500 OOPS: priv_sock_get_int").
        low = 20000 + (self.port % 10) * 1000
        settings = {
            "listen": "YES",
            "listen_ipv6": "NO",
            "listen_address": self.host,
            "listen_port": str(self.port),
            "background": "NO",
            "anonymous_enable": "NO",
            "local_enable": "YES",
            "write_enable": "YES",
            "local_umask": "022",
            "local_root": str(self.root),
            "chroot_local_user": "YES",
            "allow_writeable_chroot": "YES",
            "pam_service_name": "ftp-pooler-bench",
            # Containers: no seccomp sandbox, no network/PID namespaces per session.
            "seccomp_sandbox": "NO",
            "isolate": "NO",
            "isolate_network": "NO",
            "pasv_enable": "YES",
            "pasv_address": self.host,
            "pasv_min_port": str(low),
            "pasv_max_port": str(low + 999),
            "max_clients": "0",
            "max_per_ip": "0",
            "xferlog_enable": "NO",
            "dirmessage_enable": "NO",
            "idle_session_timeout": "600",
            "data_connection_timeout": "120",
        }
        self.config = self.workdir / "vsftpd.conf"
        self.config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))

    def command(self) -> list[str]:
        return [VSFTPD, str(self.config)]

    def version(self) -> str:
        # `vsftpd -v` writes to its standard input; the package manager knows it too.
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "vsftpd"], capture_output=True, text=True
        )
        return f"vsftpd {out.stdout.strip() or 'unknown'} (Debian package)"


class Pyftpdlib(FtpServer):
    """The project's embedded pyftpdlib server (``python -m scripts.ftpd``), one IO loop."""

    name = "pyftpdlib"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "scripts.ftpd",
            "--root",
            str(self.root),
            "--port",
            str(self.port),
            "--user",
            self.user,
            "--password",
            self.password,
        ]

    def version(self) -> str:
        from importlib.metadata import version

        return f"pyftpdlib {version('pyftpdlib')} (scripts/ftpd.py, single-threaded IO loop)"


SERVERS: dict[str, type[FtpServer]] = {"vsftpd": Vsftpd, "pyftpdlib": Pyftpdlib}


class Proxied:
    """A running server seen through a latency proxy (benchmarks.latency): same files, account
    and CPU accounting; ``host``/``port`` are the proxy's. Its name carries the delay."""

    host = "127.0.0.1"

    def __init__(self, server: FtpServer, proxy: LatencyProxy) -> None:
        self.server = server
        self.proxy = proxy
        self.name = f"{server.name}+{proxy.delay_ms:g}ms"
        self.base_name = server.name
        self.one_way_ms = proxy.delay_ms
        self.port = proxy.port
        self.root = server.root
        self.user = server.user
        self.password = server.password

    def cpu_seconds(self) -> float:
        return self.server.cpu_seconds()

    def version(self) -> str:
        return self.server.version()

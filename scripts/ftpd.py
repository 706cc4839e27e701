"""An embedded pyftpdlib server for the demo and the tests, counting logins and live sessions.

Runs pyftpdlib's single-threaded IO loop in a background thread on 127.0.0.1. Counters let tests
check pooling from the server's side: ``logins`` (successful logins so far), ``sessions`` (logged-in
control connections now) and ``max_sessions`` (the most at once).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path
from typing import Any

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, ThrottledDTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer


class SessionTally:
    """Logged-in sessions counted across several servers (e.g. to check a worker-wide cap)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions = 0
        self.max_sessions = 0

    def change(self, delta: int) -> None:
        with self.lock:
            self.sessions += delta
            self.max_sessions = max(self.max_sessions, self.sessions)


class EmbeddedFTPServer:
    """A real FTP server on loopback; ``user``/``password`` get full rights under ``root``.

    ``idle_timeout`` closes idle control connections (421, like real servers); ``max_cons_per_ip``
    refuses connections beyond it with 421; ``tally`` also counts sessions in a shared tally.
    """

    def __init__(
        self,
        root: Path,
        user: str = "alice",
        password: str = "s3cret-pw",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        idle_timeout: float = 300,
        max_cons_per_ip: int = 0,
        tally: SessionTally | None = None,
    ) -> None:
        self.root = Path(root)
        self.user = user
        self.password = password
        self.logins = 0
        self.sessions = 0
        self.max_sessions = 0
        self.send_limit = 0  # bytes/s for downloads (server -> client); 0 = unlimited
        self.retr_delay = 0.0  # seconds before each RETR is served (a distant server's latency)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: FTPServer | None = None
        self._host = host
        self._port = port
        self.idle_timeout = idle_timeout
        self.max_cons_per_ip = max_cons_per_ip
        self.tally = tally

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.address[1])

    def reset_counters(self) -> None:
        with self._lock:
            self.logins = 0
            self.max_sessions = self.sessions

    def start(self) -> EmbeddedFTPServer:
        # One line per FTP command is noise; pyftpdlib configures its own handler unless one exists.
        ftpd_logger = logging.getLogger("pyftpdlib")
        ftpd_logger.setLevel(logging.WARNING)
        if not ftpd_logger.handlers:
            ftpd_logger.addHandler(logging.NullHandler())
        self._stopping.clear()
        authorizer = DummyAuthorizer()
        self.root.mkdir(parents=True, exist_ok=True)
        authorizer.add_user(self.user, self.password, str(self.root), perm="elradfmwMT")
        owner = self

        class DTP(ThrottledDTPHandler):
            def __init__(self, sock: Any, cmd_channel: Any) -> None:
                self.write_limit = owner.send_limit
                super().__init__(sock, cmd_channel)

        class Handler(FTPHandler):
            dtp_handler = DTP
            _counted = False

            def on_login(self, username: str) -> None:
                with owner._lock:
                    owner.logins += 1
                    owner.sessions += 1
                    owner.max_sessions = max(owner.max_sessions, owner.sessions)
                if owner.tally is not None:
                    owner.tally.change(+1)
                self._counted = True

            def ftp_RETR(self, file: str) -> Any:
                if owner.retr_delay:
                    # Delay without blocking the server's single-threaded IO loop.
                    self.ioloop.call_later(owner.retr_delay, FTPHandler.ftp_RETR, self, file)
                    return None
                return super().ftp_RETR(file)

            def on_logout(self, username: str) -> None:
                self._uncount()  # QUIT: counted off before the 221 reply leaves

            def on_disconnect(self) -> None:
                self._uncount()

            def _uncount(self) -> None:
                if self._counted:
                    self._counted = False
                    with owner._lock:
                        owner.sessions -= 1
                    if owner.tally is not None:
                        owner.tally.change(-1)

        Handler.authorizer = authorizer
        Handler.banner = "ftp-pooler embedded test server"
        Handler.timeout = self.idle_timeout
        # Each server gets its own IO loop: pyftpdlib's default is a process-wide singleton.
        self._server = FTPServer((self._host, self._port), Handler, ioloop=IOLoop())
        self._server.max_cons = 1024
        self._server.max_cons_per_ip = self.max_cons_per_ip
        self._thread = threading.Thread(target=self._serve, name="embedded-ftpd", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        # pyftpdlib's IO loop is not thread-safe: poll it here and close it from this thread too.
        server = self._server
        assert server is not None
        while not self._stopping.is_set():
            server.ioloop.loop(timeout=0.05, blocking=False)
        server.close_all()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> EmbeddedFTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the embedded FTP server until interrupted.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=2121)
    parser.add_argument("--user", default="alice")
    parser.add_argument("--password", default="s3cret-pw")
    args = parser.parse_args()
    with EmbeddedFTPServer(args.root, args.user, args.password, port=args.port) as server:
        print(f"ftp://{args.user}@127.0.0.1:{server.port} serving {args.root}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

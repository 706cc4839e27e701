"""pyftpdlib as a server process for the compatibility suite: plain or explicit FTPS.

Run as a subprocess (not in the test process) so the server never competes with the client for
the test process's GIL and its warnings stay its own.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.servers import FTPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--max-cons-per-ip", type=int, default=0)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_user(args.user, args.password, str(args.root), perm="elradfmwMT")
    handler: type[FTPHandler]
    if args.certfile:
        handler = type("Handler", (TLS_FTPHandler,), {})
        handler.certfile = args.certfile
        handler.keyfile = args.keyfile
        handler.tls_control_required = True
        handler.tls_data_required = True
    else:
        handler = type("Handler", (FTPHandler,), {})
    handler.authorizer = authorizer
    handler.banner = "ftp-pooler compat pyftpdlib"
    server = FTPServer(("127.0.0.1", args.port), handler)
    server.max_cons = 256
    server.max_cons_per_ip = args.max_cons_per_ip
    signal.signal(signal.SIGTERM, lambda *_: server.close_all())
    server.serve_forever(handle_exit=False)


if __name__ == "__main__":
    main()

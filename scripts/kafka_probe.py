"""Ask a Kafka broker for cluster metadata with a raw Metadata v4 request (stdlib only)."""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time

METADATA_API_KEY = 3
METADATA_VERSION = 4  # non-flexible, served by Kafka 2.x through 4.x


def metadata_broker_count(host: str, port: int, timeout: float) -> int:
    """Send one Metadata request and return how many brokers the reply lists."""
    client_id = b"ftp-pooler-probe"
    header = struct.pack(">hhih", METADATA_API_KEY, METADATA_VERSION, 1, len(client_id)) + client_id
    body = struct.pack(">i?", 0, False)  # no topics, no auto-creation
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _read_exactly(sock, 4))[0]
        reply = _read_exactly(sock, size)
    correlation_id, _throttle_ms, brokers = struct.unpack(">iii", reply[:12])
    if correlation_id != 1:
        raise OSError(f"unexpected correlation id {correlation_id}")
    return int(brokers)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed by broker")
        chunks.extend(chunk)
    return bytes(chunks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("address", help="host:port")
    parser.add_argument("--wait", type=float, default=0.0, help="keep trying this many seconds")
    parser.add_argument("--brokers", type=int, default=1, help="wait until this many are listed")
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    deadline = time.monotonic() + args.wait
    while True:
        try:
            brokers = metadata_broker_count(host, int(port), timeout=3.0)
            if brokers >= max(args.brokers, 1):
                print(f"kafka at {args.address}: metadata lists {brokers} broker(s)")
                return 0
            error = (
                f"metadata lists {brokers} broker(s), waiting for {args.brokers}"
                if brokers
                else "metadata lists no broker yet"
            )
        except OSError as exc:
            error = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            print(f"kafka at {args.address}: not answering ({error})", file=sys.stderr)
            return 1
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())

"""``check-config --probe``: log in to every FTP connection once (NOOP, QUIT) and time it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from models.connections import Connection, FtpConnection, LocalConnection
from models.errors import FtpPoolerError
from pools.session import FTPSession


@dataclass
class ProbeResult:
    """How one connection answered."""

    conn_id: str
    where: str
    ok: bool
    detail: str
    login_ms: float | None = None
    noop_ms: float | None = None


async def probe_ftp(
    connection: FtpConnection, new_session: Callable[[], FTPSession], limit: float
) -> ProbeResult:
    where = f"{connection.host}:{connection.port}"
    session = new_session()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            await session.connect()
            logged_in = time.perf_counter()
            alive = await session.noop()
            answered = time.perf_counter()
    except FtpPoolerError as exc:
        return ProbeResult(connection.id, where, False, f"{exc.error_code.value}: {exc.message}")
    except TimeoutError:
        return ProbeResult(connection.id, where, False, f"no answer within {limit:g} s")
    except Exception as exc:  # anything else is reported, never a traceback
        return ProbeResult(connection.id, where, False, f"{type(exc).__name__}: {exc}")
    finally:
        await session.aclose()
    login_ms = (logged_in - started) * 1000
    noop_ms = (answered - logged_in) * 1000
    if not alive:
        return ProbeResult(connection.id, where, False, "NOOP refused", login_ms, noop_ms)
    return ProbeResult(connection.id, where, True, "logged in, NOOP answered", login_ms, noop_ms)


def probe_local(connection: LocalConnection) -> ProbeResult:
    base = connection.base_path
    if not base.is_dir():
        return ProbeResult(connection.id, str(base), False, "base_path is not a directory")
    if not os.access(base, os.R_OK | os.W_OK | os.X_OK):
        return ProbeResult(connection.id, str(base), False, "base_path is not readable+writable")
    return ProbeResult(connection.id, str(base), True, "directory readable and writable")


async def probe_all(
    connections: Mapping[str, Connection],
    factories: Mapping[str, Callable[[], FTPSession]],
    limit: float,
) -> list[ProbeResult]:
    """Every connection at once; results in id order."""

    async def one(connection: Connection) -> ProbeResult:
        if isinstance(connection, LocalConnection):
            return probe_local(connection)
        return await probe_ftp(connection, factories[connection.id], limit)

    results = await asyncio.gather(*(one(c) for c in connections.values()))
    return sorted(results, key=lambda r: r.conn_id)

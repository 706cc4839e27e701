"""Directory listings in bounded memory: MLSD (LIST where the server offers no MLST), parsed as
the bytes arrive and handed on one entry at a time.

Nothing here holds a directory: the data connection is read block by block, a block is cut into
lines (only an unfinished last line is carried over), and each line becomes an :class:`Entry`
that the caller deals with before the next is parsed. A directory of 100,000 files costs one
block and one line at a time, whatever its size.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from models.errors import TransferIOError

# The longest listing line accepted: a 4096-byte path plus its facts fits with room to spare.
MAX_LINE_BYTES = 16 * 1024

Kind = Literal["file", "dir", "other"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed name. ``modify`` is ``YYYYMMDDHHMMSS`` in UTC (LIST: to the minute, or to the
    day for files LIST shows with a year); ``mtime`` the same as a UNIX time, None if unknown."""

    name: str
    kind: Kind
    size: int
    modify: str
    mtime: float | None


class ListingSession(Protocol):
    """What a listing needs of an FTP session (``pools.session.FTPSession`` has it)."""

    async def features(self) -> list[str]: ...

    async def receive_listing(
        self, command: str, path: str, on_block: Callable[[bytes], Awaitable[None]]
    ) -> None: ...


@dataclass
class ListingCounts:
    entries: int = 0  # names parsed (files, directories and others)
    unparsed: int = 0  # lines that were not a listing entry we understand (or not UTF-8)


async def supports_mlsd(session: ListingSession) -> bool:
    """RFC 3659: a server offering MLST in FEAT offers MLSD too (vsftpd has neither)."""
    return any(line.upper().startswith("MLST") for line in await session.features())


async def list_directory(
    session: ListingSession,
    path: str,
    on_entry: Callable[[Entry], Awaitable[None]],
    *,
    mlsd: bool,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ListingCounts:
    """List ``path`` with MLSD (or LIST), awaiting ``on_entry`` for each entry as it is read.

    The ``.``/``..`` entries are left out; lines that cannot be parsed are counted, not fatal.
    """
    counts = ListingCounts()
    lines = LineSplitter()
    reference = now()

    async def handle(line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            counts.unparsed += 1
            return
        entry = parse_mlsd(text) if mlsd else parse_list(text, reference)
        if entry is None:
            if text.strip() and not text.startswith("total "):
                counts.unparsed += 1
            return
        if entry.name in (".", ".."):
            return
        counts.entries += 1
        await on_entry(entry)

    async def on_block(block: bytes) -> None:
        for line in lines.feed(block):
            await handle(line)

    await session.receive_listing("MLSD" if mlsd else "LIST", path, on_block)
    for line in lines.finish():
        await handle(line)
    return counts


class LineSplitter:
    """Cuts a byte stream into CRLF- or LF-terminated lines, holding only the unfinished one."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._rest = b""

    def feed(self, block: bytes) -> Iterator[bytes]:
        data = self._rest + block if self._rest else block
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            yield data[start:end].rstrip(b"\r")
            start = end + 1
        self._rest = data[start:]
        if len(self._rest) > self.limit:
            raise TransferIOError(
                f"listing line over {self.limit} bytes: not a directory listing", retryable=False
            )

    def finish(self) -> Iterator[bytes]:
        if self._rest.strip():
            yield self._rest.rstrip(b"\r")
        self._rest = b""


def parse_mlsd(line: str) -> Entry | None:
    """``type=file;size=12;modify=20261202101500; name`` (RFC 3659 facts, then one space)."""
    facts_text, space, name = line.partition(" ")
    if not space or not name or "=" not in facts_text:
        return None
    facts: dict[str, str] = {}
    for fact in facts_text.split(";"):
        key, equals, value = fact.partition("=")
        if equals:
            facts[key.strip().lower()] = value.strip()
    kind_fact = facts.get("type", "").lower()
    kind: Kind = "file" if kind_fact == "file" else "dir" if kind_fact == "dir" else "other"
    if kind_fact in ("cdir", "pdir"):
        return Entry(".", "other", 0, "", None)  # left out by the caller
    size_text = facts.get("size", "0")
    modify = facts.get("modify", "")
    mtime = _mlsd_time(modify)
    return Entry(
        name=name,
        kind=kind,
        size=int(size_text) if size_text.isdigit() else 0,
        modify=modify[:14] if mtime is not None else modify,
        mtime=mtime,
    )


def _mlsd_time(value: str) -> float | None:
    try:
        return datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
# ls -l as Unix-like servers send it: mode, links, owner, group, size, month day time-or-year, name.
_LIST_LINE = re.compile(
    r"^(?P<mode>[-dlcbps][-rwxsStTl]{9})\S*\s+\d+\s+(?:\S+\s+){1,2}?(?P<size>\d+)\s+"
    r"(?P<month>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+(?P<when>\d{1,2}:\d{2}|\d{4}) (?P<name>.+)$"
)


def parse_list(line: str, now: datetime) -> Entry | None:
    """One ``LIST`` line in the Unix ``ls -l`` format (vsftpd, ProFTPD, Pure-FTPd, pyftpdlib).

    Times are taken as UTC (vsftpd's default). A time of day without a year means the last
    twelve months: this year, or last year when that date is still ahead of ``now``.
    """
    match = _LIST_LINE.match(line)
    if match is None:
        return None
    month = _MONTHS.get(match["month"].lower())
    if month is None:
        return None
    mode = match["mode"][0]
    kind: Kind = "file" if mode == "-" else "dir" if mode == "d" else "other"
    day, when = int(match["day"]), match["when"]
    try:
        if ":" in when:
            hour, minute = (int(part) for part in when.split(":"))
            stamp = datetime(now.year, month, day, hour, minute, tzinfo=UTC)
            if stamp > now + timedelta(days=1):
                stamp = stamp.replace(year=now.year - 1)
        else:
            stamp = datetime(int(when), month, day, tzinfo=UTC)
    except ValueError:
        return None
    # A year instead of a time means "over six months old" or "in the future" to the server,
    # and vsftpd compares with a clock read once per listing: a file written during a long
    # listing shows as "Dec 02  2026", midnight. Its age is then unknown, not hours.
    known = ":" in when or abs(now - stamp) > timedelta(days=183)
    name = match["name"]
    if mode == "l":
        name = name.split(" -> ", 1)[0]
    return Entry(
        name=name,
        kind=kind,
        size=int(match["size"]),
        modify=stamp.strftime("%Y%m%d%H%M%S"),
        mtime=stamp.timestamp() if known else None,
    )

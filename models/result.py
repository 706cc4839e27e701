"""The result Record published to ``ftp-results`` and ``ftp-failures``."""

from __future__ import annotations

import enum
from typing import Any

import faust

RAW_VALUE_LIMIT = 64 * 1024


class Status(enum.StrEnum):
    """Outcome of a task."""

    SUCCESS = "success"
    FAILED = "failed"


class Direction(enum.StrEnum):
    """Which way bytes moved: ftp -> local is a download, local -> ftp an upload."""

    DOWNLOAD = "download"
    UPLOAD = "upload"


class TransferResult(faust.Record, serializer="json", include_metadata=False):
    """Exactly one per task; success carries ``sha256``, failure the error fields."""

    task_id: str | None
    status: str
    src_id: str | None
    src_path: str | None
    dst_id: str | None
    dst_path: str | None
    direction: str | None
    bytes_transferred: int
    duration_ms: int
    timestamp: str
    attempts: int
    worker: str
    sha256: str | None = None
    # Success only: whether the server confirmed the length written (150 reply, SIZE or MLST).
    size_verified: bool | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    raw_value: str | None = None
    source: dict[str, Any] | None = None
    # {"action": "delete" | "move", "status": "done" | "failed", "target"?, "error"?}: what was
    # done to the source after a success (absent when the action is none).
    completion: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None  # the task's, unchanged

    def to_wire(self) -> dict[str, Any]:
        """The JSON object as published: fields that do not apply to this outcome are left out."""
        wire = self.asdict()
        optional = (
            "sha256",
            "size_verified",
            "error_code",
            "error_message",
            "retryable",
            "raw_value",
            "source",
            "completion",
            "metadata",
        )
        for name in optional:
            if wire.get(name) is None:
                wire.pop(name, None)
        return wire


def raw_value_text(raw: bytes | None) -> str | None:
    """The original value as text for a failure result, cut at 64 KiB."""
    if raw is None:
        return None
    return raw[:RAW_VALUE_LIMIT].decode("utf-8", errors="replace")

"""Tasks and results as the transfer runner builds them, for tests of what comes after it."""

from __future__ import annotations

from typing import Any

from models.errors import ErrorCode
from models.result import Status, TransferResult
from models.task import TransferTask


def make_task(task_id: str = "t-1") -> TransferTask:
    return TransferTask(
        task_id=task_id,
        src_id="ftp-a",
        src_path="/out/report.csv",
        dst_id="local",
        dst_path="/in/report.csv",
    )


def _fields(task: TransferTask, attempts: int) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "src_id": task.src_id,
        "src_path": task.src_path,
        "dst_id": task.dst_id,
        "dst_path": task.dst_path,
        "direction": "download",
        "duration_ms": 12,
        "timestamp": "2026-12-02T10:00:00.000+00:00",
        "attempts": attempts,
        "worker": "w-test",
    }


def success(task: TransferTask | None = None, attempts: int = 1) -> TransferResult:
    task = task or make_task()
    return TransferResult(
        status=Status.SUCCESS.value,
        bytes_transferred=5,
        sha256="ab" * 32,
        **_fields(task, attempts),
    )


def failure(
    code: ErrorCode = ErrorCode.CONNECTION_ERROR,
    retryable: bool = True,
    task: TransferTask | None = None,
    attempts: int = 1,
    message: str = "cannot connect to 127.0.0.1:21: Connection refused",
) -> TransferResult:
    task = task or make_task()
    return TransferResult(
        status=Status.FAILED.value,
        bytes_transferred=0,
        error_code=code.value,
        error_message=message,
        retryable=retryable,
        **_fields(task, attempts),
    )

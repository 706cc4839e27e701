"""The wire contract: task and result Records, error codes and the exceptions that carry them."""

from models.errors import ErrorCode, FtpPoolerError
from models.result import Direction, Status, TransferResult
from models.task import TransferTask, parse_task

__all__ = [
    "Direction",
    "ErrorCode",
    "FtpPoolerError",
    "Status",
    "TransferResult",
    "TransferTask",
    "parse_task",
]

"""The task Record consumed from ``ftp-tasks`` and the strict parser that builds it."""

from __future__ import annotations

from typing import Annotated, Any

import faust
import pydantic

from models.errors import InvalidTask

MAX_ID_CHARS = 256
MAX_PATH_CHARS = 4096
# A valid task is under 9 KiB even with every field at its limit; anything far larger is rejected
# before parsing, so a multi-megabyte poison value is never copied into a JSON document.
MAX_TASK_BYTES = 64 * 1024


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _names_a_file(value: str) -> str:
    last = value.rsplit("/", 1)[-1]
    if last in ("", ".", ".."):
        raise ValueError("must name a file, not a directory (it ends with '/', '.' or '..')")
    return value


_Id = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
_Path = Annotated[
    str,
    pydantic.StringConstraints(min_length=1, max_length=MAX_PATH_CHARS),
    pydantic.AfterValidator(_no_nul),
    pydantic.AfterValidator(_names_a_file),
    pydantic.Field(json_schema_extra={"pattern": "^[^\\x00]*$", "description": "No NUL."}),
]


class TaskSchema(pydantic.BaseModel):
    """What a task must look like on the wire; strict, so 123 is not accepted as "123"."""

    model_config = pydantic.ConfigDict(strict=True, extra="ignore")

    task_id: _Id
    src_id: _Id
    src_path: _Path
    dst_id: _Id
    dst_path: _Path


class TransferTask(faust.Record, serializer="json", include_metadata=False):
    """One file to move: ``src_path`` on connection ``src_id`` to ``dst_path`` on ``dst_id``."""

    task_id: str
    src_id: str
    src_path: str
    dst_id: str
    dst_path: str


def parse_task(raw: bytes | None) -> TransferTask:
    """Build a task from a raw Kafka value or raise :class:`InvalidTask` saying what is wrong."""
    if raw is None:
        raise InvalidTask("message has no value (tombstone)")
    if len(raw) > MAX_TASK_BYTES:
        raise InvalidTask(f"value is {len(raw)} bytes; a task is at most {MAX_TASK_BYTES} bytes")
    try:
        schema = TaskSchema.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        raise InvalidTask(describe_validation_error(exc)) from None
    return TransferTask(**schema.model_dump())


def peek_task_id(raw: bytes | None) -> str | None:
    """Best-effort ``task_id`` of an invalid message, so its failure can still be correlated."""
    if not raw or len(raw) > MAX_TASK_BYTES:
        return None
    try:
        data: Any = pydantic.TypeAdapter(dict[str, Any]).validate_json(raw)
    except (pydantic.ValidationError, RecursionError):
        return None
    task_id = data.get("task_id")
    if isinstance(task_id, str) and 0 < len(task_id) <= MAX_ID_CHARS:
        return task_id
    return None


def describe_validation_error(exc: pydantic.ValidationError) -> str:
    """One readable line per problem: ``field: what is wrong``; never echoes the input value."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"]) or "value"
        if error["type"] in ("json_invalid", "json_type"):
            problems.append(f"value is not a JSON object ({error['msg']})")
        elif error["type"] == "model_type":
            problems.append("value must be a JSON object")
        else:
            problems.append(f"{location}: {error['msg']}")
    return "; ".join(problems)


def task_json_schema() -> dict[str, Any]:
    """The JSON schema of a task, from the same model that validates it (for OpenAPI)."""
    schema = TaskSchema.model_json_schema()
    schema.pop("title", None)
    schema["description"] = "One file to move. Unknown extra fields are ignored."
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema

"""The task Record consumed from ``ftp-tasks`` and the strict parser that builds it."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

import faust
import pydantic

from models.completion import CompletionAction, check_action
from models.errors import InvalidTask

MAX_ID_CHARS = 256
MAX_PATH_CHARS = 4096
# A valid task is under 9 KiB even with every field at its limit; anything far larger is rejected
# before parsing, so a multi-megabyte poison value is never copied into a JSON document.
MAX_TASK_BYTES = 64 * 1024
# ``metadata`` as compact JSON (UTF-8); echoed in the result, so it stays well under the task's cap.
MAX_METADATA_BYTES = 16 * 1024


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


def _metadata_bounded(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    _finite(value)
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"is {size} bytes as compact JSON; at most {MAX_METADATA_BYTES} allowed")
    return value


def _finite(value: Any) -> None:
    """Infinity and NaN would not survive the trip back out as JSON (1e999 parses as inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if isinstance(value, dict):
        for item in value.values():
            _finite(item)
    elif isinstance(value, list):
        for item in value:
            _finite(item)


class _CompletionSchema(pydantic.BaseModel):
    """``{"action": "none" | "delete" | "move", "target": template}`` (target with move only)."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")

    action: Literal["none", "delete", "move"]
    target: str | None = None

    @pydantic.model_validator(mode="after")
    def _target_fits_action(self) -> _CompletionSchema:
        problem = check_action(self.action, self.target)
        if problem:
            raise ValueError(problem)
        return self


# The OpenAPI description of the two optional task fields (the validators above say more than
# pydantic can derive: a target with move only, the template's placeholders, the size bound).
_COMPLETION: dict[str, Any] = {
    "description": "What to do with the source once the destination is in place; absent: the "
    "source connection's default (connections.ini `completion`), else none.",
    "nullable": True,
    "oneOf": [
        {
            "type": "object",
            "required": ["action"],
            "additionalProperties": False,
            "properties": {"action": {"type": "string", "enum": ["none", "delete"]}},
        },
        {
            "type": "object",
            "required": ["action", "target"],
            "additionalProperties": False,
            "properties": {
                "action": {"type": "string", "enum": ["move"]},
                "target": {
                    "type": "string",
                    "maxLength": 4096,
                    "pattern": "^([^{}\\x00]|\\{(name|stem|suffix|dir|task_id|yyyy|mm|dd|hh)\\})+$",
                    "description": "A template, e.g. /archive/{yyyy}/{mm}/{name}",
                },
            },
        },
    ],
}
_METADATA: dict[str, Any] = {
    "type": "object",
    "nullable": True,
    "description": "Any JSON object up to 16 KiB (compact JSON), echoed in the result.",
}


class TaskSchema(pydantic.BaseModel):
    """What a task must look like on the wire; strict, so 123 is not accepted as "123"."""

    model_config = pydantic.ConfigDict(strict=True, extra="ignore")

    task_id: _Id
    src_id: _Id
    src_path: _Path
    dst_id: _Id
    dst_path: _Path
    completion: Annotated[_CompletionSchema | None, pydantic.WithJsonSchema(_COMPLETION)] = None
    metadata: Annotated[
        dict[str, Any] | None,
        pydantic.AfterValidator(_metadata_bounded),
        pydantic.WithJsonSchema(_METADATA),
    ] = None


class TransferTask(faust.Record, serializer="json", include_metadata=False):
    """One file to move: ``src_path`` on connection ``src_id`` to ``dst_path`` on ``dst_id``."""

    task_id: str
    src_id: str
    src_path: str
    dst_id: str
    dst_path: str
    completion: dict[str, Any] | None = None  # as given; see :meth:`completion_action`
    metadata: dict[str, Any] | None = None  # the client's, echoed unchanged in the result

    def completion_action(self) -> CompletionAction | None:
        """The task's own completion action, None when it names none (the connection's
        default then applies)."""
        if self.completion is None:
            return None
        return CompletionAction(self.completion["action"], self.completion.get("target"))


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
    fields = schema.model_dump(exclude={"completion"})
    if schema.completion is not None:
        fields["completion"] = schema.completion.model_dump(exclude_none=True)
    return TransferTask(**fields)


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
        elif error["type"] == "model_type" and not error["loc"]:
            problems.append("value must be a JSON object")
        else:
            problems.append(f"{location}: {error['msg']}")
    return "; ".join(problems)


def task_json_schema() -> dict[str, Any]:
    """The JSON schema of a task, from the same model that validates it (for OpenAPI)."""
    schema = TaskSchema.model_json_schema()
    schema.pop("title", None)
    schema.pop("$defs", None)
    schema["description"] = "One file to move. Unknown extra fields are ignored."
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema

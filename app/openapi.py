"""The OpenAPI 3 description of the HTTP API, built from the same limits the views enforce."""

from __future__ import annotations

from typing import Any

from models.status import TaskState
from models.task import MAX_ID_CHARS, task_json_schema

OPENAPI_VERSION = "3.0.3"


def _string(max_length: int, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, **extra}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _schemas() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    pool_counts = {
        name: count for name in ("open", "busy", "idle", "connecting", "waiting", "max_sessions")
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "Task": task_json_schema(),
        "Accepted": {
            "type": "object",
            "required": ["accepted", "task_ids"],
            "properties": {
                "accepted": {"type": "integer", "minimum": 1},
                "task_ids": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Invalid": {
            "type": "object",
            "required": ["error", "errors"],
            "properties": {
                "error": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "task_id", "message", "fields"],
                        "properties": {
                            "index": count,
                            "task_id": {"type": "string", "nullable": True},
                            "message": {"type": "string"},
                            "fields": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
        "TaskState": {
            "type": "object",
            "description": "The latest known state of a task (fields appear once known).",
            "required": ["task_id", "state", "updated_at", "answered_by"],
            "properties": {
                "task_id": {"type": "string"},
                "state": {"type": "string", "enum": [state.value for state in TaskState]},
                "attempts": count,
                "worker": {"type": "string"},
                "src_id": {"type": "string"},
                "src_path": {"type": "string"},
                "dst_id": {"type": "string"},
                "dst_path": {"type": "string"},
                "direction": {"type": "string", "enum": ["download", "upload"]},
                "queued_at": {"type": "string", "format": "date-time"},
                "started_at": {"type": "string", "format": "date-time"},
                "finished_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "next_attempt_at": {"type": "string", "format": "date-time"},
                "bytes_transferred": count,
                "duration_ms": count,
                "sha256": {"type": "string"},
                "error_code": {"type": "string"},
                "error_message": {"type": "string"},
                "retryable": {"type": "boolean"},
                "completion": {"type": "object", "description": "What was done to the source."},
                "metadata": {"type": "object"},
                "last_error_code": {"type": "string"},
                "last_error_message": {"type": "string"},
                "answered_by": {
                    "type": "string",
                    "description": "The worker owning this id's partition (it answered).",
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "worker"],
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "worker": {"type": "string"},
            },
        },
        "Ready": {
            "type": "object",
            "required": ["ready", "worker"],
            "properties": {"ready": {"type": "boolean"}, "worker": {"type": "string"}},
        },
        "Pool": {
            "type": "object",
            "required": [*pool_counts, "effective_max_sessions", "circuit"],
            "properties": {
                **pool_counts,
                "effective_max_sessions": count,
                "opened_total": count,
                "pushbacks_total": count,
                "circuit": {"type": "object"},
            },
        },
        "Status": {
            "type": "object",
            "required": [
                "worker",
                "version",
                "ready",
                "assigned_partitions",
                "in_flight",
                "pools",
                "fleet",
            ],
            "properties": {
                "worker": {"type": "string"},
                "version": {"type": "string"},
                "ready": {"type": "boolean"},
                "assigned_partitions": {"type": "array", "items": {"type": "string"}},
                "in_flight": count,
                "max_in_flight": count,
                "completed": count,
                "retries_waiting": count,
                "pools": {
                    "type": "object",
                    "required": ["open", "max_sessions_per_pod", "connections"],
                    "properties": {
                        "open": count,
                        "max_sessions_per_pod": count,
                        "connections": {"type": "object", "additionalProperties": _ref("Pool")},
                    },
                },
                "task_status": {
                    "type": "object",
                    "properties": {
                        "owned_partitions": {"type": "array", "items": {"type": "integer"}},
                        "retention_hours": {"type": "number"},
                        "purged_total": count,
                        "send_failures_total": count,
                    },
                },
                "fleet": {
                    "type": "object",
                    "description": "Per connection: each live worker's sessions, and the total.",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["workers", "total"],
                        "properties": {
                            "workers": {
                                "type": "object",
                                "additionalProperties": {"type": "object"},
                            },
                            "total": {"type": "object"},
                        },
                    },
                },
            },
        },
        "Connections": {
            "type": "object",
            "required": ["connections"],
            "properties": {
                "connections": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "description": "Non-secret settings; never a password.",
                        "required": ["id", "type"],
                        "properties": {
                            "id": {"type": "string"},
                            "type": {"type": "string", "enum": ["ftp", "local"]},
                            "host": {"type": "string"},
                            "port": {"type": "integer"},
                            "user": {"type": "string"},
                            "passive": {"type": "boolean"},
                            "max_sessions": {"type": "integer", "nullable": True},
                            "base_path": {"type": "string"},
                        },
                    },
                }
            },
        },
    }


def openapi_document(
    *, version: str, max_request_bytes: int, token_required: bool
) -> dict[str, Any]:
    """The document served at ``/openapi.json``; POST needs a token only when one is set."""
    error = _ref("Error")
    submit: dict[str, Any] = {
        "summary": "Submit one task or a list of tasks",
        "description": (
            "Validated exactly as the worker validates tasks; all or nothing. Each task gets a "
            f"`queued` state, then is produced to the input topic. Bodies over {max_request_bytes}"
            " bytes are refused with 413."
        ),
        "operationId": "submitTasks",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            _ref("Task"),
                            {"type": "array", "minItems": 1, "items": _ref("Task")},
                        ]
                    }
                }
            },
        },
        "responses": {
            "202": _json(_ref("Accepted"), "Produced to the input topic."),
            "400": _json(_ref("Invalid"), "Not JSON, or invalid tasks (nothing produced)."),
            "413": _json(error, "Body over the size limit."),
            "503": _json(error, "Kafka did not take the tasks in time."),
        },
    }
    components: dict[str, Any] = {"schemas": _schemas()}
    if token_required:
        submit["security"] = [{"bearer": []}]
        submit["responses"]["401"] = _json(error, "Missing or wrong bearer token.")
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}

    def get(summary: str, operation: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"summary": summary, "operationId": operation, "responses": responses}}

    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "FTP Pooler worker API",
            "version": version,
            "description": "Every worker serves this API; GETs are open for probes.",
        },
        "paths": {
            "/health": get("Liveness", "health", {"200": _json(_ref("Health"), "Alive.")}),
            "/ready": get(
                "Readiness",
                "ready",
                {
                    "200": _json(_ref("Ready"), "Joined the group, tables recovered."),
                    "503": _json(_ref("Ready"), "Starting, rebalancing first time, or stopping."),
                },
            ),
            "/status": get(
                "This worker and the fleet", "status", {"200": _json(_ref("Status"), "")}
            ),
            "/connections": get(
                "Connections without secrets",
                "connections",
                {"200": _json(_ref("Connections"), "")},
            ),
            "/tasks": {"post": submit},
            "/tasks/{task_id}": {
                "parameters": [
                    {
                        "name": "task_id",
                        "in": "path",
                        "required": True,
                        "schema": _string(MAX_ID_CHARS),
                    }
                ],
                **get(
                    "Latest known state of a task (from any worker)",
                    "getTask",
                    {
                        "200": _json(_ref("TaskState"), "Known."),
                        "404": _json(error, "Unknown, or older than api.task_retention_hours."),
                        "503": _json(error, "The owning worker is not known yet (rebalancing)."),
                    },
                ),
            },
            "/metrics": get(
                "Faust's and FTP Pooler's metrics (also on metrics.port)",
                "metrics",
                {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            ),
            "/openapi.json": get(
                "This document",
                "openapi",
                {"200": _json({"type": "object"}, "OpenAPI 3 document.")},
            ),
        },
        "components": components,
    }

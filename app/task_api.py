"""``POST /tasks`` (submit through the API) and ``GET /tasks/{task_id}`` (latest known state)."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
import pydantic
import structlog
from aiohttp import web
from faust.web import Request, Response, View
from faust.web.exceptions import WebError

from agents.status_sender import StatusSender
from agents.status_table import StatusTable
from app.settings import ApiSettings
from app.web import Worker
from models.errors import InvalidTask
from models.task import TaskSchema, TransferTask, parse_task

log = structlog.get_logger("ftp_pooler.api")

SendTask = Callable[[bytes, bytes], Awaitable[Any]]
# How long the owner of a task_id waits for its status agent to catch up before answering 404.
CATCH_UP_SECONDS = 2.0


class Rejected(Exception):
    """A request answered with an error status and a JSON body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body.get("error"))
        self.status = status
        self.body = body
        self.headers = headers


def check_token(request: Request, token: str | None) -> None:
    """Raise 401 unless no token is configured or the request carries it as a Bearer token."""
    if token is None:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return
    raise Rejected(
        401,
        {"error": "missing or wrong bearer token (Authorization: Bearer <api.token>)"},
        {"WWW-Authenticate": 'Bearer realm="ftp-pooler"'},
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    too_large = Rejected(413, {"error": f"request body over {limit} bytes", "limit_bytes": limit})
    http = cast(web.Request, request)  # Faust's web driver is aiohttp
    declared = http.content_length
    if declared is not None and declared > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := await http.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def validate_tasks(body: bytes) -> list[tuple[TransferTask, bytes]]:
    """Each task with the exact bytes to produce; 400 listing every invalid task otherwise.

    The verdict is the agent's own parser (:func:`models.task.parse_task`) on the bytes that will
    be produced, so nothing the API accepts can fail as INVALID_TASK later.
    """
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise Rejected(400, {"error": f"body is not valid JSON: {exc}", "errors": []}) from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise Rejected(400, {"error": "no tasks: the list is empty", "errors": []})
    accepted: list[tuple[TransferTask, bytes]] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            raw = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): JSON text, but not Unicode
            errors.append(
                {
                    "index": index,
                    "task_id": None,
                    "message": "value holds a lone UTF-16 surrogate (\\ud800-\\udfff), "
                    "which is not valid Unicode",
                    "fields": {},
                }
            )
            continue
        try:
            accepted.append((parse_task(raw), raw))
        except InvalidTask as exc:
            task_id = item.get("task_id") if isinstance(item, dict) else None
            errors.append(
                {
                    "index": index,
                    "task_id": task_id if isinstance(task_id, str) else None,
                    "message": exc.message,
                    "fields": field_errors(raw),
                }
            )
    if errors:
        raise Rejected(
            400,
            {
                "error": f"invalid tasks: {len(errors)} of {len(items)}; nothing was produced",
                "errors": errors,
            },
        )
    return accepted


def field_errors(raw: bytes) -> dict[str, str]:
    """Per field, what is wrong (the schema parse_task validates with)."""
    try:
        TaskSchema.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        return {
            ".".join(str(part) for part in error["loc"]) or "value": error["msg"]
            for error in exc.errors(include_url=False, include_input=False)
        }
    return {}


class TaskSubmitter:
    """Produces accepted tasks: their ``queued`` status first, then the tasks themselves."""

    def __init__(self, statuses: StatusSender, send_task: SendTask, timeout: float) -> None:
        self.statuses = statuses
        self.send_task = send_task
        self.timeout = timeout

    async def submit(self, tasks: list[tuple[TransferTask, bytes]]) -> list[str]:
        ids = [task.task_id for task, _ in tasks]
        # The status goes first and is acknowledged before any task can be consumed, so a
        # fast worker's in_progress/success never lands before this queued entry.
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(*await self.statuses.submitted(t for t, _ in tasks))
        except Exception as exc:
            raise self._unavailable("nothing was produced", exc, []) from None
        futures = [await self.send_task(task.task_id.encode(), raw) for task, raw in tasks]
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(*futures)
        except Exception as exc:
            done = [
                task_id
                for task_id, f in zip(ids, futures, strict=True)
                if f.done() and not f.cancelled() and f.exception() is None
            ]
            raise self._unavailable(f"{len(done)} of {len(ids)} produced", exc, done) from None
        return ids

    def _unavailable(self, what: str, exc: BaseException, produced: list[str]) -> Rejected:
        error = f"Kafka did not take the tasks within {self.timeout:g} s ({what})"
        log.warning("tasks_submit_failed", error=f"{type(exc).__name__}: {exc}", produced=what)
        return Rejected(503, {"error": error, "produced": produced})


def register_task_views(
    app: faust.App,
    worker: Worker,
    api: ApiSettings,
    statuses: StatusTable,
    submitter: TaskSubmitter,
) -> None:
    """``POST /tasks`` and ``GET /tasks/{task_id}`` (routed to the worker owning the id)."""
    token = api.token.get_secret_value() if api.token is not None else None
    not_ready = Rejected(
        503,
        {"error": "worker not ready (starting, rebalancing or stopping); try again"},
        {"Retry-After": "1"},
    )

    @app.page("/tasks")
    class Tasks(View):
        """Submit one task (a JSON object) or many (a JSON array)."""

        async def post(self, request: Request) -> Response:
            try:
                check_token(request, token)
                if not worker.is_ready():
                    raise not_ready
                tasks = validate_tasks(await read_body(request, api.max_request_bytes))
                ids = await submitter.submit(tasks)
            except Rejected as exc:
                return self.json(exc.body, status=exc.status, headers=exc.headers)
            log.info("tasks_submitted", count=len(ids))
            return self.json({"accepted": len(ids), "task_ids": ids}, status=202)

    async def answer_locally(view: View, request: Request, task_id: str) -> Response:
        entry = statuses.lookup(task_id)
        if entry is None and await statuses.caught_up(task_id, CATCH_UP_SECONDS):
            entry = statuses.lookup(task_id)  # it may have arrived meanwhile
        if entry is None:
            retention = api.task_retention_hours
            return view.json(
                {
                    "error": f"no task {task_id!r} seen in the last {retention:g} hours",
                    "task_id": task_id,
                },
                status=404,
            )
        # The owner of the id's partition answers, even when asked through another worker.
        return view.json({**entry.public(), "answered_by": worker.worker_id})

    # On any other worker this forwards the request to the owner of task_id's partition.
    routed: Any = app.table_route(table=statuses.table, match_info="task_id")(answer_locally)

    @app.page("/tasks/{task_id}")
    class TaskStatus(View):
        """The latest known state of one task, answered by the worker that owns its id."""

        async def get(self, request: Request, task_id: str) -> Response:
            if not worker.is_ready() or app.rebalancing:
                # Partitions are moving: the owner of the id may not be known or recovered yet.
                return self.json(not_ready.body, status=503, headers=not_ready.headers)
            try:
                # table_route hashes the id with the producer's metadata of the changelog;
                # make sure it has it (it can lack it after a rebalance: TypeError inside).
                await worker.load_route_metadata()
                response: Response = await routed(self, request, task_id=task_id)
            except WebError:
                raise  # Faust answers these itself (e.g. 503 while no owner is known)
            except Exception as exc:  # the owner could not be reached or worked out
                log.warning("task_route_failed", error=f"{type(exc).__name__}: {exc}")
                return self.json(not_ready.body, status=503, headers=not_ready.headers)
            return response

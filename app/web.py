"""HTTP views on Faust's own web server: /health, /ready, /status, /connections, /openapi.json.

The task views (``/tasks``) are in :mod:`app.task_api`.
"""

from __future__ import annotations

from typing import Any, Protocol

import faust
from faust.web import Request, Response, View

from models.connections import Registry


class Worker(Protocol):
    """What the views read from the worker, live at request time."""

    registry: Registry

    @property
    def worker_id(self) -> str: ...

    def is_ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def openapi(self) -> dict[str, Any]: ...

    async def load_route_metadata(self) -> None: ...


def register_views(app: faust.App, worker: Worker) -> None:
    """Attach the views to ``app``'s web server; each reads ``worker`` at request time."""

    @app.page("/health")
    class Health(View):
        """Liveness: the event loop answered."""

        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "worker": worker.worker_id})

    @app.page("/ready")
    class Ready(View):
        """Readiness: 503 until the worker has joined the group, and again while stopping."""

        async def get(self, request: Request) -> Response:
            ready = worker.is_ready()
            body = {"ready": ready, "worker": worker.worker_id}
            return self.json(body, status=200 if ready else 503)

    @app.page("/status")
    class Status(View):
        """This worker: partitions, tasks in flight, session pools per connection."""

        async def get(self, request: Request) -> Response:
            return self.json(worker.status())

    @app.page("/connections")
    class Connections(View):
        """Connection ids and their non-secret settings."""

        async def get(self, request: Request) -> Response:
            body: list[dict[str, Any]] = [c.public() for c in worker.registry.values()]
            return self.json({"connections": body})

    @app.page("/openapi.json")
    class OpenApi(View):
        """The OpenAPI 3 description of this API."""

        async def get(self, request: Request) -> Response:
            return self.json(worker.openapi())

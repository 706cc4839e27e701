"""Ask app/web.py's own views what they answer, without a Faust app or a web server."""

from __future__ import annotations

import asyncio
from typing import Any

from app import web
from tests.deploy.workload import POD_NAME


class _FakeApp:
    """Enough of FtpPoolerApp for register_views: records pages, answers is_ready()."""

    worker_id = POD_NAME

    def __init__(self) -> None:
        self.views: dict[str, Any] = {}
        self.ready = False

    def page(self, path: str) -> Any:
        def register(view: Any) -> Any:
            self.views[path] = view
            return view

        return register

    def is_ready(self) -> bool:
        return self.ready


class _Responder:
    def json(self, body: Any, status: int = 200) -> int:
        return status


def route_status(path: str, *, ready: bool) -> int:
    """The HTTP status app/web.py's view for ``path`` answers, the worker ready or not."""
    app = _FakeApp()
    web.register_views(app, app)  # type: ignore[arg-type]
    assert path in app.views, f"{path} is not a route of app/web.py ({sorted(app.views)})"
    app.ready = ready
    status: int = asyncio.run(app.views[path].get(_Responder(), None))
    return status

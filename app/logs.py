"""structlog set-up: one JSON object per line, or console lines for humans."""

from __future__ import annotations

import logging
import os
from typing import Any, TextIO

import structlog

from app.settings import LoggingSettings


def _real_stdout() -> TextIO:
    """A line-buffered writer on file descriptor 1, whatever object sys.stdout is later."""
    if not _STDOUT:
        _STDOUT.append(open(os.dup(1), "w", buffering=1, encoding="utf-8"))  # noqa: SIM115
    return _STDOUT[0]


_STDOUT: list[TextIO] = []  # opened once per process, kept open for its lifetime


def configure_logging(settings: LoggingSettings) -> None:
    renderer: Any
    if settings.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.level]
        ),
        # Faust swaps sys.stdout for a logging proxy; our JSON lines go to the real stdout.
        logger_factory=structlog.PrintLoggerFactory(_real_stdout()),
        cache_logger_on_first_use=True,
    )

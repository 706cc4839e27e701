"""structlog set-up: one JSON object per line, or console lines for humans."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from app.settings import LoggingSettings


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
        # Faust swaps sys.stdout for a logging proxy; write JSON lines to the real stdout.
        logger_factory=structlog.PrintLoggerFactory(sys.__stdout__),
        cache_logger_on_first_use=True,
    )

"""structlog set-up: one JSON object per line, or console lines for humans."""

from __future__ import annotations

import logging
import os
from typing import Any, TextIO

import structlog

from app.settings import LoggingSettings, Settings
from models.connections import Registry


def _real_stdout() -> TextIO:
    """A line-buffered writer on file descriptor 1, whatever object sys.stdout is later."""
    if not _STDOUT:
        _STDOUT.append(open(os.dup(1), "w", buffering=1, encoding="utf-8"))  # noqa: SIM115
    return _STDOUT[0]


_STDOUT: list[TextIO] = []  # opened once per process, kept open for its lifetime


# Libraries whose debug lines come per FTP command, Kafka request or message.
CHATTY_LIBRARIES = ("aioftp", "aiokafka", "faust", "mode")


def configure_logging(settings: LoggingSettings) -> None:
    # Faust's progress spinner (on at `-l warn` and above, Faust's default) sets the root logger
    # to DEBUG, so every debug line of these libraries would build a record for the handler to
    # drop (~4 % of the event loop's time in the benchmarks). They follow our level instead.
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(settings.level)
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


def config_summary(settings: Settings, registry: Registry) -> dict[str, Any]:
    """What a worker runs with, for its ``worker_started`` event: every setting but no secret
    (the API token and the Kafka password show only whether they are set; FTP passwords are not
    in the settings at all)."""
    summary: dict[str, Any] = settings.model_dump(mode="json")
    summary["api"]["token"] = "set" if settings.api.token is not None else None
    kafka = settings.kafka
    has_password = kafka.sasl_password is not None or kafka.sasl_password_file is not None
    summary["kafka"]["sasl_password"] = "set" if has_password else None
    summary["connections"] = {conn_id: registry[conn_id].public() for conn_id in sorted(registry)}
    return summary

"""Log rendering: one JSON object per line by default, key=value lines for humans."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from app.logs import configure_logging
from app.settings import LoggingSettings

EVENT = {"event": "transfer_failed", "task_id": "t-1", "src_id": "a", "error": "550 x\ny"}


@pytest.fixture(autouse=True)
def restore_structlog():
    yield
    structlog.reset_defaults()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def render(settings: LoggingSettings) -> str:
    configure_logging(settings)
    processors = structlog.get_config()["processors"]
    event = dict(EVENT)
    for processor in processors:
        event = processor(None, "warning", event)
    assert isinstance(event, str)
    return event


def test_json_is_the_default_and_one_event_is_one_line():
    line = render(LoggingSettings())
    assert "\n" not in line  # a newline inside a value is escaped, never a second line
    data = json.loads(line)
    assert {k: data[k] for k in EVENT} == EVENT
    assert data["level"] == "warning" and data["timestamp"].endswith("Z")


def test_console_format_is_for_humans():
    text = render(LoggingSettings(format="console"))
    assert "transfer_failed" in text and "task_id=t-1" in text
    with pytest.raises(ValueError):
        json.loads(text)


def test_the_level_filters_events():
    configure_logging(LoggingSettings(level="warning"))
    logger = structlog.get_config()["wrapper_class"]
    assert logger.__name__.lower().startswith("boundloggerfilteringatwarning")


def test_library_debug_lines_stay_off_when_root_is_debug():
    """Even with the root logger at DEBUG (Faust's spinner), aioftp's debug lines are not built."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.DEBUG)
    try:
        configure_logging(LoggingSettings(level="INFO"))
        assert not logging.getLogger("aioftp.client").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
        configure_logging(LoggingSettings(level="DEBUG"))
        assert logging.getLogger("aioftp.client").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(before)
        for name in ("aioftp", "aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(logging.NOTSET)

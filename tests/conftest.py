"""Suite-wide set-up: structlog stays quiet in-process (tests that check logs capture them)."""

import logging
import os

import structlog

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

# Suites with their own make target, collected only there (never skipped inside `make test`):
# tests/image needs the built image (`make test-image`).
collect_ignore = [] if os.environ.get("FTP_POOLER_TEST_IMAGE") else ["image"]

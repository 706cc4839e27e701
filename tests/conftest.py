"""Suite-wide set-up: structlog stays quiet in-process (tests that check logs capture them)."""

import logging

import structlog

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

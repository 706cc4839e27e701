"""Operator tooling: the ``ftp-pooler`` console script and its commands (submit, check-config,
status). It sits above the worker's composition: it builds or calls a worker, never the reverse."""

from app.cli.commands import main

__all__ = ["main"]

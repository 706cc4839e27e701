"""FTP Pooler's Faust application. ``faust -A app worker`` reads ``app.app``, built on first access.

This module is the entry point, the top of the layers: it composes the worker (app.main) with
the operator commands (app.cli) that Faust's command line finds on the app.

Building is lazy so that importing a submodule (settings, registry) never loads the worker config.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.cli.commands import register_commands
        from app.main import app_from_environment
        from app.memory import return_large_buffers_to_the_system

        return_large_buffers_to_the_system()

        value = app_from_environment()
        register_commands(value)  # the operator commands (the cli layer sits above the worker)
        globals()["app"] = value
        return value
    raise AttributeError(f"module 'app' has no attribute {name!r}")

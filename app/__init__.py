"""FTP Pooler's Faust application. ``faust -A app worker`` reads ``app.app``, built on first access.

Building is lazy so that importing a submodule (settings, registry) never loads the worker config.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.main import app_from_environment
        from app.memory import return_large_buffers_to_the_system

        return_large_buffers_to_the_system()

        value = app_from_environment()
        globals()["app"] = value
        return value
    raise AttributeError(f"module 'app' has no attribute {name!r}")

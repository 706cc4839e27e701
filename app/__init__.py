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

        value = _app_for_help() if _asks_for_help() else app_from_environment()
        register_commands(value)  # the operator commands (the cli layer sits above the worker)
        globals()["app"] = value
        return value
    raise AttributeError(f"module 'app' has no attribute {name!r}")


def _asks_for_help() -> bool:
    import sys

    args = sys.argv[1:]
    return "--help" in args or not [a for a in args if not a.startswith("-") and a != "app"]


def _app_for_help() -> Any:
    """``--help`` must work before anything is configured: with no usable configuration or
    registry, the commands are listed from an app built on defaults and no connections."""
    from app.main import app_from_environment, create_app
    from app.settings import Settings, load_settings
    from models.connections import Registry, load_registry
    from models.errors import ConfigError

    try:
        settings = load_settings()
        load_registry(settings.connections_file)
    except ConfigError:
        try:
            settings = load_settings()
        except ConfigError:
            settings = Settings.model_construct()
        return create_app(settings, Registry({}))
    return app_from_environment()

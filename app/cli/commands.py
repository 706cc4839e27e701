"""Operator commands, as Faust app commands: ``faust -A app <command>`` or ``ftp-pooler <command>``.

- ``submit``: produce tasks (flags, a JSON-lines or CSV file, or stdin), follow their outcomes
  with a progress bar, print a summary; exit 1 if any failed (2 for invalid input).
- ``check-config``: validate settings and registry (building the app already did), print them;
  ``--probe`` logs in to every FTP connection once and prints reachability and latency.
- ``status``: a worker's ``/status`` as tables.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, cast

import aiohttp
import click
import structlog
from faust.cli import AppCommand, option
from faust.cli.worker import worker as faust_worker
from rich.console import Console
from rich.table import Table

from app import kafka_client
from app.cli import probe as probing
from app.cli import submit as submitting

if TYPE_CHECKING:
    from app.main import FtpPoolerApp


def main() -> None:
    """The ``ftp-pooler`` console script: Faust's CLI with ``-A app`` filled in."""
    from faust.cli.faust import cli

    if sys.argv[1:] in (["--version"], ["-V"]):
        import faust

        from app.main import VERSION

        print(f"ftp-pooler {VERSION} (Faust {faust.__version__})")
        raise SystemExit(0)
    # Faust finds the app (and so our commands) by reading -A from sys.argv itself.
    sys.argv[1:1] = ["-A", "app"]  # in place: faust bound sys.argv as a default argument
    cli(prog_name="ftp-pooler")


class worker(faust_worker):
    """Start worker instance for given app.

    Faust's own ``worker`` command, except that its banner and start-up spinner go to stderr
    with its logs: stdout carries only our JSON log lines. Defining this subclass replaces the
    command of the same name, so ``faust -A app worker`` runs it too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stdout = self.stderr

    def as_service(self, loop: Any, *args: Any, **kwargs: Any) -> Any:
        # Before Faust starts anything: every start-up failure we can foresee is one line and
        # exit 2, not a traceback (see app/preflight.py).
        from app.preflight import StartupError, check_kafka, check_worker

        try:
            refuse_overrides(kwargs, self.datadir)
            check_worker(self.app.settings)  # type: ignore[attr-defined]
            loop.run_until_complete(check_kafka(self.app.settings))  # type: ignore[attr-defined]
        except StartupError as exc:
            print(f"ftp-pooler: cannot start: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        return super().as_service(loop, *args, **kwargs)

    def _init_worker_options(self, *args: Any, web_port: int | None, **kwargs: Any) -> None:
        # The probes and the image's HEALTHCHECK call api.port: a -p/--web-port that moved the
        # web server elsewhere would leave them asking a port nobody serves.
        port = cast("FtpPoolerApp", self.app).settings.api.port
        if web_port is not None and web_port != port:
            print(
                f"ftp-pooler: configuration error: --web-port {web_port} differs from api.port "
                f"{port} (the port the probes call); set FTP_POOLER_API__PORT instead",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2)
        super()._init_worker_options(*args, web_port=web_port, **kwargs)


# Faust's worker flags that would override a setting of ours, and the setting to use instead.
OVERRIDING_FLAGS = {
    "web_port": ("--web-port", "api.port"),
    "web_bind": ("--web-bind", "api.host"),
    "web_host": ("--web-host", "api.advertised_host"),
    "web_transport": ("--web-transport", "api.host / api.port"),
}


def refuse_overrides(options: dict[str, Any], datadir: str | None) -> None:
    """One source of truth: a Faust flag that would change what FTP_POOLER_* configured stops
    the worker with one line, instead of silently winning."""
    from app.preflight import StartupError

    for name, (flag, setting) in OVERRIDING_FLAGS.items():
        if options.get(name) not in (None, ""):
            raise StartupError(f"{flag} is not used: set {setting} (FTP_POOLER_*) instead")
    if options.get("with_web") is False:
        raise StartupError("--without-web is not used: the API is part of the worker")
    from agents.faust_door import datadir_flag_given

    if datadir_flag_given(datadir):
        raise StartupError("--datadir is not used: set worker.data_dir (FTP_POOLER_*) instead")


def console() -> Console:
    """Rich output on stdout; a fixed width when it is not a terminal (logs, captures)."""
    return Console(width=None if sys.stdout.isatty() else 120, highlight=False)


def quiet_logs() -> None:
    """Our JSON events would interleave with tables: keep warnings only, on stderr."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


async def guarded(name: str, work: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a command body and exit with its code; any error is one line on stderr, exit 1
    (never a traceback: these are operator tools)."""
    try:
        code = await work
    except submitting.InputError as exc:
        print(f"ftp-pooler {name}: {exc}", file=sys.stderr, flush=True)
        code = 2
    except Exception as exc:
        print(f"ftp-pooler {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    raise SystemExit(code)


def register_commands(app: FtpPoolerApp) -> None:
    """Define the commands on ``app`` (click registers them by name, once per process)."""

    @app.command(
        option("--file", "-f", "path", default=None, help="JSON lines or CSV file; - for stdin."),
        option(
            "--format",
            "fmt",
            type=click.Choice(["auto", "jsonl", "csv"]),
            default="auto",
            help="Input format (auto: CSV for *.csv, else JSON lines).",
        ),
        option("--task-id", default=None, help="One task from flags: its id."),
        option("--src-id", default=None),
        option("--src-path", default=None),
        option("--dst-id", default=None),
        option("--dst-path", default=None),
        option("--wait/--no-wait", default=True, help="Follow the outcomes (default) or not."),
        option(
            "--timeout",
            "wait_limit",
            type=float,
            default=0,
            help="Stop waiting after this many seconds (0: no limit).",
        ),
    )
    async def submit(self: AppCommand, path: str | None, fmt: str, **options: Any) -> None:
        """Submit tasks and follow them to a summary (exit 1 if any failed)."""
        await guarded("submit", run_submit(app, path, fmt, **options))

    @app.command(
        option("--probe", is_flag=True, help="Log in to every FTP connection once (NOOP)."),
    )
    async def check_config(self: AppCommand, probe: bool) -> None:
        """Validate the configuration and registry; optionally probe every connection."""
        await guarded("check-config", run_check_config(app, probe))

    @app.command(
        option("--url", default=None, help="Worker API base URL (default: this host's api.port)."),
        option("--json", "as_json", is_flag=True, help="Print the raw JSON."),
    )
    async def status(self: AppCommand, url: str | None, as_json: bool) -> None:
        """Show a worker's /status as tables."""
        await guarded("status", run_status(app, url, as_json))


async def run_submit(
    app: FtpPoolerApp,
    path: str | None,
    fmt: str,
    *,
    wait: bool,
    wait_limit: float,
    **flags: str | None,
) -> int:
    quiet_logs()
    if path is not None:
        if any(v is not None for v in flags.values()):
            raise submitting.InputError("give either --file or the task flags, not both")
        entries = submitting.open_input(path, fmt, submitting.stdin_text(sys.stdin))
    else:
        entries = submitting.single_task(flags)
    tasks = submitting.load_tasks(entries)
    kafka = app.settings.kafka
    try:
        await kafka_client.check_login(kafka)  # wrong credentials or CA: one clear line
    except kafka_client.KafkaSetupError as exc:
        print(f"ftp-pooler submit: {exc}", file=sys.stderr, flush=True)
        return 1
    return await submitting.submit(
        client=kafka_client.client_options(kafka),
        bootstrap=kafka.bootstrap_servers,
        input_topic=kafka.input_topic,
        outcome_topics=[kafka.result_topic, kafka.fail_topic],
        tasks=tasks,
        console=console(),
        wait=wait,
        wait_limit=wait_limit or None,
    )


async def run_check_config(app: FtpPoolerApp, probe: bool) -> int:
    # Building the app already validated settings and registry (an error there exits 2 with
    # the file, section and key before any command runs).
    quiet_logs()
    out = console()
    registry = app.registry
    out.print(f"configuration OK; registry {registry.source}: {len(registry)} connections")
    out.print(connections_table(app))
    if not probe:
        return 0
    limit = app.settings.transfer.connect_timeout_seconds * 2
    results = await probing.probe_all(registry, app.session_factories, limit)
    out.print(probe_table(results))
    failed = [r for r in results if not r.ok]
    if failed:
        out.print(f"{len(failed)} of {len(results)} connections unreachable or unusable")
    return 1 if failed else 0


async def run_status(app: FtpPoolerApp, url: str | None, as_json: bool) -> int:
    quiet_logs()
    out = console()
    base = (url or f"http://127.0.0.1:{app.settings.api.port}").rstrip("/")
    try:
        body = await fetch_json(f"{base}/status")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        print(f"ftp-pooler status: cannot read {base}/status: {detail}", file=sys.stderr)
        return 1
    if as_json:
        out.print_json(json.dumps(body))
        return 0
    for renderable in status_tables(body):
        out.print(renderable)
    return 0


async def fetch_json(url: str) -> Any:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        response.raise_for_status()
        return await response.json()


def connections_table(app: FtpPoolerApp) -> Table:
    table = Table(title="Connections", title_justify="left")
    for column in ("id", "type", "address", "user", "tls", "max sessions"):
        table.add_column(column)
    cap = app.settings.pool.max_sessions_per_connection
    for conn_id in sorted(app.registry):
        public = app.registry[conn_id].public()
        if public["type"] == "local":
            table.add_row(conn_id, "local", public["base_path"], "", "", "")
            continue
        table.add_row(
            conn_id,
            "ftp",
            f"{public['host']}:{public['port']}",
            str(public["user"]),
            str(public.get("tls", "none")),
            str(public["max_sessions"] or f"{cap} (default)"),
        )
    return table


def probe_table(results: list[probing.ProbeResult]) -> Table:
    table = Table(title="Probe", title_justify="left")
    for column in ("connection", "where", "result", "login", "NOOP", "detail"):
        table.add_column(column, overflow="fold")

    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:.0f} ms"

    for r in results:
        result = "[green]ok[/]" if r.ok else "[red]FAILED[/]"
        table.add_row(r.conn_id, r.where, result, ms(r.login_ms), ms(r.noop_ms), r.detail)
    return table


def status_tables(body: dict[str, Any]) -> list[Any]:
    """``/status`` as three tables: the worker, its pools, the fleet."""
    partitions: list[str] = body.get("assigned_partitions", [])
    worker = Table(title=f"Worker {body.get('worker')}", title_justify="left", show_header=False)
    worker.add_column("key")
    worker.add_column("value", overflow="fold")
    worker.add_row("version", str(body.get("version")))
    worker.add_row("ready", "yes" if body.get("ready") else "[red]no[/]")
    worker.add_row("in flight", f"{body.get('in_flight')} of max {body.get('max_in_flight')}")
    worker.add_row("completed", str(body.get("completed")))
    worker.add_row("retries waiting", str(body.get("retries_waiting")))
    by_topic: dict[str, list[str]] = {}
    for entry in partitions:
        topic, _, partition = entry.rpartition(":")
        by_topic.setdefault(topic, []).append(partition)
    for topic, numbers in sorted(by_topic.items()):
        worker.add_row(f"partitions of {topic}", ", ".join(numbers))
    statuses = body.get("task_status") or {}
    if statuses:
        owned = ", ".join(str(p) for p in statuses.get("owned_partitions", [])) or "-"
        worker.add_row("task status owner of", f"partitions {owned}")
    pools = body.get("pools", {})
    pool_table = Table(
        title=f"Session pools ({pools.get('open', 0)} open of max "
        f"{pools.get('max_sessions_per_pod')} per worker)",
        title_justify="left",
    )
    columns = ("connection", "open", "busy", "idle", "connecting", "waiting", "cap", "circuit")
    for column in columns:
        left = column in ("connection", "circuit")
        pool_table.add_column(column, justify="left" if left else "right")
    for conn_id, pool in sorted(pools.get("connections", {}).items()):
        cap = str(pool.get("max_sessions"))
        if pool.get("effective_max_sessions") != pool.get("max_sessions"):
            cap = f"{pool.get('effective_max_sessions')} (of {cap})"
        circuit = pool.get("circuit", {})
        state = str(circuit.get("state", "?"))
        if circuit.get("retry_in_seconds"):
            state += f", retry in {circuit['retry_in_seconds']} s"
        pool_table.add_row(
            conn_id,
            *(str(pool.get(k, 0)) for k in ("open", "busy", "idle", "connecting", "waiting")),
            cap,
            state,
        )
    fleet = Table(title="Fleet (live workers, from the session table)", title_justify="left")
    for column in ("connection", "worker", "open", "busy", "idle", "waiting"):
        fleet.add_column(column, justify="left" if column in ("connection", "worker") else "right")
    counted = ("open", "busy", "idle", "waiting")
    for conn_id, entry in sorted(body.get("fleet", {}).items()):
        for worker_id, counts in sorted(entry.get("workers", {}).items()):
            fleet.add_row(conn_id, worker_id, *(str(counts.get(k, 0)) for k in counted))
        total = entry.get("total", {})
        fleet.add_row(conn_id, "[bold]total[/]", *(str(total.get(k, 0)) for k in counted))
    return [worker, pool_table, fleet]

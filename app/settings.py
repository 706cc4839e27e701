"""Worker settings: built-in defaults, then the YAML file (FTP_POOLER_CONFIG), then env vars."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from models.errors import ConfigError
from models.watch import WatchSettings, check_unique

CONFIG_ENV = "FTP_POOLER_CONFIG"
CONNECTIONS_ENV = "FTP_POOLER_CONNECTIONS"
ENV_PREFIX = "FTP_POOLER_"


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_NonEmpty = Annotated[str, pydantic.StringConstraints(strip_whitespace=True, min_length=1)]
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")


class _KeyError(ValueError):
    """A cross-field problem of one key (load_settings names that key)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class KafkaSettings(_Section):
    bootstrap_servers: Annotated[
        list[_NonEmpty],
        NoDecode,
        pydantic.BeforeValidator(_split_commas),
        pydantic.Field(min_length=1),
    ] = ["localhost:9092"]
    consumer_group: _NonEmpty = "ftp-pooler"
    input_topic: _NonEmpty = "ftp-tasks"
    result_topic: _NonEmpty = "ftp-results"
    fail_topic: _NonEmpty = "ftp-failures"
    topic_partitions: int = pydantic.Field(8, ge=1)
    commit_interval_seconds: float = pydantic.Field(2.8, gt=0)
    # How long the group waits for a silent (crashed) worker before giving its partitions away.
    session_timeout_seconds: float = pydantic.Field(30, ge=6)
    heartbeat_interval_seconds: float = pydantic.Field(3, gt=0)
    # exactly_once: each task's outcome and its input offset commit in one Kafka transaction
    # (agents/transactions.py); at_least_once: outcome first, offset after (a crash repeats it).
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    transaction_interval_seconds: float = pydantic.Field(0.1, gt=0)
    # Replication of every topic the project creates (the six internal ones, and the three public
    # ones in scripts/topics.py). None: the broker's default.replication.factor /
    # min.insync.replicas, which is what managed clusters (MSK, Confluent Cloud, Strimzi) set.
    replication_factor: int | None = pydantic.Field(None, ge=1)
    min_insync_replicas: int | None = pydantic.Field(None, ge=1)
    # Results not produced or offsets not committed for this long: /ready 503, /status says why.
    unhealthy_after_seconds: float = pydantic.Field(30, gt=0)
    # Security (README "Secured Kafka"). The SASL password comes from a file or the environment
    # (FTP_POOLER_KAFKA__SASL_PASSWORD), never from the YAML file.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: pydantic.SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_check_hostname: bool = True

    @pydantic.field_validator("input_topic", "result_topic", "fail_topic", "consumer_group")
    @classmethod
    def _legal_topic_name(cls, value: str) -> str:
        # Kafka's own rule; the consumer group prefixes the internal topics' names.
        if value in (".", "..") or len(value) > 200 or not _TOPIC_CHARS.fullmatch(value):
            raise ValueError(
                "not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 200)"
            )
        return value

    @pydantic.field_validator(
        "sasl_mechanism",
        "sasl_username",
        "sasl_password",
        "sasl_password_file",
        "ssl_ca_file",
        "ssl_cert_file",
        "ssl_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @pydantic.model_validator(mode="after")
    def _consistent_security(self) -> KafkaSettings:
        protocol = self.security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol in ("SSL", "SASL_SSL")
        if not sasl:
            for key in ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file"):
                if getattr(self, key) is not None:
                    raise _KeyError(key, f"set, but security_protocol is {protocol} (no SASL)")
        else:
            if self.sasl_mechanism is None:
                raise _KeyError("sasl_mechanism", f"required with security_protocol {protocol}")
            if not self.sasl_username:
                raise _KeyError("sasl_username", f"required with security_protocol {protocol}")
            if self.sasl_password is None and self.sasl_password_file is None:
                raise _KeyError(
                    "sasl_password_file",
                    f"required with security_protocol {protocol} (or the environment "
                    f"variable {ENV_PREFIX}KAFKA__SASL_PASSWORD)",
                )
            if self.sasl_password is not None and self.sasl_password_file is not None:
                raise _KeyError("sasl_password_file", "give the password one way, not both")
        if not tls:
            for key in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
                if getattr(self, key) is not None:
                    raise _KeyError(key, f"set, but security_protocol is {protocol} (no TLS)")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            missing = "ssl_key_file" if self.ssl_key_file is None else "ssl_cert_file"
            raise _KeyError(missing, "ssl_cert_file and ssl_key_file go together (mutual TLS)")
        for key in ("sasl_password_file", "ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
            path = getattr(self, key)
            if path is not None and not os.access(path, os.R_OK):
                raise _KeyError(key, f"cannot read {path}")
        rf, isr = self.replication_factor, self.min_insync_replicas
        if rf and isr and isr > rf:
            raise _KeyError(
                "min_insync_replicas",
                f"{isr} is more than replication_factor {rf}: no write could ever succeed",
            )
        return self

    def sasl_secret(self) -> str | None:
        """The SASL password (from its file or the environment), or None without SASL."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text(encoding="utf-8").strip()
        return None


class PoolSettings(_Section):
    max_sessions_per_pod: int = pydantic.Field(100, ge=1)
    max_sessions_per_connection: int = pydantic.Field(10, ge=1)
    session_timeout_seconds: float = pydantic.Field(300, gt=0)
    acquire_timeout_seconds: float = pydantic.Field(30, gt=0)
    health_check_idle_seconds: float = pydantic.Field(30, ge=0)
    pushback_cooldown_seconds: float = pydantic.Field(60, gt=0)
    max_waiting_per_connection: int = pydantic.Field(100, ge=1)
    # False: every task logs in on a new session and QUITs it afterwards (no pooling at all),
    # for servers that mishandle long-lived sessions, and as the benchmarks' baseline.
    reuse_sessions: bool = True
    # A full line is still joined while, at the rate its sessions come back, a new task would
    # get one within this many seconds (a busy but healthy server); otherwise the task is parked.
    max_expected_wait_seconds: float = pydantic.Field(10, ge=0)
    circuit_failure_threshold: int = pydantic.Field(5, ge=1)
    circuit_open_seconds: float = pydantic.Field(5, gt=0)
    circuit_open_max_seconds: float = pydantic.Field(300, gt=0)
    report_interval_seconds: float = pydantic.Field(5, gt=0)


class TransferSettings(_Section):
    # 256 KiB: as fast as 1 MiB on large files, and below glibc's mmap threshold (app/memory.py),
    # so upload blocks reuse heap memory instead of an mmap, page faults and munmap each.
    block_size: int = pydantic.Field(256 * 1024, ge=4096)
    connect_timeout_seconds: float = pydantic.Field(10, gt=0)
    command_timeout_seconds: float = pydantic.Field(30, gt=0)
    max_duration_seconds: float = pydantic.Field(3600, gt=0)
    stall_timeout_seconds: float = pydantic.Field(60, gt=0)
    # Any one local file operation (open, a buffer written, rename): a hung mount fails the task.
    local_io_timeout_seconds: float = pydantic.Field(60, gt=0)
    verify_size: bool = True


class RetrySettings(_Section):
    max_attempts: int = pydantic.Field(5, ge=1)
    backoff_initial_seconds: float = pydantic.Field(1, gt=0)
    backoff_max_seconds: float = pydantic.Field(300, gt=0)
    max_pending: int = pydantic.Field(10_000, ge=1)


class ApiSettings(_Section):
    host: str = "0.0.0.0"
    port: int = pydantic.Field(8080, ge=1, le=65535)
    # How the other workers reach this one's API (requests for a task another worker owns are
    # forwarded there). Empty: ``host``, or this machine's fully qualified name when ``host``
    # listens on every address (in a StatefulSet, the pod's name under its headless Service).
    advertised_host: str = ""
    # When set, POST requests need ``Authorization: Bearer <token>``; GETs stay open for probes.
    token: pydantic.SecretStr | None = None
    task_retention_hours: float = pydantic.Field(24, gt=0)
    max_request_bytes: int = pydantic.Field(1024 * 1024, ge=1024)
    # POST /tasks answers 503 when Kafka has not taken the tasks within this time.
    produce_timeout_seconds: float = pydantic.Field(10, gt=0)

    @pydantic.field_validator("token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value


class MetricsSettings(_Section):
    port: int = pydantic.Field(9090, ge=0, le=65535)  # 0 turns the metrics endpoint off


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"

    @pydantic.field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class WorkerSettings(_Section):
    id: str = pydantic.Field(default_factory=socket.gethostname, min_length=1)
    # Tasks held at once: transferring, or waiting for a session (transfers themselves are
    # bounded by the session caps).
    max_in_flight: int = pydantic.Field(1000, ge=1)
    shutdown_grace_seconds: float = pydantic.Field(25, ge=0)
    data_dir: Path = Path("ftp-pooler-data")


class Settings(BaseSettings):
    """Everything a worker is configured with (SPEC section 3)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", case_sensitive=False
    )

    kafka: KafkaSettings = KafkaSettings()
    pool: PoolSettings = PoolSettings()
    transfer: TransferSettings = TransferSettings()
    retry: RetrySettings = RetrySettings()
    api: ApiSettings = ApiSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    worker: WorkerSettings = pydantic.Field(default_factory=WorkerSettings)
    # Directory watches (agents/watch.py): remote directories turned into tasks.
    watches: Annotated[list[WatchSettings], pydantic.AfterValidator(check_unique)] = []
    connections_file: Path = Path("connections.ini")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)


def load_settings() -> Settings:
    """Read the YAML file (if any) and the environment; raise :class:`ConfigError` when invalid."""
    config_path = os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    source = "built-in defaults and FTP_POOLER_* environment"
    if config_path:
        source = config_path
        data = _read_yaml(Path(config_path))
    unknown = sorted(str(key) for key in data if key not in Settings.model_fields)
    if unknown:
        sections = ", ".join(n for n in Settings.model_fields if n != "connections_file")
        raise ConfigError(source, f"unknown section (known: {sections})", key=unknown[0])
    kafka = data.get("kafka")
    if isinstance(kafka, dict) and "sasl_password" in kafka:
        raise ConfigError(
            source,
            "a password does not belong in the config file: use kafka.sasl_password_file or "
            f"the environment variable {ENV_PREFIX}KAFKA__SASL_PASSWORD",
            key="kafka.sasl_password",
        )
    connections = os.environ.get(CONNECTIONS_ENV)
    if connections:
        data["connections_file"] = connections
    try:
        return Settings(**data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        key = ".".join(str(part) for part in first["loc"])
        message = first["msg"]
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, _KeyError):  # a cross-field check: name the key it is about
            key, message = f"{key}.{cause.key}", str(cause)
        elif isinstance(cause, ValueError):
            message = str(cause)
        hint = f" (or {ENV_PREFIX}{key.upper().replace('.', '__')})"
        raise ConfigError(source, message + hint, key=key) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping of sections")
    return data

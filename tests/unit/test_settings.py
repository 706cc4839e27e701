"""Settings precedence: environment over YAML over built-in defaults."""

import pytest

from app.settings import load_settings
from models.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("FTP_POOLER_"):
            monkeypatch.delenv(name)


def test_defaults_match_the_spec():
    """With no file and no environment the SPEC defaults apply."""
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == ["localhost:9092"]
    assert settings.kafka.input_topic == "ftp-tasks"
    assert settings.pool.max_sessions_per_pod == 100
    assert settings.pool.max_sessions_per_connection == 10
    assert settings.pool.session_timeout_seconds == 300
    assert (settings.api.port, settings.metrics.port) == (8080, 9090)
    assert (settings.logging.level, settings.logging.format) == ("INFO", "json")


def test_environment_overrides_yaml_which_overrides_defaults(tmp_path, monkeypatch):
    """A key set in both places takes the environment's value."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "kafka:\n  consumer_group: from-yaml\n  input_topic: yaml-tasks\n"
        "pool:\n  max_sessions_per_pod: 7\n"
    )
    monkeypatch.setenv("FTP_POOLER_CONFIG", str(config))
    monkeypatch.setenv("FTP_POOLER_KAFKA__INPUT_TOPIC", "env-tasks")
    monkeypatch.setenv("FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS", "a:9092,b:9092")
    settings = load_settings()
    assert settings.kafka.consumer_group == "from-yaml"
    assert settings.kafka.input_topic == "env-tasks"
    assert settings.kafka.bootstrap_servers == ["a:9092", "b:9092"]
    assert settings.pool.max_sessions_per_pod == 7


def test_invalid_value_names_file_and_key(tmp_path, monkeypatch):
    """A bad value stops start-up with the file and the dotted key."""
    config = tmp_path / "config.yaml"
    config.write_text("pool:\n  max_sessions_per_pod: -1\n")
    monkeypatch.setenv("FTP_POOLER_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"{config} pool.max_sessions_per_pod:")


def test_unknown_key_in_yaml_is_rejected(tmp_path, monkeypatch):
    """A typo in a section is an error, not a silently ignored setting."""
    config = tmp_path / "config.yaml"
    config.write_text("pool:\n  max_session_per_pod: 5\n")
    monkeypatch.setenv("FTP_POOLER_CONFIG", str(config))
    with pytest.raises(ConfigError, match="max_session_per_pod"):
        load_settings()


def test_unreadable_yaml_is_a_config_error(tmp_path, monkeypatch):
    """A missing config file is named in the error."""
    monkeypatch.setenv("FTP_POOLER_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings()

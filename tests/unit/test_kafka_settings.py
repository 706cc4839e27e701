"""Kafka security, replication and health settings: validated at start-up, applied to Faust,
and never overridden by Faust's own environment variables."""

from __future__ import annotations

import os
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from app import kafka_client
from app.kafka_health import KafkaHealth
from app.logs import config_summary
from app.main import create_app
from app.settings import Settings, load_settings
from models.connections import Registry
from models.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("FTP_POOLER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "password"
    path.write_text("file-secret-pw\n")
    return path


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SECURITY_PROTOCOL": "SASL_SSL"}, "kafka.sasl_mechanism"),
        ({"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "PLAIN"}, "kafka.sasl_username"),
        (
            {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "PLAIN", "SASL_USERNAME": "u"},
            "kafka.sasl_password_file",
        ),
        ({"SASL_USERNAME": "u"}, "kafka.sasl_username"),
        ({"SSL_CA_FILE": "/etc/hostname"}, "kafka.ssl_ca_file"),
        ({"SECURITY_PROTOCOL": "SSL", "SSL_CERT_FILE": "/etc/hostname"}, "kafka.ssl_key_file"),
        ({"SECURITY_PROTOCOL": "SSL", "SSL_CA_FILE": "/no/such/ca.pem"}, "kafka.ssl_ca_file"),
        ({"SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol"),
        ({"SASL_MECHANISM": "GSSAPI"}, "kafka.sasl_mechanism"),
        ({"REPLICATION_FACTOR": "2", "MIN_INSYNC_REPLICAS": "3"}, "kafka.min_insync_replicas"),
        ({"INPUT_TOPIC": "tasks/today"}, "kafka.input_topic"),
    ],
)
def test_bad_security_combinations_name_the_key(monkeypatch, env, key):
    """Each inconsistent combination is one configuration error naming its key."""
    for name, value in env.items():
        monkeypatch.setenv(f"FTP_POOLER_KAFKA__{name}", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f" {key}: " in f" {caught.value}", str(caught.value)


def test_a_password_in_the_yaml_file_is_refused(tmp_path, monkeypatch):
    """The SASL password comes from a file or the environment, never the config file."""
    config = tmp_path / "config.yaml"
    config.write_text("kafka:\n  sasl_password: yaml-secret\n")
    monkeypatch.setenv("FTP_POOLER_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "kafka.sasl_password" in str(caught.value)
    assert "yaml-secret" not in str(caught.value)


def test_sasl_ssl_settings_reach_faust_and_the_clients(monkeypatch, secret_file, tmp_path):
    """SASL_SSL with SCRAM-SHA-512 becomes Faust's credentials and aiokafka's options, with the
    broker's name checked; the summary logged at start shows the password only as "set"."""
    monkeypatch.setenv("FTP_POOLER_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FTP_POOLER_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FTP_POOLER_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("FTP_POOLER_KAFKA__SASL_PASSWORD_FILE", str(secret_file))
    monkeypatch.setenv("FTP_POOLER_WORKER__DATA_DIR", str(tmp_path / "data"))
    settings = load_settings()
    options = kafka_client.client_options(settings.kafka)
    assert options["sasl_plain_password"] == "file-secret-pw"
    assert options["ssl_context"].check_hostname
    credentials: Any = kafka_client.faust_credentials(settings.kafka)
    assert credentials is not None and credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    summary = str(config_summary(settings, Registry({})))
    assert "'sasl_password': 'set'" in summary and "file-secret-pw" not in summary
    assert "file-secret-pw" not in str(kafka_client.public_security(settings.kafka))


def test_fausts_unprefixed_variables_change_nothing(monkeypatch, tmp_path):
    """BROKER_URL, WEB_PORT, TOPIC_PARTITIONS, TOPIC_REPLICATION_FACTOR are not Faust's to read."""
    monkeypatch.setenv("BROKER_URL", "kafka://wrong:1")
    monkeypatch.setenv("WEB_PORT", "1")
    monkeypatch.setenv("TOPIC_PARTITIONS", "1")
    monkeypatch.setenv("TOPIC_REPLICATION_FACTOR", "7")
    settings = Settings(
        kafka={"bootstrap_servers": ["right:9092"], "replication_factor": 3},
        worker={"data_dir": tmp_path / "data"},
    )
    app = create_app(settings, Registry({}))
    assert [str(url) for url in app.conf.broker] == ["kafka://right:9092"]
    assert app.conf.web_port == 8080
    assert app.conf.topic_partitions == 8
    assert app.conf.topic_replication_factor == 3


def test_the_topic_plan_covers_every_topic_the_app_declares(tmp_path):
    """Every internal topic and changelog of the app is created by us (with the configured
    replication), none left to Faust's own creation."""
    settings = Settings(
        kafka={"consumer_group": "plan", "min_insync_replicas": 2},
        worker={"data_dir": tmp_path / "data"},
    )
    app = create_app(
        settings,
        Registry({}),
    )
    declared = {t.get_topic_name() for t in app.internal_topics}
    declared |= {t.changelog_topic.get_topic_name() for t in app.tables.values()}
    declared.add("plan-__assignor-__leader")  # Faust's LeaderAssignor topic
    planned = kafka_client.internal_topics(settings.kafka)
    assert {spec.name for spec in planned} == declared
    assert all(
        kafka_client.topic_config(spec, settings.kafka)["min.insync.replicas"] == "2"
        for spec in planned
    )


def test_health_turns_unready_on_unanswered_sends_and_hanging_commits():
    """A send unanswered, or a commit pending, longer than the limit is a problem; a failure
    metric counts failed sends and hung commits."""
    now = [0.0]
    health = KafkaHealth(10, clock=lambda: now[0])
    token = health.on_send_initiated(None, "t", None, 1, 1)
    now[0] = 9
    assert health.healthy()
    now[0] = 11
    assert "not acknowledged" in health.problems()[0]
    health.on_send_error(None, TimeoutError("gone"), token)
    assert health.healthy() and health.produce_failures_total == 1
    now[0] = 30
    assert "producing has failed" in health.problems()[0]
    health.on_send_completed(None, health.on_send_initiated(None, "t", None, 1, 1), None)
    assert health.healthy()
    health.on_commit_initiated(None)
    now[0] = 41
    assert health.problems() == ["offset commit pending for 11 s"]
    assert health.commit_failures_total == 1
    health.on_commit_completed(None, None)
    assert health.healthy()
    registry = CollectorRegistry()
    from app.kafka_health import KafkaFailuresCollector

    registry.register(KafkaFailuresCollector(health))
    assert (
        registry.get_sample_value("ftp_pooler_kafka_failures_total", {"operation": "commit"}) == 1
    )

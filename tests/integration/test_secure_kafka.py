"""Workers against a secured broker (SASL_SSL with SCRAM-SHA-512, mutual TLS), its refusals, a
broker that does not create topics, and Faust's own variables and flags kept out.

`make test` starts the secured broker (scripts/local-kafka.sh with KAFKA_SECURE=1 and
KAFKA_AUTO_CREATE_TOPICS=false) on its own ports and names its state directory in
FTP_POOLER_TEST_SECURE_KAFKA_STATE; without it these tests fail, they never skip.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.kafka_client import create_topics, public_topics
from app.settings import KafkaSettings
from scripts.ftpd import EmbeddedFTPServer
from tests.support.kafka_secure import SecureBroker
from tests.support.stack import (
    Names,
    Worker,
    closed_port,
    collect,
    free_port,
    produce,
    task,
    write_connections,
)

FTP_PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def secure() -> SecureBroker:
    state = os.environ.get("FTP_POOLER_TEST_SECURE_KAFKA_STATE")
    if not state or not (Path(state) / "client.json").exists():
        pytest.fail("no secured broker: run the suite with `make test` (it starts one)")
    return SecureBroker.load(Path(state))


def sasl_env(secure: SecureBroker, password: str | None = None) -> dict[str, str]:
    return {
        "FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": secure.sasl_bootstrap,
        "FTP_POOLER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "FTP_POOLER_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "FTP_POOLER_KAFKA__SASL_USERNAME": secure.username,
        # From the environment (the other way is a file): it must show up nowhere.
        "FTP_POOLER_KAFKA__SASL_PASSWORD": password or secure.password(),
        "FTP_POOLER_KAFKA__SSL_CA_FILE": str(secure.ca_file),
    }


def mtls_env(secure: SecureBroker) -> dict[str, str]:
    return {
        "FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": secure.mtls_bootstrap,
        "FTP_POOLER_KAFKA__SECURITY_PROTOCOL": "SSL",
        "FTP_POOLER_KAFKA__SSL_CA_FILE": str(secure.ca_file),
        "FTP_POOLER_KAFKA__SSL_CERT_FILE": str(secure.cert_file),
        "FTP_POOLER_KAFKA__SSL_KEY_FILE": str(secure.key_file),
    }


def admin_settings(secure: SecureBroker) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=[secure.plaintext_bootstrap])


async def make_public_topics(secure: SecureBroker, names: Names) -> None:
    kafka = admin_settings(secure).model_copy(
        update={
            "input_topic": names.tasks,
            "result_topic": names.results,
            "fail_topic": names.failures,
        }
    )
    await create_topics(kafka, public_topics(kafka, 2))


def plain(secure: SecureBroker) -> dict[str, Any]:
    return {"bootstrap_servers": secure.plaintext_bootstrap}


class Files:
    """An FTP server and local storage with files to move both ways."""

    def __init__(self, root: Path, count: int) -> None:
        self.root = root
        self.ftp_root = root / "ftp"
        self.storage = root / "storage"
        self.storage.mkdir(parents=True)
        self.ftp = EmbeddedFTPServer(self.ftp_root, password=FTP_PASSWORD).start()
        self.connections = write_connections(
            root / "connections.ini", self.ftp.port, self.storage, password=FTP_PASSWORD
        )
        self.tasks: list[dict[str, str]] = []
        self.expected: dict[str, tuple[Path, str]] = {}
        for n in range(count):
            data = os.urandom(1000 + 997 * n)
            (self.ftp_root / "out").mkdir(parents=True, exist_ok=True)
            (self.ftp_root / "out" / f"f{n}.bin").write_bytes(data)
            self.tasks.append(task(f"dl-{n}", "ftp-a", f"/out/f{n}.bin", "local", f"/in/f{n}.bin"))
            self.expected[f"dl-{n}"] = (self.storage / "in" / f"f{n}.bin", sha(data))
            (self.storage / "up").mkdir(exist_ok=True)
            (self.storage / "up" / f"u{n}.bin").write_bytes(data[::-1])
            self.tasks.append(task(f"ul-{n}", "local", f"/up/u{n}.bin", "ftp-a", f"/in/u{n}.bin"))
            self.expected[f"ul-{n}"] = (self.ftp_root / "in" / f"u{n}.bin", sha(data[::-1]))

    def check(self, received: list[Any]) -> None:
        assert sorted(r.value["task_id"] for r in received) == sorted(self.expected)
        for r in received:
            path, digest = self.expected[r.value["task_id"]]
            assert r.value["status"] == "success", r.value
            assert sha(path.read_bytes()) == digest == r.value["sha256"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_secret_nowhere(secret: str, worker: Worker, *texts: str) -> None:
    assert secret not in worker.log_text()
    for text in texts:
        assert secret not in text


def exits_with_one_line(worker: Worker, timeout: float = 60) -> tuple[int, str, list[int]]:
    """Wait for the worker to exit; returns its code, its output, and the /ready answers seen
    meanwhile."""
    assert worker.process is not None
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while worker.process.poll() is None:
        assert time.monotonic() < deadline, f"worker still running:\n{worker.tail()}"
        seen.append(worker.get("/ready")[0])
        time.sleep(0.2)
    return worker.process.returncode, worker.log_text(), seen


async def test_sasl_ssl_scram_sha_512_worker_moves_files_and_shows_no_secret(
    secure: SecureBroker, tmp_path: Path
) -> None:
    """A worker authenticating with SCRAM-SHA-512 over TLS (broker name verified) moves files
    both ways byte-identical; the password is in no log line, result, API answer or metric."""
    files, names = Files(tmp_path, 10), Names()
    await make_public_topics(secure, names)
    worker = Worker(tmp_path, names, files.connections, extra_env=sasl_env(secure))
    worker.start().wait_ready(90)
    client = secure.sasl_client_kwargs()  # the test's own clients go through SASL_SSL too
    await produce(names.tasks, files.tasks, client=client)
    received = await collect(names, len(files.tasks), timeout=120, client=client)
    files.check(received)
    status = worker.get("/status")[1]
    assert status["kafka"]["security_protocol"] == "SASL_SSL"
    assert status["kafka"]["sasl_password"] == "set"
    metrics = worker.get("/metrics", worker.metrics_port)[1]
    assert 'ftp_pooler_kafka_failures_total{operation="produce"} 0.0' in metrics
    assert worker.stop() == 0
    started = next(line for line in worker.log_text().splitlines() if "worker_started" in line)
    assert '"sasl_password": "set"' in started
    assert_secret_nowhere(
        secure.password(), worker, str(status), metrics, str([r.value for r in received])
    )
    files.ftp.stop()


async def test_mtls_worker_moves_files(secure: SecureBroker, tmp_path: Path) -> None:
    """A worker presenting its client certificate on the mutual-TLS listener moves files."""
    files, names = Files(tmp_path, 5), Names()
    await make_public_topics(secure, names)
    worker = Worker(tmp_path, names, files.connections, extra_env=mtls_env(secure))
    worker.start().wait_ready(90)
    await produce(names.tasks, files.tasks, client=plain(secure))
    files.check(await collect(names, len(files.tasks), timeout=120, client=plain(secure)))
    assert worker.get("/status")[1]["kafka"]["ssl_client_certificate"] is True
    assert worker.stop() == 0
    files.ftp.stop()


async def test_wrong_password_stops_the_worker_with_one_line(
    secure: SecureBroker, tmp_path: Path
) -> None:
    """Refused SCRAM credentials: one line naming the user and the refusal, no traceback, exit
    2, /ready never 200, and the wrong password shown nowhere."""
    names, wrong = Names(), "wrong-Pa55word-xyz"
    connections = write_connections(tmp_path / "c.ini", closed_port(), tmp_path)
    worker = Worker(tmp_path, names, connections, extra_env=sasl_env(secure, wrong))
    worker.start()
    code, output, ready = exits_with_one_line(worker)
    print(f"exit {code}: {output.strip()}")
    assert code == 2
    assert "Traceback" not in output
    assert "Kafka refused the SASL login of user 'ftp-pooler' (SCRAM-SHA-512)" in output
    assert len(output.strip().splitlines()) == 2  # the run marker and the one line
    assert 200 not in ready
    assert_secret_nowhere(wrong, worker)
    assert_secret_nowhere(secure.password(), worker)


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    other = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=someone else", "-keyout", str(tmp_path / "other.key"), "-out", str(other)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return other


async def test_untrusted_broker_certificate_stops_the_worker_with_one_line(
    secure: SecureBroker, tmp_path: Path, other_ca: Path
) -> None:
    """A CA that did not sign the broker's certificate: one line, exit 2, /ready never 200."""
    connections = write_connections(tmp_path / "c.ini", closed_port(), tmp_path)
    env = sasl_env(secure) | {"FTP_POOLER_KAFKA__SSL_CA_FILE": str(other_ca)}
    worker = Worker(tmp_path, Names(), connections, extra_env=env)
    worker.start()
    code, output, ready = exits_with_one_line(worker)
    print(f"exit {code}: {output.strip()}")
    assert code == 2
    assert "Traceback" not in output
    assert "the broker's TLS certificate is not trusted" in output
    assert len(output.strip().splitlines()) == 2
    assert 200 not in ready
    assert_secret_nowhere(secure.password(), worker)


async def test_missing_input_topics_wait_visibly_then_are_consumed_once_created(
    secure: SecureBroker, tmp_path: Path
) -> None:
    """On a broker that does not auto-create topics, a worker started before its topics exist
    answers /ready 503, names the missing topics in a log line every few seconds and in
    /status, creates none of them, and consumes once they are created, without a restart."""
    files, names = Files(tmp_path, 2), Names()
    env = {"FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": secure.plaintext_bootstrap}
    worker = Worker(tmp_path, names, files.connections, extra_env=env).start()
    missing = {names.tasks, names.results, names.failures}
    deadline = time.monotonic() + 60
    while worker.log_text().count('"topics_missing"') < 2:
        assert time.monotonic() < deadline, worker.tail()
        assert worker.process is not None and worker.process.poll() is None, worker.tail()
        await asyncio.sleep(0.5)
    status = worker.get("/status")
    ready = worker.get("/ready")[0]
    print(f"/ready {ready} while waiting; /status waiting_for_topics "
          f"{status[1]['kafka']['waiting_for_topics']}")  # fmt: skip
    assert ready == 503
    assert set(status[1]["kafka"]["waiting_for_topics"]) == missing
    admin = AIOKafkaAdminClient(**plain(secure))
    await admin.start()
    try:
        assert not missing & set(await admin.list_topics())  # nothing auto-created
    finally:
        await admin.close()
    created_at = time.monotonic()
    await make_public_topics(secure, names)
    await produce(names.tasks, files.tasks, client=plain(secure))
    files.check(await collect(names, len(files.tasks), timeout=90, client=plain(secure)))
    print(f"results {time.monotonic() - created_at:.1f} s after the topics were created")
    assert worker.get("/ready")[0] == 200
    assert worker.stop() == 0
    files.ftp.stop()


def test_an_invalid_topic_name_stops_the_worker_with_exit_2(tmp_path: Path) -> None:
    """A topic name Kafka cannot have is a configuration error naming the key."""
    connections = write_connections(tmp_path / "c.ini", closed_port(), tmp_path)
    env = {"FTP_POOLER_KAFKA__INPUT_TOPIC": "ftp tasks/today"}
    worker = Worker(tmp_path, Names(), connections, extra_env=env)
    worker.start()
    code, output, _ = exits_with_one_line(worker)
    assert code == 2
    assert "kafka.input_topic: not a valid Kafka topic name" in output
    assert "Traceback" not in output


async def test_fausts_unprefixed_variables_do_not_override_our_settings(
    secure: SecureBroker, tmp_path: Path
) -> None:
    """BROKER_URL, WEB_PORT, TOPIC_PARTITIONS and TOPIC_REPLICATION_FACTOR set to wrong values
    change nothing: the worker uses the FTP_POOLER_* broker and port (a replication factor of 3
    would be refused by this single broker), and moves a file."""
    files, names = Files(tmp_path, 1), Names()
    await make_public_topics(secure, names)
    web_port = free_port()
    env = {
        "FTP_POOLER_KAFKA__BOOTSTRAP_SERVERS": secure.plaintext_bootstrap,
        "BROKER_URL": f"kafka://127.0.0.1:{closed_port()}",
        "WEB_PORT": str(web_port),
        "TOPIC_PARTITIONS": "1",
        "TOPIC_REPLICATION_FACTOR": "3",
    }
    worker = Worker(tmp_path, names, files.connections, extra_env=env)
    worker.start().wait_ready(90)
    assert worker.get("/ready", web_port)[0] == 0  # nothing listens on WEB_PORT
    await produce(names.tasks, files.tasks, client=plain(secure))
    files.check(await collect(names, len(files.tasks), timeout=90, client=plain(secure)))
    retries = [p for p in worker.get("/status")[1]["assigned_partitions"] if "-retries:" in p]
    assert len(retries) == 8  # kafka.topic_partitions, not TOPIC_PARTITIONS
    assert worker.stop() == 0
    files.ftp.stop()


def test_fausts_worker_flags_that_override_settings_are_refused(tmp_path: Path) -> None:
    """`worker --web-port N` would silently replace api.port: one line, exit 2."""
    connections = write_connections(tmp_path / "c.ini", closed_port(), tmp_path)
    worker = Worker(tmp_path, Names(), connections)
    env = worker.env()
    result = subprocess.run(
        [str(Path(sys.executable).with_name("faust")), "-A", "app", "worker", "--web-port",
         "1234"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "ftp-pooler: cannot start: --web-port is not used: set api.port (FTP_POOLER_*) instead"
    )

"""Read how to reach the secured broker and the 3-node cluster that scripts/local-kafka.sh starts.

`KAFKA_SECURE=1 scripts/local-kafka.sh up` writes `<state>/client.json`; `scripts/local-kafka.sh
cluster-up` writes `<cluster state>/cluster.json`. These helpers turn them into aiokafka client
arguments and drive the script; they start nothing by themselves.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local-kafka.sh"


@dataclass(frozen=True)
class SecureBroker:
    """The secured single broker: SASL_SSL (SCRAM/PLAIN) and mTLS listeners, plus PLAINTEXT."""

    kafka_version: str
    plaintext_bootstrap: str
    sasl_bootstrap: str
    mtls_bootstrap: str
    sasl_mechanisms: tuple[str, ...]
    username: str
    password_file: Path
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def load(cls, state_dir: Path) -> SecureBroker:
        """Read `<state_dir>/client.json`."""
        raw = json.loads((state_dir / "client.json").read_text())
        return cls(
            kafka_version=raw["kafka_version"],
            plaintext_bootstrap=raw["plaintext_bootstrap"],
            sasl_bootstrap=raw["sasl_bootstrap"],
            mtls_bootstrap=raw["mtls_bootstrap"],
            sasl_mechanisms=tuple(raw["sasl_mechanisms"]),
            username=raw["username"],
            password_file=Path(raw["password_file"]),
            ca_file=Path(raw["ca_file"]),
            cert_file=Path(raw["cert_file"]),
            key_file=Path(raw["key_file"]),
        )

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def ssl_context(
        self, *, client_cert: bool = False, ca_file: Path | None = None
    ) -> ssl.SSLContext:
        """A context that verifies the broker (hostname included) against our CA or `ca_file`."""
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(ca_file or self.ca_file),
            certfile=str(self.cert_file) if client_cert else None,
            keyfile=str(self.key_file) if client_cert else None,
        )
        return context

    def sasl_client_kwargs(
        self,
        mechanism: str = "SCRAM-SHA-512",
        *,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> dict[str, Any]:
        """aiokafka producer/consumer/admin arguments for the SASL_SSL listener."""
        return {
            "bootstrap_servers": self.sasl_bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password() if password is None else password,
            "ssl_context": self.ssl_context(ca_file=ca_file),
        }

    def mtls_client_kwargs(self, *, client_cert: bool = True) -> dict[str, Any]:
        """aiokafka arguments for the mutual-TLS listener (client certificate CN=ftp-pooler)."""
        return {
            "bootstrap_servers": self.mtls_bootstrap,
            "security_protocol": "SSL",
            "ssl_context": self.ssl_context(client_cert=client_cert),
        }


@dataclass(frozen=True)
class ClusterNode:
    node_id: int
    bootstrap: str | None  # None for the split layout's controller-only node 0
    pid_file: Path
    log_dir: Path


@dataclass(frozen=True)
class KafkaCluster:
    """The 3-broker KRaft cluster (RF 3, min.insync.replicas 2) and its per-node controls."""

    state_dir: Path
    port: int
    kafka_version: str
    layout: str
    bootstrap: str
    nodes: tuple[ClusterNode, ...]

    @classmethod
    def load(cls, state_dir: Path, port: int) -> KafkaCluster:
        """Read `<state_dir>/cluster.json`; `port` is the KAFKA_CLUSTER_PORT it was started with."""
        raw = json.loads((state_dir / "cluster.json").read_text())
        nodes = tuple(
            ClusterNode(
                node_id=node["node_id"],
                bootstrap=node["bootstrap"],
                pid_file=Path(node["pid_file"]),
                log_dir=Path(node["log_dir"]),
            )
            for node in raw["nodes"]
        )
        return cls(
            state_dir=state_dir,
            port=port,
            kafka_version=raw["kafka_version"],
            layout=raw["layout"],
            bootstrap=raw["bootstrap"],
            nodes=nodes,
        )

    def node(self, node_id: int) -> ClusterNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    def script(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run `scripts/local-kafka.sh <args>` on this cluster (node-kill N, node-start N...)."""
        return run_script(
            *args,
            env=cluster_env(self.port, self.state_dir, self.kafka_version, self.layout),
            timeout=timeout,
        )


def secure_env(port: int, state_dir: Path, version: str = "4.4.0") -> dict[str, str]:
    """The environment for `scripts/local-kafka.sh up|down` of a secured broker on `port`."""
    return {
        "KAFKA_SECURE": "1",
        "KAFKA_PORT": str(port),
        "KAFKA_STATE_DIR": str(state_dir),
        "KAFKA_VERSION": version,
    }


def cluster_env(
    port: int, state_dir: Path, version: str = "4.4.0", layout: str = "combined"
) -> dict[str, str]:
    """The environment for the cluster commands of a cluster based on `port`. Stopping gives up
    after 5 s, not 20: a lone survivor's controlled shutdown waits for peers that are gone."""
    return {
        "KAFKA_STOP_TIMEOUT": "5",
        "KAFKA_CLUSTER_PORT": str(port),
        "KAFKA_CLUSTER_STATE_DIR": str(state_dir),
        "KAFKA_VERSION": version,
        "KAFKA_CLUSTER_LAYOUT": layout,
    }


def run_script(
    *args: str, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run scripts/local-kafka.sh; raise with its output when it fails."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    full_env.update(env)
    result = subprocess.run(
        [str(SCRIPT), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"local-kafka.sh {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result

"""The clusters of tests/cluster: started by the tests themselves through scripts/local-kafka.sh."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.support.kafka_secure import REPO, KafkaCluster, cluster_env, run_script

VERSION = os.environ.get("FTP_POOLER_KAFKA_SETUPS_VERSION", "4.4.0")
STATE = REPO / ".local" / "test-cluster"
BASE_PORT = int(os.environ.get("FTP_POOLER_TEST_CLUSTER_PORT", "19740"))
COMBINED_PORT = BASE_PORT  # nodes on +0/+2/+4, controllers one above each
SPLIT_PORT = BASE_PORT + 20  # brokers on +20/+22/+24, the controller-only node on +26
WORKER_PORT = BASE_PORT + 40  # the worker test's own combined cluster


def start_cluster(port: int, layout: str, purpose: str) -> KafkaCluster:
    """A fresh cluster (state wiped) on ``port``; stopped again if it does not come up."""
    state = STATE / f"{purpose}-{layout}-{VERSION}"
    env = cluster_env(port, state, VERSION, layout)
    run_script("cluster-down", env=env)  # one left by an aborted run
    shutil.rmtree(state, ignore_errors=True)
    try:
        run_script("cluster-up", env=env)
    except (RuntimeError, subprocess.TimeoutExpired):
        run_script("cluster-down", env=env)
        raise
    return KafkaCluster.load(state, port)

"""The Grafana dashboard queries only metrics the worker serves, and covers what operators need."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from faust.sensors.prometheus import FaustMetrics
from prometheus_client import CollectorRegistry

from app.metrics import ConsumerLagCollector, StateCollector, TransferMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ftp-pooler.json"
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")


def served_metric_names() -> set[str]:
    """Every sample name a worker's registry can serve (ours and Faust's sensors)."""
    registry = CollectorRegistry()
    TransferMetrics(registry)
    no_pools = SimpleNamespace(pools={}, closed_total={})
    registry.register(StateCollector(no_pools, lambda: 0))  # type: ignore[arg-type]
    registry.register(ConsumerLagCollector(dict))
    FaustMetrics.create(registry, "ftp_pooler_faust")
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES}


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_query_uses_metrics_the_worker_serves():
    served = served_metric_names()
    for expr in expressions():
        for name in re.findall(r"\bftp_pooler_\w+", expr):
            assert name in served, (name, expr)


def test_the_dashboard_covers_throughput_errors_latency_sessions_and_lag():
    joined = "\n".join(expressions())
    assert "rate(ftp_pooler_transfers_total" in joined
    assert "rate(ftp_pooler_transfer_bytes_total" in joined
    assert "sum by (error_code)" in joined
    assert (
        "histogram_quantile(0.99, sum by (le, direction) (rate(ftp_pooler_transfer_duration"
        in joined
    )
    assert "sum by (connection, state) (ftp_pooler_sessions" in joined
    assert "sum by (topic, partition) (ftp_pooler_consumer_lag)" in joined
    assert "task_id" not in joined


def test_panels_have_unique_ids_and_fit_the_grid():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area

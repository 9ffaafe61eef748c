"""The shipped monitoring (monitoring/alerts.yml, monitoring/grafana-dashboard.json) parses and
references only metric names the connector exports: the processes' metrics (connector.metrics)
and what /metrics reads from Redis at scrape time (the gauges of app.metrics.DepthCollector, the
fleet-wide counters of app.metrics.FleetCollector, run here against a real Redis).  promtool is not available: PromQL is parsed just enough to find the
metric names (label matchers, grouping clauses, ranges, strings, functions and keywords
removed)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import redis
import yaml

from tests.support.processes import ROOT

MONITORING = ROOT / "monitoring"

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count_over_time", "day_of_month", "day_of_week", "days_in_month", "delta", "deriv",
    "exp", "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log2", "log10", "max_over_time",
    "min_over_time", "minute", "month", "predict_linear", "present_over_time", "quantile_over_time",
    "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "time", "timestamp", "vector", "year",
}  # fmt: skip
KEYWORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan",
}  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name not in FUNCTIONS and name.lower() not in KEYWORDS}


def exported(redis_url: str) -> set[str]:
    """Every sample name /metrics can show: the registry's families with their suffixes, and
    the scrape-time gauges of the depth and quota collectors reading a real Redis."""
    from prometheus_client import REGISTRY

    import connector.metrics  # noqa: F401  (registers the processes' metrics)
    from app.metrics import DepthCollector, FleetCollector, QuotaCollector
    from connector.config import Settings
    from connector.keys import Keys

    names: set[str] = set()
    client = redis.Redis.from_url(redis_url)
    collectors: list[Any] = [
        REGISTRY,
        DepthCollector(client, Settings(redis_url, ())),
        QuotaCollector(client, Settings(redis_url, ())),
        FleetCollector(client, Keys("connector:")),
    ]
    for source in collectors:
        for family in source.collect():
            names.add(family.name)
            names.update(
                family.name + suffix for suffix in ("_total", "_bucket", "_sum", "_count", "_created")
            )
            names.update(sample.name for sample in family.samples)
    return {n for n in names if n.startswith("connector_")} | {n for n in names if n.startswith("process_")}


def alert_exprs() -> list[tuple[str, str]]:
    document = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert rules, "no rule in alerts.yml"
    for rule in rules:
        assert set(rule) >= {"alert", "expr"}, rule
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule["alert"]
        assert rule.get("annotations", {}).get("summary"), rule["alert"]
    return [(rule["alert"], str(rule["expr"])) for rule in rules]


def dashboard_exprs() -> list[tuple[str, str]]:
    document = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    found = [
        (panel["title"], target["expr"])
        for panel in document["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    assert document.get("uid") and found
    return found


def test_the_extractor_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'sum by (connection, reason) (increase(connector_dead_letters_total{reason="x_y"}[15m])) > 0 '
        "and on(queue) histogram_quantile(0.99, sum by (le) (rate(connector_request_latency_seconds_bucket[5m]))) "
        "/ ignoring(target) connector_backlog_limit unless absent(connector_workers_alive) > bool 1e3"
    )
    assert metric_names(expr) == {
        "connector_dead_letters_total",
        "connector_request_latency_seconds_bucket",
        "connector_backlog_limit",
        "connector_workers_alive",
    }


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_monitoring_references_only_exported_metrics(source: str, redis_url: str) -> None:
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    known = exported(redis_url)
    unknown = {(name, metric) for name, expr in exprs for metric in metric_names(expr) if metric not in known}
    assert not unknown, f"not exported by the connector: {sorted(unknown)}"
    assert all(metric_names(expr) for _, expr in exprs)  # each expression names a metric


def test_the_alerts_spec_12_asks_for_are_there() -> None:
    names = {name for name, _ in alert_exprs()}
    assert {
        "ConnectorDeadLettersRising",
        "ConnectorWorkersAbsent",
        "ConnectorRedisWithoutPersistence",
        "ConnectorConnectionPaused",
        "ConnectorQuotaAbove80",
        "ConnectorBacklogDrainSlow",
    } <= names


def test_workers_alive_and_redis_persistence_gauges_follow_redis(redis_url: str) -> None:
    from app.metrics import DepthCollector
    from connector import heartbeat
    from connector.config import Settings
    from connector.keys import Keys

    client = redis.Redis.from_url(redis_url)
    keys = Keys("connector:")

    def gauges() -> dict[tuple[str, tuple[str, ...]], float]:
        found = {}
        for family in DepthCollector(client, Settings(redis_url, ())).collect():
            for sample in family.samples:
                found[(sample.name, tuple(sample.labels.values()))] = sample.value
        return found

    assert not [k for k in gauges() if k[0] == "connector_workers_alive"]
    heartbeat.beat(client, keys, "w1", ["voucherify.eu", "segment.us"])
    heartbeat.beat(client, keys, "w2", ["voucherify.eu"])
    heartbeat.beat(client, keys, "old", ["voucherify.us1"], now=1.0)  # long dead
    seen = gauges()
    assert seen[("connector_workers_alive", ("voucherify.eu",))] == 2
    assert seen[("connector_workers_alive", ("segment.us",))] == 1
    assert ("connector_workers_alive", ("voucherify.us1",)) not in seen
    heartbeat.gone(client, keys, "w2")
    assert gauges()[("connector_workers_alive", ("voucherify.eu",))] == 1
    aof = str(client.info("persistence").get("aof_enabled")) == "1"
    assert gauges()[("connector_redis_aof_enabled", ())] == (1 if aof else 0)
    policy = client.info("memory").get("maxmemory_policy")
    assert gauges()[("connector_redis_noeviction", ())] == (1 if policy == "noeviction" else 0)


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_counters_are_the_fleets_counted_once(source: str) -> None:
    """SPEC 16: the rules and panels count with the fleet's totals (every web answers them, for
    every process of every machine), one copy per scrape target kept, never summed over them."""
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    counters = [(name, expr) for name, expr in exprs if any(m.endswith("_total") for m in metric_names(expr))]
    assert counters
    for name, expr in counters:
        for metric in metric_names(expr):
            assert not metric.endswith("_total") or metric.startswith("connector_fleet_"), (name, metric)
        assert re.search(r"max\s+without\s*\(\s*instance\s*\)", expr), (name, expr)
    if source == "alerts":
        assert "ConnectorThrottled" in {name for name, _ in counters}  # 429s per connection
    else:
        assert any("connector_fleet_calls_total" in expr for _, expr in counters)

# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""Operations pieces in-process: /metrics without a multiprocess directory, ingest counters,
per-connection dead-letter counts, the queue snapshot, the status page's sandbox parsing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from connector import depths
from connector.config import load_settings, sandbox_fakes
from connector.contract import DESTINATION
from connector.keys import Keys
from tests.support.delivery import client, keys, redis_db_url  # noqa: F401 - fixtures
from workers.delivery.deadletters import DeadLetter, DeadLetters
from workers.targets import budgets_of

TOML = """
[[connection]]
id = "unit"
write_keys = ["wk_unit_operations"]
[connection.voucherify]
app_id = "a"
secret_key = "unit-secret-key-1"
region = "us1"
api_url = "http://127.0.0.1:9"
"""


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_metrics_fall_back_to_the_process_registry_and_count_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, redis_db_url: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    env = {
        "CONNECTIONS_FILE": str(path),
        "REDIS_URL": redis_db_url,
        "STATUS_TOKEN": "unit-status-token-0123",
        "METRICS_TOKEN": "unit-metrics-token-0123",  # the per-connection series
    }
    with caplog.at_level(logging.WARNING, logger="connector.web"):
        app = create_app(load_settings(env))
    assert "PROMETHEUS_MULTIPROC_DIR is not set" in caplog.text
    web = app.test_client()
    scrape = {"Authorization": "Bearer unit-metrics-token-0123"}
    before = web.get("/metrics", headers=scrape).text
    auth = {"Authorization": "Basic d2tfdW5pdF9vcGVyYXRpb25zOg=="}  # wk_unit_operations:
    batch = {"batch": [{"type": "track", "userId": "u", "event": "E"}, {"type": "track", "event": "E"}]}
    assert web.post("/v1/batch", json=batch, headers=auth).status_code == 200
    assert web.post("/v1/track", json={"event": "no identity"}, headers=auth).status_code == 400
    assert web.post("/v1/track", data=b"{not json", headers=auth).status_code == 400
    assert web.post("/webhooks/segment/nope", json={}).status_code == 401  # as a known id would
    after = web.get("/metrics", headers=scrape)
    assert after.status_code == 200 and after.content_type.startswith("text/plain")
    labels = {"connection": "unit", "direction": DESTINATION}
    name = "connector_events_received_total"
    assert (
        _value(after.text, name, region="us1", source="tracking_api", **labels)
        - _value(before, name, region="us1", source="tracking_api", **labels)
        == 1
    )
    # The fleet's totals too: the answering process writes its own counts before it reads them.
    fleet_received = "connector_fleet_events_received_total"
    assert _value(after.text, fleet_received, source="tracking_api", **labels) - _value(
        before, fleet_received, source="tracking_api", **labels
    ) == 1
    for rejected in ("connector_events_rejected_total", "connector_fleet_events_rejected_total"):
        for reason, count in (("missing_identity", 2), ("invalid_json", 1)):
            assert (
                _value(after.text, rejected, reason=reason, **labels)
                - _value(before, rejected, reason=reason, **labels)
                == count
            ), (rejected, reason)
    assert _value(after.text, rejected, connection="unknown", reason="invalid_signature") >= 1
    assert _value(after.text, "connector_queue_depth", queue="voucherify.us1") >= 1
    assert "unit-secret-key-1" not in after.text and "wk_unit_operations" not in after.text
    token = {"Authorization": "Bearer unit-status-token-0123"}
    assert web.get("/").status_code == 401
    page = web.get("/", headers=token)
    assert page.status_code == 200 and 'data-connection="unit"' in page.text
    assert "unit-secret-key-1" not in page.text and "wk_unit_operations" not in page.text
    assert web.get("/status.json", headers=token).json["connections"][0]["voucherify"]["region"] == "us1"
    redis.Redis.from_url(redis_db_url).delete(
        "voucherify.us1", "connector:backlog:unit", "connector:backlog_bytes:unit"
    )


def test_dead_letter_counts_per_connection(client: redis.Redis, keys: Keys) -> None:
    store = DeadLetters(client, keys)

    def record(connection: str) -> DeadLetter:
        return DeadLetter(
            connection_id=connection, direction=DESTINATION, reason="rejected", error="HTTP 400"
        )

    a = [store.add(record("a")) for _ in range(3)]
    store.add(record("b"))
    assert store.counts() == {"a": 3, "b": 1}
    assert store.remove([*a[:2], "missing"]) == 2
    assert store.remove(a[:1]) == 0  # already gone: not counted twice
    assert store.counts() == {"a": 1, "b": 1}
    store.remove(a[2:])
    assert store.counts() == {"b": 1}


def test_snapshot_reads_queues_parked_work_and_dead_letters(
    client: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    settings = load_settings({"CONNECTIONS_FILE": str(path)})
    DeadLetters(client, keys).add(
        DeadLetter(connection_id="unit", direction=DESTINATION, reason="rejected", error="x")
    )
    DeadLetters(client, keys).add(
        DeadLetter(connection_id="gone", direction=DESTINATION, reason="rejected", error="x")
    )
    client.zadd(keys.delayed, {"e1": 0, "e2": 10**15})
    snap = depths.snapshot(client, settings, keys, budgets=budgets_of)
    assert snap.delayed == 2 and snap.delayed_due == 1
    assert snap.dead_letters == 2
    assert snap.connections[0].dead_letters == 1 and snap.dead_letters_unconfigured == {"gone": 1}
    # No quota configured: the assumed Business plan's budgets, at the default share (half).
    limits = {r.target: r.limit for r in snap.connections[0].rate_limits}
    assert limits == {
        "api_calls_minute": 50,
        "api_calls_cycle": 50_000,
        "bulk_calls_hour": 0,  # none on Business: never bulk
        "webhook_calls_day": 72_000,
    }
    assert snap.connections[0].paused is None


def test_sandbox_fakes_accepts_loopback_urls_only() -> None:
    env = {
        "CONNECTOR_SANDBOX_FAKES": "voucherify=http://127.0.0.1:8100, segment=http://evil.example:80,x=javascript:1"
    }
    assert sandbox_fakes(env) == {"voucherify": "http://127.0.0.1:8100"}
    assert sandbox_fakes({}) == {}


def test_outcome_lines_leave_out_what_does_not_apply(caplog: pytest.LogCaptureFixture) -> None:
    """A skip has no action, status or attempt: the line says nothing about them (no ``=None``)."""
    from connector.logs import HumanFormatter, JsonFormatter
    from workers.delivery import outcomes

    with caplog.at_level(logging.INFO, logger="connector.outcome"):
        outcomes.skipped("acme", "segment_to_voucherify", "track_filtered", message_id="m-1")
        outcomes.report(
            connection="acme",
            direction="segment_to_voucherify",
            outcome="delivered",
            message_id="m-2",
            action="add_custom_event",
            status=200,
            attempt=1,
            latency_ms=12,
        )
    skip, delivered = caplog.records
    human = HumanFormatter().format(skip)
    assert "None" not in human
    assert "reason=track_filtered" in human and "message_id=m-1" in human
    data = json.loads(JsonFormatter("worker").format(skip))
    assert {"action", "status", "attempt", "latency_ms"}.isdisjoint(data)
    assert data["reason"] == "track_filtered" and data["outcome"] == "skipped"
    full = json.loads(JsonFormatter("worker").format(delivered))
    assert (full["action"], full["status"], full["attempt"], full["latency_ms"]) == (
        "add_custom_event",
        200,
        1,
        12,
    )
    assert "reason" not in full

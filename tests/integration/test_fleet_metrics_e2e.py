"""Fleet-wide metrics end to end (issue 23, SPEC 16): no shared metrics directory anywhere.

Two web processes (one gunicorn with 2 workers and no PROMETHEUS_MULTIPROC_DIR, one with a
directory of its own) and Celery workers "on other machines" (a directory of their own, or none):
every web process answers the same fleet totals, counting the workers' deliveries; a worker
stopped with SIGTERM has written its last counts before it exits.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.processes import METRICS_TOKEN, wait_until

pytestmark = pytest.mark.integration

CONNECTION = "fleet"
WRITE_KEY = "wk_fleet_metrics_write_key"
APP_ID = "fleet-app-id"
SECRET = "fleet-vf-secret-key-5c1e"
EVENTS = "/v1/events"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def connections(url: str) -> str:
    return f"""
[[connection]]
id = "{CONNECTION}"
write_keys = ["{WRITE_KEY}"]
[connection.voucherify]
coalesce_window_seconds = 0
app_id = "{APP_ID}"
secret_key = "{SECRET}"
region = "eu"
api_url = "{url}"
rate_limit_per_minute = 6000
"""


def scrape(url: str, token: str | None = METRICS_TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text[:300]
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def fleet_view(samples: Samples) -> dict[str, float]:
    """What the fleet's counters say (the numbers every web must agree on), summed over the
    connections (one here): a web without METRICS_TOKEN shows these totals without ids."""
    return {
        "received": total(samples, "connector_fleet_events_received_total"),
        "delivered": total(samples, "connector_fleet_deliveries_total", outcome="delivered"),
        "calls_200": total(samples, "connector_fleet_calls_total", status="200"),
    }


def track(i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": f"fleet-user-{i}",
        "event": "Order Completed",
        "messageId": f"fleet-{i}",
    }


def send(url: str, first: int, count: int) -> None:
    def one(i: int) -> int:
        # A connection each: both gunicorn workers take requests.
        headers = {"Connection": "close"}
        return requests.post(
            f"{url}/v1/track", json=track(i), auth=(WRITE_KEY, ""), headers=headers, timeout=10
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(first, first + count))) == {200}


def test_every_web_answers_the_fleet_totals_of_workers_elsewhere(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    fake = FakeVoucherify(app_id=APP_ID, secret_key=SECRET, name="vf-fleet", log_dir=tmp_path).start()
    try:
        path = tmp_path / "connections.toml"
        path.write_text(connections(fake.url))
        stack = make_stack(
            stack_factory,
            tmp_path,
            redis_url,
            path,
            METRICS_TOKEN=METRICS_TOKEN,
            CONNECTOR_METRICS_FLUSH_SECONDS="0.5",
            CONNECTOR_SCHEDULER_INTERVAL="0.2",
        )
        del stack.env["PROMETHEUS_MULTIPROC_DIR"]  # no directory shared by any two processes
        stack.web(workers=2)
        web_a = stack.web_url
        # Another web, with a directory of its own and no METRICS_TOKEN: totals, no connection ids.
        other = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "web-b-metrics"), "METRICS_TOKEN": ""}
        stack.web(workers=1, extra_env=other)
        web_b = stack.web_url
        # A worker on "another machine": a metrics directory of its own, no port.
        far = stack.worker(name="far", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "far-metrics"))

        sent = 30
        send(web_a, 0, sent)
        wait_until(lambda: len(fake.requests(path=EVENTS)) >= sent, timeout=60, what="events at the fake")
        wait_until(
            lambda: fleet_view(scrape(web_a))["delivered"] == sent,
            timeout=20,
            what="fleet deliveries on web A",
        )
        expected = {"received": sent, "delivered": sent, "calls_200": len(fake.requests(path=EVENTS))}
        first = scrape(web_a)
        assert fleet_view(first) == expected
        # The web's own registry never saw a delivery: before the fleet counters, this was all
        # /metrics could say about the far worker.
        assert total(first, "connector_deliveries_total") == 0
        assert total(first, "connector_fleet_dead_letters_total") == 0

        # Both gunicorn workers (no shared directory) answer the same fleet totals, while their
        # own counters hold only the requests each took: whichever answers, the fleet's count
        # includes the other's.
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: scrape(web_a), range(24)))
        for samples in answers:
            assert fleet_view(samples) == expected
            assert total(samples, "connector_events_received_total") < sent
        # The other web process too (its own directory; no token: totals without ids).
        anonymous = scrape(web_b, token=None)
        assert fleet_view(anonymous) == expected
        assert not [key for key in anonymous if "connection" in dict(key[1])]

        # --- a worker stopped with SIGTERM has written its last counts ----------------------------
        far.signal(signal.SIGTERM)
        assert far.proc is not None and far.proc.wait(40) == 0
        # Its counts reach Redis only when it stops: the periodic flush is far away.
        last = stack.worker(name="last", CONNECTOR_METRICS_FLUSH_SECONDS="600")
        more = 12
        send(web_b, sent, more)
        wait_until(
            lambda: len(fake.requests(path=EVENTS)) >= sent + more, timeout=60, what="more events at the fake"
        )
        # Web B's counts reach web A within a flush period (0.5 s here); the stopping worker's
        # only when it stops.
        wait_until(
            lambda: fleet_view(scrape(web_a))["received"] == sent + more, timeout=10, what="web B's counts"
        )
        time.sleep(1)  # two flush periods of everyone else
        assert fleet_view(scrape(web_a))["delivered"] == sent  # the worker's are in its memory
        last.signal(signal.SIGTERM)
        assert last.proc is not None and last.proc.wait(40) == 0
        calls = len(fake.requests(path=EVENTS))
        for samples in (scrape(web_a), scrape(web_b, token=None)):
            assert fleet_view(samples) == {
                "received": sent + more,
                "delivered": sent + more,
                "calls_200": calls,
            }
    finally:
        fake.stop()

"""Two deployments on ONE Redis database, told apart by CONNECTOR_KEY_PREFIX only (SPEC 16).

Real processes: for each deployment a gunicorn web and a Celery worker with its own connections
file, its own fake Voucherify and its own key prefix, both on the same Redis database and the
same region (so the same queue names).  Each deployment's events must reach its own fake, every
one of them, and no worker may drop work as belonging to an unknown connection -- which is what
happened while the broker's queues carried no prefix: each worker BRPOPped the other's tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
import requests

from connector.keys import Keys
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify, voucherify_fakes
from tests.support.processes import Stack, wait_until

pytestmark = pytest.mark.integration

DEPLOYMENTS = {
    "alpha": {"prefix": "dep-alpha:", "app_id": "alpha-app-id", "secret": "alpha-secret-key"},
    "beta": {"prefix": "dep-beta:", "app_id": "beta-app-id", "secret": "beta-secret-key"},
}
EVENTS = 40


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[dict[str, FakeVoucherify]]:
    with voucherify_fakes(DEPLOYMENTS, tmp_path) as started:
        yield started


def connections_file(tmp: Path, name: str, fake: FakeVoucherify) -> Path:
    spec = DEPLOYMENTS[name]
    path = tmp / f"connections-{name}.toml"
    path.write_text(
        f"""
[[connection]]
id = "conn-{name}"
write_keys = ["wk_{name}_deployment"]
[connection.voucherify]
coalesce_window_seconds = 0
api_calls_per_minute = 10000000
bulk_calls_per_hour = 10000000
app_id = "{spec["app_id"]}"
secret_key = "{spec["secret"]}"
region = "eu"
api_url = "{fake.url}"
"""
    )
    return path


def send_identifies(stack: Stack, name: str) -> None:
    for i in range(EVENTS):
        answer = requests.post(
            stack.web_url + "/v1/identify",
            auth=(f"wk_{name}_deployment", ""),
            json={"userId": f"{name}-user-{i}", "messageId": f"{name}-m-{i}", "traits": {"name": "Ada"}},
            timeout=5,
        )
        assert answer.status_code == 200, answer.text


def upserted(fake: FakeVoucherify) -> set[str]:
    found: set[str] = set()
    for r in fake.requests(path="/v1/customers"):
        body = r.get("body")
        if 200 <= r["status"] < 300 and isinstance(body, dict) and body.get("source_id"):
            found.add(str(body["source_id"]))
    return found


def test_two_prefixes_on_one_database_each_deliver_only_their_own_work(
    tmp_path: Path, redis_url: str, stack_factory: list, fakes: dict[str, FakeVoucherify]
) -> None:
    stacks: dict[str, Stack] = {}
    for name, spec in DEPLOYMENTS.items():
        home = tmp_path / name
        home.mkdir()
        stack = make_stack(
            stack_factory,
            home,
            redis_url,
            connections_file(home, name, fakes[name]),
            CONNECTOR_KEY_PREFIX=spec["prefix"],
        )
        stack.web()
        stack.worker(name=f"worker-{name}")
        stacks[name] = stack

    for name, stack in stacks.items():
        send_identifies(stack, name)

    for name, fake in fakes.items():
        wanted = {f"{name}-user-{i}" for i in range(EVENTS)}
        wait_until(lambda f=fake, w=wanted: upserted(f) >= w, timeout=60, what=f"{name}'s upserts")
    for name, fake in fakes.items():
        other = next(n for n in DEPLOYMENTS if n != name)
        assert not any(u.startswith(f"{other}-") for u in upserted(fake)), f"{name}'s fake got {other}'s work"
    for name, stack in stacks.items():
        log = "\n".join(p.log() for p in stack.procs)
        assert "unconfigured connection" not in log, f"{name} dropped work:\n{log[-3000:]}"

    # The broker's keys carry each deployment's prefix: nothing under kombu's bare names.
    client = redis_lib.Redis.from_url(redis_url)
    names = {k.decode() for k in client.scan_iter(count=1000)}
    assert "voucherify.eu" not in names and "unacked" not in names and "unacked_index" not in names
    for spec in DEPLOYMENTS.values():
        assert any(n.startswith(spec["prefix"] + "_kombu.binding.") for n in names), sorted(names)[:40]
        assert client.llen(Keys(spec["prefix"]).broker_queue("voucherify.eu")) == 0


def test_the_default_prefix_keeps_the_broker_names_of_existing_deployments() -> None:
    """Queues of deployments that ran before the broker was prefixed keep their names."""
    from connector.celery_app import celery_config

    default = celery_config("redis://h/0", key_prefix=Keys().prefix)["broker_transport_options"]
    assert "global_keyprefix" not in default
    assert Keys().broker_queue("voucherify.eu") == "voucherify.eu"
    assert Keys().broker_unacked == "unacked"
    other = celery_config("redis://h/0", key_prefix="b:")["broker_transport_options"]
    assert other["global_keyprefix"] == "b:"
    assert Keys("b:").broker_queue("voucherify.eu") == "b:voucherify.eu"

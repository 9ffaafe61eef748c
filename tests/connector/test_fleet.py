"""Fleet-wide counters (connector.fleet, SPEC 16): deltas kept in memory, written in one
round trip per flush, read back as Prometheus families -- against a real Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from connector import fleet, metrics
from connector.keys import Keys
from tests.support.processes import wait_until

KEYS = Keys("fleettest:")
FAMILY = "connector_fleet_deliveries"  # defined by connector.metrics (DELIVERIES)


def commands(client: redis.Redis, name: str) -> int:
    """How many ``name`` commands the server ran so far (the session's own redis-server)."""
    stats = client.info("commandstats").get(f"cmdstat_{name}")
    return int(stats["calls"]) if stats else 0


def samples(client: redis.Redis, keys: Keys = KEYS) -> dict[tuple[str, tuple[str, ...]], float]:
    found = {}
    for family in fleet.read(client, keys):
        for sample in family.samples:
            found[(sample.name, tuple(sample.labels.values()))] = sample.value
    return found


@pytest.fixture
def process_state() -> Iterator[None]:
    """The module's per-process state, clean before and after (other tests count too)."""
    state = fleet._process
    saved = (state.client, state.keys, state.interval)
    state.client = None  # an app built in-process by an earlier test configured its own Redis
    state.accumulator.forget()
    state.flusher_pid = None
    yield
    state.flusher_pid = None  # the flusher thread ends at its next wake-up
    state.wake.set()
    state.client, state.keys, state.interval = saved
    state.accumulator.forget()
    state.wake.clear()


def test_thousands_of_counts_are_one_round_trip_of_one_hincrby_per_label_set(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    acc = fleet.Accumulator()
    for i in range(3000):
        outcome = ("delivered", "retry", "dead_letter")[i % 3]
        acc.add(FAMILY, "shop-a", ("segment_to_voucherify", "eu", outcome, "200"), 1)
    acc.add(FAMILY, "shop-b", ("segment_to_voucherify", "eu", "delivered", "200"), 5)
    acc.add(FAMILY, "shop-b", ("segment_to_voucherify", "eu", "delivered", "200"), 0)  # nothing
    hincrby, execs = commands(client, "hincrby"), commands(client, "exec")

    assert acc.flush(client, KEYS) == 4
    assert commands(client, "hincrby") - hincrby == 4  # per label set, never per event
    assert commands(client, "exec") - execs == 1  # one MULTI/EXEC
    assert acc.flush(client, KEYS) == 0 and commands(client, "exec") - execs == 1  # nothing pending

    found = samples(client)
    total = "connector_fleet_deliveries_total"
    assert found[(total, ("shop-a", "segment_to_voucherify", "eu", "delivered", "200"))] == 1000
    assert found[(total, ("shop-a", "segment_to_voucherify", "eu", "dead_letter", "200"))] == 1000
    assert found[(total, ("shop-b", "segment_to_voucherify", "eu", "delivered", "200"))] == 5
    # Every fleet family is there, also those nothing counted yet.
    names = {family.name for family in fleet.read(client, KEYS)}
    assert {
        "connector_fleet_dead_letters",
        "connector_fleet_calls",
        "connector_fleet_events_received",
    } <= names


def test_processes_add_up_and_prefixes_stay_apart(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    labels = ("segment_to_voucherify", "eu", "delivered", "200")
    one, two, elsewhere = fleet.Accumulator(), fleet.Accumulator(), fleet.Accumulator()
    one.add(FAMILY, "shop", labels, 3)
    two.add(FAMILY, "shop", labels, 4)
    elsewhere.add(FAMILY, "shop", labels, 100)
    one.flush(client, KEYS)
    two.flush(client, KEYS)
    elsewhere.flush(client, Keys("other-deployment:"))
    key = ("connector_fleet_deliveries_total", ("shop", *labels))
    assert samples(client)[key] == 7
    assert samples(client, Keys("other-deployment:"))[key] == 100
    assert set(client.keys("fleettest:*")) == {b"fleettest:fleet:shop", b"fleettest:fleets"}


def test_a_failed_flush_keeps_the_deltas_for_the_next(redis_url: str) -> None:
    acc = fleet.Accumulator()
    acc.add(FAMILY, "shop", ("segment_to_voucherify", "eu", "delivered", "200"), 2)
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens
    assert acc.flush(down, KEYS) == 0
    acc.add(FAMILY, "shop", ("segment_to_voucherify", "eu", "delivered", "200"), 3)
    client = redis.Redis.from_url(redis_url)
    assert acc.flush(client, KEYS) == 1
    assert (
        samples(client)[
            ("connector_fleet_deliveries_total", ("shop", "segment_to_voucherify", "eu", "delivered", "200"))
        ]
        == 5
    )


def test_fields_of_another_release_are_left_out(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.sadd(KEYS.fleets(), "shop")
    client.hset(KEYS.fleet("shop"), mapping={
        fleet.field("connector_fleet_gone", ("x",)): 4,  # a counter this release does not define
        fleet.field(FAMILY, ("too", "few")): 5,  # another label set
        b"not json": 6,
        fleet.field("connector_fleet_dead_letters", ("segment_to_voucherify", "rejected")): 7,
    })  # fmt: skip
    found = samples(client)
    assert list(found.values()) == [7]


def test_a_fleet_counter_counts_for_the_process_and_the_fleet(redis_url: str, process_state: None) -> None:
    before = metrics.DEAD_LETTERS.process.labels("shop-u", "segment_to_voucherify", "rejected")._value.get()
    metrics.DEAD_LETTERS.labels("shop-u", "segment_to_voucherify", "rejected").inc()
    metrics.child(metrics.DEAD_LETTERS, "shop-u", "segment_to_voucherify", "rejected").inc(2)
    metrics.DEAD_LETTERS.labels(
        connection="shop-u", direction="segment_to_voucherify", reason="rejected"
    ).inc()
    after = metrics.DEAD_LETTERS.process.labels("shop-u", "segment_to_voucherify", "rejected")._value.get()
    assert after - before == 4
    assert fleet.pending() == {
        ("connector_fleet_dead_letters", "shop-u", ("segment_to_voucherify", "rejected")): 4
    }
    assert fleet.flush() == 0  # not configured (a CLI command, a unit test): nothing is written
    client = redis.Redis.from_url(redis_url)
    fleet.configure(client, KEYS, interval=600)
    assert fleet.flush() == 1 and fleet.pending() == {}
    assert (
        samples(client)[
            ("connector_fleet_dead_letters_total", ("shop-u", "segment_to_voucherify", "rejected"))
        ]
        == 4
    )


def test_the_process_flushes_by_itself_every_interval(redis_url: str, process_state: None) -> None:
    client = redis.Redis.from_url(redis_url)
    fleet.configure(client, KEYS, interval=0.2)
    metrics.CALLS.labels("shop-t", "voucherify", metrics.status_label(429)).inc()
    key = ("connector_fleet_calls_total", ("shop-t", "voucherify", "429"))
    wait_until(lambda: samples(client).get(key) == 1, timeout=5, what="the background flush")
    metrics.CALLS.labels("shop-t", "voucherify", "429").inc()
    wait_until(lambda: samples(client).get(key) == 2, timeout=5, what="the next background flush")


def test_a_forked_child_does_not_write_its_parents_deltas_again(process_state: None) -> None:
    fleet.add(FAMILY, ("shop-f", "segment_to_voucherify", "eu", "delivered", "200"), 9)
    pid = os.fork()
    if pid == 0:  # the child: starts with nothing pending (the parent writes those)
        os._exit(0 if fleet.pending() == {} else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sum(fleet.pending().values()) == 9  # the parent's are still there


def test_status_labels_are_a_bounded_set() -> None:
    assert [metrics.status_label(s) for s in (None, 200, 429, 599, 600, 42)] == [
        "error",
        "200",
        "429",
        "599",
        "other",
        "other",
    ]

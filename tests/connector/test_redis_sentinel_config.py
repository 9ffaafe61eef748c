"""REDIS_SENTINELS / REDIS_SENTINEL_MASTER / REDIS_SENTINEL_PASSWORD / REDIS_MIN_REPLICAS: read
once, every problem named by its variable, REDIS_URL ignored when Sentinel is set, the password
never in a repr, a problem, a log description or the Celery configuration."""

from __future__ import annotations

import pytest

from connector import config, redisconn, redisenv
from connector.celery_app import celery_config
from connector.config import ConfigError, load_settings
from connector.redisconn import SentinelTarget

PASSWORD = "pw-sentinel-7d2e91"
SENTINEL_ENV = {
    "REDIS_SENTINELS": "sentinel-a.invalid:26400, sentinel-b.invalid:26401,[2001:db8::1]:26402",
    "REDIS_SENTINEL_MASTER": "mymaster",
    "REDIS_SENTINEL_PASSWORD": PASSWORD,
    "REDIS_URL": "redis://ignored.invalid:6390/0",
}


def settings(env: dict[str, str]) -> config.Settings:
    return load_settings(env, require_connections=False)


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings(env)
    return caught.value.problems


def test_sentinels_are_parsed_and_redis_url_is_ignored() -> None:
    got = settings(SENTINEL_ENV)
    target = got.redis
    assert isinstance(target, SentinelTarget)
    assert target.nodes == (
        ("sentinel-a.invalid", 26400),
        ("sentinel-b.invalid", 26401),
        ("2001:db8::1", 26402),
    )
    assert target.master == "mymaster"
    assert target.password is not None and target.password.reveal() == PASSWORD
    assert redisenv.redis_target(SENTINEL_ENV) == target  # the commands without connections too
    # Not even a bad REDIS_URL is a problem: it is not used.
    assert settings({**SENTINEL_ENV, "REDIS_URL": "http://nonsense"}).redis == target


def test_without_sentinels_redis_url_is_the_target() -> None:
    assert settings({"REDIS_URL": "redis://h:1/2"}).redis == "redis://h:1/2"
    assert redisenv.redis_target({"REDIS_URL": "redis://h:1/2"}) == "redis://h:1/2"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_SENTINELS": "sentinel-a.invalid", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "h:notaport", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "h:70000", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "h:26400"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "h:26400", "REDIS_SENTINEL_MASTER": "bad name!"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_PASSWORD": PASSWORD}, "REDIS_SENTINEL_PASSWORD"),
        ({"REDIS_MIN_REPLICAS": "two"}, "REDIS_MIN_REPLICAS"),
        ({"REDIS_MIN_REPLICAS": "-1"}, "REDIS_MIN_REPLICAS"),
        ({"REDIS_MIN_REPLICAS_TIMEOUT_MS": "0"}, "REDIS_MIN_REPLICAS_TIMEOUT_MS"),
    ],
)
def test_problems_name_the_variable(env: dict[str, str], variable: str) -> None:
    found = problems(env)
    assert any(p.startswith(f"{variable}:") for p in found), found
    assert not any(PASSWORD in p for p in found)
    with pytest.raises(ConfigError) as caught:
        redisenv.redis_target(env) if "MIN_REPLICAS" not in variable else settings(env)
    assert variable in str(caught.value)


def test_a_password_with_whitespace_is_refused_without_showing_it() -> None:
    found = problems({**SENTINEL_ENV, "REDIS_SENTINEL_PASSWORD": f" {PASSWORD}"})
    assert any(p.startswith("REDIS_SENTINEL_PASSWORD:") for p in found)
    assert not any(PASSWORD in p for p in found)


def test_the_password_is_never_shown() -> None:
    got = settings(SENTINEL_ENV)
    target = got.redis
    assert isinstance(target, SentinelTarget)
    for text in (repr(got), str(got), repr(target), target.describe(), redisconn.describe(target)):
        assert PASSWORD not in text
    assert "sentinel-a.invalid:26400" in target.describe() and "mymaster" in target.describe()
    conf = celery_config(target, "required", got.broker, "p:")
    # Neither the URL nor any printable form of the configuration holds it (a Secret object).
    assert PASSWORD not in conf["broker_url"]
    assert PASSWORD not in repr(conf)
    assert conf["broker_transport"] == "connector.broker:SentinelTransport"
    options = conf["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["connector_sentinels"] == target.nodes
    # ONE sentinel URL: kombu would switch ';'-separated ones to its stock transport.
    assert ";" not in conf["broker_url"]


def test_min_replicas_reaches_the_broker_options() -> None:
    got = settings({**SENTINEL_ENV, "REDIS_MIN_REPLICAS": "1", "REDIS_MIN_REPLICAS_TIMEOUT_MS": "250"})
    assert (got.broker.min_replicas, got.broker.replica_wait_ms) == (1, 250)
    options = celery_config(got.redis, "required", got.broker, "p:")["broker_transport_options"]
    assert (options["min_replicas"], options["replica_wait_ms"]) == (1, 250)
    assert (
        "min_replicas"
        not in celery_config(got.redis, "required", settings({}).broker, "p:")["broker_transport_options"]
    )


def test_a_redis_client_through_sentinel_carries_no_password_in_its_repr() -> None:
    target = settings(SENTINEL_ENV).redis
    client = redisconn.client(target, socket_timeout=1)  # no connection is opened yet
    assert PASSWORD not in repr(client) and PASSWORD not in repr(client.connection_pool)

"""A second redis-server of the test session's own, for the fault tests (``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redisdb import fresh_database, own_redis_server


@pytest.fixture(scope="session")
def private_redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of its own for the fault tests, apart from ``redis_base``.

    The fault tests stop workers mid-task and look for lost or duplicated messages: a server of
    their own keeps what other tests leave behind (queues, keys in the helpers' database) out
    of what they count.  No persistence needed here.
    """
    with own_redis_server(tmp_path_factory.mktemp("fault-redis")) as server:
        yield server.base


_PRIVATE_DBS = list(range(16))


@pytest.fixture
def private_redis(private_redis_base: str) -> Iterator[str]:
    """An empty database of :func:`private_redis_base`."""
    with fresh_database(private_redis_base, _PRIVATE_DBS) as url:
        yield url

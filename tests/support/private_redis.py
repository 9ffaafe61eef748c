"""A redis-server of the test session's own, for the fault tests (``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ops.embedded import start_redis
from tests.support.redisdb import fresh_database


@pytest.fixture(scope="session")
def private_redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server only this test session talks to.

    The machine's Redis is shared with other test runs on the same machine; their workers would
    consume (and drop, as an unknown connection) messages from our queues, and their fixtures
    flush our database -- exactly the losses these tests look for.  No persistence needed here.
    """
    proc, url = start_redis(tmp_path_factory.mktemp("fault-redis"), appendonly=False)
    try:
        yield url.rsplit("/", 1)[0]
    finally:
        proc.terminate()
        proc.wait(10)


_PRIVATE_DBS = list(range(16))


@pytest.fixture
def private_redis(private_redis_base: str) -> Iterator[str]:
    """An empty database of :func:`private_redis_base`."""
    with fresh_database(private_redis_base, _PRIVATE_DBS) as url:
        yield url

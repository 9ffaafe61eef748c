"""Every Redis client of the connector, with the TLS verification of ``REDIS_TLS_VERIFY``.

Heroku Redis (and other managed Redis) serve ``rediss://`` with a self-signed certificate chain:
verification must be switchable, and the same for every client -- the web's, the workers'
broker connection and state client, the scheduler's, the CLI's -- or one of them fails while
the others work.  (kombu alone would otherwise silently accept any certificate for ``rediss://``
while redis-py verifies: a worker that consumes and a web process that cannot publish.)

``required`` (default): the server's certificate is verified against the system's CAs and its
host name checked.  ``none``: any certificate is accepted; traffic is still encrypted, but a
man in the middle is not detected -- the setting Heroku documents for its Redis.
Non-TLS URLs (``redis://``, ``unix://``) are not affected.

With ``REDIS_SENTINELS`` every client -- these, and the Celery broker's (:mod:`connector.broker`)
-- goes through Sentinel instead of ``REDIS_URL``: see :class:`SentinelTarget`.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

import redis
from redis.sentinel import Sentinel

from connector.secrets import Secret

DEFAULT_VERIFY = "required"
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "none": ssl.CERT_NONE}


@dataclass(frozen=True)
class SentinelTarget:
    """Redis behind Sentinel (``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``,
    ``REDIS_SENTINEL_PASSWORD``): every client asks the sentinels where the master is each time it
    opens a connection, so after a failover the next (re)connect reaches the new master -- no
    restart, no address to change.  The password is a :class:`Secret`: the object can be logged."""

    nodes: tuple[tuple[str, int], ...]
    master: str
    password: Secret | None = None
    db: int = 0

    def describe(self) -> str:
        """For log lines and ``connector check``: never the password."""
        nodes = ",".join(f"{host}:{port}" for host, port in self.nodes)
        return f"sentinel master {self.master!r} via {nodes} (db {self.db})"


# Where a process's Redis is: a URL (REDIS_URL) or the sentinels of a master.
RedisTarget = str | SentinelTarget


def describe(target: RedisTarget) -> str:
    """A target for log lines: a URL with its password hidden, or the sentinels."""
    if isinstance(target, SentinelTarget):
        return target.describe()
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1****@", target)


def sentinel(target: SentinelTarget, **kwargs: Any) -> Sentinel:
    """A redis-py ``Sentinel`` on the target's nodes; ``kwargs`` apply to the master's connections
    and their socket timeouts to the sentinels' (redis-py gives the sentinels no password unless
    told: ``sentinel_kwargs``)."""
    password = target.password.reveal() if target.password else None
    to_sentinels: dict[str, Any] = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    if password:
        to_sentinels["password"] = password
    return Sentinel(
        list(target.nodes),
        sentinel_kwargs=to_sentinels,
        password=password,
        db=target.db,
        **kwargs,
    )


def sentinel_topology(target: SentinelTarget, timeout: float = 3.0) -> dict[str, Any]:
    """What the sentinels say: the master's address and its replicas' (``connector check``)."""
    probe = sentinel(target, socket_connect_timeout=timeout, socket_timeout=timeout)
    host, port = probe.discover_master(target.master)
    replicas = probe.discover_slaves(target.master)
    for node in probe.sentinels:
        node.close()
    return {
        "master": f"{_text(host)}:{_text(port)}",
        "replicas": [f"{_text(h)}:{_text(p)}" for h, p in replicas],
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def is_tls(url: str) -> bool:
    return url.lower().startswith("rediss://")


def tls_options(url: str, verify: str = DEFAULT_VERIFY) -> dict[str, Any]:
    """redis-py keyword arguments for ``url`` (empty unless it is ``rediss://``)."""
    if not is_tls(url):
        return {}
    return {"ssl_cert_reqs": verify if verify in _CERT_REQS else DEFAULT_VERIFY}


# redis-py 8 caps a client's pool at 100 connections and raises MaxConnectionsError past it (its
# earlier versions: no cap).  A gevent worker runs hundreds of greenlets that each hold one for a
# round trip: measured, make bench's 12,000-event delivery had tasks requeued on "Too many
# connections" and an event left behind.  Redis' own maxclients is the bound that matters.
POOL_MAX_CONNECTIONS = 2**31


def client(target: RedisTarget, verify: str = DEFAULT_VERIFY, **kwargs: Any) -> redis.Redis:
    """``redis.Redis.from_url`` with the TLS verification applied, or the master of a Sentinel
    group (a client that finds the new master by itself after a failover)."""
    pool = {"max_connections": kwargs.pop("max_connections", POOL_MAX_CONNECTIONS)}
    if isinstance(target, SentinelTarget):
        master: redis.Redis = sentinel(target, **kwargs).master_for(target.master, **pool)
        return master
    return redis.Redis.from_url(target, **tls_options(target, verify), **kwargs, **pool)


def broker_ssl(target: RedisTarget, verify: str = DEFAULT_VERIFY) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for ``target`` (None unless it is a ``rediss://`` URL)."""
    if isinstance(target, SentinelTarget) or not is_tls(target):
        return None
    return {"ssl_cert_reqs": _CERT_REQS.get(verify, ssl.CERT_REQUIRED)}

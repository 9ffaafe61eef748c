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
"""

from __future__ import annotations

import ssl
from typing import Any

import redis

DEFAULT_VERIFY = "required"
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "none": ssl.CERT_NONE}


def is_tls(url: str) -> bool:
    return url.lower().startswith("rediss://")


def tls_options(url: str, verify: str = DEFAULT_VERIFY) -> dict[str, Any]:
    """redis-py keyword arguments for ``url`` (empty unless it is ``rediss://``)."""
    if not is_tls(url):
        return {}
    return {"ssl_cert_reqs": verify if verify in _CERT_REQS else DEFAULT_VERIFY}


def client(url: str, verify: str = DEFAULT_VERIFY, **kwargs: Any) -> redis.Redis:
    """``redis.Redis.from_url`` with the TLS verification applied."""
    return redis.Redis.from_url(url, **tls_options(url, verify), **kwargs)


def broker_ssl(url: str, verify: str = DEFAULT_VERIFY) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for ``url`` (None unless it is ``rediss://``)."""
    if not is_tls(url):
        return None
    return {"ssl_cert_reqs": _CERT_REQS.get(verify, ssl.CERT_REQUIRED)}

"""Probing a paused connection's credentials (SPEC 10): the same call as ``connector check``.

``GET /v1/customers?limit=1`` (rest) or ``GET /segmentio/test-authentication`` (segmentio):
one call every ``CONNECTOR_AUTH_PROBE_SECONDS`` while the connection is paused -- the only call
the connector makes then, so it is not asked of the budgets (which deny a paused connection).
"""

from __future__ import annotations

import redis

from connector import USER_AGENT
from connector.config import Connection, Settings
from connector.errors import TransportFailure
from connector.keys import Keys
from workers.delivery.pauses import Prober
from workers.delivery.transport import RequestsTransport, Transport
from workers.targets.voucherify import auth_headers, probe_path


def probe(connection: Connection, transport: Transport, timeout: tuple[float, float]) -> bool | None:
    """True: the credentials are accepted; False: refused (401/403); None: no verdict (no
    answer, a 429, a 5xx -- try again at the next probe)."""
    vf = connection.voucherify
    headers = {**auth_headers(vf), "User-Agent": USER_AGENT, "Accept": "application/json"}
    try:
        answer = transport.send("GET", vf.base_url + probe_path(connection), headers, None, timeout)
    except TransportFailure:
        return None
    if 200 <= answer.status < 300:
        return True
    if answer.status in (401, 403):
        return False
    return None


def pause_prober(settings: Settings, client: redis.Redis, keys: Keys) -> Prober:
    """The scheduler's prober of paused connections, every ``CONNECTOR_AUTH_PROBE_SECONDS``."""
    transport = RequestsTransport(pool_size=2)
    tuning = settings.tuning
    timeout = (tuning.connect_timeout, tuning.read_timeout)

    def probe_one(connection_id: str) -> bool | None:
        connection = settings.connection(connection_id)
        return None if connection is None else probe(connection, transport, timeout)

    return Prober(client, keys, [c.id for c in settings.connections], probe_one, tuning.auth_probe)

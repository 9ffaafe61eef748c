"""``connector healthcheck web|worker``: the container health checks of docker-compose.yml.

The image has Python but no curl, and ``celery inspect ping`` would ask every worker over the
broker; these look at this container only, cheaply, every 30 s:

- ``web``: ``GET http://127.0.0.1:$PORT/healthz`` answers 200 (gunicorn up, the app loaded).
- ``worker``: a worker of this host (the container's hostname) wrote its heartbeat into Redis
  within ``ALIVE_WITHIN_SECONDS`` (:mod:`connector.heartbeat`, the same beat ``/metrics`` counts).

Exit 0 when healthy, 1 otherwise, with one line saying why (never a credential).
"""

from __future__ import annotations

import socket
import time

import click
import redis
import requests

from connector import config, heartbeat, redisconn, redisenv
from connector.keys import Keys
from ops.common import redis_client


def web_healthy(port: int, timeout: float) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        answer = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        return False, f"{url}: no answer ({type(exc).__name__})"
    return answer.status_code == 200, f"{url}: HTTP {answer.status_code}"


def worker_healthy(host: str) -> tuple[bool, str]:
    keys = Keys(config.key_prefix())
    since = int((time.time() - heartbeat.ALIVE_WITHIN_SECONDS) * 1000)
    try:
        names = redis_client().zrangebyscore(keys.workers, since, "+inf")
    except redis.RedisError as exc:
        return False, f"redis {redisconn.describe(redisenv.redis_target())}: {type(exc).__name__}"
    mine = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    mine = [n for n in mine if n.rsplit(":", 1)[0] == host]
    if mine:
        return True, f"worker {mine[0]} beat within {heartbeat.ALIVE_WITHIN_SECONDS:g} s"
    return False, f"no worker of host {host} beat within {heartbeat.ALIVE_WITHIN_SECONDS:g} s"


@click.command()
@click.argument("process", type=click.Choice(["web", "worker"]))
@click.option("--timeout", type=float, default=5.0, show_default=True, help="seconds for the web's answer")
def healthcheck(process: str, timeout: float) -> None:
    """Exit 0 when this container's web (GET /healthz on $PORT) or worker (its heartbeat in
    Redis, written every 10 s) is alive, 1 otherwise: docker-compose.yml's health checks."""
    if process == "web":
        port = int(config.environment().get("PORT") or 8000)
        healthy, why = web_healthy(port, timeout)
    else:
        healthy, why = worker_healthy(socket.gethostname())
    click.echo(why)
    if not healthy:
        raise SystemExit(1)

"""The Celery application, shared by the web process (publishing) and the workers (consuming).

Importing this module is cheap and pulls in no HTTP client: the web process publishes by task
*name* and never imports :mod:`workers.tasks`.

Settings that keep accepted work safe (SPEC 5):
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged after its task
  returns, and a worker killed mid-task (SIGKILL, OOM) gives it back to the queue.
- a short ``visibility_timeout`` with a fast unacked sweep: with the Redis transport a message
  whose worker vanished comes back only after the visibility timeout, found by a periodic scan
  that kombu runs every ``unacked_restore_interval * unacked_restore_throttle`` seconds (100 s by
  default).  Tasks here are bounded in time (long waits are parked in Redis, never slept or
  scheduled with ``countdown``), so a short timeout never re-runs a healthy task.  Under
  ``--pool gevent`` kombu never runs that scan: :mod:`workers.restore` runs it on a timer.
- JSON only, no result backend, reconnects on broker loss.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
from celery import Celery
from kombu import Queue
from kombu.serialization import register as register_serializer
from kombu.utils import json as kombu_json

from connector import redisconn
from connector.keys import Keys
from connector.tuning import BrokerOptions


def celery_config(
    redis: redisconn.RedisTarget,
    tls_verify: str = "required",
    options: BrokerOptions | None = None,
    key_prefix: str | None = None,
) -> dict[str, Any]:
    """``key_prefix``: the deployment's ``CONNECTOR_KEY_PREFIX`` (read from the environment when
    not given, as the settings of every process read it)."""
    options = options or BrokerOptions()
    if key_prefix is None:
        from connector import config

        key_prefix = config.key_prefix()
    transport_options: dict[str, Any] = {}
    broker_prefix = Keys(key_prefix).broker_prefix
    if broker_prefix:
        # The prefix isolates the broker too: kombu prefixes its queues, the unacked hash and
        # index, its mutex and bindings.  Without it two deployments sharing a database would
        # BRPOP each other's tasks (and drop them as unknown connections).
        transport_options["global_keyprefix"] = broker_prefix
    if options.min_replicas:
        # Every publish waits for this many replicas (connector.broker): REDIS_MIN_REPLICAS.
        transport_options["min_replicas"] = options.min_replicas
        transport_options["replica_wait_ms"] = options.replica_wait_ms
    transport = "connector.broker:Transport"
    if isinstance(redis, redisconn.SentinelTarget):
        # kombu's Sentinel transport: ONE sentinel:// URL (several would be failover alternates
        # to kombu, which then drops this transport: connector.broker), every sentinel and the
        # master's name as transport options.  The password travels as a Secret (never in the
        # URL, so never in Celery's banner or a repr of the configuration).
        first_host, first_port = redis.nodes[0]
        broker_url = f"sentinel://{_host(first_host)}:{first_port}/{redis.db}"
        transport = "connector.broker:SentinelTransport"
        transport_options["master_name"] = redis.master
        transport_options["connector_sentinels"] = redis.nodes
        if redis.password:
            transport_options["connector_password"] = redis.password
    else:
        broker_url = redis
    return {
        "broker_url": broker_url,
        # rediss://: REDIS_TLS_VERIFY as for every other Redis client (connector.redisconn).
        "broker_use_ssl": redisconn.broker_ssl(redis, tls_verify),
        # kombu's Redis transport minus two measured publish costs (see connector.broker).
        "broker_transport": transport,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        # Messages reserved per pool slot.  A gevent worker has many slots (the Procfile's
        # --concurrency 100), so one each already keeps it busy; more would only hold messages
        # unacknowledged for longer (a reserved message counts against the visibility timeout).
        "worker_prefetch_multiplier": options.prefetch,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_pool_limit": 10,
        "broker_transport_options": {
            "visibility_timeout": options.visibility_timeout,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            # kombu's sweep mutex; a worker killed while holding it must not block sweeps for
            # kombu's default 5 minutes.
            "unacked_mutex_expire": 30,
            # kombu's Redis pool for a worker's acks and restores holds 10 connections by
            # default; a gevent worker acks from up to `--concurrency` greenlets at once, and an
            # exhausted pool turns acks and requeues into errors.
            "max_connections": options.max_connections,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            "retry_on_timeout": True,
            "health_check_interval": 10,
            **transport_options,
        },
        # Publishing from the web process must fail fast (the client gets 503 and retries),
        # never hang a gunicorn worker for seconds while Redis is away.
        "task_publish_retry": False,
        "task_default_queue": "connector.default",
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _json_dumps(data: Any) -> str:
    # kombu's stubs say str; bytes are accepted as well (kombu passes them through untouched).
    try:
        return orjson.dumps(data)  # type: ignore[return-value]
    except TypeError:  # a type orjson does not know (kombu's json encodes a few more): fall back
        return kombu_json.dumps(data)


def register_fast_json() -> None:
    """kombu's ``json`` serializer (stdlib json with hooks) through orjson: ~10x faster on a
    100-event message, which is most of what the web process spends publishing a batch and the
    worker decoding it.  Same content type (application/json), same wire format, so a worker and
    a web process of either kind understand each other.  Applies to message bodies; kombu's own
    envelope stays as it is."""
    register_serializer(
        "json", _json_dumps, orjson.loads, content_type="application/json", content_encoding="utf-8"
    )


register_fast_json()


def create_celery(
    redis: redisconn.RedisTarget,
    tls_verify: str = "required",
    options: BrokerOptions | None = None,
    key_prefix: str | None = None,
) -> Celery:
    """A Celery app on ``redis`` (the web's publisher, a command's, a test's)."""
    app = Celery("connector")
    app.conf.update(celery_config(redis, tls_verify, options, key_prefix))
    return app


def queues_for(names: list[str]) -> list[Queue]:
    return [Queue(name, routing_key=name) for name in names]


# The app the workers' tasks register on; workers.worker configures it from the settings.
celery = Celery("connector")

_default: Celery | None = None
_default_lock = threading.Lock()


def default_app() -> Celery:
    """A process's publishing app for commands that load no settings (``connector dlq replay``,
    the scheduler's default publisher): ``REDIS_URL`` (or ``REDIS_SENTINELS``) and
    ``REDIS_TLS_VERIFY``, read once."""
    global _default
    with _default_lock:
        if _default is None:
            from connector import config, redisenv

            _default = create_celery(
                redisenv.redis_target(), redisenv.redis_tls_verify(), None, config.key_prefix()
            )
        return _default

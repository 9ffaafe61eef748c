"""kombu's Redis transport with two measured costs removed from the publish path, replica
acknowledgement of every publish (``REDIS_MIN_REPLICAS``), and the same for Redis Sentinel.

Profiled on the ingest (one broker message per request of 100 events, ~60 KB):
- kombu builds a new ``redis.Redis`` object for every synchronous command (``conn_or_acquire``
  -> ``_create_client``); with redis-py 8 that constructor fills a table of ~170 response
  callbacks, about 0.35 ms per publish and per acknowledgement.  A ``redis.Redis`` object is a
  thread- and greenlet-safe handle on a connection pool, so one per channel serves every call.
- kombu serializes the envelope (headers, properties and the base64 body) with the stdlib json
  encoder, about 0.3 ms for a 60 KB batch; orjson writes the same JSON in a tenth of that.
Both keep the wire format byte-compatible: workers and web processes of any version read it.
Everything else (BRPOP, acknowledgements, the unacked index, restores) is kombu's own, bar
what Redis going away breaks (below).

Replication (SPEC 16): Redis replicates asynchronously, so a master that dies right after a
publish can take the message with it -- after the web answered 200.  With ``min_replicas`` the
push and a ``WAIT min_replicas timeout`` go down ONE connection in one round trip (a pipeline
without MULTI), and ``WAIT`` counts the replicas that acknowledged every write of that
connection so far: exactly the published message.  Fewer raise :class:`NotReplicated`, which the
ingest answers with 503 + Retry-After (the message may still be on the master: a retry can
deliver twice, which the idempotency ledger absorbs; losing it could not be undone).

A failed acknowledgement (Redis away): kombu's QoS forgets a delivered message only once its
ack or reject reached Redis, and until then the message holds one of the channel's prefetch
slots.  A worker whose every slot is busy has no BRPOP out, so it does not notice Redis going
away; if its tasks then fail on Redis and their rejects (or acks) fail too, every slot stays
taken for good and the worker never asks for work again (seen in a suite run: the identify fault test left
33 messages in the queue).  :class:`QoS` gives the slot back when the ack or reject fails: the
message is still in kombu's unacked hash (the restore is one MULTI), so the visibility sweep
(:mod:`workers.restore`) brings it back, as for a killed worker.

A message taken but not recorded (Redis away): BRPOP removes a message from its queue as it
answers, and only then does kombu record it in the unacked hash (ZADD + HSET).  Redis stopping
in between (seen in the identify fault test: the last command of the AOF before a restart was
that RPOP, the worker logged the record's ConnectionError) left the message in no queue, no
unacked hash -- only in the worker's memory, which kombu dropped with the exception: 13 upserts
never applied.  :class:`QoS` keeps such a message in the process (:data:`ORPHANS`) and the
channel puts it back at the head of its queue before its next BRPOP (or get), once Redis
answers again (one MULTI, which also drops any unacked record of it: the record may have
reached Redis with only its reply lost).  The message was never handed to a task, so it runs
once.  A process that exits first logs how many it could not put back.  What no client can
get back: a BRPOP that Redis serves in the same event-loop turn as its SHUTDOWN (or just before
a crash) -- the pop reaches the AOF, the answer never leaves (measured with redis-server 6.2
and 7.0); only a reliable queue (BLMOVE into a list per consumer) would close that.

Sentinel: kombu's ``SentinelChannel`` asks the sentinels for the master each time it opens a
connection, so a reconnect after a failover reaches the new master.  What kombu 5.7 lacks or
gets wrong here:
- a password for the sentinels themselves: only ``sentinel_kwargs``, which would put the secret
  in Celery's configuration.  It comes as a :class:`Secret` transport option
  (``connector_password``), revealed only here.
- the sentinels are listed in kombu as ``;``-separated ``sentinel://`` URLs, which kombu ALSO
  treats as failover alternates: on the first connection error it ``switch()``es to the next
  URL, and ``switch`` re-derives the transport from the URL's scheme -- kombu's stock Sentinel
  transport replaces this one (measured: no sentinel password any more, "No master found" for
  good).  So the broker URL names one sentinel and every sentinel comes as a transport option
  (``connector_sentinels``); kombu has no alternate to switch to.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

import orjson
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from redis.sentinel import Sentinel

# The type stubs of kombu leave out the channel's private API overridden here.
_RedisChannel: Any = kombu_redis.Channel
_SentinelChannel: Any = kombu_redis.SentinelChannel
_RedisQoS: Any = kombu_redis.QoS
_VirtualQoS: Any = kombu_virtual.QoS
# What an ack or reject meets when Redis is away (kombu's connection errors are these).
_FAILED_ACK = (redis.RedisError, OSError)


log = logging.getLogger("connector.broker")


class Orphans:
    """Messages this process took from a queue but could not record as unacknowledged (module
    doc): kept here until a channel puts them back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (kombu's raw message, exchange, routing key), in the order they were taken.
        self._kept: list[tuple[dict[str, Any], str, str]] = []
        self._watching = False

    def keep(self, raw: dict[str, Any], exchange: str, routing_key: str) -> None:
        with self._lock:
            self._kept.append((raw, exchange, routing_key))
            if not self._watching:
                self._watching = True
                atexit.register(self._report_lost)
        log.warning(
            "a message taken from the broker could not be recorded as unacknowledged (Redis away): "
            "kept in this process, back to its queue once Redis answers",
            extra={"task": _header(raw, "task"), "task_id": _header(raw, "id"), "queue": routing_key},
        )

    def put_back(self, channel: Any) -> None:
        """Every kept message back at the head of its queue through ``channel``; a Redis error
        keeps those not yet put back (and is raised: the caller's Redis is away too)."""
        with self._lock:
            kept, self._kept = self._kept, []
        while kept:
            raw, exchange, routing_key = kept[0]
            tag = raw["properties"]["delivery_tag"]
            try:
                with channel.conn_or_acquire() as client:
                    pipe = client.pipeline()  # MULTI: the unacked record (if any) and the message
                    pipe.zrem(channel.unacked_index_key, tag).hdel(channel.unacked_key, tag)
                    channel._do_restore_message(raw, exchange, routing_key, pipe, leftmost=False)
                    pipe.execute()
            except BaseException:  # Redis away again (or anything else): none of them dropped
                with self._lock:
                    self._kept[:0] = kept
                raise
            kept.pop(0)
            log.warning(
                "a message kept while Redis was away is back in its queue",
                extra={"task": _header(raw, "task"), "task_id": _header(raw, "id"), "queue": routing_key},
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def _report_lost(self) -> None:
        with self._lock:
            ids = [_header(raw, "id") for raw, _, _ in self._kept]
        if ids:
            log.error(
                "exiting with messages taken from the broker that Redis never got back: lost",
                extra={"count": len(ids), "task_ids": ids},
            )


def _header(raw: dict[str, Any], name: str) -> Any:
    headers = raw.get("headers")
    return headers.get(name) if isinstance(headers, dict) else None


# One per process: a kept message outlives the connection (and channel) that took it.
ORPHANS = Orphans()


class QoS(_RedisQoS):  # type: ignore[misc]  # kombu is untyped here
    """kombu's Redis QoS whose failed ack or reject still frees the prefetch slot, and whose
    failed record of a message taken keeps the message (module doc)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except _FAILED_ACK:
            # Taken from its queue, recorded nowhere: this process holds the only copy.
            info = message.delivery_info or {}
            ORPHANS.keep(message._raw, info.get("exchange", ""), info.get("routing_key", ""))
            raise  # the consumer reconnects, as for any broker connection error

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except _FAILED_ACK:
            self._forget(delivery_tag)
            raise  # Celery logs "Couldn't ack" as before

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except _FAILED_ACK:
            self._forget(delivery_tag)
            raise  # Celery logs "Couldn't reject" as before

    def _forget(self, delivery_tag: str) -> None:
        # The in-memory half of an ack only (kombu's virtual QoS): nothing is sent to Redis,
        # where the message stays unacknowledged until the visibility sweep restores it.
        _VirtualQoS.ack(self, delivery_tag)


class NotReplicated(redis.RedisError):
    """A publish that fewer replicas than ``REDIS_MIN_REPLICAS`` acknowledged in time."""


class _Overrides:
    """The overrides shared by the plain and the Sentinel channel (a mixin before kombu's)."""

    _shared_client: redis.Redis | None = None
    min_replicas: int = 0
    replica_wait_ms: int = 1000
    pool: Any
    _expires: Any

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[misc]
        return client

    def _brpop_start(self, timeout: Any = None) -> Any:
        # Messages taken while Redis went away go back to their queues before taking more.
        if len(ORPHANS):
            ORPHANS.put_back(self)
        return super()._brpop_start(timeout)  # type: ignore[misc]

    def _get(self, queue: str) -> Any:
        if len(ORPHANS):
            ORPHANS.put_back(self)
        return super()._get(queue)  # type: ignore[misc]

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        # The common case (no batch publishing, no per-queue expiry: the connector uses neither)
        # with a faster encoder; the rest is kombu's.
        if kwargs.get("_publish_batch") is not None or (self._expires and queue in self._expires):
            super()._put(queue, message, **kwargs)  # type: ignore[misc]
            return
        pri = self._get_message_priority(message, reverse=False)  # type: ignore[attr-defined]
        with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
            body = orjson.dumps(message)
            key = self._q_for_pri(queue, pri)  # type: ignore[attr-defined]
            wanted = int(self.min_replicas or 0)
            if not wanted:
                client.lpush(key, body)
                return
            pipe = client.pipeline(transaction=False)
            pipe.lpush(key, body)
            pipe.wait(wanted, int(self.replica_wait_ms))
            _, acknowledged = pipe.execute()
            if int(acknowledged) < wanted:
                raise NotReplicated(
                    f"{acknowledged} of {wanted} replica(s) acknowledged the publish within "
                    f"{self.replica_wait_ms} ms (REDIS_MIN_REPLICAS)"
                )


_OPTIONS = ("min_replicas", "replica_wait_ms")


class Channel(_Overrides, _RedisChannel):  # type: ignore[misc]  # kombu is untyped here (see above)
    QoS = QoS
    from_transport_options = _RedisChannel.from_transport_options + _OPTIONS


class SentinelChannel(_Overrides, _SentinelChannel):  # type: ignore[misc]
    QoS = QoS
    from_transport_options = (
        *_SentinelChannel.from_transport_options,
        *_OPTIONS,
        "connector_password",
        "connector_sentinels",
    )
    connector_password: Any = None  # a connector.secrets.Secret
    connector_sentinels: tuple[tuple[str, int], ...] = ()

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        # kombu's own, with the sentinels from the transport option (see the module's doc).
        params = dict(self._connparams(asynchronous))
        host, port = params.pop("host", None), params.pop("port", None)
        nodes = list(self.connector_sentinels) or [(host, port)]
        manager = Sentinel(
            nodes,
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=self.sentinel_kwargs,
            **params,
        )
        # Kept so that kombu closes the sentinels' connections with the channel's pools.
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        master_name = getattr(self, "master_name", None)
        if master_name is None:
            raise ValueError("'master_name' transport option must be specified.")
        master_kwargs = {k: params[k] for k in ("username", "password") if k in params}
        return manager.master_for(master_name, redis.Redis, **master_kwargs).connection_pool

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)
        if self.connector_password:
            # kombu hands these to redis-py's Sentinel: the master's and replicas' connections.
            params["password"] = self.connector_password.reveal()
        return params

    @property
    def sentinel_kwargs(self) -> dict[str, Any]:
        # The sentinels' own connections: the same password, the broker's socket timeouts (a
        # sentinel that is down must not hold a reconnect for long).
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
        }
        if self.connector_password:
            kwargs["password"] = self.connector_password.reveal()
        return kwargs


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel

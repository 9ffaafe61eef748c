"""Every Redis key the delivery machinery uses, in one place.

All keys start with a prefix (``CONNECTOR_KEY_PREFIX``, default ``connector:``) so that several
deployments -- or several tests -- can share one Redis database without seeing each other.

Layout (``{p}`` is the prefix, ``{c}`` a connection id)::

    {p}ledger:{c}:{idempotency_key}     string  "inflight:<token>" (PX claim TTL) | "done" (EX window+24h)
    {p}delayed                          zset    entry id -> due time (epoch ms); parked work
    {p}delayed:data                     hash    entry id -> JSON {connection_id, direction, queue, items}
    {p}rl:{c}:{budget}:n                hash    granted calls per granule (sliding) or per cycle start
    {p}paused:{c}                       string  JSON {reason, since}: Voucherify delivery paused (auth)
    {p}paused:{c}:{system}              string  the same for another target system (segment)
    {p}probe_ok:{c}:{system}            string  "1" (TTL): the credentials probe was just accepted
    {p}quota:{c}:seen                   hash    the last X-Rate-Limit-* headers per budget (forecast)
    {p}quota:{c}:h:{hour}               hash    calls and events finished in that hour (forecast)
    {p}quota:{c}:bulk_max               string  customers per bulk Voucherify was seen to accept (TTL a day)
    {p}rl:{c}:{budget}:hint             string  next parking slot handed to throttled work (epoch ms)
    {p}rl:{c}:{budget}:live             hash    what the answers' headers said: credit, its grant
                                                number, window end, grants numbered, probe calls
    {p}rl:{c}:{budget}:pause            string  epoch ms until which the target asked us to stop
    {p}rl:{c}:{budget}:slow             string  factor (0..1] applied to the budget after low remaining
    {p}stale:{c}:{customer}             string  epoch ms of the newest applied customer upsert
    {p}dlq                              zset    dead-letter id -> dead-lettered time (epoch ms)
    {p}dlq:data                         hash    dead-letter id -> JSON record
    {p}dlq:counts                       hash    connection id -> number of its dead letters
    {p}dlq:bytes                        hash    connection id -> bytes of its dead letters (bounded)
    {p}dlq:shared                       hash    {c}:{digest} -> a batch's shared objects (JSON), once
    {p}dlq:shared:refs                  hash    {c}:{digest} -> dead letters referencing it
    {p}shared:{c}:{digest}              string  a batch's shared objects for items in flight (TTL)
    {p}outbox:{c}                       list    Segment track calls waiting for /v1/batch (FIFO)
    {p}outbox:{c}:state                 hash    queue, retry state (attempts, next_at, delay, history)
    {p}outbox:{c}:lock                  string  token of the one flusher of this connection
    {p}outbox:{c}:swept                 string  short marker: a flush task was just published
    {p}outboxes                         set     connection ids whose outbox may be non-empty
    {p}backlog:{c}                      string  events accepted and not finished (never expires)
    {p}backlog_bytes:{c}                string  bytes those events occupy in Redis (never expires)
    {p}backlog_idle:{c}                 string  the scheduler's first look at idle counters (TTL)
    {p}trace:{k}:{c}:{seq}              hash    a bucket of traces (k: m main, n skipped, r refused):
                                                i:{id} -> the event's lines, d:{digest} -> a
                                                record body its lines share, z -> its size (TTL)
    {p}trace:cur:{k}:{c}                string  the bucket written now (a new one when full)
    {p}traces:{class}                   zset    {k}:{c}:{seq} -> expiry (ms): the budget, oldest first
    {p}traces:{class}:sz                hash    {k}:{c}:{seq} -> bytes written to it
    {p}traces:{class}:bytes             string  their sum (the budget's measure)
    {p}ov:{c}:m:{minute}                hash    overview counters of one minute (TTL ~2 h)
    {p}ov:{c}:h:{hour}                  hash    overview counters of one hour (TTL ~25 h)
    {p}ov:{c}:s:{field}                 list    a few sample event ids of one overview field (TTL)
    {p}fleet:{c}                        hash    fleet-wide counters: JSON [counter, labels] -> total (connector.fleet)
    {p}fleets                           set     connection ids with fleet counters (what /metrics reads)
    {p}workers                          zset    worker name -> last heartbeat (epoch ms)
    {p}workers:queues                   hash    worker name -> the queues it consumes (comma-separated)
    {p}custlock:{c}:{customer}          string  the attempt sending this customer's upsert now (TTL)
    {p}held:{c}                         hash    customer -> its held upserts (JSON lines, SPEC 10)
    {p}heldbase:{c}                     hash    what held upserts of a batch repeat, once: ref -> text, n:ref -> users
    {p}heldlist:{c}                     hash    customer -> 1: its hold list (below) exists
    {p}hold:{c}:{customer}              list    held upserts past 64 KB, or of an older version
    {p}holds:{c}                        zset    customer -> due (epoch ms) of its held upserts
    {p}holds                            hash    connection id -> the JSON head of its delayed entries
    {p}holdout:{c}:{customer}           string  its upserts are on their way / queued (TTL)
    {p}unchanged:{c}:{customer}         string  digest of the last upsert accepted (TTL)
    {p}kept:{c}                         hash    expiry hour -> the connection's ledger records (TTL)
    {p}kept:{c}:u:{day}                 HLL     customers given stale/unchanged records that day (TTL)
    {p}suppressed:{c}                   set     user ids whose events are dropped (SPEC 14; never expires)
    {p}regulation:{id}                  hash    a regulation: its request, and per connection its status
    {p}regulations                      zset    regulation id -> created (epoch ms), newest last
    {p}replay:{c}:{file}                string  a replay's checkpoint (SPEC 15): JSON position, counts (TTL)

The broker (kombu's Redis transport) keeps its own keys: the queues (named after the regions,
``voucherify.eu1``...), ``unacked``, ``unacked_index``, ``unacked_mutex`` and ``_kombu.binding.*``.
With the default prefix they carry none (the names every deployment has used so far); with any
other prefix kombu puts the prefix in front of each of them (``global_keyprefix``, see
:attr:`Keys.broker_prefix`), so two deployments with different prefixes on one Redis database
never take each other's tasks.  Readers of those keys (queue depths, the backlog reconciler)
name them through :meth:`Keys.broker_queue` and :attr:`Keys.broker_unacked`.

Keys of one connection are not hash-tagged: the connector targets a single Redis (the broker),
and the Lua scripts touch only keys they are passed.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "connector:"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_env(cls) -> Keys:
        """``CONNECTOR_KEY_PREFIX`` as :mod:`connector.config` reads it (processes take it from
        their settings; this is for code that has none, e.g. a test reading a deployment)."""
        from connector.config import key_prefix

        return cls(key_prefix())

    # --- the broker's keys (kombu's names, under this deployment's broker prefix) -------------

    @property
    def broker_prefix(self) -> str:
        """What kombu puts in front of its keys: nothing for the default prefix (the queues of
        deployments that existed before the broker was prefixed keep their names), the prefix
        itself otherwise."""
        return "" if self.prefix == DEFAULT_PREFIX else self.prefix

    def broker_queue(self, queue: str) -> str:
        return f"{self.broker_prefix}{queue}"

    @property
    def broker_unacked(self) -> str:
        """kombu's hash of messages handed to a worker and not yet acknowledged."""
        return f"{self.broker_prefix}unacked"

    @property
    def broker_unacked_index(self) -> str:
        return f"{self.broker_prefix}unacked_index"

    def ledger(self, connection_id: str, idempotency_key: str) -> str:
        return f"{self.prefix}ledger:{connection_id}:{idempotency_key}"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}delayed"

    @property
    def delayed_data(self) -> str:
        return f"{self.prefix}delayed:data"

    def ratelimit(self, connection_id: str, target: str) -> str:
        return f"{self.prefix}rl:{connection_id}:{target}"

    def paused(self, connection_id: str, system: str = "voucherify") -> str:
        # Voucherify's keeps the key of before pauses were per system: a pause set by an older
        # release is still found (and lifted) after an upgrade.
        base = f"{self.prefix}paused:{connection_id}"
        return base if system == "voucherify" else f"{base}:{system}"

    def probe_ok(self, connection_id: str, system: str) -> str:
        return f"{self.prefix}probe_ok:{connection_id}:{system}"

    def quota_seen(self, connection_id: str) -> str:
        return f"{self.prefix}quota:{connection_id}:seen"

    def bulk_max(self, connection_id: str) -> str:
        return f"{self.prefix}quota:{connection_id}:bulk_max"

    def quota_hour(self, connection_id: str, hour: int) -> str:
        return f"{self.prefix}quota:{connection_id}:h:{hour}"

    def stale(self, connection_id: str, customer: str) -> str:
        return f"{self.prefix}stale:{connection_id}:{customer}"

    def customer_lock(self, connection_id: str, customer: str) -> str:
        return f"{self.prefix}custlock:{connection_id}:{customer}"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    @property
    def dlq_data(self) -> str:
        return f"{self.prefix}dlq:data"

    @property
    def dlq_counts(self) -> str:
        return f"{self.prefix}dlq:counts"

    @property
    def dlq_bytes(self) -> str:
        return f"{self.prefix}dlq:bytes"

    @property
    def dlq_shared(self) -> str:
        return f"{self.prefix}dlq:shared"

    @property
    def dlq_shared_refs(self) -> str:
        return f"{self.prefix}dlq:shared:refs"

    def shared(self, connection_id: str, digest: str) -> str:
        return f"{self.prefix}shared:{connection_id}:{digest}"

    def outbox(self, connection_id: str) -> str:
        return f"{self.prefix}outbox:{connection_id}"

    def outbox_state(self, connection_id: str) -> str:
        return f"{self.prefix}outbox:{connection_id}:state"

    def outbox_lock(self, connection_id: str) -> str:
        return f"{self.prefix}outbox:{connection_id}:lock"

    def outbox_swept(self, connection_id: str) -> str:
        return f"{self.prefix}outbox:{connection_id}:swept"

    @property
    def outboxes(self) -> str:
        return f"{self.prefix}outboxes"

    def backlog(self, connection_id: str) -> str:
        return f"{self.prefix}backlog:{connection_id}"

    def backlog_bytes(self, connection_id: str) -> str:
        return f"{self.prefix}backlog_bytes:{connection_id}"

    def backlog_idle(self, connection_id: str) -> str:
        return f"{self.prefix}backlog_idle:{connection_id}"

    # Traces (connector.tracestore) live in buckets: one hash per (kind, connection, bucket),
    # keyed by the connection so that one connection's client cannot push out or overwrite
    # another connection's records by reusing its ids.  Connection ids hold no ':'
    # (connector.connections), so the keys are unambiguous.
    def trace_bucket(self, kind: str, connection_id: str, seq: str) -> str:
        return f"{self.prefix}trace:{kind}:{connection_id}:{seq}"

    def trace_current(self, kind: str, connection_id: str) -> str:
        return f"{self.prefix}trace:cur:{kind}:{connection_id}"

    # The trace budget (connector.tracestore): one per class of trace ("main": delivered, failed;
    # "minor": skipped or refused, which may take only a share); members are buckets.
    def traces(self, cls: str) -> str:
        return f"{self.prefix}traces:{cls}"

    def traces_sizes(self, cls: str) -> str:
        return f"{self.prefix}traces:{cls}:sz"

    def traces_bytes(self, cls: str) -> str:
        return f"{self.prefix}traces:{cls}:bytes"

    def overview_minute(self, connection_id: str, minute: int) -> str:
        return f"{self.prefix}ov:{connection_id}:m:{minute}"

    def overview_hour(self, connection_id: str, hour: int) -> str:
        return f"{self.prefix}ov:{connection_id}:h:{hour}"

    def overview_samples(self, connection_id: str, field: str) -> str:
        return f"{self.prefix}ov:{connection_id}:s:{field}"

    def fleet(self, connection_id: str) -> str:
        return f"{self.prefix}fleet:{connection_id}"

    def fleets(self) -> str:
        return f"{self.prefix}fleets"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    @property
    def workers_queues(self) -> str:
        return f"{self.prefix}workers:queues"

    # The hold window and the unchanged skip (workers.delivery.holds).
    def held(self, connection_id: str) -> str:
        return f"{self.prefix}held:{connection_id}"

    def held_bases(self, connection_id: str) -> str:
        return f"{self.prefix}heldbase:{connection_id}"

    def held_lists(self, connection_id: str) -> str:
        return f"{self.prefix}heldlist:{connection_id}"

    def hold(self, connection_id: str, customer: str) -> str:
        return f"{self.prefix}hold:{connection_id}:{customer}"

    def holds(self, connection_id: str) -> str:
        return f"{self.prefix}holds:{connection_id}"

    @property
    def holds_index(self) -> str:
        return f"{self.prefix}holds"

    def hold_out(self, connection_id: str, customer: str) -> str:
        return f"{self.prefix}holdout:{connection_id}:{customer}"

    def unchanged(self, connection_id: str, customer: str) -> str:
        return f"{self.prefix}unchanged:{connection_id}:{customer}"

    # What a connection's ledger and customer records occupy (connector.kept).
    def kept(self, connection_id: str) -> str:
        return f"{self.prefix}kept:{connection_id}"

    def kept_customers(self, connection_id: str, day: int) -> str:
        return f"{self.prefix}kept:{connection_id}:u:{day}"

    # Regulations (SPEC 14, connector.regulations): durable, never given a TTL.
    def suppressed(self, connection_id: str) -> str:
        return f"{self.prefix}suppressed:{connection_id}"

    def regulation(self, regulation_id: str) -> str:
        return f"{self.prefix}regulation:{regulation_id}"

    @property
    def regulations(self) -> str:
        return f"{self.prefix}regulations"

    # Replay checkpoints (SPEC 15, ops.replay_run): the file's identity is a digest of its content.
    def replay(self, connection_id: str, file_identity: str) -> str:
        return f"{self.prefix}replay:{connection_id}:{file_identity}"

"""Delivery machinery: nothing lost, nothing twice, never over quota (SPEC 5).  It knows no
system by name: everything system-specific is asked of the task's target
(:mod:`.target`, implemented in ``workers/targets``).

::

    workers.pipeline ── per task: map, let the target coalesce, group by customer, run chains
          │             concurrently, park the rest
          ├── engine.deliver_one ── one OutboundRequest, one state machine:
          │       no send slot before the task's deadline ──────────────> parked (deferred, due now)
          │       ledger.claim ─ duplicate ─────────────────────────────> skipped (duplicate)
          │            │ busy ──────────────────────────────────────────> parked (busy)
          │       target.stale_time ─ older than the newest applied ────> skipped (stale)
          │       the customers' send locks (stale) ─ held elsewhere ───> parked (busy)
          │       a merged call's parts: claimed, delivered/stale ones dropped
          │       target.prepare ─ a wait (no metadata schema yet) ─────> parked (its reason)
          │       budgets.acquire(target.budgets_for) ─ denied ─────────> parked (throttled, no attempt)
          │       attempts.attempt (transport) + classify + target.interpret -> budgets
          │            SUCCESS ─> ledger done, stale raised ────────────> delivered
          │            RETRY ──> retries.decide ─ in window ────────────> parked (retry)
          │                                     └ window spent ─────────> dead letter
          │            PERMANENT ─ target.after_refusal: one more try ──> parked
          │                      └──────────────────────────────────────> dead letter
          ├── flusher ─────── an outbox sent in batch requests (Segment's /v1/batch): the target packs
          ├── attempts ────── one send-and-record and the outcomes every path ends in
          ├── store ───────── parked work (zset by due time + payload hash), never Celery ETAs
          ├── scheduler ───── moves due work back to Celery queues; sweeps outboxes
          └── deadletters ─── list / show / replay (same idempotency keys) / purge

The backlog bound, the Redis key layout and the task names are the base package's
(:mod:`connector.backlog`, :mod:`connector.keys`, :mod:`connector.contract`): the web uses them.
"""

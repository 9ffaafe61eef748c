"""Delivery machinery: nothing lost, nothing twice, never over quota (SPEC 5).

::

    workers.pipeline ── per task: map, group by customer, run chains concurrently, park the rest
          │
          ├── engine.deliver_one ── one OutboundRequest, one state machine:
          │       ledger.claim ─ duplicate ─────────────────────────────> skipped (duplicate)
          │            │ busy ──────────────────────────────────────────> parked (busy)
          │       stale.is_stale (upserts) ─ stale ──────────────────────> skipped (stale)
          │       ratelimit.acquire ─ denied ───────────────────────────> parked (throttled, no attempt)
          │       http.Transport.send + http.classify
          │            SUCCESS ─> ledger done, stale raised ────────────> delivered
          │            RETRY ──> retries.decide ─ in window ────────────> parked (retry)
          │                                     └ window spent ─────────> dead letter
          │            PERMANENT ───────────────────────────────────────> dead letter
          ├── store ──────── parked work (zset by due time + payload hash), never Celery ETAs
          ├── scheduler ──── moves due work back to Celery queues; sweeps Segment outboxes
          ├── segment_outbox ─ Voucherify -> Segment: dedupe, append, batch flush to /v1/batch
          ├── deadletters ── list / show / replay (same idempotency keys) / purge
          └── backlog ────── per-connection bound on queued work (imported by the web process)

This package's ``__init__`` stays import-light: the web process imports ``backlog`` from it.
"""

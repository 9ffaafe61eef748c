"""Whose refusal is a 401/403: the credentials', or one kind of call's (SPEC 13, "Pauses").

A 401/403 usually means the key is revoked: every call of the connection towards that system
would get it, so delivery to the system pauses (:mod:`workers.delivery.pauses`).  But a WAF rule
on one path, or a key without the ``/v1/events`` permission, refuses one KIND of call while the
others of the same key succeed.  Pausing for that paused the connection again after every
resume, and the refused events were never dead-lettered.  So before pausing, the target's
credentials probe (``Target.probe_call``: the call ``connector check`` makes, another kind of
call) asks the key itself::

    probe accepted ──> the call's own refusal: a counted attempt, retried by the retry rule,
                       dead-lettered ``refused`` after REFUSAL_ATTEMPTS attempts
    probe refused ───> the credentials: pause the (connection, system)
    no grant for it, or another worker probing ──> undecided: the item looks again in a
                       moment (not an attempt)
    no probe (a system with one kind of call, Segment) or no verdict ──> pause

An accepted probe is trusted for :data:`PROBE_TRUST_SECONDS` (``{p}probe_ok:{c}:{system}``):
a burst of refused events costs one probe, not one each.  The attempt that would dead-letter
probes afresh, so a key revoked just after an accepted probe pauses rather than losing the
events to dead letters.  The probe goes through :func:`workers.delivery.attempts.send` (counted
for the forecast) after a grant of the target's budgets.
"""

from __future__ import annotations

from connector.errors import TransportFailure
from workers.delivery import attempts, pauses
from workers.delivery.context import Context

REFUSAL_ATTEMPTS = 3  # attempts of a request-specific refusal before its dead letter
PROBE_TRUST_SECONDS = 60.0
PROBE_LOCK_SECONDS = 30.0  # longer than a probe's call (connect + read timeouts)
CALL = "call"  # the refusal is the call's own
PAUSE = "pause"  # the credentials are refused
UNDECIDED = "undecided"  # no grant for the probe now


def judge(ctx: Context, attempts_made: int) -> str:
    """:data:`CALL`, :data:`PAUSE` or :data:`UNDECIDED` for a 401/403 of the task's target, on an
    item that has made ``attempts_made`` attempts (this one included)."""
    system = ctx.target.name
    probe = ctx.target.probe_call()
    if probe is None:
        return PAUSE
    if pauses.paused(ctx.client, ctx.keys, ctx.connection_id, system) is not None:
        return PAUSE  # another worker judged already: the credentials
    key = ctx.keys.probe_ok(ctx.connection_id, system)
    last_try = attempts_made >= REFUSAL_ATTEMPTS
    if not last_try and ctx.client.exists(key):
        return CALL
    # One probe at a time per (connection, system): a burst of refusals at a revoked key costs
    # one more call, not one each; the others look again in a moment.
    lock = key + ":lock"
    if not ctx.client.set(lock, "1", nx=True, px=int(PROBE_LOCK_SECONDS * 1000)):
        return UNDECIDED
    try:
        # Denied, the item looks again in a second rather than at a slot: none reserved.
        budgets = ctx.target.budgets_for(None)
        grant = ctx.budgets.acquire(budgets, parks=False, probe=False)
        if not grant.granted:
            return PAUSE if grant.reason == pauses.PAUSED_REASON else UNDECIDED
        method, path = probe
        answer = attempts.send(ctx, method, path, None, {"Accept": "application/json"})
        ctx.budgets.answered(budgets, grant)  # answered late: counted again (it may have arrived late)
        ctx.budgets.release(grant)  # a probe place it took is free again (its answer is not read)
        if isinstance(answer, TransportFailure) or not 200 <= answer.status < 300:
            return PAUSE
        ctx.client.set(key, "1", px=int(PROBE_TRUST_SECONDS * 1000))
        return CALL
    finally:
        ctx.client.delete(lock)

"""Voucherify's async actions, as ``POST /v1/customers/bulk/async`` creates them.

An action (``CUSTOMERS.BULK_UPDATE``) is ``ENQUEUED``, then ``IN_PROGRESS`` for the second half
of ``delay_s``, then ``DONE`` (or ``FAILED`` when scripted with ``fail_next``). Actions finish
in the order they were accepted, as Voucherify's queue does, and only then are their valid
customers applied to the store: a single upsert sent after a bulk but before it finishes is
overwritten by the bulk's older data, as it would be at Voucherify. A ``DONE`` action's
``result.errors`` holds ``{source_id, key, message, details}`` per customer that failed.

Control (``POST /__fake/async-actions``, every key optional)::

    {"delay_s": 2.0,                 # acceptance -> DONE (default 0: done at once)
     "fail_next": 1,                 # the next N actions end FAILED, nothing applied
     "max_customers": 100,           # a bulk of more is refused with a 400 (default null:
                                     # only Voucherify's documented limit, 10 MB of body)
     "failures": [                   # customers that fail inside a DONE action
        {"source_ids": ["bad-1", "bad-*"],   # exact, or a prefix ending in "*"
         "key": "customer_rejected", "message": "...", "details": "..."}]}

``failures`` replaces the list (``[]`` clears it); rules are applied when a bulk is accepted.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from sandbox.customers import iso_time, random_id
from sandbox.faults import number, path_matches

# Voucherify documents one limit for a bulk: "The request can include up to 10 MB of data"
# (the fake's body bound, sandbox.core, answers 413 past it).  A stricter count is a setting.
DEFAULT_MAX_CUSTOMERS: int | None = None
MAX_ACTIONS = 10_000  # the oldest finished actions are forgotten beyond this
REPORTS_KEPT_S = 7 * 86400
FAILED_MESSAGE = "The bulk update failed (scripted by the fake)"
CONFIG_KEYS = ("delay_s", "fail_next", "failures", "max_customers")
RULE_KEYS = ("source_ids", "key", "message", "details")


def customer_error(source_id: str, key: str, message: str, details: str) -> dict[str, str]:
    return {"source_id": source_id, "key": key, "message": message, "details": details}


@dataclass(frozen=True, slots=True)
class FailureRule:
    patterns: tuple[str, ...]
    key: str
    message: str
    details: str

    def matches(self, source_id: str) -> bool:
        return any(path_matches(pattern, source_id) for pattern in self.patterns)

    def describe(self) -> dict[str, Any]:
        return {
            "source_ids": list(self.patterns),
            "key": self.key,
            "message": self.message,
            "details": self.details,
        }


def _rule(raw: Any) -> FailureRule:
    if not isinstance(raw, dict) or set(raw) - set(RULE_KEYS):
        raise ValueError(f"a failure rule is an object with {', '.join(RULE_KEYS)}")
    patterns = raw.get("source_ids")
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(
            "failures[].source_ids must be a non-empty list of source ids (or prefixes ending in *)"
        )
    texts = {k: raw.get(k, d) for k, d in (("key", "customer_rejected"), ("message", "Customer rejected"))}
    texts["details"] = raw.get("details", "rejected by a failure rule of the fake")
    if not all(isinstance(v, str) for v in texts.values()):
        raise ValueError("failures[].key, message and details must be strings")
    return FailureRule(tuple(patterns), texts["key"], texts["message"], texts["details"])


@dataclass(slots=True)
class AsyncAction:
    id: str
    request_id: str
    created: float
    started: float  # IN_PROGRESS from
    due: float  # DONE / FAILED at
    customers: list[dict[str, Any]]  # the valid ones, applied in order when the action finishes
    errors: list[dict[str, str]]
    total: int
    fails: bool
    finished: bool = False
    done_count: int = 0
    source_ids: list[str] = field(default_factory=list)

    def status(self, now: float) -> str:
        if now >= self.due:
            return "FAILED" if self.fails else "DONE"
        return "IN_PROGRESS" if now >= self.started else "ENQUEUED"

    def view(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        finished = status in ("DONE", "FAILED")
        if finished:
            progress = 100
        elif status == "IN_PROGRESS" and self.due > self.started:
            progress = min(99, int(100 * (now - self.started) / (self.due - self.started)))
        else:
            progress = 0
        body: dict[str, Any] = {
            "id": self.id,
            "type": "CUSTOMERS.BULK_UPDATE",
            "status": status,
            "operation_status": {"DONE": "SUCCESS", "FAILED": "FAILED"}.get(status, "UNKNOWN"),
            "created_at": iso_time(self.created),
            "updated_at": iso_time(
                self.due if finished else self.started if status == "IN_PROGRESS" else self.created
            ),
            "request_id": self.request_id,
            "progress": progress,
            "object": "async_action",
        }
        if finished:
            body["processing_time"] = int((self.due - self.created) * 1000)
            body["result"] = self._result()
        return body

    def _result(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "done_count": 0 if self.fails else self.done_count,
            "failed_count": self.total if self.fails else len(self.errors),
            "reports": [],
            "reports_available_till": iso_time(self.due + REPORTS_KEPT_S),
            "errors": [] if self.fails else list(self.errors),
        }
        if self.fails:
            result["message"] = FAILED_MESSAGE
        return result


class AsyncActions:
    """The queue of bulk actions and its scripted behaviour (the app's lock guards it)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.initial_delay_s = delay_s
        self.reset()

    def reset(self) -> None:
        self.delay_s = self.initial_delay_s
        self.fail_next = 0
        self.max_customers = DEFAULT_MAX_CUSTOMERS
        self.failures: list[FailureRule] = []
        self.actions: OrderedDict[str, AsyncAction] = OrderedDict()
        self.pending: deque[AsyncAction] = deque()  # not finished yet, by due time
        self.last_due = 0.0

    def configure(self, spec: Any) -> None:
        if not isinstance(spec, dict) or set(spec) - set(CONFIG_KEYS):
            raise ValueError(f"body must be an object with any of {', '.join(CONFIG_KEYS)}")
        delay = number(spec.get("delay_s", self.delay_s), "delay_s")
        fail_next = spec.get("fail_next", self.fail_next)
        if isinstance(fail_next, bool) or not isinstance(fail_next, int) or fail_next < 0:
            raise ValueError("fail_next must be an integer >= 0")
        most = spec.get("max_customers", self.max_customers)
        if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
            raise ValueError("max_customers must be null or an integer >= 1")
        failures = self.failures
        if "failures" in spec:
            raw = spec["failures"] or []
            if not isinstance(raw, list):
                raise ValueError("failures must be a list of rules")
            failures = [_rule(r) for r in raw]
        self.delay_s, self.fail_next, self.failures = delay, fail_next, failures
        self.max_customers = most

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "delay_s": self.delay_s,
            "fail_next": self.fail_next,
            "max_customers": self.max_customers,
            "failures": [rule.describe() for rule in self.failures],
            "actions": [{**a.view(now), "source_ids": a.source_ids} for a in self.actions.values()],
        }

    def scripted_failure(self, source_id: str) -> dict[str, str] | None:
        for rule in self.failures:
            if rule.matches(source_id):
                return customer_error(source_id, rule.key, rule.message, rule.details)
        return None

    def create(
        self, customers: list[dict[str, Any]], errors: list[dict[str, str]], source_ids: list[str], now: float
    ) -> AsyncAction:
        # A queue: an action never finishes before the ones accepted earlier.
        due = max(now + self.delay_s, self.last_due)
        self.last_due = due
        fails = self.fail_next > 0
        if fails:
            self.fail_next -= 1
        action = AsyncAction(
            id=random_id("aa_", 18).lower(),
            request_id=random_id("v-", 18).lower(),
            created=now,
            started=max(now, due - self.delay_s / 2),
            due=due,
            customers=customers,
            errors=errors,
            total=len(source_ids),
            fails=fails,
            source_ids=source_ids,
        )
        self.actions[action.id] = action
        self.pending.append(action)
        while len(self.actions) > MAX_ACTIONS:
            oldest = next(iter(self.actions.values()))
            if not oldest.finished:
                break
            self.actions.popitem(last=False)
        return action

    def due(self, now: float) -> list[AsyncAction]:
        """Actions that finish by ``now`` and were not applied yet, oldest first (marked finished)."""
        ready = []
        while self.pending and self.pending[0].due <= now:
            action = self.pending.popleft()
            action.finished = True
            ready.append(action)
        return ready

    def get(self, action_id: str) -> AsyncAction | None:
        return self.actions.get(action_id)

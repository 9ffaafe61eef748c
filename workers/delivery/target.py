"""What the delivery machinery asks of a system it delivers to: the :class:`Target` protocol.

The engine, the attempt recorder and the batch flusher know no system by name: everything that
differs between Voucherify and Segment (and a third system tomorrow) is answered by the target
bound to the task's connection and direction -- one module per system in ``workers/targets``.

Budgets (SPEC 10 builds on this shape): a call spends every budget ``budgets_for`` names, in
order; an answer's :class:`~workers.delivery.budgets.Observation` may pause or slow one named
budget or all of the call's.  A system with several quotas (per minute, per hour, bulk calls,
webhooks per day) is several named budgets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from connector.contract import DeliveryItem
from connector.errors import TransportFailure
from workers.delivery.budgets import Budget, Observation
from workers.delivery.transport import HTTPResult
from workers.outbound import OutboundRequest

Answer = HTTPResult | TransportFailure


@dataclass(frozen=True)
class Wait:
    """Not now: park the item for ``seconds`` under ``reason`` (``throttled`` counts as a
    rate-limit wait)."""

    reason: str
    seconds: float


@dataclass
class Batch:
    """A prefix of an outbox that fits one batch request (``BatchTarget.pack``)."""

    items: list[DeliveryItem]
    body: bytes
    oversized_head: DeliveryItem | None = None  # alone: one item over the system's size limit


class Target(Protocol):
    """One system, bound to one connection for one task."""

    name: str  # budgets' and metrics' label: "voucherify" | "segment"
    direction: str  # connector.contract's label: segment_to_voucherify | voucherify_to_segment
    queue: str  # the broker queue of this connection's work towards the system
    region: str  # metric label: the region, or "dedicated"
    base_url: str

    def auth_headers(self) -> dict[str, str]:
        """Credential headers, added at the last moment (never stored, never logged)."""
        ...

    def probe_call(self) -> tuple[str, str] | None:
        """(method, path) of a call that checks the credentials and nothing else -- what tells a
        refused key from one kind of call refused (:mod:`workers.delivery.refusals`); None: the
        system has no such call (its 401/403 is always the credentials')."""
        ...

    def budgets_for(self, request: OutboundRequest | None) -> tuple[Budget, ...]:
        """The budgets a call spends (``None``: any call, e.g. a batch or a read)."""
        ...

    def interpret(self, answer: Answer, spent: tuple[Budget, ...] = ()) -> Observation:
        """What an answer says about the budgets (``spent``: those the call spent) and the wait
        before the next try."""
        ...

    def stale_time(self, action: str | None, event_time: str | None) -> int | None:
        """Epoch ms under which a call of ``action`` is stale against the newest applied one
        of its customer; None: never stale (not checked)."""
        ...

    def rebuild(self, request: OutboundRequest, live: Sequence[Mapping[str, Any]]) -> OutboundRequest | None:
        """A coalesced ``request`` restricted to its ``live`` parts (None: nothing left)."""
        ...

    def prepare(self, request: OutboundRequest, item: DeliveryItem) -> OutboundRequest | Wait:
        """The request as it is sent now (e.g. kept to a schema), or a wait."""
        ...

    def after_refusal(self, answer: Answer, item: DeliveryItem) -> Wait | None:
        """A permanent refusal worth one more try after a wait (e.g. a schema changed)."""
        ...

    def coalesce(self, items: list[DeliveryItem]) -> list[DeliveryItem]:
        """A task's items as fewer calls with the same effects (or as they are)."""
        ...

    def fit(self, items: list[DeliveryItem]) -> list[DeliveryItem]:
        """Items back from the delayed store as calls the system accepts now (e.g. a bulk
        refused for its size, cut into smaller ones); as they are when nothing changed."""
        ...

    def may_queue(self, request: OutboundRequest) -> bool:
        """Whether a 2xx of this call may only queue it (its customers are marked while it is
        sent, :func:`workers.delivery.pending.sending`)."""
        ...

    def queued_as(self, request: OutboundRequest, answer: HTTPResult) -> str | None:
        """The id of the work a 2xx only queued (read back by :mod:`workers.delivery.pending`
        before anything is delivered); None: the answer is the delivery."""
        ...

    def applied(self, requests: list[OutboundRequest]) -> None:
        """Calls the system accepted (e.g. remember an upsert's digest for the unchanged skip)."""
        ...


class BatchTarget(Target, Protocol):
    """A system fed from a per-connection outbox in batch requests (Segment's /v1/batch)."""

    batch_path: str
    oversize_error: str  # the dead letter's error for an item over the size limit
    max_batch: int  # items one batch request may hold at the most (read from the outbox's head)

    def pack(self, raws: list[bytes]) -> Batch:
        """The longest prefix of ``raws`` that fits one batch request."""
        ...

    def dedupe_keep(self, window: float, ledger_keep: float) -> float:
        """How long an appended item's key is remembered (duplicates dropped at the outbox)."""
        ...

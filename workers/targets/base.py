"""The :class:`Target` protocol (declared beside the engine that calls it, in
:mod:`workers.delivery.target`) and what the targets share: the standard reading of an answer.

A new system to deliver to is one module here (a class with the protocol's members), its row in
:data:`workers.targets.TARGETS` and its mapping; the delivery machinery does not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connector.config import Connection
from connector.contract import DeliveryItem
from connector.errors import TransportFailure
from workers.delivery.budgets import Budget, Observation
from workers.delivery.classify import retry_after
from workers.delivery.target import Answer, Batch, BatchTarget, Target, Wait
from workers.delivery.transport import HTTPResult
from workers.outbound import OutboundRequest

__all__ = ["Answer", "Batch", "BatchTarget", "Budget", "HttpTarget", "Observation", "Target", "Wait"]

# How long a 429 without any wait header stops a budget.
DEFAULT_429_PAUSE_SECONDS = 5.0


class HttpTarget:
    """What most systems do: no stale rule, nothing to prepare or coalesce, and a 429 pauses
    (for ``Retry-After``, else a few seconds) and halves the call's budgets for a while."""

    name: str
    direction: str
    queue: str
    region: str
    base_url: str

    def __init__(self, connection: Connection, *, queue: str, region: str | None, base_url: str) -> None:
        self.connection = connection
        self.queue = queue
        self.region = region or "dedicated"
        self.base_url = base_url
        self._budgets = self.budgets_of(connection)

    @staticmethod
    def configured(connection: Connection) -> bool:
        """Whether ``connection`` has this system's settings."""
        raise NotImplementedError

    @staticmethod
    def budgets_of(connection: Connection) -> tuple[Budget, ...]:
        """The budgets every call of ``connection`` to this system spends."""
        raise NotImplementedError

    def budgets_for(self, request: OutboundRequest | None) -> tuple[Budget, ...]:
        return self._budgets

    def server_wait(self, answer: Answer) -> float | None:
        """The longest wait the answer asks for (here: ``Retry-After``)."""
        return retry_after(answer)

    def interpret(self, answer: Answer, spent: tuple[Budget, ...] = ()) -> Observation:
        if isinstance(answer, TransportFailure):
            return Observation()
        wait = self.server_wait(answer)
        if answer.status == 429:
            return Observation(
                wait=wait, pause=wait if wait is not None else DEFAULT_429_PAUSE_SECONDS, slow=True
            )
        if answer.status in (401, 403):
            # The credentials refused (or this kind of call: workers.delivery.refusals judges).
            return Observation(wait=wait, auth_refused=True)
        return Observation(wait=wait)

    def stale_time(self, action: str | None, event_time: str | None) -> int | None:
        return None

    def rebuild(self, request: OutboundRequest, live: Sequence[Mapping[str, Any]]) -> OutboundRequest | None:
        return request if live else None

    def prepare(self, request: OutboundRequest, item: DeliveryItem) -> OutboundRequest | Wait:
        return request

    def after_refusal(self, answer: Answer, item: DeliveryItem) -> Wait | None:
        return None

    def coalesce(self, items: list[DeliveryItem]) -> list[DeliveryItem]:
        return items

    def fit(self, items: list[DeliveryItem]) -> list[DeliveryItem]:
        return items

    def may_queue(self, request: OutboundRequest) -> bool:
        return False

    def queued_as(self, request: OutboundRequest, answer: HTTPResult) -> str | None:
        return None

    def applied(self, requests: list[OutboundRequest]) -> None:
        return None

"""Segment -> Voucherify: the pure destination mapping (SPEC 3).

``map_event(event, connection)`` turns one normalized Segment event into the Voucherify calls it
causes, as :class:`~workers.outbound.OutboundRequest` descriptions, or raises
:class:`~connector.errors.SkipEvent` (nothing to do, by design) or
:class:`~connector.errors.MappingError` (the event cannot be mapped; never retried).

No I/O, no clock, no Celery here: the delivery machinery sends what this returns.

* :mod:`.mapping` — the Actions framework: directives, paths, JavaScript's rules;
* :mod:`.fields` — field declarations, and payloads validated against them;
* :mod:`.actions` — the three actions, their fields, and the presets (ONE table);
* :mod:`.triggers` — the trigger language (Segment's subscription syntax);
* :mod:`.subscriptions` — custom subscriptions: validation and parsing;
* :mod:`.classic` — the classic destination's default mappings and mapping tables;
* :mod:`.routing` — a connection's subscriptions compiled, events routed through them;
* :mod:`.metadata` — customer metadata kept to the project's metadata schema (rest mode);
* :mod:`.requests` — bodies for the ``rest`` and ``segmentio`` modes, their (non-secret) headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from workers.mapping.destination.routing import MappingResult, compiled_for
from workers.outbound import OutboundRequest

if TYPE_CHECKING:
    from connector.config import Connection


def map_event(event: Mapping[str, Any], connection: Connection) -> list[OutboundRequest]:
    """The Voucherify requests for ``event`` on ``connection`` (several when several
    subscriptions match).  Raises ``SkipEvent(reason)`` or ``MappingError(message)``.

    When several subscriptions match and only some fail, the others' requests are returned and
    the failures are dropped: use :func:`map_event_detailed` to see (and count) them.
    """
    return compiled_for(connection).map(event)


def map_event_detailed(event: Mapping[str, Any], connection: Connection) -> MappingResult:
    """Like :func:`map_event`, but reports per-subscription mapping failures instead of raising."""
    return compiled_for(connection).map_detailed(event)


__all__ = ["MappingResult", "map_event", "map_event_detailed"]
